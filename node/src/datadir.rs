//! The node's data directory: one node per directory, enforced by an exclusive file lock.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Errors opening the data directory. None of them changes anything on disk except
/// creating the directory itself.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data dir {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
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
    /// Creates the directory if needed and takes the exclusive lock on `node.lock`.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        std::fs::create_dir_all(path).map_err(|source| DataDirError::Create { path: path.to_path_buf(), source })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
