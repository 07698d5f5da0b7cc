use super::format::{Sizes, encode_op, replay};
use super::*;
use craftmesh_protocol::claims::{Command, Op};
use openraft::storage::RaftLogStorageExt as _;
use openraft::{CommittedLeaderId, EntryPayload, Membership};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 7), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let payload = match index % 3 {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(Command { at_ms: index * 10, op: Op::NodeGone { node: format!("node-{index}"), upto: index } }),
        _ => EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1, 2, 3])], None)),
    };
    Entry { log_id: log_id(term, index), payload }
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i)).collect()
}

fn open(dir: &Path, io: Io) -> LogStore {
    LogStore::open(dir, Durability::Fsync, io).expect("open")
}

async fn all(store: &mut LogStore) -> Vec<Entry> {
    store.try_get_log_entries(..).await.expect("read")
}

/// Appends 1..=10 (term 1), truncates since 8, appends 8..=12 (term 2), purges up to 3,
/// saves a vote and a committed id.
async fn scenario(store: &mut LogStore) {
    store.blocking_append(entries(1, 1..=10)).await.expect("append");
    store.truncate(log_id(1, 8)).await.expect("truncate");
    store.blocking_append(entries(2, 8..=12)).await.expect("append");
    store.purge(log_id(1, 3)).await.expect("purge");
    store.save_vote(&Vote::new(2, 9)).await.expect("vote");
    store.save_committed(Some(log_id(2, 9))).await.expect("committed");
}

fn expected() -> Vec<Entry> {
    let mut e = entries(1, 4..=7);
    e.extend(entries(2, 8..=12));
    e
}

#[tokio::test]
async fn everything_written_is_there_after_a_reopen() {
    for io in [Io::Inline, Io::Thread] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut store = open(tmp.path(), io);
        scenario(&mut store).await;
        assert_eq!(all(&mut store).await, expected());
        drop(store);

        let mut store = open(tmp.path(), io);
        assert_eq!(all(&mut store).await, expected(), "{io:?}");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 12)));
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(2, 9)));
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(2, 9)));
        assert_eq!((store.last_index(), store.len()), (Some(12), 9));
    }
}

#[tokio::test]
async fn a_log_purged_past_its_end_reopens_empty_with_the_purge_point() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = open(tmp.path(), Io::Thread);
    store.blocking_append(entries(1, 1..=5)).await.expect("append");
    store.purge(log_id(2, 20)).await.expect("purge");
    drop(store);
    let mut store = open(tmp.path(), Io::Thread);
    assert!(store.is_empty());
    let state = store.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2, 20)), Some(log_id(2, 20))));
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_everything_before_it_is_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(LOG_FILE);
    let mut store = open(tmp.path(), Io::Inline);
    store.blocking_append(entries(1, 1..=5)).await.expect("append");
    let good = fs::metadata(&path).expect("meta").len();
    store.blocking_append(entries(1, 6..=6)).await.expect("append");
    drop(store);
    let full = fs::read(&path).expect("read");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short header", full[..good as usize + 5].to_vec()),
        ("short payload", full[..full.len() - 3].to_vec()),
        ("bad checksum on the last record", {
            let mut b = full.clone();
            let last = b.len() - 1;
            b[last] ^= 0x40;
            b
        }),
        ("zeros after the last record", {
            let mut b = full[..good as usize].to_vec();
            b.extend([0u8; 300]);
            b
        }),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).expect("write");
        let mut store = open(tmp.path(), Io::Inline);
        assert_eq!(all(&mut store).await, entries(1, 1..=5), "{what}");
        assert_eq!(fs::metadata(&path).expect("meta").len(), good, "{what}: the tail is cut from the file");
        // The log goes on after the cut.
        store.blocking_append(entries(1, 6..=7)).await.expect("append");
        drop(store);
        let mut store = open(tmp.path(), Io::Inline);
        assert_eq!(all(&mut store).await, entries(1, 1..=7), "{what}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_refuses_to_open_naming_the_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(LOG_FILE);
    let mut store = open(tmp.path(), Io::Inline);
    for i in 1..=3 {
        store.blocking_append(entries(1, i..=i)).await.expect("append");
    }
    drop(store);
    let mut bytes = fs::read(&path).expect("read");
    let second = HEADER + u32::from_be_bytes(bytes[..4].try_into().expect("4")) as usize;
    bytes[second + HEADER + 3] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    let err = LogStore::open(tmp.path(), Durability::Fsync, Io::Inline).expect_err("must refuse");
    match &err {
        StoreError::Corrupt { offset, .. } => assert_eq!(*offset, second as u64),
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("offset {second}")) && msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(fs::read(&path).expect("read"), bytes, "a refused log is left as it was");
}

