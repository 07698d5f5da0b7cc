//! The claims actor: the one task that owns the claims side of a node. It starts and
//! stops Raft instances as the formation rules say (`craftmesh_protocol::claims::cluster`),
//! asks peers for their status, publishes who leads, turns applied entries into events,
//! and, while this node leads, executes ops ([`super::leader`]).
//!
//! Nothing here blocks: Raft writes and membership changes run on tasks of their own and
//! report back as [`In`] messages.

use super::clock::SharedClock;
use super::inbound::CurrentRaft;
use super::instance::{self, ClusterFile, Instance};
use super::leader::Waiters;
use super::network::{Pool, SharedTransport};
use super::service::{ClaimEvent, ClaimsOptions, ClusterEvent, ClusterView, LeaderView, NodeRef};
use super::sm::AppliedEntry;
use super::types::{NodeId, node_id_of};
use super::wire::{ClientOp, ClientReply, Request, Response};
use craftmesh_protocol::claims::cluster::{Action, Formation, Me, PeerView, Role, Status};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// What the mesh says about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub alive: bool,
    /// Proven crashed: its connection was reset and a redial refused (the host is up and
    /// nothing listens).
    pub crashed: bool,
}

/// Mesh members by peer id (from the driver).
pub type Members = Arc<BTreeMap<String, Liveness>>;

/// Claims and cluster events, for `/v1/events`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum ClaimsEvent {
    Claim(ClaimEvent),
    Cluster(ClusterEvent),
}

/// Where events go.
pub type EventSink = Arc<dyn Fn(ClaimsEvent) + Send + Sync>;

/// Messages to the actor.
#[derive(Debug)]
pub enum In {
    /// An op for this node as the leader (from its API or forwarded by another node).
    Op { op: ClientOp, reply: oneshot::Sender<ClientReply> },
    /// A waiter's attempt at its key finished.
    WaiterDone { key: String, id: u64, result: Result<craftmesh_protocol::claims::Outcome, String> },
    /// A refused waiting acquire joins its key's queue.
    Wait { op: ClientOp, reply: oneshot::Sender<ClientReply>, last: craftmesh_protocol::claims::Outcome },
    /// A peer's status (`None`: it did not answer).
    PeerStatus { peer: String, status: Option<Status> },
    /// A write the leader started on its own (tick, node gone) finished.
    OwnWriteDone,
    /// A membership change finished.
    ChangeDone { what: String, result: Result<(), String> },
}

/// What the actor knows about a peer.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub live: Liveness,
    /// Boot-clock ms when `live.alive` last changed.
    pub since_ms: u64,
    pub status: Option<Status>,
    pub asking: bool,
    /// While the mesh shows it crashed: the last entry this node had applied when it first
    /// did. Grants after it may be the peer's next run's ([`super::leader`]'s hand-off).
    pub crashed_upto: Option<u64>,
    /// While the mesh shows it crashed: when this node first saw it (boot ms).
    pub crashed_seen_ms: Option<u64>,
}

/// The actor's state.
pub(super) struct Actor {
    pub opts: ClaimsOptions,
    pub me: String,
    pub me_id: NodeId,
    pub clock: SharedClock,
    pub transport: SharedTransport,
    pub pool: Pool,
    pub events: EventSink,
    pub tx: mpsc::Sender<In>,
    pub file: ClusterFile,
    pub instance: Option<Instance>,
    pub metrics: Option<watch::Receiver<openraft::RaftMetrics<NodeId, super::types::CmNode>>>,
    pub applied_tx: mpsc::UnboundedSender<AppliedEntry>,
    pub raft_tx: watch::Sender<CurrentRaft>,
    pub status_tx: watch::Sender<Status>,
    pub leader_tx: watch::Sender<LeaderView>,
    pub view_tx: watch::Sender<ClusterView>,
    pub formation: Formation,
    pub started_at_ms: u64,
    pub peers: BTreeMap<String, Peer>,
    /// Voters the mesh no longer lists, and since when (boot ms): dead for the formation rules.
    pub missing_since: BTreeMap<NodeId, u64>,
    pub changing_membership: bool,
    pub waiters: Waiters,
    /// The term this node led in when it last proposed its first tick (re-base).
    pub led_term: Option<u64>,
    pub tick_in_flight: bool,
    /// Crashed peers whose bound claims were already handed on in this term.
    pub gone_sent: BTreeSet<String>,
    pub last_leader: Option<(Option<NodeId>, u64)>,
    /// The term in which this node last stood for election because its leader was proven
    /// crashed ([`super::failover`]): once per crash.
    pub stood_in_term: Option<u64>,
}

