//! The mesh across real hosts (network namespaces on one bridge, real multicast):
//! joining, crash, cut-off, leave, wrong key, static peers, packet loss, and mesh-wide
//! services. Timings are asserted only as generous deadlines; the bench measures them.

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available, nft_available};
use craftmesh_tests::{fixture, free_port, python, python_has_mcp, require};
use std::time::{Duration, Instant};

const JOIN: Duration = Duration::from_secs(20);

fn rig(n: usize) -> Option<Rig> {
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return None;
    }
    Some(Rig::new(n).expect("build the rig"))
}

/// Waits until every node lists every other node as alive; on timeout, shows both logs.
fn all_alive(rig: &Rig, nodes: &[&MeshNode]) {
    for n in nodes {
        for other in nodes.iter().filter(|o| o.peer_id != n.peer_id) {
            let start = Instant::now();
            while n.state_of(rig, &other.peer_id).as_deref() != Some("alive") {
                assert!(
                    start.elapsed() < JOIN,
                    "node in host {} does not see node in host {} alive after {JOIN:?}\n--- observer log ---\n{}\n--- other log ---\n{}",
                    n.index,
                    other.index,
                    n.log(),
                    other.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn keygen(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let out = craftmesh_tests::run_with_timeout(
        std::process::Command::new(craftmesh_tests::craftmesh_bin()).args(["keygen", "--out"]).arg(&path),
        Duration::from_secs(10),
    );
    assert!(out.success(), "{}", out.describe());
    path
}

#[test]
fn three_nodes_see_each_other_and_each_others_mcp_servers() {
    let Some(rig) = rig(3) else { return };
    if !require("python with the mcp SDK", python_has_mcp()) {
        return;
    }
    let port = free_port();
    let mut mcp = rig
        .host(0)
        .spawn(python(), [fixture("mcp_server.py").to_string_lossy().as_ref(), "--port", &port.to_string(), "--host", "0.0.0.0", "--name", "mesh-fixture"])
        .expect("spawn MCP fixture");
    let yaml = format!(
        "settings:\n  discovery_interval: 1\n  health_check_timeout: 3\nservers:\n  shared-mcp:\n    discovery_strategies:\n      external:\n        - type: port_check\n          ports: [{port}]\n"
    );
    let a = MeshNode::start(&rig, 0, &yaml, &[]);
    let b = MeshNode::start(&rig, 1, &yaml, &[]);
    let c = MeshNode::start(&rig, 2, &yaml, &[]);
    all_alive(&rig, &[&a, &b, &c]);
    // The server on host 0 is listed on host 2 as a remote service of node 0, with the
    // LAN address (not 127.0.0.1), and resolves there after verification from host 2.
    let url = format!("http://{}:{port}/mcp", rig.addr(0));
    let listed = wait_until("node 2 to list node 0's MCP server", JOIN, || {
        let v = c.json(&rig, &["services", "--json"])?;
        v.as_array()?.iter().find(|s| s["name"] == "shared-mcp" && s["local"] == false && s["node"] == a.peer_id.as_str()).cloned()
    });
    assert_eq!(listed["url"], url.as_str(), "{listed}");
    assert_eq!(listed["protocol"], "mcp");
    assert_eq!(listed["server_info"]["name"], "mesh-fixture");
    let out = c.cli(&rig, &["resolve", "shared-mcp"]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), c.log());
    assert_eq!(out.stdout.trim(), url);
    // On host 0 the local instance is preferred.
    let out = a.cli(&rig, &["resolve", "shared-mcp"]);
    assert_eq!(out.stdout.trim(), format!("http://127.0.0.1:{port}/mcp"), "{}", out.describe());
    // Members carry capacity.
    let m = b.members(&rig);
    assert!(m.iter().all(|m| m["capacity"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0), "{m:?}");
    // When the server goes away, host 2 no longer resolves it.
    let _ = mcp.try_wait();
    drop(mcp);
    wait_until("resolve to fail once the server is gone", JOIN, || (c.cli(&rig, &["resolve", "shared-mcp"]).code() != Some(0)).then_some(()));
}

#[test]
fn killed_node_is_dead_on_every_other_node_and_rejoins_after_restart() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &[]);
    let mut c = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    all_alive(&rig, &[&a, &b, &c]);
    rig.kill9(c.pid()).expect("kill -9");
    for n in [&a, &b] {
        wait_until(&format!("node {} to see the killed node dead", n.index), Duration::from_secs(10), || {
            (n.state_of(&rig, &c.peer_id).as_deref() == Some("dead")).then_some(())
        });
        // Proven: the connection reset and a redial was refused (the host is up).
        wait_until(&format!("node {} to see the killed node crashed", n.index), Duration::from_secs(10), || crashed(&rig, n, &c.peer_id).then_some(()));
    }
    let id = c.peer_id.clone();
    c.restart(&rig);
    assert_eq!(c.peer_id, id, "same identity after restart");
    all_alive(&rig, &[&a, &b, &c]);
}

#[test]
fn cut_off_node_is_dead_everywhere_and_alive_again_after_the_link_returns() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &[]);
    let c = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    all_alive(&rig, &[&a, &b, &c]);
    rig.cut_off(2).expect("cut off");
    for n in [&a, &b] {
        wait_until(&format!("node {} to see the cut-off node dead", n.index), Duration::from_secs(15), || {
            (n.state_of(&rig, &c.peer_id).as_deref() == Some("dead")).then_some(())
        });
    }
    // A cut-off host refuses nothing: its redials (one a second) never prove a crash.
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        assert!(!crashed(&rig, n, &c.peer_id), "node {} sees a cut-off node crashed\n{}", n.index, n.log());
    }
    rig.reconnect(2).expect("reconnect");
    all_alive(&rig, &[&a, &b, &c]);
}

