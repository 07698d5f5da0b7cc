//! `craftmesh up` as a user runs it: the API, the CLI finding it without flags, resolve
//! with re-verification, one node per data dir, a stable identity, clean SIGTERM.

use craftmesh_tests::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(30);

fn config_for(mcp_port: u16, dead_port: u16) -> ConfigDir {
    ConfigDir::new(&format!(
        r#"
settings:
  health_check_timeout: 3
  cache_ttl_minutes: 5
  discovery_interval: 2
servers:
  live-mcp:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [{mcp_port}]
  ghost:
    discovery_strategies:
      external:
        - type: port_check
          ports: [{dead_port}]
"#
    ))
}

fn start_node(cfg: &ConfigDir, api: &str) -> KillOnDrop {
    let mut cmd = cfg.command(&["up", "--api", api]);
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn craftmesh up");
    KillOnDrop(child)
}

/// GET with the node's token; returns (status, body).
fn http_get(cfg: &ConfigDir, addr: &str, path: &str) -> Option<(u16, String)> {
    if !cfg.data_dir().join("api.token").is_file() {
        return None;
    }
    craftmesh_tests::api::get(&cfg.data_dir(), addr, path).map(|a| (a.status, a.body))
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(node: &mut KillOnDrop) -> Option<i32> {
    let pid = node.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = node.0.try_wait() {
            return st.code();
        }
        if start.elapsed() > Duration::from_secs(15) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn node_serves_services_and_resolve_reverifies_before_answering() {
    if !require("python with the mcp SDK", python_has_mcp()) {
        return;
    }
    let mut mcp = Some(McpServer::start("node-up-fixture"));
    let mcp_port = mcp.as_ref().map(|m| m.port).expect("started");
    let cfg = config_for(mcp_port, free_port());
    let api = format!("127.0.0.1:{}", free_port());
    let mut node = start_node(&cfg, &api);

    // /v1/node answers with an identity.
    let node_json: Value = wait_until("the API to answer /v1/node", STEP, || {
        http_get(&cfg, &api, "/v1/node").filter(|(s, _)| *s == 200).and_then(|(_, b)| serde_json::from_str(&b).ok())
    });
    let peer_id = node_json["node"]["peer_id"].as_str().expect("peer_id").to_string();
    assert!(peer_id.len() > 40, "peer id looks like a libp2p id: {peer_id}");
    assert!(cfg.data_dir().join("node.key").is_file());

    // The CLI finds the node through the data dir (no --api), and lists the live server.
    let services = wait_until("`craftmesh services --json` to list the live server", STEP, || {
        let out = cfg.run(&["services", "--json"], &[], STEP);
        if !out.success() {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        let list = v.as_array()?.clone();
        list.iter().any(|f| f["name"] == "live-mcp" && f["healthy"] == true).then_some(list)
    });
    let live = services.iter().find(|f| f["name"] == "live-mcp").expect("listed");
    assert_eq!(live["protocol"], "mcp");
    assert_eq!(live["server_info"]["name"], "node-up-fixture");
    assert!(services.iter().all(|f| f["name"] != "ghost"), "a closed port is not a service: {services:?}");

    // resolve prints the URL and exits 0.
    let out = cfg.run(&["resolve", "live-mcp"], &[], STEP);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout.trim(), format!("http://127.0.0.1:{mcp_port}/mcp"));

    // Names that do not resolve exit non-zero with a message.
    let out = cfg.run(&["resolve", "ghost"], &[], STEP);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.contains("no healthy instance"), "{}", out.describe());
    let out = cfg.run(&["resolve", "no-such-server"], &[], STEP);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.contains("no server named"), "{}", out.describe());

    // A second node on the same data dir is refused.
    let out = cfg.run(&["up", "--api", &format!("127.0.0.1:{}", free_port())], &[], STEP);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.contains("already running"), "{}", out.describe());

    // The cached answer is re-verified: once the server is gone, resolve says so at once,
    // even though the last discovery round (cache) still lists it as healthy.
    drop(mcp.take());
    let out = cfg.run(&["resolve", "live-mcp"], &[], STEP);
    assert_ne!(out.code(), Some(0), "a dead server must not resolve\n{}", out.describe());

    // SIGTERM: clean exit, API address file removed.
    assert_eq!(terminate(&mut node), Some(0), "node exits 0 on SIGTERM");
    assert!(!cfg.data_dir().join("api.addr").exists(), "api.addr removed on shutdown");

    // Restart: same identity.
    let mut node = start_node(&cfg, &api);
    let again: Value =
        wait_until("the restarted API", STEP, || http_get(&cfg, &api, "/v1/node").filter(|(s, _)| *s == 200).and_then(|(_, b)| serde_json::from_str(&b).ok()));
    assert_eq!(again["node"]["peer_id"].as_str(), Some(peer_id.as_str()), "identity persists across restarts");
    assert_eq!(terminate(&mut node), Some(0));
}

#[test]
fn cli_without_a_node_says_how_to_start_one() {
    let cfg = ConfigDir::new("servers: {}\n");
    let out = cfg.run(&["services", "--api", &format!("127.0.0.1:{}", free_port())], &[], STEP);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert!(out.stderr.contains("craftmesh up"), "{}", out.describe());
}

#[test]
fn a_bad_log_filter_is_a_clear_error_before_anything_starts() {
    let cfg = ConfigDir::new("servers: {}\n");
    let out = run_with_timeout(cfg.command(&["up", "--api", "127.0.0.1:0"]).env("CRAFTMESH_LOG", "info,craftmesh=loud"), STEP);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("CRAFTMESH_LOG") && out.stderr.contains("craftmesh=loud"),
        "the error should name the variable and the value\n{}",
        out.describe()
    );
    assert!(!cfg.data_dir().join("api.addr").exists(), "the node should not have started\n{}", out.describe());
}
