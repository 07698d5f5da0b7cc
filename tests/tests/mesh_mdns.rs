//! DNS-SD interoperability of `craftmesh up`, checked against python-zeroconf (the reference
//! Python implementation, `tests/fixtures/zeroconf_tool.py`) in a network-namespace rig:
//! what a node advertises (`_craftmesh._tcp`, `_mcp._tcp`) is browsable and resolvable by
//! another implementation, and `_mcp._tcp` adverts from outside the mesh are listed but
//! handed out by `resolve` only after they pass a real MCP initialize.
//!
//! Needs root, iproute2 and the test venv with the MCP SDK and zeroconf; skips otherwise
//! (fails in CI).

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, Spawned, netns_available};
use craftmesh_tests::*;
use serde_json::Value;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const NODE_TYPE: &str = "_craftmesh._tcp.local.";
const MCP_TYPE: &str = "_mcp._tcp.local.";
/// The mesh port `craftmesh up` listens on by default.
const DEFAULT_MESH_PORT: u16 = 7411;
/// Seconds one `zeroconf_tool.py browse` listens.
const BROWSE_SECONDS: u64 = 4;
/// Hosts are namespaces of their own, so fixed ports never collide.
const MCP_PORT: u16 = 18765;
const HTTP_PORT: u16 = 18080;

fn rig_prerequisites() -> bool {
    require("network namespaces (root and iproute2)", netns_available())
        && require(&format!("python zeroconf at {} (run tests/scripts/run-tests.sh, or set CRAFTMESH_TEST_PYTHON)", python().display()), python_has_zeroconf())
}

fn mcp_prerequisite() -> bool {
    require(&format!("python with the MCP SDK at {} (run tests/scripts/run-tests.sh)", python().display()), python_has_mcp())
}

fn python_has_zeroconf() -> bool {
    python().exists() && run_with_timeout(Command::new(python()).args(["-c", "import zeroconf"]), Duration::from_secs(60)).success()
}

fn rig(n: usize) -> Rig {
    Rig::new(n).unwrap_or_else(|e| panic!("cannot build a rig of {n} hosts: {e}"))
}

/// `zeroconf_tool.py browse TYPE --timeout S` in host `i` (on its eth0 only): the resolved
/// services, one JSON object each.
fn browse(rig: &Rig, i: usize, service_type: &str, seconds: u64) -> Vec<Value> {
    let tool = fixture("zeroconf_tool.py");
    let out = rig.host(i).run(
        python(),
        [
            tool.to_string_lossy().into_owned(),
            "browse".into(),
            service_type.into(),
            "--timeout".into(),
            seconds.to_string(),
            "--address".into(),
            rig.addr(i).to_string(),
        ],
        Duration::from_secs(seconds + 15),
    );
    assert!(out.success(), "zeroconf browse failed\n{}", out.describe());
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("browse printed a non-JSON line `{l}`: {e}\n{}", out.describe())))
        .collect()
}

/// Browses `service_type` from host `i` (windows of [`BROWSE_SECONDS`]) until an entry matches
/// `pred`, for at most `timeout`; returns it, or panics with everything seen.
fn browse_until(rig: &Rig, i: usize, service_type: &str, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool, context: impl Fn() -> String) -> Value {
    let start = Instant::now();
    loop {
        let seen = browse(rig, i, service_type, BROWSE_SECONDS);
        if let Some(v) = seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        if start.elapsed() >= timeout {
            panic!(
                "python-zeroconf in host {i} did not find {what} within {timeout:?}; last browse saw:\n{}\n{}",
                serde_json::to_string_pretty(&seen).unwrap_or_default(),
                context()
            );
        }
    }
}

fn prop<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["properties"][key].as_str()
}