impl Actor {
    /// The current view of the leader, from Raft metrics (members) or peers' statuses (clients, joiners).
    pub fn leader_view(&self) -> LeaderView {
        if let (Some(inst), Some(m)) = (&self.instance, &self.metrics) {
            let m = m.borrow();
            if self.file.cluster.is_some() {
                let leader = m.current_leader.map(|id| NodeRef { node: id, peer: self.peer_of(id, Some(&m.membership_config)) });
                return LeaderView { cluster: Some(inst.cluster.clone()), me: m.current_leader == Some(self.me_id), leader };
            }
        }
        let cluster = match self.opts.role {
            Role::Client => self.file.followed.clone(),
            Role::Server => self.file.joining.clone(),
        };
        let leader = cluster.as_ref().and_then(|c| {
            self.peers
                .values()
                .filter(|p| p.live.alive)
                .filter_map(|p| p.status.as_ref())
                .filter(|s| s.cluster.as_ref() == Some(c))
                .filter_map(|s| s.leader)
                .max_by_key(|l| *l)
                .map(|id| NodeRef { node: id, peer: self.peer_of(id, None) })
        });
        LeaderView { cluster, leader: leader.filter(|l| !l.peer.is_empty()), me: false }
    }

    /// The peer id of a node id: from the Raft membership, else from peers' statuses.
    pub fn peer_of(&self, id: NodeId, membership: Option<&openraft::StoredMembership<NodeId, super::types::CmNode>>) -> String {
        if id == self.me_id {
            return self.me.clone();
        }
        if let Some(n) = membership.and_then(|m| m.membership().get_node(&id)) {
            return n.peer.clone();
        }
        self.peers.iter().find(|(_, p)| p.status.as_ref().is_some_and(|s| s.node == id)).map(|(k, _)| k.clone()).unwrap_or_default()
    }

    /// This node's status, as it answers peers.
    pub fn status(&self) -> Status {
        let mut s = Status {
            node: self.me_id,
            peer: self.me.clone(),
            role: self.opts.role,
            cluster: None,
            joining: None,
            leader: None,
            term: 0,
            voters: Vec::new(),
            learners: Vec::new(),
        };
        match self.opts.role {
            Role::Client => s.cluster = self.file.followed.clone(),
            Role::Server => {
                s.cluster = self.file.cluster.clone();
                s.joining = if self.file.cluster.is_none() { self.file.joining.clone() } else { None };
            }
        }
        if let (Some(m), true) = (&self.metrics, self.file.cluster.is_some()) {
            let m = m.borrow();
            s.leader = m.current_leader;
            s.term = m.current_term;
            s.voters = m.membership_config.membership().voter_ids().collect();
            s.learners = m.membership_config.membership().learner_ids().collect();
        } else if self.opts.role == Role::Client {
            s.leader = self.leader_view().leader.map(|l| l.node);
        }
        s
    }

    /// The cluster view for `status`.
    pub fn view(&self) -> ClusterView {
        let mut v = ClusterView {
            role: match self.opts.role {
                Role::Server => "server".into(),
                Role::Client => "client".into(),
            },
            node: self.me_id,
            cluster: self.file.cluster.clone().or_else(|| if self.opts.role == Role::Client { self.file.followed.clone() } else { None }),
            joining: if self.file.cluster.is_none() { self.file.joining.clone() } else { None },
            state: String::new(),
            ..ClusterView::default()
        };
        let lv = self.leader_view();
        v.leader = lv.leader.clone();
        v.state = match (self.opts.role, &self.file.cluster, &self.file.joining) {
            (Role::Client, _, _) => "client".into(),
            (_, None, Some(_)) => "joining".into(),
            (_, None, None) => "forming".into(),
            _ => String::new(),
        };
        if let (Some(m), Some(inst)) = (&self.metrics, &self.instance) {
            let m = m.borrow();
            v.term = m.current_term;
            v.last_applied = m.last_applied.map(|l| l.index);
            v.last_log = m.last_log_index;
            let mem = &m.membership_config;
            v.voters = mem.membership().voter_ids().map(|id| NodeRef { node: id, peer: self.peer_of(id, Some(mem)) }).collect();
            v.learners = mem.membership().learner_ids().map(|id| NodeRef { node: id, peer: self.peer_of(id, Some(mem)) }).collect();
            if v.state.is_empty() {
                v.state = match m.state {
                    openraft::ServerState::Leader => "leader",
                    openraft::ServerState::Candidate => "candidate",
                    openraft::ServerState::Learner => "learner",
                    openraft::ServerState::Follower if mem.membership().voter_ids().any(|v| v == self.me_id) => "follower",
                    openraft::ServerState::Follower => "learner",
                    openraft::ServerState::Shutdown => "stopped",
                }
                .into();
            }
            v.keys = inst.state.lock().map(|s| s.len()).unwrap_or(0);
        }
        v
    }

