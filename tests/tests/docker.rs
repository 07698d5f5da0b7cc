//! Docker discovery against a real container built locally `FROM scratch` (no image pulls).

use craftmesh_tests::*;
use std::process::Command;
use std::time::Duration;

fn docker(args: &[&str], timeout: Duration) -> CmdOutput {
    let out = run_with_timeout(Command::new("docker").args(args), timeout);
    assert!(out.success(), "docker {} failed\n{}", args.join(" "), out.describe());
    out
}

#[test]
fn docker_container_is_found_by_label_with_its_published_port() {
    if !require("a running docker engine (`docker info` failed)", docker_available()) {
        return;
    }
    let id = random_suffix();
    let label = format!("craftmesh.test={id}");
    let tag = format!("craftmesh-test-stub:{id}");
    let cfg = ConfigDir::new(&format!(
        "servers:
  stub-http:
    priority_order: [docker_sidecar]
    discovery_strategies:
      docker:
        - type: docker
          labels: [\"{label}\"]
          health_endpoint: /health
"
    ))
    .with_servers_json("core", r#"{ "mcpServers": { "stub-http": { "command": "stub_http", "health_check": { "type": "http", "endpoint": "/health" } } } }"#);

    // Declared first so they are dropped last: the container goes before the image.
    let _image = build_static_fixture_image("stub_http", 8080, &cfg.scratch_dir().join("stub-image"), &tag);
    let run = docker(&["run", "-d", "--rm", "--label", &label, "-p", "127.0.0.1::8080", &tag], Duration::from_secs(60));
    let container_id = run.stdout.trim().to_string();
    let _container = DockerCleanup::Container(container_id.clone());
    assert!(container_id.len() >= 12, "docker run should print the container id\n{}", run.describe());

    let port_out = docker(&["port", &container_id, "8080/tcp"], Duration::from_secs(30));
    let host_port: u16 = port_out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 127.0.0.1 port published\n{}", port_out.describe()));
    assert!(wait_for_port(host_port, Duration::from_secs(20)), "the stub container never listened on {host_port}");

    let d = cfg.discover();
    let ctx = d.dump();
    let f = d.the_finding("stub-http", "from docker", |f| f["source"] == "docker");
    let found_id = f["evidence"]["container_id"].as_str().unwrap_or_else(|| panic!("no evidence.container_id\n{ctx}"));
    assert!(found_id.len() >= 12 && container_id.starts_with(found_id), "evidence.container_id {found_id} should be a prefix of {container_id}\n{ctx}");
    assert_eq!(f["evidence"]["image"], tag.as_str(), "{ctx}");
    assert_eq!(f["evidence"]["port"], host_port, "evidence.port should be the published host port\n{ctx}");
    let url = f["url"].as_str().unwrap_or_else(|| panic!("finding has no url\n{ctx}"));
    assert!(url.contains(&format!(":{host_port}")), "url {url} should use the published port {host_port}\n{ctx}");
    assert_eq!(f["tier"], "docker_sidecar", "{ctx}");
    assert_eq!(f["protocol"], "http", "{ctx}");
    assert_eq!(f["status"], "healthy", "{ctx}");
    assert_eq!(f["healthy"], true, "{ctx}");
    assert_eq!(d.resolved("stub-http"), Some(url), "{ctx}");
}
