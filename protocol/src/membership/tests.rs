//! Unit tests of the membership state machine: redials, probes, rumors, leaves and timers.

use super::*;

fn drain(m: &mut Membership) -> (Vec<Event>, Vec<Action>) {
    let mut e = Vec::new();
    let mut a = Vec::new();
    while let Some(x) = m.poll_event() {
        e.push(x);
    }
    while let Some(x) = m.poll_action() {
        a.push(x);
    }
    (e, a)
}

fn state(m: &Membership, p: &str) -> State {
    m.get(p).expect("member").state
}

/// Runs timers until the next probe of `target` is sent; returns its seq and the time.
/// Probes of other peers are acknowledged at once.
fn next_probe_of(m: &mut Membership, target: &str, mut now: u64) -> (u64, u64) {
    for _ in 0..100 {
        m.handle_timeout(now);
        let (_, a) = drain(m);
        for x in a {
            if let Action::Probe { peer, seq } = x {
                if peer == target {
                    return (seq, now);
                }
                m.handle_ack(&peer, seq, 1.0, now);
            }
        }
        now = m.poll_timeout().expect("a timer").max(now + 1);
    }
    panic!("no probe of {target}");
}

#[test]
fn reset_then_refused_redial_is_dead_at_once() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("b", 0);
    drain(&mut m);
    m.handle_disconnected("b", true, 100);
    let (_, a) = drain(&mut m);
    assert_eq!(a, vec![Action::Redial { peer: "b".into() }]);
    m.handle_dial_failed("b", true, 103);
    assert_eq!(state(&m, "b"), State::Dead);
    assert!(m.get("b").is_some_and(|x| x.crashed), "a refused redial proves a crash");
    let (e, _) = drain(&mut m);
    assert!(e.contains(&Event::Changed { peer: "b".into(), from: Some(State::Alive), to: State::Dead }));
    m.handle_connected("b", 2000);
    assert!(m.get("b").is_some_and(|x| x.state == State::Alive && !x.crashed), "alive again is not crashed");
}

#[test]
fn a_redial_that_times_out_is_no_proof_of_a_crash() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("b", 0);
    m.handle_disconnected("b", true, 100);
    m.handle_dial_failed("b", false, 500);
    let mut now = 500;
    while state(&m, "b") != State::Dead && now < 60_000 {
        now += 100;
        m.handle_timeout(now);
        drain(&mut m);
    }
    assert_eq!(state(&m, "b"), State::Dead);
    assert!(m.get("b").is_some_and(|x| !x.crashed), "dead by suspicion (a partition looks the same) is not crashed");
}

/// SIGKILL: the peers see the reset while the dying process still has its listening
/// socket, so the first redial is taken in and reset; the next one is refused.
#[test]
fn a_redial_reset_by_a_dying_listener_is_tried_again_and_then_refused() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    drain(&mut m);
    m.handle_disconnected("b", true, 100);
    assert_eq!(drain(&mut m).1, vec![Action::Redial { peer: "b".into() }]);
    m.handle_dial_failed("b", false, 101);
    assert_eq!(state(&m, "b"), State::Alive, "a reset handshake is no reason to suspect yet");
    assert!(drain(&mut m).1.is_empty(), "nothing broadcast");
    assert!(m.poll_timeout().is_some_and(|t| t <= 101 + cfg.redial_retry_ms), "a timer for the retry");
    // A suspicion from another member meanwhile does not stop the retry.
    m.handle_connected("c", 0);
    m.handle_rumor("c", "b", 0, Rumor::Suspect, 110).expect("rumor");
    assert_eq!(state(&m, "b"), State::Suspect);
    drain(&mut m);
    m.handle_timeout(101 + cfg.redial_retry_ms);
    assert!(drain(&mut m).1.contains(&Action::Redial { peer: "b".into() }), "redialled again");
    m.handle_dial_failed("b", true, 160);
    assert_eq!(state(&m, "b"), State::Dead);
    assert!(m.get("b").is_some_and(|x| x.crashed), "the refusal proves the crash");
}

