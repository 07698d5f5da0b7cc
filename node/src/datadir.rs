//! The node's data directory: one node per directory, enforced by an exclusive file lock.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Errors opening the data directory. None of them changes anything on disk except
/// creating the directory itself (mode 0700) when it did not exist.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data dir {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    /// Nothing changed: the directory is left as it is.
    #[error(
        "data dir {path} is writable by every user (mode {mode:o}); use a directory only you can write, e.g. a new one (craftmesh creates it with mode 0700), or `chmod o-w` it"
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    /// Nothing changed: the directory is left as it is.
    #[error("data dir {path} is owned by uid {owner}, not by this user (uid {me}); use a directory of your own")]
    ForeignOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("data dir {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot open lock file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("another craftmesh node is already running with data dir {path}{holder}; stop it or pass a different --data-dir")]
    Locked { path: PathBuf, holder: String },
}

/// An open, locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Default data dir: `$XDG_DATA_HOME/craftmesh`, else `~/.local/share/craftmesh`.
pub fn default_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(x) = env("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(x).join("craftmesh");
    }
    match crate::config_files::home_dir() {
        Some(h) => h.join(".local/share/craftmesh"),
        None => PathBuf::from("/var/lib/craftmesh"),
    }
}

impl DataDir {
    /// Creates the directory (mode 0700) if it does not exist, refuses one that other
    /// users could write into, and takes the exclusive lock on `node.lock`. An existing
    /// directory's mode is never changed (`--data-dir /tmp` must not chmod `/tmp`).
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        if !path.exists() {
            create_private(path).map_err(|source| DataDirError::Create { path: path.to_path_buf(), source })?;
        }
        check_ownership(path)?;
        let lock_path = path.join("node.lock");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|source| DataDirError::Open { path: lock_path.clone(), source })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder =
                    std::fs::read_to_string(&lock_path).ok().and_then(|s| s.trim().parse::<u32>().ok()).map(|p| format!(" (pid {p})")).unwrap_or_default();
                return Err(DataDirError::Locked { path: path.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(DataDirError::Open { path: lock_path, source }),
        }
        // For people only: who holds the lock. The lock itself is what counts.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DataDir { path: path.to_path_buf(), _lock: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the running node writes its API address for the CLI.
    pub fn api_addr_file(path: &Path) -> PathBuf {
        path.join("api.addr")
    }
}

/// Creates `path` and missing parents; the last component gets mode 0700 (parents keep
/// the usual umask-derived mode).
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut b = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    match b.create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Refuses a data dir another user could write into: world-writable, or owned by someone
/// else. It holds the node's identity key and the API address the CLI trusts.
fn check_ownership(path: &Path) -> Result<(), DataDirError> {
    let meta = std::fs::metadata(path).map_err(|source| DataDirError::Open { path: path.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory { path: path.to_path_buf() });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode() & 0o7777;
        if mode & 0o002 != 0 {
            return Err(DataDirError::WorldWritable { path: path.to_path_buf(), mode });
        }
        let me = effective_uid();
        if let Some(me) = me
            && meta.uid() != me
        {
            return Err(DataDirError::ForeignOwner { path: path.to_path_buf(), owner: meta.uid(), me });
        }
    }
    Ok(())
}

/// This process's effective uid, read from `/proc/self/status` (no `unsafe` for
/// `geteuid`). `None` where it cannot be read: the owner check is then skipped.
#[cfg(unix)]
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved fs
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn a_new_data_dir_is_created_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b/craftmesh");
        let d = DataDir::open(&dir).expect("open");
        assert_eq!(mode(d.path()), 0o700);
    }

    #[test]
    fn a_world_writable_data_dir_is_refused_and_left_as_it_is() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let err = DataDir::open(tmp.path()).expect_err("a 1777 dir must be refused");
        assert!(matches!(err, DataDirError::WorldWritable { .. }), "{err}");
        assert!(err.to_string().contains("writable by every user"), "{err}");
        assert_eq!(mode(tmp.path()), 0o1777, "the mode is not changed");
        assert!(!tmp.path().join("node.lock").exists(), "nothing is written into it");
    }

    #[test]
    fn an_existing_private_enough_dir_keeps_its_mode() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).expect("chmod");
        let d = DataDir::open(tmp.path()).expect("open");
        assert_eq!(mode(d.path()), 0o750, "an existing dir's mode is never changed");
    }

    #[test]
    fn a_data_dir_owned_by_another_user_is_refused() {
        if effective_uid() != Some(0) {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
        let err = DataDir::open(&dir).expect_err("a foreign-owned dir must be refused");
        assert!(matches!(err, DataDirError::ForeignOwner { owner: 65534, .. }), "{err}");
        assert!(!dir.join("node.lock").exists());
    }

    #[test]
    fn second_open_of_the_same_dir_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = DataDir::open(tmp.path()).expect("first open");
        let err = DataDir::open(tmp.path()).expect_err("second open must fail");
        assert!(matches!(err, DataDirError::Locked { .. }), "{err}");
        assert!(err.to_string().contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DataDir::open(tmp.path()).expect("open after release");
    }
}
