//! Zero-configuration cluster formation: who creates the Raft cluster, who joins which one,
//! who votes, and how two clusters that find each other become one.
//!
//! Every node has a role: a `server` may vote, a `client` is never in Raft and forwards its
//! requests to the leader. Nodes exchange a small [`Status`] with every alive mesh peer
//! about once a second; the node feeds what it knows to [`Formation::decide`] with `now`
//! and carries out the [`Action`]s that come back. Nothing here reads a clock.
//!
//! A cluster is *in sight* when an alive server peer reports being in it and reports a
//! leader. Dead peers never count, and clients are not evidence of a cluster. When several
//! clusters are in sight, the one to go to is picked by [`winner`]: **the cluster with more
//! voters wins; on a tie the lexicographically lower cluster id wins.** A cluster's voter
//! count is the one reported with the highest term (the leader's own report first).
//!
//! The rules, in the order they are tried:
//!
//! 1. **Forming** (a server with no cluster and no join request). If a cluster is in sight,
//!    join the winner (even inside the window). Otherwise wait out the formation window:
//!    `started_at + form_window`, or `first_peer_seen + form_window` when the first alive
//!    server peer appeared inside the window. After it, the lowest id among me and the alive
//!    *free* servers (no cluster, not joining) initialises a cluster whose voters are the
//!    lowest `target_voters(n)` ids of that set; the others wait for it. A server with `k`
//!    free servers below it waits `3 × k × form_window` more, then gives up on them and
//!    initialises with the free servers from itself up (staggered so that the second
//!    lowest goes first and the others can join it; any split heals by the merge rule).
//!    While an alive server reports a cluster without a leader (one being created), even
//!    the lowest waits `3 × form_window` after its window. An Initialize is not repeated
//!    for `3 × form_window` (the node is creating it).
//! 2. **Joining** (a server with no cluster that asked to join `c`). While `c` is in sight,
//!    wait for its leader. When `c` has been out of sight for `merge_delay`, join the winner
//!    in sight instead, or stop joining (rule 1 applies again) when there is none. Once my
//!    status shows a cluster, the join request is moot.
//! 3. **Clients** never initialise or join: they follow the winner in sight, reported only
//!    when it differs from the last one followed. With nothing in sight, nothing changes.
//! 4. **Merge** (a member of cluster A). When a cluster B has been in sight continuously
//!    for `merge_delay` and has been winning over A all that time, leave A for the winner
//!    among such clusters. A's count is picked as B's members pick it (the best report,
//!    mine among them), so both sides compare the same numbers; with no count, no merge.
//! 5. **Leaderless** (a member of A; an addition to the brief). When A has had no leader
//!    (not me, not in my status, not reported by any alive member) for `promote_after` and
//!    another cluster has been in sight for `merge_delay`, leave A for the winner in sight.
//!    Without this, the last machine of a cluster whose majority is gone for good would sit
//!    leaderless forever, and it may even win every merge on voter count. Leaving is safe:
//!    what A committed lives on in any majority of A that still exists.
//! 6. **Removed** (a member of A). When A's leader (an alive peer reporting itself as A's
//!    leader, in a term not older than mine) has listed neither me as voter nor as learner
//!    continuously for `rejoin_after`, leave A for A (the node joins it again, fresh).
//!
//!    Rules 4 to 6 return one Leave, then nothing more while my status still shows A, for
//!    `rejoin_after` (after that a Leave the node failed to carry out is repeated).
//! 7. **Leader duties** (the leader, while no membership change is in progress). At most
//!    one kind of change per call, in this order, because openraft takes one membership
//!    change at a time and restoring fault tolerance matters most:
//!    - *Voters.* Eligible = voters not dead longer than `promote_after` + alive server
//!      learners whose status shows the cluster (they have caught up enough to know it).
//!      With `target = target_voters(eligible, max_voters)`: when there are fewer voters
//!      than the target, add the lowest-id eligible learners; otherwise, when a voter has
//!      been dead longer than `promote_after` and a learner is eligible, swap the voter
//!      dead longest for the lowest-id learner (one at a time). The leader is never
//!      removed, and a change is only proposed when both the current and the new voter
//!      sets have an alive majority (joint consensus needs both to commit it).
//!    - *Learners in.* AddLearner for every alive server peer asking to join my cluster
//!      that is not a voter or learner yet, lowest ids first, up to `max_learners`.
//!    - *Learners out.* RemoveLearners for learners dead longer than `forget_learner_after`.
//!
//!    A voter or learner the mesh does not know at all counts as dead since the leader
//!    first noticed. `PeerView::crashed` does not shorten any delay: a crashed process is
//!    usually restarted by its supervisor well within `promote_after`.
//! 8. Everything else: no action. Decisions depend only on the inputs and the memory kept
//!    here (ordered maps and sorted ids, never hash order), not on the order of `peers`.

