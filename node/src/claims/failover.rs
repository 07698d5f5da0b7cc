//! A follower whose leader is proven crashed stands for election as soon as the voters'
//! leases on that leader have run out, instead of waiting for its random election timer
//! on top (the decision, and why it is safe, is in
//! `craftmesh_protocol::claims::failover`). The new leader then hands the crashed node's
//! bound claims on at once ([`super::leader`]), so a claim held by the leader's own node
//! moves about one lease after the crash rather than two to three.

use super::actor::Actor;
use super::types::NodeId;
use craftmesh_protocol::claims::failover::{CrashedLeader, elect_at};

impl Actor {
    /// When this node should stand for election because its leader is proven crashed
    /// (boot ms), or `None`.
    pub fn next_election_ms(&self) -> Option<u64> {
        self.file.cluster.as_ref()?;
        self.instance.as_ref()?;
        let m = self.metrics.as_ref()?.borrow();
        if m.state != openraft::ServerState::Follower || self.stood_in_term == Some(m.current_term) {
            return None;
        }
        let leader = m.current_leader?;
        let membership = m.membership_config.membership();
        let peer_of = |id: &NodeId| membership.get_node(id).map(|n| n.peer.as_str());
        let p = self.peers.get(peer_of(&leader)?)?;
        if p.live.alive || !p.live.crashed {
            return None;
        }
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let alive: Vec<NodeId> = voters.iter().copied().filter(|v| peer_of(v).and_then(|peer| self.peers.get(peer)).is_some_and(|p| p.live.alive)).collect();
        elect_at(&CrashedLeader {
            me: self.me_id,
            leader,
            voters: &voters,
            alive: &alive,
            seen_ms: p.crashed_seen_ms?,
            lease_ms: self.opts.raft.election_max_ms,
        })
    }

    /// Stands for election when [`Actor::next_election_ms`] has come (once per term).
    pub fn stand_if_due(&mut self) {
        let Some(at) = self.next_election_ms() else { return };
        if at > self.clock.now_ms() {
            return;
        }
        let (Some(inst), Some(m)) = (&self.instance, &self.metrics) else { return };
        let (term, leader) = {
            let m = m.borrow();
            (m.current_term, m.current_leader)
        };
        self.stood_in_term = Some(term);
        tracing::info!(term, ?leader, "claims: the leader is proven crashed and the voters' leases on it have run out; standing for election");
        let raft = inst.raft.clone();
        tokio::spawn(async move {
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!(error = %e, "claims: cannot start an election");
            }
        });
    }
}
