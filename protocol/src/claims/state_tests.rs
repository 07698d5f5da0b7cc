use super::*;

#[path = "state_prop_tests.rs"]
mod properties;

/// An acquire with the defaults most scenarios want (a lock, 1 s, no delay), adjusted with
/// the setters below.
#[derive(Clone)]
struct Acq(Op);

fn acq(key: &str, node: &str, session: &str) -> Acq {
    Acq(Op::Acquire { key: key.into(), node: node.into(), session: session.into(), ttl_ms: 1000, limit: 1, lock_delay_ms: 0, meta: Meta::default() })
}

impl Acq {
    fn ttl(mut self, v: u64) -> Self {
        if let Op::Acquire { ttl_ms, .. } = &mut self.0 {
            *ttl_ms = v;
        }
        self
    }
    fn limit(mut self, v: u32) -> Self {
        if let Op::Acquire { limit, .. } = &mut self.0 {
            *limit = v;
        }
        self
    }
    fn delay(mut self, v: u64) -> Self {
        if let Op::Acquire { lock_delay_ms, .. } = &mut self.0 {
            *lock_delay_ms = v;
        }
        self
    }
    fn meta(mut self, v: Meta) -> Self {
        if let Op::Acquire { meta, .. } = &mut self.0 {
            *meta = v;
        }
        self
    }
    fn bound(self) -> Self {
        self.meta(Meta { bound_to_node: true, ..Meta::default() })
    }
    fn op(self) -> Op {
        self.0
    }
}

fn renew(key: &str, token: u64, ttl_ms: Option<u64>) -> Op {
    Op::Renew { key: key.into(), token, ttl_ms }
}

fn release(key: &str, token: u64) -> Op {
    Op::Release { key: key.into(), token }
}

fn gone(node: &str) -> Op {
    Op::NodeGone { node: node.into(), upto: u64::MAX }
}

fn run(s: &mut ClaimsState, index: u64, term: u64, at_ms: u64, op: Op) -> Applied {
    s.apply(index, term, &Command { at_ms, op })
}

fn holder(node: &str, session: &str, token: u64, ttl_ms: u64, deadline_ms: u64, granted_at_ms: u64) -> Holder {
    Holder { node: node.into(), session: session.into(), token, ttl_ms, deadline_ms, granted_at_ms, meta: Meta::default() }
}

fn change(kind: ChangeKind, key: &str, holder: Holder) -> Change {
    Change { kind, key: key.into(), holder }
}

