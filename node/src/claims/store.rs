//! The durable Raft log of the claims cluster (openraft `RaftLogStorage`, storage-v2): log
//! entries, the vote and the committed log id, in one directory (`<data>/claims/`).
//!
//! Files:
//! - `log`: append-only records `[u32 len BE][u32 crc32 BE][payload]`, payload = a format
//!   version byte then bincode of a [`LogOp`]. Opening replays them. A damaged record at the
//!   very end is an interrupted write and is cut off; a damaged record followed by valid
//!   ones is corruption and the store refuses to open. The file is rewritten (compacted) once
//!   it is mostly entries that were purged or truncated.
//! - `vote`, `committed`: small framed files (version, crc32, bincode), replaced atomically.
//!
//! Ordering: every write goes through one writer, in call order (a thread in production,
//! the calling task in the simulation), so no write is durable before an earlier one.
//! `append` returns at once (readers see the entries) and openraft's `LogFlushed` is
//! completed once the entries are on disk; `save_vote` and `truncate` return once durable;
//! `purge` and `save_committed` return at once (see their docs for why that is safe).

use super::types::{Cm, Entry, LogId, StorageError, Vote};
use format::{remove_if_present, replay, sync_dir};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use writer::{Done, Job, Writer, writer_thread};

pub(crate) use format::{frame, read_framed, tmp_path, unframe, write_atomic};

/// The log file's name in the store directory.
pub const LOG_FILE: &str = "log";
/// The vote file's name.
pub const VOTE_FILE: &str = "vote";
/// The committed-log-id file's name.
pub const COMMITTED_FILE: &str = "committed";
/// The state machine's snapshot file (written by `sm`; here so [`LogStore::wipe`] knows it).
pub const SNAPSHOT_FILE: &str = "snapshot";
/// Format version of log records and framed files; anything else is refused.
const FORMAT: u8 = 1;
/// Largest log record payload, checked before decoding (larger appends are split).
pub const MAX_RECORD: usize = 16 << 20;
/// Largest vote or committed file.
const MAX_SMALL: usize = 4096;
/// `[u32 len][u32 crc]`.
const HEADER: usize = 8;
/// The log is rewritten once it is over this size and 4× the bytes of its live entries.
const COMPACT_FLOOR: u64 = 1 << 20;
/// Most queued writes the writer thread takes in one batch (one write, one fsync).
const MAX_BATCH: usize = 1024;

/// Whether writes reach the disk before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync (fdatasync for the log) before acknowledging; directories are synced after
    /// renames. What production runs.
    Fsync,
    /// No fsync: a write is acknowledged once the OS has it. For the deterministic
    /// simulation, whose "crash" keeps the files (and for tests).
    Buffered,
}

/// Where the writes are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// On a dedicated writer thread that group-commits whatever is queued (one write, one
    /// fsync per batch), so the async runtime never blocks on the disk. Production.
    Thread,
    /// In the calling task, before the call returns: deterministic, for the
    /// single-threaded simulation.
    Inline,
}

/// Why the store could not open, or a write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing `path` failed. When writing, the store stops taking writes (what
    /// is on disk is whatever was acknowledged before).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A log record is damaged and valid records follow it, so it is not an interrupted
    /// write. Nothing was changed: the store refuses to open.
    #[error(
        "{path}: damaged record at offset {offset}: {reason}; valid records follow it (at offset {next}), so this is corruption, not a torn write; refusing to open"
    )]
    Corrupt { path: PathBuf, offset: u64, next: u64, reason: String },
    /// A log record's checksum holds but its content cannot be read (unknown format
    /// version, or not a log operation). Nothing was changed: the store refuses to open.
    #[error("{path}: unreadable record at offset {offset}: {reason}")]
    Undecodable { path: PathBuf, offset: u64, reason: String },
    /// A vote, committed or snapshot file is not one this build wrote (garbage, truncated,
    /// unknown version). Nothing was changed.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// A log operation could not be encoded. Nothing was written.
    #[error("cannot encode a log operation: {0}")]
    Encode(String),
    /// One log entry is larger than a record may be. Nothing was written.
    #[error("log entry {index} encodes to {bytes} bytes, over the {MAX_RECORD}-byte record limit")]
    TooLarge { index: u64, bytes: usize },
    /// An earlier write failed (or the writer thread is gone): the store takes no more
    /// writes; reopen it to find out what is on disk.
    #[error("the claims log stopped taking writes: {0}")]
    Stopped(String),
}