#[tokio::test]
async fn a_record_of_an_unknown_version_refuses_to_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let payload = [9u8, 1, 2, 3];
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend(crc32fast::hash(&payload).to_be_bytes());
    bytes.extend(payload);
    fs::write(tmp.path().join(LOG_FILE), &bytes).expect("write");
    let err = LogStore::open(tmp.path(), Durability::Fsync, Io::Inline).expect_err("must refuse");
    assert!(matches!(&err, StoreError::Undecodable { offset: 0, .. }) && err.to_string().contains("unknown format version 9"), "{err}");
}

#[tokio::test]
async fn compaction_keeps_the_content_and_shrinks_the_file() {
    for io in [Io::Inline, Io::Thread] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(LOG_FILE);
        let mut store = LogStore::open_tuned(tmp.path(), Durability::Fsync, io, 1024).expect("open");
        for i in 1..=200 {
            store.blocking_append(entries(1, i..=i)).await.expect("append");
        }
        let full = fs::metadata(&path).expect("meta").len();
        assert!(full > 4 * 1024, "{full}");
        store.purge(log_id(1, 195)).await.expect("purge");
        // The purge is written (and the log compacted) before this append is acknowledged.
        store.blocking_append(entries(1, 201..=201)).await.expect("append");
        let compacted = fs::metadata(&path).expect("meta").len();
        assert!(compacted < full / 4, "{io:?}: {compacted} of {full}");
        assert!(!tmp_path(tmp.path(), LOG_FILE).exists());
        store.blocking_append(entries(1, 202..=202)).await.expect("append");
        drop(store);

        let mut store = open(tmp.path(), io);
        assert_eq!(all(&mut store).await, entries(1, 196..=202), "{io:?}");
        assert_eq!(store.get_log_state().await.expect("state").last_purged_log_id, Some(log_id(1, 195)));
    }
}

#[tokio::test]
async fn a_garbage_vote_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vote = tmp.path().join(VOTE_FILE);
    for (bytes, want) in [
        (b"garbage!".to_vec(), "unknown format version"),
        (vec![FORMAT, 0, 0, 0, 0, 1, 2, 3], "checksum mismatch"),
        (vec![FORMAT, 1], "too short"),
        (Vec::new(), "empty file"),
    ] {
        fs::write(&vote, &bytes).expect("write");
        let err = LogStore::open(tmp.path(), Durability::Fsync, Io::Inline).expect_err("must refuse");
        assert!(matches!(err, StoreError::BadFile { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(want) && msg.contains(&vote.display().to_string()), "{msg}");
    }
    let mut v = frame(&Vote::new(3, 1)).expect("frame");
    v[0] = FORMAT + 1;
    fs::write(&vote, &v).expect("write");
    let err = LogStore::open(tmp.path(), Durability::Fsync, Io::Inline).expect_err("must refuse");
    assert!(err.to_string().contains("unknown format version 2"), "{err}");
}

#[tokio::test]
async fn thread_and_inline_writers_leave_the_same_files() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let mut inline = open(a.path(), Io::Inline);
    let mut thread = open(b.path(), Io::Thread);
    scenario(&mut inline).await;
    scenario(&mut thread).await;
    assert_eq!(all(&mut inline).await, all(&mut thread).await);
    assert_eq!(inline.get_log_state().await.expect("state"), thread.get_log_state().await.expect("state"));
    drop((inline, thread));
    for name in [LOG_FILE, VOTE_FILE, COMMITTED_FILE] {
        assert_eq!(fs::read(a.path().join(name)).expect("read"), fs::read(b.path().join(name)).expect("read"), "{name}");
    }
}

