//! Where a deploy runs (`resource_check_enabled`): this node's facts, members' facts asked
//! over the mesh (`/craftmesh/deploy/1`), the pure choice
//! ([`craftmesh_protocol::deploy::place::choose`]), and asking the chosen member to deploy.
//!
//! One request per stream, one JSON line each way: `{"op": "facts", "server": NAME}` →
//! [`HostFacts`]; `{"op": "deploy", "server": NAME}` → `{"ok": true, "token": N}` or
//! `{"ok": false, "error": ...}`. A member deploys only what fits it by its own check.

use super::manager::{DeployError, Deployer, svc_key};
use crate::share::link::lock;
use crate::share::mesh::{read_line, write_json};
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::deploy::place::{HostFacts, Need};
use craftmesh_protocol::deploy::place::{Placement, choose, fits};
use futures::StreamExt as _;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::BufReader;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/deploy/1");
const MAX_LINE: usize = 64 * 1024;
/// How long a facts question may take.
pub const FACTS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a member may take to deploy for us (a cold start included).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    op: String,
    server: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Deployed {
    pub ok: bool,
    #[serde(default)]
    pub token: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// This host's facts for `need`: memory (the smaller of what the system has available and
/// what is left of `resource_limits.total_memory_mb` after the instances running here),
/// CPUs and load, tags, which of the needed ports are taken, which needed commands are on
/// PATH, Docker, battery.
pub async fn local_facts(me: &str, name: &str, tags: &[String], need: &Need, budget_left_mb: u64) -> HostFacts {
    // No memory figure means no room: a deploy is not placed on a guess.
    let (available, total) = match sysinfo::System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            (sys.available_memory() / (1024 * 1024), sys.total_memory() / (1024 * 1024))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this host's memory");
            (0, 0)
        }
    };
    let load1 = sysinfo::System::load_average().map(|l| l.one).unwrap_or(f64::MAX);
    let cpu_cores = std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
    let ports_in_use = need.ports.iter().copied().filter(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_err()).collect();
    let commands = need.dependencies.iter().filter(|d| d.as_str() != "docker" && on_path(d)).cloned().collect();
    let docker = if need.dependencies.iter().any(|d| d == "docker") {
        matches!(tokio::time::timeout(Duration::from_secs(2), async { super::docker::connect().await.is_ok() }).await, Ok(true))
    } else {
        false
    };
    HostFacts {
        node: me.to_string(),
        name: name.to_string(),
        free_memory_mb: available.min(budget_left_mb),
        total_memory_mb: total,
        cpu_cores,
        load1,
        tags: tags.to_vec(),
        ports_in_use,
        commands,
        docker,
        on_battery: on_battery(),
    }
}

/// Whether `cmd` is an executable on PATH (`python` also counts when only `python3` is).
fn on_path(cmd: &str) -> bool {
    let found = |c: &str| {
        std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| {
                let f = d.join(c);
                std::fs::metadata(&f).is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            })
        })
    };
    found(cmd) || (cmd == "python" && found("python3"))
}

/// A battery that is discharging (a laptop off its charger).
fn on_battery() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/class/power_supply") else { return false };
    dir.flatten().any(|e| {
        let p = e.path();
        std::fs::read_to_string(p.join("type")).is_ok_and(|t| t.trim() == "Battery")
            && std::fs::read_to_string(p.join("status")).is_ok_and(|s| s.trim() == "Discharging")
    })
}

/// Answers members' facts and deploy questions until the node stops.
pub fn serve(control: &libp2p_stream::Control, d: Arc<Deployer>) -> Result<(), String> {
    let mut control = control.clone();
    let mut incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let d = d.clone();
            tokio::spawn(async move {
                let (r, mut w) = tokio::io::split(stream.compat());
                let mut r = BufReader::new(r);
                let ask = match tokio::time::timeout(Duration::from_secs(5), read_line(&mut r, MAX_LINE)).await {
                    Ok(Ok(l)) => serde_json::from_str::<Ask>(&l),
                    _ => return,
                };
                let Ok(ask) = ask else { return };
                match ask.op.as_str() {
                    "facts" => {
                        let f = d.facts(&ask.server).await;
                        let _ = write_json(&mut w, &f).await;
                    }
                    "deploy" => {
                        tracing::info!(%peer, server = %ask.server, "a member asks this node to deploy");
                        let answer = match tokio::time::timeout(DEPLOY_TIMEOUT, d.deploy_here(&ask.server)).await {
                            Ok(Ok(token)) => Deployed { ok: true, token: Some(token), error: None },
                            Ok(Err(e)) => Deployed { ok: false, token: None, error: Some(e) },
                            Err(_) => Deployed { ok: false, token: None, error: Some("the deploy took too long".into()) },
                        };
                        let _ = write_json(&mut w, &answer).await;
                    }
                    _ => {}
                }
            });
        }
    });
    Ok(())
}

async fn ask<T: serde::de::DeserializeOwned>(control: &libp2p_stream::Control, peer: &str, a: &Ask, timeout: Duration) -> Result<T, String> {
    let pid: libp2p::PeerId = peer.parse().map_err(|e| format!("`{peer}` is not a peer id: {e}"))?;
    let mut control = control.clone();
    let work = async {
        let stream = control.open_stream(pid, PROTOCOL).await.map_err(|e| format!("cannot open a stream to {peer}: {e}"))?;
        let (r, mut w) = tokio::io::split(stream.compat());
        let mut r = BufReader::new(r);
        write_json(&mut w, a).await?;
        let line = read_line(&mut r, MAX_LINE).await?;
        serde_json::from_str::<T>(&line).map_err(|e| format!("bad answer from {peer}: {e}"))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| format!("{peer} did not answer within {} s", timeout.as_secs()))?
}

