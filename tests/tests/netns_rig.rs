//! The network-namespace rig itself (`craftmesh_tests::netns`): hosts reach each other,
//! multicast crosses the switch, faults do what they say, and nothing is left behind.
//! Needs root, iproute2, python3 (and nftables for the loss test); skips otherwise
//! (fails in CI).

use craftmesh_tests::netns::{Host, Rig, Spawned, netns_available, nft_available};
use craftmesh_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_secs(15);

fn python3_available() -> bool {
    run_with_timeout(Command::new("python3").args(["-c", "pass"]), Duration::from_secs(30)).success()
}

/// The prerequisites of every test here.
fn rig_prerequisites() -> bool {
    require("network namespaces (root and iproute2)", netns_available()) && require("python3", python3_available())
}

fn rig(n: usize) -> Rig {
    Rig::new(n).unwrap_or_else(|e| panic!("cannot build a rig of {n} hosts: {e}"))
}

/// A TCP server in `host` on `port` that accepts forever and answers each connection with
/// `hello from <addr>`; returns once it listens.
fn tcp_server(host: &Host<'_>, port: u16) -> Spawned {
    let code = format!(
        r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{addr}", {port}))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(b"hello from {addr}")
    c.close()
"#,
        addr = host.addr()
    );
    let mut p = host.spawn("python3", ["-c", &code]).expect("spawn the TCP server");
    assert!(p.wait_for_log("listening", STEP), "TCP server did not start\n{}", p.describe());
    p
}

/// Connects from `from` to `addr:port` with a connect timeout; the server's greeting on
/// success.
fn tcp_connect(from: &Host<'_>, addr: std::net::Ipv4Addr, port: u16, timeout_s: f64) -> Result<String, CmdOutput> {
    let code = format!(
        r#"
import socket, sys
try:
    c = socket.create_connection(("{addr}", {port}), timeout={timeout_s})
    sys.stdout.write(c.recv(100).decode())
except OSError as e:
    print("connect failed:", e, file=sys.stderr)
    sys.exit(3)
"#
    );
    let out = from.run("python3", ["-c", &code], Duration::from_secs_f64(timeout_s) + STEP);
    if out.success() { Ok(out.stdout) } else { Err(out) }
}

/// A UDP receiver in `host` on `port` (joined to `group` on its `eth0` address when given)
/// that counts datagrams until 1 s of silence (or 10 s in all) and prints `got <n>`.
fn udp_receiver(host: &Host<'_>, port: u16, group: Option<&str>) -> Spawned {
    let (bind, join) = match group {
        Some(g) => {
            (g.to_string(), format!("s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton('{g}') + socket.inet_aton('{}'))", host.addr()))
        }
        None => (host.addr().to_string(), String::new()),
    };
    let code = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{bind}", {port}))
{join}
print("ready", flush=True)
n, first, end = 0, None, time.time() + 10
s.settimeout(5)
while time.time() < end:
    try:
        d, peer = s.recvfrom(2048)
    except socket.timeout:
        break
    n += 1
    if first is None:
        first = (d.decode(), peer[0])
        print("first", first, flush=True)
    s.settimeout(1)
print("got", n, flush=True)
"#
    );
    let mut p = host.spawn("python3", ["-c", &code]).expect("spawn the UDP receiver");
    assert!(p.wait_for_log("ready", STEP), "UDP receiver did not start\n{}", p.describe());
    p
}

/// Sends `count` datagrams `payload` from `host` to `to:port` (multicast out of `eth0`).
fn udp_send(host: &Host<'_>, to: &str, port: u16, count: u32, payload: &str) {
    let code = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("{addr}"))
for i in range({count}):
    s.sendto(b"{payload}", ("{to}", {port}))
    time.sleep(0.001)
"#,
        addr = host.addr()
    );
    let out = host.run("python3", ["-c", &code], STEP);
    assert!(out.success(), "sending from host {} failed\n{}", host.index(), out.describe());
}

