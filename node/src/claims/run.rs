//! Starting the claims service and the actor's loop.

use super::actor::{Actor, EventSink, In, Members};
use super::clock::SharedClock;
use super::inbound::{self, Inbound};
use super::instance::ClusterFile;
use super::leader::Waiters;
use super::network::{BoxStream, Pool, SharedTransport};
use super::service::{ClaimsHandle, ClaimsOptions, ClusterView, LeaderView};
use super::types::node_id_of;
use craftmesh_protocol::claims::cluster::Formation;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How often the formation rules run (on the statuses received so far).
const FORM_EVERY: Duration = Duration::from_millis(250);

/// Why the claims service did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("claims: {0}")]
    ClusterFile(String),
    #[error("claims: `{0}` is not a peer id")]
    PeerId(String),
    #[error("claims: cannot create {path}: {reason}")]
    Dir { path: String, reason: String },
}

/// Everything the service needs from the node.
pub struct Wiring {
    pub opts: ClaimsOptions,
    /// This node's base58 peer id.
    pub me: String,
    pub clock: SharedClock,
    pub transport: SharedTransport,
    /// Inbound streams of the claims protocol, with the peer they came from.
    pub incoming: mpsc::Receiver<(String, BoxStream)>,
    pub members: watch::Receiver<Members>,
    pub events: EventSink,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring").field("me", &self.me).finish()
    }
}

