//! Benchmarks with the targets beside each figure.
//!
//!     cargo run --release -p craftmesh-tests --bin bench -- discover [--runs N] [--rss-wait SECS]
//!     cargo run --release -p craftmesh-tests --bin bench -- claims-sim [--runs N] [--threads T] [--long]
//!     cargo run --release -p craftmesh-tests --bin bench -- share [--calls N] [--rounds R] [--sessions S] [--reps K]
//!
//! `share` (root: network namespaces) measures one stdio MCP server shared through craftmesh
//! beside mcp-proxy 0.13 (the anchor in `../shared/anchors/mcp-proxy/`): `tools/call` round
//! trips on the holder's host and over the mesh, many sessions on one child, failover after
//! a SIGKILL and a cut-off, and `resolve --ensure` cold and warm.
//!
//! Measures whole commands as a user runs them (process start to exit), on the shipped
//! configuration, with the release binary.

use craftmesh_tests::{KillOnDrop, McpServer, free_port, python_has_mcp, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Row {
    pub(crate) figure: String,
    pub(crate) n: usize,
    pub(crate) median: String,
    pub(crate) p99: String,
    pub(crate) target: String,
    pub(crate) verdict: &'static str,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

mod claims;
mod claims_sim;
mod mesh;
mod service;
mod share;

pub(crate) fn release_bin() -> PathBuf {
    let root = workspace_root();
    eprintln!("building the release binary (cargo build --release -p craftmesh)…");
    let st = Command::new(env!("CARGO")).current_dir(&root).args(["build", "--release", "-p", "craftmesh", "--bin", "craftmesh"]).status().expect("run cargo");
    assert!(st.success(), "cargo build --release failed");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    target.join("release").join("craftmesh")
}

/// Builds the static binary deployments run (`deploy/build-static.sh`) and returns its path.
pub(crate) fn static_release_bin() -> PathBuf {
    let root = workspace_root();
    eprintln!("building the static release binary (deploy/build-static.sh)…");
    let out = Command::new("bash").current_dir(&root).arg("deploy/build-static.sh").stderr(Stdio::inherit()).output().expect("run deploy/build-static.sh");
    assert!(out.status.success(), "deploy/build-static.sh failed");
    let last = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
    let p = PathBuf::from(last);
    if p.is_absolute() { p } else { root.join(p) }
}

/// Runs `craftmesh discover --once --json` on the shipped config `runs` times; returns ms, sorted.
fn time_discover(bin: &Path, user_dir: &Path, data_dir: &Path, env: &[(&str, String)], runs: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(runs);
    for i in 0..runs + 2 {
        let mut cmd = Command::new(bin);
        cmd.current_dir(workspace_root())
            .args(["discover", "--once", "--json"])
            .env("CRAFTMESH_USER_CONFIG_DIR", user_dir)
            .env("CRAFTMESH_DATA_DIR", data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, val) in env {
            cmd.env(k, val);
        }
        let t = Instant::now();
        let st = cmd.status().expect("run craftmesh");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(st.success(), "discover failed: {st}");
        if i >= 2 {
            v.push(ms); // the first two runs warm the page cache
        }
    }
    v.sort_by(f64::total_cmp);
    v
}

pub(crate) fn rss_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("discover");
    let arg =
        |name: &str, default: u64| -> u64 { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default) };
    match what {
        "discover" => {}
        "mesh" => return mesh::run(&args),
        "sim" => return mesh::sim(),
        "claims" => return claims::run(&args),
        "claims-client" => return claims::client(&args),
        "claims-sim" => return claims_sim::run(&args),
        "share" => return share::run(&args),
        "share-time" => return share::time_cmd(&args),
        _ => {
            eprintln!(
                "usage: bench discover [--runs N] [--rss-wait SECS]\n       bench mesh [--runs N] [--loss-secs S] [--bytes-secs S] [--rss-wait S]\n       bench sim\n       bench claims [--iters N] [--contended N] [--reps N] [--ttl SECS] [--rss-wait SECS] [--no-etcd]\n       bench claims-sim [--runs N] [--first SEED] [--threads T] [--long] [--servers S] [--lost PCT] [--stale-crash-views]\n       bench share [--calls N] [--rounds R] [--sessions S] [--tput-secs T] [--tput-procs P] [--reps K] [--cold N] [--warm N]"
            );
            std::process::exit(2);
        }
    }
    let runs = arg("--runs", 50) as usize;
    let rss_wait = arg("--rss-wait", 60);
    let bin = release_bin();
    let tmp = tempfile::tempdir().expect("tempdir");
    let user_dir = tmp.path().join("user");
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&user_dir).expect("mkdir");
    let mut rows = Vec::new();

    // 1. Nothing running.
    let v = time_discover(&bin, &user_dir, &data_dir, &[], runs);
    let (m, p) = (percentile(&v, 50.0), percentile(&v, 99.0));
    rows.push(Row {
        figure: "discover --once, shipped config, nothing running".into(),
        n: v.len(),
        median: format!("{m:.1} ms"),
        p99: format!("{p:.1} ms"),
        target: "≤ 100 ms".into(),
        verdict: if m <= 100.0 { "met" } else { "MISSED" },
    });

    // 2. One real MCP server (official Python SDK), found through ZEN_MCP_URL.
    if python_has_mcp() {
        let server = McpServer::start("bench-zen");
        let env = [("ZEN_MCP_URL", server.url())];
        let v = time_discover(&bin, &user_dir, &data_dir, &env, runs);
        let (m, p) = (percentile(&v, 50.0), percentile(&v, 99.0));
        rows.push(Row {
            figure: "discover --once, one real MCP server (initialize + tools/list)".into(),
            n: v.len(),
            median: format!("{m:.1} ms"),
            p99: format!("{p:.1} ms"),
            target: "≤ 300 ms".into(),
            verdict: if m <= 300.0 { "met" } else { "MISSED" },
        });
    } else {
        eprintln!("skipping the MCP figure: no python with the mcp SDK (run tests/scripts/run-tests.sh once, or set CRAFTMESH_TEST_PYTHON)");
    }

    // 3. Idle RSS of `craftmesh up` after rss_wait seconds.
    let api = format!("127.0.0.1:{}", free_port());
    let node_data = tmp.path().join("node-data");
    let child = Command::new(&bin)
        .current_dir(workspace_root())
        .args(["up", "--no-mesh", "--api", &api])
        .env("CRAFTMESH_USER_CONFIG_DIR", &user_dir)
        .env("CRAFTMESH_DATA_DIR", &node_data)
        .env("CRAFTMESH_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn craftmesh up");
    let node = KillOnDrop(child);
    eprintln!("waiting {rss_wait} s for `craftmesh up` to idle…");
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(rss_wait) {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(kb) = rss_kb(node.pid(), "VmRSS:") {
            samples.push(kb as f64 / 1024.0);
        }
    }
    let last = rss_kb(node.pid(), "VmRSS:").map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN);
    let hwm = rss_kb(node.pid(), "VmHWM:").map(|k| k as f64 / 1024.0).unwrap_or(f64::NAN);
    drop(node);
    rows.push(Row {
        figure: format!("craftmesh up idle RSS after {rss_wait} s (peak {hwm:.1} MB)"),
        n: 1,
        median: format!("{last:.1} MB"),
        p99: "-".into(),
        target: "≤ 10 MB".into(),
        verdict: if last <= 10.0 { "met" } else { "MISSED" },
    });

    print_table(&rows);
}

pub(crate) fn print_table(rows: &[Row]) {
    println!("\n| figure | N | median | p99 | target | verdict |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} | {} |", r.figure, r.n, r.median, r.p99, r.target, r.verdict);
    }
}
