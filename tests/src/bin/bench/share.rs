//! `bench share`: one stdio MCP server shared by craftmesh nodes on a rig of 3 hosts, side by
//! side with mcp-proxy 0.13 (the anchor in `../shared/anchors/mcp-proxy/`) in the same run,
//! and `bench share-time`, which times a command inside a host.
//!
//! The call figures use the anchor's server (`stdio_server.py`, tool `add`, run by the
//! anchor venv's python: craftmesh's launch entry runs exactly that file) and the anchor's
//! client (`lat.py`, here its copy `tests/fixtures/mcp_lat.py`, which can send the API
//! token; `tests/fixtures/mcp_tput.py` for throughput). The anchor's `run.sh` is run in
//! pieces: its `setup.sh` here (it may fetch mcp-proxy from PyPI once), then inside the
//! holder's host (where 127.0.0.1 is that node's API) its mcp-proxy in front of the server
//! and the client against every target, in rounds that interleave the targets, samples
//! pooled. The failover figures need to know which instance answered, so they use the
//! fixture server `tests/fixtures/mcp_stdio_server.py` (tool `pid`) under the name `probe`,
//! watched by `tests/fixtures/mcp_watch.py`.

use super::{Row, percentile, print_table, static_release_bin};
use craftmesh_tests::meshnode::{MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available};
use craftmesh_tests::{ConfigDir, fixture, run_with_timeout, workspace_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const API: &str = "127.0.0.1:7410";
/// Where the anchor's mcp-proxy listens inside the holder's host (its `run.sh` default).
const ANCHOR_PORT: u16 = 18123;
/// `CRAFTMESH_SERVICE_TTL_MS` is not set for the nodes: svc claims use the default.
const SERVICE_TTL_MS: f64 = 5000.0;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// A row of samples (ms) with its verdict taken on the median.
pub(crate) fn ms_row(figure: String, v: &[f64], target: &str, ok: impl Fn(f64) -> bool) -> Row {
    let v = sorted(v.to_vec());
    let m = percentile(&v, 50.0);
    Row {
        figure,
        n: v.len(),
        median: format!("{m:.2} ms"),
        p99: format!("{:.2} ms", percentile(&v, 99.0)),
        target: target.to_string(),
        verdict: if v.is_empty() {
            "MISSED"
        } else if ok(m) {
            "met"
        } else {
            "MISSED"
        },
    }
}

// ---------------------------------------------------------------------------------------
// `bench share-time` (runs inside a host)
// ---------------------------------------------------------------------------------------

/// `bench share-time --runs N -- CMD ARGS...`: runs CMD N times, one after the other, and
/// prints `{"ms": [...], "failed": k, "stdout": <the last run's stdout>}`. Timing inside the
/// host leaves `ip netns exec` out of the figure.
pub fn time_cmd(args: &[String]) {
    let runs: usize = arg(args, "--runs", 1);
    let at = args.iter().position(|a| a == "--").expect("share-time: -- CMD");
    let (prog, rest) = args[at + 1..].split_first().expect("share-time: a command after --");
    let (mut ms, mut failed, mut stdout) = (Vec::new(), 0, String::new());
    for _ in 0..runs {
        let t = Instant::now();
        let out = Command::new(prog).args(rest).stdin(std::process::Stdio::null()).output().expect("run the command");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        failed += usize::from(!out.status.success());
        stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    println!("{}", serde_json::json!({"ms": ms, "failed": failed, "stdout": stdout}));
}

/// Runs `cmd` `runs` times inside host `i` through `bench share-time`: (ms, failed, last stdout).
fn timed(rig: &Rig, i: usize, cmd: &Command, runs: usize) -> (Vec<f64>, usize, String) {
    let mut w = rig.host(i).cmd(std::env::current_exe().expect("current exe"));
    w.args(["share-time", "--runs", &runs.to_string(), "--"]).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        w.current_dir(d);
    }
    let out = run_with_timeout(&mut w, Duration::from_secs(400));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("share-time: {e}\n{}", out.describe()));
    let ms = v["ms"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
    (ms, v["failed"].as_u64().unwrap_or(0) as usize, v["stdout"].as_str().unwrap_or_default().to_string())
}

// ---------------------------------------------------------------------------------------
// The anchor and the rig
// ---------------------------------------------------------------------------------------

struct Anchor {
    dir: PathBuf,
    py: PathBuf,
    proxy: PathBuf,
}

impl Anchor {
    /// Runs the anchor's `setup.sh` (makes its venv once; prints the versions).
    fn setup() -> Anchor {
        let dir = workspace_root().join("../shared/anchors/mcp-proxy");
        assert!(dir.join("setup.sh").exists(), "no mcp-proxy anchor at {}: bench share needs its server and venv", dir.display());
        let dir = dir.canonicalize().expect("anchor dir");
        let out = run_with_timeout(Command::new("bash").arg(dir.join("setup.sh")), Duration::from_secs(600));
        assert!(out.success(), "the anchor's setup.sh failed\n{}", out.describe());
        eprintln!("anchor: {}", out.stdout.trim());
        let venv = PathBuf::from("/tmp/mcp-proxy-anchor/venv/bin");
        Anchor { py: venv.join("python"), proxy: venv.join("mcp-proxy"), dir }
    }

    fn server(&self) -> PathBuf {
        self.dir.join("stdio_server.py")
    }

    /// A fixture script run by the anchor's python inside host `i`, with `env`.
    fn script(&self, rig: &Rig, i: usize, script: &str, args: &[String], env: &[(&str, &str)]) -> Command {
        let mut c = rig.host(i).cmd(&self.py);
        c.arg(fixture(script)).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }
}

/// Two shared servers: `echo` (the anchor's server, exactly as its `run.sh` runs it) and
/// `probe` (the fixture server that tells which process answered).
fn config(a: &Anchor, tag: &str) -> ConfigDir {
    let entry = "    priority_order: [user_installation]\n    deployment_config:\n      prevent_duplicate: true\n";
    let (kv_yaml, kv_json) = crate::service::kv_entry(&a.py.to_string_lossy());
    let yaml = format!("settings:\n  discovery_interval: 30\nservers:\n  echo:\n{entry}  probe:\n{entry}{kv_yaml}");
    let json = serde_json::json!({"mcpServers": {
        "echo": {"command": a.py.to_string_lossy(), "args": [a.server().to_string_lossy()]},
        "probe": {"command": a.py.to_string_lossy(), "args": [fixture("mcp_stdio_server.py").to_string_lossy(), "--name", tag]},
        "kv": kv_json,
    }});
    ConfigDir::new(&yaml).with_servers_json("core", &json.to_string())
}

fn wait_cluster(rig: &Rig, nodes: &[MeshNode]) {
    let start = Instant::now();
    loop {
        if craftmesh_tests::meshnode::one_cluster(rig, nodes, Some(nodes.len())) {
            return;
        }
        if start.elapsed() > Duration::from_secs(60) {
            for n in nodes {
                eprintln!("--- node {} ---\n{}", n.index, n.log());
            }
            panic!("no one claims cluster with a leader after 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The index of the node running `server`, as every node in `ask` sees it.
fn holder(rig: &Rig, nodes: &[MeshNode], ask: &[usize], server: &str) -> Option<usize> {
    let mut seen = None;
    for &i in ask {
        let st = nodes[i].json(rig, &["deploy", "status", "--json"])?;
        let peer = st.as_array()?.iter().find(|r| r["server"] == server)?["node"].as_str()?.to_string();
        let h = nodes.iter().position(|n| n.peer_id == peer)?;
        if seen.is_some_and(|s| s != h) {
            return None;
        }
        seen = Some(h);
    }
    seen
}

pub(crate) fn ensure_cmd(n: &MeshNode, server: &str) -> Command {
    n.cfg.command(&["resolve", "--ensure", server, "--json", "--api", API])
}

fn token(n: &MeshNode) -> String {
    std::fs::read_to_string(n.cfg.data_dir().join("api.token")).expect("the node's api.token").trim().to_string()
}

/// Client target words (mcp_lat.py / mcp_tput.py / mcp_watch.py) for node `n`'s way in.
fn via_proxy(bin: &Path, n: &MeshNode, server: &str) -> Vec<String> {
    let d = n.cfg.data_dir().to_string_lossy().into_owned();
    vec!["stdio".into(), bin.to_string_lossy().into_owned(), "mcp-proxy".into(), server.into(), "--data-dir".into(), d, "--api".into(), API.into()]
}

fn via_http(n: &MeshNode, server: &str) -> Vec<String> {
    vec!["http".into(), format!("http://{API}/mcp/{server}"), format!("Authorization=Bearer {}", token(n))]
}

// ---------------------------------------------------------------------------------------
// The figures
// ---------------------------------------------------------------------------------------

/// What `bench share` was asked for.
struct Opts {
    calls: usize,
    rounds: usize,
    sessions: usize,
    tput_secs: f64,
    tput_procs: usize,
    reps: usize,
    cold: usize,
    warm: usize,
    skip_calls: bool,
    logs: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        Opts {
            calls: arg(args, "--calls", 500),
            rounds: arg(args, "--rounds", 3),
            sessions: arg(args, "--sessions", 50),
            tput_secs: arg(args, "--tput-secs", 8.0),
            tput_procs: arg(args, "--tput-procs", 2),
            reps: arg(args, "--reps", 3),
            cold: arg(args, "--cold", 3),
            warm: arg(args, "--warm", 20),
            skip_calls: args.iter().any(|a| a == "--skip-calls"),
            logs: args.iter().position(|a| a == "--logs").and_then(|i| args.get(i + 1)).map(PathBuf::from),
        }
    }
}

/// The rig and what every figure runs: the anchor (server, venv) and the craftmesh binary.
struct Bench<'r> {
    rig: &'r Rig,
    a: &'r Anchor,
    bin: &'r Path,
}

/// `bench share [--calls N] [--rounds R] [--sessions S] [--tput-secs T] [--tput-procs P]
/// [--reps K] [--cold N] [--warm N] [--skip-calls] [--logs DIR]`: `--skip-calls` leaves out
/// the round-trip and throughput figures; `--logs DIR` keeps each failover rep's watcher
/// and node logs.
pub fn run(args: &[String]) {
    assert!(netns_available(), "bench share needs root and network namespaces");
    // Nodes, CLI calls and `mcp-proxy` all run the static release binary: the rig helpers
    // take `CRAFTMESH_BIN`, so the bench runs itself again with it set.
    let Some(bin) = std::env::var_os("CRAFTMESH_BIN").map(PathBuf::from) else {
        let bin = static_release_bin();
        let st = Command::new(std::env::current_exe().expect("current exe"))
            .args(std::env::args_os().skip(1))
            .env("CRAFTMESH_BIN", &bin)
            .status()
            .expect("run the bench again");
        std::process::exit(st.code().unwrap_or(1));
    };
    let o = Opts::parse(args);
    let t_all = Instant::now();
    let a = Anchor::setup();
    eprintln!("craftmesh binary: {}", bin.display());
    let tag = format!("probe-{}", craftmesh_tests::random_suffix());
    let rig = Rig::new(3).expect("rig");
    let mut nodes: Vec<MeshNode> = (0..3).map(|i| MeshNode::start_cfg(&rig, i, config(&a, &tag), &["--role", "server"])).collect();
    wait_cluster(&rig, &nodes);
    let b = Bench { rig: &rig, a: &a, bin: &bin };
    let (cold, warm) = b.ensure_samples(&nodes, &o);
    let mut rows = if o.skip_calls { Vec::new() } else { b.call_rows(&nodes, &o) };
    if !o.skip_calls {
        rows.extend(crate::service::rows(&rig, &nodes, &a.py.to_string_lossy(), o.calls, o.rounds));
    }

    // 4, 5. Failover of `probe` under a held `mcp-proxy` session on another host.
    let (ms, failed, stdout) = timed(&rig, 0, &ensure_cmd(&nodes[0], "probe"), 1);
    assert!(failed == 0, "ensure probe: {stdout}");
    eprintln!("probe deployed in {:.0} ms", ms[0]);
    let mut kill = Watch::new(&a, &bin, 40.0, &o.logs, "kill");
    for rep in 0..o.reps {
        let h = kill.rep(&rig, &nodes, rep, |h| rig.kill9(nodes[h].pid()).expect("SIGKILL the holder node"));
        nodes[h].restart(&rig);
        wait_cluster(&rig, &nodes);
    }
    rows.push(kill.row("holder node SIGKILLed → a held `mcp-proxy` session on another host answers again (last answer of the old instance → first of the new; calls every 20 ms)", "≤ 2 s", 2000.0));
    let mut cut = Watch::new(&a, &bin, SERVICE_TTL_MS / 1000.0 + 40.0, &o.logs, "cut");
    for rep in 0..o.reps {
        let h = cut.rep(&rig, &nodes, rep, |h| rig.cut_off(h).expect("cut the holder's host off"));
        rig.reconnect(h).expect("reconnect");
        wait_cluster(&rig, &nodes);
    }
    rows.push(cut.row(
        &format!("holder host cut off → the same gap (svc claim TTL {SERVICE_TTL_MS:.0} ms, the default: CRAFTMESH_SERVICE_TTL_MS unset)"),
        &format!("≤ TTL + 1.5 s = {:.0} ms", SERVICE_TTL_MS + 1500.0),
        SERVICE_TTL_MS + 1500.0,
    ));

    // 6.
    let mut r = ms_row(
        "`resolve --ensure echo` cold: first deploy of the stdio server on this node (whole CLI command; stopped between runs)".into(),
        &cold,
        "report",
        |_| true,
    );
    r.verdict = "-";
    rows.push(r);
    rows.push(ms_row("`resolve --ensure echo` warm: running on host 0, asked from hosts 1 and 2 (whole CLI command)".into(), &warm, "≤ 20 ms", |m| {
        m <= 20.0
    }));
    print_table(&rows);
    eprintln!("bench share took {:.0} s", t_all.elapsed().as_secs_f64());
}

impl Bench<'_> {
    /// Figure 6, `resolve --ensure echo`: cold (deploys on host 0; stopped between runs), then warm
    /// from the other hosts while it runs on host 0. Returns (cold ms, warm ms).
    fn ensure_samples(&self, nodes: &[MeshNode], o: &Opts) -> (Vec<f64>, Vec<f64>) {
        let mut cold = Vec::new();
        for r in 0..o.cold {
            if r > 0 {
                let out = nodes[0].cli(self.rig, &["deploy", "stop", "echo"]);
                assert!(out.success(), "deploy stop\n{}", out.describe());
            }
            let (ms, failed, stdout) = timed(self.rig, 0, &ensure_cmd(&nodes[0], "echo"), 1);
            let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
            assert!(failed == 0 && v["deployed"] == true && v["local"] == true, "a cold ensure deploys on its own node: {stdout}");
            cold.extend(ms);
        }
        let mut warm = Vec::new();
        for i in [1, 2] {
            let (ms, failed, stdout) = timed(self.rig, i, &ensure_cmd(&nodes[i], "echo"), o.warm);
            let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_default();
            assert!(failed == 0 && v["deployed"] == false && v["node"] == nodes[0].peer_id.as_str(), "a warm ensure finds host 0's instance: {stdout}");
            warm.extend(ms);
        }
        (cold, warm)
    }

    /// Figures 1-3: round trips and throughput, with the anchor's mcp-proxy running in host 0.
    fn call_rows(&self, nodes: &[MeshNode], o: &Opts) -> Vec<Row> {
        let (a, rig) = (self.a, self.rig);
        let mut words =
            vec!["--port".to_string(), ANCHOR_PORT.to_string(), "--host".into(), "127.0.0.1".into(), "--log-level".into(), "ERROR".into(), "--".into()];
        words.extend([a.py.to_string_lossy().into_owned(), a.server().to_string_lossy().into_owned()]);
        let mut proxy = rig.host(0).spawn(&a.proxy, &words).expect("start the anchor's mcp-proxy");
        let wait = format!("for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/{ANCHOR_PORT}) 2>/dev/null && exit 0; sleep 0.1; done; exit 1");
        let up = rig.host(0).run("bash", ["-c", &wait], Duration::from_secs(30));
        assert!(up.success(), "the anchor's mcp-proxy did not listen\n{}", proxy.describe());
        let direct = vec!["stdio".to_string(), a.py.to_string_lossy().into_owned(), a.server().to_string_lossy().into_owned()];
        let anchor = vec!["http".to_string(), format!("http://127.0.0.1:{ANCHOR_PORT}/mcp")];
        let mut rows = self.latency_rows(nodes, o, &direct, &anchor);
        rows.extend(self.throughput_rows(nodes, o, &direct, &anchor));
        drop(proxy);
        rows
    }

    /// Figures 1 and 2, `tools/call` round trips with `mcp_lat.py`, in rounds over every target.
    fn latency_rows(&self, nodes: &[MeshNode], o: &Opts, direct: &[String], anchor: &[String]) -> Vec<Row> {
        let targets: Vec<(usize, Vec<String>)> = vec![
            (0, direct.to_vec()),
            (0, anchor.to_vec()),
            (0, via_proxy(self.bin, &nodes[0], "echo")),
            (0, via_http(&nodes[0], "echo")),
            (1, via_proxy(self.bin, &nodes[1], "echo")),
            (1, via_http(&nodes[1], "echo")),
        ];
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let samples = tempfile::NamedTempFile::new().expect("samples file");
        let spath = samples.path().to_string_lossy().into_owned();
        let n = o.calls.to_string();
        for round in 0..o.rounds {
            for (k, (host, words)) in targets.iter().enumerate() {
                eprintln!("round {}/{}: host {host}: {} {}", round + 1, o.rounds, words[0], words[1]);
                let mut cmd = self.a.script(self.rig, *host, "mcp_lat.py", words, &[("N", &n), ("LAT_SAMPLES", &spath)]);
                let out = run_with_timeout(&mut cmd, Duration::from_secs(300));
                assert!(out.success() && out.stdout.contains("p50="), "mcp_lat.py failed\n{}", out.describe());
                let v: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&spath).unwrap_or_default()).expect("the samples mcp_lat.py wrote");
                lat[k].extend(v);
            }
        }
        let lat: Vec<Vec<f64>> = lat.into_iter().map(sorted).collect();
        let over = |k: usize| percentile(&lat[k], 50.0) - percentile(&lat[0], 50.0);
        let mut rows = vec![
            ms_row("tools/call round trip, same host: the stdio server called directly over stdio".into(), &lat[0], "reference", |_| true),
            ms_row(
                format!("… through mcp-proxy 0.13 (streamable HTTP): {:+.2} ms p50 over direct", over(1)),
                &lat[1],
                "reference (anchor README: +3-4 ms)",
                |_| true,
            ),
        ];
        for r in &mut rows {
            r.verdict = "-";
        }
        for (k, way) in [(2, "`craftmesh mcp-proxy echo`"), (3, "/mcp/echo (the SDK's HTTP client, as for mcp-proxy 0.13)")] {
            let figure = format!("… through {way}: {:+.2} ms p50 over direct (mcp-proxy 0.13: {:+.2})", over(k), over(1));
            rows.push(ms_row(figure, &lat[k], "≤ +0.5 ms p50 over direct", |_| over(k) <= 0.5));
        }
        for (k, way) in [(4, "`craftmesh mcp-proxy echo`"), (5, "/mcp/echo")] {
            let figure = format!("… from host 1 over the mesh (instance on host 0) through {way}: {:+.2} ms p50 over direct", over(k));
            rows.push(ms_row(figure, &lat[k], "≤ +1.5 ms p50 over direct", |_| over(k) <= 1.5));
        }
        rows
    }

    /// Figure 3, throughput with `mcp_tput.py`: the child's own (one stdio session); one session
    /// and `o.sessions` sessions through each way in; `o.sessions` through mcp-proxy 0.13.
    fn throughput_rows(&self, nodes: &[MeshNode], o: &Opts, direct: &[String], anchor: &[String]) -> Vec<Row> {
        let tput = |words: &[String], n: usize| -> Value {
            let procs = if n > 1 { o.tput_procs } else { 1 };
            let mut args = vec!["--sessions".to_string(), n.to_string(), "--seconds".into(), o.tput_secs.to_string(), "--procs".into(), procs.to_string()];
            args.extend(words.iter().cloned());
            let out = run_with_timeout(&mut self.a.script(self.rig, 0, "mcp_tput.py", &args, &[]), Duration::from_secs(180));
            let last = out.stdout.trim().lines().last().unwrap_or_default().to_string();
            let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("mcp_tput.py: {e}\n{}", out.describe()));
            eprintln!("throughput {} {} x{n}: {v}", words[0], words[1]);
            v
        };
        // Many sessions, with the node's own view mid-run: how many sessions its one child serves.
        let tput_many = |words: &[String]| -> (Value, Value) {
            std::thread::scope(|s| {
                let h = s.spawn(|| tput(words, o.sessions));
                std::thread::sleep(Duration::from_secs_f64(6.0 + o.tput_secs / 2.0));
                let st = nodes[0].json(self.rig, &["deploy", "status", "--json"]);
                let row = st.and_then(|v| v.as_array()?.iter().find(|r| r["server"] == "echo").cloned()).unwrap_or_default();
                (h.join().expect("throughput run"), row)
            })
        };
        let per_s = |v: &Value| v["per_s"].as_f64().unwrap_or(f64::NAN);
        let own = tput(direct, 1);
        let mut rows = vec![Row {
            figure: "throughput of the child called directly, one stdio session, calls back to back".into(),
            n: own["calls"].as_u64().unwrap_or(0) as usize,
            median: format!("{:.0}/s", per_s(&own)),
            p99: "-".into(),
            target: "reference".into(),
            verdict: "-",
        }];
        let anchor_many = tput(anchor, o.sessions);
        let sessions = o.sessions;
        for (way, words) in [("/mcp/echo", via_http(&nodes[0], "echo")), ("`craftmesh mcp-proxy echo`", via_proxy(self.bin, &nodes[0], "echo"))] {
            let one = tput(&words, 1);
            let (many, mid) = tput_many(&words);
            let ratio = per_s(&many) / per_s(&own);
            let errors = many["errors"].as_u64().unwrap_or(1) + one["errors"].as_u64().unwrap_or(1);
            rows.push(Row {
                figure: format!(
                    "throughput, {sessions} sessions via {way} on one shared child (pid {}, {} sessions in deploy status mid-run): {ratio:.2}× the child's own; 1 session via {way}: {:.0}/s; mcp-proxy 0.13 with {sessions} sessions: {:.0}/s; client: {} processes, {} s{}",
                    mid["pid"],
                    mid["sessions"],
                    per_s(&one),
                    per_s(&anchor_many),
                    o.tput_procs,
                    o.tput_secs,
                    if errors > 0 { format!("; errors: {one} {many}") } else { String::new() },
                ),
                n: many["calls"].as_u64().unwrap_or(0) as usize,
                median: format!("{:.0}/s", per_s(&many)),
                p99: "-".into(),
                target: "≥ 0.8× the child's own".into(),
                verdict: if ratio >= 0.8 && errors == 0 { "met" } else { "MISSED" },
            });
        }
        rows
    }
}

