//! Deterministic simulation of the mesh: many nodes in one process on virtual time, each
//! running the real `craftmesh_protocol::mesh::MeshCore` (membership, records, sync, adverts,
//! dial budget, signed rumors) exactly as the node drives it; only the network and the
//! hosts are simulated. Every message kind can be lost: requests, responses, gossip,
//! probes and their acks, adverts, resets (re-sent after a retransmission timeout, as TCP
//! does) and dial results (a lost one becomes a dial timeout). Hosts can crash, restart
//! with their stored state, be cut off, partitioned or paused (SIGSTOP). A run is fully
//! determined by its seed, which failing tests print.

use craftmesh_protocol::membership::{Config, State};
use craftmesh_protocol::mesh::{self, Action, Event, MeshCore, NodeSeen};
use craftmesh_protocol::wire::{self, Message};
use libp2p_identity::Keypair;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

mod faults;

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

/// How long the real node's request-response waits for an answer.
const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// TCP's first retransmission timeout: a lost reset comes again after it.
const RTO_MS: u64 = 200;

#[derive(Debug, Clone)]
enum Msg {
    Request {
        id: u64,
        msg: Message,
    },
    Response {
        id: u64,
        msg: Message,
    },
    /// The request `id` failed (its stream closed, or it timed out).
    Failed {
        id: u64,
    },
    Gossip(Vec<u8>),
    Ping {
        seq: u64,
        sent_at: u64,
    },
    Pong {
        seq: u64,
        sent_at: u64,
    },
    ProbeFailed {
        seq: u64,
    },
    Advert,
    /// The connection from `from` was reset (its process died) or closed by `from`.
    Closed {
        attempt: u32,
    },
    /// The outcome of our dial to `from`.
    DialResult {
        ok: bool,
        refused: bool,
    },
    /// `from` dialled us and the connection is up.
    Accepted,
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
    /// Probability that one message (of any kind) is lost.
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

/// One simulated host and its node process.
#[derive(Debug)]
struct Host {
    core: MeshCore,
    key: Keypair,
    crashed: bool,
    paused: bool,
    /// Deliveries held while paused (the kernel still takes them in).
    held: Vec<Delivery>,
    /// Peers this node believes it is connected to.
    conns: BTreeSet<usize>,
    /// Requests it sent that are still open: id → (peer, deadline).
    open: BTreeMap<u64, (usize, u64)>,
    deadline: Option<u64>,
}

/// A simulated mesh.
#[derive(Debug)]
pub struct Sim {
    pub now: u64,
    hosts: Vec<Host>,
    pub ids: Vec<String>,
    index: BTreeMap<String, usize>,
    /// Network group of each host: `None` is cut off from everyone.
    group: Vec<Option<u32>>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    /// (deadline, node, request id) of open requests; stale entries are skipped.
    request_timers: BinaryHeap<Reverse<(u64, usize, u64)>>,
    deliveries: Vec<Option<Delivery>>,
    order: u64,
    rng: Rng,
    net: NetConfig,
    cfg: mesh::Config,
    records: bool,
    /// Inbound request channels: channel → (requester, its request id).
    channels: BTreeMap<u64, (usize, u64)>,
    next_channel: u64,
    /// (time, observer, peer, new state) of every state change.
    pub changes: Vec<(u64, usize, usize, State)>,
    /// (time, observer, peer) of every record merged.
    pub records_seen: Vec<(u64, usize, usize)>,
    pub messages: u64,
}

fn host_key(seed: u64, i: usize) -> Keypair {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    b[16] = 0xc3;
    Keypair::ed25519_from_bytes(b).expect("32 bytes make an ed25519 key")
}

impl Sim {
    /// `n` nodes that find each other by adverts, with the node's membership timing.
    pub fn new(n: usize, seed: u64, cfg: Config, net: NetConfig) -> Sim {
        Sim::with(n, seed, mesh::Config { membership: cfg, ..mesh::Config::default() }, net, true)
    }

