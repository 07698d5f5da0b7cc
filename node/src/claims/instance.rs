//! A Raft instance of one cluster (log store, state machine, network), and the small file
//! that says which cluster this node belongs to, asked to join, or follows.
//!
//! `initialize` runs only right after a new cluster id was written to the cluster file,
//! and a node whose file names a cluster never initialises again (openraft #1535: a node
//! initialised twice loops). Leaving a cluster (the losing side of a merge) wipes the Raft
//! files first, then records the cluster to join.

use super::network::{Network, SharedTransport};
use super::service::{ClaimsOptions, RaftTimings};
use super::sm::{AppliedEntry, StateMachine};
use super::store::LogStore;
use super::types::{NodeId, Raft};
use craftmesh_protocol::claims::state::ClaimsState;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// The cluster file (`<claims dir>/cluster.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster whose Raft files are in this dir (initialised here, or joined).
    pub cluster: Option<String>,
    /// The cluster this node asked to join and holds no Raft state of yet.
    pub joining: Option<String>,
    /// Clients: the cluster they forwarded to last (a change is logged, never silent).
    pub followed: Option<String>,
}

/// Largest cluster file accepted.
const MAX_CLUSTER_FILE: u64 = 64 * 1024;

impl ClusterFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    /// Reads the file; a missing one is the default (no cluster yet).
    pub fn load(dir: &Path) -> Result<ClusterFile, String> {
        let path = Self::path(dir);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClusterFile::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(m) if m.len() > MAX_CLUSTER_FILE => return Err(format!("{}: {} bytes, not a cluster file", path.display(), m.len())),
            Ok(_) => {}
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a cluster file ({e}); move it away to start this node as a new member", path.display()))
    }

    /// Writes the file atomically (temp file, fsync, rename, fsync of the dir).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        use std::io::Write as _;
        let path = Self::path(dir);
        let tmp = dir.join("cluster.json.tmp");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A running Raft instance.
pub struct Instance {
    pub cluster: String,
    pub raft: Raft,
    /// The replica's state machine (read by the service; written only by Raft's apply).
    pub state: Arc<Mutex<ClaimsState>>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").field("cluster", &self.cluster).finish()
    }
}

/// openraft's configuration for a cluster; a snapshot every `snapshot_logs` entries.
pub fn raft_config(cluster: &str, t: RaftTimings, snapshot_logs: u64) -> Result<openraft::Config, String> {
    let c = openraft::Config {
        cluster_name: cluster.to_string(),
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_min_ms,
        election_timeout_max: t.election_max_ms,
        // Snapshot often enough that the log (and a restart's replay) stays short: claims
        // state is small, renewals are many.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs.max(1)),
        max_in_snapshot_log_to_keep: snapshot_logs / 5,
        snapshot_max_chunk_size: super::wire::SNAPSHOT_CHUNK,
        install_snapshot_timeout: 2000,
        ..Default::default()
    };
    c.validate().map_err(|e| e.to_string())
}

/// Opens the Raft files in `opts.dir` and starts Raft for `cluster`. Committed entries
/// reach `applied`.
pub async fn start(
    opts: &ClaimsOptions,
    cluster: &str,
    me: NodeId,
    transport: SharedTransport,
    applied: mpsc::UnboundedSender<AppliedEntry>,
) -> Result<Instance, String> {
    let config = Arc::new(raft_config(cluster, opts.raft, opts.snapshot_logs)?);
    let log = LogStore::open(&opts.dir, opts.durability, opts.io).map_err(|e| e.to_string())?;
    let (sm, state) = StateMachine::open(&opts.dir, opts.durability, opts.io, applied).map_err(|e| e.to_string())?;
    let network = Network { transport, cluster: cluster.to_string(), me };
    let raft = Raft::new(me, config, network, log, sm).await.map_err(|e| format!("cannot start Raft: {e}"))?;
    Ok(Instance { cluster: cluster.to_string(), raft, state })
}

/// Removes the Raft files of `dir` (log, vote, committed, snapshot); the cluster file is kept.
pub fn wipe(dir: &Path) -> Result<(), String> {
    LogStore::wipe(dir).map_err(|e| e.to_string())
}

/// A fresh cluster id: 128 random bits, hex, from the thread's [`super::types::CmRng`]
/// (seeded from the OS; a simulation seeds it, so its runs replay).
pub fn new_cluster_id() -> String {
    use rand08::RngCore as _;
    let mut b = [0u8; 16];
    super::types::CmRng.fill_bytes(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_file_round_trips_and_garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(ClusterFile::load(dir.path()).expect("missing is default"), ClusterFile::default());
        let f = ClusterFile { cluster: Some("abc".into()), joining: None, followed: None };
        f.save(dir.path()).expect("save");
        assert_eq!(ClusterFile::load(dir.path()).expect("load"), f);
        std::fs::write(ClusterFile::path(dir.path()), "{not json").expect("write");
        let e = ClusterFile::load(dir.path()).expect_err("garbage");
        assert!(e.contains("cluster.json") && e.contains("not a cluster file"), "{e}");
    }

    #[test]
    fn cluster_ids_differ() {
        assert_ne!(new_cluster_id(), new_cluster_id());
        assert_eq!(new_cluster_id().len(), 32);
    }
}
