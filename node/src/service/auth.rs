//! Passwords (argon2id) and bearer tokens (random, stored as SHA-256).

use crate::storage::records::SessionRec;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

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
/// leader. An entry is trusted at most [`SessionCache::TTL`]; a deleted session is dropped at
/// once when the leader's apply notice arrives (gossip), and after the TTL if that notice is
/// lost. Past half the TTL the next request is still served from the entry, and its caller
/// refreshes it in the background (refresh-ahead): an active user never waits for a session
/// read, and all the users cached together do not all wait at once when the TTL runs out.
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    session: SessionRec,
    at: Instant,
    /// A background refresh is out (see [`Cached::Refresh`]).
    refreshing: bool,
}

/// What the cache holds for a token.
#[derive(Debug, PartialEq)]
pub(crate) enum Cached {
    /// Nothing usable: read storage.
    Miss,
    Hit(SessionRec),
    /// Served, but past half the TTL: the caller refreshes it (one caller per entry), then
    /// reports with [`SessionCache::refreshed`].
    Refresh(SessionRec),
}

impl SessionCache {
    /// Longest a cached session is trusted without asking storage again.
    pub const TTL: Duration = Duration::from_secs(5);
    /// Entries kept before the cache is cleared (bounds memory under token churn).
    const MAX: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, token_hash: &str, now: Instant) -> Cached {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(token_hash) else { return Cached::Miss };
        let age = now.saturating_duration_since(e.at);
        if age >= Self::TTL {
            Cached::Miss
        } else if age >= Self::TTL / 2 && !e.refreshing {
            e.refreshing = true;
            Cached::Refresh(e.session.clone())
        } else {
            Cached::Hit(e.session.clone())
        }
    }

    pub(crate) fn put(&self, token_hash: String, session: SessionRec, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(token_hash, Entry { session, at: now, refreshing: false });
    }

    /// The outcome of a refresh read started at `started` (`Err`: storage did not answer, the
    /// entry ages out and a later request tries again). Kept only while the entry waits for it:
    /// a revocation in between wins.
    pub(crate) fn refreshed(&self, token_hash: &str, read: Result<Option<SessionRec>, ()>, started: Instant) {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(token_hash).filter(|e| e.refreshing) else { return };
        match read {
            Ok(Some(session)) => *e = Entry { session, at: started, refreshing: false },
            Ok(None) => {
                entries.remove(token_hash);
            }
            Err(()) => e.refreshing = false,
        }
    }

    /// Drops deleted sessions.
    pub fn revoke(&self, token_hashes: &[String]) {
        if token_hashes.is_empty() {
            return;
        }
        let mut entries = self.lock();
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
    fn sessions_refresh_ahead_once_and_revocations_win() {
        let cache = SessionCache::default();
        let rec = |u: &str| SessionRec { username: u.into(), expires_at: 1, created_at: 0 };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(cache.get("h", t0), Cached::Miss);
        cache.put("h".into(), rec("a"), t0);
        assert_eq!(cache.get("h", at(1000)), Cached::Hit(rec("a")));
        // Past half the TTL: one caller refreshes, the others are served meanwhile.
        assert_eq!(cache.get("h", at(2600)), Cached::Refresh(rec("a")));
        assert_eq!(cache.get("h", at(2700)), Cached::Hit(rec("a")));
        cache.refreshed("h", Ok(Some(rec("b"))), at(2600));
        assert_eq!(cache.get("h", at(4000)), Cached::Hit(rec("b")), "renewed from the refresh");
        assert_eq!(cache.get("h", at(7700)), Cached::Miss, "the TTL counts from the refresh read");

        // A refresh that failed lets the next request try again; one that found nothing drops it.
        cache.put("h".into(), rec("a"), t0);
        assert_eq!(cache.get("h", at(3000)), Cached::Refresh(rec("a")));
        cache.refreshed("h", Err(()), at(3000));
        assert_eq!(cache.get("h", at(3100)), Cached::Refresh(rec("a")));
        cache.refreshed("h", Ok(None), at(3100));
        assert_eq!(cache.get("h", at(3200)), Cached::Miss);

        // A revocation while a refresh is out: the refresh's answer is not kept.
        cache.put("h".into(), rec("a"), t0);
        assert_eq!(cache.get("h", at(3000)), Cached::Refresh(rec("a")));
        cache.revoke(&["h".to_owned()]);
        cache.refreshed("h", Ok(Some(rec("a"))), at(3000));
        assert_eq!(cache.get("h", at(3100)), Cached::Miss);
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