use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A node's Raft id (the node derives it from its peer id).
pub type NodeId = u64;

/// What a node may be in the claims cluster, set by its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May vote; a learner when the cluster has enough voters.
    Server,
    /// Never in Raft: forwards requests to the leader of the cluster it follows.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role that is neither `server` nor `client`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"server\" or \"client\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// What a node reports about itself to every alive mesh peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeId,
    /// Its mesh peer id, which the leader needs to add it as a learner.
    pub peer: String,
    pub role: Role,
    /// The cluster it belongs to (its persisted Raft state), if any.
    pub cluster: Option<String>,
    /// The cluster it asked to join while it has none; that cluster's leader adds it.
    pub joining: Option<String>,
    /// The leader it knows of, in `term`.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Its view of the cluster's membership.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// One peer as this node sees it: mesh membership plus the last status it sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub status: Status,
    pub alive: bool,
    /// When the current alive or dead state began.
    pub since_ms: u64,
    /// Proven crashed (reset, then a refused redial). Treated as any dead peer (see rule 7).
    pub crashed: bool,
}

/// This node, as `decide` needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    pub status: Status,
    /// When the node started; the formation window counts from here.
    pub started_at_ms: u64,
    pub is_leader: bool,
    /// A membership change of mine is in flight: propose none on top of it.
    pub changing_membership: bool,
}

/// Timing and size knobs of cluster formation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How long a fresh server listens for others before a cluster is created: long
    /// enough for the machines of a LAN that boot together to exchange a status or two.
    pub form_window_ms: u64,
    /// How long another cluster must stay in sight before a merge or a switch: a
    /// status that flickers in and out does not make anyone drop their Raft state.
    pub merge_delay_ms: u64,
    /// How long a voter may be dead before a learner takes its place (a reboot fits).
    pub promote_after_ms: u64,
    pub max_voters: usize,
    /// How long a dead learner stays in the membership.
    pub forget_learner_after_ms: u64,
    pub max_learners: usize,
    /// How long the leader must leave me out of the membership before I join again.
    pub rejoin_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            form_window_ms: 2000,
            merge_delay_ms: 1500,
            promote_after_ms: 30_000,
            max_voters: 5,
            forget_learner_after_ms: 3_600_000,
            max_learners: 64,
            rejoin_after_ms: 10_000,
        }
    }
}

/// Something the node must do. Membership changes go only to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create a new cluster (the node picks its id) with these voters, me included.
    Initialize {
        voters: Vec<NodeId>,
    },
    /// Set my `joining` request to `cluster`; its leader will add me as a learner.
    Join {
        cluster: String,
    },
    /// Clear my `joining` request: the cluster is gone and nothing else is in sight.
    StopJoining,
    AddLearner {
        node: NodeId,
        peer: String,
    },
    /// Change the voters to exactly these (voters taken out stay learners or go).
    SetVoters {
        voters: Vec<NodeId>,
    },
    RemoveLearners {
        nodes: Vec<NodeId>,
    },
    /// Drop my Raft state, then join `for_cluster`.
    Leave {
        for_cluster: String,
        reason: String,
    },
    /// (Clients.) Forward requests to the leader of `cluster` from now on.
    Follow {
        cluster: String,
    },
}

