//! `resolve` across the mesh: a healthy remote instance is used before any local
//! discovery runs; and mesh events on `/v1/events` carry one `kind` each.

use craftmesh_tests::meshnode::{MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available};
use craftmesh_tests::{fixture, free_port, python, python_has_mcp, require};
use std::time::Duration;

const JOIN: Duration = Duration::from_secs(30);

fn server_refreshes(rig: &Rig, n: &MeshNode) -> u64 {
    let v = n.json(rig, &["status", "--json"]).unwrap_or_else(|| panic!("status of node {}:\n{}", n.index, n.log()));
    v["stats"]["server_refreshes"].as_u64().unwrap_or_else(|| panic!("no stats.server_refreshes in {v}"))
}

/// A python reader of `/v1/events` inside `host`, printing the raw stream for `secs`.
fn events_reader(rig: &Rig, host: usize, token: &str, secs: u32) -> craftmesh_tests::netns::Spawned {
    let code = format!(
        "import socket, sys, time\n\
         s = socket.create_connection(('127.0.0.1', 7410), timeout=5)\n\
         s.sendall(b'GET /v1/events HTTP/1.0\\r\\nHost: 127.0.0.1:7410\\r\\nAuthorization: Bearer {token}\\r\\n\\r\\n')\n\
         s.settimeout(0.5)\n\
         end = time.time() + {secs}\n\
         while time.time() < end:\n\
         \x20   try:\n\
         \x20       b = s.recv(65536)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   if not b:\n\
         \x20       break\n\
         \x20   sys.stdout.write(b.decode('utf-8', 'replace'))\n\
         \x20   sys.stdout.flush()\n"
    );
    rig.host(host).spawn(python(), ["-u", "-c", code.as_str()]).expect("spawn the events reader")
}

#[test]
fn resolve_uses_a_healthy_remote_instance_before_any_local_discovery() {
    if !require("network namespaces (root, iproute2)", netns_available()) || !require("python with the mcp SDK", python_has_mcp()) {
        return;
    }
    let rig = Rig::new(2).expect("build the rig");
    let port = free_port();
    let _mcp = rig
        .host(0)
        .spawn(python(), [fixture("mcp_server.py").to_string_lossy().as_ref(), "--port", &port.to_string(), "--host", "0.0.0.0", "--name", "remote-first"])
        .expect("spawn MCP fixture");
    assert!(rig.host(0).wait_for_tcp("127.0.0.1", port, Duration::from_secs(30)), "the fixture did not listen");
    // Both nodes look for the server on the same port of their own host: host 0 finds it,
    // host 1 never does (nothing listens there), so its cached answer is never healthy.
    let yaml = format!(
        "settings:\n  discovery_interval: 1\n  health_check_timeout: 3\nservers:\n  shared-mcp:\n    discovery_strategies:\n      external:\n        - type: port_check\n          ports: [{port}]\n"
    );
    let b = MeshNode::start(&rig, 1, &yaml, &[]);
    let token = craftmesh_tests::api::token(&b.cfg.data_dir());
    let mut reader = events_reader(&rig, 1, &token, 40);
    let a = MeshNode::start(&rig, 0, &yaml, &[]);
    let url = format!("http://{}:{port}/mcp", rig.addr(0));
    wait_until("node 1 to list node 0's healthy server", JOIN, || {
        let v = b.json(&rig, &["services", "--json"])?;
        v.as_array()?.iter().any(|s| s["name"] == "shared-mcp" && s["local"] == false && s["healthy"] == true && s["node"] == a.peer_id.as_str()).then_some(())
    });
    let before = server_refreshes(&rig, &b);
    let out = b.cli(&rig, &["resolve", "shared-mcp"]);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), b.log());
    assert_eq!(out.stdout.trim(), url, "{}", out.describe());
    assert_eq!(server_refreshes(&rig, &b), before, "a healthy remote instance answers before any local discovery\n{}", b.log());

    // Mesh events streamed meanwhile have one `kind` each, named like their SSE event.
    let text = reader.log_text();
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).collect();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event:")).map(str::trim).collect();
    assert!(names.contains(&"member"), "node 1 streamed node 0 joining:\n{text}");
    assert_eq!(data.len(), names.len(), "{text}");
    for (d, name) in data.iter().zip(&names) {
        assert_eq!(d.matches("\"kind\"").count(), 1, "exactly one kind in {d}");
        assert!(d.contains(&format!("\"kind\":\"{name}\"")), "event `{name}` carries kind {name}: {d}");
    }
    let _ = reader.try_wait();
}