fn granted_token(a: &Applied) -> u64 {
    match &a.outcome {
        Outcome::Granted { holder, .. } => holder.token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn refusal(a: &Applied) -> Refusal {
    match &a.outcome {
        Outcome::Refused { refusal, .. } => refusal.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_free_key_is_granted_with_the_entry_index_as_token_and_another_session_is_refused() {
    let mut s = ClaimsState::default();
    let a = run(&mut s, 3, 1, 100, acq("db", "n1", "s1").op());
    let h = holder("n1", "s1", 3, 1000, 1100, 100);
    assert_eq!(a.outcome, Outcome::Granted { key: "db".into(), holder: h.clone(), holders: vec![h.clone()] });
    assert_eq!(a.changes, vec![change(ChangeKind::Granted, "db", h.clone())]);
    assert_eq!((s.epoch(), s.now_ms(), s.last_index(), s.len()), (1, 100, 3, 1));

    let b = run(&mut s, 4, 1, 150, acq("db", "n2", "s2").op());
    assert_eq!(b.outcome, Outcome::Refused { key: "db".into(), refusal: Refusal::Held, holders: vec![h] });
    assert!(b.changes.is_empty());
}

#[test]
fn renew_extends_from_now_and_release_frees_the_key() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 100, acq("db", "n1", "s1").op());
    let a = run(&mut s, 2, 1, 600, renew("db", 1, None));
    let h = holder("n1", "s1", 1, 1000, 1600, 100);
    assert_eq!(a.outcome, Outcome::Renewed { key: "db".into(), holder: h.clone() });
    assert_eq!(a.changes, vec![change(ChangeKind::Renewed, "db", h)]);

    let b = run(&mut s, 3, 1, 700, renew("db", 1, Some(5000)));
    let h = holder("n1", "s1", 1, 5000, 5700, 100);
    assert_eq!(b.outcome, Outcome::Renewed { key: "db".into(), holder: h.clone() }, "a new ttl replaces the old one");

    assert_eq!(run(&mut s, 4, 1, 800, renew("db", 2, None)).outcome, Outcome::NotHeld { key: "db".into(), token: 2 });
    assert_eq!(run(&mut s, 5, 1, 800, release("db", 2)).outcome, Outcome::NotHeld { key: "db".into(), token: 2 });
    let c = run(&mut s, 6, 1, 900, release("db", 1));
    assert_eq!(c.outcome, Outcome::Released { key: "db".into(), holder: h.clone() });
    assert_eq!(c.changes, vec![change(ChangeKind::Released, "db", h)]);
    assert!(s.key("db").is_none() && s.is_empty(), "a key with nothing left is dropped");
    assert_eq!(run(&mut s, 7, 1, 900, renew("db", 1, None)).outcome, Outcome::NotHeld { key: "db".into(), token: 1 });
    assert_eq!(granted_token(&run(&mut s, 8, 1, 950, acq("db", "n2", "s2").op())), 8);
}

#[test]
fn the_same_session_acquiring_again_keeps_its_token_and_renews_its_lease() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 100, acq("db", "n1", "s1").limit(2).op());
    run(&mut s, 2, 1, 110, acq("db", "n2", "s2").limit(2).op());
    let meta = Meta { instance: Some("http://10.0.0.1:80".into()), ..Meta::default() };
    let a = run(&mut s, 3, 1, 500, acq("db", "n1", "s1").limit(2).ttl(2000).meta(meta.clone()).op());
    let h = Holder { meta, ..holder("n1", "s1", 1, 2000, 2500, 100) };
    assert_eq!(a.outcome, Outcome::Granted { key: "db".into(), holder: h.clone(), holders: vec![h.clone(), holder("n2", "s2", 2, 1000, 1110, 110)] });
    assert_eq!(a.changes, vec![change(ChangeKind::Renewed, "db", h)], "a retry is a renewal, not a second grant");
    assert_eq!(s.key("db").map(|k| k.holders.len()), Some(2));
    // Another session of the same node is another holder.
    assert_eq!(refusal(&run(&mut s, 4, 1, 600, acq("db", "n1", "s3").limit(2).op())), Refusal::Held);
}

#[test]
fn tokens_of_a_key_strictly_increase_across_release_expiry_and_leader_change() {
    let mut s = ClaimsState::default();
    let mut tokens = vec![granted_token(&run(&mut s, 1, 1, 0, acq("k", "n1", "s1").op()))];
    run(&mut s, 2, 1, 10, release("k", 1));
    tokens.push(granted_token(&run(&mut s, 3, 1, 20, acq("k", "n1", "s1").op())));
    // expires at 1020; the next acquire finds it free
    tokens.push(granted_token(&run(&mut s, 7, 1, 1020, acq("k", "n2", "s2").op())));
    // new leader, clock far behind; the holder gets a full ttl, then expires
    run(&mut s, 8, 2, 5, Op::Tick);
    tokens.push(granted_token(&run(&mut s, 12, 2, 1005, acq("k", "n1", "s9").op())));
    // and again after a restart from a snapshot
    let mut s = ClaimsState::from_bytes(&s.to_bytes()).expect("snapshot");
    run(&mut s, 13, 2, 1100, release("k", 12));
    tokens.push(granted_token(&run(&mut s, 14, 3, 0, acq("k", "n3", "s3").op())));
    assert_eq!(tokens, vec![1, 3, 7, 12, 14]);
}