#[test]
fn frozen_node_is_dead_and_comes_back_when_thawed() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &[]);
    let c = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    all_alive(&rig, &[&a, &b, &c]);
    rig.freeze(c.pid()).expect("SIGSTOP");
    wait_until("the frozen node to be dead", Duration::from_secs(15), || (a.state_of(&rig, &c.peer_id).as_deref() == Some("dead")).then_some(()));
    // Its kernel still takes connections in (they hang in the handshake): never refused.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!crashed(&rig, &a, &c.peer_id), "a frozen node seen crashed\n{}", a.log());
    rig.thaw(c.pid()).expect("SIGCONT");
    all_alive(&rig, &[&a, &b, &c]);
}

#[test]
fn node_leaving_on_sigterm_is_left_everywhere() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &[]);
    let mut c = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    all_alive(&rig, &[&a, &b, &c]);
    assert_eq!(c.terminate(&rig), Some(0), "clean exit on SIGTERM\n{}", c.log());
    for n in [&a, &b] {
        wait_until(&format!("node {} to see the node left", n.index), Duration::from_secs(10), || {
            (n.state_of(&rig, &c.peer_id).as_deref() == Some("left")).then_some(())
        });
    }
    // A goodbye stays a goodbye: late mDNS answers and failed redials do not turn it into a death.
    std::thread::sleep(Duration::from_secs(3));
    for n in [&a, &b] {
        assert_eq!(n.state_of(&rig, &c.peer_id).as_deref(), Some("left"), "node {}\n{}", n.index, n.log());
    }
    // The same node started again is a new run: alive everywhere.
    c.restart(&rig);
    all_alive(&rig, &[&a, &b, &c]);
}

#[test]
fn nodes_with_a_different_key_or_none_never_join() {
    let Some(rig) = rig(4) else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = keygen(keys.path(), "a.key");
    let k2 = keygen(keys.path(), "b.key");
    let (k1, k2) = (k1.to_string_lossy().into_owned(), k2.to_string_lossy().into_owned());
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &["--mesh-key", &k1]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &["--mesh-key", &k1]);
    let other = MeshNode::start(&rig, 2, EMPTY_CONFIG, &["--mesh-key", &k2]);
    let open = MeshNode::start(&rig, 3, EMPTY_CONFIG, &["--open"]);
    all_alive(&rig, &[&a, &b]);
    // Give the outsiders time to try (they see the adverts), then check nobody let them in.
    std::thread::sleep(Duration::from_secs(4));
    for n in [&a, &b] {
        let ids: Vec<String> = n.members(&rig).iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect();
        assert!(!ids.contains(&other.peer_id) && !ids.contains(&open.peer_id), "outsider joined node {}: {ids:?}", n.index);
    }
    assert!(other.members(&rig).is_empty(), "{:?}", other.members(&rig));
    assert!(open.members(&rig).is_empty(), "{:?}", open.members(&rig));
    // Different meshes ignore each other's adverts (counted), and the key never shows.
    let st = a.json(&rig, &["status", "--json"]).expect("status");
    let mesh_id = st["mesh"]["mesh_id"].as_str().expect("mesh id").to_string();
    let key_text = std::fs::read_to_string(&k1).expect("key");
    assert!(!key_text.contains(&mesh_id), "the mesh id must not be (part of) the key");
    assert!(st["mesh"]["stats"]["rejected"]["advert_other_mesh"].as_u64().unwrap_or(0) > 0, "{st}");
}

