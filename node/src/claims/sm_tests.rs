use super::*;
use crate::claims::store::LogStore;
use crate::claims::types::Membership;
use craftmesh_protocol::claims::{ChangeKind, Command, Meta, Op};
use openraft::CommittedLeaderId;
use openraft::testing::{StoreBuilder, Suite};
use std::collections::BTreeSet;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn normal(term: u64, index: u64, op: Op) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Command { at_ms: 1_000 + index, op }) }
}

fn acquire(key: &str, session: &str) -> Op {
    Op::Acquire { key: key.into(), node: "node-a".into(), session: session.into(), ttl_ms: 60_000, limit: 1, lock_delay_ms: 0, meta: Meta::default() }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Membership(Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], None)) }
}

fn open(dir: &Path, io: Io) -> (StateMachine, SharedState, UnboundedReceiver<AppliedEntry>) {
    let (tx, rx) = unbounded_channel();
    let (sm, shared) = StateMachine::open(dir, Durability::Fsync, io, tx).expect("open");
    (sm, shared, rx)
}

#[tokio::test]
async fn applying_entries_feeds_the_claims_state_and_tells_the_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut sm, shared, mut rx) = open(tmp.path(), Io::Inline);
    let outcomes = sm
        .apply([Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank }, membership(1, 2, &[1, 2, 3]), normal(1, 3, acquire("db", "s1"))])
        .await
        .expect("apply");
    assert!(matches!(&outcomes[..], [Outcome::Done, Outcome::Done, Outcome::Granted { holder, .. }] if holder.token == 3), "{outcomes:?}");
    assert_eq!(lock(&shared).key("db").map(|k| k.holders.len()), Some(1));

    let outcomes = sm.apply([normal(1, 4, Op::Release { key: "db".into(), token: 3 })]).await.expect("apply");
    assert!(matches!(&outcomes[..], [Outcome::Released { .. }]), "{outcomes:?}");
    assert!(lock(&shared).key("db").is_none());

    let granted = rx.try_recv().expect("an applied entry");
    assert_eq!((granted.index, granted.term), (3, 1));
    assert!(matches!(granted.outcome, Outcome::Granted { .. }));
    assert_eq!(granted.changes.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(), vec![ChangeKind::Granted]);
    let released = rx.try_recv().expect("an applied entry");
    assert_eq!(released.index, 4);
    assert_eq!(released.changes.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(), vec![ChangeKind::Released]);
    assert!(rx.try_recv().is_err(), "blank and membership entries are not reported");

    let (applied, mem) = sm.applied_state().await.expect("state");
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 2)));
}

#[tokio::test]
async fn a_snapshot_restores_state_membership_and_last_applied_on_another_node_and_after_a_restart() {
    for io in [Io::Inline, Io::Thread] {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let (mut sm, shared, _rx) = open(a.path(), io);
        sm.apply([membership(1, 1, &[1, 2]), normal(1, 2, acquire("db", "s1")), normal(2, 3, acquire("cache", "s2"))]).await.expect("apply");
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 3)));
        let want_state = lock(&shared).to_bytes();
        let want_applied = sm.applied_state().await.expect("state");

        // Installed on another node.
        let (mut other, other_shared, _rx2) = open(b.path(), io);
        let mut data = other.begin_receiving_snapshot().await.expect("begin");
        *data = Cursor::new(snap.snapshot.get_ref().clone());
        other.install_snapshot(&snap.meta, data).await.expect("install");
        assert_eq!(lock(&other_shared).to_bytes(), want_state, "{io:?}");
        assert_eq!(other.applied_state().await.expect("state"), want_applied);
        let current = other.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta, snap.meta);

        // Both reopen from their snapshot files.
        drop((sm, other));
        for dir in [a.path(), b.path()] {
            let (mut again, shared_again, _rx) = open(dir, io);
            assert_eq!(lock(&shared_again).to_bytes(), want_state);
            assert_eq!(again.applied_state().await.expect("state"), want_applied);
            let current = again.get_current_snapshot().await.expect("current").expect("a snapshot");
            assert_eq!((current.meta, current.snapshot.into_inner()), (snap.meta.clone(), snap.snapshot.get_ref().clone()));
        }
    }
}

