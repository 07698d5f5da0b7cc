//! Claims across real hosts: craftmesh nodes in network namespaces on one bridge, driven
//! through the real CLI. Timings are generous deadlines here; the bench measures them.
//!
//! All hosts of a rig share one kernel, so one CLOCK_BOOTTIME (the clock the leader stamps
//! into every command, `granted_at_ms` and `deadline_ms` of a holder) and one
//! CLOCK_REALTIME (what the heartbeat children of `claim run` write): times taken on
//! different hosts are compared directly.

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::run_with_timeout;
use serde_json::Value;
use std::time::{Duration, Instant};

#[path = "claims_rig/helpers.rs"]
mod helpers;
#[path = "claims_rig/scenarios.rs"]
mod scenarios;

use helpers::*;
use scenarios::*;

#[test]
fn three_servers_form_one_cluster_and_a_contended_acquire_has_exactly_one_winner() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    // All three hosts acquire the same key at once.
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| s.spawn(|| n.cli(&rig, &["claim", "acquire", "svc/one", "--ttl", "30", "--json"]))).collect();
        hs.into_iter()
            .map(|h| {
                let out = h.join().expect("thread");
                serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.describe(), logs(&all(&nodes))))
            })
            .collect()
    });
    let winners: Vec<&Value> = results.iter().filter(|r| r["granted"] == true).collect();
    assert_eq!(winners.len(), 1, "{results:#?}");
    let token = winners[0]["token"].as_u64().expect("token");
    for r in results.iter().filter(|r| r["granted"] == false) {
        assert_eq!(r["holders"][0]["token"], token, "the refusal names the winner: {r}");
    }
    let list = nodes[2].json(&rig, &["claim", "list", "--json"]).expect("list");
    let key = list["keys"].as_array().and_then(|ks| ks.iter().find(|k| k["key"] == "svc/one")).cloned().expect("svc/one listed");
    assert_eq!(key["holders"][0]["holder"]["token"], token);
}

/// The holder's node is the leader, so its death also moves the lease to a new leader's
/// clock (which gives it a full TTL again): the waiter still gets the key, and not before
/// the lease could have ended.
#[test]
fn a_sigkilled_holder_nodes_claim_goes_to_one_waiter_with_a_greater_token_after_its_lease() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let h = leader_of(&rig, &nodes, 0);
    let (w, other) = ((h + 1) % 3, (h + 2) % 3);
    let ttl_ms = 3000;
    let old = granted(&acquire(&rig, &nodes, h, "svc/killed", &["--ttl", "3"]));
    let before = holders(&list(&rig, &nodes[w]), "svc/killed");
    assert_eq!(before.len(), 1, "{before:#?}");
    let old_granted_at = before[0]["holder"]["granted_at_ms"].as_u64().expect("granted_at_ms");
    std::thread::scope(|s| {
        // The waiter on another host queues at the leader, which then dies under it.
        let waiter = s.spawn(|| acquire(&rig, &nodes, w, "svc/killed", &["--ttl", "30", "--wait", "60"]));
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        rig.kill9(nodes[h].pid()).expect("kill -9 the holder's node");
        let answer = waiter.join().expect("waiter thread");
        let token = granted(&answer);
        assert!(token > old, "the new token {token} is not greater than the old {old}");
        // A generous deadline: an election, a full TTL on the new leader's clock, slack.
        assert!(killed.elapsed() < Duration::from_secs(25), "the waiter got the key only {:?} after the kill", killed.elapsed());
        let after = holders(&list(&rig, &nodes[other]), "svc/killed");
        assert_eq!(after.len(), 1, "one holder after the hand-over: {after:#?}");
        assert_eq!(after[0]["holder"]["token"], token);
        let new_granted_at = after[0]["holder"]["granted_at_ms"].as_u64().expect("granted_at_ms");
        assert!(
            new_granted_at >= old_granted_at + ttl_ms,
            "granted at {new_granted_at} ms (boot clock), before the old lease (granted at {old_granted_at} ms, ttl {ttl_ms} ms) could have ended"
        );
    });
}

/// A follower holds the key through `claim run` and is cut off from the switch: its renewals
/// fail, so `claim run` kills its child at the local deadline. The majority's leader
/// expires the lease on its own clock and grants a waiter on another host. Every heartbeat
/// of the old child must be older than that grant, and the cut-off node grants nothing.
#[test]
fn a_cut_off_holders_child_is_dead_before_the_majority_grants_again() {
    cut_off_holder(false);
}