#[test]
fn a_lease_expires_exactly_at_its_deadline() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 100, acq("db", "n1", "s1").op());
    let a = run(&mut s, 2, 1, 1099, Op::Tick);
    assert_eq!((a.outcome, a.changes), (Outcome::Done, vec![]));
    assert_eq!(s.next_deadline_ms(), Some(1100));
    let b = run(&mut s, 3, 1, 1100, Op::Tick);
    assert_eq!(b.outcome, Outcome::Done);
    assert_eq!(b.changes, vec![change(ChangeKind::Expired, "db", holder("n1", "s1", 1, 1000, 1100, 100))]);
    assert!(s.is_empty());
    assert_eq!(s.next_deadline_ms(), None);
}

#[test]
fn a_renew_at_or_after_expiry_is_not_held_and_reports_the_expiry_first() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 100, acq("db", "n1", "s1").op());
    let a = run(&mut s, 2, 1, 1100, renew("db", 1, None));
    assert_eq!(a.outcome, Outcome::NotHeld { key: "db".into(), token: 1 });
    assert_eq!(a.changes, vec![change(ChangeKind::Expired, "db", holder("n1", "s1", 1, 1000, 1100, 100))]);
    let b = run(&mut s, 3, 1, 1101, acq("db", "n2", "s2").op());
    assert_eq!(granted_token(&b), 3);
    assert_eq!(b.changes.len(), 1, "only the grant: the expiry was reported once");
}

#[test]
fn expiries_come_first_in_deadline_order_then_the_op() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("b", "n1", "s1").ttl(300).op());
    run(&mut s, 2, 1, 0, acq("a", "n1", "s1").ttl(200).op());
    let a = run(&mut s, 3, 1, 400, acq("c", "n1", "s1").op());
    let kinds: Vec<(ChangeKind, &str)> = a.changes.iter().map(|c| (c.kind.clone(), c.key.as_str())).collect();
    assert_eq!(kinds, vec![(ChangeKind::Expired, "a"), (ChangeKind::Expired, "b"), (ChangeKind::Granted, "c")]);
}

#[test]
fn a_new_leader_with_a_clock_far_behind_gives_every_lease_a_full_ttl_and_no_more() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 10_000, acq("db", "n1", "s1").op());
    run(&mut s, 2, 1, 10_900, Op::Tick);
    // 100 ms were left on the old clock; the new leader's clock reads 5
    let a = run(&mut s, 3, 2, 5, Op::Tick);
    assert!(a.changes.is_empty());
    assert_eq!((s.epoch(), s.now_ms()), (2, 5));
    assert_eq!(s.key("db").map(|k| k.holders[0].deadline_ms), Some(1005));
    assert!(run(&mut s, 4, 2, 1004, Op::Tick).changes.is_empty(), "999 ms into the new epoch, more than the 100 left: still held");
    let b = run(&mut s, 5, 2, 1005, Op::Tick);
    assert_eq!(b.changes.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(), vec![ChangeKind::Expired], "not held until the old 11_000");
}

#[test]
fn a_new_leader_with_a_clock_far_ahead_gives_every_lease_a_full_ttl() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 10_000, acq("db", "n1", "s1").op());
    run(&mut s, 2, 1, 10_900, Op::Tick);
    // the new leader's clock is past the old deadline of 11_000: still no expiry
    let a = run(&mut s, 3, 2, 1_000_000, acq("db", "n2", "s2").op());
    assert_eq!(refusal(&a), Refusal::Held);
    assert!(a.changes.is_empty());
    assert_eq!(s.key("db").map(|k| k.holders[0].deadline_ms), Some(1_001_000));
    // and the holder can renew in the new epoch
    assert!(matches!(run(&mut s, 4, 2, 1_000_500, renew("db", 1, None)).outcome, Outcome::Renewed { .. }));
}

