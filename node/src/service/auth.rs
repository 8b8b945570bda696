//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A PHC string for `password` (argon2id, the crate's recommended parameters).
pub(crate) fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches `phc`.
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A PHC string that matches no password: verifying against it costs what a real check costs,
/// so a login for an unknown user takes as long as one with a wrong password.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("chorus-no-such-user").unwrap_or_default())
}

/// Sessions this node looked up recently, so a request does not cost a read at the storage
/// leader. An entry lives at most [`SessionCache::TTL`]; a deleted session is dropped at once
/// when the leader's apply notice arrives (gossip), and after the TTL if that notice is lost.
#[derive(Debug, Default)]
pub struct SessionCache {
    entries:
        std::sync::Mutex<std::collections::HashMap<String, (crate::storage::records::SessionRec, std::time::Instant)>>,
}

impl SessionCache {
    /// Longest a cached session is trusted without asking storage again.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(5);
    /// Entries kept before the cache is cleared (bounds memory under token churn).
    const MAX: usize = 100_000;

    pub(crate) fn get(&self, token_hash: &str) -> Option<crate::storage::records::SessionRec> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(token_hash).filter(|(_, at)| at.elapsed() < Self::TTL).map(|(s, _)| s.clone())
    }

    pub(crate) fn put(&self, token_hash: String, session: crate::storage::records::SessionRec) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(token_hash, (session, std::time::Instant::now()));
    }

    /// Drops deleted sessions.
    pub fn revoke(&self, token_hashes: &[String]) {
        if token_hashes.is_empty() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for h in token_hashes {
            entries.remove(h);
        }
    }
}

/// A fresh bearer token: 32 random bytes, hex.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the database stores for a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("chorus-no-such-user", "not a phc string"));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), a);
    }
}
