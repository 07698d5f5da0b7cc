//! Discovery that degrades instead of vanishing, and the small defects around it: a round
//! that hits `discovery_timeout` keeps what finished, a node keeps a server whose probes
//! time out, launch-entry URLs and HTTPS servers are checked, disabled servers do not
//! resolve, and an unsafe data dir is refused untouched.

use craftmesh_tests::meshnode::wait_until;
use craftmesh_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(60);

fn need_mcp_fixture() -> bool {
    require(&format!("python with the MCP SDK at {} (run tests/scripts/run-tests.sh, or set CRAFTMESH_TEST_PYTHON)", python().display()), python_has_mcp())
}

fn port_check(name: &str, port: u16) -> String {
    format!(
        "  {name}:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [{port}]
"
    )
}

/// Probes may take 5 s, a whole round only 1.5 s: a silent port always outlasts the round.
const SLOW_PROBES: &str = "settings:\n  health_check_timeout: 5\n  discovery_timeout: 1.5\n  discovery_interval: 1\nservers:\n";

/// GET with the node's API token (from its data dir, once `up` has written it).
fn http_get(cfg: &ConfigDir, addr: &str, path: &str) -> Option<(u16, String)> {
    if !cfg.data_dir().join("api.token").is_file() {
        return None;
    }
    craftmesh_tests::api::get(&cfg.data_dir(), addr, path).map(|a| (a.status, a.body))
}

/// `craftmesh up` with stderr to `log`.
fn start_node(cfg: &ConfigDir, api: &str, log: &Path) -> KillOnDrop {
    let logf = std::fs::File::create(log).expect("create node log");
    let child = cfg.command(&["up", "--api", api]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf).spawn().expect("spawn craftmesh up");
    KillOnDrop(child)
}

fn services(cfg: &ConfigDir) -> Option<Vec<Value>> {
    let out = cfg.run(&["services", "--json"], &[], STEP);
    if !out.success() {
        return None;
    }
    serde_json::from_str::<Value>(&out.stdout).ok()?.as_array().cloned()
}

fn healthy(list: &[Value], name: &str) -> bool {
    list.iter().any(|f| f["name"] == name && f["healthy"] == true)
}

fn rounds(cfg: &ConfigDir, api: &str) -> Option<u64> {
    let (_, body) = http_get(cfg, api, "/v1/node").filter(|(s, _)| *s == 200)?;
    serde_json::from_str::<Value>(&body).ok()?["stats"]["discovery_rounds"].as_u64()
}

#[test]
fn a_round_that_hits_discovery_timeout_keeps_the_servers_that_answered() {
    if !need_mcp_fixture() {
        return;
    }
    let live = McpServer::start("degrade-live");
    let hang = silent_server();
    let cfg = ConfigDir::new(&format!("{SLOW_PROBES}{}{}", port_check("live", live.port), port_check("hang", hang.port)));
    let d = cfg.discover_with(&[], STEP);
    let ctx = d.dump();
    assert_eq!(d.resolved("live"), Some(live.url().as_str()), "the server that answered is kept\n{ctx}");
    assert_eq!(d.server("live")["timed_out"], false, "{ctx}");
    let h = d.server("hang");
    assert_eq!(h["timed_out"], true, "the hanging server is marked timed out\n{ctx}");
    assert!(
        h["notes"].as_array().into_iter().flatten().any(|n| n.as_str().is_some_and(|n| n.contains("port_check") && n.contains("did not finish"))),
        "a note names the strategy that did not finish\n{ctx}"
    );
    assert_eq!(d.json["timed_out"], true, "{ctx}");
}