#[tokio::test]
async fn garbage_snapshot_bytes_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut sm, shared, _rx) = open(tmp.path(), Io::Inline);
    sm.apply([normal(1, 1, acquire("db", "s1"))]).await.expect("apply");
    let good = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let state_before = lock(&shared).to_bytes();
    let applied_before = sm.applied_state().await.expect("state");

    let other_meta = SnapshotMeta { last_log_id: Some(log_id(5, 9)), ..good.meta.clone() };
    let mut flipped = good.snapshot.get_ref().clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    let bad_state = frame(&SnapshotFile { meta: good.meta.clone(), state: vec![1, 2, 3] }).expect("frame");
    let cases: Vec<(&str, &SnapshotMeta, Vec<u8>, &str)> = vec![
        ("empty", &good.meta, Vec::new(), "empty"),
        ("garbage", &good.meta, b"\x01garbage that is no snapshot".to_vec(), "checksum"),
        ("unknown version", &good.meta, [&[7u8][..], &good.snapshot.get_ref()[1..]].concat(), "unknown format version 7"),
        ("a flipped byte", &good.meta, flipped, "checksum"),
        ("another snapshot's meta", &other_meta, good.snapshot.get_ref().clone(), "not"),
        ("a state that does not decode", &good.meta, bad_state, "snapshot"),
    ];
    for (what, meta, bytes, want) in cases {
        let err = sm.install_snapshot(meta, Box::new(Cursor::new(bytes))).await.expect_err(what);
        assert!(err.to_string().contains(want), "{what}: {err}");
        let state = lock(&shared).to_bytes();
        assert_eq!(state, state_before, "{what}");
        assert_eq!(sm.applied_state().await.expect("state"), applied_before, "{what}");
    }
    let current = sm.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(current.meta, good.meta);

    // A damaged snapshot file refuses to open.
    drop(sm);
    std::fs::write(tmp.path().join(SNAPSHOT_FILE), b"\x01\0\0\0\0xx").expect("write");
    let (tx, _rx) = unbounded_channel();
    let err = StateMachine::open(tmp.path(), Durability::Fsync, Io::Inline, tx).expect_err("must refuse");
    assert!(matches!(err, StoreError::BadFile { .. }) && err.to_string().contains(SNAPSHOT_FILE), "{err}");
}

#[tokio::test]
async fn a_build_finishing_after_a_newer_install_does_not_replace_it() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let (mut leader, _, _rx) = open(a.path(), Io::Thread);
    let (mut follower, _, _rx2) = open(b.path(), Io::Thread);
    follower.apply([normal(1, 1, acquire("db", "s1"))]).await.expect("apply");
    let mut late = follower.get_snapshot_builder().await;

    leader.apply([normal(1, 1, acquire("db", "s1")), normal(1, 2, acquire("cache", "s1"))]).await.expect("apply");
    let newer = leader.get_snapshot_builder().await.build_snapshot().await.expect("build");
    follower.install_snapshot(&newer.meta, Box::new(Cursor::new(newer.snapshot.get_ref().clone()))).await.expect("install");

    let old = late.build_snapshot().await.expect("build");
    assert_eq!(old.meta.last_log_id, Some(log_id(1, 1)));
    let current = follower.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(current.meta, newer.meta);
}

/// openraft's own storage suite, on fresh directories.
struct Builder(Io);

impl StoreBuilder<Cm, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let fail = |e: &dyn std::error::Error| StorageError::from(StorageIOError::write(AnyError::error(e.to_string())));
        let tmp = tempfile::tempdir().map_err(|e| fail(&e))?;
        let store = LogStore::open(tmp.path(), Durability::Fsync, self.0).map_err(|e| fail(&e))?;
        let (tx, _rx) = unbounded_channel();
        let (sm, _) = StateMachine::open(tmp.path(), Durability::Fsync, self.0, tx).map_err(|e| fail(&e))?;
        Ok((tmp, store, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_with_inline_writes() {
    Suite::test_all(Builder(Io::Inline)).expect("suite");
}

#[test]
fn openraft_storage_suite_passes_with_the_writer_thread() {
    Suite::test_all(Builder(Io::Thread)).expect("suite");
}