    /// Publishes status, leader and view to the watchers, and a cluster event on a leader change.
    pub fn publish(&mut self) {
        let status = self.status();
        self.status_tx.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        let lv = self.leader_view();
        let term = self.metrics.as_ref().map(|m| m.borrow().current_term).unwrap_or(0);
        let key = (lv.leader.as_ref().map(|l| l.node), term);
        if self.file.cluster.is_some() && self.last_leader != Some(key) && lv.leader.is_some() {
            self.last_leader = Some(key);
            tracing::info!(cluster = ?lv.cluster, leader = ?lv.leader.as_ref().map(|l| &l.peer), term, "claims: leader");
            (self.events)(ClaimsEvent::Cluster(ClusterEvent {
                change: "leader".into(),
                cluster: lv.cluster.clone(),
                leader: lv.leader.clone(),
                term,
                detail: String::new(),
            }));
        }
        self.leader_tx.send_if_modified(|l| {
            let changed = *l != lv;
            *l = lv;
            changed
        });
        let view = self.view();
        self.view_tx.send_if_modified(|v| {
            let changed = *v != view;
            *v = view;
            changed
        });
    }

    /// Takes in the mesh's member list.
    pub fn on_members(&mut self, members: &BTreeMap<String, Liveness>) {
        let now = self.clock.now_ms();
        let applied = self.instance.as_ref().and_then(|i| i.state.lock().ok().map(|s| s.last_index())).unwrap_or(0);
        for (peer, live) in members {
            if *peer == self.me {
                continue;
            }
            let p = self.peers.entry(peer.clone()).or_insert(Peer {
                live: *live,
                since_ms: now,
                status: None,
                asking: false,
                crashed_upto: None,
                crashed_seen_ms: None,
            });
            if p.live.alive != live.alive {
                p.since_ms = now;
            }
            p.live = *live;
            let crashed = live.crashed && !live.alive;
            if !crashed {
                (p.crashed_upto, p.crashed_seen_ms) = (None, None);
            } else if p.crashed_upto.is_none() {
                (p.crashed_upto, p.crashed_seen_ms) = (Some(applied), Some(now));
            }
        }
        self.peers.retain(|k, _| members.contains_key(k));
        self.pool.retain(|p| members.contains_key(p));
        self.hand_off_crashed();
    }

    /// Asks every live peer for its status (one question per peer at a time).
    pub fn ask_statuses(&mut self) {
        for (peer, p) in self.peers.iter_mut().filter(|(_, p)| p.live.alive && !p.asking) {
            p.asking = true;
            let pool = self.pool.clone();
            let tx = self.tx.clone();
            let peer = peer.clone();
            tokio::spawn(async move {
                let status = match pool.call(&peer, &Request::Status, Duration::from_secs(1)).await {
                    Ok(Response::Status(s)) if node_id_of(&s.peer).is_some_and(|id| id == s.node) && s.peer == peer => Some(s),
                    _ => None,
                };
                let _ = tx.send(In::PeerStatus { peer, status }).await;
            });
        }
    }

