//! The one task that owns the node's state. Everything else talks to it through [`Input`].

use crate::discovery::{now_ms, Discoverer};
use crate::host::HostMonitor;
use craftmesh_protocol::report::{Report, ServerReport};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

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

/// What API handlers get: a consistent copy of the state.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub node: NodeInfo,
    pub stats: Stats,
    pub report: Option<Arc<Report>>,
}

/// Messages to the driver.
#[derive(Debug)]
pub enum Input {
    /// Reply with a snapshot of the state.
    Snapshot(oneshot::Sender<Snapshot>),
    /// A full discovery round finished.
    RoundDone(Report),
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
pub async fn run(
    mut rx: mpsc::Receiver<Input>,
    handle: DriverHandle,
    discoverer: Arc<Discoverer>,
    node: NodeInfo,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let interval = Duration::from_millis(discoverer.config().settings.discovery_interval_ms);
    let mut host = HostMonitor::new();
    let mut report: Option<Arc<Report>> = None;
    let mut stats = Stats::default();
    let mut round_running = false;
    let next_round = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next_round);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = &mut next_round, if !round_running => {
                round_running = true;
                let d = discoverer.clone();
                let h = handle.clone();
                let snapshot = host.snapshot();
                tokio::spawn(async move {
                    let r = d.discover_all(snapshot).await;
                    let _ = h.send(Input::RoundDone(r)).await;
                });
            }
            input = rx.recv() => {
                let Some(input) = input else { break };
                match input {
                    Input::Snapshot(reply) => {
                        let _ = reply.send(Snapshot { node: node.clone(), stats: stats.clone(), report: report.clone() });
                    }
                    Input::RoundDone(r) => {
                        round_running = false;
                        stats.discovery_rounds += 1;
                        stats.last_round_ms = r.elapsed_ms;
                        stats.last_round_probes = r.probes;
                        log_changes(report.as_deref().map(|r| r.servers.as_slice()).unwrap_or(&[]), &r.servers);
                        report = Some(Arc::new(r));
                        next_round.as_mut().reset(tokio::time::Instant::now() + interval);
                    }
                    Input::ServersRefreshed(list) => {
                        stats.server_refreshes += 1;
                        if let Some(current) = report.as_mut() {
                            let r = Arc::make_mut(current);
                            log_changes(&r.servers, &list);
                            for s in list {
                                match r.servers.iter_mut().find(|x| x.name == s.name) {
                                    Some(slot) => *slot = s,
                                    None => r.servers.push(s),
                                }
                            }
                            r.finished_at_ms = r.finished_at_ms.min(now_ms());
                        }
                    }
                }
            }
        }
    }
    tracing::debug!("driver stopped");
}

/// Logs servers that became resolvable or stopped being so.
fn log_changes(old: &[ServerReport], new: &[ServerReport]) {
    for n in new {
        let before = old.iter().find(|o| o.name == n.name).and_then(|o| o.resolved.clone());
        match (&before, &n.resolved) {
            (None, Some(url)) => tracing::info!(server = %n.name, %url, "service available"),
            (Some(url), None) => tracing::warn!(server = %n.name, %url, "service lost"),
            (Some(a), Some(b)) if a != b => tracing::info!(server = %n.name, from = %a, to = %b, "service moved"),
            _ => {}
        }
    }
}