#[test]
fn a_new_leader_restarts_a_pending_lock_delay_and_clears_a_lifted_one() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("a", "n1", "s1").delay(500).op());
    run(&mut s, 2, 1, 0, acq("b", "n1", "s1").limit(2).delay(500).op());
    run(&mut s, 3, 1, 0, acq("b", "n2", "s2").limit(2).delay(500).ttl(5000).op());
    // both first holders expire at 1000; delays until 1500; at 2000 b's has lifted, a's key is gone
    run(&mut s, 4, 1, 1200, Op::Tick);
    assert_eq!(s.key("a").map(|k| k.blocked_until_ms), Some(1500));
    run(&mut s, 5, 1, 1300, renew("b", 3, None));
    run(&mut s, 6, 1, 1300, acq("c", "n1", "s1").delay(400).op());
    run(&mut s, 7, 1, 2300, Op::Tick);
    assert!(s.key("a").is_none(), "an empty key is dropped once its delay lifts");
    run(&mut s, 8, 1, 2400, Op::Tick);
    assert_eq!(s.key("c").map(|k| k.blocked_until_ms), Some(2700), "c expired at 2300");
    assert_eq!(s.key("b").map(|k| k.blocked_until_ms), Some(1500));
    // new leader, clock behind at 100
    run(&mut s, 9, 2, 100, Op::Tick);
    assert_eq!(s.key("c").map(|k| k.blocked_until_ms), Some(500), "a pending delay starts over");
    assert_eq!(s.key("b").map(|k| k.blocked_until_ms), Some(0), "a lifted delay cannot come back on a slower clock");
    assert_eq!(granted_token(&run(&mut s, 10, 2, 100, acq("b", "n3", "s3").limit(2).op())), 10);
    assert_eq!(refusal(&run(&mut s, 11, 2, 499, acq("c", "n3", "s3").op())), Refusal::LockDelay { until_ms: 500 });
    assert_eq!(granted_token(&run(&mut s, 12, 2, 500, acq("c", "n3", "s3").op())), 12);
}

#[test]
fn lock_delay_follows_an_expiry_and_a_node_gone_but_not_a_release() {
    let mut s = ClaimsState::default();
    // expiry: the delay runs from the deadline, not from when the expiry was applied
    run(&mut s, 1, 1, 0, acq("e", "n1", "s1").delay(300).op());
    run(&mut s, 2, 1, 1100, Op::Tick);
    assert_eq!(s.key("e").map(|k| (k.holders.len(), k.blocked_until_ms)), Some((0, 1300)));
    let a = run(&mut s, 3, 1, 1299, acq("e", "n2", "s2").op());
    assert_eq!(a.outcome, Outcome::Refused { key: "e".into(), refusal: Refusal::LockDelay { until_ms: 1300 }, holders: vec![] });
    assert_eq!(granted_token(&run(&mut s, 4, 1, 1300, acq("e", "n2", "s2").op())), 4);

    // node gone: the delay runs from now
    run(&mut s, 5, 1, 2000, acq("g", "n1", "s1").delay(300).bound().op());
    run(&mut s, 6, 1, 2100, gone("n1"));
    assert_eq!(refusal(&run(&mut s, 7, 1, 2399, acq("g", "n2", "s2").op())), Refusal::LockDelay { until_ms: 2400 });
    assert_eq!(granted_token(&run(&mut s, 8, 1, 2400, acq("g", "n2", "s2").op())), 8);

    // release: free at once
    run(&mut s, 9, 1, 2500, acq("r", "n1", "s1").delay(300).op());
    run(&mut s, 10, 1, 2600, release("r", 9));
    assert!(s.key("r").is_none());
    assert_eq!(granted_token(&run(&mut s, 11, 1, 2600, acq("r", "n2", "s2").op())), 11);
}

#[test]
fn each_vanishing_holder_of_a_counted_key_pushes_the_lock_delay_out_from_its_own_deadline() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("k", "n1", "s1").limit(2).delay(1000).ttl(100).op());
    run(&mut s, 2, 1, 0, acq("k", "n2", "s2").limit(2).delay(1000).op());
    run(&mut s, 3, 1, 100, Op::Tick);
    assert_eq!(s.key("k").map(|k| k.blocked_until_ms), Some(1100));
    assert_eq!(refusal(&run(&mut s, 4, 1, 500, acq("k", "n3", "s3").limit(2).op())), Refusal::LockDelay { until_ms: 1100 }, "a slot is free, but delayed");
    run(&mut s, 5, 1, 1000, Op::Tick);
    assert_eq!(s.key("k").map(|k| (k.holders.len(), k.blocked_until_ms)), Some((0, 2000)));
    assert_eq!(refusal(&run(&mut s, 6, 1, 1999, acq("k", "n3", "s3").limit(2).op())), Refusal::LockDelay { until_ms: 2000 });
    assert_eq!(granted_token(&run(&mut s, 7, 1, 2000, acq("k", "n3", "s3").limit(2).op())), 7);
}

