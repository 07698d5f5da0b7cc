//! The one task that owns the node's state. Everything else talks to it through [`Input`].

use crate::discovery::Discoverer;
use crate::host::HostMonitor;
use crate::mesh::{External, MemberView, Mesh, MeshEvent, MeshStats};
use crate::supervise::{self, SharedHealth};
use craftmesh_protocol::config::Config;
use craftmesh_protocol::report::{Protocol, Report, ServerReport};
use craftmesh_protocol::select;
use craftmesh_protocol::supervise::TaskRecord;
use craftmesh_protocol::wire::{Capacity, ServiceAd};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Facts about this node fixed at start-up.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub peer_id: String,
    pub hostname: String,
    pub version: String,
    pub profile: String,
    pub data_dir: String,
    pub api: String,
    pub started_at_ms: u64,
    pub config_files: Vec<String>,
    pub servers_configured: usize,
    pub agents_configured: usize,
}

/// Counters shown in `/v1/node`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub discovery_rounds: u64,
    pub last_round_ms: f64,
    pub last_round_probes: usize,
    pub server_refreshes: u64,
}

/// A service another member offers.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteService {
    pub node: String,
    pub node_name: String,
    pub rtt_ms: Option<f64>,
    pub service: ServiceAd,
}

/// The mesh part of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct MeshSnapshot {
    pub mesh_id: String,
    pub listen_port: u16,
    pub addresses: Vec<String>,
    pub members: Vec<MemberView>,
    pub remote: Vec<RemoteService>,
    pub externals: Vec<External>,
    /// Distinct nodes of other meshes seen recently on the LAN.
    pub other_meshes: usize,
    pub stats: MeshStats,
}

/// What API handlers get: a consistent copy of the state.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub node: NodeInfo,
    pub stats: Stats,
    pub report: Option<Arc<Report>>,
    pub mesh: Option<MeshSnapshot>,
    /// Supervised tasks that ever failed: name → restarts, last error, when.
    pub tasks: BTreeMap<String, TaskRecord>,
}

/// The name under which failed discovery rounds are counted in `tasks`.
pub const DISCOVERY_TASK: &str = "discovery";

/// Events streamed on `/v1/events`. Each serialises as one object with exactly one `kind`
/// (`member`, `forgotten`, `record`, `external` from the mesh's own tag; `service`), and
/// that kind is the SSE event name.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ApiEvent {
    Mesh(MeshEvent),
    Service(ServiceEvent),
    /// `claim` and `cluster` events of the claims service.
    Claims(crate::claims::ClaimsEvent),
    /// A shared server was deployed, restarted, lost or stopped on this node.
    Deploy(crate::deploy::manager::DeployEvent),
}

/// A local server became resolvable, stopped being so, or moved.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename = "service")]
pub struct ServiceEvent {
    pub server: String,
    pub change: &'static str,
    pub url: Option<String>,
    pub previous: Option<String>,
}

impl ApiEvent {
    /// The event's `kind`, as serialised.
    pub fn kind(&self) -> String {
        match self {
            ApiEvent::Service(_) => "service".to_string(),
            ApiEvent::Deploy(_) => "deploy".to_string(),
            ApiEvent::Claims(crate::claims::ClaimsEvent::Claim(_)) => "claim".to_string(),
            ApiEvent::Claims(crate::claims::ClaimsEvent::Cluster(_)) => "cluster".to_string(),
            ApiEvent::Mesh(m) => {
                serde_json::to_value(m).ok().and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string)).unwrap_or_else(|| "mesh".into())
            }
        }
    }
}

/// Messages to the driver.
#[derive(Debug)]
pub enum Input {
    /// Reply with a snapshot of the state.
    Snapshot(oneshot::Sender<Snapshot>),
    /// A full discovery round finished.
    RoundDone(Report),
    /// A discovery round died (panicked) with this message.
    RoundFailed(String),
    /// Some servers were discovered again (e.g. a resolve found its cached answer gone).
    ServersRefreshed(Vec<ServerReport>),
}

/// A handle for sending inputs to the driver.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Input>,
}

/// Error returned when the driver has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct DriverGone;