/// One change to the log, as recorded in the `log` file.
#[derive(Debug, Clone, Deserialize)]
pub enum LogOp {
    Append(Vec<Entry>),
    /// Drop entries with index >= `since`.
    Truncate {
        since: u64,
    },
    /// Drop entries with index <= `upto.index`; `upto` becomes the last purged id.
    Purge {
        upto: LogId,
    },
}

/// [`LogOp`] as written: borrows the entries (same encoding, as serde sees `&[T]` as `Vec<T>`).
#[derive(Serialize)]
enum OpRef<'a> {
    Append(&'a [Entry]),
    Truncate { since: u64 },
    Purge { upto: LogId },
}

impl LogOp {
    fn as_ref(&self) -> OpRef<'_> {
        match self {
            LogOp::Append(e) => OpRef::Append(e),
            LogOp::Truncate { since } => OpRef::Truncate { since: *since },
            LogOp::Purge { upto } => OpRef::Purge { upto: *upto },
        }
    }
}

/// The durable Raft log, vote and committed id of one node (see the module docs).
pub struct LogStore {
    dir: PathBuf,
    mem: Arc<Mutex<Mem>>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    backend: Backend,
}

/// A cheap, cloneable reader of the log (openraft's replication tasks hold one each).
#[derive(Debug, Clone)]
pub struct LogReader {
    mem: Arc<Mutex<Mem>>,
}

impl LogStore {
    /// Opens (creating it if needed) the store in `dir`: replays the log, cuts off a torn
    /// tail (with a warning), reads the vote and committed id, and starts the writer.
    pub fn open(dir: &Path, durability: Durability, io: Io) -> Result<LogStore, StoreError> {
        Self::open_tuned(dir, durability, io, COMPACT_FLOOR)
    }

    pub(crate) fn open_tuned(dir: &Path, durability: Durability, io: Io, compact_floor: u64) -> Result<LogStore, StoreError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(err(dir))?;
        if created
            && durability == Durability::Fsync
            && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        {
            sync_dir(parent).map_err(err(parent))?;
        }
        for name in [LOG_FILE, VOTE_FILE, COMMITTED_FILE] {
            remove_if_present(&tmp_path(dir, name)).map_err(err(&tmp_path(dir, name)))?;
        }
        let vote = read_framed::<Vote, MAX_SMALL>(&dir.join(VOTE_FILE))?;
        // The committed id is a hint (openraft re-applies up to it at start); it is written
        // without fsync, so after a crash it may be old or torn: then it is ignored.
        let committed = match read_framed::<Option<LogId>, MAX_SMALL>(&dir.join(COMMITTED_FILE)) {
            Ok(c) => c.flatten(),
            Err(e) => {
                tracing::warn!(error = %e, "claims: ignoring an unreadable committed-id file (it is only a hint)");
                None
            }
        };

        let path = dir.join(LOG_FILE);
        let image = replay(&path)?;
        let new_file = !path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(err(&path))?;
        if let Some(torn) = &image.torn {
            tracing::warn!(path = %path.display(), offset = torn.offset, dropped_bytes = torn.dropped, reason = %torn.reason,
                "the claims log ends in an interrupted write; cutting it off");
            file.set_len(image.valid_len).map_err(err(&path))?;
        }
        if durability == Durability::Fsync {
            if image.torn.is_some() {
                file.sync_all().map_err(err(&path))?;
            }
            if new_file {
                sync_dir(dir).map_err(err(dir))?;
            }
        }
        tracing::debug!(dir = %dir.display(), entries = image.mem.entries.len(), purged = ?image.mem.purged, ?vote, ?committed, "claims log opened");

