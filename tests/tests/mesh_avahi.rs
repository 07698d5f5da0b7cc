//! DNS-SD interoperability with Avahi, the mDNS stack of Linux desktops and servers:
//! `avahi-browse` (through a real `avahi-daemon` in another host of the rig) lists and
//! resolves what `craftmesh up` advertises, `_craftmesh._tcp` and `_mcp._tcp`, with the
//! TXT keys the issue names. The python-zeroconf side is `mesh_mdns.rs`.
//!
//! The daemon runs in its own mount namespace (a private `/run/avahi-daemon` for its pid
//! file) on its own D-Bus bus (a private socket), so a system Avahi on the machine is
//! neither used nor disturbed, and it listens on the rig host's `eth0` only.
//!
//! Needs root, iproute2, util-linux `unshare`, `dbus-daemon`, `avahi-daemon` and
//! `avahi-browse` (`tests/scripts/run-tests.sh` installs them); skips otherwise (fails in CI).

use craftmesh_tests::meshnode::MeshNode;
use craftmesh_tests::netns::{Rig, Spawned, netns_available};
use craftmesh_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The mesh port `craftmesh up` listens on by default.
const DEFAULT_MESH_PORT: u16 = 7411;
/// Hosts are namespaces of their own, so a fixed port never collides.
const MCP_PORT: u16 = 18766;
/// Deadline of one `avahi-browse --terminate` run.
const BROWSE_TIMEOUT: Duration = Duration::from_secs(20);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(program).is_file())
}

fn prerequisites() -> bool {
    require("network namespaces (root and iproute2)", netns_available())
        && ["unshare", "dbus-daemon", "avahi-daemon", "avahi-browse"]
            .iter()
            .all(|p| require(&format!("`{p}` (apt-get install dbus avahi-daemon avahi-utils; tests/scripts/run-tests.sh does)"), on_path(p)))
}

/// A private D-Bus system bus and an `avahi-daemon` on it, in one host of the rig.
struct Avahi {
    dir: tempfile::TempDir,
    bus: Spawned,
    daemon: Spawned,
}

impl Avahi {
    fn start(rig: &Rig, i: usize) -> Avahi {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("bus");
        let bus_conf = dir.path().join("bus.conf");
        std::fs::write(
            &bus_conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write bus.conf");
        let avahi_conf = dir.path().join("avahi-daemon.conf");
        // Its own host name (the rig's hosts share the machine's), eth0 only, IPv4 only,
        // nothing of its own published: it is here to browse and resolve.
        std::fs::write(
            &avahi_conf,
            "[server]\nhost-name=avahi-probe\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces=eth0\nenable-dbus=yes\n\
             [wide-area]\nenable-wide-area=no\n[publish]\ndisable-publishing=yes\n",
        )
        .expect("write avahi-daemon.conf");

        let mut bus = rig
            .host(i)
            .spawn("dbus-daemon", ["--nofork".to_string(), "--nopidfile".into(), format!("--config-file={}", bus_conf.display())])
            .expect("spawn dbus-daemon");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            assert!(bus.try_wait().is_none() && Instant::now() < deadline, "dbus-daemon did not create its socket\n{}", bus.describe());
            std::thread::sleep(Duration::from_millis(20));
        }
        let script = format!(
            "mkdir -p /run/avahi-daemon && mount -t tmpfs avahi-run /run/avahi-daemon && \
             exec avahi-daemon --file={} --no-chroot --no-drop-root --no-rlimits",
            avahi_conf.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]).env("DBUS_SYSTEM_BUS_ADDRESS", format!("unix:path={}", socket.display()));
        let mut daemon = rig.host(i).spawn_command(&cmd).expect("spawn avahi-daemon");
        assert!(
            daemon.wait_for_log("Server startup complete", Duration::from_secs(20)),
            "avahi-daemon did not start\n{}\n--- dbus-daemon ---\n{}",
            daemon.describe(),
            bus.describe()
        );
        Avahi { dir, bus, daemon }
    }

    fn bus_address(&self) -> String {
        format!("unix:path={}", self.dir.path().join("bus").display())
    }

    fn describe(&mut self) -> String {
        format!("--- avahi-daemon ---\n{}\n--- dbus-daemon ---\n{}", self.daemon.describe(), self.bus.describe())
    }
}

/// One resolved line of `avahi-browse --parsable --resolve`.
#[derive(Debug, Clone)]
struct Resolved {
    name: String,
    service_type: String,
    host: String,
    address: String,
    port: u16,
    txt: Vec<String>,
}

impl Resolved {
    fn txt(&self, key: &str) -> Option<&str> {
        self.txt.iter().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Undoes avahi-browse's escaping of names in parsable output (`\032` is a space, `\.` a dot).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let digits: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).take(3).collect();
        match (digits.len(), digits.parse::<u8>()) {
            (3, Ok(b)) => out.push(char::from(b)),
            _ => {
                out.push_str(&digits);
                if digits.is_empty() {
                    out.extend(chars.next());
                }
            }
        }
    }
    out
}

/// TXT of a parsable line: `"k=v" "k2=v2"` (avahi quotes each string).
fn parse_txt(s: &str) -> Vec<String> {
    s.split("\" \"").map(|p| p.trim_matches('"').to_string()).filter(|p| !p.is_empty()).collect()
}

/// `=;iface;proto;name;type;domain;host;address;port;txt`
fn parse_resolved(line: &str) -> Option<Resolved> {
    let f: Vec<&str> = line.splitn(10, ';').collect();
    if f.len() < 10 || f[0] != "=" {
        return None;
    }
    Some(Resolved {
        name: unescape(f[3]),
        service_type: f[4].to_string(),
        host: f[6].to_string(),
        address: f[7].to_string(),
        port: f[8].parse().ok()?,
        txt: parse_txt(f[9]),
    })
}

