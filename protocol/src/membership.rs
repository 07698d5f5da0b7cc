//! Membership: alive / suspect / dead / left, decided from observations fed in with `now`.
//!
//! SWIM and Lifeguard ideas, shaped for a LAN mesh of long-lived connections:
//! - a connection reset followed by a refused redial is proof of a crash: dead at once;
//! - missed pings make a peer *suspect*; it becomes dead only when the suspicion is not
//!   refuted before a deadline that shrinks as other peers confirm it (Lifeguard);
//! - before suspecting on our own evidence we ask other peers to check (indirect probes),
//!   so a lossy link between two nodes does not kill a healthy third party's view;
//! - a node that hears it is suspected refutes with a higher incarnation.
//!
//! Nothing here reads a clock: every input carries `now` in milliseconds.

use crate::wire::Rumor;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Timing knobs; the defaults meet "crash ≤ 100 ms, cut off ≤ 1.5 s, no false deaths at 10% loss".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Every period this node probes one peer (round robin), so the whole mesh probes
    /// each node about once per period whatever its size (SWIM's constant load).
    pub probe_period_ms: u64,
    /// A direct probe not acknowledged within this is a miss.
    pub probe_timeout_ms: u64,
    /// Indirect probes (through other peers) get this long to answer.
    pub indirect_timeout_ms: u64,
    /// Suspicion deadline with no confirmations.
    pub suspicion_max_ms: u64,
    /// Suspicion deadline with `confirmations` or more independent confirmations.
    pub suspicion_min_ms: u64,
    pub confirmations: u32,
    /// How long a redial may take before the peer is suspected.
    pub redial_timeout_ms: u64,
    /// After a reset, a redial that failed without a refusal is tried again this soon
    /// (until `redial_timeout_ms`): a process being killed still has its listening socket
    /// for a moment, so the first redial may be taken in and then reset instead of refused.
    pub redial_retry_ms: u64,
    /// How often dead peers are redialled (they come back when a link returns).
    pub dead_redial_every_ms: u64,
    /// Dead or left peers are forgotten after this long.
    pub forget_after_ms: u64,
    /// Indirect probes sent per suspicion.
    pub indirect_probes: usize,
    /// Rumors of suspicion are ignored for peers we heard from within this.
    pub alive_evidence_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_period_ms: 300,
            probe_timeout_ms: 250,
            indirect_timeout_ms: 450,
            suspicion_max_ms: 1200,
            suspicion_min_ms: 300,
            confirmations: 3,
            redial_timeout_ms: 400,
            redial_retry_ms: 50,
            dead_redial_every_ms: 1000,
            forget_after_ms: 10 * 60_000,
            indirect_probes: 3,
            alive_evidence_ms: 500,
        }
    }
}

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// What we know of one peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub state: State,
    pub incarnation: u64,
    pub connected: bool,
    pub last_seen_ms: u64,
    pub rtt_ms: Option<f64>,
    pub state_since_ms: u64,
    /// Dead and a dial was refused: the host answered and nothing listens, so the process
    /// is gone (not merely unreachable). Claims bound to such a node may be handed on at
    /// once; a partition never sets it (a cut-off or frozen host refuses nothing).
    pub crashed: bool,
    #[serde(skip)]
    suspicion_deadline: Option<u64>,
    #[serde(skip)]
    confirmations: BTreeSet<String>,
    #[serde(skip)]
    redial_deadline: Option<u64>,
    /// A reset was seen and a redial is pending: a refusal now proves a crash.
    #[serde(skip)]
    reset_pending: bool,
    #[serde(skip)]
    next_redial: Option<u64>,
    /// When to redial again after an inconclusive failure of the redial after a reset.
    #[serde(skip)]
    redial_retry: Option<u64>,
    /// Our own direct probes that failed while the peer was suspect.
    #[serde(skip)]
    own_misses: u32,
    /// When we last sent this peer a direct probe.
    #[serde(skip)]
    last_probe_ms: u64,
}

impl Member {
    fn new(now: u64) -> Member {
        Member {
            state: State::Alive,
            incarnation: 0,
            connected: false,
            last_seen_ms: now,
            rtt_ms: None,
            state_since_ms: now,
            crashed: false,
            suspicion_deadline: None,
            confirmations: BTreeSet::new(),
            redial_deadline: None,
            reset_pending: false,
            next_redial: None,
            redial_retry: None,
            own_misses: 0,
            last_probe_ms: 0,
        }
    }
}

/// Largest incarnation a rumor may carry (see [`Membership::handle_rumor`]).
pub const MAX_INCARNATION: u64 = 1 << 32;

/// Why a rumor did not count. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RumorRejected {
    #[error("the raiser is not a live member")]
    NotALiveMember,
    #[error("incarnation {0} is out of range")]
    Incarnation(u64),
}

