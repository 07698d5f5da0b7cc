//! Deploying a shared server as a Docker container through the library
//! (`craftmesh::deploy::docker`) against the real engine. The image is the std-only MCP
//! fixture `tests/fixtures/stub_mcp.rs` compiled statically into a `FROM scratch` image:
//! nothing is pulled. What the engine did is checked with the `docker` CLI, not with the
//! library that did it.

use craftmesh::deploy::docker::{self as dd, DeployError, DockerSpec};
use craftmesh_tests::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The port the fixture listens on inside the container.
const PORT: u16 = 8080;
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

fn spec(server: &str, token: u64, image: &str) -> DockerSpec {
    DockerSpec {
        server: server.to_string(),
        key: format!("svc/{server}"),
        holder: "12D3KooWtestholder".to_string(),
        token,
        image: image.to_string(),
        cmd: None,
        env: vec![("STUB_MODE".to_string(), "test".to_string())],
        container_port: PORT,
        memory_mb: Some(64),
        cpu_cores: Some(0.5),
    }
}

/// `docker inspect ID` (the CLI's view), or `None` when the container does not exist.
fn cli_inspect(id: &str) -> Option<Value> {
    let out = run_with_timeout(std::process::Command::new("docker").args(["inspect", "--type", "container", id]), Duration::from_secs(30));
    if !out.success() {
        assert!(out.stderr.contains("No such"), "docker inspect failed for another reason\n{}", out.describe());
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("docker inspect printed no JSON: {e}\n{}", out.describe()));
    Some(v[0].clone())
}

/// A response read off a kept-alive connection.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("the body is not JSON: {e}\n{self:?}"))
    }
}

/// `POST /mcp` with `body` on the kept-alive connection `s` (`buf` carries bytes read past
/// the previous response). Raw HTTP/1.1, the way any MCP client's transport sends it.
fn post_mcp(s: &mut TcpStream, buf: &mut Vec<u8>, body: &Value) -> std::io::Result<HttpReply> {
    let body = body.to_string();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
        match s.read(&mut chunk)? {
            0 => return Err(std::io::Error::other("connection closed before a response")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let len: usize = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    while buf.len() < len {
        match s.read(&mut chunk)? {
            0 => return Err(std::io::Error::other("connection closed inside the body")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf.drain(..len).collect::<Vec<u8>>()).into_owned();
    Ok(HttpReply { status, headers, body })
}

/// initialize, the initialized notification, tools/list and an echo call on one kept-alive
/// connection to `127.0.0.1:port`, retried until the server answers (the engine's proxy
/// accepts before the server listens) or 20 s pass.
fn mcp_session(port: u16) -> Vec<HttpReply> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = || -> std::io::Result<Vec<HttpReply>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = Vec::new();
            let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
                "params": { "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": { "name": "craftmesh-test", "version": "0" } } });
            let mut out = vec![post_mcp(&mut s, &mut buf, &init)?];
            out.push(post_mcp(&mut s, &mut buf, &json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }))?);
            out.push(post_mcp(&mut s, &mut buf, &json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }))?);
            let call = json!({ "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": { "name": "echo", "arguments": { "text": "through docker" } } });
            out.push(post_mcp(&mut s, &mut buf, &call)?);
            Ok(out)
        };
        match attempt() {
            Ok(r) => return r,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no MCP session on 127.0.0.1:{port} within 20 s; last error: {last}");
}

