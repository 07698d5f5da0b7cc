//! Plain services (not MCP) across real hosts: craftmesh nodes in network namespaces
//! deploy an HTTP key-value service (`tests/fixtures/kv_service.py`, standing in for
//! Qdrant) by claim, once for the LAN, and every host reaches that one instance on
//! `127.0.0.1:PORT` of its own loopback, tunnelled over the mesh. Deadlines are generous;
//! the bench measures.

use craftmesh_tests::meshnode::{MeshNode, wait_one_cluster, wait_until};
use craftmesh_tests::netns::{Rig, netns_available};
use craftmesh_tests::{ConfigDir, fixture, python, require, run_with_timeout};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const FORM: Duration = Duration::from_secs(30);
/// The service's port: free in every test namespace (each has a loopback of its own).
const PORT: u16 = 17333;

fn rig(n: usize) -> Option<Rig> {
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return None;
    }
    if !require("python3 (tests/scripts/run-tests.sh makes .venv)", python().exists()) {
        return None;
    }
    Some(Rig::new(n).expect("build the rig"))
}

/// `kv`: a plain HTTP service run by user command, health `GET /healthz`, its processes
/// marked with `tag` (tests share the process table).
fn kv_config(tag: &str) -> ConfigDir {
    kv_config_with(tag, "    priority_order: [user_installation]\n")
}

/// [`kv_config`] with `order` (the `priority_order` line and any `discovery_strategies`).
fn kv_config_with(tag: &str, order: &str) -> ConfigDir {
    let yaml = format!(
        "settings:\n  discovery_interval: 30\nservers:\n  kv:\n{order}    resource_requirements:\n      ports: [{PORT}]\n    deployment_config:\n      prevent_duplicate: true\n      auto_restart: true\n"
    );
    let json = serde_json::json!({"mcpServers": {"kv": {
        "command": python().to_string_lossy(),
        "args": [fixture("kv_service.py").to_string_lossy(), "serve", "--port", PORT.to_string(), "--name", tag],
        "health_check": {"type": "http", "endpoint": "/healthz", "interval": 1},
    }}});
    ConfigDir::new(&yaml).with_servers_json("core", &json.to_string())
}

fn start(rig: &Rig, tag: &str) -> Vec<MeshNode> {
    let nodes: Vec<MeshNode> = (0..3).map(|i| MeshNode::start_cfg(rig, i, kv_config(tag), &["--role", "server"])).collect();
    wait_one_cluster(rig, &nodes, Some(3), FORM);
    nodes
}

fn logs(nodes: &[MeshNode]) -> String {
    nodes.iter().map(|n| format!("--- node {} ---\n{}", n.index, n.log())).collect::<Vec<_>>().join("\n")
}

fn ensure(rig: &Rig, n: &MeshNode) -> Value {
    let out = run_with_timeout(
        &mut rig.host(n.index).wrap(&n.cfg.command(&["resolve", "--ensure", "kv", "--json", "--api", "127.0.0.1:7410"])),
        Duration::from_secs(120),
    );
    assert!(out.success(), "resolve --ensure kv failed\n{}", out.describe());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.describe()))
}

/// An HTTP request from host `i` (`value` given: PUT): `{"status", "body"}`.
fn http(rig: &Rig, i: usize, path: &str, value: Option<&str>) -> Value {
    let mut c = Command::new(python());
    c.arg(fixture("kv_service.py"));
    let url = format!("http://127.0.0.1:{PORT}{path}");
    match value {
        Some(v) => c.args(["put", &url, v]),
        None => c.args(["get", &url]),
    };
    let out = run_with_timeout(&mut rig.host(i).wrap(&c), Duration::from_secs(30));
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("client output is not JSON ({e})\n{}", out.describe()))
}

