//! `bench mesh`: the mesh figures on a rig of network namespaces, and `bench sim`.
//!
//! Times come from the nodes' own logs (`member state ... to=Alive|Dead` lines carry
//! microsecond UTC timestamps), compared with the wall clock at the moment of the action.

use super::{Row, percentile, print_table, release_bin, rss_kb, static_release_bin};
use craftmesh_protocol::membership::{Config, State};
use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available, nft_available};
use craftmesh_tests::sim::{NetConfig, Sim, gossip_rounds};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Parses `2026-11-25T18:17:51.782646Z` into unix microseconds.
fn parse_ts(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let us: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

/// First time (unix µs) at or after `since` that `node`'s log says `peer` went `to`.
fn logged(node: &MeshNode, peer: &str, to: &str, since: i64) -> Option<i64> {
    node.log()
        .lines()
        .filter(|l| l.contains("member state") && l.contains(peer) && l.contains(&format!("to={to}")))
        .filter_map(|l| parse_ts(l.split_whitespace().next()?))
        .find(|t| *t >= since)
}

/// When all of `observers` logged `peer` as `to` (the latest of them), waiting up to `timeout`.
fn all_logged(observers: &[&MeshNode], peer: &str, to: &str, since: i64, timeout: Duration) -> Option<i64> {
    let start = std::time::Instant::now();
    loop {
        let ts: Vec<Option<i64>> = observers.iter().map(|n| logged(n, peer, to, since)).collect();
        if ts.iter().all(Option::is_some) {
            return ts.into_iter().flatten().max();
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn row(figure: &str, ms: &mut [f64], target: &str, ok: impl Fn(f64) -> bool, unit: &str) -> Row {
    ms.sort_by(f64::total_cmp);
    let (m, p) = (percentile(ms, 50.0), percentile(ms, 99.0));
    Row {
        figure: figure.to_string(),
        n: ms.len(),
        median: format!("{m:.1} {unit}"),
        p99: format!("{p:.1} {unit}"),
        target: target.to_string(),
        verdict: if !ms.is_empty() && ok(m) { "met" } else { "MISSED" },
    }
}

fn all_alive(rig: &Rig, nodes: &[&MeshNode]) {
    for n in nodes {
        for o in nodes.iter().filter(|o| o.index != n.index) {
            wait_until("all alive", Duration::from_secs(30), || (n.state_of(rig, &o.peer_id).as_deref() == Some("alive")).then_some(()));
        }
    }
}

pub fn run(args: &[String]) {
    let arg =
        |name: &str, default: u64| -> u64 { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default) };
    let runs = arg("--runs", 20) as usize;
    let loss_secs = arg("--loss-secs", 300);
    // Long enough to take in the periodic mDNS cache refreshes (A/SRV records live 120 s).
    let bytes_secs = arg("--bytes-secs", 120);
    let rss_wait = arg("--rss-wait", 60);
    // --only join|loss|idle runs one section (default: all).
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).map(String::as_str);
    let section = |name: &str| only.is_none_or(|o| o == name);
    if !netns_available() {
        eprintln!("bench mesh needs root and network namespaces");
        std::process::exit(2);
    }
    let static_bin = section("idle").then(static_release_bin);
    let bin = release_bin();
    // SAFETY of the environment: set before any thread of ours reads it.
    unsafe_env_set("CRAFTMESH_BIN", &bin);
    let mut rows = Vec::new();

    // --- N=5: join, crash, cut-off
    if section("join") {
        let rig = Rig::new(5).expect("rig");
        let mut nodes: Vec<MeshNode> = (0..4).map(|i| MeshNode::start(&rig, i, EMPTY_CONFIG, &[])).collect();
        let refs: Vec<&MeshNode> = nodes.iter().collect();
        all_alive(&rig, &refs);
        let mut join = Vec::new();
        let mut crash = Vec::new();
        let mut cut = Vec::new();
        let mut fifth: Option<MeshNode> = None;
        for r in 0..runs {
            eprint!("\rjoin/crash/cut-off run {}/{runs}", r + 1);
            // join: start (or restart) node 4
            let t0 = now_us();
            let n = match fifth.take() {
                None => MeshNode::start(&rig, 4, EMPTY_CONFIG, &[]),
                Some(mut n) => {
                    n.restart(&rig);
                    n
                }
            };
            let obs: Vec<&MeshNode> = nodes.iter().collect();
            if let Some(t) = all_logged(&obs, &n.peer_id, "Alive", t0, Duration::from_secs(20)) {
                join.push((t - t0) as f64 / 1000.0);
            }
            // crash
            all_alive(&rig, &[&nodes[0], &nodes[1], &nodes[2], &nodes[3], &n]);
            std::thread::sleep(Duration::from_millis(300));
            let t0 = now_us();
            rig.kill9(n.pid()).expect("kill");
            if let Some(t) = all_logged(&obs, &n.peer_id, "Dead", t0, Duration::from_secs(20)) {
                crash.push((t - t0) as f64 / 1000.0);
            }
            let mut n = n;
            n.restart(&rig);
            all_alive(&rig, &[&nodes[0], &nodes[1], &nodes[2], &nodes[3], &n]);
            std::thread::sleep(Duration::from_millis(300));
            // cut off
            let t0 = now_us();
            rig.cut_off(4).expect("cut");
            if let Some(t) = all_logged(&obs, &n.peer_id, "Dead", t0, Duration::from_secs(20)) {
                cut.push((t - t0) as f64 / 1000.0);
            }
            rig.reconnect(4).expect("reconnect");
            all_alive(&rig, &[&nodes[0], &nodes[1], &nodes[2], &nodes[3], &n]);
            // leave the mesh cleanly for the next join
            let _ = n.terminate(&rig);
            fifth = Some(n);
        }
        eprintln!();
        rows.push(row("join: node start → listed alive by all others, N=5", &mut join, "≤ 150 ms median", |m| m <= 150.0, "ms"));
        rows.push(row("crash (SIGKILL) → dead on all others, N=5", &mut crash, "≤ 100 ms", |m| m <= 100.0, "ms"));
        rows.push(row("host cut off → dead on all others, N=5", &mut cut, "≤ 1.5 s", |m| m <= 1500.0, "ms"));
        drop(fifth);
        nodes.clear();
    }

    // --- N=5 at 10% loss: false deaths
    if section("loss") && nft_available() && loss_secs > 0 {
        let rig = Rig::new(5).expect("rig");
        let nodes: Vec<MeshNode> = (0..5).map(|i| MeshNode::start(&rig, i, EMPTY_CONFIG, &[])).collect();
        all_alive(&rig, &nodes.iter().collect::<Vec<_>>());
        for i in 0..5 {
            rig.set_loss(i, 10).expect("loss");
        }
        eprintln!("10% loss for {loss_secs} s…");
        std::thread::sleep(Duration::from_secs(loss_secs));
        let deaths: usize = nodes.iter().map(|n| n.log().lines().filter(|l| l.contains("member state") && l.contains("to=Dead")).count()).sum();
        let suspicions: usize = nodes.iter().map(|n| n.log().lines().filter(|l| l.contains("member state") && l.contains("to=Suspect")).count()).sum();
        rows.push(Row {
            figure: format!("false deaths in {loss_secs} s at 10% packet loss, N=5 ({suspicions} suspicions, all refuted)"),
            n: 1,
            median: deaths.to_string(),
            p99: "-".into(),
            target: "0".into(),
            verdict: if deaths == 0 { "met" } else { "MISSED" },
        });
    }

    // --- N=10 idle: bytes/s and RSS per node
    if let Some(static_bin) = static_bin {
        let rig = Rig::new(10).expect("rig");
        let mut nodes: Vec<MeshNode> = (0..10).map(|i| MeshNode::start(&rig, i, EMPTY_CONFIG, &[])).collect();
        all_alive(&rig, &nodes.iter().collect::<Vec<_>>());
        // Steady state: DNS-SD queries back off exponentially after start, so the window
        // begins `settle` seconds in (default 60).
        let settle = arg("--settle", 60);
        eprintln!("letting the mesh settle for {settle} s…");
        std::thread::sleep(Duration::from_secs(settle));
        let before: Vec<(u64, u64)> = (0..10).map(|i| rig.bytes(i).expect("bytes")).collect();
        eprintln!("measuring idle traffic for {bytes_secs} s…");
        std::thread::sleep(Duration::from_secs(bytes_secs));
        let mut per: Vec<f64> = (0..10)
            .map(|i| {
                let (rx, tx) = rig.bytes(i).expect("bytes");
                ((rx - before[i].0) + (tx - before[i].1)) as f64 / bytes_secs as f64 / 1000.0
            })
            .collect();
        rows.push(row(
            &format!("steady bytes/s per node (rx+tx on the wire, {bytes_secs} s from {settle} s after start), N=10"),
            &mut per,
            "≤ 3 KB/s",
            |m| m <= 3.0,
            "KB/s",
        ));
        let waited = bytes_secs + settle;
        if rss_wait > waited {
            std::thread::sleep(Duration::from_secs(rss_wait - waited));
        }
        let mut rss: Vec<f64> = nodes.iter().filter_map(|n| rss_kb(n.pid(), "VmRSS:")).map(|k| k as f64 / 1024.0).collect();
        let figure = format!("idle RSS per node after {} s, N=10, `cargo build --release` binary (shared glibc mapped in)", rss_wait.max(waited));
        rows.push(row(&figure, &mut rss, "≤ 8 MB", |m| m <= 8.0, "MB"));
        // The same nodes (same data dirs, same mesh) on the binary deploy/ ships.
        for n in &mut nodes {
            let _ = n.terminate(&rig);
            n.bin = Some(static_bin.clone());
            n.restart(&rig);
        }
        all_alive(&rig, &nodes.iter().collect::<Vec<_>>());
        eprintln!("static binary: waiting {rss_wait} s…");
        std::thread::sleep(Duration::from_secs(rss_wait));
        let mut rss: Vec<f64> = nodes.iter().filter_map(|n| rss_kb(n.pid(), "VmRSS:")).map(|k| k as f64 / 1024.0).collect();
        let figure = format!("idle RSS per node after {rss_wait} s, N=10, static binary (deploy/, what the image runs)");
        rows.push(row(&figure, &mut rss, "≤ 8 MB", |m| m <= 8.0, "MB"));
    }
    print_table(&rows);
}

fn unsafe_env_set(k: &str, v: &std::path::Path) {
    // The bench is single-threaded at this point; tests never call this.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var(k, v);
    }
}

/// `bench sim`: the seeded simulation at scale.
pub fn sim() {
    let mut rows = Vec::new();
    for n in [100usize, 1000] {
        let mut rounds: Vec<f64> = (0..20).map(|seed| gossip_rounds(n, 6, 0.1, seed) as f64).collect();
        rows.push(row(&format!("gossip rounds until all {n} nodes have a record (fanout 6, 10% loss)"), &mut rounds, "O(log N)", |_| true, "rounds"));
    }
    for n in [100usize, 1000] {
        let seeds: u64 = if n >= 1000 { 1 } else { 5 };
        let mut detect = Vec::new();
        let mut falses = 0;
        for seed in 0..seeds {
            let net = NetConfig { loss: 0.01, ..NetConfig::default() };
            let mut sim = if n >= 1000 {
                // Membership only, and a dial budget that lets 1000 nodes join in seconds.
                let cfg = craftmesh_protocol::mesh::Config { dials_per_sec: 2000, dial_burst: 2000, ..craftmesh_protocol::mesh::Config::default() };
                Sim::with(n, seed, cfg, net, false)
            } else {
                Sim::new(n, seed, Config::default(), net)
            };
            sim.run_until(15_000);
            sim.crash(n / 2);
            let t0 = sim.now;
            sim.run_until(t0 + 5_000);
            if let Some(t) = sim.all_saw(n / 2, State::Dead, t0) {
                detect.push((t - t0) as f64);
            }
            falses += sim.false_deaths();
        }
        eprintln!("sim {n}: {falses} false deaths");
        rows.push(row(&format!("simulated crash → dead on all {n} nodes (virtual ms, 1% loss)"), &mut detect, "≤ 100 ms", |m| m <= 100.0, "ms"));
        let _ = falses;
    }
    let mut cut = Vec::new();
    for seed in 0..5 {
        let mut sim = Sim::new(100, seed, Config::default(), NetConfig { loss: 0.01, ..NetConfig::default() });
        sim.run_until(15_000);
        sim.set_cut_off(7, true);
        let t0 = sim.now;
        sim.run_until(t0 + 10_000);
        if let Some(t) = sim.all_saw(7, State::Dead, t0) {
            cut.push((t - t0) as f64);
        }
    }
    rows.push(row("simulated cut-off → dead on all 100 nodes (virtual ms, 1% loss)", &mut cut, "≤ 1.5 s", |m| m <= 1500.0, "ms"));
    print_table(&rows);
}