/// As [`a_cut_off_holders_child_is_dead_before_the_majority_grants_again`], with the
/// holder's node the leader: cut off, it still believes it leads (its writes just never
/// commit) while the majority elects another leader, whose first entry gives the lease a
/// full TTL on its clock. Once plugged back in, the old leader steps down and lists the
/// new holder.
#[test]
fn a_cut_off_leader_holders_child_is_dead_before_the_majority_grants_again() {
    cut_off_holder(true);
}

/// The holder's whole machine stops, as in a VM pause or a laptop lid closed: `claim run`,
/// its child's process group and the node (the leader) get SIGSTOP, in that order, so
/// nothing of the holder can notice. The other two elect a leader, and a waiter there gets
/// the key once the lease ends on the new leader's clock. Then `claim run` alone is thawed
/// first: its local deadline (CLOCK_BOOTTIME, which ran on) has passed, so it must kill the
/// child's group (still stopped) before anything else; then the group and the node are
/// thawed. The child never writes again, and the stale token is refused (`not_held`) for a
/// renewal and a release, sent through the thawed node that last led.
#[test]
fn a_holder_frozen_past_its_ttl_does_not_act_with_its_stale_token_when_thawed() {
    use nix::sys::signal::Signal;
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let h = leader_of(&rig, &nodes, 0);
    let w = (h + 1) % 3;
    let mut run = ClaimRun::start(&rig, &nodes[h], "svc/frozen", &["--ttl", "2"]);
    let old = run.token(Duration::from_secs(20));
    run.wait_for_beats();
    let group = run.child_group();
    rig.freeze(run.proc.pid()).expect("SIGSTOP claim run");
    signal_group(group, Signal::SIGSTOP);
    rig.freeze(nodes[h].pid()).expect("SIGSTOP the node");
    let frozen_at = realtime_ns();
    let token = granted(&acquire(&rig, &nodes, w, "svc/frozen", &["--ttl", "30", "--wait", "60"]));
    assert!(token > old, "the new token {token} is not greater than the old {old}");
    rig.thaw(run.proc.pid()).expect("SIGCONT claim run");
    let status = run.proc.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| panic!("claim run still runs after its thaw\n{}", run.proc.describe()));
    signal_group(group, Signal::SIGCONT);
    rig.thaw(nodes[h].pid()).expect("SIGCONT the node");
    assert_eq!(status.code(), Some(137), "the child was killed\n{}", run.proc.describe());
    assert!(run.proc.log_text().contains("local deadline passed"), "{}", run.proc.describe());
    std::thread::sleep(Duration::from_millis(200));
    let late: Vec<i128> = run.beats().into_iter().filter(|b| *b >= frozen_at).collect();
    assert!(late.is_empty(), "the child wrote {} heartbeat(s) after the freeze\n{}", late.len(), run.proc.describe());
    let old_s = old.to_string();
    for op in ["renew", "release"] {
        let out = cli(&rig, &nodes[h], &["claim", op, "svc/frozen", "--fencing-token", &old_s, "--json"], Duration::from_secs(30));
        let v = parse(&out);
        assert_eq!(v["reason"], "not_held", "a {op} with the stale token {old}\n{}\n{}", out.describe(), nodes[h].log());
        assert_eq!(out.code(), Some(1), "{}", out.describe());
    }
    let after = holders(&list(&rig, &nodes[h]), "svc/frozen");
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(after[0]["holder"]["token"], token);
}

