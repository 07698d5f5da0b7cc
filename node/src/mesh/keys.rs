//! The mesh's pre-shared key (libp2p pnet, 256 bits) and the mesh id derived from it.

use libp2p::pnet::PreSharedKey;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Errors reading or writing a key file. Nothing is overwritten on any error.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read mesh key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("mesh key {path} is not a valid key file ({reason}); expected the three-line `/key/swarm/psk/1.0.0/` format written by `craftmesh keygen`")]
    Invalid { path: String, reason: String },
    #[error("{path} already exists; refusing to overwrite a mesh key")]
    Exists { path: String },
    #[error("cannot write mesh key {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// Mesh id of a node without a key.
pub const OPEN_MESH: &str = "open";

/// The public mesh id of a key: a hash, never the key.
pub fn mesh_id(key: Option<&PreSharedKey>) -> String {
    match key {
        None => OPEN_MESH.to_string(),
        Some(k) => {
            let mut h = Sha256::new();
            h.update(b"craftmesh/mesh-id/v1\0");
            h.update(k.fingerprint().to_string().as_bytes());
            hex::encode(&h.finalize()[..8])
        }
    }
}

/// Reads a key file (size-checked before reading).
pub fn load(path: &Path) -> Result<PreSharedKey, KeyError> {
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: p.clone(), source })?;
    if meta.len() > 1024 {
        return Err(KeyError::Invalid { path: p, reason: format!("{} bytes is too large", meta.len()) });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: p.clone(), source })?;
    text.parse::<PreSharedKey>().map_err(|e| KeyError::Invalid { path: p, reason: e.to_string() })
}

/// Writes a new random key to `path` (mode 0600), refusing to overwrite.
pub fn generate(path: &Path) -> Result<PreSharedKey, KeyError> {
    use std::io::Write as _;
    let p = path.display().to_string();
    let mut bytes = [0u8; 32];
    let kp = libp2p_identity::Keypair::generate_ed25519();
    // 32 bytes from the OS RNG through an ed25519 secret, hashed with a domain tag.
    let mut h = Sha256::new();
    h.update(b"craftmesh/psk/v1\0");
    h.update(kp.clone().try_into_ed25519().map(|k| k.secret().as_ref().to_vec()).unwrap_or_default());
    bytes.copy_from_slice(&h.finalize());
    let key = PreSharedKey::new(bytes);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists { KeyError::Exists { path: p.clone() } } else { KeyError::Write { path: p.clone(), source } }
    })?;
    f.write_all(format!("{key}\n").as_bytes()).map_err(|source| KeyError::Write { path: p.clone(), source })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_loads_back_with_the_same_mesh_id() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("mesh.key");
        let k = generate(&path).expect("generate");
        let back = load(&path).expect("load");
        assert_eq!(mesh_id(Some(&k)), mesh_id(Some(&back)));
        assert_ne!(mesh_id(Some(&k)), OPEN_MESH);
        assert!(matches!(generate(&path), Err(KeyError::Exists { .. })));
        let other = generate(&tmp.path().join("other.key")).expect("generate");
        assert_ne!(mesh_id(Some(&k)), mesh_id(Some(&other)), "two keys, two meshes");
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("bad.key");
        std::fs::write(&path, "hello").expect("write");
        assert!(matches!(load(&path), Err(KeyError::Invalid { .. })));
    }
}