/// The merge rule: the cluster with more voters wins; on a tie the lexicographically lower
/// id wins. Both sides of a merge reach the same answer from the same counts, so exactly
/// one of them leaves; more voters win so that fewer machines drop their state.
pub fn winner<'a>(a: (&'a str, usize), b: (&'a str, usize)) -> &'a str {
    match a.1.cmp(&b.1) {
        std::cmp::Ordering::Greater => a.0,
        std::cmp::Ordering::Less => b.0,
        std::cmp::Ordering::Equal => a.0.min(b.0),
    }
}

/// How many voters `servers` servers should have: the largest odd number up to
/// `min(servers, max)`, at least 1 when there is a server. Odd, because 4 voters tolerate
/// no more failures than 3, and two machines where one sleeps must not both vote.
pub fn target_voters(servers: usize, max: usize) -> usize {
    if servers == 0 {
        return 0;
    }
    let n = servers.min(max).max(1);
    if n.is_multiple_of(2) { n - 1 } else { n }
}

/// The little memory cluster formation needs between calls (all timestamps).
#[derive(Debug, Clone)]
pub struct Formation {
    cfg: Config,
    /// When `decide` first saw an alive server peer (it may extend the window).
    first_peer_seen_ms: Option<u64>,
    /// The last Initialize returned and not yet reflected in my status.
    initialized_at_ms: Option<u64>,
    /// The join request that went out of sight, since when, and whether it was given up.
    lost_join: Option<(String, u64, bool)>,
    /// The cluster a client follows.
    following: Option<String>,
    /// The cluster the member timers below are about (my status's cluster).
    member_of: Option<String>,
    /// Other clusters in sight, since when (continuously).
    in_sight_since: BTreeMap<String, u64>,
    /// Clusters in sight that beat mine, since when (continuously).
    winning_since: BTreeMap<String, u64>,
    leaderless_since: Option<u64>,
    removed_since: Option<u64>,
    /// The Leave returned: from which cluster, when.
    left: Option<(String, u64)>,
    /// Members the mesh does not know, since when (the leader's bookkeeping).
    unknown_since: BTreeMap<NodeId, u64>,
}

impl Formation {
    pub fn new(cfg: Config) -> Self {
        Formation {
            cfg,
            first_peer_seen_ms: None,
            initialized_at_ms: None,
            lost_join: None,
            following: None,
            member_of: None,
            in_sight_since: BTreeMap::new(),
            winning_since: BTreeMap::new(),
            leaderless_since: None,
            removed_since: None,
            left: None,
            unknown_since: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What to do now, given my state and every peer's last status (see the module doc).
    pub fn decide(&mut self, me: &Me, peers: &[PeerView], now_ms: u64) -> Vec<Action> {
        let id = me.status.node;
        let mut peers: Vec<&PeerView> = peers.iter().filter(|p| p.status.node != id).collect();
        peers.sort_by_key(|p| p.status.node);
        let sight = in_sight(&peers);
        self.in_sight_since.retain(|c, _| sight.contains_key(c.as_str()));
        for c in sight.keys() {
            self.in_sight_since.entry(c.to_string()).or_insert(now_ms);
        }
        if self.member_of != me.status.cluster {
            self.member_of = me.status.cluster.clone();
            self.winning_since.clear();
            self.leaderless_since = None;
            self.removed_since = None;
            self.unknown_since.clear();
        }
        if me.status.role == Role::Client {
            return self.follow(&sight);
        }
        match (&me.status.cluster, &me.status.joining) {
            (Some(a), _) => {
                self.initialized_at_ms = None;
                self.lost_join = None;
                self.member(me, a, &peers, &sight, now_ms)
            }
            (None, Some(c)) => self.join(c, &sight, now_ms),
            (None, None) => {
                self.lost_join = None;
                self.form(me, &peers, &sight, now_ms)
            }
        }
    }

    /// Rule 1.
    fn form(&mut self, me: &Me, peers: &[&PeerView], sight: &BTreeMap<&str, usize>, now: u64) -> Vec<Action> {
        let id = me.status.node;
        let servers: Vec<&PeerView> = peers.iter().copied().filter(|p| p.alive && p.status.role == Role::Server).collect();
        if self.first_peer_seen_ms.is_none() && !servers.is_empty() {
            self.first_peer_seen_ms = Some(now);
        }
        // Named as a voter of a cluster someone just initialised: it needs my vote to elect
        // its first leader, so join it (before it has a leader, which it cannot get without me).
        if let Some(c) = servers.iter().filter(|p| p.status.voters.contains(&id)).filter_map(|p| p.status.cluster.as_deref()).min() {
            return vec![Action::Join { cluster: c.to_string() }];
        }
        if let Some(c) = best(sight) {
            return vec![Action::Join { cluster: c.to_string() }];
        }
        let fw = self.cfg.form_window_ms;
        let start = me.started_at_ms;
        let window_end = match self.first_peer_seen_ms {
            Some(t) if t >= start && t < start.saturating_add(fw) => t.saturating_add(fw),
            _ => start.saturating_add(fw),
        };
        if now < window_end || self.initialized_at_ms.is_some_and(|t| now < t.saturating_add(fw.saturating_mul(3))) {
            return Vec::new();
        }
        let free: BTreeSet<NodeId> =
            servers.iter().filter(|p| p.status.cluster.is_none() && p.status.joining.is_none()).map(|p| p.status.node).chain([id]).collect();
        let below = free.range(..id).count() as u64;
        let creating = servers.iter().any(|p| p.status.cluster.is_some() && p.status.leader.is_none());
        let waits = below.max(u64::from(creating));
        if now < window_end.saturating_add(waits.saturating_mul(fw).saturating_mul(3)) {
            return Vec::new();
        }
        let pool: Vec<NodeId> = free.range(id..).copied().collect();
        let n = target_voters(pool.len(), self.cfg.max_voters);
        self.initialized_at_ms = Some(now);
        vec![Action::Initialize { voters: pool[..n].to_vec() }]
    }

    /// Rule 2.
    fn join(&mut self, c: &str, sight: &BTreeMap<&str, usize>, now: u64) -> Vec<Action> {
        if sight.contains_key(c) {
            self.lost_join = None;
            return Vec::new();
        }
        let (since, given_up) = match &self.lost_join {
            Some((j, since, given_up)) if j == c => (*since, *given_up),
            _ => {
                self.lost_join = Some((c.to_string(), now, false));
                (now, false)
            }
        };
        if given_up || now.saturating_sub(since) < self.cfg.merge_delay_ms {
            return Vec::new();
        }
        self.lost_join = Some((c.to_string(), since, true));
        match best(sight) {
            Some(w) => vec![Action::Join { cluster: w.to_string() }],
            None => vec![Action::StopJoining],
        }
    }

    /// Rule 3.
    fn follow(&mut self, sight: &BTreeMap<&str, usize>) -> Vec<Action> {
        match best(sight) {
            Some(w) if self.following.as_deref() != Some(w) => {
                self.following = Some(w.to_string());
                vec![Action::Follow { cluster: w.to_string() }]
            }
            _ => Vec::new(),
        }
    }

    /// Rules 4 to 7, for a member of cluster `a`.
    fn member(&mut self, me: &Me, a: &str, peers: &[&PeerView], sight: &BTreeMap<&str, usize>, now: u64) -> Vec<Action> {
        let leave = [self.merge(me, a, peers, sight, now), self.leaderless(me, a, sight, now), self.removed(me, a, peers, now)];
        if let Some((from, at)) = &self.left
            && from == a
            && now < at.saturating_add(self.cfg.rejoin_after_ms)
        {
            return Vec::new();
        }
        if let Some(l) = leave.into_iter().flatten().next() {
            self.left = Some((a.to_string(), now));
            return vec![l];
        }
        if me.is_leader && !me.changing_membership { self.lead(me, a, peers, now) } else { Vec::new() }
    }

    /// Rule 4.
    fn merge(&mut self, me: &Me, a: &str, peers: &[&PeerView], sight: &BTreeMap<&str, usize>, now: u64) -> Option<Action> {
        // A's count as observers in B see it (the best report), mine included in the pick.
        let members = peers.iter().filter(|p| p.alive && p.status.role == Role::Server).map(|p| &p.status);
        let mine = reports(members.chain([&me.status])).get(a).copied().unwrap_or_else(|| distinct(&me.status.voters));
        if mine == 0 {
            self.winning_since.clear();
            return None; // I do not know my own cluster's voters yet
        }
        let beating: BTreeMap<&str, usize> = sight.iter().filter(|(b, n)| **b != a && winner((a, mine), (b, **n)) == **b).map(|(b, n)| (*b, *n)).collect();
        self.winning_since.retain(|b, _| beating.contains_key(b.as_str()));
        for b in beating.keys() {
            self.winning_since.entry(b.to_string()).or_insert(now);
        }
        let ripe: BTreeMap<&str, usize> =
            beating.into_iter().filter(|(b, _)| self.winning_since.get(*b).is_some_and(|t| now.saturating_sub(*t) >= self.cfg.merge_delay_ms)).collect();
        let b = best(&ripe)?;
        let theirs = ripe[b];
        let reason = if theirs > mine {
            format!("merge: cluster {b} has more voters ({theirs} against {mine} in {a})")
        } else {
            format!("merge: cluster {b} has as many voters ({theirs}) as {a} and a lower id")
        };
        Some(Action::Leave { for_cluster: b.to_string(), reason })
    }

    /// Rule 5.
    fn leaderless(&mut self, me: &Me, a: &str, sight: &BTreeMap<&str, usize>, now: u64) -> Option<Action> {
        if me.is_leader || me.status.leader.is_some() || sight.contains_key(a) {
            self.leaderless_since = None;
            return None;
        }
        let since = *self.leaderless_since.get_or_insert(now);
        let without = now.saturating_sub(since);
        if without < self.cfg.promote_after_ms {
            return None;
        }
        let ripe: BTreeMap<&str, usize> = sight
            .iter()
            .filter(|(b, _)| **b != a && self.in_sight_since.get(**b).is_some_and(|t| now.saturating_sub(*t) >= self.cfg.merge_delay_ms))
            .map(|(b, n)| (*b, *n))
            .collect();
        let b = best(&ripe)?;
        Some(Action::Leave { for_cluster: b.to_string(), reason: format!("cluster {a} has had no leader for {without} ms and cluster {b} is in sight") })
    }

    /// Rule 6.
    fn removed(&mut self, me: &Me, a: &str, peers: &[&PeerView], now: u64) -> Option<Action> {
        let id = me.status.node;
        let leader = peers
            .iter()
            .filter(|p| {
                let s = &p.status;
                p.alive && s.role == Role::Server && s.cluster.as_deref() == Some(a) && s.leader == Some(s.node) && s.term >= me.status.term
            })
            .max_by_key(|p| (p.status.term, Reverse(p.status.node)));
        let out = !me.is_leader && leader.is_some_and(|p| !p.status.voters.contains(&id) && !p.status.learners.contains(&id));
        if !out {
            self.removed_since = None;
            return None;
        }
        let since = *self.removed_since.get_or_insert(now);
        (now.saturating_sub(since) >= self.cfg.rejoin_after_ms)
            .then(|| Action::Leave { for_cluster: a.to_string(), reason: "removed from the cluster's membership".to_string() })
    }

    /// Rule 7.
    fn lead(&mut self, me: &Me, a: &str, peers: &[&PeerView], now: u64) -> Vec<Action> {
        let id = me.status.node;
        let cfg = &self.cfg;
        let view: BTreeMap<NodeId, &PeerView> = peers.iter().map(|p| (p.status.node, *p)).collect();
        let voters: BTreeSet<NodeId> = me.status.voters.iter().copied().collect();
        let learners: BTreeSet<NodeId> = me.status.learners.iter().copied().filter(|n| !voters.contains(n)).collect();
        self.unknown_since.retain(|n, _| voters.contains(n) || learners.contains(n));
        for n in voters.iter().chain(&learners) {
            if *n != id && !view.contains_key(n) {
                self.unknown_since.entry(*n).or_insert(now);
            }
        }
        let unknown = &self.unknown_since;
        // How long a member has been dead; None when alive (I always am).
        let dead_for = |n: NodeId| -> Option<u64> {
            match view.get(&n) {
                _ if n == id => None,
                Some(p) if p.alive => None,
                Some(p) => Some(now.saturating_sub(p.since_ms)),
                None => Some(now.saturating_sub(unknown.get(&n).copied().unwrap_or(now))),
            }
        };
        let long_dead = |n: NodeId| dead_for(n).is_some_and(|d| d >= cfg.promote_after_ms);
        let spare: Vec<NodeId> = learners
            .iter()
            .copied()
            .filter(|n| view.get(n).is_some_and(|p| p.alive && p.status.role == Role::Server && p.status.cluster.as_deref() == Some(a)))
            .collect();
        let eligible = voters.iter().filter(|v| !long_dead(**v)).count() + spare.len();
        let target = target_voters(eligible, cfg.max_voters);
        let change: Option<BTreeSet<NodeId>> = if voters.len() < target {
            Some(voters.iter().copied().chain(spare.iter().copied().take(target - voters.len())).collect())
        } else {
            let gone = voters.iter().copied().filter(|v| long_dead(*v)).max_by_key(|v| (dead_for(*v), Reverse(*v)));
            match (gone, spare.first()) {
                (Some(g), Some(l)) => Some(voters.iter().copied().filter(|v| *v != g).chain([*l]).collect()),
                _ => None,
            }
        };
        let majority = |set: &BTreeSet<NodeId>| 2 * set.iter().filter(|n| dead_for(**n).is_none()).count() > set.len();
        if let Some(new) = change
            && majority(&voters)
            && majority(&new)
        {
            return vec![Action::SetVoters { voters: new.into_iter().collect() }];
        }

        let room = cfg.max_learners.saturating_sub(learners.len());
        let adds: Vec<Action> = peers
            .iter()
            .filter(|p| {
                let s = &p.status;
                p.alive
                    && s.role == Role::Server
                    && s.cluster.is_none()
                    && s.joining.as_deref() == Some(a)
                    && !voters.contains(&s.node)
                    && !learners.contains(&s.node)
            })
            .take(room)
            .map(|p| Action::AddLearner { node: p.status.node, peer: p.status.peer.clone() })
            .collect();
        if !adds.is_empty() {
            return adds;
        }

        let forget: Vec<NodeId> = learners.iter().copied().filter(|n| dead_for(*n).is_some_and(|d| d >= cfg.forget_learner_after_ms)).collect();
        if forget.is_empty() { Vec::new() } else { vec![Action::RemoveLearners { nodes: forget }] }
    }
}

/// Clusters in sight (an alive server peer reports being in one, with a leader) and their
/// voter counts, each taken from the report with the highest term, the leader's own first.
fn in_sight<'p>(peers: &[&'p PeerView]) -> BTreeMap<&'p str, usize> {
    reports(peers.iter().filter(|p| p.alive && p.status.role == Role::Server).map(|p| &p.status))
}