    /// Runs the formation rules and carries out what they say.
    pub async fn form(&mut self) {
        let now = self.clock.now_ms();
        let (is_leader, me_voters) = match &self.metrics {
            Some(m) if self.file.cluster.is_some() => {
                let m = m.borrow();
                (
                    m.current_leader == Some(self.me_id) && m.state == openraft::ServerState::Leader,
                    m.membership_config.membership().voter_ids().collect::<Vec<_>>(),
                )
            }
            _ => (false, Vec::new()),
        };
        let mut views: Vec<PeerView> = self
            .peers
            .values()
            .filter_map(|p| p.status.clone().map(|status| PeerView { status, alive: p.live.alive, since_ms: p.since_ms, crashed: p.live.crashed }))
            .collect();
        // Voters the mesh does not list at all count as dead since we first missed them.
        let listed: BTreeSet<NodeId> = views.iter().map(|v| v.status.node).collect();
        for id in me_voters.iter().filter(|id| **id != self.me_id && !listed.contains(id)) {
            let since = *self.missing_since.entry(*id).or_insert(now);
            let mut status = self.status();
            status.node = *id;
            status.peer = self.peer_of(*id, self.metrics.as_ref().map(|m| m.borrow().membership_config.clone()).as_deref());
            status.leader = None;
            views.push(PeerView { status, alive: false, since_ms: since, crashed: false });
        }
        self.missing_since.retain(|id, _| me_voters.contains(id) && !listed.contains(id));
        let me = Me { status: self.status(), started_at_ms: self.started_at_ms, is_leader, changing_membership: self.changing_membership };
        let actions = self.formation.decide(&me, &views, now);
        for a in actions {
            self.act(a).await;
        }
    }

    /// Carries out one formation action.
    async fn act(&mut self, a: Action) {
        match a {
            Action::Initialize { voters } => self.initialize(voters).await,
            Action::Join { cluster } => self.join(cluster, "asked to join").await,
            Action::StopJoining => {
                tracing::info!(cluster = ?self.file.joining, "claims: the cluster this node was joining is gone; forming anew");
                self.stop_instance().await;
                self.file.joining = None;
                self.save_file();
            }
            Action::Leave { for_cluster, reason } => {
                tracing::warn!(from = ?self.file.cluster, to = %for_cluster, %reason, "claims: leaving this cluster for another (merge rule); local holders must re-acquire there");
                (self.events)(ClaimsEvent::Cluster(ClusterEvent {
                    change: "left".into(),
                    cluster: self.file.cluster.clone(),
                    leader: None,
                    term: 0,
                    detail: format!("left for cluster {for_cluster}: {reason}"),
                }));
                self.stop_instance().await;
                if let Err(e) = instance::wipe(&self.opts.dir) {
                    tracing::error!(error = %e, "claims: cannot wipe the Raft files; staying out of every cluster");
                    return;
                }
                self.file.cluster = None;
                self.join(for_cluster, &reason).await;
            }
            Action::Follow { cluster } => {
                if self.file.followed.as_ref().is_some_and(|c| *c != cluster) {
                    tracing::warn!(from = ?self.file.followed, to = %cluster, "claims: this client now follows another cluster");
                }
                (self.events)(ClaimsEvent::Cluster(ClusterEvent {
                    change: "follow".into(),
                    cluster: Some(cluster.clone()),
                    leader: None,
                    term: 0,
                    detail: String::new(),
                }));
                self.file.followed = Some(cluster);
                self.save_file();
            }
            Action::AddLearner { node, peer } => self.change("add learner", move |raft| async move {
                raft.add_learner(node, super::wire::cm_node(&peer), false).await.map(|_| ()).map_err(|e| e.to_string())
            }),
            Action::SetVoters { voters } => self.change("set voters", move |raft| async move {
                let set: BTreeSet<NodeId> = voters.into_iter().collect();
                raft.change_membership(set, true).await.map(|_| ()).map_err(|e| e.to_string())
            }),
            Action::RemoveLearners { nodes } => self.change("remove learners", move |raft| async move {
                let set: BTreeSet<NodeId> = nodes.into_iter().collect();
                raft.change_membership(openraft::ChangeMembers::RemoveNodes(set), false).await.map(|_| ()).map_err(|e| e.to_string())
            }),
        }
    }