/// A host that answers nothing (cut off, frozen) never refuses: however often the
/// redial after a reset fails, the peer is only suspected, then dead, never crashed.
#[test]
fn redials_that_keep_failing_without_a_refusal_end_in_suspicion_not_a_crash() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_disconnected("b", true, 100);
    drain(&mut m);
    // Each redial fails (timed out, reset) 5 ms after it was asked for.
    let (mut now, mut redials, mut fail_at) = (100, 1, Some(105));
    while now < 100 + cfg.redial_timeout_ms {
        now += 1;
        if fail_at == Some(now) {
            fail_at = None;
            m.handle_dial_failed("b", false, now);
        }
        m.handle_timeout(now);
        if drain(&mut m).1.contains(&Action::Redial { peer: "b".into() }) {
            redials += 1;
            fail_at = Some(now + 5);
        }
    }
    assert_eq!(state(&m, "b"), State::Suspect, "suspected at the redial deadline");
    assert!((2..=(cfg.redial_timeout_ms / cfg.redial_retry_ms) as usize).contains(&redials), "bounded retries: {redials}");
    while state(&m, "b") != State::Dead && now < 60_000 {
        now += 10;
        m.handle_timeout(now);
        drain(&mut m);
    }
    assert!(m.get("b").is_some_and(|x| x.state == State::Dead && !x.crashed));
}

/// Dead on other evidence first (a rumor, the suspicion timer): a refusal that comes
/// later still proves the process gone, once; a member that left is never crashed.
#[test]
fn a_dead_member_that_refuses_a_dial_is_proven_crashed_once() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_connected("l", 0);
    m.handle_disconnected("b", false, 100);
    m.handle_dial_failed("b", false, 600);
    let mut now = 600;
    while state(&m, "b") != State::Dead {
        now += 10;
        m.handle_timeout(now);
    }
    drain(&mut m);
    assert!(m.get("b").is_some_and(|x| !x.crashed));
    m.handle_dial_failed("b", false, now + 1);
    assert!(m.get("b").is_some_and(|x| !x.crashed), "a failure without a refusal proves nothing");
    m.handle_dial_failed("b", true, now + 1000);
    m.handle_dial_failed("b", true, now + 2000);
    assert!(m.get("b").is_some_and(|x| x.state == State::Dead && x.crashed));
    assert_eq!(drain(&mut m).0, vec![Event::Crashed { peer: "b".into() }], "one event for the app");
    m.handle_leave("l", now);
    m.handle_disconnected("l", false, now);
    m.handle_dial_failed("l", true, now + 10);
    assert!(m.get("l").is_some_and(|x| x.state == State::Left && !x.crashed), "a leave is not a crash");
}

#[test]
fn unanswered_probe_with_nobody_to_ask_suspects_then_kills() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    let (_, t) = next_probe_of(&mut m, "b", 0);
    m.handle_timeout(t + cfg.probe_timeout_ms);
    assert_eq!(state(&m, "b"), State::Suspect);
    let since = m.get("b").expect("b").state_since_ms;
    m.handle_timeout(since + cfg.suspicion_max_ms - 1);
    assert_eq!(state(&m, "b"), State::Suspect);
    m.handle_timeout(since + cfg.suspicion_max_ms);
    assert_eq!(state(&m, "b"), State::Dead);
}

#[test]
fn acked_probes_keep_a_peer_alive_and_record_rtt() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("b", 0);
    let mut now = 0;
    for _ in 0..5 {
        let (seq, t) = next_probe_of(&mut m, "b", now);
        m.handle_ack("b", seq, 1.5, t + 2);
        now = t + 3;
    }
    m.handle_timeout(now + 10_000);
    assert_eq!(state(&m, "b"), State::Alive);
    assert_eq!(m.get("b").expect("b").rtt_ms, Some(1.5));
}

#[test]
fn indirect_probe_answer_saves_a_peer_on_a_lossy_link() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_connected("c", 0);
    let (seq, t) = next_probe_of(&mut m, "b", 0);
    m.handle_timeout(t + cfg.probe_timeout_ms);
    let (_, a) = drain(&mut m);
    assert!(a.contains(&Action::IndirectProbe { via: "c".into(), target: "b".into(), seq }), "{a:?}");
    assert_eq!(state(&m, "b"), State::Alive, "not suspected while the indirect probe is out");
    m.handle_probe_reply("c", seq, "b", true, t + cfg.probe_timeout_ms + 5);
    m.handle_timeout(t + cfg.probe_timeout_ms + cfg.indirect_timeout_ms + 1);
    assert_eq!(state(&m, "b"), State::Alive);
}