/// A member's facts for `server`.
pub async fn member_facts(control: &libp2p_stream::Control, peer: &str, server: &str) -> Result<HostFacts, String> {
    ask(control, peer, &Ask { op: "facts".into(), server: server.into() }, FACTS_TIMEOUT).await
}

/// Asks a member to deploy `server`; its claim token when it did.
pub async fn member_deploy(control: &libp2p_stream::Control, peer: &str, server: &str) -> Result<u64, String> {
    let d: Deployed = ask(control, peer, &Ask { op: "deploy".into(), server: server.into() }, DEPLOY_TIMEOUT).await?;
    match (d.ok, d.token) {
        (true, Some(t)) => Ok(t),
        _ => Err(d.error.unwrap_or_else(|| "refused".into())),
    }
}

impl Deployer {
    /// This node's facts for deploying `server` (what `/craftmesh/deploy/1` answers).
    pub async fn facts(&self, server: &str) -> HostFacts {
        let mut need = self.config.server(server).map(Need::for_server).unwrap_or_default();
        // This node's own front of the service steps aside for an instance started here.
        if let Some(p) = self.config.server(server).and_then(|s| self.front_of(&s.name)).and_then(|f| f.own_port()) {
            need.ports.retain(|x| *x != p);
        }
        let used: u64 = {
            let r = lock(&self.running);
            r.keys().filter_map(|n| self.config.server(n)).filter_map(|s| s.resource_requirements.as_ref().and_then(|r| r.memory_mb)).sum()
        };
        let left = self.config.resource_limits.total_memory_mb.saturating_sub(used);
        local_facts(&self.me, &self.hostname, &self.tags, &need, left).await
    }

    /// Deploys `server` on this node for a member that chose it; refuses what does not fit.
    pub async fn deploy_here(self: &Arc<Self>, server: &str) -> Result<u64, String> {
        let spec = self.spec(server)?;
        // Taking an instance that already runs here needs no room.
        if self.config.settings.resource_check_enabled && !self.runs_here(&spec).await {
            let f = self.facts(&spec.name).await;
            if let Err(m) = fits(&f, &Need::for_server(&spec)) {
                return Err(format!("{} does not fit here: {}", spec.name, m.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")));
            }
        }
        match self.deploy(&spec).await {
            Ok(()) | Err(DeployError::Taken) => {}
            Err(DeployError::Failed(e)) => return Err(e),
        }
        lock(&self.running).get(&spec.name).map(|r| r.held.token).ok_or_else(|| format!("another node holds {}", svc_key(&spec.name)))
    }

    /// Deploys where it fits: here when this node has room (or resource checks are off),
    /// else on the member [`choose`] picks, asked over the mesh.
    pub(super) async fn place(self: &Arc<Self>, spec: &ServerSpec) -> Result<(), DeployError> {
        // An instance already running here, as the first tier, is taken here whatever room
        // the host has (the external tier probed once).
        let here = self.runs_here(spec).await;
        // An instance already running on a member (external first): that member takes it.
        if !here && let Some(peer) = self.member_with_instance(spec).await {
            tracing::info!(server = %spec.name, member = %peer, "a member already runs an instance; asking it to take it under the claim");
            match member_deploy(&self.control, &peer, &spec.name).await {
                Ok(_) => return Ok(()),
                Err(e) if e.contains("another node holds") => return Err(DeployError::Taken),
                Err(e) => tracing::warn!(server = %spec.name, member = %peer, error = %e, "the member could not take its instance; deploying as usual"),
            }
        }
        if here || !self.config.settings.resource_check_enabled {
            return self.deploy(spec).await;
        }
        let need = Need::for_server(spec);
        let local = self.facts(&spec.name).await;
        if fits(&local, &need).is_ok() {
            return self.deploy(spec).await;
        }
        let alive: Vec<String> = self.members.borrow().iter().filter(|(p, l)| l.alive && **p != self.me).map(|(p, _)| p.clone()).collect();
        let asked = futures::future::join_all(alive.iter().map(|p| member_facts(&self.control, p, &spec.name))).await;
        let members: Vec<HostFacts> = asked.into_iter().filter_map(Result::ok).collect();
        match choose(&local, &members, &need, true) {
            Placement::Local => self.deploy(spec).await,
            Placement::Member(peer) => {
                tracing::info!(server = %spec.name, member = %peer, "this node has no room; a member deploys it");
                match member_deploy(&self.control, &peer, &spec.name).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.contains("another node holds") => Err(DeployError::Taken),
                    Err(e) => Err(DeployError::Failed(format!("{peer} could not deploy {}: {e}", spec.name))),
                }
            }
            Placement::Nowhere(why) => Err(DeployError::Failed(format!(
                "no member has room for {}: {}",
                spec.name,
                why.iter().map(|(n, m)| format!("{n}: {}", m.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))).collect::<Vec<_>>().join("; ")
            ))),
        }
    }
}