/// Something the app must know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Changed {
        peer: String,
        from: Option<State>,
        to: State,
    },
    /// A peer already dead (by suspicion or a rumor) refused a dial: now proven crashed.
    Crashed {
        peer: String,
    },
    Forgotten {
        peer: String,
    },
}

/// Something the node must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a probe (ping) to `peer`; answer with `handle_ack(peer, seq, ..)`.
    Probe { peer: String, seq: u64 },
    /// Answer `origin`'s indirect probe request `req` about `target`.
    ProbeReply { origin: String, req: u64, target: String, alive: bool },
    /// Dial the peer again (its last known addresses).
    Redial { peer: String },
    /// Ask `via` to probe `target`; its answer comes to `handle_probe_reply(via, seq, ..)`.
    IndirectProbe { via: String, target: String, seq: u64 },
    /// Tell the mesh our view of `peer`.
    Broadcast { peer: String, incarnation: u64, rumor: Rumor },
}

/// The membership state machine of one node.
#[derive(Debug, Clone)]
pub struct Membership {
    me: String,
    my_incarnation: u64,
    cfg: Config,
    members: BTreeMap<String, Member>,
    events: VecDeque<Event>,
    actions: VecDeque<Action>,
    /// Our probes in flight, by sequence number.
    outstanding: BTreeMap<u64, Outstanding>,
    /// Probes we send on behalf of others: our seq → (origin, their request id, target, deadline).
    relays: BTreeMap<u64, (String, u64, String, u64)>,
    next_seq: u64,
    next_probe_at: u64,
    probe_order: Vec<String>,
    probe_idx: usize,
    probe_round: u64,
}

#[derive(Debug, Clone)]
struct Outstanding {
    target: String,
    deadline: u64,
    phase: Phase,
}

#[derive(Debug, Clone)]
enum Phase {
    Direct,
    Indirect { asked: usize, said_no: BTreeSet<String> },
}

impl Membership {
    pub fn new(me: impl Into<String>, cfg: Config) -> Self {
        Membership {
            me: me.into(),
            my_incarnation: 0,
            cfg,
            members: BTreeMap::new(),
            events: VecDeque::new(),
            actions: VecDeque::new(),
            outstanding: BTreeMap::new(),
            relays: BTreeMap::new(),
            next_seq: 1,
            next_probe_at: 0,
            probe_order: Vec::new(),
            probe_idx: 0,
            probe_round: 0,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.my_incarnation
    }

    pub fn get(&self, peer: &str) -> Option<&Member> {
        self.members.get(peer)
    }

    pub fn members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter()
    }

    fn set(&mut self, peer: &str, to: State, now: u64) {
        let Some(m) = self.members.get_mut(peer) else { return };
        if m.state == to {
            return;
        }
        let from = m.state;
        m.state = to;
        m.state_since_ms = now;
        m.crashed = false;
        match to {
            State::Alive => {
                m.own_misses = 0;
                m.suspicion_deadline = None;
                m.confirmations.clear();
                m.next_redial = None;
            }
            State::Suspect => {}
            State::Dead | State::Left => {
                m.suspicion_deadline = None;
                m.redial_deadline = None;
                m.reset_pending = false;
                m.redial_retry = None;
                m.next_redial = (to == State::Dead).then_some(now + self.cfg.dead_redial_every_ms);
            }
        }
        self.events.push_back(Event::Changed { peer: peer.to_string(), from: Some(from), to });
    }

    fn entry(&mut self, peer: &str, now: u64) -> &mut Member {
        if !self.members.contains_key(peer) {
            self.members.insert(peer.to_string(), Member::new(now));
            self.events.push_back(Event::Changed { peer: peer.to_string(), from: None, to: State::Alive });
        }
        self.members.get_mut(peer).expect("inserted above")
    }

    /// A connection to `peer` is established.
    ///
    /// A connection alone does not undo a leave: the leaving process may still accept
    /// connections while it winds down (a dial started by a late mDNS answer lands there).
    /// A record newer than the leave does, see [`Membership::handle_rejoined`].
    pub fn handle_connected(&mut self, peer: &str, now: u64) {
        if peer == self.me {
            return;
        }
        let m = self.entry(peer, now);
        m.connected = true;
        m.last_seen_ms = now;
        m.redial_deadline = None;
        m.reset_pending = false;
        m.redial_retry = None;
        if m.state != State::Left {
            self.set(peer, State::Alive, now);
        }
    }

    /// A record of `peer` newer than its leave was accepted: a new run of that node.
    pub fn handle_rejoined(&mut self, peer: &str, now: u64) {
        let redial_timeout = self.cfg.redial_timeout_ms;
        let Some(m) = self.members.get_mut(peer) else { return };
        if m.state != State::Left {
            return;
        }
        m.last_seen_ms = now;
        if !m.connected {
            // Heard of through others: it must answer a dial like any member.
            m.redial_deadline = Some(now + redial_timeout);
        }
        self.set(peer, State::Alive, now);
    }

