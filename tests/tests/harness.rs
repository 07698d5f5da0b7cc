//! The harness itself: fixtures and hostile servers behave as the discovery tests assume.
//! These need no craftmesh binary, so a failure here is the harness's, not the node's.

use craftmesh_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s
}

/// Reads until `n` bytes arrived, EOF, or an error; returns what arrived.
fn read_up_to(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while out.len() < n {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => out.extend_from_slice(&buf[..k]),
        }
    }
    out
}

#[test]
fn mcp_fixture_answers_initialize_with_its_name() {
    if !require(&format!("python with the MCP SDK at {}", python().display()), python_has_mcp()) {
        return;
    }
    let server = McpServer::start("harness-fixture");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"harness","version":"0"}}}"#;
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.port,
        body.len()
    );
    let mut s = connect(server.port);
    s.write_all(req.as_bytes()).expect("write");
    let resp = String::from_utf8_lossy(&read_up_to(&mut s, 1 << 20)).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}\nlog:\n{}", server.log_text());
    assert!(resp.contains(r#""serverInfo":{"name":"harness-fixture""#), "{resp}");

    let mut s = connect(server.port);
    s.write_all(format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", server.port).as_bytes()).expect("write");
    let resp = String::from_utf8_lossy(&read_up_to(&mut s, 1 << 20)).into_owned();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn plain_http_server_answers_ok_to_anything() {
    let srv = plain_http_server();
    for req in ["GET /health HTTP/1.1\r\nHost: x\r\n\r\n", "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{ }\n"] {
        let mut s = connect(srv.port);
        s.write_all(req.as_bytes()).expect("write");
        let resp = String::from_utf8_lossy(&read_up_to(&mut s, 4096)).into_owned();
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok"), "{resp}");
    }
}

#[test]
fn silent_server_accepts_and_never_answers() {
    let srv = silent_server();
    let mut s = connect(srv.port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let mut buf = [0u8; 16];
    let r = s.read(&mut buf);
    assert!(matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)), "expected no answer, got {r:?}");
}

#[test]
fn flood_server_sends_a_json_200_then_megabytes() {
    let srv = flood_server();
    let mut s = connect(srv.port);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let got = read_up_to(&mut s, 4 << 20);
    let text = String::from_utf8_lossy(&got[..256.min(got.len())]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Type: application/json"), "{text}");
    assert!(got.len() >= 4 << 20, "only {} bytes arrived", got.len());
}

#[test]
fn garbage_server_sends_random_bytes_on_accept() {
    let srv = garbage_server();
    let mut s = connect(srv.port);
    let got = read_up_to(&mut s, 4 << 20);
    assert!(got.len() >= 4 << 20, "only {} bytes arrived", got.len());
    assert!(!got.starts_with(b"HTTP/"));
}

#[test]
fn run_with_timeout_kills_at_the_deadline() {
    let start = Instant::now();
    let out = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300));
    assert!(out.timed_out, "{}", out.describe());
    assert!(out.status.is_none());
    assert!(start.elapsed() < Duration::from_secs(10));

    let out = run_with_timeout(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10));
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
}

#[test]
fn config_dir_writes_the_project_layout() {
    let c = ConfigDir::new("servers: {}\n").with_servers_json("core", "{\"mcpServers\": {}}");
    assert_eq!(std::fs::read_to_string(c.discovery_file()).expect("read"), "servers: {}\n");
    assert!(c.project_dir().join(".mcp/servers/core.json").is_file());
    assert!(c.user_dir().is_dir() && std::fs::read_dir(c.user_dir()).expect("read_dir").next().is_none());
    assert!(c.data_dir().is_dir());
}
