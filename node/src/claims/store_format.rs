//! The on-disk formats of the claims store: log records and their replay, the framed
//! small files (vote, committed, snapshot), atomic replacement.

use super::{Durability, FORMAT, HEADER, LogOp, MAX_RECORD, Mem, OpRef, StoreError, cut_upto};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Approximate on-disk bytes of each live entry (its share of the record it came in), to
/// tell when the log file is mostly dead.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Sizes {
    pub(super) per_entry: BTreeMap<u64, u64>,
    pub(super) total: u64,
}

impl Sizes {
    pub(super) fn apply(&mut self, op: &OpRef<'_>, record_bytes: u64) {
        match op {
            OpRef::Append(entries) => {
                let each = (record_bytes / (entries.len().max(1) as u64)).max(1);
                for e in entries.iter() {
                    let old = self.per_entry.insert(e.log_id.index, each).unwrap_or(0);
                    self.total = self.total - old + each;
                }
            }
            OpRef::Truncate { since } => self.total -= self.per_entry.split_off(since).values().sum::<u64>(),
            OpRef::Purge { upto } => self.total -= cut_upto(&mut self.per_entry, upto.index).values().sum::<u64>(),
        }
    }
}

/// Encodes `op` as one record (or several, splitting an append over [`MAX_RECORD`]) onto `out`.
pub(super) fn encode_op(op: &OpRef<'_>, out: &mut Vec<u8>, sizes: &mut Sizes) -> Result<(), StoreError> {
    let mut payload = vec![FORMAT];
    bincode::serde::encode_into_std_write(op, &mut payload, bincode::config::standard()).map_err(|e| StoreError::Encode(e.to_string()))?;
    if payload.len() > MAX_RECORD {
        return match op {
            OpRef::Append(entries) if entries.len() > 1 => {
                let (a, b) = entries.split_at(entries.len() / 2);
                encode_op(&OpRef::Append(a), out, sizes)?;
                encode_op(&OpRef::Append(b), out, sizes)
            }
            OpRef::Append(entries) => Err(StoreError::TooLarge { index: entries.first().map_or(0, |e| e.log_id.index), bytes: payload.len() }),
            _ => Err(StoreError::TooLarge { index: 0, bytes: payload.len() }),
        };
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    sizes.apply(op, (HEADER + payload.len()) as u64);
    Ok(())
}

/// A damaged end of the log: an interrupted write.
#[derive(Debug)]
pub(super) struct Torn {
    pub(super) offset: u64,
    pub(super) dropped: u64,
    pub(super) reason: String,
}

/// The log file replayed.
#[derive(Debug)]
pub(super) struct Image {
    pub(super) mem: Mem,
    pub(super) sizes: Sizes,
    /// Bytes of whole, valid records from the start.
    pub(super) valid_len: u64,
    pub(super) torn: Option<Torn>,
}

/// Replays the log file at `path` (an absent file is an empty log).
pub(super) fn replay(path: &Path) -> Result<Image, StoreError> {
    let buf = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    let mut image = Image { mem: Mem::default(), sizes: Sizes::default(), valid_len: 0, torn: None };
    let mut off = 0;
    while off < buf.len() {
        let payload = match check_record(&buf, off) {
            Ok(p) => p,
            Err(reason) => {
                if let Some(next) = (off + 1..buf.len()).find(|&o| check_record(&buf, o).is_ok()) {
                    return Err(StoreError::Corrupt { path: path.to_path_buf(), offset: off as u64, next: next as u64, reason });
                }
                image.torn = Some(Torn { offset: off as u64, dropped: (buf.len() - off) as u64, reason });
                break;
            }
        };
        let op = decode_op(payload).map_err(|reason| StoreError::Undecodable { path: path.to_path_buf(), offset: off as u64, reason })?;
        image.sizes.apply(&op.as_ref(), (HEADER + payload.len()) as u64);
        image.mem.apply(op);
        off += HEADER + payload.len();
    }
    image.valid_len = off as u64;
    Ok(image)
}

/// The payload of the record at `off` if its header and checksum hold.
fn check_record(buf: &[u8], off: usize) -> Result<&[u8], String> {
    let rest = &buf[off..];
    let Some((header, body)) = rest.split_first_chunk::<HEADER>() else {
        return Err(format!("{} bytes left, shorter than a record header", rest.len()));
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    // A payload holds at least the version byte and an operation tag; zeros are no record.
    if !(2..=MAX_RECORD).contains(&len) {
        return Err(format!("record length {len} out of range"));
    }
    let Some(payload) = body.get(..len) else {
        return Err(format!("record of {len} bytes but only {} left", body.len()));
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

fn decode_op(payload: &[u8]) -> Result<LogOp, String> {
    match payload.split_first() {
        Some((&FORMAT, body)) => {
            let (op, used) = bincode::serde::decode_from_slice::<LogOp, _>(body, bincode::config::standard().with_limit::<MAX_RECORD>())
                .map_err(|e| format!("not a log operation: {e}"))?;
            if used != body.len() {
                return Err(format!("{} bytes after the log operation", body.len() - used));
            }
            Ok(op)
        }
        Some((v, _)) => Err(format!("unknown format version {v} (this build reads {FORMAT})")),
        None => Err("empty record".into()),
    }
}

/// `[version][crc32 BE of body][bincode body]`: the vote, committed and snapshot files.
pub(crate) fn frame<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| format!("cannot encode: {e}"))?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(FORMAT);
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a [`frame`] of at most `LIMIT` body bytes; garbage is an error, never a panic.
pub(crate) fn unframe<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, String> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err("empty file".into());
    };
    if version != FORMAT {
        return Err(format!("unknown format version {version} (this build reads {FORMAT})"));
    }
    let Some((crc, body)) = rest.split_first_chunk::<4>() else {
        return Err(format!("{} bytes, too short", bytes.len()));
    };
    if body.len() > LIMIT {
        return Err(format!("{} bytes, over the {LIMIT}-byte limit", body.len()));
    }
    if crc32fast::hash(body) != u32::from_be_bytes(*crc) {
        return Err("checksum mismatch".into());
    }
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(body, bincode::config::standard().with_limit::<LIMIT>()).map_err(|e| format!("cannot decode: {e}"))?;
    if used != body.len() {
        return Err(format!("{} unexpected bytes at the end", body.len() - used));
    }
    Ok(value)
}

/// Reads a [`frame`]d file; `None` when it does not exist.
pub(crate) fn read_framed<T: DeserializeOwned, const LIMIT: usize>(path: &Path) -> Result<Option<T>, StoreError> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    if len > (LIMIT + 5) as u64 {
        return Err(StoreError::BadFile { path: path.to_path_buf(), reason: format!("{len} bytes, over the {LIMIT}-byte limit") });
    }
    let bytes = fs::read(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
    unframe::<T, LIMIT>(&bytes).map(Some).map_err(|reason| StoreError::BadFile { path: path.to_path_buf(), reason })
}

/// Replaces `dir/name` with `bytes` atomically: `name.tmp`, fsync, rename, fsync `dir`
/// (no syncs when `Buffered`). On error the old file is still in place.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], durability: Durability) -> Result<(), StoreError> {
    let tmp = tmp_path(dir, name);
    let path = dir.join(name);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durability == Durability::Fsync {
            f.sync_all()?;
        }
        Ok(())
    };
    if let Err(source) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io { path: tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Io { path, source });
    }
    if durability == Durability::Fsync {
        sync_dir(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    }
    Ok(())
}

pub(crate) fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