    /// The last connection to `peer` closed; `reset` when it was reset or hit EOF without a leave.
    pub fn handle_disconnected(&mut self, peer: &str, reset: bool, now: u64) {
        let redial_timeout = self.cfg.redial_timeout_ms;
        let Some(m) = self.members.get_mut(peer) else { return };
        m.connected = false;
        if matches!(m.state, State::Dead | State::Left) {
            return;
        }
        m.reset_pending = reset;
        m.redial_deadline = Some(now + redial_timeout);
        self.actions.push_back(Action::Redial { peer: peer.to_string() });
    }

    /// A dial to `peer` failed (ours or any other dial to it); `refused` when the host
    /// answered with a refusal (RST) on every address.
    ///
    /// A refusal proves the process gone whenever it comes, also after the peer was judged
    /// dead on other evidence. A failure without one is no proof either way: right after a
    /// reset it is retried until the redial deadline (the dying process's listener may have
    /// taken the dial in and reset it); otherwise the peer is suspected.
    pub fn handle_dial_failed(&mut self, peer: &str, refused: bool, now: u64) {
        let retry_at = now + self.cfg.redial_retry_ms;
        let Some(m) = self.members.get_mut(peer) else { return };
        if m.connected || m.state == State::Left {
            return;
        }
        if m.state == State::Dead {
            if refused && !m.crashed {
                m.crashed = true;
                self.events.push_back(Event::Crashed { peer: peer.to_string() });
            }
            return;
        }
        if !refused && m.reset_pending && m.redial_deadline.is_some_and(|d| retry_at < d) {
            m.redial_retry = Some(retry_at);
            return;
        }
        if refused {
            // The host is up and nothing listens: the process is gone.
            self.set(peer, State::Dead, now);
            if let Some(m) = self.members.get_mut(peer) {
                m.crashed = true;
            }
            self.actions.push_back(Action::Broadcast { peer: peer.to_string(), incarnation: self.members[peer].incarnation, rumor: Rumor::Dead });
        } else {
            self.suspect(peer, 0, now);
        }
    }

