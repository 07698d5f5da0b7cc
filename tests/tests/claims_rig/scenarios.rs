//! Scenarios run by two tests each, one per variant (the tests say what each checks).

use crate::helpers::*;
use craftmesh_tests::meshnode::{MeshNode, wait_until};
use serde_json::Value;
use std::time::{Duration, Instant};

pub(crate) fn cut_off_holder(holder_leads: bool) {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let l = leader_of(&rig, &nodes, 0);
    let h = if holder_leads { l } else { (l + 1) % 3 };
    let w = if holder_leads { (l + 1) % 3 } else { (l + 2) % 3 };
    let mut run = ClaimRun::start(&rig, &nodes[h], "svc/cut", &["--ttl", "2"]);
    let old = run.token(Duration::from_secs(20));
    run.wait_for_beats();
    rig.cut_off(h).expect("cut off the holder");
    let cut = Instant::now();
    let answer = acquire(&rig, &nodes, w, "svc/cut", &["--ttl", "30", "--wait", "60"]);
    let token = granted(&answer);
    assert!(token > old, "the new token {token} is not greater than the old {old}");
    assert!(cut.elapsed() < Duration::from_secs(20), "the majority granted only {:?} after the cut", cut.elapsed());
    let after = holders(&list(&rig, &nodes[w]), "svc/cut");
    assert_eq!(after.len(), 1, "{after:#?}");
    let grant_ns = boot_ms_to_realtime_ns(after[0]["holder"]["granted_at_ms"].as_u64().expect("granted_at_ms"));
    // The old holder stopped by itself: `claim run` killed its child and exits with 128+9.
    let status = run.proc.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| panic!("claim run still runs after losing\n{}", run.proc.describe()));
    assert_eq!(status.code(), Some(137), "{}", run.proc.describe());
    assert!(run.proc.log_text().contains("lost"), "{}", run.proc.describe());
    let last = *run.beats().last().expect("heartbeats");
    assert!(last < grant_ns, "the old child wrote a heartbeat {:.1} ms after the new grant\n{}", (last - grant_ns) as f64 / 1e6, run.proc.describe());
    eprintln!("old child's last heartbeat {:.0} ms before the new grant", (grant_ns - last) as f64 / 1e6);
    // The minority grants nothing (its replica may still show the old lease, or none).
    let out = cli(&rig, &nodes[h], &["claim", "acquire", "svc/cut", "--ttl", "30", "--json"], Duration::from_secs(60));
    assert!(!out.stdout.contains("\"granted\": true"), "the cut-off node granted the key\n{}", out.describe());
    assert!(out.stderr.contains("claims unavailable"), "{}", out.describe());
    rig.reconnect(h).expect("plug the holder's host back in");
    wait_until("the cut-off node to list the new holder", FORM, || {
        let l = nodes[h].json(&rig, &["claim", "list", "--json"])?;
        let hs = holders(&l, "svc/cut");
        (hs.len() == 1 && hs[0]["holder"]["token"] == token).then_some(())
    });
}

