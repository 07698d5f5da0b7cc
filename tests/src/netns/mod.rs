//! A virtual LAN of Linux network namespaces for multi-host tests: one namespace per
//! "machine", all plugged into one Ethernet switch, with faults on demand.
//!
//! ```text
//!   <prefix>-h0 [eth0 10.A.B.1/24] ──veth── p0 ┐
//!   <prefix>-h1 [eth0 10.A.B.2/24] ──veth── p1 ├─ br0 in <prefix>-sw (no IP, mcast_snooping 0)
//!   <prefix>-h2 [eth0 10.A.B.3/24] ──veth── p2 ┘
//! ```
//!
//! * The switch is a bridge inside its own namespace `<prefix>-sw`, so the root namespace's
//!   interfaces, addresses and routes are never touched; nothing a node sends (mDNS included)
//!   can leave the rig.
//! * Each host has `lo` and `eth0` up, `10.A.B.<i+1>/24`, and a route for `224.0.0.0/4` on
//!   `eth0`; the bridge floods multicast (`mcast_snooping 0`), so mDNS works between hosts.
//! * The prefix is `cm<A>x<B>`: claiming it (creating `<prefix>-sw`, which fails when it
//!   exists) also claims the subnet `10.A.B.0/24`, so live rigs never share a subnet.
//! * Faults: [`Rig::cut_off`] / [`Rig::reconnect`] (switch port down/up), [`Rig::set_loss`]
//!   (random drops on the switch port, silent to the host like a bad cable),
//!   [`Rig::freeze`] / [`Rig::thaw`] / [`Rig::kill9`] for processes.
//! * Dropping the [`Rig`] kills every process left in its namespaces and deletes them.
//!   Rigs left behind by a test process that was killed are removed by the next
//!   [`Rig::new`] (the owner's pid is recorded as the bridge's alias).
//!
//! Needs root, iproute2 and (for [`Rig::set_loss`]) nftables; check with
//! [`netns_available`] and [`nft_available`] via [`crate::require`].

use crate::{CmdOutput, run_with_timeout};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod host;
pub use host::{Host, Spawned};

/// Deadline of one `ip`, `nft`, `sh -c kill` or `cat` command run by the rig.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline of a batch of `ip` commands (setting up or removing many hosts at once).
pub const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The most hosts one rig holds (addresses `.1` to `.250` of its /24).
pub const MAX_HOSTS: usize = 250;

/// The interface of every host namespace that leads to the switch.
pub const HOST_IFACE: &str = "eth0";

/// Where iproute2 keeps named network namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Alias of a rig's bridge: `craftmesh-rig-owner=<pid>`.
const OWNER_ALIAS: &str = "craftmesh-rig-owner=";

static RIG_COUNTER: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Probe {
    netns: bool,
    nft: bool,
}

fn probe() -> Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    *PROBE.get_or_init(|| {
        let no = Probe { netns: false, nft: false };
        if !is_root() {
            return no;
        }
        let ns = format!("cmprobe{}-{}", std::process::id(), &crate::random_suffix()[..6]);
        if !ip(&["netns", "add", &ns]).is_ok_and(|o| o.success()) {
            return no;
        }
        // A bridge and a veth pair inside the throwaway namespace: what a rig needs.
        let netns = ip(&["-n", &ns, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]).is_ok_and(|o| o.success())
            && ip(&["-n", &ns, "link", "add", "a0", "type", "veth", "peer", "name", "b0"]).is_ok_and(|o| o.success());
        let nft = netns && run_with_timeout(Command::new("ip").args(["netns", "exec", &ns, "nft", "add", "table", "bridge", "cmprobe"]), CMD_TIMEOUT).success();
        let _ = ip(&["netns", "del", &ns]);
        Probe { netns, nft }
    })
}

/// Whether rigs can be built here: running as root, and `ip` can create a namespace with a
/// bridge and a veth pair in it (probed once per process with a throwaway namespace).
pub fn netns_available() -> bool {
    probe().netns
}

/// Whether [`Rig::set_loss`] works: [`netns_available`] and `nft` can add a bridge-family
/// table inside a namespace.
pub fn nft_available() -> bool {
    probe().nft
}