/// Pids of the `kv` services marked `tag`.
fn services(tag: &str) -> Vec<u32> {
    let out = run_with_timeout(Command::new("pgrep").args(["-f", &format!("kv_service.py serve --port {PORT} --name {tag}$")]), Duration::from_secs(5));
    out.stdout.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn a_plain_service_runs_once_and_every_host_reaches_it_on_its_own_loopback_port() {
    let Some(rig) = rig(3) else { return };
    let tag = format!("kv-{}", craftmesh_tests::random_suffix());
    let mut nodes = start(&rig, &tag);
    // A plain `resolve` finds nothing and starts nothing.
    let out = run_with_timeout(&mut rig.host(1).wrap(&nodes[1].cfg.command(&["resolve", "kv", "--api", "127.0.0.1:7410"])), Duration::from_secs(60));
    assert!(!out.success(), "nothing runs yet\n{}", out.describe());
    assert!(services(&tag).is_empty(), "resolve deploys nothing");
    let answers: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| s.spawn(|| ensure(&rig, n))).collect();
        hs.into_iter().map(|h| h.join().expect("ensure thread")).collect()
    });
    let holder = answers[0]["node"].clone();
    assert!(answers.iter().all(|a| a["node"] == holder && a["token"] == answers[0]["token"]), "three answers, one instance: {answers:#?}");
    assert_eq!(answers.iter().filter(|a| a["deployed"] == true).count(), 1, "exactly one node deployed: {answers:#?}");
    let url = format!("http://127.0.0.1:{PORT}");
    assert!(answers.iter().all(|a| a["url"] == url.as_str()), "every host serves it on the service's own port: {answers:#?}");
    let h = answers.iter().position(|a| a["local"] == true).expect("one answer is the holder's");
    let pids = services(&tag);
    assert_eq!(pids.len(), 1, "one service process on the LAN: {pids:?}");

    // One store for the LAN: written through one host, read through every host.
    let writer = (h + 1) % 3;
    let put = http(&rig, writer, "/kv/colour", Some("teal"));
    assert_eq!(put["status"], 200, "PUT through host {writer}: {put}\n{}", logs(&nodes));
    for i in 0..3 {
        let got = http(&rig, i, "/kv/colour", None);
        assert_eq!((got["status"].as_i64(), got["body"].as_str()), (Some(200), Some("teal")), "GET through host {i}: {got}");
        let pid = http(&rig, i, "/pid", None);
        assert_eq!(pid["body"].as_str(), Some(pids[0].to_string().as_str()), "host {i} reaches the one instance: {pid}");
    }
    // Once it runs, a plain `resolve` on any host gives that host's address of it.
    let r = nodes[writer].json(&rig, &["resolve", "kv", "--json"]).expect("resolve kv");
    assert_eq!((r["url"].as_str(), r["healthy"].as_bool(), r["source"].as_str()), (Some(url.as_str()), Some(true), Some("mesh")), "{r:#}");
    let st = nodes[writer].json(&rig, &["deploy", "status", "--json"]).expect("deploy status");
    let row = st.as_array().and_then(|a| a.iter().find(|r| r["server"] == "kv").cloned()).expect("kv in deploy status");
    assert_eq!(row["node"], holder, "{st:#}");

    // The holder's node dies: its service dies with it, and the next request on another
    // host starts the next instance (the first client after a failover starts it).
    rig.kill9(nodes[h].pid()).expect("SIGKILL the holder node");
    nodes[h].proc = None;
    wait_until("the service gone with its node", Duration::from_secs(5), || services(&tag).is_empty().then_some(()));
    let other = (h + 2) % 3;
    let new_pid = wait_until("a new instance answering on another host", Duration::from_secs(60), || {
        let r = http(&rig, other, "/pid", None);
        (r["status"] == 200).then(|| r["body"].as_str().unwrap_or_default().to_string())
    });
    assert_ne!(new_pid, pids[0].to_string());
    let now = services(&tag);
    assert_eq!(now.len(), 1, "one instance after the failover: {now:?}\n{}", logs(&nodes));
    // Reached from the third host too, on the same address.
    let third = (h + 1) % 3;
    let r = wait_until("the third host reaching the new instance", Duration::from_secs(30), || {
        let r = http(&rig, third, "/pid", None);
        (r["status"] == 200).then_some(r)
    });
    assert_eq!(r["body"].as_str(), Some(new_pid.as_str()));
}