/// Host 0 is cut off from the switch before any node starts, so it forms a cluster of its
/// own (one voter) while hosts 1 and 2 form another (one voter and one learner: two servers
/// get one voter). Each side grants `svc/merge` to a `claim run`. When host 0 is plugged
/// back in, the merge rule (`winner`: more voters, then the lower id; here a tie on one
/// voter) makes the losing side's nodes drop their Raft state and join the winner. The
/// loser's `claim run` finds its claim unknown there and the key held, so it stops; the
/// winner's keeps running, and every node lists exactly its holder. A key only the losing
/// side held is taken again in the winner by its `claim run`, which keeps running.
#[test]
fn two_separately_formed_clusters_become_one_with_one_holder_per_key() {
    let Some(rig) = rig(3) else { return };
    rig.cut_off(0).expect("cut off host 0");
    let nodes = servers(&rig, 3);
    let a = one_cluster(&rig, &[&nodes[0]], 1);
    let b = one_cluster(&rig, &[&nodes[1], &nodes[2]], 1);
    assert_ne!(a, b, "two clusters formed");
    // Tokens are log indices, so the two clusters' grants of the key can have the same
    // token. Make them equal (the worst case): pad the shorter log with grants of other
    // keys, then acquire on both sides at once.
    let last_log = |side: &[usize]| side.iter().filter_map(|i| nodes[*i].json(&rig, &["cluster", "--json"])?["last_log"].as_u64()).max().unwrap_or(0);
    wait_until("cluster b to settle (a voter and a learner)", FORM, || {
        let v = nodes[1].json(&rig, &["cluster", "--json"])?;
        (v["learners"].as_array()?.len() == 1).then_some(())
    });
    for pad in 0.. {
        let (la, lb) = (last_log(&[0]), last_log(&[1, 2]));
        if la == lb {
            break;
        }
        assert!(pad < 20, "the logs do not line up: {la} and {lb}");
        let shorter = if la < lb { 0 } else { 1 };
        granted(&acquire(&rig, &nodes, shorter, &format!("pad/{pad}"), &["--ttl", "600"]));
    }
    let mut runs = [ClaimRun::start(&rig, &nodes[0], "svc/merge", &["--ttl", "5"]), ClaimRun::start(&rig, &nodes[1], "svc/merge", &["--ttl", "5"])];
    let tokens = [runs[0].token(Duration::from_secs(20)), runs[1].token(Duration::from_secs(20))];
    eprintln!("cluster {a} granted token {}, cluster {b} token {}", tokens[0], tokens[1]);
    // A key only the side about to lose holds: its claim run takes it again in the winner.
    let loser_host = if a.clone().min(b.clone()) == a { 1 } else { 0 };
    let mut loner = ClaimRun::start(&rig, &nodes[loser_host], "svc/loner", &["--ttl", "5"]);
    loner.token(Duration::from_secs(20));
    rig.reconnect(0).expect("plug host 0 back in");
    let c = same_cluster(&rig, &all(&nodes), Duration::from_secs(30));
    assert_eq!(c, a.clone().min(b.clone()), "one voter each: the lower id wins");
    let (win, lose) = if c == a { (0, 1) } else { (1, 0) };
    let status = runs[lose]
        .proc
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the losing side's claim run still runs\n{}", runs[lose].proc.describe()));
    assert_eq!(status.code(), Some(137), "its child was killed\n{}", runs[lose].proc.describe());
    assert!(runs[win].proc.try_wait().is_none(), "the winner's claim run stopped\n{}", runs[win].proc.describe());
    let needle = format!("svc/loner re-acquired in cluster {c} after a merge, token ");
    assert!(loner.proc.wait_for_log(&needle, Duration::from_secs(30)), "the loner's claim run did not take its key again\n{}", loner.proc.describe());
    let log = loner.proc.log_text();
    let loner_token: u64 = log[log.find(&needle).map(|i| i + needle.len()).unwrap_or(0)..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|t| t.parse().ok())
        .expect("the new token in the log");
    one_cluster(&rig, &all(&nodes), 3);
    for n in &nodes {
        let hs = holders(&list(&rig, n), "svc/merge");
        assert_eq!(hs.len(), 1, "node {} lists {hs:#?}", n.index);
        assert_eq!(hs[0]["holder"]["token"], tokens[win], "node {} lists {hs:#?}\n{}", n.index, runs[win].proc.describe());
        let hs = holders(&list(&rig, n), "svc/loner");
        assert_eq!(hs.len(), 1, "node {} lists {hs:#?}", n.index);
        assert_eq!(hs[0]["holder"]["token"], loner_token, "node {} lists {hs:#?}\n{}", n.index, loner.proc.describe());
    }
    assert!(loner.proc.try_wait().is_none(), "the loner's claim run stopped\n{}", loner.proc.describe());
    assert!(runs[win].proc.try_wait().is_none(), "the winner's claim run stopped\n{}", runs[win].proc.describe());
}