impl DriverHandle {
    pub async fn snapshot(&self) -> Result<Snapshot, DriverGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Input::Snapshot(tx)).await.map_err(|_| DriverGone)?;
        tokio::time::timeout(Duration::from_secs(10), rx).await.map_err(|_| DriverGone)?.map_err(|_| DriverGone)
    }

    pub async fn send(&self, input: Input) -> Result<(), DriverGone> {
        self.tx.send(input).await.map_err(|_| DriverGone)
    }
}

/// Creates the driver's channel.
pub fn channel() -> (DriverHandle, mpsc::Receiver<Input>) {
    let (tx, rx) = mpsc::channel(64);
    (DriverHandle { tx }, rx)
}

/// Runs the driver until `shutdown` resolves: periodic discovery rounds (one at a time)
/// and answers to handles.
// The inputs are the node's parts, each wired once by `node::run`; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut rx: mpsc::Receiver<Input>,
    handle: DriverHandle,
    discoverer: Arc<Discoverer>,
    node: NodeInfo,
    mut mesh: Option<Mesh>,
    events: broadcast::Sender<ApiEvent>,
    health: SharedHealth,
    members: Option<tokio::sync::watch::Sender<crate::claims::Members>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api_port: u16 = node.api.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let interval = Duration::from_millis(discoverer.config().settings.discovery_interval_ms);
    // Read on a blocking thread (sysinfo reads /proc); one round at a time uses it.
    let host = Arc::new(Mutex::new(HostMonitor::new()));
    let mut report: Option<Arc<Report>> = None;
    let mut stats = Stats::default();
    let mut round_running = false;
    let next_round = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next_round);
    tokio::pin!(shutdown);
    loop {
        let mesh_next = async {
            match mesh.as_mut() {
                Some(m) => Some(m.next().await),
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(input) = mesh_next => {
                if let Some(m) = mesh.as_mut() {
                    m.handle(input);
                    let mut member_changed = false;
                    while let Some(e) = m.poll_event() {
                        member_changed |= matches!(e, MeshEvent::Member { .. } | MeshEvent::Crashed { .. } | MeshEvent::Forgotten { .. });
                        let _ = events.send(ApiEvent::Mesh(e));
                    }
                    // The claims service follows who is alive and who crashed.
                    if member_changed && let Some(tx) = &members {
                        tx.send_replace(Arc::new(m.liveness()));
                    }
                }
            }
            () = &mut next_round, if !round_running => {
                round_running = true;
                let d = discoverer.clone();
                let h = handle.clone();
                let host = host.clone();
                // The round runs as its own task; if it panics, RoundFailed says so and the
                // next round is scheduled after a backoff instead of never.
                tokio::spawn(async move {
                    let round = supervise::run_caught(async move {
                        let snapshot = tokio::task::spawn_blocking(move || host.lock().unwrap_or_else(|p| p.into_inner()).snapshot())
                            .await
                            .unwrap_or_default();
                        d.discover_all(snapshot).await
                    });
                    let input = match round.await {
                        Ok(r) => Input::RoundDone(r),
                        Err(e) => Input::RoundFailed(e),
                    };
                    let _ = h.send(input).await;
                });
            }
            input = rx.recv() => {
                let Some(input) = input else { break };
                match input {
                    Input::Snapshot(reply) => {
                        let mesh_snap = mesh.as_ref().map(mesh_snapshot);
                        let _ = reply.send(Snapshot { node: node.clone(), stats: stats.clone(), report: report.clone(), mesh: mesh_snap, tasks: health.failed() });
                    }
                    Input::RoundFailed(e) => {
                        round_running = false;
                        let delay = health.record_failure(DISCOVERY_TASK, &e);
                        next_round.as_mut().reset(tokio::time::Instant::now() + delay);
                    }
                    Input::RoundDone(mut r) => {
                        round_running = false;
                        health.record_ok(DISCOVERY_TASK);
                        stats.discovery_rounds += 1;
                        stats.last_round_ms = r.elapsed_ms;
                        stats.last_round_probes = r.probes;
                        let previous = report.as_deref().map(|r| r.servers.as_slice()).unwrap_or(&[]);
                        select::keep_last_known(previous, &mut r.servers);
                        log_changes(previous, &r.servers, &events);
                        if let Some(m) = mesh.as_mut() {
                            publish(m, &r, discoverer.config(), &node.hostname, api_port);
                        }
                        report = Some(Arc::new(r));
                        next_round.as_mut().reset(tokio::time::Instant::now() + interval);
                    }
                    Input::ServersRefreshed(mut list) => {
                        stats.server_refreshes += 1;
                        if let Some(current) = report.as_mut() {
                            let r = Arc::make_mut(current);
                            select::keep_last_known(&r.servers, &mut list);
                            log_changes(&r.servers, &list, &events);
                            for s in list {
                                match r.servers.iter_mut().find(|x| x.name == s.name) {
                                    Some(slot) => *slot = s,
                                    None => r.servers.push(s),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(m) = mesh.take() {
        m.leave().await;
    }
    tracing::debug!("driver stopped");
}

fn mesh_snapshot(m: &Mesh) -> MeshSnapshot {
    MeshSnapshot {
        mesh_id: m.mesh_id().to_string(),
        listen_port: m.listen_port(),
        addresses: m.advertised().iter().map(|a| a.to_string()).collect(),
        members: m.members(),
        remote: m.remote_services().into_iter().map(|(node, node_name, rtt_ms, service)| RemoteService { node, node_name, rtt_ms, service }).collect(),
        externals: m.externals(),
        other_meshes: m.other_meshes(),
        stats: m.stats(),
    }
}

/// Publishes this node's record and `_mcp._tcp` adverts after a discovery round.
/// URLs on loopback are rewritten to the node's advertised address (a server bound to
/// loopback only then fails remote verification, and is never handed out remotely).
/// A server whose probes timed out is offered as last known ([`select::keep_last_known`]
/// ran on the report first), so a slow round never empties the record.
fn publish(m: &mut Mesh, r: &Report, cfg: &Config, hostname: &str, api_port: u16) {
    let lan = m.advertised().iter().find(|a| a.is_ipv4()).map(|a| a.to_string());
    let services = select::service_ads(r, lan.as_deref());
    let mcp: Vec<(String, u16, String, String)> = services
        .iter()
        .filter(|s| s.protocol == Protocol::Mcp)
        .filter_map(|s| {
            let u = reqwest::Url::parse(&s.url).ok()?;
            Some((s.name.clone(), u.port_or_known_default()?, u.path().to_string(), s.server_info.as_ref().map(|i| i.version.clone()).unwrap_or_default()))
        })
        .collect();
    let capacity = Capacity {
        memory_total_bytes: r.host.memory_total_bytes,
        memory_available_bytes: r.host.memory_available_bytes,
        cpu_count: r.host.cpu_count as u32,
        load_milli: (r.host.load_average_1m * 1000.0) as u32,
        agent_slots: cfg.agents.limits.model_limits.clone(),
    };
    m.publish_record(hostname, api_port, services, capacity);
    m.advertise_mcp(&mcp);
}

/// Logs servers that became resolvable or stopped being so, and streams the change.
fn log_changes(old: &[ServerReport], new: &[ServerReport], events: &broadcast::Sender<ApiEvent>) {
    for n in new {
        let before = old.iter().find(|o| o.name == n.name).and_then(|o| o.resolved.clone());
        if n.timed_out && before.is_some() && before == n.resolved {
            tracing::warn!(server = %n.name, url = ?n.resolved, "probes timed out; keeping the last known instance");
        }
        let change = match (&before, &n.resolved) {
            (None, Some(url)) => {
                tracing::info!(server = %n.name, %url, "service available");
                "available"
            }
            (Some(url), None) if n.timed_out => {
                // Not known to be gone (its probes did not finish), and nothing healthy to
                // keep: say so, but do not announce it lost.
                tracing::warn!(server = %n.name, %url, "probes timed out; no instance known to be gone");
                continue;
            }
            (Some(url), None) => {
                tracing::warn!(server = %n.name, %url, "service lost");
                "lost"
            }
            (Some(a), Some(b)) if a != b => {
                tracing::info!(server = %n.name, from = %a, to = %b, "service moved");
                "moved"
            }
            _ => continue,
        };
        let _ = events.send(ApiEvent::Service(ServiceEvent { server: n.name.clone(), change, url: n.resolved.clone(), previous: before }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_event_has_one_kind_named_service() {
        let ev = ApiEvent::Service(ServiceEvent { server: "s".into(), change: "available", url: Some("http://x/mcp".into()), previous: None });
        let text = serde_json::to_string(&ev).expect("json");
        assert_eq!(text.matches("\"kind\"").count(), 1, "{text}");
        assert!(text.starts_with("{\"kind\":\"service\""), "{text}");
        assert_eq!(ev.kind(), "service");
    }
}
