//! `/v1/events`: server-sent events with exactly one `kind` per event, and that kind as
//! the SSE event name.

use craftmesh_tests::*;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(30);

/// Subscribes to `/v1/events` (HTTP/1.0, so the body is the raw event text) and collects
/// what arrives in the background, up to 1 MiB.
fn subscribe(cfg: &ConfigDir, addr: &str) -> Arc<Mutex<String>> {
    let token = api::token(&cfg.data_dir());
    let mut s = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(2)).expect("connect");
    write!(s, "GET /v1/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n").expect("send");
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let text = Arc::new(Mutex::new(String::new()));
    let out = text.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let mut t = out.lock().expect("lock");
                    if t.len() > 1 << 20 {
                        return;
                    }
                    t.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    });
    text
}

/// The events so far: (SSE event name, data line).
fn events(text: &str) -> Vec<(String, String)> {
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    body.split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event:")).map(|s| s.trim().to_string())?;
            let data = block.lines().find_map(|l| l.strip_prefix("data:")).map(|s| s.trim().to_string())?;
            Some((name, data))
        })
        .collect()
}

#[test]
fn a_node_without_mesh_streams_service_events_with_exactly_one_kind() {
    if !require("python with the mcp SDK", python_has_mcp()) {
        return;
    }
    let mcp_port = free_port();
    let cfg = ConfigDir::new(&format!(
        "settings:\n  health_check_timeout: 3\n  discovery_interval: 1\nservers:\n  stream-mcp:\n    discovery_strategies:\n      external:\n        - type: port_check\n          ports: [{mcp_port}]\n"
    ));
    let addr = format!("127.0.0.1:{}", free_port());
    let _node =
        KillOnDrop(cfg.command(&["up", "--api", &addr, "--no-mesh"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn"));
    let start = Instant::now();
    while !cfg.data_dir().join("api.token").is_file() || api::get(&cfg.data_dir(), &addr, "/v1/node").is_none_or(|a| a.status != 200) {
        assert!(start.elapsed() < STEP, "the node did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = subscribe(&cfg, &addr);
    // The server appears after the subscription, then goes away.
    let mut mcp = KillOnDrop(
        Command::new(python())
            .arg(fixture("mcp_server.py"))
            .args(["--port", &mcp_port.to_string(), "--name", "stream-fixture"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn MCP fixture"),
    );
    let wait_for = |change: &str| {
        let start = Instant::now();
        loop {
            let t = text.lock().expect("lock").clone();
            if events(&t).iter().any(|(name, data)| name == "service" && data.contains(&format!("\"change\":\"{change}\""))) {
                return t;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "no `{change}` service event within 60 s; stream so far:\n{t}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("available");
    let _ = mcp.0.kill();
    let _ = mcp.0.wait();
    let t = wait_for("lost");
    let evs = events(&t);
    assert!(evs.len() >= 2, "{t}");
    for (name, data) in &evs {
        // Counted on the raw text: a JSON parser would silently keep one of two keys.
        assert_eq!(data.matches("\"kind\"").count(), 1, "exactly one kind in {data}");
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert_eq!(v["kind"].as_str(), Some(name.as_str()), "the SSE event name is the kind: {data}");
        assert_eq!(v["server"], "stream-mcp", "{data}");
    }
}
