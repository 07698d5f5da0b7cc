//! Scenario tests of the mesh core: inputs at chosen times, exact outputs.

use super::*;
use crate::wire::{Rumor, sign_record, sign_rumor};

fn key(i: u8) -> Keypair {
    let mut b = [0u8; 32];
    b[0] = i;
    b[1] = 0x5a;
    Keypair::ed25519_from_bytes(b).expect("32 bytes")
}

fn id(k: &Keypair) -> String {
    k.public().to_peer_id().to_base58()
}

fn core(i: u8) -> MeshCore {
    MeshCore::new(key(i), "mesh-t", Config::default(), 0)
}

fn drain(c: &mut MeshCore) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

fn dials(actions: &[Action]) -> usize {
    actions.iter().filter(|a| matches!(a, Action::Dial { .. })).count()
}

fn random_peer(n: u64) -> String {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b[8] = 0xee;
    id(&Keypair::ed25519_from_bytes(b).expect("32 bytes"))
}

#[test]
fn a_flood_of_adverts_is_bounded_and_its_dials_are_rate_limited() {
    let mut c = core(1);
    let mut total_dials = 0;
    // 2,000 well-formed adverts with valid peer ids and the right mesh id, over 2 s.
    for n in 0..2000u64 {
        let now = n; // one per millisecond
        c.handle_node_advert(
            NodeSeen { fullname: String::new(), peer_id: random_peer(n), mesh_id: "mesh-t".into(), addrs: vec![format!("/ip4/10.9.0.1/tcp/{}", 1000 + n)] },
            now,
        );
        total_dials += dials(&drain(&mut c));
    }
    assert_eq!(c.strangers(), Config::default().max_strangers, "strangers are capped");
    assert!(total_dials <= 20 + 2 * 10 + 1, "{total_dials} dials in 2 s: the burst plus 10/s");
    assert!(c.stats().dials_deferred > 1000, "{:?}", c.stats());
    // Later ticks keep dialling at the budget's rate, not faster.
    let mut later = 0;
    for t in (2_000..12_000).step_by(1000) {
        c.handle_timeout(t);
        later += dials(&drain(&mut c));
    }
    assert!(later <= 10 * 10 + 20, "{later} dials in 10 s");
    // Strangers that never connect are aged out.
    c.handle_timeout(12_000 + Config::default().stranger_ttl_ms);
    assert_eq!(c.strangers(), 0);
}

#[test]
fn a_flood_of_distinct_adverts_resets_the_mdns_cache_and_quiets_it_longer_each_time() {
    let mut c = core(1);
    let mut resets = Vec::new();
    for n in 0..1600u64 {
        c.handle_node_advert(NodeSeen { fullname: format!("f{n}"), peer_id: random_peer(n), mesh_id: "mesh-t".into(), addrs: vec![] }, n);
        resets.extend(drain(&mut c).into_iter().filter_map(|a| match a {
            Action::ResetMdns { browse_after_ms } => Some(browse_after_ms),
            _ => None,
        }));
    }
    assert_eq!(resets, vec![30_000, 60_000, 120_000], "one reset per 512 distinct adverts, quiet for longer each time");
    assert_eq!(c.stats().mdns_flood_resets, 3);
    // the same advert seen again does not count twice
    let mut calm = core(2);
    for n in 0..2000u64 {
        calm.handle_node_advert(NodeSeen { fullname: format!("f{}", n % 10), peer_id: random_peer(n % 10), mesh_id: "mesh-t".into(), addrs: vec![] }, n);
    }
    assert!(!drain(&mut calm).iter().any(|a| matches!(a, Action::ResetMdns { .. })));
}