#[test]
fn a_host_whose_port_is_taken_by_another_program_serves_the_instance_on_another_port() {
    let Some(rig) = rig(3) else { return };
    let tag = format!("kv-{}", craftmesh_tests::random_suffix());
    // Another program already listens on the service's port on host 1.
    let _squatter = rig.host(1).spawn(python(), ["-m", "http.server", "--bind", "127.0.0.1", &PORT.to_string()]).expect("start the squatting server");
    assert!(rig.host(1).wait_for_tcp("127.0.0.1", PORT, Duration::from_secs(10)), "the squatter listens");
    let nodes = start(&rig, &tag);
    let e0 = ensure(&rig, &nodes[0]);
    assert_eq!(e0["local"], true, "{e0}");
    let pids = services(&tag);
    assert_eq!(pids.len(), 1);
    let e1 = ensure(&rig, &nodes[1]);
    let port = e1["port"].as_u64().expect("a port") as u16;
    assert_ne!(port, PORT, "the squatter keeps its port: {e1}");
    assert_eq!(e1["url"], format!("http://127.0.0.1:{port}").as_str(), "{e1}");
    // The other port reaches the LAN's instance; the squatter is left alone.
    let mut c = Command::new(python());
    c.arg(fixture("kv_service.py")).args(["get", &format!("http://127.0.0.1:{port}/pid")]);
    let out = run_with_timeout(&mut rig.host(1).wrap(&c), Duration::from_secs(30));
    let got: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", out.describe()));
    assert_eq!(got["body"].as_str(), Some(pids[0].to_string().as_str()), "{got}\n{}", logs(&nodes));
    let squat = http(&rig, 1, "/healthz", None);
    assert_eq!(squat["status"], 404, "the squatter (a file server) still answers on its port: {squat}");
}

#[test]
fn an_instance_already_running_on_one_host_is_taken_by_that_host_instead_of_starting_one() {
    let Some(rig) = rig(3) else { return };
    let tag = format!("kv-{}", craftmesh_tests::random_suffix());
    // Someone already runs the service on host 1, outside craftmesh.
    let _theirs = rig
        .host(1)
        .spawn(python(), [fixture("kv_service.py").to_string_lossy().as_ref(), "serve", "--port", &PORT.to_string(), "--name", &tag])
        .expect("start the external service");
    assert!(rig.host(1).wait_for_tcp("127.0.0.1", PORT, Duration::from_secs(10)));
    let theirs = wait_until("the external service's pid", Duration::from_secs(10), || services(&tag).first().copied());
    // External first: a port check on the service's port, then the user command.
    let external = format!(
        "    priority_order: [external_deployment, user_installation]\n    discovery_strategies:\n      external:\n        - type: port_check\n          ports: [{PORT}]\n          health_endpoint: /healthz\n"
    );
    let cfgs: Vec<ConfigDir> = (0..3).map(|_| kv_config_with(&tag, &external)).collect();
    let nodes: Vec<MeshNode> = cfgs.into_iter().enumerate().map(|(i, c)| MeshNode::start_cfg(&rig, i, c, &["--role", "server"])).collect();
    wait_one_cluster(&rig, &nodes, None, FORM);
    let peer1 = nodes[1].json(&rig, &["status", "--json"]).and_then(|v| v["node"]["peer_id"].as_str().map(str::to_string)).expect("peer id");
    // Host 0 learns from host 1's advert that an instance runs there.
    wait_until("host 1's instance advertised to host 0", Duration::from_secs(30), || {
        let v = nodes[0].json(&rig, &["services", "--json"])?;
        v.as_array()?.iter().any(|s| s["name"] == "kv" && s["node"] == peer1.as_str() && s["healthy"] == true).then_some(())
    });
    // The first ensure comes from host 0, which runs nothing: host 1 takes its instance.
    let e0 = ensure(&rig, &nodes[0]);
    assert_eq!((e0["node"].as_str(), e0["local"].as_bool()), (Some(peer1.as_str()), Some(false)), "{e0}\n{}", logs(&nodes));
    let st = nodes[1].json(&rig, &["deploy", "status", "--json"]).expect("deploy status");
    let row = st.as_array().and_then(|a| a.iter().find(|r| r["server"] == "kv").cloned()).expect("kv row");
    assert_eq!(row["via"], "external_deployment", "{row:#}");
    for i in [0, 2] {
        let e = ensure(&rig, &nodes[i]);
        assert_eq!(e["node"].as_str(), Some(peer1.as_str()), "{e}");
        let pid = http(&rig, i, "/pid", None);
        assert_eq!(pid["body"].as_str(), Some(theirs.to_string().as_str()), "host {i} reaches the instance that was already running: {pid}");
    }
    assert_eq!(services(&tag), vec![theirs], "nothing else was started");
}