#[test]
fn node_gone_releases_only_the_bound_holders_of_that_node() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("a", "n1", "s1").bound().op());
    run(&mut s, 2, 1, 0, acq("b", "n1", "s1").op());
    run(&mut s, 3, 1, 0, acq("c", "n2", "s2").bound().op());
    run(&mut s, 4, 1, 0, acq("d", "n1", "s2").limit(2).bound().op());
    run(&mut s, 5, 1, 0, acq("d", "n2", "s1").limit(2).bound().op());
    let a = run(&mut s, 6, 1, 10, gone("n1"));
    assert_eq!(a.outcome, Outcome::Done);
    let released: Vec<(ChangeKind, &str, u64)> = a.changes.iter().map(|c| (c.kind.clone(), c.key.as_str(), c.holder.token)).collect();
    assert_eq!(released, vec![(ChangeKind::NodeGone, "a", 1), (ChangeKind::NodeGone, "d", 4)]);
    assert!(s.key("a").is_none());
    assert_eq!(s.holders_of_node("n1").iter().map(|(k, h)| (k.as_str(), h.token)).collect::<Vec<_>>(), vec![("b", 2)], "left to its lease");
    assert_eq!(s.holders_of_node("n2").iter().map(|(k, h)| (k.as_str(), h.token)).collect::<Vec<_>>(), vec![("c", 3), ("d", 5)]);
    assert_eq!(run(&mut s, 7, 1, 20, gone("n9")).changes, vec![]);
}

#[test]
fn node_gone_leaves_grants_after_the_crash_was_seen_to_their_lease() {
    // n1 crashed and restarted; the leader saw the crash when entry 2 was its last, and its
    // view still shows n1 crashed after the new run was granted entry 3.
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("a", "n1", "old").bound().op());
    run(&mut s, 2, 1, 0, acq("b", "n2", "s").op());
    run(&mut s, 3, 1, 0, acq("c", "n1", "new").bound().op());
    let a = run(&mut s, 4, 1, 10, Op::NodeGone { node: "n1".into(), upto: 2 });
    let released: Vec<(&str, u64)> = a.changes.iter().map(|c| (c.key.as_str(), c.holder.token)).collect();
    assert_eq!(released, vec![("a", 1)], "the old run's claim goes, the new run's stays");
    assert_eq!(s.holders_of_node("n1").iter().map(|(k, h)| (k.as_str(), h.token)).collect::<Vec<_>>(), vec![("c", 3)]);
}

#[test]
fn a_counted_key_never_has_more_holders_than_its_limit() {
    let mut s = ClaimsState::default();
    for (i, who) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let a = run(&mut s, i as u64 + 1, 1, 0, acq("gpu", who, "s").limit(3).op());
        assert_eq!(granted_token(&a), i as u64 + 1);
        let Outcome::Granted { holders, .. } = &a.outcome else { unreachable!() };
        assert_eq!(holders.iter().map(|h| h.token).collect::<Vec<_>>(), (1..=i as u64 + 1).collect::<Vec<_>>(), "all holders, in grant order");
    }
    let a = run(&mut s, 4, 1, 0, acq("gpu", "n4", "s").limit(3).op());
    assert_eq!(refusal(&a), Refusal::Held);
    let Outcome::Refused { holders, .. } = &a.outcome else { unreachable!() };
    assert_eq!(holders.len(), 3);
    assert_eq!(refusal(&run(&mut s, 5, 1, 0, acq("gpu", "n4", "s").limit(2).op())), Refusal::LimitMismatch { limit: 3 });
    assert_eq!(refusal(&run(&mut s, 6, 1, 0, acq("gpu", "n4", "s").limit(4).op())), Refusal::LimitMismatch { limit: 3 });
    run(&mut s, 7, 1, 0, release("gpu", 2));
    assert_eq!(granted_token(&run(&mut s, 8, 1, 0, acq("gpu", "n4", "s").limit(3).op())), 8, "a freed slot is granted");
    for t in [1, 3, 8] {
        run(&mut s, 10 + t, 1, 0, release("gpu", t));
    }
    assert!(s.is_empty());
    let a = run(&mut s, 20, 1, 0, acq("gpu", "n5", "s").limit(1).op());
    assert_eq!(granted_token(&a), 20, "the limit is set afresh once the key is empty");
    assert_eq!(s.key("gpu").map(|k| k.limit), Some(1));
}

