//! The Docker tier end to end: a real node (`craftmesh up`) deploys a shared server as a
//! container on the real engine by claim, serves it at `/mcp/NAME` to the official Python
//! SDK client, leaves it running across its own restart and adopts it again, removes a
//! stale container it finds with its name on it, and removes the container on
//! `deploy stop`. The image is the std-only fixture `tests/fixtures/stub_mcp.rs` in a
//! `FROM scratch` image: nothing is pulled.
//!
//! # Where the node runs, and why not in a rig namespace
//!
//! The engine publishes the container's port on 127.0.0.1 of *its* network namespace (the
//! root one here), and only there, so that an instance is never an open port on the LAN. A
//! node inside a `netns` rig host has its own loopback and cannot reach that port, and the
//! ways around it each break something worth keeping: publishing on the docker bridge or
//! `0.0.0.0`, or host networking for the container, opens the port beyond loopback; a veth
//! into the root namespace with `route_localnet` touches the host's interfaces (which the rig
//! never does) and is refused by engines that drop non-loopback traffic to loopback-published
//! ports. A node also belongs next to its engine in production: it manages that engine's
//! containers and reaches them on that engine's loopback.
//!
//! So this node runs in the root namespace, next to the engine, with everything on loopback:
//! API on 127.0.0.1, mesh listening on 127.0.0.1 only (`--interface lo`) and no DNS-SD
//! (`--no-mdns`), so nothing it opens is reachable from the LAN and it sends no multicast.
//! The test checks that: every socket the node listens on is on 127.0.0.1. One node is a
//! whole claims cluster (it forms alone after its formation window); sessions reaching the
//! holder from other hosts are covered by `share_rig.rs` (the holder serves a container's
//! link exactly as a child's).

use craftmesh_tests::meshnode::{test_key, wait_until};
use craftmesh_tests::{
    CmdOutput, ConfigDir, DockerCleanup, KillOnDrop, build_static_fixture_image, docker_available, docker_ok, fixture, free_port, python, python_has_mcp,
    random_suffix, require, run_with_timeout,
};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The port the fixture listens on inside the container.
const PORT: u16 = 8080;
/// Lease of the `svc/` claim: the restarted node must be back within it to get its grant
/// (and so its container) back. Generous: two shared cores, a Raft log to replay.
const SERVICE_TTL_MS: &str = "15000";
const FORM: Duration = Duration::from_secs(40);

/// A node in the root namespace, everything on loopback; killed on drop.
struct HostNode {
    cfg: ConfigDir,
    api: String,
    listen: u16,
    proc: Option<KillOnDrop>,
    log: PathBuf,
    starts: u32,
}

impl HostNode {
    fn start(cfg: ConfigDir) -> HostNode {
        let log = cfg.scratch_dir().join("node.log");
        let mut n = HostNode { cfg, api: format!("127.0.0.1:{}", free_port()), listen: free_port(), proc: None, log, starts: 0 };
        n.restart();
        n
    }