    /// `n` nodes with the given mesh configuration; `records: false` skips publishing
    /// records (large runs that only study membership).
    pub fn with(n: usize, seed: u64, cfg: mesh::Config, net: NetConfig, records: bool) -> Sim {
        let keys: Vec<Keypair> = (0..n).map(|i| host_key(seed, i)).collect();
        let ids: Vec<String> = keys.iter().map(|k| k.public().to_peer_id().to_base58()).collect();
        let index = ids.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        let hosts = keys
            .into_iter()
            .map(|key| Host {
                core: MeshCore::new(key.clone(), "sim", cfg.clone(), 0),
                key,
                crashed: false,
                paused: false,
                held: Vec::new(),
                conns: BTreeSet::new(),
                open: BTreeMap::new(),
                deadline: None,
            })
            .collect();
        let mut sim = Sim {
            now: 0,
            hosts,
            ids,
            index,
            group: vec![Some(0); n],
            queue: BinaryHeap::new(),
            timers: BinaryHeap::new(),
            request_timers: BinaryHeap::new(),
            deliveries: Vec::new(),
            order: 0,
            rng: Rng::new(seed),
            net,
            cfg,
            records,
            channels: BTreeMap::new(),
            next_channel: 1,
            changes: Vec::new(),
            records_seen: Vec::new(),
            messages: 0,
        };
        for i in 0..n {
            sim.boot(i);
        }
        sim
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Node `i`'s core (read-only).
    pub fn core(&self, i: usize) -> &MeshCore {
        &self.hosts[i].core
    }

    /// Starts node `i`'s process: it publishes its record and announces itself (mDNS sends
    /// an announcement at once, after 1 s and after 3 s; each can be lost).
    fn boot(&mut self, i: usize) {
        let now = self.now;
        if self.records {
            let r = mesh::record(&format!("host{i}"), vec![format!("/ip4/10.0.0.{}/tcp/7411", i + 1)], 7410, vec![], wire::Capacity::default(), vec![], "sim");
            self.hosts[i].core.publish_record(r, 1_000_000 + now, now);
        }
        for delay in [0, 1_000, 3_000] {
            for j in 0..self.hosts.len() {
                if j != i {
                    self.send_at(now + delay, i, j, Msg::Advert);
                    self.send_at(now + delay, j, i, Msg::Advert);
                }
            }
        }
        self.apply(i);
    }

    fn link_up(&self, a: usize, b: usize) -> bool {
        matches!((self.group[a], self.group[b]), (Some(x), Some(y)) if x == y)
    }

    fn latency(&mut self) -> u64 {
        self.net.min_latency_ms + self.rng.below(self.net.max_latency_ms - self.net.min_latency_ms + 1)
    }

    /// Sends a message over the network: lost with the configured probability or when the
    /// link is down at the time of sending.
    fn send_at(&mut self, at: u64, from: usize, to: usize, msg: Msg) {
        self.messages += 1;
        if !self.link_up(from, to) || self.rng.unit() < self.net.loss {
            self.lost(at, from, to, msg);
            return;
        }
        let lat = self.latency();
        self.schedule(at + lat, Delivery { from, to, msg });
    }

    /// What losing `msg` means: most messages are simply gone (the sender's timers judge);
    /// a reset is sent again after a retransmission timeout; a lost dial result is a
    /// dial that times out.
    fn lost(&mut self, at: u64, from: usize, to: usize, msg: Msg) {
        match msg {
            Msg::Closed { attempt } if attempt < 5 => self.schedule(at + RTO_MS, Delivery { from, to, msg: Msg::Closed { attempt: attempt + 1 } }),
            _ => {}
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        self.send_at(self.now, from, to, msg);
    }

    fn schedule(&mut self, at: u64, d: Delivery) {
        self.order += 1;
        self.deliveries.push(Some(d));
        self.queue.push(Reverse((at, self.order, self.deliveries.len() - 1)));
    }

    fn rearm(&mut self, i: usize) {
        let h = &self.hosts[i];
        let t = if h.crashed || h.paused { None } else { h.core.poll_timeout().map(|t| t.max(self.now)) };
        if t != self.hosts[i].deadline {
            self.hosts[i].deadline = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, i)));
            }
        }
    }

    /// Carries out node `i`'s actions and records its events.
    fn apply(&mut self, i: usize) {
        while let Some(a) = self.hosts[i].core.poll_action() {
            self.act(i, a);
        }
        while let Some(e) = self.hosts[i].core.poll_event() {
            match e {
                Event::Member { peer, to, .. } => {
                    if let Some(&j) = self.index.get(&peer) {
                        self.changes.push((self.now, i, j, to));
                    }
                }
                Event::Record { peer, .. } => {
                    if let Some(&j) = self.index.get(&peer) {
                        self.records_seen.push((self.now, i, j));
                    }
                }
                _ => {}
            }
        }
        self.rearm(i);
    }

    fn act(&mut self, i: usize, a: Action) {
        let now = self.now;
        match a {
            Action::Dial { peer, .. } => {
                let Some(&j) = self.index.get(&peer) else { return };
                if self.hosts[i].conns.contains(&j) {
                    return;
                }
                self.messages += 1;
                let rtt = 2 * self.latency();
                let lost = self.rng.unit() < self.net.loss;
                let d = |ok, refused| Delivery { from: j, to: i, msg: Msg::DialResult { ok, refused } };
                if !self.link_up(i, j) || lost {
                    // No answer (or the SYN lost and the retries too late): a timeout.
                    self.schedule(now + self.net.dial_timeout_ms, d(false, false));
                } else if self.hosts[j].crashed {
                    self.schedule(now + rtt, d(false, true));
                } else {
                    // An established connection is known to both ends at once.
                    self.schedule(now + rtt, Delivery { from: i, to: j, msg: Msg::Accepted });
                    self.schedule(now + rtt, d(true, false));
                }
            }
            Action::Disconnect { peer } => {
                let Some(&j) = self.index.get(&peer) else { return };
                if self.hosts[i].conns.remove(&j) {
                    self.hosts[i].core.handle_disconnected(&peer, now);
                    self.send(i, j, Msg::Closed { attempt: 0 });
                }
            }
            Action::Request { peer, id, msg } => {
                let Some(&j) = self.index.get(&peer) else { return };
                self.hosts[i].open.insert(id, (j, now + REQUEST_TIMEOUT_MS));
                self.request_timers.push(Reverse((now + REQUEST_TIMEOUT_MS, i, id)));
                if self.hosts[i].conns.contains(&j) {
                    self.send(i, j, Msg::Request { id, msg });
                } else {
                    self.schedule(now + 1, Delivery { from: j, to: i, msg: Msg::Failed { id } });
                }
            }
            Action::Respond { channel, msg } => {
                if let Some((to, id)) = self.channels.remove(&channel) {
                    self.send(i, to, Msg::Response { id, msg });
                }
            }
            Action::Release { channel } => {
                if let Some((to, id)) = self.channels.remove(&channel) {
                    self.send(i, to, Msg::Failed { id });
                }
            }
            Action::Publish(msg) => {
                let bytes = wire::encode(&msg);
                let conns: Vec<usize> = self.hosts[i].conns.iter().copied().collect();
                for j in conns {
                    self.send(i, j, Msg::Gossip(bytes.clone()));
                }
            }
            Action::ResetMdns { .. } => {}
            Action::Probe { peer, seq } => {
                let Some(&j) = self.index.get(&peer) else { return };
                if self.hosts[i].conns.contains(&j) {
                    self.send(i, j, Msg::Ping { seq, sent_at: now });
                } else {
                    self.schedule(now + 1, Delivery { from: j, to: i, msg: Msg::ProbeFailed { seq } });
                }
            }
        }
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: u64) {
        loop {
            while let Some(Reverse((t, i))) = self.timers.peek().copied() {
                if self.hosts[i].deadline == Some(t) && !self.hosts[i].crashed && !self.hosts[i].paused {
                    break;
                }
                self.timers.pop();
            }
            let next_timer = self.timers.peek().map(|Reverse((t, i))| (*t, *i));
            let next_msg = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_open = self.next_request_timeout();
            let t = [next_timer.map(|x| x.0), next_msg, next_open.map(|x| x.0)].into_iter().flatten().min();
            let Some(t) = t else { break };
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            if next_msg == Some(t) {
                let Some(Reverse((_, _, idx))) = self.queue.pop() else { break };
                if let Some(d) = self.deliveries[idx].take() {
                    self.deliver(d);
                }
            } else if let Some((_, i, id)) = next_open.filter(|x| x.0 == t) {
                self.request_timers.pop();
                self.hosts[i].open.remove(&id);
                self.hosts[i].core.handle_request_failed(id);
                self.apply(i);
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.hosts[i].deadline = None;
                self.hosts[i].core.handle_timeout(now);
                self.apply(i);
            }
        }
        self.now = self.now.max(until);
    }

    /// The earliest deadline of a request still open: (time, node, request id).
    fn next_request_timeout(&mut self) -> Option<(u64, usize, u64)> {
        while let Some(Reverse((t, i, id))) = self.request_timers.peek().copied() {
            let h = &self.hosts[i];
            if !h.crashed && !h.paused && h.open.get(&id).is_some_and(|(_, d)| *d == t) {
                return Some((t, i, id));
            }
            self.request_timers.pop();
        }
        None
    }

    fn deliver(&mut self, d: Delivery) {
        let (i, from) = (d.to, d.from);
        if self.hosts[i].crashed {
            return;
        }
        if self.hosts[i].paused {
            self.hosts[i].held.push(d);
            return;
        }
        let now = self.now;
        let peer = self.ids[from].clone();
        match d.msg {
            Msg::Request { id, msg } => {
                if !self.hosts[i].conns.contains(&from) {
                    return;
                }
                let channel = self.next_channel;
                self.next_channel += 1;
                self.channels.insert(channel, (from, id));
                self.hosts[i].core.handle_request(&peer, channel, msg, now);
            }
            Msg::Response { id, msg } => {
                if self.hosts[i].open.remove(&id).is_some() {
                    self.hosts[i].core.handle_response(&peer, id, msg, now);
                }
            }
            Msg::Failed { id } => {
                if self.hosts[i].open.remove(&id).is_some() {
                    self.hosts[i].core.handle_request_failed(id);
                }
            }
            Msg::Gossip(bytes) => {
                if self.hosts[i].conns.contains(&from) {
                    self.hosts[i].core.handle_gossip(Some(&peer), &bytes, now);
                }
            }
            // The node's probe streams answer by themselves; the core only sees the ack.
            Msg::Ping { seq, sent_at } => {
                if self.hosts[i].conns.contains(&from) {
                    self.send(i, from, Msg::Pong { seq, sent_at });
                }
            }
            Msg::Pong { seq, sent_at } => self.hosts[i].core.handle_probe_ack(&peer, seq, now.saturating_sub(sent_at) as f64, now),
            Msg::ProbeFailed { seq } => self.hosts[i].core.handle_probe_failed(&peer, seq, now),
            Msg::Advert => {
                let addrs = vec![format!("/ip4/10.0.0.{}/tcp/7411", from + 1)];
                self.hosts[i].core.handle_node_advert(
                    NodeSeen { fullname: format!("craftmesh-{from}._craftmesh._tcp.local."), peer_id: peer, mesh_id: "sim".into(), addrs },
                    now,
                );
            }
            Msg::Closed { .. } => {
                if self.hosts[i].conns.remove(&from) {
                    self.hosts[i].core.handle_disconnected(&peer, now);
                    self.hosts[i].open.retain(|_, (p, _)| *p != from);
                }
            }
            Msg::Accepted => {
                if self.hosts[i].conns.insert(from) {
                    self.hosts[i].core.handle_connected(&peer, None, now);
                }
            }
            Msg::DialResult { ok, refused } => {
                if ok && !self.hosts[from].crashed {
                    if self.hosts[i].conns.insert(from) {
                        self.hosts[i].core.handle_connected(&peer, Some(format!("/ip4/10.0.0.{}/tcp/7411", from + 1)), now);
                    }
                } else if !self.hosts[i].conns.contains(&from) {
                    self.hosts[i].core.handle_dial_failed(&peer, refused, now);
                }
            }
        }
        self.apply(i);
    }

    /// When every live node other than `x` first saw `x` in `state` at or after `since`
    /// (None if some node never did).
    pub fn all_saw(&self, x: usize, state: State, since: u64) -> Option<u64> {
        let mut latest = since;
        for i in 0..self.hosts.len() {
            if i == x || self.hosts[i].crashed || self.group[i].is_none() {
                continue;
            }
            let t = self.changes.iter().find(|(t, o, p, s)| *t >= since && *o == i && *p == x && *s == state).map(|c| c.0)?;
            latest = latest.max(t);
        }
        Some(latest)
    }

    /// Whether every live node sees every other live node alive now.
    pub fn all_alive_now(&self) -> bool {
        let live: Vec<usize> = (0..self.hosts.len()).filter(|i| !self.hosts[*i].crashed).collect();
        live.iter()
            .all(|&i| live.iter().filter(|&&j| j != i).all(|&j| self.hosts[i].core.membership().get(&self.ids[j]).is_some_and(|m| m.state == State::Alive)))
    }

    /// `Dead` verdicts about a healthy node by a healthy observer (a cut-off observer
    /// rightly sees everyone else dead).
    pub fn false_deaths(&self) -> usize {
        let ok = |i: usize| !self.hosts[i].crashed && self.group[i].is_some();
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
