//! craftmesh nodes running inside the hosts of a [`crate::netns::Rig`], driven through
//! the real CLI (`up`, `status`, `members`, `services`, `resolve`) inside each host.

use crate::netns::{Rig, Spawned};
use crate::{CmdOutput, ConfigDir};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Deadline of one CLI call against a node.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// A node in host `index` of a rig, with its own project, user and data dirs.
#[derive(Debug)]
pub struct MeshNode {
    pub index: usize,
    pub cfg: ConfigDir,
    pub proc: Option<Spawned>,
    pub peer_id: String,
    /// The binary `up` runs from (default: [`crate::craftmesh_bin`]); the bench swaps it.
    pub bin: Option<std::path::PathBuf>,
    args: Vec<String>,
}

/// Discovery config with no servers (nodes only mesh).
pub const EMPTY_CONFIG: &str = "settings:\n  discovery_interval: 2\nservers: {}\n";

/// A mesh key shared by every node this test process starts with [`MeshNode::start`]
/// (written once with `craftmesh keygen` into a temporary directory).
pub fn test_key() -> &'static str {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, String)> = std::sync::OnceLock::new();
    &KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir for the test mesh key");
        let path = dir.path().join("test-mesh.key");
        let out = crate::run_with_timeout(std::process::Command::new(crate::craftmesh_bin()).args(["keygen", "--out"]).arg(&path), Duration::from_secs(10));
        assert!(out.success(), "craftmesh keygen: {}", out.describe());
        (dir, path.to_string_lossy().into_owned())
    })
    .1
}

impl MeshNode {
    /// Starts `craftmesh up` in host `i` with `yaml` as its discovery config and `extra`
    /// arguments; waits until its API answers (panics after 30 s with the node's log).
    /// Nodes share the test process's mesh key ([`test_key`]) unless `extra` has
    /// `--mesh-key` or `--open`; [`MeshNode::start_exact`] adds no key.
    pub fn start(rig: &Rig, i: usize, yaml: &str, extra: &[&str]) -> MeshNode {
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.iter().any(|a| *a == "--mesh-key" || *a == "--open") {
            args.extend(["--mesh-key", test_key()]);
        }
        MeshNode::start_exact(rig, i, yaml, &args)
    }

    /// Starts `craftmesh up` with exactly `extra` (no mesh key added): a node as a user
    /// starts it, which makes or loads the key of its own data dir.
    pub fn start_exact(rig: &Rig, i: usize, yaml: &str, extra: &[&str]) -> MeshNode {
        MeshNode::start_in(rig, i, ConfigDir::new(yaml), extra)
    }

    /// Starts `craftmesh up` in host `i` on a prepared configuration (with launch entries in
    /// `.mcp/servers/`, say), with the test mesh key unless `extra` names one.
    pub fn start_cfg(rig: &Rig, i: usize, cfg: ConfigDir, extra: &[&str]) -> MeshNode {
        let mut args: Vec<&str> = extra.to_vec();
        if !extra.iter().any(|a| *a == "--mesh-key" || *a == "--open") {
            args.extend(["--mesh-key", test_key()]);
        }
        MeshNode::start_in(rig, i, cfg, &args)
    }

    fn start_in(rig: &Rig, i: usize, cfg: ConfigDir, extra: &[&str]) -> MeshNode {
        let mut n = MeshNode { index: i, cfg, proc: None, peer_id: String::new(), bin: None, args: extra.iter().map(|s| s.to_string()).collect() };
        n.restart(rig);
        n
    }

