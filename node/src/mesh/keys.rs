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

/// Name of the mesh key in the data directory (used when no other key is given).
pub const DATA_DIR_KEY: &str = "mesh.key";

/// 32 random bytes from the OS RNG (through an ed25519 secret, hashed with a domain tag).
pub fn random_bytes(tag: &str) -> [u8; 32] {
    let kp = libp2p_identity::Keypair::generate_ed25519();
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update([0u8]);
    h.update(kp.try_into_ed25519().map(|k| k.secret().as_ref().to_vec()).unwrap_or_default());
    h.finalize().into()
}

/// The 32 bytes of a key (read back from its key-file text: libp2p keeps them private).
pub fn key_bytes(key: &PreSharedKey) -> [u8; 32] {
    let text = key.to_string();
    let mut out = [0u8; 32];
    if let Some(hexline) = text.lines().last()
        && let Ok(v) = hex::decode(hexline.trim())
        && v.len() == 32
    {
        out.copy_from_slice(&v);
    }
    out
}

/// Loads `path`, or creates a new key there when it does not exist. `true`: created now.
pub fn load_or_create(path: &Path) -> Result<(PreSharedKey, bool), KeyError> {
    match load(path) {
        Ok(k) => Ok((k, false)),
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => match generate(path) {
            Ok(k) => Ok((k, true)),
            // Another process created it meanwhile: use theirs.
            Err(KeyError::Exists { .. }) => load(path).map(|k| (k, false)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// What [`store`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// There was no key: it is written.
    New,
    /// The same key was there already: nothing changed.
    Same,
    /// A different key was there: it was moved to this path, and the new key written.
    Replaced { backup: String },
}

/// Writes `key` to `path` atomically (a 0600 temp file renamed over it). A different key
/// already there is kept as `<path>.bak` first. On error the old key is in place.
pub fn store(path: &Path, key: &PreSharedKey) -> Result<Stored, KeyError> {
    use std::io::Write as _;
    let p = path.display().to_string();
    let old = match load(path) {
        Ok(k) => Some(k),
        Err(KeyError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        // An unreadable or broken file is kept as the backup too.
        Err(_) => None,
    };
    if old.as_ref().is_some_and(|o| key_bytes(o) == key_bytes(key)) {
        return Ok(Stored::Same);
    }
    let tmp = path.with_extension(format!("key.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let write = || -> Result<(), std::io::Error> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(format!("{key}\n").as_bytes())?;
        f.sync_all()
    };
    if let Err(source) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(KeyError::Write { path: p, source });
    }
    let mut result = Stored::New;
    if path.exists() {
        let mut bak = path.as_os_str().to_owned();
        bak.push(".bak");
        let bak = std::path::PathBuf::from(bak);
        if let Err(source) = std::fs::rename(path, &bak) {
            let _ = std::fs::remove_file(&tmp);
            return Err(KeyError::Write { path: bak.display().to_string(), source });
        }
        result = Stored::Replaced { backup: bak.display().to_string() };
    }
    std::fs::rename(&tmp, path).map_err(|source| KeyError::Write { path: p, source })?;
    Ok(result)
}

/// Which key `up` (and `invite`) use.
#[derive(Debug, Clone)]
pub enum KeyChoice {
    /// The open mesh, asked for with `--open` or `mesh.open: true`.
    Open,
    /// A key file: `--mesh-key`, `mesh.key_file`, or (`default`) the data dir's `mesh.key`.
    File { path: std::path::PathBuf, key: PreSharedKey, created: bool, default: bool },
}

/// Why no key could be chosen. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0} asks for an open mesh but {1} gives a mesh key; use one or the other")]
    OpenWithKey(String, String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The resolution order: `--open` / `mesh.open: true` → open; else `--mesh-key` /
/// `mesh.key_file` (relative to `project_dir`); else `<data_dir>/mesh.key`, created when
/// missing. An open mesh asked for together with a key is an error; `--mesh-key` wins
/// over `mesh.open` of the configuration (flags override the configuration).
pub fn resolve(
    cli_key: Option<&Path>,
    cli_open: bool,
    mesh: &craftmesh_protocol::config::mcp::MeshPatch,
    project_dir: Option<&Path>,
    data_dir: &Path,
) -> Result<KeyChoice, ResolveError> {
    let cfg_key = mesh.key_file.as_ref().map(|k| {
        let p = crate::config_files::expand_home(k);
        if p.is_absolute() { p } else { project_dir.map(Path::to_path_buf).unwrap_or_default().join(p) }
    });
    let cfg_open = mesh.open == Some(true);
    if cli_open && let Some(k) = cli_key {
        return Err(ResolveError::OpenWithKey("--open".into(), format!("--mesh-key {}", k.display())));
    }
    if cli_open && let Some(k) = &cfg_key {
        return Err(ResolveError::OpenWithKey("--open".into(), format!("mesh.key_file {}", k.display())));
    }
    if cfg_open
        && cli_key.is_none()
        && let Some(k) = &cfg_key
    {
        return Err(ResolveError::OpenWithKey("mesh.open".into(), format!("mesh.key_file {}", k.display())));
    }
    if cli_open || (cfg_open && cli_key.is_none()) {
        return Ok(KeyChoice::Open);
    }
    if let Some(p) = cli_key.map(Path::to_path_buf).or(cfg_key) {
        let key = load(&p)?;
        return Ok(KeyChoice::File { path: p, key, created: false, default: false });
    }
    let path = data_dir.join(DATA_DIR_KEY);
    let (key, created) = load_or_create(&path)?;
    Ok(KeyChoice::File { path, key, created, default: true })
}

/// Writes a new random key to `path` (mode 0600), refusing to overwrite.
pub fn generate(path: &Path) -> Result<PreSharedKey, KeyError> {
    use std::io::Write as _;
    let p = path.display().to_string();
    let key = PreSharedKey::new(random_bytes("craftmesh/psk/v1"));
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
    fn a_stored_key_replaces_a_different_one_and_keeps_it_as_bak() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("mesh.key");
        let (first, created) = load_or_create(&path).expect("create");
        assert!(created);
        assert!(!load_or_create(&path).expect("load").1);
        assert_eq!(store(&path, &first).expect("same"), Stored::Same);
        let other = PreSharedKey::new([9; 32]);
        assert_eq!(key_bytes(&other), [9; 32]);
        assert!(matches!(store(&path, &other).expect("replace"), Stored::Replaced { .. }));
        assert_eq!(key_bytes(&load(&path).expect("load")), [9; 32]);
        assert_eq!(key_bytes(&load(&tmp.path().join("mesh.key.bak")).expect("bak")), key_bytes(&first));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn up_uses_open_only_when_asked_an_explicit_key_next_and_the_data_dir_key_last() {
        use craftmesh_protocol::config::mcp::MeshPatch;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dd = tmp.path().join("data");
        std::fs::create_dir_all(&dd).expect("mkdir");
        let explicit = tmp.path().join("explicit.key");
        generate(&explicit).expect("generate");
        let none = MeshPatch::default();
        assert!(matches!(resolve(None, true, &none, None, &dd), Ok(KeyChoice::Open)));
        assert!(matches!(resolve(Some(&explicit), true, &none, None, &dd), Err(ResolveError::OpenWithKey(..))));
        let open_cfg = MeshPatch { open: Some(true), ..MeshPatch::default() };
        assert!(matches!(resolve(None, false, &open_cfg, None, &dd), Ok(KeyChoice::Open)));
        assert!(matches!(resolve(Some(&explicit), false, &open_cfg, None, &dd), Ok(KeyChoice::File { default: false, .. })));
        let file_cfg = MeshPatch { key_file: Some("explicit.key".into()), ..MeshPatch::default() };
        assert!(matches!(resolve(None, false, &file_cfg, Some(tmp.path()), &dd), Ok(KeyChoice::File { default: false, .. })));
        assert!(matches!(resolve(None, true, &file_cfg, Some(tmp.path()), &dd), Err(ResolveError::OpenWithKey(..))));
        assert!(!dd.join(DATA_DIR_KEY).exists(), "nothing created while a key was given");
        let Ok(KeyChoice::File { created: true, default: true, key: first, .. }) = resolve(None, false, &none, None, &dd) else { panic!("first run creates") };
        let Ok(KeyChoice::File { created: false, key: again, .. }) = resolve(None, false, &none, None, &dd) else { panic!("second run loads") };
        assert_eq!(key_bytes(&first), key_bytes(&again));
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("bad.key");
        std::fs::write(&path, "hello").expect("write");
        assert!(matches!(load(&path), Err(KeyError::Invalid { .. })));
    }
}
