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
    /// A LAN: heartbeats every 150 ms (also openraft's timeout of an append, which may
    /// wait for a follower's fsync), election timeouts of 500–1000 ms. openraft 0.9 adds
    /// its leader lease (`election_max_ms`) to the timeout of a follower that had a
    /// leader, and a voter refuses to vote within the lease: a silent leader is replaced
    /// after 1.5–2 s, one proven crashed after about 1.1 s (`super::failover`).
    fn default() -> Self {
        RaftTimings { heartbeat_ms: 150, election_min_ms: 500, election_max_ms: 1000 }
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

/// Returns once `view` changes to name a leader other than `asked` (this node included);
/// pending forever when the view's sender is gone.
async fn another_leader(view: &mut watch::Receiver<LeaderView>, asked: &str, me: &str) {
    loop {
        if view.changed().await.is_err() {
            return futures::future::pending().await;
        }
        let l = view.borrow_and_update().clone();
        let now = if l.me { Some(me.to_string()) } else { l.leader.map(|n| n.peer) };
        if now.is_some_and(|p| p != asked) {
            return;
        }
    }
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
                Some(p) => {
                    // A leader that stops answering (frozen, cut off with its connection
                    // still open) would hold the request until its deadline: give up on it
                    // as soon as another leader is known, and ask that one (an acquire is
                    // idempotent per session, so asking twice never grants twice).
                    let mut view = self.leader.clone();
                    view.borrow_and_update();
                    let req = Request::Client(op.clone());
                    tokio::select! {
                        r = self.pool.call(&p, &req, left) => match r {
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
                        () = another_leader(&mut view, &p, &self.me) => {
                            last = format!("{p} was asked, and another node leads now");
                            None
                        }
                    }
                }
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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A peer that takes every request and never answers (a frozen process).
    #[derive(Debug)]
    struct Silent;

    struct SilentStream;

    impl futures::AsyncRead for SilentStream {
        fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut [u8]) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
    }

    impl futures::AsyncWrite for SilentStream {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Transport for Silent {
        fn open(&self, _: &str) -> BoxFuture<'static, std::io::Result<BoxStream>> {
            Box::pin(async { Ok(Box::new(SilentStream) as BoxStream) })
        }
    }

    #[tokio::test]
    async fn a_request_held_by_a_silent_leader_goes_to_the_next_leader_at_once() {
        let (tx, mut rx) = mpsc::channel(8);
        let old = LeaderView { cluster: Some("c".into()), leader: Some(NodeRef { node: 2, peer: "old-leader".into() }), me: false };
        let (leader_tx, leader) = watch::channel(old);
        let handle = ClaimsHandle {
            tx,
            pool: Pool::new(std::sync::Arc::new(Silent)),
            leader,
            view: watch::channel(ClusterView::default()).1,
            me: "me".into(),
            clock: crate::claims::clock::boot_clock(),
            lock_delay_ms: 0,
        };
        // This node's actor answers once it leads.
        tokio::spawn(async move {
            while let Some(In::Op { reply, .. }) = rx.recv().await {
                let _ = reply.send(ClientReply::List { keys: Vec::new(), now_ms: 0, cluster: "c".into(), leader: 1 });
            }
        });
        let asked = tokio::spawn(async move { handle.request(ClientOp::List, Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!asked.is_finished(), "the silent leader cannot have answered");
        leader_tx.send_replace(LeaderView { cluster: Some("c".into()), leader: Some(NodeRef { node: 1, peer: "me".into() }), me: true });
        let reply = tokio::time::timeout(Duration::from_secs(5), asked).await.expect("answered once another node leads").expect("task");
        assert!(matches!(reply, ClientReply::List { .. }), "{reply:?}");
    }

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