/// Waits for a [`udp_receiver`] to finish; its count and log.
fn received_with_log(mut p: Spawned) -> (u32, String) {
    assert!(p.wait_timeout(STEP).is_some_and(|s| s.success()), "UDP receiver did not finish\n{}", p.describe());
    let log = p.log_text();
    let n = log.lines().find_map(|l| l.strip_prefix("got ")).and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("no count from the receiver\n{log}"));
    (n, log)
}

/// Waits for a [`udp_receiver`] to finish and returns its count.
fn received(p: Spawned) -> u32 {
    received_with_log(p).0
}

#[test]
fn hosts_reach_each_other_by_unicast() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(3);
    let server = tcp_server(&rig.host(0), 7000);
    for from in [1, 2] {
        let greeting =
            tcp_connect(&rig.host(from), rig.host(0).addr(), 7000, 3.0).unwrap_or_else(|out| panic!("host {from} cannot reach host 0\n{}", out.describe()));
        assert_eq!(greeting, format!("hello from {}", rig.host(0).addr()));
    }
    assert_eq!(rig.host(0).pids(), vec![server.pid()], "the server runs inside host 0's namespace");
    // Distinct, predictable addresses in one /24.
    let addrs: Vec<_> = rig.hosts().map(|h| h.addr()).collect();
    let net = rig.subnet().octets();
    for (i, a) in addrs.iter().enumerate() {
        assert_eq!(a.octets(), [net[0], net[1], net[2], i as u8 + 1]);
    }
}

#[test]
fn multicast_crosses_the_bridge() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(3);
    let group = "224.0.0.251";
    let on_1 = udp_receiver(&rig.host(1), 5399, Some(group));
    let on_2 = udp_receiver(&rig.host(2), 5399, Some(group));
    udp_send(&rig.host(0), group, 5399, 3, "mdns-like");
    for (i, p) in [(1, on_1), (2, on_2)] {
        let (n, log) = received_with_log(p);
        assert_eq!(n, 3, "host {i} should receive all 3 multicast datagrams\n{log}");
        assert!(log.contains(&format!("('mdns-like', '{}')", rig.host(0).addr())), "host {i} should see host 0 as the sender\n{log}");
    }
}

#[test]
fn cut_off_host_is_unreachable_until_reconnected() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(3);
    let _server = tcp_server(&rig.host(0), 7001);
    let to = rig.host(0).addr();
    tcp_connect(&rig.host(2), to, 7001, 3.0).unwrap_or_else(|out| panic!("baseline failed\n{}", out.describe()));

    rig.cut_off(0).expect("cut off host 0");
    for from in [1, 2] {
        let t0 = Instant::now();
        let r = tcp_connect(&rig.host(from), to, 7001, 1.0);
        assert!(r.is_err(), "host {from} reached the cut-off host 0: {r:?}");
        assert!(t0.elapsed() < Duration::from_secs(8), "a failed connect should stay bounded");
    }

    rig.reconnect(0).expect("reconnect host 0");
    let greeting = tcp_connect(&rig.host(2), to, 7001, 3.0).unwrap_or_else(|out| panic!("host 0 unreachable after reconnect\n{}", out.describe()));
    assert_eq!(greeting, format!("hello from {to}"));
    // Cutting the switch side keeps the host's routes, the multicast one included.
    let routes = rig.host(0).run("ip", ["route", "show"], STEP);
    assert!(routes.stdout.contains("224.0.0.0/4 dev eth0"), "multicast route lost\n{}", routes.describe());
}