/// Gaps measured with `mcp_watch.py` over the reps of one failover figure.
struct Watch {
    /// The anchor venv's python and the craftmesh binary the watcher runs.
    py: PathBuf,
    bin: PathBuf,
    deadline_s: f64,
    gaps: Vec<f64>,
    to_new: Vec<f64>,
    failed_calls: u64,
    lost: Vec<String>,
    /// Where to keep each rep's watcher and node logs (`--logs DIR`).
    logs: Option<PathBuf>,
    /// Reps whose faulted host led the claims cluster (its fault adds an election).
    led: usize,
}

impl Watch {
    fn new(a: &Anchor, bin: &Path, deadline_s: f64, logs: &Option<PathBuf>, what: &str) -> Watch {
        let logs = logs.as_ref().map(|d| d.join(what));
        if let Some(d) = &logs {
            std::fs::create_dir_all(d).expect("--logs dir");
        }
        Watch { py: a.py.clone(), bin: bin.to_path_buf(), deadline_s, logs, gaps: Vec::new(), to_new: Vec::new(), failed_calls: 0, lost: Vec::new(), led: 0 }
    }

    /// Starts `mcp_watch.py` on `client`'s host through its `craftmesh mcp-proxy probe`.
    fn spawn(&self, rig: &Rig, client: &MeshNode) -> craftmesh_tests::netns::Spawned {
        let mut args = vec!["--interval-ms".to_string(), "20".into(), "--deadline".into(), self.deadline_s.to_string(), "--after-new-ms".into(), "300".into()];
        args.extend(via_proxy(&self.bin, client, "probe"));
        let mut cmd = Command::new(&self.py);
        cmd.arg(fixture("mcp_watch.py")).args(&args);
        let mut w = rig.host(client.index).spawn_command(&cmd).expect("start mcp_watch.py");
        assert!(w.wait_for_log("\"ok\": true", Duration::from_secs(30)), "the watching session never answered\n{}", w.describe());
        w
    }

