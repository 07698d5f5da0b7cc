//! Which host a server should be deployed on; the rules are in the [module doc](super).

use crate::config::catalog::ServerSpec;
use crate::config::mcp::{DeploymentConfig, DeploymentType, ResourceRequirements};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// Tag of a member meant to stay up (a server, not a laptop); such members are chosen first.
pub const ALWAYS_ON: &str = "always-on";
/// Smallest memory reserve of a host, in MB.
pub const RESERVE_MIN_MB: u64 = 128;
/// Largest memory reserve of a host, in MB (5% of a big host is more than a deploy risks).
pub const RESERVE_MAX_MB: u64 = 1024;
/// Memory headroom is compared in steps of this many MB.
pub const HEADROOM_STEP_MB: u64 = 256;

/// The dependency met by a Docker daemon rather than by a command.
const DOCKER: &str = "docker";

/// What a member reports about itself (gossiped, so every value may be a round old).
///
/// Values come from other machines: nothing here is trusted to be sane, and odd values make
/// a host fit less, never panic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Peer id (base58): the member's identity, and what [`Placement::Member`] names.
    pub node: String,
    /// The name in the member's record (normally its hostname).
    pub name: String,
    /// Memory new processes can have without swapping (`MemAvailable`), in MB.
    pub free_memory_mb: u64,
    pub total_memory_mb: u64,
    /// CPUs the node may use (its cgroup quota, else its core count).
    pub cpu_cores: f64,
    /// One-minute load average.
    pub load1: f64,
    pub tags: Vec<String>,
    /// Of the ports asked about, those bound on the host.
    pub ports_in_use: Vec<u16>,
    /// Of the commands asked about (`npx`, `uv`, `python3`, ...), those on the host's PATH.
    pub commands: Vec<String>,
    /// A Docker daemon answers on the host.
    pub docker: bool,
    pub on_battery: bool,
}

/// What one instance of a server needs from its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Need {
    pub memory_mb: Option<u64>,
    pub cpu_cores: Option<f64>,
    pub ports: Vec<u16>,
    /// Command names, or `docker` for a Docker daemon.
    pub dependencies: Vec<String>,
    /// Peer ids or node names, best first.
    pub preferred_hosts: Vec<String>,
}

impl Need {
    /// The need stated by a server's `resource_requirements` and `deployment_config`.
    ///
    /// Zero memory and a CPU figure that is not a positive number are no need; port 0,
    /// blank names and repeats are dropped. A `docker` or `npx` deployment type needs that
    /// dependency even when `dependencies` does not list it.
    pub fn from_config(r: Option<&ResourceRequirements>, d: Option<&DeploymentConfig>) -> Need {
        let mut need = Need::default();
        if let Some(r) = r {
            need.memory_mb = r.memory_mb.filter(|&m| m > 0);
            need.cpu_cores = r.cpu_cores.filter(|c| c.is_finite() && *c > 0.0);
            for &p in &r.ports {
                if p != 0 && !need.ports.contains(&p) {
                    need.ports.push(p);
                }
            }
            for dep in &r.dependencies {
                push_unique(&mut need.dependencies, dep);
            }
        }
        if let Some(d) = d {
            match d.kind {
                Some(DeploymentType::Docker) => push_unique(&mut need.dependencies, DOCKER),
                Some(DeploymentType::Npx) => push_unique(&mut need.dependencies, "npx"),
                _ => {}
            }
            for h in &d.preferred_hosts {
                push_unique(&mut need.preferred_hosts, h);
            }
        }
        need
    }

    /// [`Need::from_config`] of a server of the merged configuration.
    pub fn for_server(spec: &ServerSpec) -> Need {
        Need::from_config(spec.resource_requirements.as_ref(), spec.deployment.as_ref())
    }
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if !s.is_empty() && !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// One reason a host cannot take a server; `Display` is a line for a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfit {
    /// `free_mb` as the host reported it, of which `reserve_mb` is never planned for.
    Memory { need_mb: u64, free_mb: u64, reserve_mb: u64 },
    /// `idle` is the host's cores less its one-minute load (0 when either is not a number).
    Cpu { need: f64, idle: f64 },
    /// The port is in use on the host.
    Port(u16),
    /// The dependency is not on the host's PATH (or, for `docker`, no daemon answers).
    Missing(String),
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::Memory { need_mb, free_mb, reserve_mb } => {
                write!(f, "needs {need_mb} MB of memory; {free_mb} MB free, of which {reserve_mb} MB is kept in reserve")
            }
            Misfit::Cpu { need, idle } => write!(f, "needs {} CPU cores; {} idle", cores(*need), cores(*idle)),
            Misfit::Port(p) => write!(f, "port {p} is already in use"),
            Misfit::Missing(d) if d == DOCKER => f.write_str("needs Docker; no Docker daemon answers"),
            Misfit::Missing(d) => write!(f, "needs `{d}`, which is not on the PATH"),
        }
    }
}