    /// (Re)starts the process with the same data dir (same identity).
    pub fn restart(&mut self, rig: &Rig) {
        let mut args: Vec<&str> = vec!["up"];
        if !self.args.iter().any(|a| a == "--api") {
            args.extend(["--api", "127.0.0.1:7410"]);
        }
        args.extend(self.args.iter().map(String::as_str));
        let mut cmd = match &self.bin {
            Some(bin) => self.cfg.command_with(bin, &args),
            None => self.cfg.command(&args),
        };
        cmd.env_remove("CRAFTMESH_NO_MESH");
        cmd.env("CRAFTMESH_LOG", "info,craftmesh=debug");
        let _ = std::fs::remove_file(self.cfg.data_dir().join("api.addr"));
        self.proc = Some(rig.host(self.index).spawn_command(&cmd).expect("spawn craftmesh up"));
        let start = Instant::now();
        loop {
            if let Some(v) = self.json(rig, &["status", "--json"]) {
                self.peer_id = v["node"]["peer_id"].as_str().unwrap_or_default().to_string();
                return;
            }
            if start.elapsed() > Duration::from_secs(30) || self.proc.as_mut().and_then(|p| p.try_wait()).is_some() {
                panic!("node {} did not come up:\n{}", self.index, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The API address this node was started with.
    pub fn api(&self) -> String {
        self.args.iter().position(|a| a == "--api").and_then(|i| self.args.get(i + 1)).cloned().unwrap_or_else(|| "127.0.0.1:7410".to_string())
    }

    /// Runs `craftmesh <args> --api <this node's API>` inside the node's host.
    pub fn cli(&self, rig: &Rig, args: &[&str]) -> CmdOutput {
        let api = self.api();
        let mut all: Vec<&str> = args.to_vec();
        if args.first() != Some(&"up") {
            all.extend(["--api", &api]);
        }
        let cmd = self.cfg.command(&all);
        crate::run_with_timeout(&mut rig.host(self.index).wrap(&cmd), CLI_TIMEOUT)
    }

    /// Runs a `--json` CLI command and parses stdout; `None` when it failed.
    pub fn json(&self, rig: &Rig, args: &[&str]) -> Option<Value> {
        let out = self.cli(rig, args);
        if !out.success() {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    /// `members --json`, as a list.
    pub fn members(&self, rig: &Rig) -> Vec<Value> {
        self.json(rig, &["members", "--json"]).and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }

    /// The state this node has for `peer` (`alive`, `suspect`, `dead`, `left`), if known.
    pub fn state_of(&self, rig: &Rig, peer: &str) -> Option<String> {
        self.members(rig).iter().find(|m| m["id"] == peer).and_then(|m| m["state"].as_str().map(str::to_string))
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default()
    }

    /// SIGTERM and wait (up to 10 s) for the exit code.
    pub fn terminate(&mut self, rig: &Rig) -> Option<i32> {
        let pid = self.pid();
        let _ = rig.host(self.index).run("kill", ["-TERM", &pid.to_string()], Duration::from_secs(5));
        self.proc.as_mut().and_then(|p| p.wait_timeout(Duration::from_secs(10))).and_then(|s| s.code())
    }
}

/// Waits (up to `timeout`) until every node in `nodes` reports the same claims cluster with
/// a leader and `voters` voters (`None`: any number).
pub fn wait_one_cluster(rig: &Rig, nodes: &[MeshNode], voters: Option<usize>, timeout: Duration) {
    wait_until("one claims cluster with a leader", timeout, || one_cluster(rig, nodes, voters).then_some(()));
}

/// Whether every node in `nodes` reports the same claims cluster with a leader and `voters`
/// voters (`None`: any number) right now.
pub fn one_cluster(rig: &Rig, nodes: &[MeshNode], voters: Option<usize>) -> bool {
    let views: Option<Vec<Value>> = nodes.iter().map(|n| n.json(rig, &["cluster", "--json"])).collect();
    views.is_some_and(|views| {
        let c = &views[0]["cluster"];
        c.is_string()
            && views.iter().all(|v| v["cluster"] == *c && v["leader"].is_object() && voters.is_none_or(|n| v["voters"].as_array().map(Vec::len) == Some(n)))
    })
}

/// Polls `f` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