    /// Any sign of life from `peer` other than a probe ack (a message, a record).
    pub fn handle_heard_from(&mut self, peer: &str, now: u64) {
        if let Some(m) = self.members.get_mut(peer) {
            m.last_seen_ms = m.last_seen_ms.max(now);
        }
    }

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
    fn direct_missed(&mut self, seq: u64, now: u64) {
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
    fn send_probe(&mut self, peer: &str, now: u64) {
        let seq = self.seq();
        self.outstanding.insert(seq, Outstanding { target: peer.to_string(), deadline: now + self.cfg.probe_timeout_ms, phase: Phase::Direct });
        if let Some(m) = self.members.get_mut(peer) {
            m.last_probe_ms = now;
        }
        self.actions.push_back(Action::Probe { peer: peer.to_string(), seq });
    }

    /// Starts the next probe of the round robin.
    fn start_probe(&mut self, now: u64) {
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

    /// A rumor raised by `from` about `peer` (its signature checked by the caller). Counts
    /// only when `from` is itself a live member: a rumor from a stranger, a dead or a
    /// suspected member is dropped, and the same member repeating a rumor adds nothing
    /// (confirmations are a set of distinct members). Incarnations above
    /// [`MAX_INCARNATION`] are rejected: no honest node gets there (one step per
    /// refutation), and one near `u64::MAX` would make every later refutation overflow.
    pub fn handle_rumor(&mut self, from: &str, peer: &str, incarnation: u64, rumor: Rumor, now: u64) -> Result<(), RumorRejected> {
        if incarnation > MAX_INCARNATION {
            return Err(RumorRejected::Incarnation(incarnation));
        }
        if from != peer && self.members.get(from).is_none_or(|m| m.state != State::Alive) {
            return Err(RumorRejected::NotALiveMember);
        }
        if peer == self.me {
            if matches!(rumor, Rumor::Suspect | Rumor::Dead) && incarnation >= self.my_incarnation {
                self.my_incarnation = incarnation + 1;
                self.actions.push_back(Action::Broadcast { peer: self.me.clone(), incarnation: self.my_incarnation, rumor: Rumor::Alive });
            }
            return Ok(());
        }
        if from == peer && rumor != Rumor::Alive {
            return Err(RumorRejected::NotALiveMember);
        }
        let Some(m) = self.members.get_mut(peer) else { return Ok(()) };
        match rumor {
            Rumor::Alive => {
                if incarnation > m.incarnation {
                    m.incarnation = incarnation;
                    if m.state == State::Suspect {
                        self.set(peer, State::Alive, now);
                    }
                }
            }
            Rumor::Suspect | Rumor::Dead => {
                if incarnation < m.incarnation {
                    return Ok(());
                }
                let fresh = m.connected && now.saturating_sub(m.last_seen_ms) <= self.cfg.alive_evidence_ms;
                match (m.state, rumor) {
                    (State::Suspect, Rumor::Dead) if m.own_misses > 0 => {
                        // Our own probes failed too: agree now.
                        self.set(peer, State::Dead, now);
                    }
                    (State::Suspect, _) => {
                        if !m.confirmations.insert(from.to_string()) {
                            return Ok(()); // the same member again: not a new confirmation
                        }
                        let n = if rumor == Rumor::Dead { self.cfg.confirmations } else { m.confirmations.len() as u32 };
                        let deadline = m.state_since_ms + suspicion_timeout(&self.cfg, n);
                        m.suspicion_deadline = Some(m.suspicion_deadline.map_or(deadline, |d| d.min(deadline)));
                    }
                    (State::Alive, _) if !fresh => {
                        // No fresh evidence of our own: echo the suspicion (without
                        // broadcasting it) and check for ourselves.
                        let n = if rumor == Rumor::Dead { self.cfg.confirmations as usize } else { 1 };
                        self.suspect_with(peer, n, now, false);
                        if let Some(m) = self.members.get_mut(peer) {
                            m.confirmations.insert(from.to_string());
                        }
                        if self.members.get(peer).is_some_and(|m| m.connected) {
                            self.send_probe(peer, now);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// How many distinct members confirmed the suspicion of `peer` so far.
    pub fn confirmations(&self, peer: &str) -> usize {
        self.members.get(peer).map(|m| m.confirmations.len()).unwrap_or(0)
    }

    /// A signed leave from `peer` was verified.
    pub fn handle_leave(&mut self, peer: &str, now: u64) {
        if self.members.contains_key(peer) {
            self.set(peer, State::Left, now);
        }
    }

    /// Advances timers.
    pub fn handle_timeout(&mut self, now: u64) {
        if now >= self.next_probe_at {
            self.next_probe_at = now + self.cfg.probe_period_ms;
            self.start_probe(now);
        }
        let expired: Vec<u64> = self.outstanding.iter().filter(|(_, o)| now >= o.deadline).map(|(s, _)| *s).collect();
        for seq in expired {
            let Some(o) = self.outstanding.get(&seq) else { continue };
            match &o.phase {
                Phase::Direct => self.direct_missed(seq, now),
                Phase::Indirect { said_no, .. } => {
                    let (target, confirmations) = (o.target.clone(), said_no.len());
                    self.outstanding.remove(&seq);
                    self.suspect(&target, confirmations, now);
                }
            }
        }
        // Suspects get a direct probe every third of a period: each ack is a chance to refute.
        let every = (self.cfg.probe_period_ms / 3).max(1);
        let suspects: Vec<String> =
            self.members.iter().filter(|(_, m)| m.state == State::Suspect && m.connected && now >= m.last_probe_ms + every).map(|(p, _)| p.clone()).collect();
        for p in suspects {
            self.send_probe(&p, now);
        }
        let relays: Vec<u64> = self.relays.iter().filter(|(_, r)| now >= r.3).map(|(s, _)| *s).collect();
        for seq in relays {
            if let Some((origin, req, target, _)) = self.relays.remove(&seq) {
                self.actions.push_back(Action::ProbeReply { origin, req, target, alive: false });
            }
        }
        let mut to_suspect = Vec::new();
        let mut to_dead = Vec::new();
        let mut to_forget = Vec::new();
        let mut redial = Vec::new();
        for (p, m) in self.members.iter_mut() {
            if let Some(d) = m.redial_deadline
                && now >= d
                && !m.connected
            {
                m.redial_deadline = None;
                to_suspect.push(p.clone());
            }
            if let Some(d) = m.suspicion_deadline
                && now >= d
                && m.state == State::Suspect
            {
                to_dead.push(p.clone());
            }
            if matches!(m.state, State::Dead | State::Left) && now.saturating_sub(m.state_since_ms) >= self.cfg.forget_after_ms {
                to_forget.push(p.clone());
            }
            if let Some(r) = m.redial_retry
                && now >= r
            {
                m.redial_retry = None;
                if !m.connected {
                    redial.push(p.clone());
                }
            }
            if let Some(r) = m.next_redial
                && now >= r
                && m.state == State::Dead
            {
                m.next_redial = Some(now + self.cfg.dead_redial_every_ms);
                redial.push(p.clone());
            }
        }
        for p in to_suspect {
            self.suspect(&p, 0, now);
        }
        for p in to_dead {
            let inc = self.members[&p].incarnation;
            self.set(&p, State::Dead, now);
            self.actions.push_back(Action::Broadcast { peer: p, incarnation: inc, rumor: Rumor::Dead });
        }
        for p in to_forget {
            self.members.remove(&p);
            self.events.push_back(Event::Forgotten { peer: p });
        }
        for p in redial {
            self.actions.push_back(Action::Redial { peer: p });
        }
    }

    /// The next time `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<u64> {
        let probing = self.members.values().any(|m| m.connected).then_some(self.next_probe_at);
        self.members
            .values()
            .flat_map(|m| {
                let forget = matches!(m.state, State::Dead | State::Left).then_some(m.state_since_ms + self.cfg.forget_after_ms);
                let reprobe = (m.state == State::Suspect && m.connected).then_some(m.last_probe_ms + (self.cfg.probe_period_ms / 3).max(1));
                [m.redial_deadline, m.redial_retry, m.suspicion_deadline, m.next_redial, forget, reprobe]
            })
            .chain(self.outstanding.values().map(|o| Some(o.deadline)))
            .chain(self.relays.values().map(|r| Some(r.3)))
            .chain([probing])
            .flatten()
            .min()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Suspects `peer`, with `confirmations` independent observers already agreeing.
    fn suspect(&mut self, peer: &str, confirmations: usize, now: u64) {
        self.suspect_with(peer, confirmations, now, true);
    }

    /// Suspects `peer`; `broadcast` is false when we only echo someone else's suspicion,
    /// so echoes never count as independent confirmations elsewhere.
    fn suspect_with(&mut self, peer: &str, confirmations: usize, now: u64, broadcast: bool) {
        let Some(m) = self.members.get(peer) else { return };
        if m.state != State::Alive {
            return;
        }
        let inc = m.incarnation;
        self.set(peer, State::Suspect, now);
        let deadline = now + suspicion_timeout(&self.cfg, confirmations as u32);
        if let Some(m) = self.members.get_mut(peer) {
            m.suspicion_deadline = Some(deadline);
        }
        if broadcast {
            self.actions.push_back(Action::Broadcast { peer: peer.to_string(), incarnation: inc, rumor: Rumor::Suspect });
        }
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

/// Lifeguard's suspicion timeout: from `max` with no confirmations down to `min` with `k`.
pub fn suspicion_timeout(cfg: &Config, confirmations: u32) -> u64 {
    if cfg.confirmations == 0 || confirmations >= cfg.confirmations {
        return cfg.suspicion_min_ms;
    }
    let frac = ((confirmations as f64) + 1.0).ln() / ((cfg.confirmations as f64) + 1.0).ln();
    let span = cfg.suspicion_max_ms.saturating_sub(cfg.suspicion_min_ms) as f64;
    cfg.suspicion_max_ms - (span * frac).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Membership) -> (Vec<Event>, Vec<Action>) {
        let mut e = Vec::new();
        let mut a = Vec::new();
        while let Some(x) = m.poll_event() {
            e.push(x);
        }
        while let Some(x) = m.poll_action() {
            a.push(x);
        }
        (e, a)
    }

    fn state(m: &Membership, p: &str) -> State {
        m.get(p).expect("member").state
    }

    /// Runs timers until the next probe of `target` is sent; returns its seq and the time.
    /// Probes of other peers are acknowledged at once.
    fn next_probe_of(m: &mut Membership, target: &str, mut now: u64) -> (u64, u64) {
        for _ in 0..100 {
            m.handle_timeout(now);
            let (_, a) = drain(m);
            for x in a {
                if let Action::Probe { peer, seq } = x {
                    if peer == target {
                        return (seq, now);
                    }
                    m.handle_ack(&peer, seq, 1.0, now);
                }
            }
            now = m.poll_timeout().expect("a timer").max(now + 1);
        }
        panic!("no probe of {target}");
    }

    #[test]
    fn reset_then_refused_redial_is_dead_at_once() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("b", 0);
        drain(&mut m);
        m.handle_disconnected("b", true, 100);
        let (_, a) = drain(&mut m);
        assert_eq!(a, vec![Action::Redial { peer: "b".into() }]);
        m.handle_dial_failed("b", true, 103);
        assert_eq!(state(&m, "b"), State::Dead);
        assert!(m.get("b").is_some_and(|x| x.crashed), "a refused redial proves a crash");
        let (e, _) = drain(&mut m);
        assert!(e.contains(&Event::Changed { peer: "b".into(), from: Some(State::Alive), to: State::Dead }));
        m.handle_connected("b", 2000);
        assert!(m.get("b").is_some_and(|x| x.state == State::Alive && !x.crashed), "alive again is not crashed");
    }

    #[test]
    fn a_redial_that_times_out_is_no_proof_of_a_crash() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("b", 0);
        m.handle_disconnected("b", true, 100);
        m.handle_dial_failed("b", false, 500);
        let mut now = 500;
        while state(&m, "b") != State::Dead && now < 60_000 {
            now += 100;
            m.handle_timeout(now);
            drain(&mut m);
        }
        assert_eq!(state(&m, "b"), State::Dead);
        assert!(m.get("b").is_some_and(|x| !x.crashed), "dead by suspicion (a partition looks the same) is not crashed");
    }

    /// SIGKILL: the peers see the reset while the dying process still has its listening
    /// socket, so the first redial is taken in and reset; the next one is refused.
    #[test]
    fn a_redial_reset_by_a_dying_listener_is_tried_again_and_then_refused() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        drain(&mut m);
        m.handle_disconnected("b", true, 100);
        assert_eq!(drain(&mut m).1, vec![Action::Redial { peer: "b".into() }]);
        m.handle_dial_failed("b", false, 101);
        assert_eq!(state(&m, "b"), State::Alive, "a reset handshake is no reason to suspect yet");
        assert!(drain(&mut m).1.is_empty(), "nothing broadcast");
        assert!(m.poll_timeout().is_some_and(|t| t <= 101 + cfg.redial_retry_ms), "a timer for the retry");
        // A suspicion from another member meanwhile does not stop the retry.
        m.handle_connected("c", 0);
        m.handle_rumor("c", "b", 0, Rumor::Suspect, 110).expect("rumor");
        assert_eq!(state(&m, "b"), State::Suspect);
        drain(&mut m);
        m.handle_timeout(101 + cfg.redial_retry_ms);
        assert!(drain(&mut m).1.contains(&Action::Redial { peer: "b".into() }), "redialled again");
        m.handle_dial_failed("b", true, 160);
        assert_eq!(state(&m, "b"), State::Dead);
        assert!(m.get("b").is_some_and(|x| x.crashed), "the refusal proves the crash");
    }

    /// A host that answers nothing (cut off, frozen) never refuses: however often the
    /// redial after a reset fails, the peer is only suspected, then dead, never crashed.
    #[test]
    fn redials_that_keep_failing_without_a_refusal_end_in_suspicion_not_a_crash() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_disconnected("b", true, 100);
        drain(&mut m);
        // Each redial fails (timed out, reset) 5 ms after it was asked for.
        let (mut now, mut redials, mut fail_at) = (100, 1, Some(105));
        while now < 100 + cfg.redial_timeout_ms {
            now += 1;
            if fail_at == Some(now) {
                fail_at = None;
                m.handle_dial_failed("b", false, now);
            }
            m.handle_timeout(now);
            if drain(&mut m).1.contains(&Action::Redial { peer: "b".into() }) {
                redials += 1;
                fail_at = Some(now + 5);
            }
        }
        assert_eq!(state(&m, "b"), State::Suspect, "suspected at the redial deadline");
        assert!((2..=(cfg.redial_timeout_ms / cfg.redial_retry_ms) as usize).contains(&redials), "bounded retries: {redials}");
        while state(&m, "b") != State::Dead && now < 60_000 {
            now += 10;
            m.handle_timeout(now);
            drain(&mut m);
        }
        assert!(m.get("b").is_some_and(|x| x.state == State::Dead && !x.crashed));
    }

    /// Dead on other evidence first (a rumor, the suspicion timer): a refusal that comes
    /// later still proves the process gone, once; a member that left is never crashed.
    #[test]
    fn a_dead_member_that_refuses_a_dial_is_proven_crashed_once() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_connected("l", 0);
        m.handle_disconnected("b", false, 100);
        m.handle_dial_failed("b", false, 600);
        let mut now = 600;
        while state(&m, "b") != State::Dead {
            now += 10;
            m.handle_timeout(now);
        }
        drain(&mut m);
        assert!(m.get("b").is_some_and(|x| !x.crashed));
        m.handle_dial_failed("b", false, now + 1);
        assert!(m.get("b").is_some_and(|x| !x.crashed), "a failure without a refusal proves nothing");
        m.handle_dial_failed("b", true, now + 1000);
        m.handle_dial_failed("b", true, now + 2000);
        assert!(m.get("b").is_some_and(|x| x.state == State::Dead && x.crashed));
        assert_eq!(drain(&mut m).0, vec![Event::Crashed { peer: "b".into() }], "one event for the app");
        m.handle_leave("l", now);
        m.handle_disconnected("l", false, now);
        m.handle_dial_failed("l", true, now + 10);
        assert!(m.get("l").is_some_and(|x| x.state == State::Left && !x.crashed), "a leave is not a crash");
    }

    #[test]
    fn unanswered_probe_with_nobody_to_ask_suspects_then_kills() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        let (_, t) = next_probe_of(&mut m, "b", 0);
        m.handle_timeout(t + cfg.probe_timeout_ms);
        assert_eq!(state(&m, "b"), State::Suspect);
        let since = m.get("b").expect("b").state_since_ms;
        m.handle_timeout(since + cfg.suspicion_max_ms - 1);
        assert_eq!(state(&m, "b"), State::Suspect);
        m.handle_timeout(since + cfg.suspicion_max_ms);
        assert_eq!(state(&m, "b"), State::Dead);
    }

    #[test]
    fn acked_probes_keep_a_peer_alive_and_record_rtt() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("b", 0);
        let mut now = 0;
        for _ in 0..5 {
            let (seq, t) = next_probe_of(&mut m, "b", now);
            m.handle_ack("b", seq, 1.5, t + 2);
            now = t + 3;
        }
        m.handle_timeout(now + 10_000);
        assert_eq!(state(&m, "b"), State::Alive);
        assert_eq!(m.get("b").expect("b").rtt_ms, Some(1.5));
    }

    #[test]
    fn indirect_probe_answer_saves_a_peer_on_a_lossy_link() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_connected("c", 0);
        let (seq, t) = next_probe_of(&mut m, "b", 0);
        m.handle_timeout(t + cfg.probe_timeout_ms);
        let (_, a) = drain(&mut m);
        assert!(a.contains(&Action::IndirectProbe { via: "c".into(), target: "b".into(), seq }), "{a:?}");
        assert_eq!(state(&m, "b"), State::Alive, "not suspected while the indirect probe is out");
        m.handle_probe_reply("c", seq, "b", true, t + cfg.probe_timeout_ms + 5);
        m.handle_timeout(t + cfg.probe_timeout_ms + cfg.indirect_timeout_ms + 1);
        assert_eq!(state(&m, "b"), State::Alive);
    }

    #[test]
    fn failed_indirect_probes_confirm_and_kill_quickly() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        for p in ["b", "c", "d", "e"] {
            m.handle_connected(p, 0);
        }
        let (seq, t) = next_probe_of(&mut m, "b", 0);
        let t1 = t + cfg.probe_timeout_ms;
        m.handle_timeout(t1);
        m.handle_probe_reply("c", seq, "b", false, t1 + 100);
        m.handle_probe_reply("d", seq, "b", false, t1 + 105);
        assert_eq!(state(&m, "b"), State::Alive, "one via still to answer");
        m.handle_probe_reply("e", seq, "b", false, t1 + 110);
        assert_eq!(state(&m, "b"), State::Suspect);
        m.handle_timeout(t1 + 110 + cfg.suspicion_min_ms);
        assert_eq!(state(&m, "b"), State::Dead, "three independent confirmations: minimum suspicion");
    }

