//! `craftmesh discover --once --json` against real MCP servers, plain HTTP, hostile ports,
//! processes, environment variables and lock files; and `craftmesh config check`.
//!
//! Every test runs the real binary with only its own configuration (see `ConfigDir`).

use craftmesh_tests::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

fn port_check_yaml(server: &str, ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "servers:
  {server}:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [{}]
          health_endpoint: /health
          mcp_path: /mcp
",
        ports.join(", ")
    )
}

fn need_mcp_fixture() -> bool {
    require(&format!("python with the MCP SDK at {} (run tests/scripts/run-tests.sh, or set CRAFTMESH_TEST_PYTHON)", python().display()), python_has_mcp())
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v[key].as_str()
}

#[test]
fn real_mcp_server_is_found_by_port_check_and_verified() {
    if !need_mcp_fixture() {
        return;
    }
    let server = McpServer::start("craftmesh-fixture-alpha");
    let cfg = ConfigDir::new(&port_check_yaml("test-mcp", &[server.port]));
    let d = cfg.discover();

    let f = d.finding_on_port("test-mcp", server.port).unwrap_or_else(|| panic!("no finding with evidence.port {}\n{}", server.port, d.dump()));
    let ctx = d.dump();
    assert_eq!(f["source"], "port_check", "{ctx}");
    assert_eq!(f["tier"], "external_deployment", "{ctx}");
    assert_eq!(f["protocol"], "mcp", "{ctx}");
    assert_eq!(f["status"], "healthy", "{ctx}");
    assert_eq!(f["healthy"], true, "{ctx}");
    assert_eq!(f["server_info"]["name"], server.name.as_str(), "{ctx}");
    assert!(str_of(&f["server_info"], "protocol_version").is_some_and(|v| !v.is_empty()), "server_info.protocol_version should be set\n{ctx}");
    assert_eq!(f["tools"]["count"], McpServer::TOOLS.len(), "{ctx}");
    assert!(str_of(&f["tools"], "hash").is_some_and(|h| !h.is_empty()), "tools.hash should be non-empty\n{ctx}");
    let url = str_of(f, "url").unwrap_or_else(|| panic!("finding has no url\n{ctx}"));
    assert!(url.contains(&format!(":{}", server.port)), "url {url} should name port {}\n{ctx}", server.port);
    assert_eq!(d.resolved("test-mcp"), Some(url), "resolved should be the healthy finding's url\n{ctx}");
}

#[test]
fn plain_http_port_is_reported_not_mcp() {
    let http = plain_http_server();
    let cfg = ConfigDir::new(&port_check_yaml("test-mcp", &[http.port]));
    let d = cfg.discover();

    let f = d.finding_on_port("test-mcp", http.port).unwrap_or_else(|| panic!("an open HTTP port should yield a finding\n{}", d.dump()));
    let ctx = d.dump();
    assert_eq!(f["status"], "not_mcp", "{ctx}");
    assert_eq!(f["protocol"], "http", "{ctx}");
    assert_eq!(f["healthy"], false, "{ctx}");
    assert!(f["server_info"].is_null(), "{ctx}");
    assert!(f["tools"].is_null(), "{ctx}");
    assert_eq!(d.resolved("test-mcp"), None, "a non-MCP port must not resolve an MCP server\n{ctx}");
}