#[test]
fn failed_indirect_probes_confirm_and_kill_quickly() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    for p in ["b", "c", "d", "e"] {
        m.handle_connected(p, 0);
    }
    let (seq, t) = next_probe_of(&mut m, "b", 0);
    let t1 = t + cfg.probe_timeout_ms;
    m.handle_timeout(t1);
    m.handle_probe_reply("c", seq, "b", false, t1 + 100);
    m.handle_probe_reply("d", seq, "b", false, t1 + 105);
    assert_eq!(state(&m, "b"), State::Alive, "one via still to answer");
    m.handle_probe_reply("e", seq, "b", false, t1 + 110);
    assert_eq!(state(&m, "b"), State::Suspect);
    m.handle_timeout(t1 + 110 + cfg.suspicion_min_ms);
    assert_eq!(state(&m, "b"), State::Dead, "three independent confirmations: minimum suspicion");
}

#[test]
fn relayed_probe_answers_the_origin() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("t", 0);
    m.handle_connected("o", 0);
    drain(&mut m);
    m.handle_probe_request("o", 77, "t", 10);
    let (_, a) = drain(&mut m);
    let Some(Action::Probe { seq, .. }) = a.into_iter().find(|x| matches!(x, Action::Probe { peer, .. } if peer == "t")) else { panic!("no relay probe") };
    m.handle_ack("t", seq, 1.0, 12);
    let (_, a) = drain(&mut m);
    assert!(a.contains(&Action::ProbeReply { origin: "o".into(), req: 77, target: "t".into(), alive: true }));
    // and an unanswered relay says "no" at the probe timeout
    m.handle_probe_request("o", 78, "t", 20);
    drain(&mut m);
    m.handle_timeout(20 + cfg.probe_timeout_ms);
    let (_, a) = drain(&mut m);
    assert!(a.contains(&Action::ProbeReply { origin: "o".into(), req: 78, target: "t".into(), alive: false }), "{a:?}");
}

#[test]
fn suspected_node_refutes_with_a_higher_incarnation() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("c", 0);
    drain(&mut m);
    m.handle_rumor("c", "me", 0, Rumor::Suspect, 10).expect("counted");
    assert_eq!(m.incarnation(), 1);
    let (_, a) = drain(&mut m);
    assert_eq!(a, vec![Action::Broadcast { peer: "me".into(), incarnation: 1, rumor: Rumor::Alive }]);
    let cfg = Config::default();
    let mut other = Membership::new("x", cfg.clone());
    other.handle_connected("me", 0);
    other.handle_disconnected("me", false, 5);
    other.handle_timeout(5 + cfg.redial_timeout_ms);
    assert_eq!(state(&other, "me"), State::Suspect);
    other.handle_rumor("me", "me", 1, Rumor::Alive, 500).expect("a refutation by the node itself");
    assert_eq!(state(&other, "me"), State::Alive);
}

#[test]
fn a_rumor_from_a_non_member_or_repeated_is_not_a_confirmation() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    for p in ["b", "c"] {
        m.handle_connected(p, 0);
    }
    m.handle_disconnected("b", false, 10);
    m.handle_timeout(10 + cfg.redial_timeout_ms);
    assert_eq!(state(&m, "b"), State::Suspect);
    assert_eq!(m.handle_rumor("stranger", "b", 0, Rumor::Suspect, 500), Err(RumorRejected::NotALiveMember));
    assert_eq!(m.confirmations("b"), 0);
    m.handle_rumor("c", "b", 0, Rumor::Suspect, 510).expect("c is a live member");
    m.handle_rumor("c", "b", 0, Rumor::Suspect, 520).expect("accepted, but not counted again");
    assert_eq!(m.confirmations("b"), 1, "one member is one confirmation");
    // a suspected member's own rumors do not count either
    assert_eq!(m.handle_rumor("b", "c", 0, Rumor::Suspect, 530), Err(RumorRejected::NotALiveMember));
    assert_eq!(m.handle_rumor("b", "b", 0, Rumor::Dead, 530), Err(RumorRejected::NotALiveMember));
}