pub(crate) fn restart_every_node(kill: bool) {
    let Some(rig) = rig(3) else { return };
    let mut nodes = servers(&rig, 3);
    let cluster = one_cluster(&rig, &all(&nodes), 3);
    for (i, key) in ["keep/a", "keep/b", "keep/c"].iter().enumerate() {
        granted(&acquire(&rig, &nodes, i, key, &["--ttl", "600"]));
    }
    for i in [0, 2] {
        granted(&acquire(&rig, &nodes, i, "keep/pair", &["--ttl", "600", "--limit", "2"]));
    }
    let before = claims_of(&list(&rig, &nodes[0]));
    assert_eq!(before.len(), 5, "{before:#?}");
    let mut under_load: Vec<(String, u64)> = Vec::new();
    if kill {
        let stop = std::sync::atomic::AtomicBool::new(false);
        under_load = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|i| {
                    let (rig, nodes, stop) = (&rig, &nodes, &stop);
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for j in 0.. {
                            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                                break;
                            }
                            let key = format!("load/{i}/{j}");
                            let out = cli(rig, &nodes[i], &["claim", "acquire", &key, "--ttl", "600", "--json"], Duration::from_secs(30));
                            match serde_json::from_str::<Value>(&out.stdout) {
                                Ok(v) if v["granted"] == true => got.push((key, granted(&v))),
                                _ => break, // the nodes are gone
                            }
                        }
                        got
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(2));
            let pids: Vec<u32> = nodes.iter().map(MeshNode::pid).collect();
            for p in pids {
                rig.kill9(p).expect("kill -9");
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
        });
        assert!(!under_load.is_empty(), "no acquire was granted before the kill");
        for n in nodes.iter_mut() {
            n.proc.as_mut().and_then(|p| p.wait_timeout(Duration::from_secs(10))).expect("killed");
        }
    } else {
        for n in nodes.iter_mut() {
            let code = n.terminate(&rig);
            assert_eq!(code, Some(0), "node {} did not stop cleanly on SIGTERM\n{}", n.index, n.log());
        }
    }
    for n in nodes.iter_mut() {
        n.restart(&rig);
    }
    assert_eq!(one_cluster(&rig, &all(&nodes), 3), cluster, "the same cluster after the restart");
    let mut most = 0;
    for n in &nodes {
        let after = claims_of(&list(&rig, n));
        // Acquires in flight at the kill may have been granted without an answer: listed
        // too, and not counted.
        let kept: Vec<_> = after.iter().filter(|c| !c.0.starts_with("load/")).cloned().collect();
        assert_eq!(kept, before, "node {} after the restart", n.index);
        for (key, token) in &under_load {
            assert!(after.iter().any(|c| c.0 == *key && c.1 == *token), "node {} lost {key} (token {token}) granted before the kill", n.index);
        }
        most = most.max(after.iter().map(|c| c.1).max().unwrap_or(0));
    }
    let token = granted(&acquire(&rig, &nodes, 1, "keep/new", &["--ttl", "600"]));
    assert!(token > most, "the new token {token} is not above the earlier ones (up to {most})");
}

/// SIGKILLs the node of a `claim run` holding a bound claim (the leader's, or a follower's)
/// while another node waits for the key; returns how long after the kill the waiter got it.
pub(crate) fn sigkilled_bound_holder(holder_leads: bool, ttl_s: u64) -> Duration {
    let Some(rig) = rig(3) else { return Duration::ZERO };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &all(&nodes), 3);
    let l = leader_of(&rig, &nodes, 0);
    let (h, w) = if holder_leads { (l, (l + 1) % 3) } else { ((l + 1) % 3, (l + 2) % 3) };
    let ttl = ttl_s.to_string();
    let mut run = ClaimRun::start(&rig, &nodes[h], "svc/bound", &["--ttl", &ttl]);
    let old = run.token(Duration::from_secs(20));
    run.wait_for_beats();
    let elapsed = std::thread::scope(|s| {
        let waiter = s.spawn(|| acquire(&rig, &nodes, w, "svc/bound", &["--ttl", "30", "--wait", "80"]));
        std::thread::sleep(Duration::from_millis(500));
        let killed = Instant::now();
        rig.kill9(nodes[h].pid()).expect("kill -9 the holder's node");
        let token = granted(&waiter.join().expect("waiter"));
        assert!(token > old, "the new token {token} is not greater than the old {old}");
        killed.elapsed()
    });
    let status = run.proc.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| panic!("claim run still runs\n{}", run.proc.describe()));
    assert_eq!(status.code(), Some(137), "{}", run.proc.describe());
    let after = holders(&list(&rig, &nodes[w]), "svc/bound");
    assert_eq!(after.len(), 1, "{after:#?}");
    let grant_ns = boot_ms_to_realtime_ns(after[0]["holder"]["granted_at_ms"].as_u64().expect("granted_at_ms"));
    let last = *run.beats().last().expect("heartbeats");
    assert!(last < grant_ns, "the old child wrote a heartbeat {:.1} ms after the new grant\n{}", (last - grant_ns) as f64 / 1e6, run.proc.describe());
    eprintln!(
        "granted {elapsed:?} after the kill (holder leads: {holder_leads}); old child's last heartbeat {:.0} ms before the grant",
        (grant_ns - last) as f64 / 1e6
    );
    if elapsed > Duration::from_secs(3) {
        let live: Vec<&MeshNode> = nodes.iter().enumerate().filter(|(i, _)| *i != h).map(|(_, n)| n).collect();
        eprintln!("{}", logs(&live));
    }
    elapsed
}