#[test]
fn a_member_redial_is_not_held_back_by_the_dial_budget() {
    let mut c = core(1);
    let b = id(&key(2));
    c.handle_connected(&b, Some("/ip4/10.0.0.2/tcp/7411".into()), 0);
    for n in 0..100u64 {
        c.handle_node_advert(
            NodeSeen { fullname: String::new(), peer_id: random_peer(n), mesh_id: "mesh-t".into(), addrs: vec!["/ip4/10.9.0.1/tcp/9".into()] },
            1,
        );
    }
    drain(&mut c);
    c.handle_disconnected(&b, 2);
    let a = drain(&mut c);
    assert!(a.contains(&Action::Dial { peer: b.clone(), addrs: vec!["/ip4/10.0.0.2/tcp/7411".into()] }), "{a:?}");
}

#[test]
fn nodes_of_other_meshes_are_counted_never_dialled_and_the_count_is_bounded() {
    let mut c = core(1);
    for n in 0..1000u64 {
        c.handle_node_advert(
            NodeSeen { fullname: String::new(), peer_id: random_peer(n), mesh_id: "another".into(), addrs: vec!["/ip4/10.9.0.1/tcp/9".into()] },
            n,
        );
    }
    assert_eq!(dials(&drain(&mut c)), 0);
    assert_eq!(c.other_meshes(), Config::default().max_other_meshes);
    assert_eq!(c.stats().rejected.get("advert_other_mesh"), Some(&1000));
    assert_eq!(c.strangers(), 0);
    c.handle_timeout(1000 + Config::default().other_mesh_ttl_ms);
    assert_eq!(c.other_meshes(), 0);
}

fn signed(k: &Keypair, version: u64) -> SignedRecord {
    let mut r = record("n", vec!["/ip4/10.9.9.9/tcp/9".into()], 1, vec![], Capacity::default(), vec![], "t");
    r.peer_id = id(k);
    r.mesh_id = "mesh-t".into();
    r.version = version;
    sign_record(&r, k).expect("sign")
}

#[test]
fn records_of_peers_never_connected_are_capped_and_aged() {
    let mut c = core(1);
    let relay = id(&key(2));
    c.handle_connected(&relay, None, 0);
    for n in 0..400u64 {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b[9] = 1;
        let k = Keypair::ed25519_from_bytes(b).expect("key");
        let v = c.handle_gossip(Some(&relay), &wire::encode(&Message::Record(signed(&k, 1))), 1 + n);
        assert_eq!(v, Verdict::Accept);
    }
    assert_eq!(c.records().len(), Config::default().max_unmet_records);
    c.handle_timeout(500 + Config::default().membership.forget_after_ms);
    assert_eq!(c.records().len(), 0, "aged out");
}

#[test]
fn one_member_cannot_hold_more_than_its_share_of_relayed_probes() {
    let mut c = core(1);
    let (o, t) = (id(&key(2)), id(&key(3)));
    c.handle_connected(&o, None, 0);
    c.handle_connected(&t, None, 0);
    drain(&mut c);
    for req in 0..50u64 {
        c.handle_request(&o, req, Message::ProbeRequest { req, target: t.clone() }, 10);
    }
    let a = drain(&mut c);
    let released = a.iter().filter(|x| matches!(x, Action::Release { .. })).count();
    assert_eq!(released, 50 - Config::default().max_relays_per_origin);
    assert_eq!(c.in_flight().1, Config::default().max_relays_per_origin);
    // when the origin goes away, what it left waiting is released
    c.handle_disconnected(&o, 20);
    assert_eq!(c.in_flight().1, 0);
}