/// Per cluster with a leader, the voter count of the best report: highest term, then the
/// leader's own, then the lowest node (so every observer picks the same one).
fn reports<'s>(statuses: impl Iterator<Item = &'s Status>) -> BTreeMap<&'s str, usize> {
    type Report = ((u64, bool, Reverse<NodeId>), usize);
    let mut seen: BTreeMap<&str, Report> = BTreeMap::new();
    for s in statuses {
        let (Some(c), Some(leader)) = (s.cluster.as_deref(), s.leader) else { continue };
        let report = ((s.term, leader == s.node, Reverse(s.node)), distinct(&s.voters));
        seen.entry(c).and_modify(|r| *r = (*r).max(report)).or_insert(report);
    }
    seen.into_iter().map(|(c, (_, n))| (c, n)).collect()
}

/// The winner among clusters (more voters, then lower id: a total order, so any fold works).
fn best<'a>(clusters: &BTreeMap<&'a str, usize>) -> Option<&'a str> {
    clusters.iter().map(|(c, n)| (*c, *n)).reduce(|x, y| if winner(x, y) == x.0 { x } else { y }).map(|(c, _)| c)
}

fn distinct(ids: &[NodeId]) -> usize {
    ids.iter().collect::<BTreeSet<_>>().len()
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;

/// The role a node takes from its `claims.role` setting: `auto` makes a machine with a
/// battery (a laptop, which sleeps and roams) a client and everything else a server, so a
/// desktop and a laptop keep working on the desktop when the laptop sleeps.
pub fn role_for(setting: crate::config::mcp::RoleSetting, has_battery: bool) -> Role {
    use crate::config::mcp::RoleSetting;
    match setting {
        RoleSetting::Server => Role::Server,
        RoleSetting::Client => Role::Client,
        RoleSetting::Auto if has_battery => Role::Client,
        RoleSetting::Auto => Role::Server,
    }
}