#[test]
fn an_empty_key_under_lock_delay_refuses_with_the_delay_and_the_next_grant_sets_new_terms() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("k", "n1", "s").limit(3).delay(100).op());
    run(&mut s, 2, 1, 1000, Op::Tick);
    assert_eq!(refusal(&run(&mut s, 3, 1, 1050, acq("k", "n2", "s").limit(1).op())), Refusal::LockDelay { until_ms: 1100 });
    assert_eq!(granted_token(&run(&mut s, 4, 1, 1100, acq("k", "n2", "s").limit(1).op())), 4);
    assert_eq!(s.key("k").map(|k| (k.limit, k.lock_delay_ms)), Some((1, 0)));
}

/// Applies `op` and a tick at the same entry to two copies: an invalid op must do exactly
/// what a tick does (advance time, expire what is due) and nothing else.
fn assert_invalid(s: &ClaimsState, op: Op, field: &str) {
    let mut with_op = s.clone();
    let mut with_tick = s.clone();
    let index = s.last_index() + 1;
    let a = run(&mut with_op, index, s.epoch(), s.now_ms() + 1, op.clone());
    let t = run(&mut with_tick, index, s.epoch(), s.now_ms() + 1, Op::Tick);
    match &a.outcome {
        Outcome::Invalid { reason } => assert!(reason.starts_with(field), "{reason:?} should name {field} ({op:?})"),
        other => panic!("{op:?} should be invalid, got {other:?}"),
    }
    assert_eq!(a.changes, t.changes);
    assert_eq!(with_op, with_tick, "{op:?} changed the state");
}

#[test]
fn every_op_out_of_bounds_is_invalid_and_changes_nothing() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("k", "n1", "s1").op());
    let long = |n: usize| "x".repeat(n);
    let big = Some(long(MAX_META + 1));
    let cases: Vec<(Op, &str)> = vec![
        (acq("", "n", "s").op(), "key"),
        (acq(&long(MAX_KEY + 1), "n", "s").op(), "key"),
        (acq("a\nb", "n", "s").op(), "key"),
        (acq("a\u{7f}", "n", "s").op(), "key"),
        (acq("k", "", "s").op(), "node"),
        (acq("k", &long(MAX_ID + 1), "s").op(), "node"),
        (acq("k", "n", "").op(), "session"),
        (acq("k", "n", &long(MAX_ID + 1)).op(), "session"),
        (acq("k", "n1", "s1").ttl(MIN_TTL_MS - 1).op(), "ttl_ms"),
        (acq("k", "n1", "s1").ttl(MAX_TTL_MS + 1).op(), "ttl_ms"),
        (acq("k", "n1", "s1").limit(0).op(), "limit"),
        (acq("k", "n1", "s1").limit(MAX_LIMIT + 1).op(), "limit"),
        (acq("k", "n1", "s1").delay(MAX_LOCK_DELAY_MS + 1).op(), "lock_delay_ms"),
        (acq("k", "n1", "s1").meta(Meta { instance: big.clone(), ..Meta::default() }).op(), "meta.instance"),
        (acq("k", "n1", "s1").meta(Meta { config_hash: big, ..Meta::default() }).op(), "meta.config_hash"),
        (renew("k", 1, Some(MIN_TTL_MS - 1)), "ttl_ms"),
        (renew("k", 1, Some(MAX_TTL_MS + 1)), "ttl_ms"),
        (renew("", 1, None), "key"),
        (release(&long(MAX_KEY + 1), 1), "key"),
        (gone(""), "node"),
        (gone(&long(MAX_ID + 1)), "node"),
    ];
    for (op, field) in cases {
        assert_invalid(&s, op, field);
    }
    // and every bound itself is accepted
    let edge = Meta { instance: Some(long(MAX_META)), config_hash: Some(long(MAX_META)), bound_to_node: true };
    let op = acq(&long(MAX_KEY), &long(MAX_ID), &long(MAX_ID)).ttl(MAX_TTL_MS).limit(MAX_LIMIT).delay(MAX_LOCK_DELAY_MS).meta(edge).op();
    assert_eq!(granted_token(&run(&mut s, 2, 1, 0, op)), 2);
    assert_eq!(granted_token(&run(&mut s, 3, 1, 0, acq("ключ 🔑", "n", "s").ttl(MIN_TTL_MS).op())), 3, "non-ASCII keys are fine");
}

