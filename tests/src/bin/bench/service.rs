//! `bench share`'s plain-service figures: an HTTP key-value service
//! (`tests/fixtures/kv_service.py`, deployed by claim like Qdrant would be) reached directly
//! on its holder and through another host's loopback front, tunnelled over the mesh.

use crate::Row;
use craftmesh_tests::fixture;
use craftmesh_tests::meshnode::MeshNode;
use craftmesh_tests::netns::Rig;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The plain service's port (free in every rig namespace).
pub(crate) const KV_PORT: u16 = 17333;

/// The `kv` entries for the bench's configuration: (YAML under `servers:`, launch JSON).
pub(crate) fn kv_entry(py: &str) -> (String, Value) {
    let yaml = format!(
        "  kv:\n    priority_order: [user_installation]\n    resource_requirements:\n      ports: [{KV_PORT}]\n    deployment_config:\n      prevent_duplicate: true\n      protocol: http\n"
    );
    let json = serde_json::json!({"command": py, "args": [fixture("kv_service.py").to_string_lossy(), "serve", "--port", KV_PORT.to_string(), "--name", "bench-kv"], "health_check": {"type": "http", "endpoint": "/healthz"}});
    (yaml, json)
}

/// `n` GETs from host `i` of `url` (kept-alive, or a new connection each): ms each.
fn samples(rig: &Rig, i: usize, py: &str, url: &str, n: usize, fresh: bool) -> Vec<f64> {
    let mut c = Command::new(py);
    c.arg(fixture("kv_service.py")).args(["bench", url, &n.to_string()]);
    if fresh {
        c.arg("--fresh");
    }
    let out = craftmesh_tests::run_with_timeout(&mut rig.host(i).wrap(&c), Duration::from_secs(300));
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("kv bench output is not JSON ({e})\n{}", out.describe()));
    v["ms"].as_array().unwrap_or_else(|| panic!("kv bench failed: {v}\n{}", out.describe())).iter().filter_map(Value::as_f64).collect()
}

/// Deploys `kv` on host 0 and measures GETs there and through host 1's front, interleaved
/// over `rounds` rounds of `calls` each.
pub(crate) fn rows(rig: &Rig, nodes: &[MeshNode], py: &str, calls: usize, rounds: usize) -> Vec<Row> {
    let ensure = |i: usize| -> Value {
        let out = craftmesh_tests::run_with_timeout(&mut rig.host(i).wrap(&crate::share::ensure_cmd(&nodes[i], "kv")), Duration::from_secs(120));
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|err| panic!("ensure kv on host {i}: not JSON ({err})\n{}", out.describe()))
    };
    let e = ensure(0);
    assert_eq!(e["local"], true, "kv deployed on host 0: {e}");
    let other = ensure(1);
    let url = format!("http://127.0.0.1:{KV_PORT}/kv/none");
    let via = other["url"].as_str().map(|u| format!("{u}/kv/none")).unwrap_or_else(|| url.clone());
    let (mut direct, mut front, mut direct_new, mut front_new) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        eprintln!("plain service round {}/{rounds}", r + 1);
        // A missing key answers 404 fast; `/pid` is the same path length and answers 200.
        let direct_url = url.replace("/kv/none", "/pid");
        let via_url = via.replace("/kv/none", "/pid");
        direct.extend(samples(rig, 0, py, &direct_url, calls, false));
        front.extend(samples(rig, 1, py, &via_url, calls, false));
        direct_new.extend(samples(rig, 0, py, &direct_url, calls / 5, true));
        front_new.extend(samples(rig, 1, py, &via_url, calls / 5, true));
    }
    let p50 = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        crate::percentile(&s, 50.0)
    };
    let (d, dn) = (p50(&direct), p50(&direct_new));
    let mut out = vec![
        crate::share::ms_row(
            "plain HTTP service (kv_service.py, claim-deployed on host 0): GET on host 0, direct, kept-alive connection".into(),
            &direct,
            "reference",
            |_| true,
        ),
        crate::share::ms_row(
            format!("… the same from host 1 through its loopback front, tunnelled over the mesh: +{:.2} ms p50 over direct", p50(&front) - d),
            &front,
            "report (MCP over the mesh: ≤ +1.5 ms)",
            |m| m - d <= 1.5,
        ),
        crate::share::ms_row("… GET on host 0, direct, a new connection each".into(), &direct_new, "reference", |_| true),
        crate::share::ms_row(
            format!("… from host 1 through its front, a new connection (and tunnel) each: +{:.2} ms p50 over direct", p50(&front_new) - dn),
            &front_new,
            "report",
            |_| true,
        ),
    ];
    for r in &mut out {
        if r.target.starts_with("reference") || r.target == "report" {
            r.verdict = "-";
        }
    }
    out
}