        let writer = Writer::new(dir.to_path_buf(), path, file, image.valid_len, image.sizes, durability, compact_floor);
        let backend = match io {
            Io::Inline => Backend::Inline(Box::new(writer)),
            Io::Thread => {
                let (tx, rx) = mpsc::channel();
                let thread = std::thread::Builder::new().name("claims-log".into()).spawn(move || writer_thread(writer, rx)).map_err(err(dir))?;
                Backend::Thread { tx: Some(tx), thread: Some(thread) }
            }
        };
        Ok(LogStore { dir: dir.to_path_buf(), mem: Arc::new(Mutex::new(image.mem)), vote, committed, backend })
    }

    /// Removes the Raft files of `dir` (log, vote, committed, snapshot and their temporary
    /// files), for a node that leaves its cluster. Close the store and state machine first.
    pub fn wipe(dir: &Path) -> Result<(), StoreError> {
        for name in [LOG_FILE, VOTE_FILE, COMMITTED_FILE, SNAPSHOT_FILE] {
            for path in [dir.join(name), tmp_path(dir, name)] {
                remove_if_present(&path).map_err(|source| StoreError::Io { path, source })?;
            }
        }
        if dir.exists() {
            sync_dir(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        }
        Ok(())
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the last entry held, if any (purged entries are not held).
    pub fn last_index(&self) -> Option<u64> {
        lock(&self.mem).entries.last_key_value().map(|(i, _)| *i)
    }

    /// Entries held in memory (between the purge point and the last index).
    pub fn len(&self) -> usize {
        lock(&self.mem).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `entries` (visible to readers at once) and queues their write; `done` is
    /// completed once they are durable (before this returns in `Io::Inline`).
    fn append_with(&mut self, entries: Vec<Entry>, done: Done) -> Result<(), String> {
        if entries.is_empty() {
            done.complete(&Ok(()));
            return Ok(());
        }
        lock(&self.mem).append(entries.iter().cloned());
        self.submit(Job::Log(LogOp::Append(entries), Some(done)))
    }

    /// Hands `job` to the writer. Inline: runs it now and returns its result. Thread:
    /// returns at once (a stopped writer fails the job's callback).
    fn submit(&mut self, job: Job) -> Result<(), String> {
        match &mut self.backend {
            Backend::Inline(w) => w.run(vec![job]),
            Backend::Thread { tx: Some(tx), .. } => tx.send(job).map_err(|mpsc::SendError(job)| job.fail("the claims log writer thread is gone")),
            Backend::Thread { tx: None, .. } => Err(job.fail("the claims log is closing")),
        }
    }

    /// Hands `job` to the writer and waits until it is durable.
    async fn submit_and_wait(&mut self, job: impl FnOnce(Option<Done>) -> Job) -> Result<(), String> {
        match &mut self.backend {
            Backend::Inline(w) => w.run(vec![job(None)]),
            Backend::Thread { .. } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.submit(job(Some(Done::Reply(tx))))?;
                rx.await.unwrap_or_else(|_| Err("the claims log writer thread is gone".into()))
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn append_probed(&mut self, entries: Vec<Entry>, probe: Box<dyn FnOnce(Result<(), String>) + Send>) -> Result<(), String> {
        self.append_with(entries, Done::Probe(probe))
    }
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.backend {
            Backend::Inline(_) => "inline",
            Backend::Thread { .. } => "thread",
        };
        f.debug_struct("LogStore").field("dir", &self.dir).field("io", &mode).field("last_index", &self.last_index()).finish()
    }
}

impl Drop for LogStore {
    /// Stops the writer thread after it has written everything queued, so a store reopened
    /// right after sees every write (blocks for at most one batch).
    fn drop(&mut self) {
        if let Backend::Thread { tx, thread } = &mut self.backend {
            drop(tx.take());
            if let Some(t) = thread.take()
                && t.join().is_err()
            {
                tracing::error!(dir = %self.dir.display(), "the claims log writer thread panicked");
            }
        }
    }
}

impl RaftLogReader<Cm> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.mem).range(range))
    }
}

impl RaftLogReader<Cm> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError> {
        Ok(lock(&self.mem).range(range))
    }
}

