//! openraft's `RaftStateMachine` (storage-v2) around the pure
//! [`ClaimsState`](craftmesh_protocol::claims::state::ClaimsState): applies committed entries
//! in order, tells the claims service what each one changed, and keeps the snapshot in
//! `<dir>/snapshot`.
//!
//! Persistence is by snapshot: `apply` changes memory only; a restart loads the last
//! snapshot and openraft re-applies the log after it (up to the committed id the log store
//! kept). So a snapshot must always match its `last_log_id` exactly: the builder captures
//! the state bytes, last applied id and membership together, before any later entry.
//!
//! The snapshot file (and the bytes sent to followers) is a framed record (format version,
//! crc32, bincode) of the snapshot's meta and the state's own `to_bytes`.

use super::store::{Durability, Io, SNAPSHOT_FILE, StoreError, frame, lock, read_framed, tmp_path, unframe, write_atomic};
use super::types::{Cm, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership};
use craftmesh_protocol::claims::state::{ClaimsState, MAX_SNAPSHOT};
use craftmesh_protocol::claims::{Change, Outcome};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// Largest snapshot file: the state's own limit plus room for the meta (membership).
const MAX_SNAPSHOT_FILE: usize = MAX_SNAPSHOT + (1 << 20);

/// The claims state, shared with the claims service for reads. Lock it briefly and never
/// across an `.await`.
pub type SharedState = Arc<Mutex<ClaimsState>>;

/// What applying one normal entry did, for the claims service (it turns `changes` into
/// events and wakes the waiters of freed keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    pub index: u64,
    pub term: u64,
    pub outcome: Outcome,
    pub changes: Vec<Change>,
}

/// The snapshot as stored and sent.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    /// [`ClaimsState::to_bytes`].
    state: Vec<u8>,
}

/// The claims state machine of one node (see the module docs).
#[derive(Debug)]
pub struct StateMachine {
    state: SharedState,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    applied: UnboundedSender<AppliedEntry>,
    files: Arc<SnapshotFiles>,
    /// Snapshots built by this instance, to make snapshot ids unique.
    built: u64,
}

/// Builds a snapshot of the state as it was when the builder was made.
#[derive(Debug)]
pub struct SnapshotBuilder {
    meta: SnapshotMeta,
    state: Vec<u8>,
    files: Arc<SnapshotFiles>,
}

/// Where snapshots are written, and the meta of the one on disk. Its lock is held while the
/// file is replaced, so a build finishing late never replaces a newer snapshot.
#[derive(Debug)]
struct SnapshotFiles {
    dir: PathBuf,
    durability: Durability,
    io: Io,
    current: Mutex<Option<SnapshotMeta>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, loading `dir/snapshot` when there is one (openraft
    /// then re-applies the log after it). Returns the state shared with the claims service.
    ///
    /// `applied` gets an [`AppliedEntry`] for every normal entry applied. It is unbounded
    /// because apply must never wait on its reader and must not drop (a lost release would
    /// leave a waiter asleep); that is safe because the receiver is the node's own claims
    /// service, which drains it without awaiting anything else, and each entry yields one
    /// outcome and a bounded number of changes (the holders of at most the keys it touched
    /// or expired). Send errors (the service gone, at shutdown) are ignored.
    pub fn open(dir: &Path, durability: Durability, io: Io, applied: UnboundedSender<AppliedEntry>) -> Result<(StateMachine, SharedState), StoreError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir))?;
        let tmp = tmp_path(dir, SNAPSHOT_FILE);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(&tmp)(e)),
            _ => {}
        }
        let path = dir.join(SNAPSHOT_FILE);
        let (state, meta) = match read_framed::<SnapshotFile, MAX_SNAPSHOT_FILE>(&path)? {
            Some(file) => {
                let state = decode_state(&file).map_err(|reason| StoreError::BadFile { path: path.clone(), reason })?;
                tracing::debug!(path = %path.display(), meta = %file.meta, "claims snapshot loaded");
                (state, Some(file.meta))
            }
            None => (ClaimsState::default(), None),
        };
        let shared = Arc::new(Mutex::new(state));
        let sm = StateMachine {
            state: Arc::clone(&shared),
            last_applied: meta.as_ref().and_then(|m| m.last_log_id),
            membership: meta.as_ref().map(|m| m.last_membership.clone()).unwrap_or_default(),
            applied,
            files: Arc::new(SnapshotFiles { dir: dir.to_path_buf(), durability, io, current: Mutex::new(meta) }),
            built: 0,
        };
        Ok((sm, shared))
    }

    /// The state shared with the claims service.
    pub fn state(&self) -> SharedState {
        Arc::clone(&self.state)
    }

    /// Id of the last entry applied (or of the snapshot loaded).
    pub fn last_applied(&self) -> Option<LogId> {
        self.last_applied
    }
}

