//! Probing: direct and indirect probes (SWIM's failure detector), their answers and the round robin.

use super::{Action, Membership, Outstanding, Phase, State};
use crate::wire::Rumor;
use std::collections::BTreeSet;

impl Membership {
    /// `peer` acknowledged probe `seq` after `rtt_ms`.
    pub fn handle_ack(&mut self, peer: &str, seq: u64, rtt_ms: f64, now: u64) {
        if let Some((origin, req, target, _)) = self.relays.remove(&seq) {
            self.actions.push_back(Action::ProbeReply { origin, req, target, alive: true });
        }
        if self.outstanding.get(&seq).is_some_and(|o| o.target == peer) {
            self.outstanding.remove(&seq);
        }
        let Some(m) = self.members.get_mut(peer) else { return };
        m.last_seen_ms = m.last_seen_ms.max(now);
        m.rtt_ms = Some(rtt_ms);
        self.alive_evidence(peer, now);
    }

    /// Probe `seq` to `peer` failed at once (the stream could not be opened or was reset).
    pub fn handle_probe_failed(&mut self, peer: &str, seq: u64, now: u64) {
        if let Some((origin, req, target, _)) = self.relays.remove(&seq) {
            self.actions.push_back(Action::ProbeReply { origin, req, target, alive: false });
        }
        if self.outstanding.get(&seq).is_some_and(|o| o.target == peer && matches!(o.phase, Phase::Direct)) {
            self.direct_missed(seq, now);
        }
    }

    /// `origin` asks us to probe `target` (request id `req`).
    pub fn handle_probe_request(&mut self, origin: &str, req: u64, target: &str, now: u64) {
        let reachable = self.members.get(target).is_some_and(|m| m.connected && matches!(m.state, State::Alive | State::Suspect));
        if !reachable {
            self.actions.push_back(Action::ProbeReply { origin: origin.to_string(), req, target: target.to_string(), alive: false });
            return;
        }
        let seq = self.seq();
        self.relays.insert(seq, (origin.to_string(), req, target.to_string(), now + self.cfg.probe_timeout_ms));
        self.actions.push_back(Action::Probe { peer: target.to_string(), seq });
    }

    /// `via`'s answer to our indirect probe `seq` about `target`.
    pub fn handle_probe_reply(&mut self, via: &str, seq: u64, target: &str, alive: bool, now: u64) {
        let Some(o) = self.outstanding.get_mut(&seq) else { return };
        if o.target != target {
            return;
        }
        if alive {
            self.outstanding.remove(&seq);
            self.alive_evidence(target, now);
            return;
        }
        if let Phase::Indirect { asked, said_no } = &mut o.phase {
            said_no.insert(via.to_string());
            if said_no.len() >= *asked {
                let confirmations = said_no.len();
                self.outstanding.remove(&seq);
                self.suspect(target, confirmations, now);
            }
        }
    }

    /// Fresh evidence that `peer` is alive.
    fn alive_evidence(&mut self, peer: &str, now: u64) {
        let Some(m) = self.members.get(peer) else { return };
        if m.state == State::Suspect && m.connected {
            let inc = m.incarnation;
            self.set(peer, State::Alive, now);
            self.actions.push_back(Action::Broadcast { peer: peer.to_string(), incarnation: inc, rumor: Rumor::Alive });
        }
    }

    fn seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A direct probe went unanswered: ask others, or suspect if there is nobody to ask.
    pub(super) fn direct_missed(&mut self, seq: u64, now: u64) {
        let Some(o) = self.outstanding.get(&seq) else { return };
        let target = o.target.clone();
        if self.members.get(&target).is_none_or(|m| m.state != State::Alive) {
            // Already suspected (or gone): the suspicion timer decides, not another round of asking.
            self.outstanding.remove(&seq);
            if let Some(m) = self.members.get_mut(&target) {
                m.own_misses += 1;
            }
            return;
        }
        let vias = self.pick_vias(&target);
        if vias.is_empty() {
            self.outstanding.remove(&seq);
            self.suspect(&target, 0, now);
            return;
        }
        let deadline = now + self.cfg.indirect_timeout_ms;
        if let Some(o) = self.outstanding.get_mut(&seq) {
            o.phase = Phase::Indirect { asked: vias.len(), said_no: BTreeSet::new() };
            o.deadline = deadline;
        }
        for via in vias {
            self.actions.push_back(Action::IndirectProbe { via, target: target.clone(), seq });
        }
    }

    /// Sends a direct probe to `peer` and tracks it.
    pub(super) fn send_probe(&mut self, peer: &str, now: u64) {
        let seq = self.seq();
        self.outstanding.insert(seq, Outstanding { target: peer.to_string(), deadline: now + self.cfg.probe_timeout_ms, phase: Phase::Direct });
        if let Some(m) = self.members.get_mut(peer) {
            m.last_probe_ms = now;
        }
        self.actions.push_back(Action::Probe { peer: peer.to_string(), seq });
    }

    /// Starts the next probe of the round robin.
    pub(super) fn start_probe(&mut self, now: u64) {
        let candidates: Vec<String> =
            self.members.iter().filter(|(_, m)| m.connected && matches!(m.state, State::Alive | State::Suspect)).map(|(p, _)| p.clone()).collect();
        if candidates.is_empty() {
            return;
        }
        if self.probe_idx >= self.probe_order.len() || self.probe_order.iter().any(|p| !candidates.contains(p)) || candidates.len() != self.probe_order.len() {
            // New round: a shuffle seeded by our name and the round number (SWIM's
            // randomised round robin), so nodes do not probe the same peer at once and
            // every peer is probed once per round.
            self.probe_round += 1;
            let mut order = candidates;
            let mut x = fnv1a(self.me.as_bytes()) ^ self.probe_round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for i in (1..order.len()).rev() {
                x = splitmix64(x);
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            self.probe_order = order;
            self.probe_idx = 0;
        }
        let target = self.probe_order[self.probe_idx].clone();
        self.probe_idx += 1;
        if self.outstanding.values().any(|o| o.target == target) {
            return; // still probing it
        }
        self.send_probe(&target, now);
    }

    /// Up to `indirect_probes` alive, connected peers other than `target`, chosen
    /// deterministically (spread by the target's name so different targets use different vias).
    fn pick_vias(&self, target: &str) -> Vec<String> {
        let mut c: Vec<&String> = self.members.iter().filter(|(p, m)| p.as_str() != target && m.connected && m.state == State::Alive).map(|(p, _)| p).collect();
        if c.is_empty() {
            return Vec::new();
        }
        let shift = target.bytes().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize)) % c.len();
        c.rotate_left(shift);
        c.into_iter().take(self.cfg.indirect_probes).cloned().collect()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
