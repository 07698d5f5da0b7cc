//! The local API is secure by default: a bearer token from the data dir, loopback `Host`
//! only, no browser `Origin`, a loopback address unless explicitly allowed, and a CLI that
//! checks the node's signed hello before it sends the token, so a process squatting on the
//! port gets nothing.

use craftmesh_tests::api::{self, Answer};
use craftmesh_tests::*;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(30);
const NONCE: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn start_node(cfg: &ConfigDir, api: &str) -> KillOnDrop {
    let child = cfg.command(&["up", "--api", api]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn craftmesh up");
    let node = KillOnDrop(child);
    let start = Instant::now();
    while !cfg.data_dir().join("api.token").is_file() || api::get(&cfg.data_dir(), api, "/v1/node").is_none_or(|a| a.status != 200) {
        assert!(start.elapsed() < STEP, "the node at {api} did not answer /v1/node within {STEP:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn terminate(node: &mut KillOnDrop) {
    let _ = Command::new("kill").args(["-TERM", &node.pid().to_string()]).status();
    let start = Instant::now();
    while !matches!(node.0.try_wait(), Ok(Some(_))) {
        assert!(start.elapsed() < STEP, "the node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn peer_id(cfg: &ConfigDir) -> String {
    let bytes = std::fs::read(cfg.data_dir().join("node.key")).expect("node.key");
    libp2p_identity::Keypair::from_protobuf_encoding(&bytes).expect("key").public().to_peer_id().to_base58()
}

fn is_json_error(a: &Answer) -> bool {
    a.json().is_some_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()))
}

#[test]
fn requests_without_the_token_or_with_a_wrong_one_get_401_and_a_json_error() {
    let cfg = ConfigDir::new("servers: {}\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = start_node(&cfg, &addr);
    let token = api::token(&cfg.data_dir());
    assert!(token.starts_with("cmtok_") && token.len() == 49, "{token}");
    let other = "cmtok_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (what, auth) in [("no token", None), ("a wrong token", Some(format!("Bearer {other}"))), ("the token without Bearer", Some(token.clone()))] {
        for path in ["/v1/node", "/v1/services", "/v1/events", "/v1/resolve/x", "/v1/no-such-route"] {
            let mut headers = vec![("Host", addr.as_str())];
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            let a = api::request(&addr, path, &headers).expect("an answer");
            assert_eq!(a.status, 401, "{what} on {path}: {a:?}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what} on {path}: {a:?}");
            assert!(is_json_error(&a), "{what} on {path}: {a:?}");
            assert!(!a.body.contains(&token), "the error must not echo the token: {a:?}");
        }
    }
    let a = api::get(&cfg.data_dir(), &addr, "/v1/node").expect("an answer");
    assert_eq!(a.status, 200, "{a:?}");
}

#[test]
fn a_foreign_host_or_a_browser_origin_is_refused_even_with_the_token() {
    let cfg = ConfigDir::new("servers: {}\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _node = start_node(&cfg, &addr);
    let auth = format!("Bearer {}", api::token(&cfg.data_dir()));
    for host in [format!("localhost:{port}"), "localhost".into(), format!("craftmesh.localhost:{port}"), format!("127.0.0.2:{port}"), format!("[::1]:{port}")] {
        let a = api::request(&addr, "/v1/node", &[("Host", &host), ("Authorization", &auth)]).expect("an answer");
        assert_eq!(a.status, 200, "Host {host}: {a:?}");
    }
    for host in [format!("rebind.example:{port}"), "192.168.1.10".into(), format!("localhost.rebind.example:{port}"), String::new()] {
        for path in ["/v1/node", &format!("/v1/hello?nonce={NONCE}")] {
            let a = api::request(&addr, path, &[("Host", &host), ("Authorization", &auth)]).expect("an answer");
            assert_eq!(a.status, 421, "Host `{host}` on {path}: {a:?}");
            assert!(is_json_error(&a), "{a:?}");
        }
    }
    let a = api::request(&addr, "/v1/node", &[("Authorization", &auth)]).expect("an answer");
    assert_eq!(a.status, 421, "no Host at all: {a:?}");
    for path in ["/v1/node", &format!("/v1/hello?nonce={NONCE}")] {
        let a = api::request(&addr, path, &[("Host", &addr), ("Authorization", &auth), ("Origin", "http://rebind.example")]).expect("an answer");
        assert_eq!(a.status, 403, "Origin on {path}: {a:?}");
        assert!(is_json_error(&a), "{a:?}");
    }
}

#[test]
fn hello_is_signed_by_the_node_key_over_the_nonce_and_the_address_it_serves() {
    let cfg = ConfigDir::new("servers: {}\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = start_node(&cfg, &addr);
    let a = api::request(&addr, &format!("/v1/hello?nonce={NONCE}"), &[("Host", &addr)]).expect("an answer");
    assert_eq!(a.status, 200, "hello needs no token: {a:?}");
    let v = a.json().expect("json");
    let key_bytes = hex::decode(v["public_key"].as_str().expect("public_key")).expect("hex");
    let key = libp2p_identity::PublicKey::try_decode_protobuf(&key_bytes).expect("a libp2p public key");
    assert_eq!(key.to_peer_id().to_base58(), peer_id(&cfg), "the key of the data dir's node.key");
    assert_eq!(v["peer_id"].as_str(), Some(peer_id(&cfg).as_str()));
    assert_eq!(v["api"].as_str(), Some(addr.as_str()));
    let sig = hex::decode(v["signature"].as_str().expect("signature")).expect("hex");
    let mut msg = b"craftmesh/api-hello/v1\0".to_vec();
    msg.extend_from_slice(NONCE.as_bytes());
    msg.push(0);
    msg.extend_from_slice(addr.as_bytes());
    assert!(key.verify(&msg, &sig), "the signature verifies over domain, nonce and address");
    let mut other = msg.clone();
    other.extend_from_slice(b"1");
    assert!(!key.verify(&other, &sig), "and over nothing else");
    for bad in ["/v1/hello", "/v1/hello?nonce=short", "/v1/hello?nonce=zz112233445566778899aabbccddeeff"] {
        let a = api::request(&addr, bad, &[("Host", &addr)]).expect("an answer");
        assert_eq!(a.status, 400, "{bad}: {a:?}");
    }
}

/// A TCP server on `port` that records every byte it receives and answers with `answer`
/// (or, with `relay_to`, forwards both ways to that address).
struct Squatter {
    received: Arc<Mutex<Vec<u8>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Squatter {
    fn start(port: u16, answer: &'static str, relay_to: Option<String>) -> Squatter {
        let start = Instant::now();
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) => assert!(start.elapsed() < STEP, "cannot take port {port}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        listener.set_nonblocking(true).expect("nonblocking");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (rec, st) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !st.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let rec = rec.clone();
                let relay = relay_to.clone();
                std::thread::spawn(move || serve(conn, rec, answer, relay));
            }
        });
        Squatter { received, stop }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().expect("lock")).into_owned()
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve(mut conn: TcpStream, rec: Arc<Mutex<Vec<u8>>>, answer: &str, relay: Option<String>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut upstream = relay.and_then(|a| TcpStream::connect(a).ok());
    if let Some(up) = upstream.as_mut() {
        let mut back = up.try_clone().expect("clone");
        let mut down = conn.try_clone().expect("clone");
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut down);
        });
    }
    let mut buf = [0u8; 8192];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Ok(mut r) = rec.lock()
            && r.len() < 1 << 20
        {
            r.extend_from_slice(&buf[..n]);
        }
        match upstream.as_mut() {
            Some(up) => {
                if up.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            None => {
                let body = answer.as_bytes();
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                if conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(body)).is_err() {
                    return;
                }
            }
        }
    }
}

