//! The deployment as shipped: `deploy/Dockerfile` around the static binary, two nodes in
//! containers on a Docker network of the test's own (a user-defined bridge; nothing is
//! published on the host), meshing over DNS-SD and libp2p like two machines on a LAN;
//! `docker stop` is a clean leave.
//!
//! Not `--internal`: Docker's isolation rules for internal networks drop traffic to any
//! address outside the subnet, multicast included, whenever bridged traffic goes through
//! iptables (`br_netfilter`), so mDNS never arrives there (nodes on such a network need
//! `--peer`).
//!
//! Needs a running Docker engine and the static binary (`CRAFTMESH_STATIC_BIN`, built by
//! `tests/scripts/run-tests.sh` with `crt-static`); skips otherwise (fails in CI).

use craftmesh_tests::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn docker(args: &[&str], timeout: Duration) -> CmdOutput {
    let out = run_with_timeout(Command::new("docker").args(args), timeout);
    assert!(out.success(), "docker {} failed\n{}", args.join(" "), out.describe());
    out
}

fn static_bin() -> Option<PathBuf> {
    std::env::var_os("CRAFTMESH_STATIC_BIN").map(PathBuf::from).filter(|p| p.is_file())
}

/// `craftmesh <args> --json` inside container `name` (the image has only the binary).
fn cli_json(name: &str, args: &[&str]) -> Option<Value> {
    let mut full = vec!["exec", name, "/craftmesh"];
    full.extend_from_slice(args);
    full.extend(["--json", "--api", "127.0.0.1:7410"]);
    let out = run_with_timeout(Command::new("docker").args(&full), Duration::from_secs(20));
    if !out.success() {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// `craftmesh <args>` inside container `name`; asserts it exits 0.
fn exec(name: &str, args: &[&str]) -> CmdOutput {
    let mut full = vec!["exec", name, "/craftmesh"];
    full.extend_from_slice(args);
    docker(&full, Duration::from_secs(30))
}

/// Two containers each made their own key (the image's default): they do not mesh. Then
/// the product's own path puts `b` in `a`'s mesh: `invite --long` in `a`, `join CODE` in
/// `b`, restart `b` (its key lives in its /data volume).
fn join_b_to_a(a: &str, b: &str, id_a: &str, id_b: &str, context: impl Fn() -> String) {
    std::thread::sleep(Duration::from_secs(5));
    assert!(state_of(a, id_b).is_none() && state_of(b, id_a).is_none(), "containers with their own keys must not mesh\n{}", context());
    let inv = cli_json(a, &["invite", "--long"]).unwrap_or_else(|| panic!("invite --long --json in {a}\n{}", context()));
    let code = inv["long_code"].as_str().unwrap_or_else(|| panic!("no long_code: {inv}")).to_string();
    let out = exec(b, &["join", &code]);
    assert!(out.stdout.contains("restart"), "{}", out.describe());
    docker(&["restart", "-t", "10", b], Duration::from_secs(60));
}

fn state_of(observer: &str, peer: &str) -> Option<String> {
    cli_json(observer, &["members"])?.as_array()?.iter().find(|m| m["id"] == peer)?["state"].as_str().map(str::to_string)
}

fn logs(name: &str) -> String {
    run_with_timeout(Command::new("docker").args(["logs", name]), Duration::from_secs(20)).describe()
}

fn wait_for<T>(what: &str, timeout: Duration, context: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}\n{}", context());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The shipped image built around the static binary, and a Docker network of the test's
/// own; removed on drop (containers first: declare them after this).
struct Deployment {
    tag: String,
    net: String,
    id: String,
    _ctx: tempfile::TempDir,
    _net: DockerCleanup,
    _image: DockerCleanup,
}

impl Deployment {
    /// `None` (test skipped) without Docker or the static binary; in CI that fails.
    fn build(internal: bool) -> Option<Deployment> {
        if !require("a running docker engine (`docker info` failed)", docker_available())
            || !require("the static craftmesh binary in CRAFTMESH_STATIC_BIN (tests/scripts/run-tests.sh builds it)", static_bin().is_some())
        {
            return None;
        }
        let bin = static_bin().expect("checked above");
        let id = random_suffix();
        let ctx = tempfile::tempdir().expect("tempdir");
        std::fs::copy(workspace_root().join("deploy").join("Dockerfile"), ctx.path().join("Dockerfile")).expect("copy Dockerfile");
        std::fs::copy(&bin, ctx.path().join("craftmesh")).expect("copy the static binary");
        let tag = format!("craftmesh-test-node:{id}");
        let net = format!("craftmesh-test-{id}");
        docker(&["build", "-q", "-t", &tag, &ctx.path().to_string_lossy()], Duration::from_secs(180));
        let image = DockerCleanup::Image(tag.clone());
        let mut create = vec!["network", "create"];
        if internal {
            create.push("--internal");
        }
        create.push(&net);
        docker(&create, Duration::from_secs(60));
        Some(Deployment { _net: DockerCleanup::Network(net.clone()), _image: image, _ctx: ctx, tag, net, id })
    }

    /// Starts container `<id>-<suffix>` on the network; `args` replace the image's CMD.
    fn run(&self, suffix: &str, env: &[&str], args: &[&str]) -> (String, DockerCleanup) {
        let name = format!("craftmesh-test-{}-{suffix}", self.id);
        let mut all = vec!["run", "-d", "--name", &name, "--hostname", &name, "--network", &self.net];
        for e in env {
            all.extend(["-e", e]);
        }
        all.push(&self.tag);
        all.extend_from_slice(args);
        docker(&all, Duration::from_secs(60));
        (name.clone(), DockerCleanup::Container(name))
    }
}

fn peer_id(name: &str, context: impl Fn() -> String) -> String {
    wait_for(&format!("{name} to answer status"), Duration::from_secs(30), context, || {
        cli_json(name, &["status"])?["node"]["peer_id"].as_str().map(str::to_string)
    })
}

#[test]
fn two_containers_from_the_shipped_image_mesh_and_leave_cleanly() {
    let Some(d) = Deployment::build(false) else { return };
    // The image's own CMD (`up`, API on the container's loopback); nothing published on the host.
    let (a, _ca) = d.run("a", &["CRAFTMESH_LOG=info,craftmesh=debug"], &[]);
    let (b, _cb) = d.run("b", &["CRAFTMESH_LOG=info,craftmesh=debug"], &[]);
    let context = || format!("--- {a} ---\n{}\n--- {b} ---\n{}", logs(&a), logs(&b));
    let (id_a, id_b) = (peer_id(&a, context), peer_id(&b, context));
    join_b_to_a(&a, &b, &id_a, &id_b, context);

    // Found over DNS-SD on the Docker network, connected over libp2p.
    wait_for("a to see b alive", Duration::from_secs(30), context, || (state_of(&a, &id_b).as_deref() == Some("alive")).then_some(()));
    wait_for("b to see a alive", Duration::from_secs(30), context, || (state_of(&b, &id_a).as_deref() == Some("alive")).then_some(()));
    let status = cli_json(&a, &["status"]).unwrap_or_else(|| panic!("status\n{}", context()));
    let addrs = status["mesh"]["addresses"].as_array().cloned().unwrap_or_default();
    assert!(
        !addrs.is_empty() && addrs.iter().all(|x| x.as_str().is_some_and(|s| s.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| !ip.is_loopback()))),
        "a should advertise its container address, not loopback: {addrs:?}\n{}",
        context()
    );

    // `docker stop` sends SIGTERM: b says goodbye and a lists it as left.
    docker(&["stop", "-t", "10", &b], Duration::from_secs(30));
    wait_for("a to see b left", Duration::from_secs(20), context, || (state_of(&a, &id_b).as_deref() == Some("left")).then_some(()));
    let out = docker(&["inspect", "-f", "{{.State.ExitCode}}", &b], Duration::from_secs(20));
    assert_eq!(out.stdout.trim(), "0", "b should exit 0 on SIGTERM\n{}", context());
    // It stays left: a late dial to the stopping process or a failed redial is no death.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state_of(&a, &id_b).as_deref(), Some("left"), "b should stay left\n{}", context());
}

/// On an `--internal` Docker network multicast never arrives (see the module docs), so
/// DNS-SD finds nothing; a node given `--peer` still joins, and both see each other.
#[test]
fn containers_on_an_internal_network_mesh_through_static_peers() {
    let Some(d) = Deployment::build(true) else { return };
    let (a, _ca) = d.run("a", &[], &[]);
    let ip_a = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &a], Duration::from_secs(20)).stdout.trim().to_string();
    assert!(ip_a.parse::<std::net::Ipv4Addr>().is_ok(), "no address for {a}: `{ip_a}`");
    let peer = format!("/ip4/{ip_a}/tcp/7411");
    let (b, _cb) = d.run("b", &[], &["up", "--peer", &peer]);
    let context = || format!("--- {a} ---\n{}\n--- {b} ---\n{}", logs(&a), logs(&b));
    let (id_a, id_b) = (peer_id(&a, context), peer_id(&b, context));
    join_b_to_a(&a, &b, &id_a, &id_b, context);
    wait_for("b to see a alive", Duration::from_secs(30), context, || (state_of(&b, &id_a).as_deref() == Some("alive")).then_some(()));
    wait_for("a to see b alive", Duration::from_secs(30), context, || (state_of(&a, &id_b).as_deref() == Some("alive")).then_some(()));
}