/// Whether this process's effective uid is 0 (from `/proc/self/status`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0")))
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------

/// An error naming the failed command, with its exit status, stdout and stderr.
fn cmd_error(what: &str, out: &CmdOutput) -> io::Error {
    io::Error::other(format!("{what} failed\n{}", out.describe()))
}

/// Runs `cmd` under `timeout`; an error unless it exits 0.
fn checked(cmd: &mut Command, timeout: Duration, what: &str) -> io::Result<CmdOutput> {
    let out = run_with_timeout(cmd, timeout);
    if out.success() { Ok(out) } else { Err(cmd_error(what, &out)) }
}

/// `ip <args>` under [`CMD_TIMEOUT`]; returns the output whatever the exit status
/// (an error only when `ip` cannot be started).
fn ip(args: &[&str]) -> io::Result<CmdOutput> {
    let out = run_with_timeout(Command::new("ip").args(args), CMD_TIMEOUT);
    if out.status.is_none() && !out.timed_out {
        return Err(io::Error::new(io::ErrorKind::NotFound, out.stderr));
    }
    Ok(out)
}

/// `ip <args>`; an error (with the command and stderr) unless it exits 0.
fn ip_ok(args: &[&str]) -> io::Result<CmdOutput> {
    checked(Command::new("ip").args(args), CMD_TIMEOUT, "ip command")
}

/// `ip [-n ns] [-force] -batch FILE` with `lines` written to `file`.
fn ip_batch(ns: Option<&str>, force: bool, file: &Path, lines: &[String]) -> io::Result<CmdOutput> {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(file, &text)?;
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.arg("-batch").arg(file);
    let out = run_with_timeout(&mut cmd, BATCH_TIMEOUT);
    if out.success() || force { Ok(out) } else { Err(io::Error::other(format!("ip batch failed\n{}\n--- batch ---\n{text}", out.describe()))) }
}

/// `kill <signal> <pids>` with the shell's builtin (no procps needed).
fn kill_command(signal: &str, pids: &[u32]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "kill \"$@\"", "sh", signal]);
    cmd.args(pids.iter().map(|p| p.to_string()));
    cmd
}

/// Sends `signal` (e.g. `-STOP`) to `pid`.
fn signal(pid: u32, signal: &str) -> io::Result<()> {
    checked(&mut kill_command(signal, &[pid]), CMD_TIMEOUT, "kill").map(|_| ())
}

// ---------------------------------------------------------------------------------------
// Namespaces and the processes in them
// ---------------------------------------------------------------------------------------

/// Names of all named network namespaces (the files of `/run/netns`).
fn list_namespaces() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR).map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect()).unwrap_or_default()
}

/// The pids of processes whose network namespace is one of `names` (what `ip netns pids`
/// does, for many namespaces in one scan of `/proc`). Our own process is never included.
fn pids_in(names: &[String]) -> Vec<u32> {
    // All namespace files live on nsfs: the inode number identifies the namespace.
    let inodes: Vec<u64> = names.iter().filter_map(|n| std::fs::metadata(Path::new(NETNS_DIR).join(n)).ok()).map(|m| m.ino()).collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(proc_dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino())))
        .collect()
}