#[test]
fn static_peers_join_without_multicast() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &["--no-mdns"]);
    let peer = format!("/ip4/{}/tcp/7411", rig.addr(0));
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &["--no-mdns", "--peer", &peer]);
    let c = MeshNode::start(&rig, 2, EMPTY_CONFIG, &["--no-mdns", "--peer", &peer]);
    // b and c learn of each other through a's records and sync.
    all_alive(&rig, &[&a, &b, &c]);
}

#[test]
fn no_false_deaths_under_ten_percent_packet_loss() {
    let Some(rig) = rig(4) else { return };
    if !require("nftables for packet loss", nft_available()) {
        return;
    }
    let nodes: Vec<MeshNode> = (0..4).map(|i| MeshNode::start(&rig, i, EMPTY_CONFIG, &[])).collect();
    let refs: Vec<&MeshNode> = nodes.iter().collect();
    all_alive(&rig, &refs);
    for i in 0..4 {
        rig.set_loss(i, 10).expect("set loss");
    }
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(2));
    }
    for i in 0..4 {
        rig.set_loss(i, 0).expect("clear loss");
    }
    for n in &nodes {
        let log = n.log();
        let deaths: Vec<&str> = log.lines().filter(|l| l.contains("member state") && l.contains("to=Dead")).collect();
        assert!(deaths.is_empty(), "node {} declared a live node dead under 10% loss:\n{}", n.index, deaths.join("\n"));
    }
}

#[test]
fn two_meshes_share_a_lan_and_one_host_runs_a_node_of_each() {
    let Some(rig) = rig(3) else { return };
    let keys = tempfile::tempdir().expect("tempdir");
    let ka = keygen(keys.path(), "a.key").to_string_lossy().into_owned();
    let kb = keygen(keys.path(), "b.key").to_string_lossy().into_owned();
    let a0 = MeshNode::start(&rig, 0, EMPTY_CONFIG, &["--mesh-key", &ka]);
    let b0 = MeshNode::start(&rig, 0, EMPTY_CONFIG, &["--mesh-key", &kb, "--api", "127.0.0.1:7420", "--listen", "7421"]);
    let a1 = MeshNode::start(&rig, 1, EMPTY_CONFIG, &["--mesh-key", &ka]);
    let b2 = MeshNode::start(&rig, 2, EMPTY_CONFIG, &["--mesh-key", &kb]);
    all_alive(&rig, &[&a0, &a1]);
    all_alive(&rig, &[&b0, &b2]);
    std::thread::sleep(Duration::from_secs(2));
    let ids = |n: &MeshNode| -> Vec<String> { n.members(&rig).iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect() };
    assert_eq!(ids(&a0), vec![a1.peer_id.clone()], "mesh A sees only A");
    assert_eq!(ids(&b0), vec![b2.peer_id.clone()], "mesh B sees only B");
    assert_eq!(ids(&a1), vec![a0.peer_id.clone()]);
    assert_eq!(ids(&b2), vec![b0.peer_id.clone()]);
}

