//! Helpers of the claims rig tests: the rig and its servers, cluster waits, the CLI, clocks and `claim run`.

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, Spawned, netns_available};
use craftmesh_tests::{CmdOutput, require, run_with_timeout};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub(crate) const FORM: Duration = Duration::from_secs(30);

pub(crate) fn rig(n: usize) -> Option<Rig> {
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return None;
    }
    Some(Rig::new(n).expect("build the rig"))
}

/// Starts servers in hosts 0..n.
pub(crate) fn servers(rig: &Rig, n: usize) -> Vec<MeshNode> {
    (0..n).map(|i| MeshNode::start(rig, i, EMPTY_CONFIG, &["--role", "server"])).collect()
}

/// Waits until every node reports the same cluster with a leader and `voters` voters.
pub(crate) fn one_cluster(rig: &Rig, nodes: &[&MeshNode], voters: usize) -> String {
    let start = Instant::now();
    loop {
        let views: Option<Vec<Value>> = nodes.iter().map(|n| n.json(rig, &["cluster", "--json"])).collect();
        if let Some(views) = &views
            && let Some(c) = views[0]["cluster"].as_str()
            && views.iter().all(|v| v["cluster"] == c && v["leader"].is_object() && v["voters"].as_array().map(Vec::len) == Some(voters))
        {
            return c.to_string();
        }
        assert!(start.elapsed() < FORM, "no one cluster with a leader and {voters} voters within {FORM:?}: {views:#?}\n{}", logs(nodes));
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn logs(nodes: &[&MeshNode]) -> String {
    nodes.iter().map(|n| format!("--- node {} ---\n{}", n.index, n.log())).collect::<Vec<_>>().join("\n")
}

pub(crate) fn all(nodes: &[MeshNode]) -> Vec<&MeshNode> {
    nodes.iter().collect()
}

/// The index (in `nodes`) of the leader, as `asked` reports it.
pub(crate) fn leader_of(rig: &Rig, nodes: &[MeshNode], asked: usize) -> usize {
    wait_until("a leader", FORM, || {
        let v = nodes[asked].json(rig, &["cluster", "--json"])?;
        let peer = v["leader"]["peer"].as_str()?;
        nodes.iter().position(|n| n.peer_id == peer)
    })
}

/// `craftmesh <args> --api <node's API>` inside the node's host, killed at `timeout`.
pub(crate) fn cli(rig: &Rig, n: &MeshNode, args: &[&str], timeout: Duration) -> CmdOutput {
    let api = n.api();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api", &api]);
    run_with_timeout(&mut rig.host(n.index).wrap(&n.cfg.command(&all)), timeout)
}

/// Parses the JSON a `--json` command printed; panics with the command's output otherwise.
pub(crate) fn parse(out: &CmdOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", out.describe()))
}

/// `claim acquire KEY <extra> --json` through `nodes[i]`; the answer (granted or refused).
/// Panics with every node's log when there is none.
pub(crate) fn acquire(rig: &Rig, nodes: &[MeshNode], i: usize, key: &str, extra: &[&str]) -> Value {
    let mut args = vec!["claim", "acquire", key, "--json"];
    args.extend(extra);
    let out = cli(rig, &nodes[i], &args, Duration::from_secs(90));
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("no answer to an acquire ({e})\n{}\n{}", out.describe(), logs(&all(nodes))))
}

/// The token of a granted answer; panics with the answer otherwise.
pub(crate) fn granted(answer: &Value) -> u64 {
    assert_eq!(answer["granted"], true, "expected a grant: {answer:#}");
    answer["token"].as_u64().unwrap_or_else(|| panic!("a grant without a token: {answer:#}"))
}

/// `claim list --json` through `n`.
pub(crate) fn list(rig: &Rig, n: &MeshNode) -> Value {
    let out = cli(rig, n, &["claim", "list", "--json"], Duration::from_secs(30));
    assert!(out.success(), "claim list failed\n{}", out.describe());
    parse(&out)
}

/// The holders (`{holder, expires_in_ms}`) of `key` in a `claim list` answer.
pub(crate) fn holders(list: &Value, key: &str) -> Vec<Value> {
    list["keys"].as_array().and_then(|ks| ks.iter().find(|k| k["key"] == key)).and_then(|k| k["holders"].as_array().cloned()).unwrap_or_default()
}

pub(crate) fn clock_ns(id: nix::time::ClockId) -> i128 {
    let t = nix::time::clock_gettime(id).expect("clock_gettime");
    i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
}

/// A time on the lease clock (CLOCK_BOOTTIME, ms), as CLOCK_REALTIME nanoseconds.
pub(crate) fn boot_ms_to_realtime_ns(boot_ms: u64) -> i128 {
    let offset = clock_ns(nix::time::ClockId::CLOCK_REALTIME) - clock_ns(nix::time::ClockId::CLOCK_BOOTTIME);
    i128::from(boot_ms) * 1_000_000 + offset
}

pub(crate) fn realtime_ns() -> i128 {
    clock_ns(nix::time::ClockId::CLOCK_REALTIME)
}

/// Sends `sig` to process group `pgid`.
pub(crate) fn signal_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// `craftmesh claim run KEY ... -- sh -c HEARTBEAT` in a node's host. The child writes its
/// pid (its process group: `claim run` gives it a group of its own) and then, every 20 ms,
/// a CLOCK_REALTIME stamp in nanoseconds: the stamps are what it did while it ran.
pub(crate) struct ClaimRun {
    pub(crate) proc: Spawned,
    dir: PathBuf,
    key: String,
}

impl ClaimRun {
    pub(crate) fn start(rig: &Rig, n: &MeshNode, key: &str, extra: &[&str]) -> ClaimRun {
        let dir = n.cfg.scratch_dir().join(format!("run-{}", craftmesh_tests::random_suffix()));
        std::fs::create_dir_all(&dir).expect("heartbeat dir");
        let script = format!("echo $$ > '{d}/pid'; while :; do date +%s%N >> '{d}/beats'; sleep 0.02; done", d = dir.display());
        let api = n.api();
        let mut args = vec!["claim", "run", key, "--api", &api];
        args.extend(extra);
        args.extend(["--", "sh", "-c", &script]);
        let proc = rig.host(n.index).spawn_command(&n.cfg.command(&args)).expect("spawn claim run");
        ClaimRun { proc, dir, key: key.to_string() }
    }

    /// Waits until the child runs with the claim; returns its token.
    pub(crate) fn token(&mut self, timeout: Duration) -> u64 {
        let needle = format!("holding {} with token ", self.key);
        assert!(self.proc.wait_for_log(&needle, timeout), "claim run did not get {} within {timeout:?}\n{}", self.key, self.proc.describe());
        let log = self.proc.log_text();
        let at = log.find(&needle).map(|i| i + needle.len()).unwrap_or(0);
        log[at..].split(|c: char| !c.is_ascii_digit()).next().and_then(|t| t.parse().ok()).expect("a token in the log")
    }

    /// The child's process group (its pid), once it wrote it.
    pub(crate) fn child_group(&self) -> i32 {
        wait_until("the child's pid", Duration::from_secs(10), || std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok())
    }

    /// The child's heartbeat stamps so far (CLOCK_REALTIME ns); a torn last line is skipped.
    pub(crate) fn beats(&self) -> Vec<i128> {
        std::fs::read_to_string(self.dir.join("beats")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    pub(crate) fn wait_for_beats(&self) {
        wait_until("the child's first heartbeats", Duration::from_secs(10), || (self.beats().len() >= 3).then_some(()));
    }
}

/// Waits until every node reports the same cluster, with a leader; returns its id.
pub(crate) fn same_cluster(rig: &Rig, nodes: &[&MeshNode], timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let views: Option<Vec<Value>> = nodes.iter().map(|n| n.json(rig, &["cluster", "--json"])).collect();
        if let Some(views) = &views
            && let Some(c) = views[0]["cluster"].as_str()
            && views.iter().all(|v| v["cluster"] == c && v["leader"].is_object())
        {
            return c.to_string();
        }
        assert!(start.elapsed() < timeout, "the nodes are not in one cluster with a leader within {timeout:?}: {views:#?}\n{}", logs(nodes));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `n` acquires of `key` at once, spread over the hosts, and returns the answers.
pub(crate) fn acquire_many(rig: &Rig, nodes: &[MeshNode], key: &str, n: usize, extra: &[&str]) -> Vec<Value> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|i| s.spawn(move || acquire(rig, nodes, i % nodes.len(), key, extra))).collect();
        hs.into_iter().map(|h| h.join().expect("acquire thread")).collect()
    })
}

/// `(key, token, node, session)` of every holder in a `claim list` answer, sorted.
pub(crate) fn claims_of(list: &Value) -> Vec<(String, u64, String, String)> {
    let mut v: Vec<_> = list["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|k| {
            k["holders"].as_array().into_iter().flatten().map(move |h| {
                let h = &h["holder"];
                (
                    k["key"].as_str().unwrap_or_default().to_string(),
                    h["token"].as_u64().unwrap_or(0),
                    h["node"].as_str().unwrap_or_default().to_string(),
                    h["session"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    v.sort();
    v
}