impl RaftStateMachine<Cm> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        for entry in entries {
            let id = entry.log_id;
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(cmd) => {
                    let applied = lock(&self.state).apply(id.index, id.leader_id.term, &cmd);
                    let note = AppliedEntry { index: id.index, term: id.leader_id.term, outcome: applied.outcome.clone(), changes: applied.changes };
                    // The service gone (shutdown) needs no news.
                    let _ = self.applied.send(note);
                    applied.outcome
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(id), m);
                    Outcome::Done
                }
            };
            self.last_applied = Some(id);
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Captures the state now (its bytes, the last applied id and membership), so later
    /// entries cannot leak into the snapshot while it is written.
    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        self.built += 1;
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index, self.built),
            None => format!("none-{}", self.built),
        };
        let meta = SnapshotMeta { last_log_id: self.last_applied, last_membership: self.membership.clone(), snapshot_id };
        let state = lock(&self.state).to_bytes();
        SnapshotBuilder { meta, state, files: Arc::clone(&self.files) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Checks the received bytes (size, version, checksum, that they are the snapshot
    /// `meta` names, that the state decodes), writes them as the snapshot file, then
    /// replaces the state. Garbage is refused with the state untouched.
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let files = Arc::clone(&self.files);
        let want = meta.clone();
        let state = blocking(self.files.io, move || -> Result<ClaimsState, String> {
            let file = unframe::<SnapshotFile, MAX_SNAPSHOT_FILE>(&bytes)?;
            if file.meta != want {
                return Err(format!("the data is snapshot {}, not {want}", file.meta));
            }
            let state = decode_state(&file)?;
            files.replace(&bytes, &want, true).map_err(|e| e.to_string())?;
            Ok(state)
        })
        .await
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(format!("installing snapshot {}: {e}", meta.snapshot_id))))?;
        *lock(&self.state) = state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::debug!(meta = %meta, "claims snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let files = Arc::clone(&self.files);
        blocking(self.files.io, move || files.read()).await.and_then(|r| r).map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(e)).into())
    }
}

impl RaftSnapshotBuilder<Cm> for SnapshotBuilder {
    /// Writes the captured state as the snapshot file, unless a newer snapshot was written
    /// meanwhile (installed from the leader), and returns it either way.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let meta = self.meta.clone();
        let file = SnapshotFile { meta: meta.clone(), state: std::mem::take(&mut self.state) };
        let files = Arc::clone(&self.files);
        let bytes = blocking(self.files.io, move || -> Result<Vec<u8>, String> {
            let bytes = frame(&file)?;
            if !files.replace(&bytes, &file.meta, false).map_err(|e| e.to_string())? {
                tracing::debug!(meta = %file.meta, "a newer claims snapshot is on disk; not replacing it");
            }
            Ok(bytes)
        })
        .await
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::error(e)))?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl SnapshotFiles {
    /// Writes `bytes` as the snapshot file, unless `force` is off and the one on disk is
    /// newer (then `false`).
    fn replace(&self, bytes: &[u8], meta: &SnapshotMeta, force: bool) -> Result<bool, StoreError> {
        let mut current = lock(&self.current);
        if !force && current.as_ref().is_some_and(|c| c.last_log_id > meta.last_log_id) {
            return Ok(false);
        }
        write_atomic(&self.dir, SNAPSHOT_FILE, bytes, self.durability)?;
        *current = Some(meta.clone());
        Ok(true)
    }

    /// The snapshot on disk, checked (version, checksum, meta).
    fn read(&self) -> Result<Option<Snapshot>, String> {
        let current = lock(&self.current);
        let Some(meta) = current.as_ref() else { return Ok(None) };
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = unframe::<SnapshotFile, MAX_SNAPSHOT_FILE>(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.meta != *meta {
            return Err(format!("{}: holds snapshot {}, expected {meta}", path.display(), file.meta));
        }
        Ok(Some(Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

/// Decodes the state of a snapshot file, checking it is not ahead of the snapshot's meta.
fn decode_state(file: &SnapshotFile) -> Result<ClaimsState, String> {
    let state = ClaimsState::from_bytes(&file.state).map_err(|e| e.to_string())?;
    let upto = file.meta.last_log_id.map_or(0, |id| id.index);
    if state.last_index() > upto {
        return Err(format!("the state has entry {} applied, past the snapshot's last log id {upto}", state.last_index()));
    }
    Ok(state)
}

/// Runs snapshot file work off the async threads (`Io::Thread`) or right here (`Io::Inline`,
/// for the deterministic simulation).
async fn blocking<T: Send + 'static>(io: Io, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match io {
        Io::Inline => Ok(f()),
        Io::Thread => tokio::task::spawn_blocking(f).await.map_err(|e| format!("the snapshot file task failed: {e}")),
    }
}

#[cfg(test)]
#[path = "sm_tests.rs"]
mod tests;
