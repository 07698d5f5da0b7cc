//! The node's persistent identity: an ed25519 key in the data dir, in libp2p's protobuf
//! encoding, so the same key becomes the mesh peer id.

use libp2p_identity::{Keypair, PeerId};
use std::path::{Path, PathBuf};

/// Errors loading or creating the identity. A present but unreadable key is never replaced.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read node key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("node key {path} is corrupt ({reason}); move it away to create a new identity (the peer id will change)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write node key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "node.key";

/// Loads `data_dir/node.key` without creating it: `Ok(None)` when there is none (no node
/// has run with this data dir). The CLI uses it to know which node it should talk to.
pub fn load(data_dir: &Path) -> Result<Option<Keypair>, IdentityError> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            if bytes.len() > 4096 {
                return Err(IdentityError::Corrupt { path, reason: format!("{} bytes is too large for a key", bytes.len()) });
            }
            let kp = Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt { path: path.clone(), reason: e.to_string() })?;
            if kp.clone().try_into_ed25519().is_err() {
                return Err(IdentityError::Corrupt { path, reason: "not an ed25519 key".into() });
            }
            Ok(Some(kp))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Loads `data_dir/node.key`, creating it on first start. Returns the keypair and whether it was new.
pub fn load_or_create(data_dir: &Path) -> Result<(Keypair, bool), IdentityError> {
    if let Some(kp) = load(data_dir)? {
        return Ok((kp, false));
    }
    let path = data_dir.join(KEY_FILE);
    let kp = Keypair::generate_ed25519();
    let bytes = kp.to_protobuf_encoding().map_err(|e| IdentityError::Corrupt { path: path.clone(), reason: e.to_string() })?;
    write_private(&path, &bytes).map_err(|source| IdentityError::Write { path: path.clone(), source })?;
    Ok((kp, true))
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The peer id of a keypair.
pub fn peer_id(kp: &Keypair) -> PeerId {
    kp.public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_across_restarts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, new_a) = load_or_create(tmp.path()).expect("create");
        let (b, new_b) = load_or_create(tmp.path()).expect("load");
        assert!(new_a && !new_b);
        assert_eq!(load(tmp.path()).expect("read-only load").map(|k| peer_id(&k)), Some(peer_id(&a)));
        assert_eq!(peer_id(&a), peer_id(&b));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tmp.path().join(KEY_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_reported_and_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join(KEY_FILE), b"garbage").expect("write");
        assert!(load(&tmp.path().join("none")).expect("missing is not an error").is_none());
        let err = load_or_create(tmp.path()).expect_err("corrupt");
        assert!(matches!(err, IdentityError::Corrupt { .. }));
        assert_eq!(std::fs::read(tmp.path().join(KEY_FILE)).expect("read"), b"garbage");
    }
}