#[test]
fn a_sync_of_many_large_records_completes_in_pages() {
    let (sid, aid) = (id(&key(1)), id(&key(2)));
    let relay = id(&key(3));
    // 300 records of nearly the maximum size, learned by gossip.
    let mut server = MeshCore::new(key(1), "mesh-t", Config { max_unmet_records: 1000, ..Config::default() }, 0);
    server.handle_connected(&relay, None, 0);
    for n in 0..300u64 {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b[9] = 2;
        let k = Keypair::ed25519_from_bytes(b).expect("key");
        let mut r = record(&"x".repeat(wire::MAX_RECORD - 600), vec![], 1, vec![], Capacity::default(), vec![], "t");
        r.peer_id = id(&k);
        r.mesh_id = "mesh-t".into();
        r.version = 1;
        let s = sign_record(&r, &k).expect("sign");
        assert_eq!(server.handle_gossip(Some(&relay), &wire::encode(&Message::Record(s)), 1), Verdict::Accept);
    }
    drain(&mut server);
    let mut asker = MeshCore::new(key(2), "mesh-t", Config { max_unmet_records: 1000, ..Config::default() }, 0);
    asker.handle_connected(&sid, None, 10);
    let mut pages = 0;
    loop {
        let reqs: Vec<(u64, Message)> = drain(&mut asker)
            .into_iter()
            .filter_map(|a| match a {
                Action::Request { id, msg: m @ Message::SyncRequest { .. }, .. } => Some((id, m)),
                _ => None,
            })
            .collect();
        if reqs.is_empty() {
            break;
        }
        for (rid, m) in reqs {
            // through the wire, as the node's codec carries it
            let m = wire::decode(&wire::encode(&m)).expect("request decodes");
            server.handle_request(&aid, 7, m, 20);
            let Some(Action::Respond { msg, .. }) = drain(&mut server).into_iter().find(|a| matches!(a, Action::Respond { .. })) else { panic!("no answer") };
            let frame = wire::encode(&msg);
            assert!(frame.len() <= wire::MAX_FRAME, "a page of {} bytes", frame.len());
            asker.handle_response(&sid, rid, wire::decode(&frame).expect("page decodes"), 30);
            pages += 1;
        }
        assert!(pages < 1000);
    }
    assert_eq!(asker.records().len(), 300);
    assert!(pages >= 75, "{pages} pages");
}

#[test]
fn a_signed_rumor_from_a_non_member_or_repeated_is_not_a_confirmation() {
    let mut c = core(1);
    let (b, m) = (id(&key(2)), id(&key(3)));
    c.handle_connected(&b, None, 0);
    c.handle_connected(&m, None, 0);
    c.handle_disconnected(&b, 10);
    c.handle_timeout(10 + Config::default().membership.redial_timeout_ms);
    drain(&mut c);
    assert_eq!(c.membership().get(&b).map(|x| x.state), Some(State::Suspect));
    let stranger = key(9);
    let r = sign_rumor("mesh-t", &b, 0, Rumor::Suspect, &stranger).expect("sign");
    assert_eq!(c.handle_gossip(Some(&id(&stranger)), &wire::encode(&Message::Member(r)), 500), Verdict::Ignore);
    assert_eq!(c.membership().confirmations(&b), 0);
    let r = sign_rumor("mesh-t", &b, 0, Rumor::Suspect, &key(3)).expect("sign");
    let bytes = wire::encode(&Message::Member(r));
    assert_eq!(c.handle_gossip(Some(&m), &bytes, 510), Verdict::Accept);
    assert_eq!(c.handle_gossip(Some(&m), &bytes, 520), Verdict::Accept);
    assert_eq!(c.membership().confirmations(&b), 1, "the same rumor repeated is one confirmation");
    // a rumor relayed under another source than its signer is refused
    let forged = sign_rumor("mesh-t", &b, 0, Rumor::Dead, &stranger).expect("sign");
    assert_eq!(c.handle_gossip(Some(&m), &wire::encode(&Message::Member(forged)), 530), Verdict::Reject);
    assert_eq!(c.membership().get(&b).map(|x| x.state), Some(State::Suspect));
}

