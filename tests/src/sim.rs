//! Deterministic simulation of the membership protocol: many nodes in one process on
//! virtual time, with seeded message loss, latency, crashes and cut-off hosts.
//!
//! The nodes run the real `craftmesh_protocol::membership::Membership`; only the network
//! is simulated. A run is fully determined by its seed, which failing tests print.

use craftmesh_protocol::membership::{Action, Config, Event, Membership, State};
use craftmesh_protocol::wire::Rumor;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// SplitMix64: small, seedable, good enough for simulation choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Ping {
        seq: u64,
    },
    Ack {
        seq: u64,
        sent_at: u64,
    },
    ProbeRequest {
        req: u64,
        target: usize,
    },
    ProbeReply {
        req: u64,
        target: usize,
        alive: bool,
    },
    Rumor {
        about: usize,
        incarnation: u64,
        rumor: Rumor,
    },
    /// The connection from `from` was reset (its process died).
    Reset,
    /// `from` says goodbye (a signed leave on gossip).
    Leave,
    /// A dial to `from` landed on its process (which may be winding down after a leave).
    Connected,
    /// A record of `from` newer than its leave arrived: a new run of the node.
    Rejoined,
    DialResult {
        refused: bool,
        ok: bool,
    },
}

#[derive(Debug, Clone)]
struct Delivery {
    from: usize,
    to: usize,
    msg: Msg,
}

/// Network and failure settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability that one message is lost.
    pub loss: f64,
    pub min_latency_ms: u64,
    pub max_latency_ms: u64,
    /// A dial to a cut-off host gives up after this long.
    pub dial_timeout_ms: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { loss: 0.0, min_latency_ms: 1, max_latency_ms: 3, dial_timeout_ms: 1000 }
    }
}

/// A simulated mesh.
#[derive(Debug)]
pub struct Sim {
    pub now: u64,
    pub nodes: Vec<Membership>,
    names: Vec<String>,
    index: BTreeMap<String, usize>,
    crashed: Vec<bool>,
    cut_off: Vec<bool>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    /// (deadline, node) of each node's next timer; stale entries are skipped.
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    deadline: Vec<Option<u64>>,
    deliveries: Vec<Option<Delivery>>,
    order: u64,
    rng: Rng,
    net: NetConfig,
    cfg: Config,
    /// (time, observer, peer, new state) of every state change.
    pub changes: Vec<(u64, usize, usize, State)>,
    pub messages: u64,
}

impl Sim {
    /// `n` fully connected nodes.
    pub fn new(n: usize, seed: u64, cfg: Config, net: NetConfig) -> Sim {
        let names: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
        let index = names.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        let mut nodes: Vec<Membership> = names.iter().map(|s| Membership::new(s.clone(), cfg.clone())).collect();
        for (i, m) in nodes.iter_mut().enumerate() {
            for (j, other) in names.iter().enumerate() {
                if i != j {
                    m.handle_connected(other, 0);
                }
            }
            while m.poll_event().is_some() {}
        }
        let mut sim = Sim {
            now: 0,
            nodes,
            names,
            index,
            crashed: vec![false; n],
            cut_off: vec![false; n],
            queue: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            deadline: vec![None; n],
            deliveries: Vec::new(),
            order: 0,
            rng: Rng::new(seed),
            net,
            cfg,
            changes: Vec::new(),
            messages: 0,
        };
        for i in 0..n {
            sim.rearm(i);
        }
        sim
    }