/// SIGKILLs every process in `names` and waits (up to 3 s) until none is left.
fn kill_all_in(names: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids_in(names);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = run_with_timeout(&mut kill_command("-KILL", &pids), CMD_TIMEOUT);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the processes in `names` and deletes the namespaces, the `-sw` one last (it is
/// the rig's claim on its prefix). Returns the names still present afterwards.
fn remove_namespaces(names: &[String], batch_file: &Path) -> Vec<String> {
    kill_all_in(names);
    let mut ordered: Vec<&String> = names.iter().filter(|n| !n.ends_with("-sw")).collect();
    ordered.extend(names.iter().filter(|n| n.ends_with("-sw")));
    let lines: Vec<String> = ordered.iter().map(|n| format!("netns del {n}")).collect();
    if !lines.is_empty() {
        let _ = ip_batch(None, true, batch_file, &lines);
    }
    let left = list_namespaces();
    names.iter().filter(|n| left.contains(n)).cloned().collect()
}

/// `cm<A>x<B>` with `A`, `B` in 1..=254, as numbers.
fn parse_prefix(prefix: &str) -> Option<(u8, u8)> {
    let (a, b) = prefix.strip_prefix("cm")?.split_once('x')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !all_digits(a) || !all_digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The rig prefix of a namespace named `cm<A>x<B>-sw` or `cm<A>x<B>-h<i>`.
fn rig_prefix_of(ns: &str) -> Option<&str> {
    let (prefix, role) = ns.rsplit_once('-')?;
    parse_prefix(prefix)?;
    let is_host = role.strip_prefix('h').is_some_and(|i| !i.is_empty() && i.bytes().all(|c| c.is_ascii_digit()));
    (role == "sw" || is_host).then_some(prefix)
}

/// The pid recorded in a rig's bridge alias, if it can be read.
fn owner_of(switch_ns: &str) -> Option<u32> {
    let out = ip(&["-n", switch_ns, "-o", "link", "show", "br0"]).ok()?;
    let at = out.stdout.find(OWNER_ALIAS)? + OWNER_ALIAS.len();
    out.stdout[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Removes rigs whose owner process is gone (a test killed before its `Drop` ran), and
/// host namespaces whose rig has no switch namespace any more. Once per process.
fn reap_stale_rigs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let all = list_namespaces();
        let mut stale: Vec<String> = Vec::new();
        let prefixes: std::collections::BTreeSet<&str> = all.iter().filter_map(|n| rig_prefix_of(n)).collect();
        for prefix in prefixes {
            let sw = format!("{prefix}-sw");
            let dead = if all.contains(&sw) {
                // No alias yet: a rig being set up right now; leave it.
                owner_of(&sw).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            } else {
                true
            };
            if dead {
                stale.extend(all.iter().filter(|n| rig_prefix_of(n) == Some(prefix)).cloned());
            }
        }
        if !stale.is_empty() {
            eprintln!("netns: removing stale rig namespaces {stale:?}");
            let file = std::env::temp_dir().join(format!("craftmesh-netns-reap-{}.batch", std::process::id()));
            let left = remove_namespaces(&stale, &file);
            let _ = std::fs::remove_file(&file);
            if !left.is_empty() {
                eprintln!("netns: could not remove {left:?}");
            }
        }
    });
}

/// Claims a free prefix `cm<A>x<B>` (and with it the subnet `10.A.B.0/24`) by creating
/// its switch namespace. Returns the prefix and `[10, A, B]`.
fn claim_prefix() -> io::Result<(String, [u8; 3])> {
    const SPACE: u64 = 254 * 254;
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(RIG_COUNTER.fetch_add(1, Ordering::Relaxed));
    let start = h.finish() % SPACE;
    let existing = list_namespaces();
    let mut last_err = String::new();
    for attempt in 0..64u64 {
        let idx = (start + attempt * 7919) % SPACE;
        let (a, b) = ((idx / 254 + 1) as u8, (idx % 254 + 1) as u8);
        let prefix = format!("cm{a}x{b}");
        if existing.iter().any(|n| rig_prefix_of(n) == Some(prefix.as_str())) {
            continue;
        }
        let out = ip(&["netns", "add", &format!("{prefix}-sw")])?;
        if out.success() {
            return Ok((prefix, [10, a, b]));
        }
        if !out.stderr.contains("File exists") {
            return Err(cmd_error("creating the switch namespace", &out));
        }
        last_err = out.stderr;
    }
    Err(io::Error::other(format!("no free rig prefix after 64 attempts; last error: {last_err}")))
}

// ---------------------------------------------------------------------------------------
// The rig
// ---------------------------------------------------------------------------------------

/// A virtual LAN: `n` host namespaces on one switch namespace. Removed on drop.
#[derive(Debug)]
pub struct Rig {
    prefix: String,
    net: [u8; 3],
    hosts: Vec<String>,
    /// Batch files and the logs of spawned processes.
    dir: tempfile::TempDir,
    spawned: AtomicU64,
    removed: bool,
}

impl Rig {
    /// Builds a rig of `n` hosts (1..=[`MAX_HOSTS`]); host `i` is namespace `<prefix>-h<i>`
    /// with address `10.A.B.<i+1>/24`. Takes well under a second for a few hosts.
    pub fn new(n: usize) -> io::Result<Rig> {
        if n == 0 || n > MAX_HOSTS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a rig has 1..={MAX_HOSTS} hosts, not {n}")));
        }
        reap_stale_rigs();
        let dir = tempfile::Builder::new().prefix("craftmesh-netns-").tempdir()?;
        let (prefix, net) = claim_prefix()?;
        let hosts = (0..n).map(|i| format!("{prefix}-h{i}")).collect();
        // From here on, Drop removes whatever was created.
        let rig = Rig { prefix, net, hosts, dir, spawned: AtomicU64::new(0), removed: false };
        rig.build()?;
        Ok(rig)
    }

    fn build(&self) -> io::Result<()> {
        let sw = self.switch_ns();
        // The owner first: a rig without it is never reaped as stale.
        let mut lines = vec![
            "link add br0 type bridge mcast_snooping 0 stp_state 0".to_string(),
            format!("link set br0 alias {OWNER_ALIAS}{}", std::process::id()),
            "link set br0 up".to_string(),
        ];
        ip_batch(Some(&sw), false, &self.batch_file("switch"), &lines)?;

        let adds: Vec<String> = self.hosts.iter().map(|h| format!("netns add {h}")).collect();
        ip_batch(None, false, &self.batch_file("netns-add"), &adds)?;

        lines.clear();
        for (i, h) in self.hosts.iter().enumerate() {
            lines.push(format!("link add p{i} type veth peer name {HOST_IFACE} netns {h}"));
            lines.push(format!("link set p{i} master br0"));
            lines.push(format!("link set p{i} up"));
        }
        ip_batch(Some(&sw), false, &self.batch_file("ports"), &lines)?;

        for (i, h) in self.hosts.iter().enumerate() {
            let lines = [
                "link set lo up".to_string(),
                format!("addr add {}/24 dev {HOST_IFACE}", self.addr(i)),
                format!("link set {HOST_IFACE} multicast on"),
                format!("link set {HOST_IFACE} up"),
                format!("route add 224.0.0.0/4 dev {HOST_IFACE}"),
            ];
            ip_batch(Some(h), false, &self.batch_file(&format!("host{i}")), &lines)?;
        }
        Ok(())
    }

    fn batch_file(&self, what: &str) -> PathBuf {
        self.dir.path().join(format!("{what}.batch"))
    }

    fn check_index(&self, i: usize) -> io::Result<()> {
        if i < self.hosts.len() { Ok(()) } else { Err(io::Error::new(io::ErrorKind::InvalidInput, format!("no host {i} in a rig of {}", self.hosts.len()))) }
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a rig has at least one host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The rig's prefix `cm<A>x<B>`, shared by all its namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge `br0` and the switch ports `p<i>`.
    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// All namespaces of the rig: the hosts' and the switch's.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = self.hosts.clone();
        v.push(self.switch_ns());
        v
    }

    /// The rig's subnet, `10.A.B.0` (prefix length 24).
    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 0)
    }

    /// Address of host `i`, `10.A.B.<i+1>`.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], (i + 1) as u8)
    }

    /// Host `i`; panics when there is no such host.
    pub fn host(&self, i: usize) -> Host<'_> {
        assert!(i < self.hosts.len(), "no host {i} in a rig of {}", self.hosts.len());
        Host { rig: self, i }
    }

    /// All hosts, in order.
    pub fn hosts(&self) -> impl Iterator<Item = Host<'_>> {
        (0..self.hosts.len()).map(|i| Host { rig: self, i })
    }

    /// Unplugs host `i`: its switch port goes down (the host's `eth0` stays up, without
    /// carrier, and keeps its addresses and routes).
    pub fn cut_off(&self, i: usize) -> io::Result<()> {
        self.check_index(i)?;
        ip_ok(&["-n", &self.switch_ns(), "link", "set", &format!("p{i}"), "down"]).map(|_| ())
    }

    /// Plugs host `i` back in (its switch port up again; forwarding resumes at once).
    pub fn reconnect(&self, i: usize) -> io::Result<()> {
        self.check_index(i)?;
        ip_ok(&["-n", &self.switch_ns(), "link", "set", &format!("p{i}"), "up"]).map(|_| ())
    }

    /// Drops `percent`% (0..=100) of the frames host `i` sends and, independently, of the
    /// frames sent to it (ARP and multicast included), at its switch port: silent to the
    /// host like a bad cable (a drop inside the host would fail `send` with EPERM).
    /// A round trip through host `i` survives with `(1 - p)²`. 0 removes the loss.
    pub fn set_loss(&self, i: usize, percent: u8) -> io::Result<()> {
        self.check_index(i)?;
        if percent > 100 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("loss of {percent}% is more than 100%")));
        }
        let table = format!("cmloss_p{i}");
        // Creating and deleting the table first makes this idempotent, in one transaction.
        let mut rules = format!("table bridge {table}\ndelete table bridge {table}\n");
        if percent > 0 {
            rules.push_str(&format!(
                "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    \
                 iifname \"p{i}\" numgen random mod 100 < {percent} drop\n    \
                 oifname \"p{i}\" numgen random mod 100 < {percent} drop\n  }}\n}}\n"
            ));
        }
        let file = self.dir.path().join(format!("loss-p{i}.nft"));
        std::fs::write(&file, &rules)?;
        checked(Command::new("ip").args(["netns", "exec", &self.switch_ns(), "nft", "-f"]).arg(&file), CMD_TIMEOUT, "nft (set_loss)")
            .map_err(|e| io::Error::other(format!("{e}\n--- ruleset ---\n{rules}")))
            .map(|_| ())
    }

    /// Stops process `pid` (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn freeze(&self, pid: u32) -> io::Result<()> {
        signal(pid, "-STOP")
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self, pid: u32) -> io::Result<()> {
        signal(pid, "-CONT")
    }

    /// Kills process `pid` with SIGKILL: no shutdown, no goodbye.
    pub fn kill9(&self, pid: u32) -> io::Result<()> {
        signal(pid, "-KILL")
    }

    /// Bytes received and sent by host `i` on its `eth0` so far, `(rx, tx)`, from
    /// `/sys/class/net/eth0/statistics` inside its namespace. Counts frames that reached
    /// (or left) the host: frames dropped by [`Rig::set_loss`] on the way in are not counted.
    pub fn bytes(&self, i: usize) -> io::Result<(u64, u64)> {
        self.check_index(i)?;
        let stats = format!("/sys/class/net/{HOST_IFACE}/statistics");
        let out = checked(
            Command::new("ip").args(["netns", "exec", &self.hosts[i], "cat", &format!("{stats}/rx_bytes"), &format!("{stats}/tx_bytes")]),
            CMD_TIMEOUT,
            "reading interface statistics",
        )?;
        let nums: Vec<u64> = out.stdout.split_whitespace().filter_map(|s| s.parse().ok()).collect();
        match nums[..] {
            [rx, tx] => Ok((rx, tx)),
            _ => Err(io::Error::other(format!("unexpected statistics output\n{}", out.describe()))),
        }
    }

    /// Kills every process in the rig's namespaces and deletes them; errors name what is
    /// left. Drop does this too (and only reports failures).
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        let left = remove_namespaces(&self.namespaces(), &self.batch_file("remove"));
        if left.is_empty() { Ok(()) } else { Err(io::Error::other(format!("namespaces left behind: {left:?}"))) }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let left = remove_namespaces(&self.namespaces(), &self.batch_file("remove"));
        if !left.is_empty() {
            eprintln!("netns: could not remove namespaces {left:?} (the next Rig::new retries)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_only_rig_names() {
        assert_eq!(parse_prefix("cm12x254"), Some((12, 254)));
        assert_eq!(parse_prefix("cm12x"), None);
        assert_eq!(parse_prefix("cmprobe1-abc"), None);
        assert_eq!(rig_prefix_of("cm3x4-sw"), Some("cm3x4"));
        assert_eq!(rig_prefix_of("cm3x4-h17"), Some("cm3x4"));
        assert_eq!(rig_prefix_of("cm3x4-h"), None);
        assert_eq!(rig_prefix_of("cm3x4-other"), None);
        assert_eq!(rig_prefix_of("docker-ns"), None);
    }
}