#[test]
fn plain_http_service_declared_http_is_healthy() {
    let http = plain_http_server();
    let cfg = ConfigDir::new(&port_check_yaml("web", &[http.port]))
        .with_servers_json("core", r#"{ "mcpServers": { "web": { "command": "web-service", "health_check": { "type": "http", "endpoint": "/health" } } } }"#);
    let d = cfg.discover();

    let f = d.finding_on_port("web", http.port).unwrap_or_else(|| panic!("an open HTTP port should yield a finding\n{}", d.dump()));
    let ctx = d.dump();
    assert_eq!(f["protocol"], "http", "{ctx}");
    assert_eq!(f["status"], "healthy", "{ctx}");
    assert_eq!(f["healthy"], true, "{ctx}");
    let url = str_of(f, "url").unwrap_or_else(|| panic!("finding has no url\n{ctx}"));
    assert!(url.contains(&format!(":{}", http.port)), "{ctx}");
    assert_eq!(d.resolved("web"), Some(url), "{ctx}");
}

#[test]
fn closed_port_is_absent() {
    let port = free_port();
    let cfg = ConfigDir::new(&port_check_yaml("test-mcp", &[port]));
    let d = cfg.discover();

    assert!(d.findings("test-mcp").is_empty(), "a closed port must yield no finding\n{}", d.dump());
    assert_eq!(d.resolved("test-mcp"), None, "{}", d.dump());
}

#[test]
fn process_check_finds_a_spawned_process() {
    let marker = format!("craftmesh-probe-{}", random_suffix());
    let py = if python().exists() { python() } else { "python3".into() };
    let probe = KillOnDrop(
        Command::new(&py)
            .args(["-c", "import time; time.sleep(300)", &marker])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", py.display())),
    );
    let cfg = ConfigDir::new(&format!(
        "servers:
  probe:
    priority_order: [user_installation]
    discovery_strategies:
      user:
        - type: process_check
          patterns: [\"{marker}\"]
"
    ));
    let d = cfg.discover();

    let ctx = d.dump();
    let f = d.the_finding("probe", "for the probe process", |f| f["evidence"]["pid"] == probe.pid());
    assert_eq!(f["source"], "process_check", "{ctx}");
    assert_eq!(f["tier"], "user_installation", "{ctx}");
    assert_eq!(f["status"], "running", "{ctx}");
    assert_eq!(f["evidence"]["pattern"], marker.as_str(), "{ctx}");
    // Only the probe carries the marker; nothing else may match.
    assert_eq!(d.findings("probe").len(), 1, "{ctx}");
}

#[test]
fn env_variable_points_at_live_and_dead_urls() {
    if !need_mcp_fixture() {
        return;
    }
    let server = McpServer::start("craftmesh-fixture-env");
    let dead_port = free_port();
    let live_var = format!("CRAFTMESH_TEST_LIVE_{}", random_suffix().to_uppercase());
    let dead_var = format!("CRAFTMESH_TEST_DEAD_{}", random_suffix().to_uppercase());
    let base_var = format!("CRAFTMESH_TEST_BASE_{}", random_suffix().to_uppercase());
    let cfg = ConfigDir::new(&format!(
        "servers:
  live-env:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: env_variable
          variables: [{live_var}]
          mcp_path: /mcp
  base-env:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: env_variable
          variables: [{base_var}]
          mcp_path: /mcp
  dead-env:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: env_variable
          variables: [{dead_var}]
          mcp_path: /mcp
"
    ));
    let live_url = server.url();
    let dead_url = format!("http://127.0.0.1:{dead_port}/mcp");
    // A URL without a path names the server; `mcp_path` says where its endpoint is.
    let base_url = server.base_url();
    let d = cfg.discover_with(&[(&live_var, &live_url), (&dead_var, &dead_url), (&base_var, &base_url)], DEFAULT_RUN_TIMEOUT);
    let ctx = d.dump();

    let live = d.the_finding("live-env", "from the live variable", |f| f["evidence"]["env_var"] == live_var.as_str());
    assert_eq!(live["source"], "env_variable", "{ctx}");
    assert_eq!(live["protocol"], "mcp", "{ctx}");
    assert_eq!(live["status"], "healthy", "{ctx}");
    assert_eq!(live["healthy"], true, "{ctx}");
    assert_eq!(live["server_info"]["name"], server.name.as_str(), "{ctx}");
    assert_eq!(live["tools"]["count"], McpServer::TOOLS.len(), "{ctx}");
    assert_eq!(live["url"], live_url.as_str(), "{ctx}");
    assert_eq!(d.resolved("live-env"), Some(live_url.as_str()), "{ctx}");

    let base = d.the_finding("base-env", "from the base-URL variable", |f| f["evidence"]["env_var"] == base_var.as_str());
    assert_eq!(base["status"], "healthy", "{ctx}");
    assert_eq!(base["protocol"], "mcp", "{ctx}");
    assert_eq!(base["url"], live_url.as_str(), "mcp_path should be appended to a bare URL\n{ctx}");

    let dead = d.the_finding("dead-env", "from the dead variable", |f| f["evidence"]["env_var"] == dead_var.as_str());
    assert_eq!(dead["source"], "env_variable", "{ctx}");
    assert_eq!(dead["status"], "unreachable", "{ctx}");
    assert_eq!(dead["healthy"], false, "{ctx}");
    assert_eq!(dead["url"], dead_url.as_str(), "{ctx}");
    assert_eq!(d.resolved("dead-env"), None, "{ctx}");
}

#[test]
fn lock_file_url_is_verified_not_trusted() {
    if !need_mcp_fixture() {
        return;
    }
    let server = McpServer::start("craftmesh-fixture-lock");
    let dead_port = free_port();
    let live_url = server.url();
    let dead_url = format!("http://127.0.0.1:{dead_port}/mcp");
    let cfg = ConfigDir::new("servers: {}\n");
    let locks = cfg.scratch_dir().join("locks");
    std::fs::create_dir_all(&locks).expect("create lock dir");
    let live_lock = locks.join("live-1.lock");
    let dead_lock = locks.join("dead-1.lock");
    // A lock file holds the URL of the running instance.
    std::fs::write(&live_lock, format!("{live_url}\n")).expect("write lock");
    std::fs::write(&dead_lock, format!("{dead_url}\n")).expect("write lock");
    cfg.write_file(
        ".mcp/discovery-config.yaml",
        &format!(
            "servers:
  live-lock:
    priority_order: [user_installation]
    discovery_strategies:
      user:
        - type: lock_file
          patterns: [\"{dir}/live-*.lock\"]
          mcp_path: /mcp
  dead-lock:
    priority_order: [user_installation]
    discovery_strategies:
      user:
        - type: lock_file
          patterns: [\"{dir}/dead-*.lock\"]
          mcp_path: /mcp
",
            dir = locks.display()
        ),
    );
    let d = cfg.discover();
    let ctx = d.dump();

    let live = d.the_finding("live-lock", "from the live lock file", |f| f["source"] == "lock_file");
    assert_eq!(live["evidence"]["lock_path"], live_lock.to_string_lossy().as_ref(), "{ctx}");
    assert_eq!(live["protocol"], "mcp", "{ctx}");
    assert_eq!(live["status"], "healthy", "{ctx}");
    assert_eq!(live["healthy"], true, "{ctx}");
    assert_eq!(live["server_info"]["name"], server.name.as_str(), "{ctx}");
    assert_eq!(live["url"], live_url.as_str(), "{ctx}");
    assert_eq!(d.resolved("live-lock"), Some(live_url.as_str()), "{ctx}");

    let dead = d.the_finding("dead-lock", "from the dead lock file", |f| f["source"] == "lock_file");
    assert_eq!(dead["evidence"]["lock_path"], dead_lock.to_string_lossy().as_ref(), "{ctx}");
    assert_eq!(dead["status"], "unreachable", "{ctx}");
    assert_eq!(dead["healthy"], false, "{ctx}");
    assert_eq!(dead["url"], dead_url.as_str(), "{ctx}");
    assert_eq!(d.resolved("dead-lock"), None, "a lock file's URL must be verified, not trusted\n{ctx}");
}

#[test]
fn slow_and_hostile_ports_end_within_the_timeout() {
    let silent = silent_server();
    let flood = flood_server();
    let garbage = garbage_server();
    let mut yaml = String::from("settings:\n  health_check_timeout: 1\nservers:\n");
    for (name, port) in [("silent", silent.port), ("flood", flood.port), ("garbage", garbage.port)] {
        yaml.push_str(&format!(
            "  {name}:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [{port}]
          health_endpoint: /health
          mcp_path: /mcp
"
        ));
    }
    let cfg = ConfigDir::new(&yaml);
    // The point is that the round ends at all, well before our kill; timing is the bench's job.
    let d = cfg.discover_with(&[], Duration::from_secs(20));
    let ctx = d.dump();

    for (name, port) in [("silent", silent.port), ("flood", flood.port), ("garbage", garbage.port)] {
        for f in d.findings(name) {
            assert_eq!(f["healthy"], false, "`{name}` must not be healthy\n{ctx}");
            assert_ne!(f["status"], "healthy", "`{name}` must not be healthy\n{ctx}");
        }
        assert_eq!(d.resolved(name), None, "`{name}` must not resolve\n{ctx}");
        // The port accepts connections, so it is reported, as not working.
        let f = d.finding_on_port(name, port).unwrap_or_else(|| panic!("`{name}` accepts TCP on {port} and should be reported\n{ctx}"));
        assert!(matches!(f["status"].as_str(), Some("unhealthy" | "not_mcp")), "`{name}` should be unhealthy or not_mcp, got {}\n{ctx}", f["status"]);
    }
    // protocol/src/report.rs: `unhealthy` is "reachable but failed its check (... timeout after
    // connect)"; `not_mcp` means it *answered*, but not as MCP. A port that accepts and never
    // answers may be a hung MCP server, so it must not be called `not_mcp`.
    let f = d.finding_on_port("silent", silent.port).expect("checked above");
    assert_eq!(f["status"], "unhealthy", "a silent port timed out after connect\n{ctx}");
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).expect("needle in text")
}

#[test]
fn config_check_reports_file_and_line() {
    let broken = "servers:
  broken:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [0]
          mcp_path: /mcp
";
    let cfg = ConfigDir::new(broken);
    let out = cfg.run(&["config", "check", "--json"], &[], DEFAULT_RUN_TIMEOUT);
    assert!(!out.timed_out, "{}", out.describe());
    assert!(out.code().is_some_and(|c| c != 0), "config check on a broken file should exit non-zero\n{}", out.describe());
    let json: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("`config check --json` should print JSON: {e}\n{}", out.describe()));
    let errors = json["errors"].as_array().unwrap_or_else(|| panic!("the JSON should have errors[]\n{}", out.describe()));
    let e = errors
        .iter()
        .find(|e| e["field"].as_str().is_some_and(|f| f.contains("ports")))
        .unwrap_or_else(|| panic!("an error about `ports` should be reported\n{}", out.describe()));
    let file = e["file"].as_str().unwrap_or_else(|| panic!("error without file\n{}", out.describe()));
    assert!(file.ends_with("discovery-config.yaml"), "file {file} should be the discovery file\n{}", out.describe());
    assert_eq!(e["line"].as_u64(), Some(line_of(broken, "ports: [0]") as u64), "the error should point at the `ports` line\n{}", out.describe());
    assert_eq!(e["field"], "servers.broken.discovery_strategies.external[0].ports", "{}", out.describe());

    let ok = ConfigDir::new(&port_check_yaml("fine", &[free_port()]));
    let out = ok.run(&["config", "check", "--json"], &[], DEFAULT_RUN_TIMEOUT);
    assert_eq!(out.code(), Some(0), "config check on a valid file should exit 0\n{}", out.describe());
    let json: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("`config check --json` should print JSON: {e}\n{}", out.describe()));
    assert!(json["errors"].as_array().is_some_and(|a| a.is_empty()), "a valid config should have no errors\n{}", out.describe());
}

#[test]
fn config_errors_make_discover_exit_2() {
    let cfg = ConfigDir::new("settings:\n  health_check_timeout: -5\nservers: {}\n");
    let out = cfg.run(&["discover", "--once", "--json"], &[], DEFAULT_RUN_TIMEOUT);
    assert!(!out.timed_out, "{}", out.describe());
    assert_eq!(out.code(), Some(2), "discover with a config error should exit 2\n{}", out.describe());
}