#[test]
fn loss_drops_about_the_configured_share() {
    if !rig_prerequisites() || !require("nftables", nft_available()) {
        return;
    }
    let rig = rig(3);
    let to = rig.host(2).addr().to_string();
    // Without loss everything arrives (this also resolves ARP before any loss).
    let p = udp_receiver(&rig.host(2), 6000, None);
    udp_send(&rig.host(0), &to, 6000, 200, "x");
    assert_eq!(received(p), 200, "no loss configured");

    rig.set_loss(0, 50).expect("set 50% loss");
    rig.set_loss(0, 50).expect("setting the same loss again is fine");
    let p = udp_receiver(&rig.host(2), 6001, None);
    udp_send(&rig.host(0), &to, 6001, 200, "x");
    let n = received(p);
    assert!((50..=150).contains(&n), "50% loss let {n} of 200 datagrams through");

    rig.set_loss(0, 0).expect("remove the loss");
    let p = udp_receiver(&rig.host(2), 6002, None);
    udp_send(&rig.host(0), &to, 6002, 200, "x");
    assert_eq!(received(p), 200, "loss removed");
    assert!(rig.set_loss(0, 101).is_err(), "more than 100% is refused");
}

#[test]
fn frozen_process_answers_nothing_until_thawed() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let server = tcp_server(&rig.host(0), 7002);
    let to = rig.host(0).addr();
    rig.freeze(server.pid()).expect("freeze");
    // The kernel still completes the handshake; the frozen server never greets.
    let out =
        rig.host(1).run("python3", ["-c", &format!("import socket; c = socket.create_connection(('{to}', 7002), timeout=1); print(repr(c.recv(100)))")], STEP);
    assert!(!out.success() && out.stderr.contains("timed out"), "frozen server answered\n{}", out.describe());
    rig.thaw(server.pid()).expect("thaw");
    tcp_connect(&rig.host(1), to, 7002, 3.0).unwrap_or_else(|out| panic!("thawed server silent\n{}", out.describe()));
    let mut server = server;
    rig.kill9(server.pid()).expect("kill -9");
    let status = server.wait_timeout(STEP).expect("killed server exits");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
}

#[test]
fn byte_counters_see_the_traffic() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let (rx0, tx0) = rig.bytes(0).expect("bytes of host 0");
    let (rx1, _) = rig.bytes(1).expect("bytes of host 1");
    let p = udp_receiver(&rig.host(1), 6003, None);
    udp_send(&rig.host(0), &rig.host(1).addr().to_string(), 6003, 100, &"y".repeat(1000));
    assert_eq!(received(p), 100);
    let (rx0b, tx0b) = rig.bytes(0).expect("bytes of host 0");
    let (rx1b, _) = rig.bytes(1).expect("bytes of host 1");
    assert!(tx0b - tx0 >= 100_000, "host 0 sent {} bytes", tx0b - tx0);
    assert!(rx1b - rx1 >= 100_000, "host 1 received {} bytes", rx1b - rx1);
    assert!(rx0b - rx0 < 10_000, "host 0 received {} bytes for nothing it asked", rx0b - rx0);
}

#[test]
fn rig_cleans_up_its_namespaces() {
    if !rig_prerequisites() {
        return;
    }
    let rig = rig(2);
    let names = rig.namespaces();
    assert_eq!(names.len(), 3);
    let listed = |names: &[String]| -> Vec<String> {
        let out = run_with_timeout(Command::new("ip").args(["netns", "list"]), STEP);
        assert!(out.success(), "{}", out.describe());
        let present: Vec<&str> = out.stdout.lines().filter_map(|l| l.split_whitespace().next()).collect();
        names.iter().filter(|n| present.contains(&n.as_str())).cloned().collect()
    };
    assert_eq!(listed(&names), names, "all namespaces exist while the rig lives");
    // A process still running in a host does not keep its namespace alive.
    let mut sleeper = rig.host(1).spawn("sleep", ["600"]).expect("spawn sleep");
    drop(rig);
    assert_eq!(listed(&names), Vec::<String>::new(), "namespaces left after drop");
    assert!(sleeper.wait_timeout(STEP).is_some(), "the process in the rig was not killed");
}
