//! `bench claims`: the claims figures on a rig of network namespaces, side by side with
//! etcd 3.4's lock API (the anchor in `../shared/anchors/etcd-lock/`, run from here in the
//! same session), and `bench claims-client`, the API client the rig runs inside a host.
//!
//! Every craftmesh figure is taken the way a program on that machine uses claims: through
//! the node's local API on one kept-alive, authenticated connection (`apiclient::Session`).
//! The client runs inside the host's namespace and prints its samples as JSON.

use super::{Row, percentile, print_table, rss_kb, static_release_bin};
use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn sarg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

// ---------------------------------------------------------------------------------------
// The client (runs inside a host namespace)
// ---------------------------------------------------------------------------------------

/// `bench claims-client --api ADDR --data-dir DIR --mode uncontended|contended|wait --key K
/// [--iters N] [--warmup N] [--ttl-ms T] [--start-at UNIX_MS]`: prints one JSON line.
pub fn client(args: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let out = rt.block_on(client_main(args));
    println!("{out}");
}

async fn client_main(args: &[String]) -> Value {
    let api = sarg(args, "--api").unwrap_or_else(|| "127.0.0.1:7410".into());
    let dir = PathBuf::from(sarg(args, "--data-dir").expect("--data-dir"));
    let mode = sarg(args, "--mode").unwrap_or_else(|| "uncontended".into());
    let key = sarg(args, "--key").unwrap_or_else(|| "bench/key".into());
    let iters: usize = arg(args, "--iters", 500);
    let warmup: usize = arg(args, "--warmup", 20);
    let ttl_ms: u64 = arg(args, "--ttl-ms", 3000);
    let start_at: f64 = arg(args, "--start-at", 0.0);
    let c = craftmesh::apiclient::Client::new(&api, dir, Duration::from_secs(30));
    let mut s = match c.session().await {
        Ok(s) => s,
        Err(e) => return serde_json::json!({"error": e.to_string()}),
    };
    let session = craftmesh::api_claims::new_session();
    let post = hyper::Method::POST;
    if start_at > 0.0 {
        let wait = (start_at - now_ms()).max(0.0);
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    if mode == "api" {
        // The API alone (no Raft): what a request costs before it reaches the claims service.
        let mut v = Vec::new();
        for _ in 0..iters {
            let t0 = Instant::now();
            if let Err(e) = s.call::<Value>(hyper::Method::GET, "/v1/cluster", None).await {
                return serde_json::json!({"error": e.to_string()});
            }
            v.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        return serde_json::json!({"acquire_ms": v, "cycle_ms": [], "granted_at": []});
    }
    let mut acquire_ms = Vec::new();
    let mut cycle_ms = Vec::new();
    let mut granted_at = Vec::new();
    let t_all = Instant::now();
    let n = if mode == "uncontended" { iters + warmup } else { iters };
    for i in 0..n {
        let wait_ms = if mode == "uncontended" { 0 } else { 60_000 };
        let body = serde_json::json!({"op": "acquire", "key": key, "ttl_ms": ttl_ms, "wait_ms": wait_ms, "session": session});
        let t0 = Instant::now();
        let r: Value = match s.call(post.clone(), "/v1/claims", Some(&body)).await {
            Ok(v) => v,
            Err(e) => return serde_json::json!({"error": format!("acquire {i}: {e}")}),
        };
        let acq = t0.elapsed().as_secs_f64() * 1000.0;
        if r["granted"] != true {
            return serde_json::json!({"error": format!("acquire {i} refused: {r}")});
        }
        granted_at.push(now_ms());
        let rel = serde_json::json!({"op": "release", "key": key, "token": r["token"]});
        if let Err(e) = s.call::<Value>(post.clone(), "/v1/claims", Some(&rel)).await {
            return serde_json::json!({"error": format!("release {i}: {e}")});
        }
        if mode != "uncontended" || i >= warmup {
            acquire_ms.push(acq);
            cycle_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    serde_json::json!({"acquire_ms": acquire_ms, "cycle_ms": cycle_ms, "granted_at": granted_at, "wall_ms": t_all.elapsed().as_secs_f64() * 1000.0})
}

// ---------------------------------------------------------------------------------------
// The rig
// ---------------------------------------------------------------------------------------

fn row(figure: &str, v: &mut [f64], target: &str, ok: bool, unit: &str) -> Row {
    v.sort_by(f64::total_cmp);
    Row {
        figure: figure.to_string(),
        n: v.len(),
        median: format!("{:.2} {unit}", percentile(v, 50.0)),
        p99: format!("{:.2} {unit}", percentile(v, 99.0)),
        target: target.to_string(),
        verdict: if !v.is_empty() && ok { "met" } else { "MISSED" },
    }
}

/// Runs the client in host `i` against node `n` and returns its JSON.
fn run_client(rig: &Rig, n: &MeshNode, extra: &[&str]) -> Value {
    let exe = std::env::current_exe().expect("current exe");
    let data = n.cfg.data_dir();
    let mut cmd = rig.host(n.index).cmd(&exe);
    cmd.args(["claims-client", "--api", &n.api(), "--data-dir"]).arg(&data).args(extra);
    let out = craftmesh_tests::run_with_timeout(&mut cmd, Duration::from_secs(600));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("claims-client: {e}\n{}", out.describe()));
    assert!(v.get("error").is_none(), "claims-client: {v}");
    v
}

fn floats(v: &Value, k: &str) -> Vec<f64> {
    v[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

fn leader_index(rig: &Rig, nodes: &[MeshNode]) -> usize {
    wait_until("a leader", Duration::from_secs(60), || {
        let v = nodes[0].json(rig, &["cluster", "--json"])?;
        let peer = v["leader"]["peer"].as_str()?.to_string();
        let voters = v["voters"].as_array()?.len();
        (voters == 3).then_some(())?;
        nodes.iter().position(|n| n.peer_id == peer)
    })
}

/// The etcd anchor's summary, parsed: (leader p50, leader p99, follower p50, follower p99,
/// acquisitions/s, wait p50, kill->acquire median, idle RSS MB).
#[derive(Debug, Default)]
struct Etcd {
    leader: (f64, f64),
    follower: (f64, f64),
    per_s: f64,
    wait_p50: f64,
    failover_ms: f64,
    rss_mb: f64,
}

fn num(s: &str) -> f64 {
    s.trim().trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(f64::NAN)
}

fn run_etcd(ttl_s: u64) -> Option<Etcd> {
    let script = craftmesh_tests::workspace_root().join("../shared/anchors/etcd-lock/run.sh");
    if !script.exists() {
        eprintln!("no etcd anchor at {}: etcd column left empty", script.display());
        return None;
    }
    // One retry: the anchor has been seen to fail once and pass when run again at once.
    let mut text = None;
    for attempt in 1..=2 {
        eprintln!("running the etcd anchor ({}; about a minute; attempt {attempt} of 2)…", script.display());
        let out = std::process::Command::new("bash").arg(&script).env("TTL", ttl_s.to_string()).output().ok()?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            text = Some(stdout);
            break;
        }
        eprintln!("etcd anchor failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = text?;
    let mut e = Etcd::default();
    let (mut fl, mut nf) = ((0.0, 0.0), 0.0);
    // Section (a) holds the per-endpoint acquire figures; (b) repeats the endpoint names.
    let mut section = ' ';
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let Some(c) = line.strip_prefix('(').and_then(|r| r.chars().next()) {
            section = c;
        }
        if section == 'a' && w.len() >= 4 && (w[1] == "leader" || w[1] == "follower") && w[0].contains(':') {
            let (p50, p99) = (num(w[2]), num(w[3]));
            if w[1] == "leader" {
                e.leader = (p50, p99);
            } else {
                fl = (fl.0 + p50, fl.1 + p99);
                nf += 1.0;
            }
        } else if line.contains("acquisitions/s") {
            e.per_s = line.split(':').nth(1).and_then(|r| r.split_whitespace().next()).map(num).unwrap_or(f64::NAN);
        } else if w.first() == Some(&"all") && w.len() >= 4 {
            e.wait_p50 = num(w[1]);
        } else if line.contains("kill->acquire median") {
            e.failover_ms = line.split("median").nth(1).and_then(|r| r.split_whitespace().next()).map(num).unwrap_or(f64::NAN);
        } else if line.starts_with("idle RSS") {
            let kbs: Vec<f64> = line.split("ea").skip(1).filter_map(|p| p.split_whitespace().nth(1)).map(num).collect();
            if !kbs.is_empty() {
                e.rss_mb = kbs.iter().sum::<f64>() / kbs.len() as f64 / 1024.0;
            }
        }
    }
    if nf > 0.0 {
        e.follower = (fl.0 / nf, fl.1 / nf);
    }
    Some(e)
}

/// `bench claims [--iters N] [--contended N] [--reps N] [--ttl SECS] [--rss-wait SECS] [--no-etcd]`.
pub fn run(args: &[String]) {
    assert!(netns_available(), "bench claims needs root and network namespaces");
    let iters: usize = arg(args, "--iters", 500);
    let citers: usize = arg(args, "--contended", 100);
    let reps: usize = arg(args, "--reps", 5);
    let ttl_s: u64 = arg(args, "--ttl", 3);
    let rss_wait: u64 = arg(args, "--rss-wait", 30);
    let etcd = if args.iter().any(|a| a == "--no-etcd") { None } else { run_etcd(ttl_s) };
    let bin = static_release_bin();
    let rig = Rig::new(4).expect("rig");
    let start = |i: usize, extra: &str| {
        let mut n = MeshNode::start_exact(&rig, i, EMPTY_CONFIG, &["--mesh-key", craftmesh_tests::meshnode::test_key(), extra]);
        // Started with the test binary to set up its data dir; run the static one instead.
        n.terminate(&rig);
        n.bin = Some(bin.clone());
        n.restart(&rig);
        n
    };
    let mut nodes: Vec<MeshNode> = (0..3).map(|i| start(i, "--role=server")).collect();
    // The fourth host runs the same binary without claims: the reference for the RSS figure.
    let plain = start(3, "--no-claims");
    let li = leader_index(&rig, &nodes);
    let fi = (li + 1) % 3;
    let mut rows = Vec::new();

    // 0. Idle RSS per node with claims on (static build), on fresh nodes.
    eprintln!("waiting {rss_wait} s for the nodes to idle…");
    std::thread::sleep(Duration::from_secs(rss_wait));
    let mut rss: Vec<f64> = nodes.iter().filter_map(|n| rss_kb(n.pid(), "VmRSS:")).map(|k| k as f64 / 1024.0).collect();
    let plain_rss = rss_kb(plain.pid(), "VmRSS:").map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN);
    let etcd_rss = etcd.as_ref().map(|e| format!("; etcd member {:.1} MB", e.rss_mb)).unwrap_or_default();
    let med = percentile(
        &{
            let mut r = rss.clone();
            r.sort_by(f64::total_cmp);
            r
        },
        50.0,
    );
    rows.push(row(
        &format!("idle RSS per node, claims on, static build, after {rss_wait} s (same binary with --no-claims: {plain_rss:.1} MB{etcd_rss})"),
        &mut rss,
        "≤ 8 MB",
        med <= 8.0,
        "MB",
    ));
    drop(plain);
    let vs = |x: f64, e: f64| if e.is_finite() && e > 0.0 { format!(" (etcd {e:.2} ms, ratio {:.2})", x / e) } else { String::new() };

    // 1. Uncontended acquire (+ release untimed in the figure) via the leader and a follower.
    for (label, i, target_p50, target_p99, etcd_fig) in [
        ("via the leader", li, 1.0, 5.0, etcd.as_ref().map(|e| e.leader)),
        ("via a follower", fi, f64::INFINITY, f64::INFINITY, etcd.as_ref().map(|e| e.follower)),
    ] {
        let v = run_client(&rig, &nodes[i], &["--mode", "uncontended", "--key", &format!("bench/u{i}"), "--iters", &iters.to_string(), "--ttl-ms", "3000"]);
        let mut a = floats(&v, "acquire_ms");
        a.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&a, 50.0), percentile(&a, 99.0));
        let (e50, e99) = etcd_fig.unwrap_or((f64::NAN, f64::NAN));
        // No etcd figure from this run: the ratio is unknown, so the target is not met.
        let ratio_ok = e50.is_finite() && p50 / e50 < 1.0;
        let unmeasured = if e50.is_finite() { "" } else { " (etcd not measured in this run)" };
        let target =
            if target_p50.is_finite() { format!("≤ 1 ms / ≤ 5 ms; ratio to etcd < 1{unmeasured}") } else { format!("ratio to etcd < 1{unmeasured}") };
        let ok = p50 <= target_p50 && p99 <= target_p99 && ratio_ok;
        let mut r = row(&format!("uncontended acquire {label}, API on a kept-alive connection{}", vs(p50, e50)), &mut a, &target, ok, "ms");
        if e99.is_finite() {
            r.p99 = format!("{} (etcd {e99:.2})", r.p99);
        }
        rows.push(r);
    }

    // 2. Contended hand-off: 3 clients, one per host, the same key, zero hold time.
    let at = now_ms() + 1500.0;
    let vals: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let rig = &rig;
                s.spawn(move || {
                    run_client(rig, n, &["--mode", "contended", "--key", "bench/contended", "--iters", &citers.to_string(), "--start-at", &format!("{at:.0}")])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let mut grants: Vec<f64> = vals.iter().flat_map(|v| floats(v, "granted_at")).collect();
    grants.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = grants.windows(2).map(|w| w[1] - w[0]).collect();
    let wall = grants.last().copied().unwrap_or(0.0) - grants.first().copied().unwrap_or(0.0);
    let per_s = grants.len() as f64 / (wall / 1000.0).max(1e-9);
    let etcd_txt = etcd.as_ref().map(|e| format!(" (etcd {:.0}/s, wait p50 {:.1} ms)", e.per_s, e.wait_p50)).unwrap_or_default();
    let med = {
        let mut g = gaps.clone();
        g.sort_by(f64::total_cmp);
        percentile(&g, 50.0)
    };
    rows.push(row(
        &format!("contended hand-off, 3 clients on 3 hosts, one key: {per_s:.0}/s{etcd_txt}"),
        &mut gaps,
        "≤ 5 ms per hand-off (≥ 200/s)",
        med <= 5.0 && per_s >= 200.0,
        "ms",
    ));

    // 3. Holder node SIGKILLed (host alive, `claim run`'s child gone with it) → next holder.
    let mut failover = Vec::new();
    for rep in 0..reps {
        // The holder is a follower: killing the leader would add an election to the figure.
        let li = leader_index(&rig, &nodes);
        let (holder_i, waiter_i) = ((li + 1) % 3, (li + 2) % 3);
        let key = format!("bench/failover{rep}");
        let holder = &nodes[holder_i];
        let mut run = holder.cfg.command(&["claim", "run", &key, "--ttl", &ttl_s.to_string(), "--api", &holder.api(), "--", "sleep", "1000"]);
        run.env_remove("CRAFTMESH_LOG");
        let mut run = rig.host(holder_i).spawn_command(&run).expect("claim run");
        assert!(run.wait_for_log("holding", Duration::from_secs(20)), "claim run did not get the claim:\n{}", run.log_text());
        let waiter = &nodes[waiter_i];
        let rig_ref = &rig;
        let key2 = key.clone();
        let (killed_at, granted_at) = std::thread::scope(|s| {
            let h = s.spawn(move || {
                let v = waiter.json(rig_ref, &["claim", "acquire", &key2, "--ttl", "10", "--wait", "30", "--json"]);
                (now_ms(), v)
            });
            std::thread::sleep(Duration::from_millis(500));
            let killed = now_ms();
            rig.kill9(nodes[holder_i].pid()).expect("kill");
            let (at, v) = h.join().expect("waiter");
            assert_eq!(v.as_ref().map(|v| v["granted"] == true), Some(true), "waiter not granted: {v:?}");
            (killed, at)
        });
        failover.push(granted_at - killed_at);
        drop(run);
        nodes[holder_i].terminate(&rig);
        nodes[holder_i].restart(&rig);
        let _ = leader_index(&rig, &nodes);
    }
    let etcd_f = etcd.as_ref().map(|e| format!(" (etcd, protected or not: {:.0} ms)", e.failover_ms)).unwrap_or_default();
    let med = percentile(
        &{
            let mut f = failover.clone();
            f.sort_by(f64::total_cmp);
            f
        },
        50.0,
    );
    rows.push(row(
        &format!("holder node SIGKILLed, host alive, `claim run` child gone → next holder granted{etcd_f}"),
        &mut failover,
        "≤ 1 s",
        med <= 1000.0,
        "ms",
    ));

    // 4. Holder host cut off → its child stopped, then the next holder granted.
    let margin = craftmesh_protocol::claims::lease::default_margin_ms(ttl_s * 1000) as f64;
    let mut stopped = Vec::new();
    let mut granted = Vec::new();
    for rep in 0..reps.min(3) {
        let li = leader_index(&rig, &nodes);
        let hi = (li + 1) % 3;
        let wi = (li + 2) % 3;
        let key = format!("bench/cut{rep}");
        let h = &nodes[hi];
        let mut run = rig
            .host(hi)
            .spawn_command(&h.cfg.command(&["claim", "run", &key, "--ttl", &ttl_s.to_string(), "--api", &h.api(), "--", "sleep", "1000"]))
            .expect("claim run");
        assert!(run.wait_for_log("holding", Duration::from_secs(20)), "{}", run.log_text());
        std::thread::sleep(Duration::from_millis(300));
        let w = &nodes[wi];
        let rig_ref = &rig;
        let key2 = key.clone();
        let (cut_at, child_dead, grant_at) = std::thread::scope(|s| {
            let waiter = s.spawn(move || {
                let v = w.json(rig_ref, &["claim", "acquire", &key2, "--ttl", "10", "--wait", "30", "--json"]);
                (now_ms(), v)
            });
            std::thread::sleep(Duration::from_millis(200));
            let cut = now_ms();
            rig.cut_off(hi).expect("cut");
            let dead = wait_until("claim run to stop its child", Duration::from_secs(30), || run.try_wait().map(|_| now_ms()));
            let (at, v) = waiter.join().expect("waiter");
            assert_eq!(v.as_ref().map(|v| v["granted"] == true), Some(true), "waiter not granted: {v:?}");
            (cut, dead, at)
        });
        stopped.push(child_dead - cut_at);
        granted.push(grant_at - cut_at);
        rig.reconnect(hi).expect("reconnect");
        std::thread::sleep(Duration::from_secs(3));
    }
    let ttl_ms = (ttl_s * 1000) as f64;
    let max_stop = stopped.iter().copied().fold(0.0, f64::max);
    // Each rep's grant must come after that rep's child stopped (before `row` sorts them).
    let in_order = stopped.iter().zip(&granted).all(|(s, g)| g > s);
    rows.push(row(
        &format!("holder host cut off → its `claim run` child stopped (TTL {ttl_ms:.0} ms, margin {margin:.0} ms)"),
        &mut stopped,
        &format!("before TTL − margin = {:.0} ms", ttl_ms - margin),
        max_stop < ttl_ms - margin,
        "ms",
    ));
    let max_grant = granted.iter().copied().fold(0.0, f64::max);
    rows.push(row(
        "… then the next holder granted (lock-delay 0)",
        &mut granted,
        &format!("after the child stopped, ≤ TTL + lock-delay = {ttl_ms:.0} ms (+ detection)"),
        in_order && max_grant <= ttl_ms + 1500.0,
        "ms",
    ));

    print_table(&rows);
}