#[test]
fn an_incarnation_near_the_maximum_is_rejected_so_refutations_never_overflow() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("c", 0);
    drain(&mut m);
    assert_eq!(m.handle_rumor("c", "me", u64::MAX, Rumor::Suspect, 10), Err(RumorRejected::Incarnation(u64::MAX)));
    assert_eq!(m.incarnation(), 0);
    m.handle_rumor("c", "me", MAX_INCARNATION, Rumor::Suspect, 10).expect("in range");
    assert_eq!(m.incarnation(), MAX_INCARNATION + 1, "the refutation is above the rumor");
    let (_, a) = drain(&mut m);
    assert_eq!(a, vec![Action::Broadcast { peer: "me".into(), incarnation: MAX_INCARNATION + 1, rumor: Rumor::Alive }]);
}

#[test]
fn fresh_evidence_ignores_a_suspicion_rumor() {
    let mut m = Membership::new("me", Config::default());
    m.handle_connected("b", 0);
    m.handle_connected("c", 0);
    m.handle_heard_from("b", 1000);
    m.handle_rumor("c", "b", 0, Rumor::Suspect, 1100).expect("counted");
    assert_eq!(state(&m, "b"), State::Alive);
    m.handle_rumor("c", "b", 0, Rumor::Suspect, 5000).expect("counted");
    assert_eq!(state(&m, "b"), State::Suspect, "stale evidence joins the suspicion");
}

#[test]
fn dead_peer_is_redialled_and_comes_back_alive() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_disconnected("b", true, 10);
    m.handle_dial_failed("b", true, 12);
    drain(&mut m);
    m.handle_timeout(12 + cfg.dead_redial_every_ms);
    let (_, a) = drain(&mut m);
    assert!(a.contains(&Action::Redial { peer: "b".into() }), "{a:?}");
    m.handle_connected("b", 2000);
    assert_eq!(state(&m, "b"), State::Alive);
}

#[test]
fn left_peer_stays_left_and_is_forgotten() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_leave("b", 10);
    m.handle_disconnected("b", true, 11);
    assert_eq!(state(&m, "b"), State::Left);
    let (_, a) = drain(&mut m);
    assert!(!a.iter().any(|x| matches!(x, Action::Redial { .. })), "no redial of a peer that said goodbye: {a:?}");
    m.handle_timeout(10 + cfg.forget_after_ms);
    assert!(m.get("b").is_none());
}

#[test]
fn a_connection_after_a_leave_does_not_revive_but_a_newer_record_does() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_leave("b", 10);
    m.handle_disconnected("b", false, 11);
    // a dial from a late mDNS answer reaches the process still winding down
    m.handle_connected("b", 20);
    assert_eq!(state(&m, "b"), State::Left);
    m.handle_disconnected("b", true, 30);
    m.handle_dial_failed("b", true, 31);
    m.handle_timeout(31 + cfg.redial_timeout_ms + cfg.suspicion_max_ms);
    assert_eq!(state(&m, "b"), State::Left, "a goodbye is not turned into a death");
    // the node restarts: it connects and its record (newer than the leave) arrives
    m.handle_connected("b", 5000);
    m.handle_rejoined("b", 5001);
    assert_eq!(state(&m, "b"), State::Alive);
    let (e, _) = drain(&mut m);
    assert_eq!(e.last(), Some(&Event::Changed { peer: "b".into(), from: Some(State::Left), to: State::Alive }));
}

#[test]
fn a_rejoin_heard_through_others_must_still_answer_a_dial() {
    let cfg = Config::default();
    let mut m = Membership::new("me", cfg.clone());
    m.handle_connected("b", 0);
    m.handle_leave("b", 10);
    m.handle_disconnected("b", false, 11);
    m.handle_rejoined("b", 100);
    assert_eq!(state(&m, "b"), State::Alive);
    m.handle_timeout(100 + cfg.redial_timeout_ms);
    assert_eq!(state(&m, "b"), State::Suspect, "no connection within the redial timeout");
    m.handle_rejoined("c", 100); // unknown peers are ignored
    assert!(m.get("c").is_none());
}

#[test]
fn suspicion_timeout_goes_from_max_to_min() {
    let cfg = Config::default();
    assert_eq!(suspicion_timeout(&cfg, 0), cfg.suspicion_max_ms);
    let one = suspicion_timeout(&cfg, 1);
    assert!(one < cfg.suspicion_max_ms && one > cfg.suspicion_min_ms);
    assert_eq!(suspicion_timeout(&cfg, cfg.confirmations), cfg.suspicion_min_ms);
}