#[test]
fn garbage_on_the_mesh_port_is_rejected_and_the_node_keeps_working() {
    let Some(rig) = rig(3) else { return };
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    // Megabytes of noise, a fake multistream hello, and a connection that says nothing.
    let target = format!("{}", rig.addr(0));
    let code = format!(
        "import os, socket, time\n\
         for payload in [os.urandom(1 << 20), b'\\x13/multistream/1.0.0\\n' + os.urandom(4096), b'']:\n\
         \x20   s = socket.create_connection(('{target}', 7411), timeout=5)\n\
         \x20   try:\n\
         \x20       s.sendall(payload)\n\
         \x20       time.sleep(0.5)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         \x20   s.close()\n\
         print('sent')\n"
    );
    let out = rig.host(1).run("python3", ["-c", code.as_str()], Duration::from_secs(30));
    assert!(out.stdout.contains("sent"), "{}", out.describe());
    let st = wait_until("the node to count rejected handshakes", Duration::from_secs(15), || {
        let st = a.json(&rig, &["status", "--json"])?;
        (st["mesh"]["stats"]["rejected"]["handshake"].as_u64().unwrap_or(0) >= 1).then_some(st)
    });
    assert!(st["mesh"]["members"].as_u64() == Some(0), "{st}");
    // and a real node still joins
    let b = MeshNode::start(&rig, 2, EMPTY_CONFIG, &[]);
    all_alive(&rig, &[&a, &b]);
}

/// A node started before its host has an address (a machine booting before DHCP, a laptop
/// before Wi-Fi) joins as soon as one appears, and stops advertising one that goes away.
#[test]
fn node_started_before_the_network_joins_when_an_address_appears() {
    let Some(rig) = rig(2) else { return };
    let ip = |i: usize, args: &[&str]| {
        let out = rig.host(i).run("ip", args, Duration::from_secs(10));
        assert!(out.success(), "{}", out.describe());
    };
    let lan = format!("{}/24", rig.addr(1));
    ip(1, &["addr", "del", &lan, "dev", "eth0"]);
    let a = MeshNode::start(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start(&rig, 1, EMPTY_CONFIG, &[]);
    let addresses = |n: &MeshNode| -> Vec<String> {
        n.json(&rig, &["status", "--json"])
            .and_then(|v| v["mesh"]["addresses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()))
            .unwrap_or_default()
    };
    assert!(!addresses(&b).contains(&rig.addr(1).to_string()), "no address yet\n{}", b.log());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.state_of(&rig, &b.peer_id), None, "node 1 has no address yet; node 0 should not know it\n{}", a.log());

    ip(1, &["addr", "add", &lan, "dev", "eth0"]);
    wait_until("node 1 to advertise its new address", Duration::from_secs(20), || addresses(&b).contains(&rig.addr(1).to_string()).then_some(()));
    all_alive(&rig, &[&a, &b]);

    // The address goes away again: node 1 stops advertising it; node 0 sees it dead.
    ip(1, &["addr", "del", &lan, "dev", "eth0"]);
    wait_until("node 1 to drop its old address", Duration::from_secs(20), || (!addresses(&b).contains(&rig.addr(1).to_string())).then_some(()));
    wait_until("node 0 to see node 1 dead", Duration::from_secs(20), || (a.state_of(&rig, &b.peer_id).as_deref() == Some("dead")).then_some(()));

    // Another address comes (a new DHCP lease): node 1 advertises it and both meet again.
    let other = std::net::Ipv4Addr::from(u32::from(rig.addr(1)) + 100);
    ip(1, &["addr", "add", &format!("{other}/24"), "dev", "eth0"]);
    wait_until("node 1 to advertise the new address", Duration::from_secs(20), || addresses(&b).contains(&other.to_string()).then_some(()));
    all_alive(&rig, &[&a, &b]);
    let known = wait_until("node 0 to know node 1 at its new address", Duration::from_secs(20), || {
        let m = a.members(&rig).into_iter().find(|m| m["id"] == b.peer_id.as_str())?;
        let addrs: Vec<String> = m["addresses"].as_array()?.iter().filter_map(|x| x.as_str().map(str::to_string)).collect();
        addrs.iter().any(|x| x.contains(&format!("/ip4/{other}/"))).then_some(addrs)
    });
    assert!(!known.is_empty());
}

/// Whether `n` holds `peer` proven crashed (`members --json`).
fn crashed(rig: &Rig, n: &MeshNode, peer: &str) -> bool {
    n.members(rig).iter().any(|m| m["id"] == peer && m["crashed"] == true)
}