    /// Records node `i`'s next timer after it handled something.
    fn rearm(&mut self, i: usize) {
        let t = if self.crashed[i] { None } else { self.nodes[i].poll_timeout() };
        if t != self.deadline[i] {
            self.deadline[i] = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, i)));
            }
        }
    }

    fn next_timer(&mut self) -> Option<(u64, usize)> {
        while let Some(Reverse((t, i))) = self.timers.peek().copied() {
            if self.deadline[i] == Some(t) && !self.crashed[i] {
                return Some((t, i));
            }
            self.timers.pop();
        }
        None
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.messages += 1;
        let reliable = matches!(msg, Msg::Reset | Msg::DialResult { .. } | Msg::Connected | Msg::Rejoined);
        if !reliable && (self.cut_off[from] || self.cut_off[to] || self.rng.unit() < self.net.loss) {
            return;
        }
        let lat = self.net.min_latency_ms + self.rng.below(self.net.max_latency_ms - self.net.min_latency_ms + 1);
        self.schedule(self.now + lat, Delivery { from, to, msg });
    }

    fn schedule(&mut self, at: u64, d: Delivery) {
        self.order += 1;
        self.deliveries.push(Some(d));
        self.queue.push(Reverse((at, self.order, self.deliveries.len() - 1)));
    }

    /// Crashes node `x`: its connections reset and it answers nothing.
    pub fn crash(&mut self, x: usize) {
        self.crashed[x] = true;
        self.deadline[x] = None;
        for j in 0..self.nodes.len() {
            if j != x && !self.crashed[j] {
                let lat = self.net.min_latency_ms;
                self.schedule(self.now + lat, Delivery { from: x, to: j, msg: Msg::Reset });
            }
        }
    }

    /// Node `x` leaves on SIGTERM: a goodbye to everyone; while it winds down a late dial
    /// from `late` still lands on it; then its process is gone (connections reset).
    pub fn leave(&mut self, x: usize, late: usize) {
        for j in 0..self.nodes.len() {
            if j != x {
                self.send(x, j, Msg::Leave);
            }
        }
        let lat = self.net.max_latency_ms + 1;
        self.schedule(self.now + lat, Delivery { from: x, to: late, msg: Msg::Connected });
        let at = self.now + lat + 5;
        self.run_until(at);
        self.crash(x);
    }

    /// Node `x` (crashed or left) starts again with fresh state: it connects to everyone
    /// and its new record arrives.
    pub fn restart(&mut self, x: usize) {
        self.crashed[x] = false;
        self.nodes[x] = Membership::new(self.names[x].clone(), self.cfg.clone());
        let lat = self.net.min_latency_ms;
        for j in 0..self.nodes.len() {
            if j != x && !self.crashed[j] {
                self.schedule(self.now + lat, Delivery { from: x, to: j, msg: Msg::Connected });
                self.schedule(self.now + lat, Delivery { from: j, to: x, msg: Msg::Connected });
                self.schedule(self.now + 2 * lat, Delivery { from: x, to: j, msg: Msg::Rejoined });
            }
        }
        self.rearm(x);
    }

    /// Cuts node `x` off the network (or reconnects it).
    pub fn set_cut_off(&mut self, x: usize, cut: bool) {
        self.cut_off[x] = cut;
    }

    fn apply_actions(&mut self, i: usize) {
        while let Some(a) = self.nodes[i].poll_action() {
            match a {
                Action::Probe { peer, seq } => {
                    let j = self.index[&peer];
                    self.send(i, j, Msg::Ping { seq });
                }
                Action::IndirectProbe { via, target, seq } => {
                    let (v, t) = (self.index[&via], self.index[&target]);
                    self.send(i, v, Msg::ProbeRequest { req: seq, target: t });
                }
                Action::ProbeReply { origin, req, target, alive } => {
                    let (o, t) = (self.index[&origin], self.index[&target]);
                    self.send(i, o, Msg::ProbeReply { req, target: t, alive });
                }
                Action::Broadcast { peer, incarnation, rumor } => {
                    let about = self.index[&peer];
                    for j in 0..self.nodes.len() {
                        if j != i {
                            self.send(i, j, Msg::Rumor { about, incarnation, rumor });
                        }
                    }
                }
                Action::Redial { peer } => {
                    let j = self.index[&peer];
                    let (at, refused, ok) = if self.crashed[j] {
                        (self.now + 2 * self.net.min_latency_ms, true, false)
                    } else if self.cut_off[i] || self.cut_off[j] {
                        (self.now + self.net.dial_timeout_ms, false, false)
                    } else {
                        (self.now + 2 * self.net.min_latency_ms, false, true)
                    };
                    self.schedule(at, Delivery { from: j, to: i, msg: Msg::DialResult { refused, ok } });
                }
            }
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if let Event::Changed { peer, to, .. } = e {
                let j = self.index[&peer];
                self.changes.push((self.now, i, j, to));
            }
        }
        self.rearm(i);
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: u64) {
        loop {
            let next_timer = self.next_timer();
            let next_msg = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let t = match (next_timer.map(|x| x.0), next_msg) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            if next_msg == Some(t) {
                let Some(Reverse((_, _, idx))) = self.queue.pop() else { break };
                let Some(d) = self.deliveries[idx].take() else { continue };
                self.deliver(d);
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.deadline[i] = None;
                self.nodes[i].handle_timeout(now);
                self.apply_actions(i);
            }
        }
        self.now = self.now.max(until);
    }

    fn deliver(&mut self, d: Delivery) {
        let (i, from) = (d.to, d.from);
        if self.crashed[i] {
            return;
        }
        let now = self.now;
        let from_name = self.names[from].clone();
        match d.msg {
            Msg::Ping { seq } => {
                if self.crashed[i] {
                    return;
                }
                self.send(i, from, Msg::Ack { seq, sent_at: now });
            }
            Msg::Ack { seq, sent_at } => {
                let rtt = now.saturating_sub(sent_at) as f64;
                self.nodes[i].handle_ack(&from_name, seq, rtt, now);
            }
            Msg::ProbeRequest { req, target } => {
                let t = self.names[target].clone();
                self.nodes[i].handle_probe_request(&from_name, req, &t, now);
            }
            Msg::ProbeReply { req, target, alive } => {
                let t = self.names[target].clone();
                self.nodes[i].handle_probe_reply(&from_name, req, &t, alive, now);
            }
            Msg::Rumor { about, incarnation, rumor } => {
                let a = self.names[about].clone();
                self.nodes[i].handle_heard_from(&from_name, now);
                self.nodes[i].handle_rumor(&from_name, &a, incarnation, rumor, now);
            }
            Msg::Reset => self.nodes[i].handle_disconnected(&from_name, true, now),
            Msg::Leave => self.nodes[i].handle_leave(&from_name, now),
            Msg::Connected => self.nodes[i].handle_connected(&from_name, now),
            Msg::Rejoined => self.nodes[i].handle_rejoined(&from_name, now),
            Msg::DialResult { refused, ok } => {
                if ok {
                    self.nodes[i].handle_connected(&from_name, now);
                } else {
                    self.nodes[i].handle_dial_failed(&from_name, refused, now);
                }
            }
        }
        self.apply_actions(i);
    }

    /// When every live node other than `x` first saw `x` in `state` at or after `since`
    /// (None if some node never did).
    pub fn all_saw(&self, x: usize, state: State, since: u64) -> Option<u64> {
        let mut latest = since;
        for i in 0..self.nodes.len() {
            if i == x || self.crashed[i] || self.cut_off[i] {
                continue;
            }
            let t = self.changes.iter().find(|(t, o, p, s)| *t >= since && *o == i && *p == x && *s == state).map(|c| c.0)?;
            latest = latest.max(t);
        }
        Some(latest)
    }

    /// `Dead` verdicts about a healthy node by a healthy observer (a cut-off observer
    /// rightly sees everyone else dead).
    pub fn false_deaths(&self) -> usize {
        let ok = |i: usize| !self.crashed[i] && !self.cut_off[i];
        self.changes.iter().filter(|(_, o, p, s)| *s == State::Dead && ok(*o) && ok(*p)).count()
    }
}

/// Push-gossip dissemination of one new record: each round every node that has it pushes
/// to `fanout` random peers (gossipsub's mesh degree), with message loss. Returns the
/// rounds until all `n` nodes have it.
pub fn gossip_rounds(n: usize, fanout: usize, loss: f64, seed: u64) -> usize {
    let mut rng = Rng::new(seed);
    let mut has = vec![false; n];
    has[0] = true;
    let mut count = 1;
    let mut rounds = 0;
    while count < n && rounds < 1000 {
        rounds += 1;
        let holders: Vec<usize> = (0..n).filter(|i| has[*i]).collect();
        for h in holders {
            for _ in 0..fanout {
                let j = rng.below(n as u64) as usize;
                if j != h && rng.unit() >= loss && !has[j] {
                    has[j] = true;
                    count += 1;
                }
            }
        }
    }
    rounds
}
