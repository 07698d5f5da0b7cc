//! The claims service of a node: what the API and the CLI use ([`ClaimsHandle`]), its
//! options, and the views it shows (`cluster` in `status`, claim and cluster events).
//!
//! A request from this node's API goes to the leader: handled here when this node leads,
//! else forwarded over the mesh to the leader (following `NotLeader` answers), retried
//! until its deadline when there is no leader for a moment. Acquire is idempotent per
//! session, so a retry after a lost answer never makes a second holder.

use super::actor::In;
use super::clock::SharedClock;
use super::network::{CallError, Pool};
use super::store::{Durability, Io};
use super::types::NodeId;
use super::wire::{ClientOp, ClientReply, Request, Response};
use craftmesh_protocol::claims::ChangeKind;
use craftmesh_protocol::claims::cluster::{self, Role};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Raft timing (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTimings {
    /// A LAN: heartbeats every 150 ms, elections after 750–1500 ms of silence.
    fn default() -> Self {
        RaftTimings { heartbeat_ms: 150, election_min_ms: 750, election_max_ms: 1500 }
    }
}

/// How the claims service runs.
#[derive(Debug, Clone)]
pub struct ClaimsOptions {
    /// Where the Raft log, vote, snapshot and cluster file live (`<data dir>/claims`).
    pub dir: PathBuf,
    pub role: Role,
    pub durability: Durability,
    pub io: Io,
    pub raft: RaftTimings,
    pub formation: cluster::Config,
    /// How often this node asks every live peer for its cluster status.
    pub status_every_ms: u64,
    /// Grants resume this long after a holder vanished, unless an acquire says otherwise.
    pub lock_delay_ms: u64,
    /// A snapshot is taken every this many log entries, and a fifth of that is kept behind
    /// it for slow followers (1000 and 200). The simulation lowers it so that snapshots are
    /// built, sent and installed within a short run.
    pub snapshot_logs: u64,
}

impl ClaimsOptions {
    /// Defaults for a node whose data dir is `data_dir`.
    pub fn new(data_dir: &std::path::Path, role: Role) -> ClaimsOptions {
        ClaimsOptions {
            dir: data_dir.join("claims"),
            role,
            durability: Durability::Fsync,
            io: Io::Thread,
            raft: RaftTimings::default(),
            formation: cluster::Config::default(),
            status_every_ms: 1000,
            lock_delay_ms: 0,
            snapshot_logs: 1000,
        }
    }
}

/// A node as the cluster view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    pub node: NodeId,
    pub peer: String,
}

/// The `cluster` section of `status` and `GET /v1/cluster`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `server` or `client`.
    pub role: String,
    pub node: NodeId,
    /// The cluster this node is a member of (servers) or follows (clients).
    pub cluster: Option<String>,
    /// The cluster this node asked to join and is not a member of yet.
    pub joining: Option<String>,
    /// `leader`, `follower`, `learner`, `candidate`, `joining`, `forming` (no cluster yet),
    /// `client` (not in Raft: forwards to the leader).
    pub state: String,
    pub leader: Option<NodeRef>,
    pub term: u64,
    pub voters: Vec<NodeRef>,
    pub learners: Vec<NodeRef>,
    pub last_applied: Option<u64>,
    pub last_log: Option<u64>,
    /// Live claim keys in the local replica.
    pub keys: usize,
}

/// Who the leader is, as far as this node knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderView {
    pub cluster: Option<String>,
    pub leader: Option<NodeRef>,
    /// This node is the leader.
    pub me: bool,
}

/// A claim changed (every node reports what its replica applies).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename = "claim")]
pub struct ClaimEvent {
    pub change: ChangeKind,
    pub key: String,
    pub token: u64,
    pub node: String,
    pub session: String,
    pub cluster: String,
}

/// The cluster changed: formed, joined, left (merge), a new leader, new voters.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename = "cluster")]
pub struct ClusterEvent {
    pub change: String,
    pub cluster: Option<String>,
    pub leader: Option<NodeRef>,
    pub term: u64,
    pub detail: String,
}

/// What the API and the CLI hold: sends requests to the leader and reads the cluster view.
#[derive(Debug, Clone)]
pub struct ClaimsHandle {
    pub(super) tx: mpsc::Sender<In>,
    pub(super) pool: Pool,
    pub(super) leader: watch::Receiver<LeaderView>,
    pub(super) view: watch::Receiver<ClusterView>,
    pub(super) me: String,
    pub(super) clock: SharedClock,
    pub(super) lock_delay_ms: u64,
}

