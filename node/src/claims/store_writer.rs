//! The one writer of a [`LogStore`](super::LogStore)'s files: takes queued writes in
//! order, writes a batch with one fsync, completes the callbacks, compacts the log.

use super::format::{Sizes, encode_op, replay, write_atomic};
use super::{COMMITTED_FILE, Durability, Entry, LOG_FILE, LogId, LogOp, MAX_BATCH, OpRef, StoreError, VOTE_FILE, Vote, frame};
use crate::claims::types::Cm;
use openraft::storage::LogFlushed;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::mpsc;

/// What to tell when a write is durable (or failed).
pub(super) enum Done {
    /// openraft's append callback.
    Flushed(LogFlushed<Cm>),
    /// An awaiting `save_vote` / `truncate`.
    Reply(tokio::sync::oneshot::Sender<Result<(), String>>),
    #[cfg(test)]
    Probe(Box<dyn FnOnce(Result<(), String>) + Send>),
}

impl Done {
    pub(super) fn complete(self, result: &Result<(), String>) {
        match self {
            Done::Flushed(cb) => cb.log_io_completed(result.clone().map_err(io::Error::other)),
            Done::Reply(tx) => {
                // The waiter gone (its task cancelled) needs no answer.
                let _ = tx.send(result.clone());
            }
            #[cfg(test)]
            Done::Probe(f) => f(result.clone()),
        }
    }
}

/// One queued write.
pub(super) enum Job {
    Log(LogOp, Option<Done>),
    Vote(Vote, Option<Done>),
    /// Replaces the committed file after the batch's log write is durable.
    Committed(Option<LogId>),
}

impl Job {
    /// Fails the job's callback with `why`; returns `why`.
    pub(super) fn fail(self, why: &str) -> String {
        if let Job::Log(_, Some(done)) | Job::Vote(_, Some(done)) = self {
            done.complete(&Err(why.to_string()));
        }
        why.to_string()
    }
}

pub(super) fn writer_thread(mut w: Writer, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // The result went to the jobs' callbacks.
        let _ = w.run(jobs);
    }
}

/// Owns the files and writes them, in order.
#[derive(Debug)]
pub(super) struct Writer {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes in the log file.
    len: u64,
    sizes: Sizes,
    durability: Durability,
    compact_floor: u64,
    /// After a failed compaction, no new attempt before the file reaches this size.
    compact_retry_at: u64,
    /// Encoded records not yet written.
    buf: Vec<u8>,
    /// Set by the first failed write: every later job fails with it.
    failed: Option<String>,
}

impl Writer {
    pub(super) fn new(dir: PathBuf, path: PathBuf, file: File, len: u64, sizes: Sizes, durability: Durability, compact_floor: u64) -> Writer {
        Writer { dir, path, file, len, sizes, durability, compact_floor, compact_retry_at: 0, buf: Vec::new(), failed: None }
    }

    /// Writes a batch in order (one log write and one fsync, more only around vote
    /// changes), then completes the callbacks, then compacts the log if it is due.
    pub(super) fn run(&mut self, jobs: Vec<Job>) -> Result<(), String> {
        let mut result = match &self.failed {
            Some(why) => Err(StoreError::Stopped(why.clone()).to_string()),
            None => Ok(()),
        };
        let mut dones = Vec::with_capacity(jobs.len());
        let mut committed = None;
        for job in jobs {
            match job {
                Job::Log(op, done) => {
                    if result.is_ok() {
                        result = self.stage(&op.as_ref()).map_err(|e| self.fail(e));
                    }
                    dones.extend(done);
                }
                Job::Vote(vote, done) => {
                    // A vote must not be durable before the log writes queued ahead of it.
                    if result.is_ok() {
                        result = self.flush().and_then(|()| self.write_small(VOTE_FILE, &vote)).map_err(|e| self.fail(e));
                    }
                    dones.extend(done);
                }
                Job::Committed(c) => committed = Some(c),
            }
        }
        if result.is_ok() {
            result = self.flush().map_err(|e| self.fail(e));
        }
        if result.is_ok() {
            // Before the callbacks, so that an acknowledged write is in the log that stays.
            result = self.maybe_compact();
        }
        for done in dones {
            done.complete(&result);
        }
        // The committed id only names entries already durable (flushed above), and it is a
        // hint: written after the callbacks, without fsync, off the commit's critical path.
        if let (Ok(()), Some(c)) = (&result, committed) {
            let bytes = frame(&c).map_err(|reason| StoreError::BadFile { path: self.dir.join(COMMITTED_FILE), reason });
            if let Err(e) = bytes.and_then(|b| super::write_atomic(&self.dir, COMMITTED_FILE, &b, Durability::Buffered)) {
                tracing::warn!(error = %e, "claims: cannot write the committed-id hint");
            }
        }
        result
    }