fn assert_refused_as_not_the_node(out: &CmdOutput, cfg: &ConfigDir, addr: &str) {
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    let expected = format!("the process answering at {addr} is not the craftmesh node of data dir {}", cfg.data_dir().display());
    assert!(out.stderr.contains(&expected), "expected `{expected}`\n{}", out.describe());
    assert!(out.stderr.contains(&peer_id(cfg)), "the message names the expected peer id\n{}", out.describe());
}

#[test]
fn the_cli_detects_a_squatter_on_the_api_port_and_never_sends_it_the_token() {
    let cfg = ConfigDir::new("servers: {}\n");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut node = start_node(&cfg, &addr);
    let token = api::token(&cfg.data_dir());
    let out = cfg.run(&["status", "--api", &addr], &[], STEP);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    terminate(&mut node);
    drop(node);
    // A plain HTTP server that answers everything, then one forging a hello.
    let forged = r#"{"peer_id":"12D3KooWC2EwEd1zDSQcPTXcCPSXw8G6QrAPXVs1WEAidrXh3RVg","public_key":"0801122020c22a500de628a125a5b0bb6aebcd344f1c626b9f4b1f0b3887b961840204af","signature":"00","api":"x"}"#;
    for answer in ["ok", "{}", forged] {
        let squatter = Squatter::start(port, answer, None);
        for cmd in [&["status", "--api", &addr][..], &["services", "--api", &addr], &["resolve", "x", "--api", &addr]] {
            let out = cfg.run(cmd, &[], STEP);
            assert_refused_as_not_the_node(&out, &cfg, &addr);
        }
        let got = squatter.received();
        assert!(got.contains("/v1/hello?nonce="), "the squatter saw only the hello: {got}");
        assert!(!got.contains(&token) && !got.to_ascii_lowercase().contains("authorization"), "the token leaked to the squatter: {got}");
    }
}

