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

mod probe;

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
mod tests;