    #[test]
    fn relayed_probe_answers_the_origin() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("t", 0);
        m.handle_connected("o", 0);
        drain(&mut m);
        m.handle_probe_request("o", 77, "t", 10);
        let (_, a) = drain(&mut m);
        let Some(Action::Probe { seq, .. }) = a.into_iter().find(|x| matches!(x, Action::Probe { peer, .. } if peer == "t")) else { panic!("no relay probe") };
        m.handle_ack("t", seq, 1.0, 12);
        let (_, a) = drain(&mut m);
        assert!(a.contains(&Action::ProbeReply { origin: "o".into(), req: 77, target: "t".into(), alive: true }));
        // and an unanswered relay says "no" at the probe timeout
        m.handle_probe_request("o", 78, "t", 20);
        drain(&mut m);
        m.handle_timeout(20 + cfg.probe_timeout_ms);
        let (_, a) = drain(&mut m);
        assert!(a.contains(&Action::ProbeReply { origin: "o".into(), req: 78, target: "t".into(), alive: false }), "{a:?}");
    }

    #[test]
    fn suspected_node_refutes_with_a_higher_incarnation() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("c", 0);
        drain(&mut m);
        m.handle_rumor("c", "me", 0, Rumor::Suspect, 10).expect("counted");
        assert_eq!(m.incarnation(), 1);
        let (_, a) = drain(&mut m);
        assert_eq!(a, vec![Action::Broadcast { peer: "me".into(), incarnation: 1, rumor: Rumor::Alive }]);
        let cfg = Config::default();
        let mut other = Membership::new("x", cfg.clone());
        other.handle_connected("me", 0);
        other.handle_disconnected("me", false, 5);
        other.handle_timeout(5 + cfg.redial_timeout_ms);
        assert_eq!(state(&other, "me"), State::Suspect);
        other.handle_rumor("me", "me", 1, Rumor::Alive, 500).expect("a refutation by the node itself");
        assert_eq!(state(&other, "me"), State::Alive);
    }

    #[test]
    fn a_rumor_from_a_non_member_or_repeated_is_not_a_confirmation() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        for p in ["b", "c"] {
            m.handle_connected(p, 0);
        }
        m.handle_disconnected("b", false, 10);
        m.handle_timeout(10 + cfg.redial_timeout_ms);
        assert_eq!(state(&m, "b"), State::Suspect);
        assert_eq!(m.handle_rumor("stranger", "b", 0, Rumor::Suspect, 500), Err(RumorRejected::NotALiveMember));
        assert_eq!(m.confirmations("b"), 0);
        m.handle_rumor("c", "b", 0, Rumor::Suspect, 510).expect("c is a live member");
        m.handle_rumor("c", "b", 0, Rumor::Suspect, 520).expect("accepted, but not counted again");
        assert_eq!(m.confirmations("b"), 1, "one member is one confirmation");
        // a suspected member's own rumors do not count either
        assert_eq!(m.handle_rumor("b", "c", 0, Rumor::Suspect, 530), Err(RumorRejected::NotALiveMember));
        assert_eq!(m.handle_rumor("b", "b", 0, Rumor::Dead, 530), Err(RumorRejected::NotALiveMember));
    }

    #[test]
    fn an_incarnation_near_the_maximum_is_rejected_so_refutations_never_overflow() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("c", 0);
        drain(&mut m);
        assert_eq!(m.handle_rumor("c", "me", u64::MAX, Rumor::Suspect, 10), Err(RumorRejected::Incarnation(u64::MAX)));
        assert_eq!(m.incarnation(), 0);
        m.handle_rumor("c", "me", MAX_INCARNATION, Rumor::Suspect, 10).expect("in range");
        assert_eq!(m.incarnation(), MAX_INCARNATION + 1, "the refutation is above the rumor");
        let (_, a) = drain(&mut m);
        assert_eq!(a, vec![Action::Broadcast { peer: "me".into(), incarnation: MAX_INCARNATION + 1, rumor: Rumor::Alive }]);
    }

    #[test]
    fn fresh_evidence_ignores_a_suspicion_rumor() {
        let mut m = Membership::new("me", Config::default());
        m.handle_connected("b", 0);
        m.handle_connected("c", 0);
        m.handle_heard_from("b", 1000);
        m.handle_rumor("c", "b", 0, Rumor::Suspect, 1100).expect("counted");
        assert_eq!(state(&m, "b"), State::Alive);
        m.handle_rumor("c", "b", 0, Rumor::Suspect, 5000).expect("counted");
        assert_eq!(state(&m, "b"), State::Suspect, "stale evidence joins the suspicion");
    }

    #[test]
    fn dead_peer_is_redialled_and_comes_back_alive() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_disconnected("b", true, 10);
        m.handle_dial_failed("b", true, 12);
        drain(&mut m);
        m.handle_timeout(12 + cfg.dead_redial_every_ms);
        let (_, a) = drain(&mut m);
        assert!(a.contains(&Action::Redial { peer: "b".into() }), "{a:?}");
        m.handle_connected("b", 2000);
        assert_eq!(state(&m, "b"), State::Alive);
    }

    #[test]
    fn left_peer_stays_left_and_is_forgotten() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_leave("b", 10);
        m.handle_disconnected("b", true, 11);
        assert_eq!(state(&m, "b"), State::Left);
        let (_, a) = drain(&mut m);
        assert!(!a.iter().any(|x| matches!(x, Action::Redial { .. })), "no redial of a peer that said goodbye: {a:?}");
        m.handle_timeout(10 + cfg.forget_after_ms);
        assert!(m.get("b").is_none());
    }

    #[test]
    fn a_connection_after_a_leave_does_not_revive_but_a_newer_record_does() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_leave("b", 10);
        m.handle_disconnected("b", false, 11);
        // a dial from a late mDNS answer reaches the process still winding down
        m.handle_connected("b", 20);
        assert_eq!(state(&m, "b"), State::Left);
        m.handle_disconnected("b", true, 30);
        m.handle_dial_failed("b", true, 31);
        m.handle_timeout(31 + cfg.redial_timeout_ms + cfg.suspicion_max_ms);
        assert_eq!(state(&m, "b"), State::Left, "a goodbye is not turned into a death");
        // the node restarts: it connects and its record (newer than the leave) arrives
        m.handle_connected("b", 5000);
        m.handle_rejoined("b", 5001);
        assert_eq!(state(&m, "b"), State::Alive);
        let (e, _) = drain(&mut m);
        assert_eq!(e.last(), Some(&Event::Changed { peer: "b".into(), from: Some(State::Left), to: State::Alive }));
    }

    #[test]
    fn a_rejoin_heard_through_others_must_still_answer_a_dial() {
        let cfg = Config::default();
        let mut m = Membership::new("me", cfg.clone());
        m.handle_connected("b", 0);
        m.handle_leave("b", 10);
        m.handle_disconnected("b", false, 11);
        m.handle_rejoined("b", 100);
        assert_eq!(state(&m, "b"), State::Alive);
        m.handle_timeout(100 + cfg.redial_timeout_ms);
        assert_eq!(state(&m, "b"), State::Suspect, "no connection within the redial timeout");
        m.handle_rejoined("c", 100); // unknown peers are ignored
        assert!(m.get("c").is_none());
    }

    #[test]
    fn suspicion_timeout_goes_from_max_to_min() {
        let cfg = Config::default();
        assert_eq!(suspicion_timeout(&cfg, 0), cfg.suspicion_max_ms);
        let one = suspicion_timeout(&cfg, 1);
        assert!(one < cfg.suspicion_max_ms && one > cfg.suspicion_min_ms);
        assert_eq!(suspicion_timeout(&cfg, cfg.confirmations), cfg.suspicion_min_ms);
    }
}