#[test]
fn a_relay_to_the_real_node_on_another_port_is_detected_by_the_signed_address() {
    let cfg = ConfigDir::new("servers: {}\n");
    let real = format!("127.0.0.1:{}", free_port());
    let _node = start_node(&cfg, &real);
    let token = api::token(&cfg.data_dir());
    let port = free_port();
    let relay_addr = format!("127.0.0.1:{port}");
    let relay = Squatter::start(port, "", Some(real.clone()));
    let out = cfg.run(&["status", "--api", &relay_addr], &[], STEP);
    assert_refused_as_not_the_node(&out, &cfg, &relay_addr);
    assert!(out.stderr.contains("signature"), "{}", out.describe());
    let got = relay.received();
    assert!(got.contains("/v1/hello?nonce="), "{got}");
    assert!(!got.contains(&token), "the token leaked to the relay: {got}");
}

#[test]
fn another_craftmesh_node_on_the_port_is_not_taken_for_the_node_of_this_data_dir() {
    let mine = ConfigDir::new("servers: {}\n");
    let theirs = ConfigDir::new("servers: {}\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = start_node(&mine, &addr);
    terminate(&mut node);
    let _other = start_node(&theirs, &addr);
    let out = mine.run(&["status", "--api", &addr], &[], STEP);
    assert_refused_as_not_the_node(&out, &mine, &addr);
    assert!(out.stderr.contains(&peer_id(&theirs)), "the message names who answered\n{}", out.describe());
}

#[test]
fn a_cli_without_the_node_key_needs_the_node_id_to_use_an_explicit_token() {
    let cfg = ConfigDir::new("servers: {}\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = start_node(&cfg, &addr);
    let token = api::token(&cfg.data_dir());
    let id = peer_id(&cfg);
    let stranger = ConfigDir::new("servers: {}\n");
    let out = stranger.run(&["status", "--api", &addr], &[], STEP);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert!(out.stderr.contains("no craftmesh node has run with data dir"), "{}", out.describe());
    let out = stranger.run(&["status", "--api", &addr, "--token", &token], &[], STEP);
    assert_eq!(out.code(), Some(3), "a token alone is not enough\n{}", out.describe());
    assert!(out.stderr.contains("--node-id"), "{}", out.describe());
    let out = stranger.run(&["status", "--json", "--api", &addr], &[("CRAFTMESH_API_TOKEN", &token), ("CRAFTMESH_NODE_ID", &id)], STEP);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let wrong_id = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id().to_base58();
    let out = stranger.run(&["status", "--api", &addr, "--token", &token, "--node-id", &wrong_id], &[], STEP);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert!(out.stderr.contains("is not the craftmesh node") && out.stderr.contains(&wrong_id), "{}", out.describe());
    let other_token = "cmtok_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = stranger.run(&["status", "--api", &addr, "--token", other_token, "--node-id", &id], &[], STEP);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert!(out.stderr.contains("refused the API token"), "{}", out.describe());
    // Without a token file and without --token, the CLI says where the token should be.
    std::fs::create_dir_all(stranger.data_dir()).expect("mkdir");
    std::fs::copy(cfg.data_dir().join("node.key"), stranger.data_dir().join("node.key")).expect("copy key");
    let out = stranger.run(&["status", "--api", &addr], &[], STEP);
    assert_eq!(out.code(), Some(3), "{}", out.describe());
    assert!(out.stderr.contains("api.token") && out.stderr.contains("--token"), "{}", out.describe());
}

#[test]
fn the_token_is_private_kept_across_restarts_and_printed_by_api_token() {
    let cfg = ConfigDir::new("servers: {}\n");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut node = start_node(&cfg, &addr);
    let token = api::token(&cfg.data_dir());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cfg.data_dir().join("api.token")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    terminate(&mut node);
    let _node = start_node(&cfg, &addr);
    assert_eq!(api::token(&cfg.data_dir()), token, "the same token after a restart");
    let a = api::request(&addr, "/v1/node", &[("Host", &addr), ("Authorization", &format!("Bearer {token}"))]).expect("an answer");
    assert_eq!(a.status, 200, "a client configured before the restart keeps working: {a:?}");
    let out = cfg.run(&["api-token", "--json"], &[], STEP);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(v["token"].as_str(), Some(token.as_str()));
    assert_eq!(v["header"].as_str(), Some(format!("Authorization: Bearer {token}").as_str()));
    let out = cfg.run(&["api-token"], &[], STEP);
    assert_eq!(out.stdout.lines().next(), Some(token.as_str()), "{}", out.describe());
}

#[test]
fn a_non_loopback_api_address_is_refused_unless_explicitly_allowed() {
    let cfg = ConfigDir::new("servers: {}\n");
    for api in [format!("0.0.0.0:{}", free_port()), format!("[::]:{}", free_port())] {
        let out = cfg.run(&["up", "--api", &api], &[], STEP);
        assert_eq!(out.code(), Some(2), "{}", out.describe());
        assert!(out.stderr.contains("not a loopback address") && out.stderr.contains("--api-allow-remote"), "{}", out.describe());
        assert!(!cfg.data_dir().join("api.addr").exists() && !cfg.data_dir().join("api.token").exists(), "nothing started\n{}", out.describe());
    }
}

#[test]
fn an_allowed_remote_api_serves_the_lan_with_the_token_and_the_node_id() {
    use craftmesh_tests::meshnode::MeshNode;
    use craftmesh_tests::netns::{Rig, netns_available};
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return;
    }
    let rig = Rig::new(2).expect("build the rig");
    let node = MeshNode::start(&rig, 0, "servers: {}\n", &["--api", "0.0.0.0:7410", "--api-allow-remote", "--no-mesh"]);
    // On its own host, through the wildcard address it wrote to api.addr.
    let out = node.cli(&rig, &["status", "--json"]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), node.log());
    // From the other host, with the token and the node id (its data dir is not there).
    let token = api::token(&node.cfg.data_dir());
    let remote = ConfigDir::new("servers: {}\n");
    let api = format!("{}:7410", rig.addr(0));
    let cmd = remote.command(&["status", "--json", "--api", &api, "--token", &token, "--node-id", &node.peer_id]);
    let out = run_with_timeout(&mut rig.host(1).wrap(&cmd), STEP);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), node.log());
    let cmd = remote.command(&["status", "--json", "--api", &api, "--node-id", &node.peer_id]);
    let out = run_with_timeout(&mut rig.host(1).wrap(&cmd), STEP);
    assert_eq!(out.code(), Some(3), "no token, no answer\n{}", out.describe());
}