impl RaftLogStorage<Cm> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<Cm>, StorageError> {
        let mem = lock(&self.mem);
        let last = mem.entries.last_key_value().map(|(_, e)| e.log_id).or(mem.purged);
        Ok(LogState { last_purged_log_id: mem.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader { mem: Arc::clone(&self.mem) }
    }

    /// Durable before it returns (the writer fsyncs the log up to here, then replaces the
    /// vote file).
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let v = *vote;
        self.submit_and_wait(|done| Job::Vote(v, done)).await.map_err(|e| StorageIOError::write_vote(AnyError::error(e)))?;
        self.vote = Some(v);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.vote)
    }

    /// Returns at once; the writer replaces the `committed` file after the log write of its
    /// batch is durable, so the file never names an entry that is not on disk. Losing the
    /// last value in a crash only means re-applying less on restart (it is optional in Raft).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.committed = committed;
        self.submit(Job::Committed(committed)).map_err(|e| StorageIOError::write(AnyError::error(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Cm>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_with(entries.into_iter().collect(), Done::Flushed(callback)).map_err(|e| StorageIOError::write_logs(AnyError::error(e)).into())
    }

    /// Durable before it returns. Not needed for later appends (they are written after it),
    /// but openraft may install a snapshot right after a truncation: were the truncation lost
    /// in a crash, conflicting entries of an older term would reappear after the snapshot.
    /// Truncations are rare (conflicts only), so the wait costs little.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.mem).truncate(log_id.index);
        let since = log_id.index;
        self.submit_and_wait(|done| Job::Log(LogOp::Truncate { since }, done)).await.map_err(|e| StorageIOError::write_logs(AnyError::error(e)).into())
    }

    /// Returns at once (in `Io::Thread`). Safe: every later write lands after it, so no
    /// later entry is durable without it; and a purge lost in a crash only brings back
    /// entries the snapshot already covers, which openraft purges again at start-up.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        lock(&self.mem).purge(log_id);
        self.submit(Job::Log(LogOp::Purge { upto: log_id }, None)).map_err(|e| StorageIOError::write_logs(AnyError::error(e)).into())
    }
}

/// The log as openraft sees it: entries between the purge point and the last index.
#[derive(Debug, Default)]
struct Mem {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId>,
}

impl Mem {
    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            self.entries.insert(e.log_id.index, e);
        }
    }

    fn truncate(&mut self, since: u64) {
        drop(self.entries.split_off(&since));
    }

    fn purge(&mut self, upto: LogId) {
        cut_upto(&mut self.entries, upto.index);
        if self.purged < Some(upto) {
            self.purged = Some(upto);
        }
    }

    fn apply(&mut self, op: LogOp) {
        match op {
            LogOp::Append(entries) => self.append(entries),
            LogOp::Truncate { since } => self.truncate(since),
            LogOp::Purge { upto } => self.purge(upto),
        }
    }

    /// Clones of the entries in `range`; an empty or inverted range gives none (never panics).
    fn range(&self, range: impl RangeBounds<u64>) -> Vec<Entry> {
        let start = match range.start_bound() {
            Bound::Included(s) => *s,
            Bound::Excluded(s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Vec::new(),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(e) => e.checked_add(1),
            Bound::Excluded(e) => Some(*e),
            Bound::Unbounded => None,
        };
        match end {
            Some(end) if end <= start => Vec::new(),
            Some(end) => self.entries.range(start..end).map(|(_, e)| e.clone()).collect(),
            None => self.entries.range(start..).map(|(_, e)| e.clone()).collect(),
        }
    }
}

/// Removes the keys `<= upto` of `map`, returning them.
fn cut_upto<V>(map: &mut BTreeMap<u64, V>, upto: u64) -> BTreeMap<u64, V> {
    match upto.checked_add(1) {
        Some(next) => {
            let keep = map.split_off(&next);
            std::mem::replace(map, keep)
        }
        None => std::mem::take(map),
    }
}

enum Backend {
    Inline(Box<Writer>),
    Thread { tx: Option<mpsc::Sender<Job>>, thread: Option<std::thread::JoinHandle<()>> },
}

/// Locks shared in-memory state, ignoring poisoning: the critical sections are single
/// operations that do not panic (the log's map operations, `ClaimsState::apply`); were one
/// to, the panic is the report, and refusing every later read would only add outages.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[path = "store_format.rs"]
mod format;
#[path = "store_writer.rs"]
mod writer;

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