/// 50 acquires of a key with limit 3 at once from three hosts: exactly three grants, and
/// every refusal names three holders. Then 50 waiting acquires with short leases: each is
/// granted in turn as leases end, and no grant ever sees more than three holders (an
/// answer lists the key's holders right after its grant), nor does any `claim list` taken
/// meanwhile.
#[test]
fn a_counted_key_with_limit_three_never_has_four_holders_under_fifty_concurrent_acquires() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let answers = acquire_many(&rig, &nodes, "pool/three", 50, &["--limit", "3", "--ttl", "60"]);
    let grants: Vec<&Value> = answers.iter().filter(|a| a["granted"] == true).collect();
    assert_eq!(grants.len(), 3, "{answers:#?}");
    let mut tokens: Vec<u64> = grants.iter().map(|g| granted(g)).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "three distinct tokens: {tokens:?}");
    for a in answers.iter().filter(|a| a["granted"] == false) {
        assert_eq!(a["reason"], "held", "{a:#}");
        assert_eq!(a["holders"].as_array().map(Vec::len), Some(3), "{a:#}");
    }
    let listed: Vec<u64> = holders(&list(&rig, &nodes[1]), "pool/three").iter().filter_map(|h| h["holder"]["token"].as_u64()).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, tokens, "claim list shows the three grants");
    for g in &grants {
        let t = g["token"].as_u64().unwrap_or(0).to_string();
        let out = cli(&rig, &nodes[0], &["claim", "release", "pool/three", "--fencing-token", &t, "--json"], Duration::from_secs(30));
        assert_eq!(parse(&out)["released"], true, "{}", out.describe());
    }

    let stop = std::sync::atomic::AtomicBool::new(false);
    let (answers, most_listed) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut most = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(holders(&list(&rig, &nodes[2]), "pool/three").len());
                std::thread::sleep(Duration::from_millis(100));
            }
            most
        });
        let answers = acquire_many(&rig, &nodes, "pool/three", 50, &["--limit", "3", "--ttl", "0.5", "--wait", "60"]);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        (answers, watcher.join().expect("watcher"))
    });
    let mut tokens: Vec<u64> = answers.iter().map(granted).collect();
    for a in &answers {
        let n = a["holders"].as_array().map(Vec::len).unwrap_or(0);
        assert!((1..=3).contains(&n), "a grant saw {n} holders: {a:#}");
    }
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), 50, "fifty distinct tokens");
    assert!(most_listed <= 3, "claim list showed {most_listed} holders");
}

