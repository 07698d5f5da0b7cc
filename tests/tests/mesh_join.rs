//! Secure by default, on real hosts (network namespaces, real multicast): nodes started
//! with no flags each make their own mesh key and never mesh; `craftmesh invite` on one
//! and `craftmesh join CODE` on the other (short code over the LAN, or the long code)
//! put them in one mesh. An open node and a keyed node never mesh.

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, Spawned, netns_available};
use craftmesh_tests::require;
use serde_json::Value;
use std::time::Duration;

const JOIN: Duration = Duration::from_secs(30);

fn rig(n: usize) -> Option<Rig> {
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return None;
    }
    Some(Rig::new(n).expect("build the rig"))
}

fn ids(rig: &Rig, n: &MeshNode) -> Vec<String> {
    n.members(rig).iter().filter_map(|m| m["id"].as_str().map(str::to_string)).collect()
}

fn alive_both_ways(rig: &Rig, a: &MeshNode, b: &MeshNode) {
    for (x, y) in [(a, b), (b, a)] {
        wait_until(&format!("node {} to see node {} alive", x.index, y.index), JOIN, || {
            (x.state_of(rig, &y.peer_id).as_deref() == Some("alive")).then_some(())
        });
    }
}

/// Starts `craftmesh invite --json` in the node's host; returns it and its first JSON line.
fn spawn_invite(rig: &Rig, n: &MeshNode) -> (Spawned, Value) {
    let api = n.api();
    let cmd = n.cfg.command(&["invite", "--json", "--ttl", "120", "--api", &api]);
    let mut p = rig.host(n.index).spawn_command(&cmd).expect("spawn craftmesh invite");
    assert!(p.wait_for_log("\"code\"", Duration::from_secs(20)), "invite printed no code\n{}", p.describe());
    let line = p.log_text().lines().find(|l| l.starts_with('{') && l.contains("\"code\"")).map(str::to_string).unwrap_or_default();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("invite's first line is not JSON ({e}): {line}"));
    (p, v)
}

fn mesh_id(rig: &Rig, n: &MeshNode) -> String {
    n.json(rig, &["status", "--json"]).and_then(|v| v["mesh"]["mesh_id"].as_str().map(str::to_string)).unwrap_or_default()
}