/// A core count with at most two decimals and no trailing zeros (`0.5`, `2`).
fn cores(c: f64) -> String {
    let s = format!("{c:.2}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// Where to deploy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// On this node.
    Local,
    /// Ask this member (peer id) to deploy it.
    Member(String),
    /// No host fits: every host considered (peer id) with its misfits, this node first, then
    /// members by peer id.
    Nowhere(Vec<(String, Vec<Misfit>)>),
}

/// Memory a host keeps free whatever is deployed: 5% of its total, within
/// [`RESERVE_MIN_MB`]..=[`RESERVE_MAX_MB`] (the minimum when the total is unknown).
pub fn memory_reserve_mb(total_memory_mb: u64) -> u64 {
    (total_memory_mb / 20).clamp(RESERVE_MIN_MB, RESERVE_MAX_MB)
}

/// Whether `h` can hold one instance of a server needing `need`; if not, every reason.
pub fn fits(h: &HostFacts, need: &Need) -> Result<(), Vec<Misfit>> {
    let mut misfits = Vec::new();
    if let Some(need_mb) = need.memory_mb {
        let reserve_mb = memory_reserve_mb(h.total_memory_mb);
        if h.free_memory_mb.saturating_sub(reserve_mb) < need_mb {
            misfits.push(Misfit::Memory { need_mb, free_mb: h.free_memory_mb, reserve_mb });
        }
    }
    if let Some(need_cores) = need.cpu_cores {
        let idle = idle_cores(h);
        if idle < need_cores {
            misfits.push(Misfit::Cpu { need: need_cores, idle });
        }
    }
    misfits.extend(need.ports.iter().filter(|p| h.ports_in_use.contains(p)).map(|&p| Misfit::Port(p)));
    for dep in &need.dependencies {
        let present = if dep == DOCKER { h.docker } else { h.commands.iter().any(|c| c == dep) };
        if !present {
            misfits.push(Misfit::Missing(dep.clone()));
        }
    }
    if misfits.is_empty() { Ok(()) } else { Err(misfits) }
}

/// Where a server needing `need` should be deployed, seen from `local` (this node's own
/// facts) with the other `members` (one entry per peer id; an entry with `local`'s id is
/// ignored). `check_resources` is the `resource_check_enabled` setting.
pub fn choose(local: &HostFacts, members: &[HostFacts], need: &Need, check_resources: bool) -> Placement {
    if !check_resources {
        return Placement::Local;
    }
    let local_fits = fits(local, need).is_ok();
    let others: Vec<&HostFacts> = members.iter().filter(|m| m.node != local.node).collect();
    let fitting: Vec<&HostFacts> = others.iter().copied().filter(|m| fits(m, need).is_ok()).collect();
    for want in &need.preferred_hosts {
        if local_fits && is_named(local, want) {
            return Placement::Local;
        }
        if let Some(h) = best(fitting.iter().copied().filter(|m| is_named(m, want)), need) {
            return Placement::Member(h.node.clone());
        }
    }
    if local_fits {
        return Placement::Local;
    }
    if let Some(h) = best(fitting.iter().copied(), need) {
        return Placement::Member(h.node.clone());
    }
    let mut why: Vec<(String, Vec<Misfit>)> = others.iter().map(|m| (m.node.clone(), fits(m, need).err().unwrap_or_default())).collect();
    why.sort_by(|a, b| a.0.cmp(&b.0));
    why.insert(0, (local.node.clone(), fits(local, need).err().unwrap_or_default()));
    Placement::Nowhere(why)
}

/// Whether a `preferred_hosts` entry names `h`.
fn is_named(h: &HostFacts, want: &str) -> bool {
    h.node == want || (!h.name.is_empty() && h.name.eq_ignore_ascii_case(want))
}

/// The best ranked of `hosts` (which all fit).
fn best<'a>(hosts: impl Iterator<Item = &'a HostFacts>, need: &Need) -> Option<&'a HostFacts> {
    hosts.min_by(|a, b| rank(a, b, need))
}

/// `Less` when `a` is the better host for `need` (both fit).
fn rank(a: &HostFacts, b: &HostFacts, need: &Need) -> Ordering {
    let always_on = |h: &HostFacts| h.tags.iter().any(|t| t == ALWAYS_ON);
    always_on(b)
        .cmp(&always_on(a))
        .then(a.on_battery.cmp(&b.on_battery))
        .then(headroom_steps(b, need).cmp(&headroom_steps(a, need)))
        .then(load_per_core(a).total_cmp(&load_per_core(b)))
        .then(a.node.cmp(&b.node))
}

/// Memory left after the deploy, beyond the reserve, in whole [`HEADROOM_STEP_MB`] steps.
fn headroom_steps(h: &HostFacts, need: &Need) -> u64 {
    h.free_memory_mb.saturating_sub(memory_reserve_mb(h.total_memory_mb)).saturating_sub(need.memory_mb.unwrap_or(0)) / HEADROOM_STEP_MB
}

/// The host's figures as (cores, load) when both are finite and sane.
fn cpu(h: &HostFacts) -> Option<(f64, f64)> {
    (h.cpu_cores.is_finite() && h.cpu_cores > 0.0 && h.load1.is_finite() && h.load1 >= 0.0).then_some((h.cpu_cores, h.load1))
}

fn idle_cores(h: &HostFacts) -> f64 {
    cpu(h).map_or(0.0, |(c, l)| (c - l).max(0.0))
}

/// Load per core; a host with odd figures counts as fully loaded beyond any other.
fn load_per_core(h: &HostFacts) -> f64 {
    cpu(h).map_or(f64::INFINITY, |(c, l)| l / c)
}

#[cfg(test)]
#[path = "place_tests.rs"]
mod tests;