#[test]
fn an_invalid_op_still_expires_what_is_due() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("k", "n1", "s1").op());
    let a = run(&mut s, 2, 1, 1000, acq("", "n", "s").op());
    assert!(matches!(a.outcome, Outcome::Invalid { .. }));
    assert_eq!(a.changes, vec![change(ChangeKind::Expired, "k", holder("n1", "s1", 1, 1000, 1000, 0))]);
}

#[test]
fn an_entry_at_or_below_the_last_index_is_refused_and_changes_nothing() {
    let mut s = ClaimsState::default();
    run(&mut s, 5, 1, 0, acq("k", "n1", "s1").op());
    let before = s.clone();
    for index in [0, 4, 5] {
        let a = run(&mut s, index, 2, 9999, acq("j", "n1", "s1").op());
        assert!(matches!(&a.outcome, Outcome::Invalid { reason } if reason.contains("already applied")));
        assert!(a.changes.is_empty());
        assert_eq!(s, before);
    }
}

#[test]
fn a_new_key_beyond_max_keys_is_refused_but_existing_keys_still_grant() {
    let mut s = ClaimsState::default();
    for i in 0..MAX_KEYS as u64 {
        run(&mut s, i + 1, 1, 0, acq(&format!("k{i}"), "n1", "s1").limit(2).op());
    }
    assert_eq!(s.len(), MAX_KEYS);
    let next = MAX_KEYS as u64 + 1;
    let a = run(&mut s, next, 1, 0, acq("new", "n1", "s1").op());
    assert_eq!(a.outcome, Outcome::Refused { key: "new".into(), refusal: Refusal::TooManyKeys, holders: vec![] });
    assert_eq!(granted_token(&run(&mut s, next + 1, 1, 0, acq("k7", "n2", "s2").limit(2).op())), next + 1);
    run(&mut s, next + 2, 1, 0, release("k0", 1));
    assert_eq!(granted_token(&run(&mut s, next + 3, 1, 0, acq("new", "n1", "s1").op())), next + 3, "room again once a key is gone");
    assert_eq!(s.len(), MAX_KEYS);
}

#[test]
fn next_deadline_is_the_earliest_lease_end_or_lifting_delay() {
    let mut s = ClaimsState::default();
    assert_eq!(s.next_deadline_ms(), None);
    run(&mut s, 1, 1, 0, acq("a", "n1", "s1").ttl(500).delay(2000).op());
    run(&mut s, 2, 1, 0, acq("b", "n1", "s1").ttl(1000).op());
    assert_eq!(s.next_deadline_ms(), Some(500));
    run(&mut s, 3, 1, 500, Op::Tick);
    assert_eq!(s.next_deadline_ms(), Some(1000));
    run(&mut s, 4, 1, 1000, Op::Tick);
    assert_eq!(s.next_deadline_ms(), Some(2500), "a's lock-delay");
    assert_eq!(s.len(), 1);
    run(&mut s, 5, 1, 2500, Op::Tick);
    assert_eq!((s.next_deadline_ms(), s.len()), (None, 0));
}