#[tokio::test]
async fn append_callbacks_fire_only_once_the_entries_are_in_the_file() {
    for io in [Io::Inline, Io::Thread] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(LOG_FILE);
        let mut store = open(tmp.path(), io);
        let fired = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 1..=50u64 {
            let (fired, tx, path) = (Arc::clone(&fired), tx.clone(), path.clone());
            let probe = Box::new(move |result: Result<(), String>| {
                // What is in the file now, read back from disk.
                let on_disk = replay(&path).map(|img| img.mem.entries.contains_key(&i));
                fired.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((i, result, on_disk.ok()));
            });
            store.append_probed(entries(1, i..=i), probe).expect("append");
            // Readers see an entry as soon as `append` returns.
            assert_eq!(store.last_index(), Some(i));
        }
        drop(tx);
        drop(store); // waits for the writer thread to finish the queue
        assert_eq!(fired.load(Ordering::SeqCst), 50, "{io:?}");
        let mut order = Vec::new();
        while let Some((i, result, on_disk)) = rx.recv().await {
            assert_eq!(result, Ok(()));
            assert_eq!(on_disk, Some(true), "{io:?}: entry {i} was not in the file when its callback fired");
            order.push(i);
        }
        assert_eq!(order, (1..=50).collect::<Vec<_>>(), "callbacks complete in order");
    }
}

#[tokio::test]
async fn a_failed_write_stops_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = open(tmp.path(), Io::Inline);
    store.blocking_append(entries(1, 1..=2)).await.expect("append");
    // Replace the directory with a file so the vote's temporary file cannot be created.
    let dir = tmp.path().to_path_buf();
    let moved = tmp.path().with_extension("moved");
    fs::rename(&dir, &moved).expect("move");
    fs::write(&dir, b"not a directory").expect("write");
    assert!(store.save_vote(&Vote::new(1, 1)).await.is_err());
    fs::remove_file(&dir).expect("remove");
    fs::rename(&moved, &dir).expect("move back");
    let err = store.blocking_append(entries(1, 3..=3)).await.expect_err("stopped");
    assert!(err.to_string().contains("stopped taking writes"), "{err}");
}

#[tokio::test]
async fn wipe_removes_the_raft_files_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut store = open(tmp.path(), Io::Thread);
    scenario(&mut store).await;
    drop(store);
    fs::write(tmp.path().join(SNAPSHOT_FILE), b"x").expect("write");
    fs::write(tmp.path().join("other"), b"x").expect("write");
    LogStore::wipe(tmp.path()).expect("wipe");
    let left: Vec<_> = fs::read_dir(tmp.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("other")]);
    let mut store = open(tmp.path(), Io::Thread);
    assert!(all(&mut store).await.is_empty());
    assert_eq!(store.read_vote().await.expect("vote"), None);
}

#[test]
fn reading_odd_ranges_never_panics() {
    let mut mem = Mem::default();
    mem.append(entries(1, 1..=5));
    assert!(mem.range(3..3).is_empty());
    assert!(mem.range((Bound::Included(4), Bound::Excluded(2))).is_empty());
    assert!(mem.range((Bound::Excluded(3), Bound::Excluded(3))).is_empty());
    assert!(mem.range((Bound::Excluded(u64::MAX), Bound::Unbounded)).is_empty());
    assert_eq!(mem.range(..=u64::MAX).len(), 5);
    assert_eq!(mem.range((Bound::Excluded(2), Bound::Included(4))).len(), 2);
}

#[test]
fn large_appends_are_split_into_records_under_the_limit() {
    let big = "x".repeat(1000);
    let many: Vec<Entry> = (1..=20_000)
        .map(|i| Entry { log_id: log_id(1, i), payload: EntryPayload::Normal(Command { at_ms: i, op: Op::NodeGone { node: big.clone(), upto: i } }) })
        .collect();
    let mut out = Vec::new();
    let mut sizes = Sizes::default();
    encode_op(&OpRef::Append(&many), &mut out, &mut sizes).expect("encode");
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join(LOG_FILE), &out).expect("write");
    let image = replay(&tmp.path().join(LOG_FILE)).expect("replay");
    assert!(image.torn.is_none());
    assert_eq!(image.mem.entries.len(), 20_000);
    assert_eq!(image.sizes, sizes);
}