/// Two workers on every host acquire keys of their own, one after another, while the leader
/// gets SIGKILL.
/// Each acquire that answered `granted` must be in `claim list` afterwards with its token
/// (the answer comes only after the grant was committed by a majority, which survives the
/// leader). Acquires through the killed node's host fail from then on, and acquires in
/// flight may fail during the election: neither is counted. Long leases, so that the new
/// leader's full TTL cannot end any of them during the test.
#[test]
fn a_leader_killed_under_load_loses_no_granted_claim() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let l = leader_of(&rig, &nodes, 0);
    let survivor = (l + 1) % 3;
    let stop = AtomicBool::new(false);
    let killed_at: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let granted_keys: Vec<(String, u64, Instant)> = std::thread::scope(|s| {
        // Two workers per host.
        let workers: Vec<_> = (0..6)
            .map(|i| {
                let (rig, nodes, stop) = (&rig, &nodes, &stop);
                s.spawn(move || {
                    let mut got = Vec::new();
                    for j in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let key = format!("load/{i}/{j}");
                        let out = cli(rig, &nodes[i % 3], &["claim", "acquire", &key, "--ttl", "600", "--json"], Duration::from_secs(30));
                        match serde_json::from_str::<Value>(&out.stdout) {
                            Ok(v) if v["granted"] == true => got.push((key, granted(&v), Instant::now())),
                            Ok(v) => panic!("a fresh key was refused: {v:#}"),
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                    got
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        rig.kill9(nodes[l].pid()).expect("kill -9 the leader");
        *killed_at.lock().expect("lock") = Some(Instant::now());
        wait_until("a new leader", FORM, || {
            let v = nodes[survivor].json(&rig, &["cluster", "--json"])?;
            let peer = v["leader"]["peer"].as_str()?;
            (peer != nodes[l].peer_id).then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    let killed_at = killed_at.lock().expect("lock").expect("killed");
    let after = granted_keys.iter().filter(|(_, _, at)| *at > killed_at).count();
    assert!(after > 0, "no acquire was granted after the leader died: {granted_keys:?}");
    let listed = list(&rig, &nodes[survivor]);
    let mut lost = Vec::new();
    for (key, token, _) in &granted_keys {
        let hs = holders(&listed, key);
        if hs.len() != 1 || hs[0]["holder"]["token"] != *token {
            lost.push(format!("{key} (token {token}): listed {hs:?}"));
        }
    }
    assert!(lost.is_empty(), "granted claims missing after the leader's death:\n{}\n{}", lost.join("\n"), logs(&all(&nodes)));
    eprintln!("{} grants ({after} after the kill), all listed", granted_keys.len());
}

/// Claims granted through every host (a counted key with two holders among them) survive
/// a restart of all nodes (SIGTERM, then `up` on the same data dirs): same cluster, same
/// keys, tokens, holder nodes and sessions. Leases are long: the new leader gives each a
/// full TTL again. A grant after the restart has a token above every earlier one.
#[test]
fn claims_and_tokens_survive_a_restart_of_every_node() {
    restart_every_node(false);
}

/// As [`claims_and_tokens_survive_a_restart_of_every_node`], with SIGKILL instead of
/// SIGTERM, sent to all three nodes at once while every host acquires keys one after
/// another: each acquire that answered `granted` was on a majority's disks, so it is
/// listed after the restart with its token.
#[test]
fn claims_and_tokens_survive_a_sigkill_of_every_node_under_load() {
    restart_every_node(true);
}

/// Two servers and a node with `--role client` (never in Raft): the client follows the
/// servers' cluster, and acquires, lists and releases through them like any node; its
/// grants name it as the holder node.
#[test]
fn a_client_role_node_acquires_through_the_servers() {
    let Some(rig) = rig(3) else { return };
    let mut nodes = servers(&rig, 2);
    nodes.push(MeshNode::start(&rig, 2, EMPTY_CONFIG, &["--role", "client"]));
    let cluster = one_cluster(&rig, &[&nodes[0], &nodes[1]], 1);
    let view = wait_until("the client to follow the cluster", FORM, || {
        let v = nodes[2].json(&rig, &["cluster", "--json"])?;
        (v["cluster"] == cluster.as_str() && v["leader"].is_object()).then_some(v)
    });
    assert_eq!(view["role"], "client", "{view:#}");
    assert_eq!(view["state"], "client", "{view:#}");
    let answer = acquire(&rig, &nodes, 2, "svc/client", &["--ttl", "30"]);
    let token = granted(&answer);
    assert_eq!(answer["cluster"], cluster.as_str());
    assert_eq!(answer["holder"]["node"], nodes[2].peer_id.as_str(), "the client is the holder node: {answer:#}");
    let refused = acquire(&rig, &nodes, 0, "svc/client", &["--ttl", "30"]);
    assert_eq!(refused["granted"], false, "{refused:#}");
    let hs = holders(&list(&rig, &nodes[2]), "svc/client");
    assert_eq!(hs.len(), 1, "{hs:#?}");
    assert_eq!(hs[0]["holder"]["token"], token);
    let t = token.to_string();
    let out = cli(&rig, &nodes[2], &["claim", "release", "svc/client", "--fencing-token", &t, "--json"], Duration::from_secs(30));
    assert_eq!(parse(&out)["released"], true, "{}", out.describe());
    assert!(holders(&list(&rig, &nodes[0]), "svc/client").is_empty());
}

/// `claim run` exits with its command's exit code and gives the claim up when the command
/// ends: the key is free at once, not after its lease.
#[test]
fn claim_run_exits_with_its_commands_exit_code_and_releases_the_claim() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let n = &nodes[1];
    let api = n.api();
    let script = "test \"$CRAFTMESH_FENCING_TOKEN\" -gt 0 && test \"$(head -n1 \"$CRAFTMESH_FENCING_TOKEN_FILE\")\" = \"$CRAFTMESH_FENCING_TOKEN\" && test \"$(tail -n1 \"$CRAFTMESH_FENCING_TOKEN_FILE\")\" = \"$CRAFTMESH_CLAIM_CLUSTER\" && exit 7";
    let out = run_with_timeout(
        &mut rig.host(1).wrap(&n.cfg.command(&["claim", "run", "svc/exit", "--ttl", "60", "--api", &api, "--", "sh", "-c", script])),
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), Some(7), "{}", out.describe());
    assert!(holders(&list(&rig, &nodes[2]), "svc/exit").is_empty(), "the claim is released when the command ends");
    granted(&acquire(&rig, &nodes, 2, "svc/exit", &["--ttl", "60"]));
}

/// `claim run` that waited longer than its TTL for the claim still runs its command: the
/// lease is counted from a renewal sent after the grant, not from the waiting request.
#[test]
fn a_claim_run_that_waited_longer_than_its_ttl_runs_its_command_to_the_end() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let first = granted(&acquire(&rig, &nodes, 0, "svc/late", &["--ttl", "60"]));
    let n = &nodes[1];
    let api = n.api();
    let mut run = rig
        .host(1)
        .spawn_command(&n.cfg.command(&["claim", "run", "svc/late", "--ttl", "2", "--wait", "60", "--api", &api, "--", "sh", "-c", "sleep 3; exit 5"]))
        .expect("spawn claim run");
    assert!(run.wait_for_log("waiting up to", Duration::from_secs(20)), "{}", run.describe());
    // Held by the first grant for longer than the waiter's TTL.
    std::thread::sleep(Duration::from_secs(4));
    let out = nodes[0].cli(&rig, &["claim", "release", "svc/late", "--fencing-token", &first.to_string()]);
    assert!(out.success(), "{}", out.describe());
    let status = run.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| panic!("claim run did not end\n{}", run.describe()));
    assert_eq!(status.code(), Some(5), "the command ran to its end\n{}", run.describe());
}

/// A waiting acquire on another host is granted right after the holder's release, long
/// before the released lease would have ended.
#[test]
fn a_waiting_acquire_is_granted_right_after_a_release() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let old = granted(&acquire(&rig, &nodes, 0, "svc/handoff", &["--ttl", "120"]));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| acquire(&rig, &nodes, 2, "svc/handoff", &["--ttl", "30", "--wait", "100"]));
        std::thread::sleep(Duration::from_secs(1));
        assert!(!waiter.is_finished(), "the waiter got an answer while the key was held");
        let t = old.to_string();
        let out = cli(&rig, &nodes[1], &["claim", "release", "svc/handoff", "--fencing-token", &t, "--json"], Duration::from_secs(30));
        assert_eq!(parse(&out)["released"], true, "{}", out.describe());
        let released = Instant::now();
        let token = granted(&waiter.join().expect("waiter"));
        assert!(token > old, "the new token {token} is not greater than the old {old}");
        assert!(released.elapsed() < Duration::from_secs(10), "the waiter got the key {:?} after the release", released.elapsed());
    });
}

