//! When a follower starts an election itself, without waiting for its election timer.
//!
//! A follower of openraft 0.9 whose leader goes silent waits the leader lease (its
//! `election_timeout_max`) plus a random election timeout before it stands, and every
//! voter refuses to vote while its own lease on the last leader lasts. On a LAN with the
//! default timings that is 2.25–3 s of no leader after a leader dies, and every claim
//! the dead leader's node held waits that long to be handed on.
//!
//! When the mesh *proves* the leader's process gone (its connection was reset and a redial
//! refused: the host answered and nothing listens), nothing is gained by the random wait:
//! one voter stands as soon as every voter's lease on the dead leader has run out. Its last
//! heartbeat left before the crash, so that is at most one lease after the crash was seen
//! (plus [`ELECT_MARGIN_MS`] for a heartbeat still on the wire). Standing earlier would only
//! be refused (the leases still hold) and cost a term.
//!
//! Only the live voter with the lowest id stands, once per crash (the caller remembers the
//! term it stood for), so the voters that see the crash do not split the vote between them.
//! Where views differ (two voters each think they are the lowest live one), the split vote
//! ends on Raft's own randomised timers, as it would have anyway. A leader that is merely
//! unreachable (cut off, paused) is never `crashed`: its followers wait for their timers,
//! and its lease may still be in use by a partitioned side that cannot win anyway.

/// Slack after the lease for a heartbeat that was on the wire when the leader died, and
/// for timers firing a little apart on two nodes.
pub const ELECT_MARGIN_MS: u64 = 100;

/// What a follower knows when its leader is proven crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashedLeader<'a> {
    /// This node.
    pub me: u64,
    /// The leader of this node's current term, proven crashed.
    pub leader: u64,
    /// Voters of the current membership.
    pub voters: &'a [u64],
    /// Voters (other than this node) the mesh shows alive now.
    pub alive: &'a [u64],
    /// When this node first saw the leader crashed (its clock, ms).
    pub seen_ms: u64,
    /// The leader lease of openraft 0.9: `election_timeout_max`, ms.
    pub lease_ms: u64,
}

/// When this node should start an election, or `None` when another voter should (or
/// this node is no voter, or the crashed node does not lead).
pub fn elect_at(c: &CrashedLeader<'_>) -> Option<u64> {
    if c.leader == c.me || !c.voters.contains(&c.me) || !c.voters.contains(&c.leader) {
        return None;
    }
    let lowest = c.voters.iter().copied().filter(|v| *v != c.leader && (*v == c.me || c.alive.contains(v))).min()?;
    (lowest == c.me).then(|| c.seen_ms.saturating_add(c.lease_ms).saturating_add(ELECT_MARGIN_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(me: u64, leader: u64, voters: &[u64], alive: &[u64]) -> Option<u64> {
        elect_at(&CrashedLeader { me, leader, voters, alive, seen_ms: 10_000, lease_ms: 1500 })
    }

    #[test]
    fn the_lowest_live_voter_stands_once_the_leases_on_the_dead_leader_ran_out() {
        assert_eq!(at(2, 1, &[1, 2, 3], &[3]), Some(10_000 + 1500 + ELECT_MARGIN_MS));
        assert_eq!(at(3, 1, &[1, 2, 3], &[2]), None, "voter 2 stands, not 3");
    }

    #[test]
    fn a_lower_voter_that_is_not_alive_does_not_hold_the_election_back() {
        assert!(at(3, 1, &[1, 2, 3], &[]).is_some(), "2 is not alive: 3 is the lowest live voter");
        assert!(at(4, 1, &[1, 2, 3, 4, 5], &[5]).is_some());
        assert!(at(4, 1, &[1, 2, 3, 4, 5], &[2, 5]).is_none());
    }

    #[test]
    fn a_learner_or_the_crashed_node_itself_never_stands() {
        assert_eq!(at(4, 1, &[1, 2, 3], &[2, 3]), None, "4 is a learner");
        assert_eq!(at(1, 1, &[1, 2, 3], &[2, 3]), None);
        assert_eq!(at(2, 9, &[1, 2, 3], &[1, 3]), None, "9 is no voter: it cannot be the leader of this membership");
    }
}