#[test]
fn a_node_keeps_a_server_whose_probes_time_out_and_does_not_call_it_lost() {
    if !need_mcp_fixture() {
        return;
    }
    let steady = McpServer::start("degrade-steady");
    let stalls = McpServer::start("degrade-stalls");
    let hang = silent_server();
    let cfg =
        ConfigDir::new(&format!("{SLOW_PROBES}{}{}{}", port_check("steady", steady.port), port_check("stalls", stalls.port), port_check("hang", hang.port)));
    let api = format!("127.0.0.1:{}", free_port());
    let log = cfg.scratch_dir().join("node.log");
    let mut node = start_node(&cfg, &api, &log);

    // Every round times out (the silent port), yet both MCP servers are listed.
    wait_until("both MCP servers to be listed healthy", STEP, || services(&cfg).filter(|l| healthy(l, "steady") && healthy(l, "stalls")));

    // Freeze one server: the kernel still accepts connections, nothing answers.
    let stop = Command::new("kill").args(["-STOP", &stalls.pid().to_string()]).status().expect("kill -STOP");
    assert!(stop.success());
    let before = wait_until("the round counter", STEP, || rounds(&cfg, &api));
    wait_until("two more discovery rounds", STEP, || rounds(&cfg, &api).filter(|r| *r >= before + 2));
    let list = services(&cfg).expect("services");
    let _ = Command::new("kill").args(["-CONT", &stalls.pid().to_string()]).status();
    assert!(healthy(&list, "steady"), "the server that answers stays listed: {list:#?}");
    assert!(healthy(&list, "stalls"), "the frozen server's last known instance is kept: {list:#?}");

    let _ = Command::new("kill").args(["-TERM", &node.pid().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("service lost"), "a server whose probes timed out is not lost\n{text}");
    assert!(text.contains("keeping what finished"), "the round's timeout is logged\n{text}");
    assert!(text.contains("keeping the last known instance"), "the kept instance is logged\n{text}");
}

#[test]
fn a_launch_entry_url_is_probed_as_an_external_deployment() {
    if !need_mcp_fixture() {
        return;
    }
    let remote = McpServer::start("degrade-launch-url");
    let cfg = ConfigDir::new("servers: {}\n").with_servers_json("remote", &format!(r#"{{"mcpServers": {{"remote": {{"url": "{}"}}}}}}"#, remote.url()));
    let d = cfg.discover();
    let ctx = d.dump();
    let f = d.the_finding("remote", "the launch url's finding", |f| f["source"] == "launch_url");
    assert_eq!(f["tier"], "external_deployment", "{ctx}");
    assert_eq!(f["status"], "healthy", "{ctx}");
    assert_eq!(f["server_info"]["name"], "degrade-launch-url", "{ctx}");
    assert_eq!(d.resolved("remote"), Some(remote.url().as_str()), "{ctx}");
}

#[test]
fn resolve_of_a_disabled_server_says_it_is_disabled() {
    if !need_mcp_fixture() {
        return;
    }
    let mcp = McpServer::start("degrade-disabled");
    let cfg = ConfigDir::new(&format!("settings:\n  discovery_interval: 1\nservers:\n{}", port_check("off", mcp.port)))
        .with_servers_json("off", r#"{"mcpServers": {"off": {"command": "true", "enabled": false}}}"#);
    let api = format!("127.0.0.1:{}", free_port());
    let log = cfg.scratch_dir().join("node.log");
    let _node = start_node(&cfg, &api, &log);
    wait_until("a first discovery round", STEP, || rounds(&cfg, &api).filter(|r| *r >= 1));
    let out = cfg.run(&["resolve", "off"], &[], STEP);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("disabled"), "the error says the server is disabled\n{}", out.describe());
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` CLI.
fn test_ca(dir: &Path) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let p = |n: &str| dir.join(n);
    let ext = p("ext.cnf");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        .ok()?;
    let s = |args: &[&str]| run_with_timeout(Command::new("openssl").args(args).current_dir(dir), Duration::from_secs(60)).success();
    let ok = s(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=craftmesh test CA"])
        && s(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"])
        && s(&[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
    ok.then(|| (p("ca.pem"), p("srv.pem"), p("srv.key")))
}

#[test]
fn an_https_mcp_server_is_healthy_when_its_ca_is_trusted_and_refused_otherwise() {
    if !need_mcp_fixture() {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    let made = test_ca(certs.path());
    if !require("the openssl CLI to make a test CA", made.is_some()) {
        return;
    }
    let (ca, cert, key) = made.expect("checked");
    let server = McpServer::start_tls("degrade-tls", &cert, &key);
    let url = format!("https://127.0.0.1:{}/mcp", server.port);
    let cfg = ConfigDir::new("servers: {}\n").with_servers_json("tls", &format!(r#"{{"mcpServers": {{"tls": {{"url": "{url}"}}}}}}"#));

    let ca_path = ca.display().to_string();
    let d = cfg.discover_with(&[("SSL_CERT_FILE", ca_path.as_str())], STEP);
    let ctx = format!("{}\nfixture log:\n{}", d.dump(), server.log_text());
    let f = d.the_finding("tls", "the https finding", |f| f["source"] == "launch_url");
    assert_eq!(f["status"], "healthy", "{ctx}");
    assert_eq!(f["protocol"], "mcp", "{ctx}");
    assert_eq!(d.resolved("tls"), Some(url.as_str()), "{ctx}");

    // Without the CA: not healthy, and the reason names the certificate.
    let empty = certs.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    let d = cfg.discover_with(
        &[("SSL_CERT_FILE", empty.display().to_string().as_str()), ("SSL_CERT_DIR", certs.path().join("none").to_str().unwrap_or("/nonexistent"))],
        STEP,
    );
    let ctx = d.dump();
    let f = d.the_finding("tls", "the https finding", |f| f["source"] == "launch_url");
    assert_eq!(f["healthy"], false, "{ctx}");
    assert!(f["detail"].as_str().is_some_and(|t| t.to_lowercase().contains("certificate")), "the detail names the certificate\n{ctx}");
    assert_eq!(d.resolved("tls"), None, "{ctx}");
}

#[test]
fn a_world_writable_data_dir_is_refused_and_left_as_it_is() {
    use std::os::unix::fs::PermissionsExt as _;
    let cfg = ConfigDir::new("servers: {}\n");
    let open = cfg.scratch_dir().join("shared");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let out = cfg.run(&["up", "--api", "127.0.0.1:0", "--data-dir", open.to_str().expect("utf-8")], &[], STEP);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("writable by every user"), "{}", out.describe());
    let mode = std::fs::metadata(&open).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "the data dir's mode is not changed");
}