/// Hops along `NotLeader` answers before a request waits and asks again.
const MAX_HOPS: usize = 3;
/// Pause between attempts while there is no leader, or it cannot be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl ClaimsHandle {
    /// The peer id of this node (the `node` of its claims).
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The lock-delay an acquire gets unless it names one (`claims.lock_delay`).
    pub fn lock_delay_ms(&self) -> u64 {
        self.lock_delay_ms
    }

    /// The cluster as this node sees it now.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// Milliseconds on the lease clock (CLOCK_BOOTTIME) of this node.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Sends `op` to the leader and returns its answer, trying until `timeout` has passed.
    /// `Unavailable` when no leader answered in time.
    pub async fn request(&self, op: ClientOp, timeout: Duration) -> ClientReply {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no leader is known yet");
        let mut hint: Option<String> = None;
        let mut hops = 0;
        // Our own receiver, marked as it is read: `changed()` then wakes only on a change
        // since (the handle's receiver is never marked, so its clones would wake at once).
        let mut leader = self.leader.clone();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return ClientReply::Unavailable { reason: format!("no answer from a leader within {} ms: {last}", timeout.as_millis()) };
            }
            let target = match hint.take() {
                Some(p) => Some(p),
                None => {
                    let l = leader.borrow_and_update().clone();
                    if l.me { Some(self.me.clone()) } else { l.leader.map(|n| n.peer) }
                }
            };
            let reply = match target {
                None => None,
                Some(p) if p == self.me => self.local(op.clone(), left).await,
                Some(p) => match self.pool.call(&p, &Request::Client(op.clone()), left).await {
                    Ok(Response::Client(r)) => Some(r),
                    Ok(other) => {
                        last = format!("unexpected answer from {p}: {other:?}");
                        None
                    }
                    Err(e @ (CallError::Unreachable { .. } | CallError::Broken { .. } | CallError::Timeout { .. })) => {
                        last = e.to_string();
                        None
                    }
                },
            };
            match reply {
                Some(ClientReply::NotLeader { leader_peer: Some(p), .. }) if hops < MAX_HOPS => {
                    hops += 1;
                    last = format!("forwarded to {p}");
                    hint = Some(p);
                    continue;
                }
                Some(ClientReply::NotLeader { .. }) => last = "the node asked is not the leader and knows no other".into(),
                Some(ClientReply::Unavailable { reason }) => last = reason,
                Some(r) => return r,
                None => {}
            }
            hops = 0;
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if pause.is_zero() {
                continue;
            }
            // Wake early when the leader changes.
            let _ = tokio::time::timeout(pause, leader.changed()).await;
        }
    }

    /// Hands `op` to this node's actor (it leads, or says who does).
    async fn local(&self, op: ClientOp, timeout: Duration) -> Option<ClientReply> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(In::Op { op, reply: tx }).await.ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::network::{BoxStream, Transport};
    use futures::future::BoxFuture;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Nowhere;

    impl Transport for Nowhere {
        fn open(&self, _: &str) -> BoxFuture<'static, std::io::Result<BoxStream>> {
            Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no peers")) })
        }
    }

    /// On tokio's paused clock, which moves only when every task waits, a request that
    /// finds no leader must sleep between attempts, also after the leader view changed
    /// once (a watch receiver that is never marked makes `changed()` resolve at once).
    #[test]
    fn a_request_without_a_leader_waits_between_attempts_after_the_leader_view_changed() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
            let reply = rt.block_on(async {
                let (tx, _rx) = mpsc::channel(1);
                let (leader_tx, leader) = watch::channel(LeaderView::default());
                let (_view_tx, view) = watch::channel(ClusterView::default());
                let h = ClaimsHandle {
                    tx,
                    pool: Pool::new(Arc::new(Nowhere)),
                    leader,
                    view,
                    me: "me".into(),
                    clock: crate::claims::clock::boot_clock(),
                    lock_delay_ms: 0,
                };
                // A cluster was seen, its leader lost.
                leader_tx.send_replace(LeaderView { cluster: Some("c".into()), leader: None, me: false });
                h.request(ClientOp::List, Duration::from_secs(2)).await
            });
            let _ = done_tx.send(reply);
        });
        let reply = done_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the paused clock moved on: the request did not spin");
        assert!(matches!(reply, ClientReply::Unavailable { .. }), "{reply:?}");
    }
}