/// Starts the service: the actor and the inbound server, as tasks that end with `shutdown`.
pub async fn start(
    w: Wiring,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(ClaimsHandle, tokio::task::JoinHandle<()>), StartError> {
    let me_id = node_id_of(&w.me).ok_or_else(|| StartError::PeerId(w.me.clone()))?;
    std::fs::create_dir_all(&w.opts.dir).map_err(|e| StartError::Dir { path: w.opts.dir.display().to_string(), reason: e.to_string() })?;
    let file = ClusterFile::load(&w.opts.dir).map_err(StartError::ClusterFile)?;
    let (tx, rx) = mpsc::channel(1024);
    let (applied_tx, applied_rx) = mpsc::unbounded_channel();
    let pool = Pool::new(w.transport.clone());
    let (raft_tx, raft_rx) = watch::channel(None);
    let (leader_tx, leader_rx) = watch::channel(LeaderView::default());
    let (view_tx, view_rx) = watch::channel(ClusterView::default());
    let now = w.clock.now_ms();
    let (me_str, role) = (w.me.clone(), w.opts.role);
    let formation = Formation::new(w.opts.formation.clone());
    let mut actor = Actor {
        opts: w.opts,
        me: w.me.clone(),
        me_id,
        clock: w.clock.clone(),
        transport: w.transport,
        pool: pool.clone(),
        events: w.events,
        tx: tx.clone(),
        file,
        instance: None,
        metrics: None,
        applied_tx,
        raft_tx,
        status_tx: watch::channel(initial_status(&me_str, me_id, role)).0,
        leader_tx,
        view_tx,
        formation,
        started_at_ms: now,
        peers: BTreeMap::new(),
        missing_since: BTreeMap::new(),
        changing_membership: false,
        waiters: Waiters::default(),
        led_term: None,
        tick_in_flight: false,
        gone_sent: Default::default(),
        last_leader: None,
        stood_in_term: None,
    };
    actor.status_tx.send_replace(actor.status());
    let status_rx = actor.status_tx.subscribe();
    // A node with a cluster (or a join in progress) restarts its Raft at once.
    if let Some(c) = actor.file.cluster.clone().or_else(|| actor.file.joining.clone())
        && actor.opts.role == craftmesh_protocol::claims::cluster::Role::Server
    {
        actor.start_instance(&c).await;
    }
    actor.publish();
    let inbound = Inbound { raft: raft_rx, status: status_rx, actor: tx.clone() };
    let handle = ClaimsHandle { tx, pool, leader: leader_rx, view: view_rx, me: w.me, clock: w.clock, lock_delay_ms: actor.opts.lock_delay_ms };
    let task = tokio::spawn(async move {
        let server = tokio::spawn(inbound::run(w.incoming, inbound));
        run(actor, rx, applied_rx, w.members, shutdown).await;
        server.abort();
    });
    Ok((handle, task))
}

/// The actor's loop.
async fn run(
    mut a: Actor,
    mut rx: mpsc::Receiver<In>,
    mut applied: mpsc::UnboundedReceiver<super::sm::AppliedEntry>,
    mut members: watch::Receiver<Members>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut form = tokio::time::interval(FORM_EVERY);
    form.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ask = tokio::time::interval(Duration::from_millis(a.opts.status_every_ms.max(50)));
    ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let m = members.borrow_and_update().clone();
    a.on_members(&m);
    loop {
        let metrics = a.metrics.clone();
        let metrics_changed = async move {
            match metrics {
                Some(mut m) => {
                    if m.changed().await.is_err() {
                        futures::future::pending::<()>().await
                    }
                }
                None => futures::future::pending::<()>().await,
            }
        };
        let tick_at = a.next_tick_ms().map(|at| {
            let wait = at.saturating_sub(a.clock.now_ms());
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let tick = async move {
            match tick_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        let elect_at = a.next_election_ms().map(|at| {
            let wait = at.saturating_sub(a.clock.now_ms());
            tokio::time::Instant::now() + Duration::from_millis(wait)
        });
        let elect = async move {
            match elect_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        let waiter_at = a.waiters.next_deadline();
        let waiter = async move {
            match waiter_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => futures::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            input = rx.recv() => {
                let Some(input) = input else { break };
                handle(&mut a, input);
            }
            Some(e) = applied.recv() => a.on_applied(e),
            () = metrics_changed => {
                // Mark the change seen on the actor's own receiver before reading the
                // metrics: the next loop clones it, and a clone of a receiver that never
                // marks anything resolves `changed()` at once, forever (a busy loop).
                if let Some(m) = a.metrics.as_mut() {
                    m.mark_unchanged();
                }
                a.check_joined();
                a.on_leadership();
                a.publish();
            }
            changed = members.changed() => {
                if changed.is_err() {
                    break;
                }
                let m = members.borrow_and_update().clone();
                a.on_members(&m);
            }
            _ = ask.tick() => a.ask_statuses(),
            _ = form.tick() => {
                a.form().await;
                a.hand_off_crashed();
                a.publish();
            }
            () = tick => a.write_own(craftmesh_protocol::claims::Op::Tick),
            () = waiter => a.expire_waiters(),
            () = elect => a.stand_if_due(),
        }
    }
    a.stop_instance().await;
    tracing::debug!("claims service stopped");
}

fn handle(a: &mut Actor, input: In) {
    match input {
        In::Op { op, reply } => a.on_op(op, reply),
        In::Wait { op, reply, last } => a.enqueue(op, reply, last),
        In::WaiterDone { key, id, result } => a.on_waiter_done(&key, id, result),
        In::PeerStatus { peer, status } => {
            if let Some(p) = a.peers.get_mut(&peer) {
                p.asking = false;
                if let Some(s) = status {
                    p.status = Some(s);
                }
            }
        }
        In::OwnWriteDone => a.tick_in_flight = false,
        In::ChangeDone { what, result } => {
            a.changing_membership = false;
            match result {
                Ok(()) => tracing::info!(change = %what, "claims: membership changed"),
                Err(e) => tracing::warn!(change = %what, error = %e, "claims: membership change failed"),
            }
            a.publish();
        }
    }
}

/// A status to start from (replaced by the actor's own before anyone reads it).
fn initial_status(peer: &str, node: u64, role: craftmesh_protocol::claims::cluster::Role) -> craftmesh_protocol::claims::cluster::Status {
    craftmesh_protocol::claims::cluster::Status {
        node,
        peer: peer.to_string(),
        role,
        cluster: None,
        joining: None,
        leader: None,
        term: 0,
        voters: Vec::new(),
        learners: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::clock::Clock;
    use crate::claims::network::Transport;
    use crate::claims::store::{Durability, Io};
    use crate::claims::wire::{ClientOp, ClientReply};
    use craftmesh_protocol::claims::cluster::Role;
    use craftmesh_protocol::claims::{Meta, Outcome};
    use futures::future::BoxFuture;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Nowhere;

    impl Transport for Nowhere {
        fn open(&self, _: &str) -> BoxFuture<'static, std::io::Result<BoxStream>> {
            Box::pin(async { Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no peers")) })
        }
    }

    #[derive(Debug)]
    struct Virtual(tokio::time::Instant);

    impl Clock for Virtual {
        fn now_ms(&self) -> u64 {
            self.0.elapsed().as_millis() as u64
        }
    }

    /// tokio's paused clock moves only when every task waits, so this finishes only if the
    /// actor (whose Raft metrics change all the time) and a request waiting for a leader
    /// sleep between their rounds instead of spinning.
    #[test]
    fn a_lone_server_leads_and_grants_on_a_paused_clock_so_nothing_spins() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
            let dir = tempfile::tempdir().expect("tempdir");
            let result = rt.block_on(async {
                let mut opts = ClaimsOptions::new(dir.path(), Role::Server);
                opts.durability = Durability::Buffered;
                opts.io = Io::Inline;
                let me = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id().to_base58();
                let (_in_tx, incoming) = mpsc::channel(1);
                let (_members_tx, members) = watch::channel(Members::default());
                let clock = Arc::new(Virtual(tokio::time::Instant::now()));
                let w = Wiring { opts, me: me.clone(), clock, transport: Arc::new(Nowhere), incoming, members, events: Arc::new(|_| {}) };
                let (h, _task) = start(w, futures::future::pending()).await.expect("start");
                // Asked before there is a leader: the request waits for one.
                let op = ClientOp::Acquire {
                    key: "k".into(),
                    node: me,
                    session: "s".into(),
                    ttl_ms: 1000,
                    limit: 1,
                    lock_delay_ms: 0,
                    meta: Meta::default(),
                    wait_ms: 0,
                };
                let reply = h.request(op, Duration::from_secs(30)).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                (reply, h.view().state)
            });
            let _ = tx.send(result);
        });
        let (reply, state) = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("the paused clock moved on: nothing spins");
        assert!(matches!(reply, ClientReply::Applied { outcome: Outcome::Granted { .. }, .. }), "{reply:?}");
        assert_eq!(state, "leader");
    }
}
