//! Signing and verifying role assignments with the coordinator's ed25519 node key
//! (ed25519-dalek). A receiver needs nothing but the assignment: the public key is inside the
//! coordinator's PeerId (identity multihash of the protobuf-encoded key).

use chorus_protocol::cluster::{RoleAssignment, SignedAssignment};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Why an assignment was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// The node key is not ed25519.
    #[error("node key is not ed25519")]
    NotEd25519,
    /// The coordinator field is not a PeerId with an inline ed25519 key.
    #[error("coordinator '{0}' is not an ed25519 PeerId")]
    BadCoordinator(String),
    /// The signature is malformed or does not match.
    #[error("bad signature")]
    BadSignature,
}

fn signing_key(key: &Keypair) -> Result<SigningKey, SignError> {
    let kp = key.clone().try_into_ed25519().map_err(|_| SignError::NotEd25519)?;
    let secret: [u8; 32] = kp.secret().as_ref().try_into().map_err(|_| SignError::NotEd25519)?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Signs `assignment` with `key` (which must be the coordinator's).
pub fn sign(assignment: RoleAssignment, key: &Keypair) -> Result<SignedAssignment, SignError> {
    let sig = signing_key(key)?.sign(&assignment.signing_bytes());
    Ok(SignedAssignment { assignment, signature: hex::encode(sig.to_bytes()) })
}

/// The ed25519 key inside an ed25519 PeerId.
pub fn verifying_key(peer: &PeerId) -> Result<VerifyingKey, SignError> {
    let bad = || SignError::BadCoordinator(peer.to_string());
    let mh = peer.as_ref();
    if mh.code() != 0 {
        return Err(bad()); // not an identity multihash: the key is not inline
    }
    let pk = PublicKey::try_decode_protobuf(mh.digest()).map_err(|_| bad())?;
    let ed = pk.try_into_ed25519().map_err(|_| bad())?;
    VerifyingKey::from_bytes(&ed.to_bytes()).map_err(|_| bad())
}

/// Checks that `signed` was signed by the key of its own `coordinator`.
pub fn verify(signed: &SignedAssignment) -> Result<PeerId, SignError> {
    let peer: PeerId = signed
        .assignment
        .coordinator
        .parse()
        .map_err(|_| SignError::BadCoordinator(signed.assignment.coordinator.clone()))?;
    let key = verifying_key(&peer)?;
    let bytes: [u8; 64] =
        hex::decode(&signed.signature).ok().and_then(|b| b.try_into().ok()).ok_or(SignError::BadSignature)?;
    key.verify(&signed.assignment.signing_bytes(), &Signature::from_bytes(&bytes))
        .map_err(|_| SignError::BadSignature)?;
    Ok(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(coordinator: &PeerId, epoch: u64) -> RoleAssignment {
        RoleAssignment { epoch, round: 1, coordinator: coordinator.to_string(), ..Default::default() }
    }

    #[test]
    fn sign_verify_and_forgeries() {
        let key = Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let signed = sign(assignment(&me, 3), &key).unwrap();
        assert_eq!(verify(&signed), Ok(me));
        // No genesis voters: the same signed bytes as before the field existed, so nodes of
        // both versions verify each other's assignments.
        let bytes = String::from_utf8(signed.assignment.signing_bytes()).unwrap();
        assert!(bytes.ends_with(r#""issued_at":0,"genesis":false}"#), "{bytes}");

        let mut tampered = signed.clone();
        tampered.assignment.epoch = 4;
        assert_eq!(verify(&tampered), Err(SignError::BadSignature));

        // Signed by someone else while claiming to be `me`.
        let mallory = Keypair::generate_ed25519();
        let forged = sign(assignment(&me, 9), &mallory).unwrap();
        assert_eq!(verify(&forged), Err(SignError::BadSignature));

        let mut junk = signed.clone();
        junk.signature = "zz".into();
        assert_eq!(verify(&junk), Err(SignError::BadSignature));
        let mut nobody = signed;
        nobody.assignment.coordinator = "not-a-peer".into();
        assert!(verify(&nobody).is_err());
    }
}