#[test]
fn the_view_never_shows_a_claim_past_its_deadline() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("a", "n1", "s1").ttl(500).limit(2).op());
    run(&mut s, 2, 1, 0, acq("a", "n2", "s2").ttl(900).limit(2).op());
    run(&mut s, 3, 1, 0, acq("b", "n1", "s1").ttl(100).delay(50).op());
    let v = s.view(100);
    assert_eq!(v.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), vec!["a"], "b's holder is at its deadline, its expiry not yet applied");
    assert_eq!(v[0].holders.iter().map(|h| (h.holder.token, h.expires_in_ms)).collect::<Vec<_>>(), vec![(1, 400), (2, 800)]);
    assert_eq!(s.view(500).iter().map(|k| (k.key.as_str(), k.holders.len())).collect::<Vec<_>>(), vec![("a", 1)]);
    run(&mut s, 4, 1, 120, Op::Tick);
    assert_eq!(s.view(120).iter().map(|k| (k.key.as_str(), k.blocked_for_ms)).collect::<Vec<_>>(), vec![("a", 0), ("b", 30)]);
    let json = serde_json::to_value(&s.view(120)[0].holders[0]).expect("json");
    assert_eq!(
        (json["holder"]["token"].as_u64(), json["expires_in_ms"].as_u64()),
        (Some(1), Some(380)),
        "the holder nested (bincode cannot carry flattened fields)"
    );
}

#[test]
fn a_snapshot_round_trips_and_its_rebuilt_index_expires_on_time() {
    let mut s = ClaimsState::default();
    run(&mut s, 1, 1, 0, acq("a", "n1", "s1").ttl(500).op());
    run(&mut s, 2, 1, 0, acq("b", "n1", "s1").ttl(800).delay(300).op());
    run(&mut s, 3, 2, 100, acq("c", "n2", "s2").ttl(2000).meta(Meta { instance: Some("u".into()), config_hash: None, bound_to_node: true }).op());
    let bytes = s.to_bytes();
    assert_eq!(bytes[0], SNAPSHOT_VERSION);
    let mut back = ClaimsState::from_bytes(&bytes).expect("decode");
    assert_eq!(back, s, "indices included");
    assert_eq!(back.next_deadline_ms(), Some(600));
    let a = run(&mut back, 4, 2, 900, Op::Tick);
    assert_eq!(a.changes.iter().map(|c| (c.kind.clone(), c.key.as_str())).collect::<Vec<_>>(), vec![(ChangeKind::Expired, "a"), (ChangeKind::Expired, "b")]);
    assert_eq!(back.next_deadline_ms(), Some(1200), "b's lock-delay");
    assert_eq!(run(&mut s, 4, 2, 900, Op::Tick), a);
    assert_eq!(back, s);
}

#[test]
fn garbage_oversized_or_unknown_version_snapshots_are_rejected() {
    let good = ClaimsState::default().to_bytes();
    assert_eq!(ClaimsState::from_bytes(&[]), Err(SnapshotError::Empty));
    assert_eq!(ClaimsState::from_bytes(&[2, 0, 0, 0]), Err(SnapshotError::UnknownVersion(2)));
    assert!(matches!(ClaimsState::from_bytes(&vec![SNAPSHOT_VERSION; MAX_SNAPSHOT + 1]), Err(SnapshotError::TooLarge(_))));
    assert!(matches!(ClaimsState::from_bytes(&[SNAPSHOT_VERSION]), Err(SnapshotError::Malformed(_))));
    assert!(matches!(ClaimsState::from_bytes(&good[..good.len() - 1]), Err(SnapshotError::Malformed(_))));
    let mut long = good.clone();
    long.push(7);
    assert_eq!(ClaimsState::from_bytes(&long), Err(SnapshotError::Trailing(1)));
    // a map claiming far more entries than there are bytes: refused, not allocated
    let huge = [SNAPSHOT_VERSION, 0, 0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(matches!(ClaimsState::from_bytes(&huge), Err(SnapshotError::Malformed(_))));
    assert_eq!(ClaimsState::from_bytes(&good), Ok(ClaimsState::default()));
}