/// Early hand-off: `claim run` binds its claim to its node, so when the node is SIGKILLed
/// (proven crashed: its connections reset and a redial is refused) the leader hands the key
/// on without waiting for the lease (60 s here), and `claim run` kills its child as soon as
/// its node stops answering. The child must be dead before the new grant.
#[test]
fn a_bound_claim_of_a_sigkilled_node_is_handed_on_early_and_only_after_its_child_died() {
    let elapsed = sigkilled_bound_holder(false, 60);
    assert!(elapsed < Duration::from_secs(30), "no early hand-off: the key came {elapsed:?} after the kill");
}

/// The same when the holder's node is the Raft leader: the new leader, elected without it,
/// hands the key on at once instead of giving the lease a full TTL on its own clock (20 s
/// here: waiting for it would take the election plus 20 s).
#[test]
fn a_bound_claim_of_a_sigkilled_leader_is_handed_on_early_by_the_next_leader() {
    let elapsed = sigkilled_bound_holder(true, 20);
    assert!(elapsed < Duration::from_secs(10), "no early hand-off: the key came {elapsed:?} after the kill of the leader");
}

/// A `claim run` on a follower keeps its claim, with the same token, while the leader is
/// SIGKILLed and another is elected: its renewals fail for a moment and are retried, and
/// the new leader gives the lease a full TTL on its clock. Its child never stops.
#[test]
fn a_claim_run_on_a_follower_keeps_its_claim_through_the_leaders_death() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let l = leader_of(&rig, &nodes, 0);
    let h = (l + 1) % 3;
    let mut run = ClaimRun::start(&rig, &nodes[h], "svc/steady", &["--ttl", "6"]);
    let token = run.token(Duration::from_secs(20));
    run.wait_for_beats();
    rig.kill9(nodes[l].pid()).expect("kill -9 the leader");
    wait_until("a new leader", FORM, || {
        let v = nodes[h].json(&rig, &["cluster", "--json"])?;
        (v["leader"]["peer"].as_str()? != nodes[l].peer_id).then_some(())
    });
    // Two TTLs on: renewals went through the new leader.
    std::thread::sleep(Duration::from_secs(12));
    assert!(run.proc.try_wait().is_none(), "claim run stopped\n{}", run.proc.describe());
    let hs = holders(&list(&rig, &nodes[h]), "svc/steady");
    assert_eq!(hs.len(), 1, "{hs:#?}");
    assert_eq!(hs[0]["holder"]["token"], token, "the same grant");
    let recent = realtime_ns() - 1_000_000_000;
    assert!(run.beats().last().is_some_and(|b| *b > recent), "the child still runs\n{}", run.proc.describe());
}