#[test]
fn record_versions_increase_across_restarts_whatever_the_clock_says() {
    let mut c = core(1);
    let r = || record("n", vec![], 1, vec![], Capacity::default(), vec![], "t");
    let v1 = c.publish_record(r(), 10_000_000, 0).expect("published");
    assert_eq!(v1, 10_000_000);
    // restart with the persisted version, the wall clock gone back an hour
    let mut again = MeshCore::new(key(1), "mesh-t", Config::default(), c.own_version());
    let v2 = again.publish_record(r(), 10_000_000 - 3_600_000, 0).expect("published");
    assert!(v2 > v1, "{v2} after {v1}");
    assert_eq!(next_version(u64::MAX, 5), u64::MAX, "saturates instead of wrapping");
}

#[test]
fn an_unchanged_record_is_republished_only_when_due() {
    let mut c = core(1);
    let r = || record("n", vec![], 1, vec![], Capacity::default(), vec![], "t");
    assert!(c.publish_record(r(), 10, 0).is_some());
    assert!(c.publish_record(r(), 20, 1000).is_none());
    assert!(c.publish_record(r(), 30, Config::default().refresh_record_ms).is_some());
    c.republish_soon();
    assert!(c.publish_record(r(), 40, Config::default().refresh_record_ms + 1).is_some());
}

#[test]
fn a_connected_peer_of_another_mesh_is_disconnected_on_identify() {
    let mut c = core(1);
    let b = id(&key(2));
    c.handle_connected(&b, None, 0);
    drain(&mut c);
    c.handle_identify(&b, &identify_protocol("other"), vec![], 1);
    assert_eq!(drain(&mut c), vec![Action::Disconnect { peer: b }]);
    assert_eq!(c.stats().rejected.get("identify_other_mesh"), Some(&1));
}

/// SIGKILL as the rig saw it: the redial right after the reset is taken in by the dying
/// process's listener and reset; the core dials again and the refusal proves the crash.
/// A member that was already dead when a dial was refused is reported crashed too.
#[test]
fn a_killed_peer_whose_first_redial_is_reset_is_proven_crashed_by_the_next() {
    let mut c = core(1);
    let b = id(&key(2));
    let dial = Action::Dial { peer: b.clone(), addrs: vec!["/ip4/10.0.0.2/tcp/7411".into()] };
    c.handle_connected(&b, Some("/ip4/10.0.0.2/tcp/7411".into()), 0);
    drain(&mut c);
    c.handle_disconnected(&b, 1000);
    assert!(drain(&mut c).contains(&dial));
    c.handle_dial_failed(&b, false, 1001);
    assert!(!drain(&mut c).iter().any(|a| matches!(a, Action::Publish(_))), "no suspicion broadcast");
    let t = 1001 + c.cfg.membership.redial_retry_ms;
    c.handle_timeout(t - 1);
    assert!(!drain(&mut c).contains(&dial), "not yet");
    c.handle_timeout(t);
    assert!(drain(&mut c).contains(&dial), "dialled again");
    c.handle_dial_failed(&b, true, t + 1);
    assert!(c.membership().get(&b).is_some_and(|m| m.state == State::Dead && m.crashed));
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(!events.iter().any(|e| matches!(e, Event::Member { to: State::Suspect, .. })), "never suspected on the way: {events:?}");
}

#[test]
fn a_dead_member_that_later_refuses_a_dial_is_reported_crashed() {
    let mut c = core(1);
    let b = id(&key(2));
    c.handle_connected(&b, Some("/ip4/10.0.0.2/tcp/7411".into()), 0);
    c.handle_disconnected(&b, 1000);
    let mut now = 1000;
    while c.membership().get(&b).is_some_and(|m| m.state != State::Dead) {
        now += 50;
        c.handle_dial_failed(&b, false, now);
        c.handle_timeout(now);
    }
    drain(&mut c);
    std::iter::from_fn(|| c.poll_event()).for_each(drop);
    c.handle_dial_failed(&b, true, now + 1000);
    assert!(c.membership().get(&b).is_some_and(|m| m.crashed));
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(events, vec![Event::Crashed { peer: b, name: None }]);
}