    fn fail(&mut self, e: StoreError) -> String {
        let msg = e.to_string();
        tracing::error!(dir = %self.dir.display(), error = %msg, "claims log write failed; the log takes no more writes");
        self.failed = Some(msg.clone());
        msg
    }

    fn stage(&mut self, op: &OpRef<'_>) -> Result<(), StoreError> {
        encode_op(op, &mut self.buf, &mut self.sizes)
    }

    /// Writes the staged records and syncs them.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let err = |source| StoreError::Io { path: self.path.clone(), source };
        if let Err(e) = self.file.write_all(&self.buf) {
            // Take back a partial record so the file ends on a record boundary; the store
            // stops anyway.
            let _ = self.file.set_len(self.len);
            return Err(err(e));
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
        if self.durability == Durability::Fsync {
            self.file.sync_data().map_err(err)?;
        }
        Ok(())
    }

    fn write_small<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let bytes = frame(value).map_err(|reason| StoreError::BadFile { path: self.dir.join(name), reason })?;
        write_atomic(&self.dir, name, &bytes, self.durability)
    }

    /// Compacts the log when it is over max(floor, 4× live bytes). A compaction that fails
    /// before replacing the log is only a warning (retried once the log grew by the floor).
    fn maybe_compact(&mut self) -> Result<(), String> {
        let limit = self.compact_floor.max(self.sizes.total.saturating_mul(4)).max(self.compact_retry_at);
        if self.len <= limit {
            return Ok(());
        }
        let before = self.len;
        match self.compact() {
            Ok(()) => tracing::debug!(path = %self.path.display(), before, after = self.len, "claims log compacted"),
            Err((e, false)) => {
                tracing::warn!(path = %self.path.display(), error = %e, "claims log compaction failed; keeping the log as it is");
                self.compact_retry_at = self.len.saturating_add(self.compact_floor);
            }
            Err((e, true)) => return Err(self.fail(e)),
        }
        Ok(())
    }

    /// Rewrites the log as one purge and the live entries (`log.tmp`, fsync, rename, fsync
    /// the directory). An error before the rename leaves the old log in place (`false`); one
    /// after it is fatal (`true`).
    fn compact(&mut self) -> Result<(), (StoreError, bool)> {
        let image = replay(&self.path).map_err(|e| (e, false))?;
        if image.torn.is_some() || image.valid_len != self.len {
            let reason = format!("replay found {} bytes of {}", image.valid_len, self.len);
            return Err((StoreError::BadFile { path: self.path.clone(), reason }, false));
        }
        let mut out = Vec::new();
        let mut sizes = Sizes::default();
        if let Some(upto) = image.mem.purged {
            encode_op(&OpRef::Purge { upto }, &mut out, &mut sizes).map_err(|e| (e, false))?;
        }
        let live: Vec<Entry> = image.mem.entries.into_values().collect();
        if !live.is_empty() {
            encode_op(&OpRef::Append(&live), &mut out, &mut sizes).map_err(|e| (e, false))?;
        }
        write_atomic(&self.dir, LOG_FILE, &out, self.durability).map_err(|e| (e, true))?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(|source| (StoreError::Io { path: self.path.clone(), source }, true))?;
        self.len = out.len() as u64;
        self.sizes = sizes;
        Ok(())
    }
}