    /// Holds a session on a host other than the instance's, lets it answer for 1 s, runs
    /// `fault` on the host of the instance that answered (found by its pid), and reads the
    /// gap between the last answer of that instance and the first of another. Returns the
    /// faulted host.
    fn rep(&mut self, rig: &Rig, nodes: &[MeshNode], rep: usize, fault: impl FnOnce(usize)) -> usize {
        let deadline_s = self.deadline_s;
        let guess = wait_until("one holder of probe", Duration::from_secs(60), || holder(rig, nodes, &[0, 1, 2], "probe"));
        let mut c = (guess + 1 + rep % 2) % 3;
        let (mut w, h) = loop {
            let w = self.spawn(rig, &nodes[c]);
            let pid = w
                .log_text()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| v["pid"].as_str().map(str::to_string))
                .unwrap_or_default();
            let h = wait_until("the node whose instance answered", Duration::from_secs(30), || {
                (0..nodes.len()).find(|&i| {
                    let st = nodes[i].json(rig, &["deploy", "status", "--json"]);
                    st.and_then(|v| {
                        v.as_array()?
                            .iter()
                            .find(|r| r["server"] == "probe" && r["local"] == true)
                            .map(|r| r["pid"].as_u64().map(|p| p.to_string()).as_deref() == Some(pid.as_str()))
                    })
                    .unwrap_or(false)
                })
            });
            if h != c {
                break (w, h);
            }
            c = (c + 1) % nodes.len(); // the instance runs on the watcher's host: watch from another
        };
        let client = &nodes[c];
        let leader = client.json(rig, &["cluster", "--json"]).and_then(|v| v["leader"]["peer"].as_str().map(str::to_string));
        self.led += usize::from(leader.as_deref() == Some(nodes[h].peer_id.as_str()));
        std::thread::sleep(Duration::from_secs(1));
        let at = now_ms();
        fault(h);
        let done = w.wait_timeout(Duration::from_secs_f64(deadline_s + 15.0)).is_some();
        if let Some(d) = &self.logs {
            let rep = self.gaps.len() + self.lost.len();
            let _ = std::fs::write(d.join(format!("rep{rep}-watcher-h{}.log", client.index)), format!("fault at {at:.0}\n{}", w.log_text()));
            for n in nodes {
                let _ = std::fs::write(d.join(format!("rep{rep}-node{}.log", n.index)), n.log());
            }
        }
        let lines: Vec<Value> = w.log_text().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get("t").is_some()).collect();
        let ok: Vec<(f64, &str)> = lines.iter().filter(|v| v["ok"] == true).filter_map(|v| Some((v["t"].as_f64()?, v["pid"].as_str()?))).collect();
        self.failed_calls += lines.iter().filter(|v| v["ok"] == false).count() as u64;
        let first = ok.first().map(|o| o.1);
        match ok.iter().position(|o| Some(o.1) != first) {
            Some(k) if k > 0 && done => {
                self.gaps.push(ok[k].0 - ok[k - 1].0);
                self.to_new.push(ok[k].0 - at);
            }
            _ => {
                let mut errors: Vec<&str> = lines.iter().filter_map(|v| v["error"].as_str()).collect();
                errors.dedup();
                errors.truncate(3);
                self.lost.push(format!("watcher on host {} (exited: {done}): no answer from a new instance; errors {errors:?}", client.index));
            }
        }
        h
    }

    fn row(self, figure: &str, target: &str, limit: f64) -> Row {
        let to_new = percentile(&sorted(self.to_new.clone()), 50.0);
        let lost = if self.lost.is_empty() { String::new() } else { format!("; {} reps never answered again: {:?}", self.lost.len(), self.lost) };
        let mut r = ms_row(
            format!(
                "{figure}; fault → first new answer {to_new:.0} ms p50; {} calls failed in all; the faulted host led the claims cluster in {} of {} reps{lost}",
                self.failed_calls,
                self.led,
                self.gaps.len() + self.lost.len()
            ),
            &self.gaps,
            target,
            |m| m <= limit,
        );
        if !self.lost.is_empty() {
            r.verdict = "MISSED";
        }
        r
    }
}