    /// (Re)starts `craftmesh up` on the same data dir (same identity, same Raft log);
    /// returns once its API answers.
    fn restart(&mut self) {
        let listen = self.listen.to_string();
        let args = ["up", "--api", &self.api, "--listen", &listen, "--interface", "lo", "--no-mdns", "--role", "server", "--mesh-key", test_key()];
        let mut cmd = self.cfg.command(&args);
        cmd.env_remove("CRAFTMESH_NO_MESH").env("CRAFTMESH_LOG", "info,craftmesh=debug").env("CRAFTMESH_SERVICE_TTL_MS", SERVICE_TTL_MS);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the node log");
        self.starts += 1;
        let child = cmd.stdin(Stdio::null()).stdout(file.try_clone().expect("dup log")).stderr(file).spawn().expect("spawn craftmesh up");
        self.proc = Some(KillOnDrop(child));
        let start = Instant::now();
        while self.json(&["status", "--json"]).is_none() {
            let exited = self.proc.as_mut().and_then(|p| p.0.try_wait().ok().flatten());
            assert!(exited.is_none() && start.elapsed() < Duration::from_secs(30), "the node did not come up ({exited:?})\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and the exit code (within 15 s).
    fn terminate(&mut self) -> Option<i32> {
        let mut p = self.proc.take()?;
        let _ = run_with_timeout(Command::new("kill").args(["-TERM", &p.pid().to_string()]), Duration::from_secs(5));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(s)) = p.0.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn pid(&self) -> u32 {
        self.proc.as_ref().map(KillOnDrop::pid).unwrap_or(0)
    }

    fn cli(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        let mut all = args.to_vec();
        all.extend(["--api", &self.api]);
        run_with_timeout(&mut self.cfg.command(&all), timeout)
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let out = self.cli(args, Duration::from_secs(20));
        if !out.success() {
            return None;
        }
        serde_json::from_str(&out.stdout).ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mcp_client.py --http` against this node's `/mcp/NAME`, with the API token.
    fn mcp(&self, name: &str, script: &Value) -> CmdOutput {
        let token = std::fs::read_to_string(self.cfg.data_dir().join("api.token")).expect("the node's api.token");
        let mut c = Command::new(python());
        c.arg(fixture("mcp_client.py")).args(["--script", &script.to_string(), "--timeout", "60"]);
        c.args(["--http", &format!("http://{}/mcp/{name}", self.api), "--header", &format!("Authorization: Bearer {}", token.trim())]);
        run_with_timeout(&mut c, Duration::from_secs(90))
    }
}

/// Removes every container of claim `key` on drop (the node's own removal is what the
/// test checks; this only keeps a failed run from leaving containers behind).
struct KeyCleanup(String);

impl Drop for KeyCleanup {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            drop(DockerCleanup::Container(id));
        }
    }
}

/// Ids of the containers (running or not) labelled with claim `key`.
fn containers_of(key: &str) -> Vec<String> {
    let out = docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &format!("label=craftmesh.key={key}")], Duration::from_secs(30));
    out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

fn inspect(id: &str) -> Value {
    let out = docker_ok(&["inspect", "--type", "container", id], Duration::from_secs(30));
    serde_json::from_str::<Value>(&out.stdout).expect("docker inspect JSON")[0].clone()
}

/// Local addresses of the TCP and UDP sockets `pid` listens on or has bound (`ss`).
fn bound_addrs(pid: u32) -> Vec<String> {
    let out = run_with_timeout(Command::new("ss").args(["-Htulnp"]), Duration::from_secs(10));
    assert!(out.success(), "ss failed\n{}", out.describe());
    let tag = format!("pid={pid},");
    out.stdout.lines().filter(|l| l.contains(&tag)).filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)).collect()
}

fn config(server: &str, image: &str) -> ConfigDir {
    let yaml = format!(
        "settings:\n  discovery_interval: 30\n  resource_check_enabled: false\nservers:\n  {server}:\n    priority_order: [docker_sidecar]\n    discovery_strategies:\n      docker:\n        \
         - type: docker\n          images: [\"{image}\"]\n          ports: [{PORT}]\n          mcp_path: /mcp\n          health_endpoint: /health\n    \
         resource_requirements:\n      memory_mb: 64\n      cpu_cores: 0.5\n    deployment_config:\n      prevent_duplicate: true\n"
    );
    // The placement check is off: it would read the 0.5 CPU limit as a need and refuse on a
    // busy test machine; this test is about the Docker tier, not placement.
    // The launch entry declares the server and its environment; with only `docker_sidecar`
    // in its priority order its command is never run.
    let servers = json!({"mcpServers": {server: {"command": "/nonexistent/stub-mcp", "env": {"STUB_MODE": "docker-share"}}}});
    ConfigDir::new(&yaml).with_servers_json("core", &servers.to_string())
}

fn echo_script(text: &str) -> Value {
    json!([{"server_info": true}, {"list_tools": true}, {"call": "echo", "args": {"text": text}, "expect": text}])
}

fn lines(out: &CmdOutput) -> Vec<Value> {
    out.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_container_instance_serves_survives_its_node_restarting_and_goes_on_stop() {
    if !require("a running docker engine (`docker info` failed)", docker_available()) {
        return;
    }
    if !require("python with the MCP SDK (tests/scripts/run-tests.sh makes .venv)", python_has_mcp()) {
        return;
    }
    let t0 = Instant::now();
    let suffix = random_suffix();
    let server = format!("dstub-{}", &suffix[..10]);
    let key = format!("svc/{server}");
    let tag = format!("craftmesh-test-stub-mcp:{suffix}");
    let ctx = tempfile::tempdir().expect("tempdir");
    // Declared first so it drops last: the containers go before the image.
    let _image = build_static_fixture_image("stub_mcp", PORT, &ctx.path().join("stub-mcp"), &tag);
    let _containers = KeyCleanup(key.clone());
    eprintln!("image built in {:?}", t0.elapsed());

    let mut node = HostNode::start(config(&server, &tag));
    let peer = node.json(&["status", "--json"]).and_then(|v| v["node"]["peer_id"].as_str().map(str::to_string)).expect("peer id");
    wait_until("a one-node claims cluster with a leader", FORM, || {
        let v = node.json(&["cluster", "--json"])?;
        v["leader"].is_object().then_some(())
    });
    let addrs = bound_addrs(node.pid());
    assert!(!addrs.is_empty() && addrs.iter().all(|a| a.starts_with("127.0.0.1:")), "the node listens on loopback only: {addrs:?}");

    // Deployed by claim, as one labelled, limited, loopback-only container.
    let out = node.cli(&["resolve", "--ensure", &server, "--json"], Duration::from_secs(120));
    assert!(out.success(), "resolve --ensure failed\n{}\n{}", out.describe(), node.log());
    let e: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|err| panic!("not JSON ({err})\n{}", out.describe()));
    assert_eq!((e["local"].as_bool(), e["deployed"].as_bool(), e["node"].as_str()), (Some(true), Some(true), Some(peer.as_str())), "{e}");
    let token = e["token"].as_u64().expect("token");
    eprintln!("deployed at {:?}", t0.elapsed());
    let ids = containers_of(&key);
    assert_eq!(ids.len(), 1, "one container for {key}: {ids:?}");
    let id = ids[0].clone();
    let j = inspect(&id);
    let ctx_msg = serde_json::to_string_pretty(&j).unwrap_or_default();
    assert_eq!(j["Name"], json!(format!("/craftmesh-{server}-{token}")), "{ctx_msg}");
    assert_eq!(j["State"]["Running"], json!(true), "{ctx_msg}");
    let labels = &j["Config"]["Labels"];
    for (k, v) in [("craftmesh.key", key.as_str()), ("craftmesh.server", server.as_str()), ("craftmesh.holder", peer.as_str()), ("craftmesh.managed", "1")] {
        assert_eq!(labels[k], json!(v), "label {k}\n{ctx_msg}");
    }
    assert_eq!(labels["craftmesh.token"], json!(token.to_string()), "{ctx_msg}");
    let hc = &j["HostConfig"];
    assert_eq!((&hc["Memory"], &hc["MemorySwap"], &hc["NanoCpus"]), (&json!(64 << 20), &json!(64 << 20), &json!(500_000_000)), "{ctx_msg}");
    assert_eq!(hc["PortBindings"], json!({ "8080/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] }), "{ctx_msg}");
    let bound = j["NetworkSettings"]["Ports"]["8080/tcp"].as_array().cloned().unwrap_or_default();
    assert!(!bound.is_empty() && bound.iter().all(|b| b["HostIp"] == "127.0.0.1"), "published on loopback only\n{ctx_msg}");
    assert!(j["Config"]["Env"].as_array().is_some_and(|e| e.contains(&json!("STUB_MODE=docker-share"))), "the launch entry's env\n{ctx_msg}");

    // An MCP session through the node's `/mcp/NAME`, with the official SDK client.
    let out = node.mcp(&server, &echo_script("through a container"));
    assert!(out.success(), "the MCP client failed\n{}\n{}", out.describe(), node.log());
    let ls = lines(&out);
    assert!(ls.iter().any(|l| l["op"] == "server_info" && l["name"] == "stub-mcp"), "{}", out.stdout);
    assert!(ls.iter().any(|l| l["op"] == "call" && l["text"] == "through a container"), "{}", out.stdout);

    // A container with this node's name on it from an older grant, as a crash would leave.
    let stale = format!("craftmesh-test-stale-{}", &suffix[..10]);
    assert_ne!(token, 1, "the stale container needs another token than the live one");
    docker_ok(
        &[
            "run",
            "-d",
            "--name",
            &stale,
            "--label",
            &format!("craftmesh.key={key}"),
            "--label",
            &format!("craftmesh.server={server}"),
            "--label",
            &format!("craftmesh.holder={peer}"),
            "--label",
            "craftmesh.token=1",
            "--label",
            "craftmesh.managed=1",
            &tag,
        ],
        Duration::from_secs(60),
    );
    let _stale_guard = DockerCleanup::Container(stale.clone());

    // The node stops on purpose: the container keeps running, its claim unreleased.
    let code = node.terminate();
    assert_eq!(code, Some(0), "the node exits cleanly\n{}", node.log());
    assert_eq!(inspect(&id)["State"]["Running"], json!(true), "the container outlives its node\n{}", node.log());

    // Restarted within the lease: the node finds its container by its labels and adopts it
    // by itself (no client asks), and removes the stale one.
    let restarted = Instant::now();
    node.restart();
    let row = wait_until("the restarted node running its container again", Duration::from_secs(60), || {
        let st = node.json(&["deploy", "status", "--json"])?;
        st.as_array()?.iter().find(|r| r["server"] == server.as_str() && r["local"] == true && r["via"] == "docker_sidecar").cloned()
    });
    eprintln!("re-adopted {:?} after the restart: {row}", restarted.elapsed());
    assert_eq!(row["token"].as_u64(), Some(token), "the same grant: {row}");
    assert!(row["command"].as_str().is_some_and(|c| c.contains("(adopted)")), "adopted, not deployed again: {row}\n{}", node.log());
    wait_until("the stale container removed", Duration::from_secs(30), || containers_of(&key).iter().all(|c| *c == id).then_some(()));
    assert_eq!(containers_of(&key), vec![id.clone()], "the same one container");
    let out = node.cli(&["resolve", "--ensure", &server, "--json"], Duration::from_secs(60));
    assert!(out.success(), "resolve --ensure after the restart failed\n{}", out.describe());
    let e: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!((e["local"].as_bool(), e["deployed"].as_bool(), e["token"].as_u64()), (Some(true), Some(false), Some(token)), "{e}");
    let out = node.mcp(&server, &echo_script("after the restart"));
    assert!(out.success(), "the MCP client failed after the restart\n{}\n{}", out.describe(), node.log());
    assert!(lines(&out).iter().any(|l| l["op"] == "call" && l["text"] == "after the restart"), "{}", out.stdout);

    // `deploy stop`: the container goes and the claim is released.
    let out = node.cli(&["deploy", "stop", &server], Duration::from_secs(60));
    assert!(out.success(), "deploy stop failed\n{}\n{}", out.describe(), node.log());
    assert!(containers_of(&key).is_empty(), "the container is removed when deploy stop returns: {:?}", containers_of(&key));
    wait_until("the claim released", Duration::from_secs(20), || {
        let st = node.json(&["deploy", "status", "--json"])?;
        (!st.as_array()?.iter().any(|r| r["server"] == server.as_str() && r["node"].is_string())).then_some(())
    });
    assert_eq!(node.starts, 2);
    eprintln!("total {:?}", t0.elapsed());
}

/// `GET path` on `127.0.0.1:port` with `Connection: close`: the status line and the body,
/// or the error.
fn http_get(port: u16, path: &str) -> Result<(String, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(90))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut all = String::new();
    s.read_to_string(&mut all).map_err(|e| e.to_string())?;
    let (head, body) = all.split_once("\r\n\r\n").ok_or_else(|| format!("no response head: {all:?}"))?;
    Ok((head.lines().next().unwrap_or_default().to_string(), body.to_string()))
}

#[test]
fn a_plain_service_runs_as_a_container_served_on_the_nodes_loopback_and_removed_when_its_claim_is_lost() {
    if !require("a running docker engine (`docker info` failed)", docker_available()) {
        return;
    }
    let suffix = random_suffix();
    let server = format!("dhttp-{}", &suffix[..10]);
    let key = format!("svc/{server}");
    let tag = format!("craftmesh-test-stub-http:{suffix}");
    let ctx = tempfile::tempdir().expect("tempdir");
    let _image = build_static_fixture_image("stub_http", PORT, &ctx.path().join("stub-http"), &tag);
    let _containers = KeyCleanup(key.clone());
    // A plain HTTP service (`protocol: http`), health `GET /health`, only as a container.
    let yaml = format!(
        "settings:\n  discovery_interval: 30\n  resource_check_enabled: false\nservers:\n  {server}:\n    priority_order: [docker_sidecar]\n    discovery_strategies:\n      docker:\n        \
         - type: docker\n          images: [\"{tag}\"]\n          ports: [{PORT}]\n          health_endpoint: /health\n    \
         resource_requirements:\n      memory_mb: 32\n    deployment_config:\n      prevent_duplicate: true\n      protocol: http\n"
    );
    let node = HostNode::start(ConfigDir::new(&yaml));
    wait_until("a one-node claims cluster with a leader", FORM, || node.json(&["cluster", "--json"]).filter(|v| v["leader"].is_object()).map(drop));

    let out = node.cli(&["resolve", "--ensure", &server, "--json"], Duration::from_secs(120));
    assert!(out.success(), "resolve --ensure failed\n{}\n{}", out.describe(), node.log());
    let e: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|err| panic!("not JSON ({err})\n{}", out.describe()));
    let (token, port) = (e["token"].as_u64().expect("token"), e["port"].as_u64().expect("port") as u16);
    assert_eq!(e["url"], json!(format!("http://127.0.0.1:{port}")), "{e}");
    let ids = containers_of(&key);
    assert_eq!(ids.len(), 1, "one container: {ids:?}");
    let j = inspect(&ids[0]);
    assert_eq!(j["Config"]["Labels"]["craftmesh.token"], json!(token.to_string()));
    assert_eq!(j["HostConfig"]["Memory"], json!(32 << 20));
    // The front on the node's loopback reaches the container.
    let (status, body) = http_get(port, "/anything").unwrap_or_else(|err| panic!("GET through the front: {err}\n{}", node.log()));
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "ok\n");

    // The claim is lost (released behind the holder's back, as a partition's expiry would
    // take it): the container is force-removed at once, and the next client starts the
    // service under a new grant.
    let out = node.cli(&["claim", "release", &key, "--fencing-token", &token.to_string()], Duration::from_secs(20));
    assert!(out.success(), "claim release failed\n{}", out.describe());
    wait_until("the container removed once its claim is lost", Duration::from_secs(20), || containers_of(&key).is_empty().then_some(()));
    let (status, _) = http_get(port, "/after-loss").unwrap_or_else(|err| panic!("GET after the loss: {err}\n{}", node.log()));
    assert!(status.contains(" 200 "), "{status}");
    let ids = containers_of(&key);
    assert_eq!(ids.len(), 1, "started again by the next client: {ids:?}");
    let token: u64 = inspect(&ids[0])["Config"]["Labels"]["craftmesh.token"].as_str().and_then(|t| t.parse().ok()).expect("token label");

    // Stopped: the container goes and the claim is released; the next client starts the
    // service again under a new grant.
    let out = node.cli(&["deploy", "stop", &server], Duration::from_secs(60));
    assert!(out.success(), "deploy stop failed\n{}", out.describe());
    assert!(containers_of(&key).is_empty(), "removed on stop");
    let (status, _) = http_get(port, "/again").unwrap_or_else(|err| panic!("GET after the stop: {err}\n{}", node.log()));
    assert!(status.contains(" 200 "), "{status}");
    let ids = containers_of(&key);
    assert_eq!(ids.len(), 1, "started again by the next client: {ids:?}");
    let again: u64 = inspect(&ids[0])["Config"]["Labels"]["craftmesh.token"].as_str().and_then(|t| t.parse().ok()).expect("token label");
    assert!(again > token, "a new grant, a greater token ({again} > {token})");
    let out = node.cli(&["deploy", "stop", &server], Duration::from_secs(60));
    assert!(out.success(), "deploy stop failed\n{}", out.describe());
}