/// This host's address on its default route, if it has one (no packet is sent).
fn lan_ipv4() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn a_deployed_instance_is_limited_labelled_loopback_only_and_serves_mcp() {
    if !require("a running docker engine (`docker info` failed)", docker_available()) {
        return;
    }
    let suffix = random_suffix();
    let tag = format!("craftmesh-test-stub-mcp:{suffix}");
    let server = format!("stub-mcp-{suffix}");
    let ctx = tempfile::tempdir().expect("tempdir");
    // Declared first so it drops last: the containers go before the image.
    let _image = build_static_fixture_image("stub_mcp", PORT, &ctx.path().join("stub-mcp"), &tag);
    let _by_name: Vec<DockerCleanup> = [7, 8].iter().map(|t| DockerCleanup::Container(dd::container_name(&server, *t))).collect();

    let d = dd::connect().await.unwrap_or_else(|e| panic!("connect to the local engine: {e}"));
    let s = spec(&server, 7, &tag);
    let t0 = Instant::now();
    let inst = dd::deploy(&d, &s, DEPLOY_TIMEOUT).await.unwrap_or_else(|e| panic!("deploy: {e}"));
    eprintln!("deploy took {:?}", t0.elapsed());
    assert_eq!(inst.name, format!("craftmesh-{server}-7"));
    assert_eq!((inst.key.as_str(), inst.server.as_str(), inst.holder.as_str(), inst.token), (s.key.as_str(), server.as_str(), s.holder.as_str(), 7));
    assert!(inst.running, "{inst:?}");
    assert!(inst.created.is_some(), "{inst:?}");
    let port = inst.host_port.unwrap_or_else(|| panic!("no host port read back: {inst:?}"));

    // The engine's view, through the CLI.
    let j = cli_inspect(&inst.id).unwrap_or_else(|| panic!("docker inspect does not know {}", inst.id));
    let ctx_msg = serde_json::to_string_pretty(&j).unwrap_or_default();
    let hc = &j["HostConfig"];
    assert_eq!(hc["Memory"], json!(64 * 1024 * 1024), "{ctx_msg}");
    assert_eq!(hc["MemorySwap"], json!(64 * 1024 * 1024), "no swap beyond the memory limit\n{ctx_msg}");
    assert_eq!(hc["NanoCpus"], json!(500_000_000), "{ctx_msg}");
    assert!(matches!(hc["RestartPolicy"]["Name"].as_str(), Some("no") | Some("")), "no restart policy\n{ctx_msg}");
    assert_eq!(hc["PublishAllPorts"], json!(false), "{ctx_msg}");
    assert_eq!(hc["PortBindings"], json!({ "8080/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] }), "{ctx_msg}");
    assert_eq!(j["NetworkSettings"]["Ports"], json!({ "8080/tcp": [{ "HostIp": "127.0.0.1", "HostPort": port.to_string() }] }), "{ctx_msg}");
    let labels = &j["Config"]["Labels"];
    for (k, v) in [
        ("craftmesh.key", s.key.clone()),
        ("craftmesh.server", server.clone()),
        ("craftmesh.holder", s.holder.clone()),
        ("craftmesh.token", "7".to_string()),
        ("craftmesh.managed", "1".to_string()),
    ] {
        assert_eq!(labels[k], json!(v), "label {k}\n{ctx_msg}");
    }
    assert!(j["Config"]["Env"].as_array().is_some_and(|e| e.contains(&json!("STUB_MODE=test"))), "{ctx_msg}");
    assert_eq!(j["Config"]["Image"], json!(tag), "{ctx_msg}");

    // MCP over the published port, one kept-alive connection.
    let replies = mcp_session(port);
    let (init, note, list, call) = (&replies[0], &replies[1], &replies[2], &replies[3]);
    assert_eq!(init.status, 200, "{init:?}");
    assert_eq!(init.header("content-type"), Some("application/json"), "{init:?}");
    assert!(init.header("mcp-session-id").is_some_and(|v| !v.is_empty()), "{init:?}");
    let init = init.json();
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "stub-mcp", "{init}");
    assert_eq!(init["result"]["capabilities"]["tools"], json!({}), "{init}");
    assert_eq!((note.status, note.body.as_str()), (202, ""), "{note:?}");
    let list = list.json();
    assert_eq!(list["id"], 2, "{list}");
    assert_eq!(list["result"]["tools"][0]["name"], "echo", "{list}");
    assert_eq!(list["result"]["tools"][0]["inputSchema"]["type"], "object", "{list}");
    assert_eq!(call.json()["result"]["content"], json!([{ "type": "text", "text": "through docker" }]), "{call:?}");

    // Not an open port on the LAN: the host's own LAN address does not reach it.
    if let Some(ip) = lan_ipv4() {
        let r = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_secs(2));
        assert!(r.is_err(), "the instance answers on {ip}:{port}, beyond loopback");
    }

    let listed = dd::list_managed(&d).await.unwrap_or_else(|e| panic!("list_managed: {e}"));
    let mine: Vec<_> = listed.iter().filter(|i| i.server == server).collect();
    assert_eq!(mine, vec![&inst], "list_managed should report the instance as deployed");
    assert_eq!(dd::inspect(&d, &inst.id).await.expect("inspect"), Some(inst.clone()));
    assert_eq!(dd::inspect(&d, &inst.name).await.expect("inspect by name"), Some(inst.clone()));

    // A leftover of the same claim and token (a crash between deploy and record) is
    // replaced, not fought over.
    let again = dd::deploy(&d, &s, DEPLOY_TIMEOUT).await.unwrap_or_else(|e| panic!("redeploy over the leftover: {e}"));
    assert_ne!(again.id, inst.id);
    assert_eq!(again.name, inst.name);
    assert!(cli_inspect(&inst.id).is_none(), "the leftover should be gone");

    // A container that is not ours, at the name of the next token, is left alone.
    let name8 = dd::container_name(&server, 8);
    let foreign = docker_ok(&["create", "--name", &name8, "--label", "craftmesh.key=svc/someone-else", &tag], Duration::from_secs(30));
    let foreign_id = foreign.stdout.trim().to_string();
    let err = dd::deploy(&d, &spec(&server, 8, &tag), DEPLOY_TIMEOUT).await.expect_err("a foreign container holds the name");
    assert!(matches!(err, DeployError::NameTaken { .. }), "{err}");
    assert!(err.to_string().contains(&name8), "{err}");
    assert!(cli_inspect(&foreign_id).is_some(), "the foreign container must not be touched");

    let t1 = Instant::now();
    dd::remove(&d, &again.id, REMOVE_TIMEOUT).await.unwrap_or_else(|e| panic!("remove: {e}"));
    eprintln!("remove took {:?}", t1.elapsed());
    assert!(cli_inspect(&again.id).is_none(), "removed container still known to the engine");
    assert_eq!(dd::inspect(&d, &again.id).await.expect("inspect"), None);
    dd::remove(&d, &again.id, REMOVE_TIMEOUT).await.unwrap_or_else(|e| panic!("removing a container already gone should be Ok: {e}"));
    let listed = dd::list_managed(&d).await.unwrap_or_else(|e| panic!("list_managed: {e}"));
    assert!(listed.iter().all(|i| i.id != again.id), "{listed:?}");
}

#[tokio::test]
async fn a_missing_image_is_refused_by_name_and_never_pulled() {
    if !require("a running docker engine (`docker info` failed)", docker_available()) {
        return;
    }
    let suffix = random_suffix();
    let image = format!("craftmesh-test-absent-{suffix}:never");
    let server = format!("absent-{suffix}");
    let name = dd::container_name(&server, 1);
    let _container = DockerCleanup::Container(name.clone());

    let d = dd::connect().await.unwrap_or_else(|e| panic!("connect to the local engine: {e}"));
    let err = dd::deploy(&d, &spec(&server, 1, &image), DEPLOY_TIMEOUT).await.expect_err("the image is not on this host");
    assert!(matches!(&err, DeployError::ImageMissing { image: i } if *i == image), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&image) && msg.contains("does not pull"), "{msg}");

    assert!(cli_inspect(&name).is_none(), "no container should be created for a missing image");
    let img = run_with_timeout(std::process::Command::new("docker").args(["image", "inspect", &image]), Duration::from_secs(30));
    assert!(!img.success(), "the image must not have been pulled\n{}", img.describe());
}