fn addresses(v: &Value) -> Vec<String> {
    v["addresses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The MCP fixture in host `i`, on `0.0.0.0:port`; returns once it accepts connections.
fn mcp_fixture(rig: &Rig, i: usize, port: u16, name: &str) -> Spawned {
    let tool = fixture("mcp_server.py").to_string_lossy().into_owned();
    let port_s = port.to_string();
    let mut p = rig.host(i).spawn(python(), [tool.as_str(), "--port", &port_s, "--host", "0.0.0.0", "--name", name]).expect("spawn the MCP fixture");
    assert!(rig.host(i).wait_for_tcp("127.0.0.1", port, MCP_START_TIMEOUT), "MCP fixture did not listen\n{}", p.describe());
    p
}

/// A tiny HTTP server in host `i` on `ip:port` that answers every GET and POST with
/// `200 ok` (text/plain): HTTP, but no MCP. Returns once it listens.
fn plain_http(rig: &Rig, i: usize, ip: &str, port: u16) -> Spawned {
    let code = format!(
        r#"
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Ok(BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = answer
    do_POST = answer
    def log_message(self, *a):
        pass

s = ThreadingHTTPServer(("{ip}", {port}), Ok)
print("listening", flush=True)
s.serve_forever()
"#
    );
    let mut p = rig.host(i).spawn(python(), ["-c", code.as_str()]).expect("spawn the plain HTTP server");
    assert!(p.wait_for_log("listening", Duration::from_secs(15)), "plain HTTP server did not start\n{}", p.describe());
    p
}

/// Runs `zeroconf_tool.py <args> --address <host i> --prop k=v ...` in host `i` and waits
/// (up to `timeout`) for the line starting with `ready`.
fn zeroconf_tool(rig: &Rig, i: usize, args: &[String], props: &[&str], ready: &str, timeout: Duration) -> Spawned {
    let mut all: Vec<String> = vec![fixture("zeroconf_tool.py").to_string_lossy().into_owned()];
    all.extend(args.iter().cloned());
    all.extend(["--address".into(), rig.addr(i).to_string()]);
    for p in props {
        all.extend(["--prop".into(), p.to_string()]);
    }
    let mut p = rig.host(i).spawn(python(), &all).expect("spawn zeroconf_tool.py");
    assert!(p.wait_for_log(ready, timeout), "zeroconf_tool.py never printed `{ready}`\n{}", p.describe());
    p
}

/// `zeroconf_tool.py advertise TYPE NAME --port P` in host `i`, kept for 60 s; returns once
/// registered.
fn advertise(rig: &Rig, i: usize, service_type: &str, name: &str, port: u16, props: &[&str]) -> Spawned {
    let args = ["advertise".into(), service_type.into(), name.into(), "--port".into(), port.to_string(), "--seconds".into(), "60".into()];
    zeroconf_tool(rig, i, &args, props, "advertising ", Duration::from_secs(15))
}

/// The entry named `name` in the node's `services --json`, if listed.
fn listed_service(node: &MeshNode, rig: &Rig, name: &str) -> Option<Value> {
    node.json(rig, &["services", "--json"])?.as_array()?.iter().find(|s| s["name"] == name).cloned()
}

fn node_context(node: &MeshNode, rig: &Rig) -> String {
    let services = node.cli(rig, &["services", "--json"]);
    format!("--- services --json on node {} ---\n{}\n--- node log ---\n{}", node.index, services.describe(), node.log())
}

#[test]
fn python_zeroconf_lists_and_resolves_a_node_advert() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    assert!(!node.peer_id.is_empty(), "node 0 reported no peer id\n{}", node.log());

    let ad = browse_until(
        &rig,
        1,
        NODE_TYPE,
        Duration::from_secs(12),
        &format!("a {NODE_TYPE} advert with id={}", node.peer_id),
        |v| prop(v, "id") == Some(node.peer_id.as_str()),
        || format!("--- node log ---\n{}", node.log()),
    );
    let ctx = format!("advert: {}\n--- node log ---\n{}", serde_json::to_string_pretty(&ad).unwrap_or_default(), node.log());
    assert_eq!(ad["type"], NODE_TYPE, "{ctx}");
    assert!(prop(&ad, "mesh").is_some_and(|m| !m.is_empty()), "the advert should carry a non-empty `mesh`\n{ctx}");
    assert_eq!(prop(&ad, "v"), Some(craftmesh_protocol::wire::WIRE_VERSION.to_string().as_str()), "the advert's `v` should be the wire version\n{ctx}");
    assert_eq!(ad["port"], DEFAULT_MESH_PORT, "the advert should name the default mesh port\n{ctx}");
    let addrs = addresses(&ad);
    assert!(addrs.contains(&rig.addr(0).to_string()), "the advert should carry host 0's address {}\n{ctx}", rig.addr(0));
    for a in &addrs {
        let ip: IpAddr = a.parse().unwrap_or_else(|e| panic!("advert address `{a}` is not an IP: {e}\n{ctx}"));
        assert!(!ip.is_loopback(), "the advert should carry no loopback address, has {a}\n{ctx}");
    }
}

#[test]
fn node_mcp_server_is_advertised_as_mcp_tcp() {
    if !rig_prerequisites() || !mcp_prerequisite() {
        return;
    }
    let rig = rig(2);
    let mut fixture = mcp_fixture(&rig, 0, MCP_PORT, "adv-fixture");
    let yaml = format!(
        "settings:
  discovery_interval: 2
servers:
  adv-mcp:
    priority_order: [external_deployment]
    discovery_strategies:
      external:
        - type: port_check
          ports: [{MCP_PORT}]
          host: 127.0.0.1
          health_endpoint: /health
          mcp_path: /mcp
"
    );
    let node = MeshNode::start(&rig, 0, &yaml, &[]);

    let ad = browse_until(
        &rig,
        1,
        MCP_TYPE,
        Duration::from_secs(15),
        &format!("a {MCP_TYPE} advert with name=adv-mcp"),
        |v| prop(v, "name") == Some("adv-mcp"),
        || format!("{}\n--- MCP fixture ---\n{}", node_context(&node, &rig), fixture.log_text()),
    );
    let ctx = format!("advert: {}\n{}", serde_json::to_string_pretty(&ad).unwrap_or_default(), node_context(&node, &rig));
    assert_eq!(ad["type"], MCP_TYPE, "{ctx}");
    assert_eq!(prop(&ad, "path"), Some("/mcp"), "{ctx}");
    assert_eq!(prop(&ad, "transport"), Some("streamable-http"), "{ctx}");
    assert_eq!(prop(&ad, "node"), Some(node.peer_id.as_str()), "the advert should name node 0's peer id\n{ctx}");
    assert_eq!(ad["port"], MCP_PORT, "the advert should name the MCP server's port\n{ctx}");
    let addrs = addresses(&ad);
    assert!(addrs.contains(&rig.addr(0).to_string()), "the advert should carry host 0's address {}\n{ctx}", rig.addr(0));
    assert!(addrs.iter().all(|a| a.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback())), "the advert should carry no loopback address\n{ctx}");
    assert!(fixture.try_wait().is_none(), "the MCP fixture should still run\n{}", fixture.describe());
}

#[test]
fn outside_mcp_advert_to_a_non_mcp_port_is_listed_but_never_resolved() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let addr1 = rig.addr(1).to_string();
    let _http = plain_http(&rig, 1, &addr1, HTTP_PORT);
    let _ad = advertise(&rig, 1, MCP_TYPE, "rogue", HTTP_PORT, &["name=rogue", "path=/mcp"]);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);

    let listed = {
        let start = Instant::now();
        loop {
            if let Some(s) = listed_service(&node, &rig, "rogue") {
                break s;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "node 0 did not list the outside advert `rogue` within 15 s\n{}", node_context(&node, &rig));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let ctx = format!("listed: {}\n{}", serde_json::to_string_pretty(&listed).unwrap_or_default(), node_context(&node, &rig));
    assert_eq!(listed["source"], "mdns", "{ctx}");
    assert_eq!(listed["healthy"], false, "an outside advert is listed as unverified\n{ctx}");
    assert!(listed["detail"].as_str().is_some_and(|d| d.starts_with("external, unverified")), "detail should say the advert is external and unverified\n{ctx}");
    assert!(
        listed["url"].as_str().is_some_and(|u| u.contains(&format!("{addr1}:{HTTP_PORT}"))),
        "the listed url should point at the advertised {addr1}:{HTTP_PORT}\n{ctx}"
    );

    let rogue_url = format!("http://{addr1}:{HTTP_PORT}");
    for attempt in ["at once", "a few seconds later"] {
        if attempt != "at once" {
            std::thread::sleep(Duration::from_secs(3));
        }
        let out = node.cli(&rig, &["resolve", "rogue"]);
        assert!(!out.timed_out, "`resolve rogue` ({attempt}) should answer\n{}\n{}", out.describe(), node.log());
        assert!(
            !out.success(),
            "`resolve rogue` ({attempt}) must not answer for a port that speaks HTTP but not MCP\n{}\n{}",
            out.describe(),
            node_context(&node, &rig)
        );
        assert!(!out.stdout.contains(&rogue_url), "`resolve rogue` ({attempt}) must not print the rogue URL\n{}", out.describe());
    }
}

#[test]
fn outside_mcp_advert_to_a_real_mcp_server_resolves_after_verification() {
    if !rig_prerequisites() || !mcp_prerequisite() {
        return;
    }
    let rig = rig(2);
    let addr1 = rig.addr(1).to_string();
    let _mcp = mcp_fixture(&rig, 1, MCP_PORT, "outside-fixture");
    let _ad = advertise(&rig, 1, MCP_TYPE, "outside-mcp", MCP_PORT, &["name=outside-mcp", "path=/mcp"]);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);

    let want = format!("http://{addr1}:{MCP_PORT}/mcp");
    let resolved = {
        let start = Instant::now();
        loop {
            let out = node.cli(&rig, &["resolve", "outside-mcp"]);
            if out.success() {
                break out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "`resolve outside-mcp` did not succeed within 15 s; last run:\n{}\n{}",
                out.describe(),
                node_context(&node, &rig)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    assert_eq!(
        resolved.stdout.trim(),
        want,
        "`resolve outside-mcp` should print the advertised, verified URL\n{}\n{}",
        resolved.describe(),
        node_context(&node, &rig)
    );
    // wait_until is the harness's bounded poll; the listing stays as the advert says.
    let listed = wait_until("node 0 to list outside-mcp", Duration::from_secs(5), || listed_service(&node, &rig, "outside-mcp"));
    assert_eq!(listed["source"], "mdns", "{}", node_context(&node, &rig));
}

#[test]
fn malformed_and_spoofed_node_adverts_are_rejected_and_counted() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let _bad_id = advertise(&rig, 1, "_craftmesh._tcp.local.", "spoof-bad-id", 7411, &["id=not-a-peer-id", "mesh=open", "v=1"]);
    let _no_id = advertise(&rig, 1, "_craftmesh._tcp.local.", "spoof-no-id", 7411, &["mesh=open", "v=1"]);
    let rejected = wait_until("the node to count both spoofed adverts", Duration::from_secs(15), || {
        let st = node.json(&rig, &["status", "--json"])?;
        let n = st["mesh"]["stats"]["rejected"]["advert_invalid"].as_u64().unwrap_or(0);
        (n >= 2).then_some(n)
    });
    assert!(rejected >= 2);
    assert!(node.members(&rig).is_empty(), "a spoofed advert must not create a member");
}

/// `zeroconf_tool.py flood`: `count` instances of `service_type` (port 9) from host `i` at once.
fn flood(rig: &Rig, i: usize, service_type: &str, prefix: &str, count: usize, props: &[&str]) -> Spawned {
    flood_with(rig, i, service_type, prefix, count, props, &[])
}

/// [`flood`] with extra options of the tool (`--random-peer-ids`, `--no-pad`).
fn flood_with(rig: &Rig, i: usize, service_type: &str, prefix: &str, count: usize, props: &[&str], extra: &[&str]) -> Spawned {
    let mut args: Vec<String> = vec![
        "flood".into(),
        service_type.into(),
        prefix.into(),
        "--count".into(),
        count.to_string(),
        "--port".into(),
        "9".into(),
        "--seconds".into(),
        "120".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    zeroconf_tool(rig, i, &args, props, "flooding ", Duration::from_secs(120))
}

/// Resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// 2,000 well-formed node adverts, each with its own valid peer id and this mesh's id (so
/// each looks like a node worth dialling): the node keeps answering, dials at most its
/// budget (a burst of 20, then 10 a second), keeps a bounded number of strangers, restarts
/// its mDNS daemon rather than let its cache grow, its memory does not grow with the
/// flood, and its real peer stays alive.
#[test]
fn a_flood_of_valid_looking_node_adverts_keeps_memory_flat_and_dials_rate_limited() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(3);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let peer = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    wait_until("node 0 to see its peer alive", Duration::from_secs(20), || (node.state_of(&rig, &peer.peer_id).as_deref() == Some("alive")).then_some(()));
    let status = || node.json(&rig, &["status", "--json"]).unwrap_or_else(|| panic!("status failed during the flood\n{}", node.log()));
    let mesh_id = status()["mesh"]["mesh_id"].as_str().expect("mesh id").to_string();
    let mesh_prop = format!("mesh={mesh_id}");
    let props = [mesh_prop.as_str(), "v=2"];
    let stat = |v: &Value, k: &str| v["mesh"]["stats"][k].as_u64().unwrap_or(0);

    // A small flood first touches every code path the big one uses (adverts, the dial
    // budget, refused dials), so what is measured next is what the flood itself holds.
    let warm = flood_with(&rig, 1, NODE_TYPE, "warm", 60, &props, &["--random-peer-ids", "--no-pad"]);
    wait_until("node 0 to dial some of the warm-up adverts", Duration::from_secs(30), || (stat(&status(), "dials") >= 20).then_some(()));
    std::thread::sleep(Duration::from_secs(8));
    drop(warm);
    let before = rss_kib(node.pid());
    let s0 = status();
    let t0 = Instant::now();

    let _flood = flood_with(&rig, 1, NODE_TYPE, "flood", 2000, &props, &["--random-peer-ids", "--no-pad"]);
    wait_until("node 0 to reset its mDNS cache under the flood", Duration::from_secs(90), || (stat(&status(), "mdns_flood_resets") >= 1).then_some(()));
    std::thread::sleep(Duration::from_secs(10));
    let s1 = status();
    let elapsed = t0.elapsed().as_secs_f64();
    let after = rss_kib(node.pid());
    let log = node.log();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    let ctx = format!("before {s0}\nafter {s1}\n--- node log (last lines first) ---\n{}", tail.join("\n"));
    let dials = stat(&s1, "dials") - stat(&s0, "dials");
    assert!(dials as f64 <= 20.0 + 10.0 * elapsed + 2.0, "{dials} dials in {elapsed:.1} s: over the budget\n{ctx}");
    assert!(stat(&s1, "strangers") <= 256, "strangers are capped\n{ctx}");
    assert!(after.saturating_sub(before) < 2048, "RSS grew from {before} KiB to {after} KiB over the flood\n{ctx}");
    assert!(node.members(&rig).iter().all(|m| m["id"] == peer.peer_id.as_str()), "a flooded advert must not create a member\n{ctx}");
    assert_eq!(node.state_of(&rig, &peer.peer_id).as_deref(), Some("alive"), "the real peer should stay alive through the flood\n{ctx}");
}

/// Hundreds of outside `_mcp._tcp` adverts and spoofed `_craftmesh._tcp` adverts at once:
/// the node keeps answering, keeps at most 64 outside adverts, counts the spoofed ones,
/// and its real peer stays alive.
#[test]
fn a_flood_of_adverts_is_capped_counted_and_the_node_keeps_working() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(3);
    let node = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let peer = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    wait_until("node 0 to see its peer alive", Duration::from_secs(20), || (node.state_of(&rig, &peer.peer_id).as_deref() == Some("alive")).then_some(()));

    let _mcp = flood(&rig, 1, MCP_TYPE, "flood-mcp", 300, &["name=flooded", "transport=streamable-http", "path=/mcp"]);
    let _nodes = flood(&rig, 1, NODE_TYPE, "flood-node", 300, &["id=not-a-peer-id", "mesh=open", "v=1"]);

    // The node keeps answering its API while it takes the flood in (each CLI call has a
    // deadline of its own), counts the spoofed node adverts and caps the outside ones.
    let rejected = wait_until("node 0 to count the spoofed node adverts", Duration::from_secs(30), || {
        let st = node.json(&rig, &["status", "--json"]).unwrap_or_else(|| panic!("status failed during the flood\n{}", node.log()));
        let n = st["mesh"]["stats"]["rejected"]["advert_invalid"].as_u64().unwrap_or(0);
        (n >= 100).then_some(n)
    });
    assert!(rejected >= 100);
    let services = node.json(&rig, &["services", "--json"]).unwrap_or_else(|| panic!("services failed during the flood\n{}", node.log()));
    let outside = services.as_array().map(|a| a.iter().filter(|s| s["source"] == "mdns").count()).unwrap_or(0);
    assert!(outside <= 64, "outside adverts must be capped at 64, {outside} listed");
    assert!(outside > 0, "some outside adverts should be listed\n{}", node_context(&node, &rig));
    assert!(node.members(&rig).iter().all(|m| m["id"] == peer.peer_id.as_str()), "a spoofed advert must not create a member");
    assert_eq!(node.state_of(&rig, &peer.peer_id).as_deref(), Some("alive"), "the real peer should stay alive through the flood\n{}", node.log());
    // A flooded `resolve` hands out nothing unverified (port 9 speaks no MCP).
    let out = node.cli(&rig, &["resolve", "flooded", "--json"]);
    assert!(!out.success(), "an unverified flooded advert must not resolve\n{}", out.describe());
}