#[test]
fn two_fresh_nodes_never_mesh_until_a_short_code_joins_them() {
    let Some(rig) = rig(2) else { return };
    let a = MeshNode::start_exact(&rig, 0, EMPTY_CONFIG, &[]);
    let mut b = MeshNode::start_exact(&rig, 1, EMPTY_CONFIG, &[]);
    assert!(a.cfg.data_dir().join("mesh.key").exists(), "the first `up` creates the data dir's key\n{}", a.log());
    assert_ne!(mesh_id(&rig, &a), mesh_id(&rig, &b), "two fresh nodes, two keys");
    assert_ne!(mesh_id(&rig, &a), "open");
    // They see each other's adverts (counted as another mesh) but never become members.
    wait_until("node 0 to count node 1's advert as another mesh", JOIN, || {
        let st = a.json(&rig, &["status", "--json"])?;
        (st["mesh"]["stats"]["rejected"]["advert_other_mesh"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.members(&rig).is_empty() && b.members(&rig).is_empty(), "{:?} / {:?}", a.members(&rig), b.members(&rig));

    let (mut invite, first) = spawn_invite(&rig, &a);
    let code = first["code"].as_str().expect("short code").to_string();
    assert!(first["long_code"].as_str().is_some_and(|l| l.starts_with("CM1-")), "{first}");
    let out = b.cli(&rig, &["join", &code, "--wait", "15", "--json"]);
    assert!(out.success(), "join failed: {}\n--- invite ---\n{}", out.describe(), invite.describe());
    let joined: Value = serde_json::from_str(&out.stdout).expect("join --json");
    assert_eq!(joined["mesh_id"], first["mesh_id"], "{joined}");
    let status = invite.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|| panic!("invite did not exit\n{}", invite.describe()));
    assert!(status.success(), "{}", invite.describe());
    assert!(invite.log_text().contains("\"result\":\"joined\""), "{}", invite.describe());

    b.terminate(&rig);
    b.restart(&rig);
    assert_eq!(mesh_id(&rig, &b), mesh_id(&rig, &a));
    alive_both_ways(&rig, &a, &b);
    // The previous key of node 1 is kept, not lost.
    assert!(b.cfg.data_dir().join("mesh.key.bak").exists());
}

#[test]
fn a_wrong_short_code_voids_the_invite_and_stores_no_key() {
    let Some(rig) = rig(2) else { return };
    let a = MeshNode::start_exact(&rig, 0, EMPTY_CONFIG, &[]);
    let b = MeshNode::start_exact(&rig, 1, EMPTY_CONFIG, &[]);
    let before = std::fs::read_to_string(b.cfg.data_dir().join("mesh.key")).expect("key of node 1");
    let (mut invite, first) = spawn_invite(&rig, &a);
    let code = first["code"].as_str().expect("short code").to_string();
    // Same nameplate (it finds the invite), another last word.
    let mut parts: Vec<&str> = code.split('-').collect();
    let last = parts.pop().expect("a word");
    let wrong = format!("{}-{}", parts.join("-"), if last == "apple" { "river" } else { "apple" });
    let out = b.cli(&rig, &["join", &wrong, "--wait", "15"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("wrong"), "{}", out.describe());
    let status = invite.wait_timeout(Duration::from_secs(20)).unwrap_or_else(|| panic!("invite did not exit\n{}", invite.describe()));
    assert_eq!(status.code(), Some(1), "{}", invite.describe());
    assert!(invite.log_text().contains("wrong_code"), "{}", invite.describe());
    assert_eq!(std::fs::read_to_string(b.cfg.data_dir().join("mesh.key")).expect("key"), before, "no key stored");
    // The right code finds no invite any more.
    let out = b.cli(&rig, &["join", &code, "--wait", "3"]);
    assert!(!out.success(), "{}", out.describe());
}

#[test]
fn a_long_code_joins_a_fresh_node_to_the_mesh() {
    let Some(rig) = rig(2) else { return };
    let a = MeshNode::start_exact(&rig, 0, EMPTY_CONFIG, &[]);
    let mut b = MeshNode::start_exact(&rig, 1, EMPTY_CONFIG, &[]);
    let v = a.json(&rig, &["invite", "--long", "--json"]).expect("invite --long --json");
    let long = v["long_code"].as_str().expect("long code").to_string();
    // A typo is an error, not another mesh.
    let typo = format!("{}{}", &long[..long.len() - 1], if long.ends_with('0') { "1" } else { "0" });
    let out = b.cli(&rig, &["join", &typo]);
    assert_eq!(out.code(), Some(2), "{}", out.describe());
    let out = b.cli(&rig, &["join", &long]);
    assert!(out.success(), "{}", out.describe());
    assert!(out.stdout.contains("restart"), "{}", out.describe());
    b.terminate(&rig);
    b.restart(&rig);
    alive_both_ways(&rig, &a, &b);
}

#[test]
fn an_open_node_and_a_keyed_node_never_mesh_and_the_open_one_says_so() {
    let Some(rig) = rig(2) else { return };
    let keyed = MeshNode::start_exact(&rig, 0, EMPTY_CONFIG, &[]);
    let open = MeshNode::start_exact(&rig, 1, EMPTY_CONFIG, &["--open"]);
    assert_eq!(mesh_id(&rig, &open), "open");
    wait_until("the keyed node to count the open node's advert", JOIN, || {
        let st = keyed.json(&rig, &["status", "--json"])?;
        (st["mesh"]["stats"]["rejected"]["advert_other_mesh"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(!ids(&rig, &keyed).contains(&open.peer_id) && !ids(&rig, &open).contains(&keyed.peer_id));
    assert!(open.log().contains("OPEN MESH"), "{}", open.log());
    let st = open.cli(&rig, &["status"]);
    assert!(st.stdout.contains("OPEN MESH"), "{}", st.describe());
    // Nothing to share from an open mesh; and --open with a key is a usage error.
    let inv = open.cli(&rig, &["invite", "--long"]);
    assert_eq!(inv.code(), Some(2), "{}", inv.describe());
    assert!(!open.cfg.data_dir().join("mesh.key").exists(), "refusing made no key");
    let key = keyed.cfg.data_dir().join("mesh.key").to_string_lossy().into_owned();
    let fresh = craftmesh_tests::ConfigDir::new(EMPTY_CONFIG);
    let mut cmd = fresh.command(&["up", "--open", "--mesh-key", &key, "--api", "127.0.0.1:7499"]);
    cmd.env_remove("CRAFTMESH_NO_MESH");
    let both = craftmesh_tests::run_with_timeout(&mut rig.host(1).wrap(&cmd), Duration::from_secs(20));
    assert_eq!(both.code(), Some(2), "{}", both.describe());
    assert!(both.stderr.contains("--open"), "{}", both.describe());
}