/// `avahi-browse --terminate --resolve --parsable --no-db-lookup TYPE` in host `i`.
fn browse(rig: &Rig, i: usize, avahi: &Avahi, service_type: &str) -> (Vec<Resolved>, String) {
    let mut cmd = rig.host(i).cmd("avahi-browse");
    cmd.args(["--terminate", "--resolve", "--parsable", "--no-db-lookup", service_type]).env("DBUS_SYSTEM_BUS_ADDRESS", avahi.bus_address());
    let out = run_with_timeout(&mut cmd, BROWSE_TIMEOUT);
    assert!(out.success(), "avahi-browse failed\n{}", out.describe());
    (out.stdout.lines().filter_map(parse_resolved).collect(), out.describe())
}

/// Browses until an entry matches `pred` (at most `timeout`); panics with what was seen.
fn browse_until(rig: &Rig, i: usize, avahi: &mut Avahi, service_type: &str, pred: impl Fn(&Resolved) -> bool, context: impl Fn() -> String) -> Resolved {
    let start = Instant::now();
    loop {
        let (seen, raw) = browse(rig, i, avahi, service_type);
        if let Some(r) = seen.into_iter().find(|r| pred(r)) {
            return r;
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("avahi-browse never resolved the expected {service_type} advert\n--- last browse ---\n{raw}\n{}\n{}", avahi.describe(), context());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn unescape_handles_avahi_escapes() {
    assert_eq!(unescape(r"adv-mcp\032on\032vm"), "adv-mcp on vm");
    assert_eq!(unescape(r"a\.b\\c"), r"a.b\c");
    assert_eq!(unescape("plain"), "plain");
    let r = parse_resolved(r#"=;eth0;IPv4;craftmesh-x;_craftmesh._tcp;local;vm.local;10.0.0.2;7411;"api=7410" "v=1""#).expect("parses");
    assert_eq!((r.port, r.txt("api"), r.txt("v"), r.txt("id")), (7411, Some("7410"), Some("1"), None));
}

#[test]
fn avahi_lists_and_resolves_node_and_mcp_adverts() {
    if !prerequisites() || !require(&format!("python with the MCP SDK at {} (run tests/scripts/run-tests.sh)", python().display()), python_has_mcp()) {
        return;
    }
    let rig = Rig::new(2).unwrap_or_else(|e| panic!("cannot build a rig of 2 hosts: {e}"));
    // An MCP server in host 0 that node 0 finds and advertises.
    let tool = fixture("mcp_server.py").to_string_lossy().into_owned();
    let mut server = rig
        .host(0)
        .spawn(python(), [tool.as_str(), "--port", &MCP_PORT.to_string(), "--host", "0.0.0.0", "--name", "avahi-fixture"])
        .expect("spawn MCP fixture");
    assert!(rig.host(0).wait_for_tcp("127.0.0.1", MCP_PORT, MCP_START_TIMEOUT), "MCP fixture did not listen\n{}", server.describe());
    let yaml = format!(
        "settings:\n  discovery_interval: 2\nservers:\n  avahi-mcp:\n    priority_order: [external_deployment]\n    discovery_strategies:\n      external:\n\
         \x20       - type: port_check\n          ports: [{MCP_PORT}]\n          host: 127.0.0.1\n          health_endpoint: /health\n          mcp_path: /mcp\n"
    );
    let node = MeshNode::start(&rig, 0, &yaml, &[]);
    let mut avahi = Avahi::start(&rig, 1);
    let ctx = || format!("--- node log ---\n{}\n--- MCP fixture ---\n{}", node.log(), std::fs::read_to_string(server.log_path()).unwrap_or_default());

    let ad = browse_until(&rig, 1, &mut avahi, "_craftmesh._tcp", |r| r.txt("id") == Some(node.peer_id.as_str()), ctx);
    let what = format!("{ad:?}\n{}", ctx());
    assert_eq!(ad.service_type, "_craftmesh._tcp", "{what}");
    assert_eq!(ad.address, rig.addr(0).to_string(), "avahi should resolve the node's own LAN address\n{what}");
    assert_eq!(ad.port, DEFAULT_MESH_PORT, "{what}");
    assert_eq!(ad.txt("v"), Some(craftmesh_protocol::wire::WIRE_VERSION.to_string().as_str()), "{what}");
    assert!(ad.txt("mesh").is_some_and(|m| !m.is_empty()), "the advert should carry the mesh id\n{what}");
    assert!(ad.txt("api").is_some_and(|p| p.parse::<u16>().is_ok()), "the advert should carry the API port\n{what}");
    assert!(ad.host.ends_with(".local"), "the service should point at a .local host name\n{what}");

    let mcp = browse_until(&rig, 1, &mut avahi, "_mcp._tcp", |r| r.txt("name") == Some("avahi-mcp"), ctx);
    let what = format!("{mcp:?}\n{}", ctx());
    assert!(mcp.name.starts_with("avahi-mcp"), "instance name should start with the server's name\n{what}");
    assert_eq!(mcp.address, rig.addr(0).to_string(), "the MCP advert should carry host 0's LAN address, never loopback\n{what}");
    assert_eq!(mcp.port, MCP_PORT, "{what}");
    assert_eq!(mcp.txt("transport"), Some("streamable-http"), "{what}");
    assert_eq!(mcp.txt("path"), Some("/mcp"), "{what}");
    assert_eq!(mcp.txt("node"), Some(node.peer_id.as_str()), "{what}");
    assert!(mcp.txt("version").is_some(), "the advert should carry the server version key\n{what}");
}