    /// Starts a membership change on its own task; one at a time.
    fn change<F, Fut>(&mut self, what: &str, f: F)
    where
        F: FnOnce(super::types::Raft) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let Some(inst) = &self.instance else { return };
        self.changing_membership = true;
        let raft = inst.raft.clone();
        let tx = self.tx.clone();
        let what = what.to_string();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(Duration::from_secs(30), f(raft)).await {
                Ok(r) => r,
                Err(_) => Err("timed out after 30 s".into()),
            };
            let _ = tx.send(In::ChangeDone { what, result }).await;
        });
    }

    fn save_file(&self) {
        if let Err(e) = self.file.save(&self.opts.dir) {
            tracing::error!(error = %e, "claims: cannot write the cluster file");
        }
    }

    /// Creates a cluster with `voters` (this node among them) and initialises it, once.
    async fn initialize(&mut self, voters: Vec<NodeId>) {
        if self.file.cluster.is_some() {
            return;
        }
        let id = instance::new_cluster_id();
        self.file.cluster = Some(id.clone());
        self.file.joining = None;
        if let Err(e) = self.file.save(&self.opts.dir) {
            tracing::error!(error = %e, "claims: cannot record the new cluster; not forming it");
            self.file.cluster = None;
            return;
        }
        if !self.start_instance(&id).await {
            return;
        }
        let members: BTreeMap<NodeId, super::types::CmNode> = voters.iter().map(|v| (*v, super::wire::cm_node(&self.peer_of(*v, None)))).collect();
        tracing::info!(cluster = %id, voters = ?members.values().map(|n| n.peer.clone()).collect::<Vec<_>>(), "claims: formed a new cluster");
        (self.events)(ClaimsEvent::Cluster(ClusterEvent {
            change: "formed".into(),
            cluster: Some(id),
            leader: None,
            term: 0,
            detail: format!("{} voter(s)", members.len()),
        }));
        if let Some(inst) = &self.instance
            && let Err(e) = inst.raft.initialize(members).await
        {
            tracing::warn!(error = %e, "claims: initialize refused (already initialised)");
        }
    }

    /// Asks to join `cluster`: a fresh Raft instance that accepts that cluster's leader.
    async fn join(&mut self, cluster: String, why: &str) {
        if self.file.cluster.as_ref() == Some(&cluster) || (self.file.joining.as_ref() == Some(&cluster) && self.instance.is_some()) {
            return;
        }
        tracing::info!(%cluster, reason = why, "claims: joining cluster");
        (self.events)(ClaimsEvent::Cluster(ClusterEvent {
            change: "joining".into(),
            cluster: Some(cluster.clone()),
            leader: None,
            term: 0,
            detail: why.to_string(),
        }));
        self.stop_instance().await;
        self.file.joining = Some(cluster.clone());
        self.save_file();
        self.start_instance(&cluster).await;
    }

    /// Starts Raft for `cluster` on this dir's files.
    pub async fn start_instance(&mut self, cluster: &str) -> bool {
        match instance::start(&self.opts, cluster, self.me_id, self.transport.clone(), self.applied_tx.clone()).await {
            Ok(inst) => {
                self.metrics = Some(inst.raft.metrics());
                self.raft_tx.send_replace(Some((cluster.to_string(), inst.raft.clone())));
                self.instance = Some(inst);
                true
            }
            Err(e) => {
                tracing::error!(%cluster, error = %e, "claims: cannot start Raft");
                false
            }
        }
    }

    /// Stops the running Raft instance, if any (waiters are told to ask again).
    pub async fn stop_instance(&mut self) {
        self.raft_tx.send_replace(None);
        self.metrics = None;
        self.waiters.fail_all("this node left the cluster");
        if let Some(inst) = self.instance.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), inst.raft.shutdown()).await;
        }
        self.led_term = None;
    }

    /// A joining node that now holds Raft state of its cluster is a member.
    pub fn check_joined(&mut self) {
        let (Some(c), None) = (self.file.joining.clone(), &self.file.cluster) else { return };
        let Some(m) = &self.metrics else { return };
        let member = {
            let m = m.borrow();
            m.membership_config.membership().get_node(&self.me_id).is_some() || m.last_log_index.is_some()
        };
        if member {
            tracing::info!(cluster = %c, "claims: joined cluster");
            (self.events)(ClaimsEvent::Cluster(ClusterEvent {
                change: "joined".into(),
                cluster: Some(c.clone()),
                leader: None,
                term: 0,
                detail: String::new(),
            }));
            self.file.cluster = Some(c);
            self.file.joining = None;
            self.save_file();
        }
    }

    /// Turns an applied entry into events (every node) and leader work.
    pub fn on_applied(&mut self, e: AppliedEntry) {
        let cluster = self.instance.as_ref().map(|i| i.cluster.clone()).unwrap_or_default();
        for c in &e.changes {
            (self.events)(ClaimsEvent::Claim(ClaimEvent {
                change: c.kind.clone(),
                key: c.key.clone(),
                token: c.holder.token,
                node: c.holder.node.clone(),
                session: c.holder.session.clone(),
                cluster: cluster.clone(),
            }));
        }
        self.after_applied(&e);
    }
}
