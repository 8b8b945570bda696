//! The node's ed25519 identity, kept in `<data-dir>/node.key` (libp2p protobuf encoding,
//! mode 0600). A new key would mean a new PeerId, so it is created once and never replaced.

use libp2p::identity::Keypair;
use libp2p::PeerId;
use std::io::Write;
use std::path::Path;

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// Identity failures.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("node key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file exists but is not a key.
    #[error("node key {0} is corrupt; restore it from a backup (deleting it gives this node a new identity)")]
    Corrupt(String),
}

/// Loads the key under `data_dir`, creating it (and the dir) on first use.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    let io = |source| IdentityError::Io { path: path.display().to_string(), source };
    match std::fs::read(&path) {
        Ok(bytes) => {
            Keypair::from_protobuf_encoding(&bytes).map_err(|_| IdentityError::Corrupt(path.display().to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|_| IdentityError::Corrupt(path.display().to_string()))?;
            // Write-then-rename: a crash never leaves a half-written key behind.
            let tmp = data_dir.join(format!("{KEY_FILE}.tmp"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// The PeerId of the key under `data_dir`.
pub fn peer_id(data_dir: &Path) -> Result<PeerId, IdentityError> {
    Ok(load_or_create(data_dir)?.public().to_peer_id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::peer_id(dir.path()).unwrap();
        let b = super::peer_id(dir.path()).unwrap();
        assert_eq!(a, b);
        std::fs::write(dir.path().join(super::KEY_FILE), b"junk").unwrap();
        assert!(super::peer_id(dir.path()).is_err());
    }
}
