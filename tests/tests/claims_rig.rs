//! Claims across real hosts: craftmesh nodes in network namespaces on one bridge, driven
//! through the real CLI. Timings are generous deadlines here; the bench measures them.

use craftmesh_tests::meshnode::{EMPTY_CONFIG, MeshNode, wait_until};
use craftmesh_tests::netns::{Rig, netns_available};
use craftmesh_tests::require;
use serde_json::Value;
use std::time::Duration;

const FORM: Duration = Duration::from_secs(30);

fn rig(n: usize) -> Option<Rig> {
    if !require("network namespaces (root, iproute2)", netns_available()) {
        return None;
    }
    Some(Rig::new(n).expect("build the rig"))
}

/// Starts servers in hosts 0..n.
fn servers(rig: &Rig, n: usize) -> Vec<MeshNode> {
    (0..n).map(|i| MeshNode::start(rig, i, EMPTY_CONFIG, &["--role", "server"])).collect()
}

/// Waits until every node reports the same cluster with a leader and `voters` voters.
fn one_cluster(rig: &Rig, nodes: &[MeshNode], voters: usize) -> String {
    wait_until("one cluster with a leader", FORM, || {
        let views: Vec<Value> = nodes.iter().map(|n| n.json(rig, &["cluster", "--json"])).collect::<Option<_>>()?;
        let c = views[0]["cluster"].as_str()?.to_string();
        let ok = views.iter().all(|v| v["cluster"] == c.as_str() && v["leader"].is_object() && v["voters"].as_array().map(Vec::len) == Some(voters));
        ok.then_some(c)
    })
}

fn logs(nodes: &[MeshNode]) -> String {
    nodes.iter().map(|n| format!("--- node {} ---\n{}", n.index, n.log())).collect::<Vec<_>>().join("\n")
}

#[test]
fn three_servers_form_one_cluster_and_a_contended_acquire_has_exactly_one_winner() {
    let Some(rig) = rig(3) else { return };
    let nodes = servers(&rig, 3);
    one_cluster(&rig, &nodes, 3);
    // All three hosts acquire the same key at once.
    let results: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes.iter().map(|n| s.spawn(|| n.cli(&rig, &["claim", "acquire", "svc/one", "--ttl", "30", "--json"]))).collect();
        hs.into_iter()
            .map(|h| {
                let out = h.join().expect("thread");
                serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", out.describe(), logs(&nodes)))
            })
            .collect()
    });
    let winners: Vec<&Value> = results.iter().filter(|r| r["granted"] == true).collect();
    assert_eq!(winners.len(), 1, "{results:#?}");
    let token = winners[0]["token"].as_u64().expect("token");
    for r in results.iter().filter(|r| r["granted"] == false) {
        assert_eq!(r["holders"][0]["token"], token, "the refusal names the winner: {r}");
    }
    let list = nodes[2].json(&rig, &["claim", "list", "--json"]).expect("list");
    let key = list["keys"].as_array().and_then(|ks| ks.iter().find(|k| k["key"] == "svc/one")).cloned().expect("svc/two listed");
    assert_eq!(key["holders"][0]["holder"]["token"], token);
}
