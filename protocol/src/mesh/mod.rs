//! The mesh's decisions as one pure state machine: what to dial, what to answer a sync
//! with, when to republish, how to treat an advert, a gossip message or a rumor.
//!
//! The node feeds it what happened (`handle_*`, with `now` in milliseconds) and carries out
//! what it asks for (`poll_action`); the app reads `poll_event`. The node drives it with
//! libp2p and mDNS; the simulation (`tests/src/sim/`) drives the very same code with a
//! seeded, lossy network. Nothing here reads a clock or touches a socket.
//!
//! Everything keyed by something a peer or an advert chooses is bounded (see [`book`]).

pub mod book;
mod gossip;
mod types;

pub use types::*;

use crate::membership::{self, Membership, State};
use crate::state::Records;
use crate::wire::{self, Capacity, Message, NodeRecord, ServiceAd, SignedRecord};
use book::{AddressBook, DialBudget, Seen};
use libp2p_identity::Keypair;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone)]
enum Pending {
    /// A sync with `peer`: page `pages`, with what earlier pages brought added to `have`.
    Sync {
        peer: String,
        pages: u32,
        got: Vec<(String, u64)>,
    },
    Indirect {
        via: String,
        seq: u64,
        target: String,
    },
}

/// The next record version: above the last one (kept across restarts by the node) and
/// at least the wall clock, so versions strictly increase whatever the clock does.
pub fn next_version(last: u64, unix_ms: u64) -> u64 {
    last.saturating_add(1).max(unix_ms)
}

/// The mesh state machine of one node.
#[derive(Debug)]
pub struct MeshCore {
    me: String,
    mesh_id: String,
    key: Keypair,
    cfg: Config,
    records: Records,
    membership: Membership,
    book: AddressBook,
    budget: DialBudget,
    other_meshes: Seen,
    externals: BTreeMap<String, (External, u64)>,
    /// Records of peers we never connected to: peer → when merged.
    unmet: BTreeMap<String, u64>,
    own: Option<(SignedRecord, u64)>,
    own_version: u64,
    last_published: Option<(Vec<ServiceAd>, u64)>,
    pending: BTreeMap<u64, (Pending, u64)>,
    next_id: u64,
    relays: BTreeMap<(String, u64), u64>,
    connected: BTreeSet<String>,
    /// Distinct adverts the current mDNS daemon took in (bounded by a reset).
    adverts: BTreeSet<String>,
    mdns_quiet_ms: u64,
    last_mdns_reset: Option<u64>,
    /// Connected peers whose sync failed: asked again at the next tick.
    retry_sync: BTreeSet<String>,
    /// The latest `now` fed in (for work started without one, e.g. a redial's failure).
    now: u64,
    next_tick: u64,
    next_resync: u64,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl MeshCore {
    /// `last_version` is the highest record version this node ever published (0 if none).
    pub fn new(key: Keypair, mesh_id: impl Into<String>, cfg: Config, last_version: u64) -> Self {
        let me = key.public().to_peer_id().to_base58();
        let mesh_id = mesh_id.into();
        MeshCore {
            records: Records::new(mesh_id.clone(), me.clone()),
            membership: Membership::new(me.clone(), cfg.membership.clone()),
            book: AddressBook::new(cfg.max_strangers, cfg.stranger_ttl_ms),
            budget: DialBudget::new(cfg.dials_per_sec, cfg.dial_burst),
            other_meshes: Seen::new(cfg.max_other_meshes, cfg.other_mesh_ttl_ms),
            externals: BTreeMap::new(),
            unmet: BTreeMap::new(),
            own: None,
            own_version: last_version,
            last_published: None,
            pending: BTreeMap::new(),
            next_id: 1,
            relays: BTreeMap::new(),
            connected: BTreeSet::new(),
            adverts: BTreeSet::new(),
            mdns_quiet_ms: cfg.mdns_quiet_ms,
            last_mdns_reset: None,
            retry_sync: BTreeSet::new(),
            now: 0,
            next_tick: 0,
            next_resync: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            me,
            mesh_id,
            key,
            cfg,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts a rejected input the node saw before it reached the core (a failed handshake).
    pub fn reject(&mut self, reason: &str) {
        self.stats.reject(reason);
    }

    /// Addresses known for `peer`.
    pub fn addrs(&self, peer: &str) -> Vec<String> {
        self.book.addrs(peer)
    }

    /// Peers known only from adverts or records (bounded).
    pub fn strangers(&self) -> usize {
        self.book.strangers()
    }

    /// Distinct nodes of other meshes seen recently on the LAN (bounded).
    pub fn other_meshes(&self) -> usize {
        self.other_meshes.len()
    }

    pub fn externals(&self) -> impl Iterator<Item = &External> {
        self.externals.values().map(|(e, _)| e)
    }

    /// The highest record version published (persist it to keep versions increasing).
    pub fn own_version(&self) -> u64 {
        self.own_version
    }

    /// Whether `peer` has a connection now.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.connected.contains(peer)
    }

    /// In-flight requests and waiting relays (bounded; for tests and the bench).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.pending.len(), self.relays.len())
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time [`MeshCore::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<u64> {
        Some(self.membership.poll_timeout().map_or(self.next_tick, |t| t.min(self.next_tick)))
    }

    // -----------------------------------------------------------------------------------
    // Connections and dials
    // -----------------------------------------------------------------------------------

    /// A connection to `peer` is up; `dialled` is the address when we dialled it.
    pub fn handle_connected(&mut self, peer: &str, dialled: Option<String>, now: u64) {
        self.now = self.now.max(now);
        if peer == self.me {
            return;
        }
        self.connected.insert(peer.to_string());
        self.book.met(peer, now);
        if let Some(a) = dialled {
            self.book.learn(peer, [a], now);
        }
        self.unmet.remove(peer);
        self.membership.handle_connected(peer, now);
        self.sync(peer, Vec::new(), 0);
        self.flush();
    }

    /// The last connection to `peer` closed. A close after its signed leave is graceful;
    /// any other is a reset that the redial will judge.
    pub fn handle_disconnected(&mut self, peer: &str, now: u64) {
        self.now = self.now.max(now);
        if !self.connected.remove(peer) {
            return;
        }
        let graceful = self.membership.get(peer).is_some_and(|m| m.state == State::Left);
        self.membership.handle_disconnected(peer, !graceful, now);
        // What was waiting on that connection will never be answered.
        self.pending.retain(|_, (p, _)| match p {
            Pending::Sync { peer: p, .. } => p != peer,
            Pending::Indirect { via, .. } => via != peer,
        });
        let dropped: Vec<u64> = self.relays.iter().filter(|((o, _), _)| o == peer).map(|(_, c)| *c).collect();
        self.relays.retain(|(o, _), _| o != peer);
        for channel in dropped {
            self.actions.push_back(Action::Release { channel });
        }
        self.flush();
    }

    /// A dial to `peer` failed; `refused` when the host answered with a refusal.
    pub fn handle_dial_failed(&mut self, peer: &str, refused: bool, now: u64) {
        self.now = self.now.max(now);
        if self.membership.get(peer).is_none() {
            self.book.dial_failed(peer, now);
        }
        self.membership.handle_dial_failed(peer, refused, now);
        self.flush();
    }

    /// Identify from `peer`: its protocol string names its mesh, and its listen addresses.
    pub fn handle_identify(&mut self, peer: &str, protocol: &str, listen_addrs: Vec<String>, now: u64) {
        self.now = self.now.max(now);
        if protocol != identify_protocol(&self.mesh_id) {
            self.stats.reject("identify_other_mesh");
            self.actions.push_back(Action::Disconnect { peer: peer.to_string() });
            return;
        }
        self.book.learn(peer, listen_addrs, now);
    }

    /// Dials a peer that is not a member yet, within the dial budget and its backoff.
    fn discovery_dial(&mut self, peer: &str, now: u64) {
        if self.connected.contains(peer) || peer == self.me {
            return;
        }
        let Some(r) = self.book.get(peer) else { return };
        if r.addrs.is_empty() || now < r.next_dial_ms {
            return;
        }
        if !self.budget.take(now) {
            self.stats.dials_deferred += 1;
            return;
        }
        self.stats.dials += 1;
        self.book.dialling(peer, now);
        self.actions.push_back(Action::Dial { peer: peer.to_string(), addrs: self.book.addrs(peer) });
    }

    // -----------------------------------------------------------------------------------
    // Adverts
    // -----------------------------------------------------------------------------------

    /// Counts an advert against the mDNS daemon's cache; past the bound, the daemon is
    /// restarted and stays deaf for a while (longer while the flood goes on).
    fn saw_advert(&mut self, fullname: &str, now: u64) {
        if !self.adverts.insert(fullname.to_string()) || self.adverts.len() <= self.cfg.max_adverts_per_mdns {
            return;
        }
        self.adverts.clear();
        if self.last_mdns_reset.is_some_and(|t| now.saturating_sub(t) > 30 * 60_000) {
            self.mdns_quiet_ms = self.cfg.mdns_quiet_ms;
        }
        self.last_mdns_reset = Some(now);
        self.stats.mdns_flood_resets += 1;
        self.actions.push_back(Action::ResetMdns { browse_after_ms: self.mdns_quiet_ms });
        self.mdns_quiet_ms = (self.mdns_quiet_ms * 2).min(10 * 60_000);
    }

    /// A `_craftmesh._tcp` advert.
    pub fn handle_node_advert(&mut self, n: NodeSeen, now: u64) {
        self.now = self.now.max(now);
        if n.peer_id == self.me {
            return;
        }
        self.saw_advert(&n.fullname, now);
        if n.mesh_id != self.mesh_id {
            self.stats.reject("advert_other_mesh");
            self.other_meshes.saw(&n.peer_id, now);
            return;
        }
        self.book.learn(&n.peer_id, n.addrs, now);
        self.discovery_dial(&n.peer_id, now);
    }

    /// An `_mcp._tcp` advert. Members' servers travel in their signed records instead.
    pub fn handle_mcp_advert(&mut self, a: McpSeen, now: u64) {
        self.now = self.now.max(now);
        self.saw_advert(&a.fullname, now);
        if a.node.as_deref().is_some_and(|n| n == self.me || self.records.get(n).is_some()) {
            return;
        }
        if self.externals.len() >= self.cfg.max_externals && !self.externals.contains_key(&a.fullname) {
            self.stats.reject("advert_flood");
            return;
        }
        self.events.push_back(Event::External { name: a.name.clone(), url: a.url.clone(), verified: false });
        let e = External { name: a.name, url: a.url, addresses: a.addresses, verified: false, fullname: a.fullname.clone() };
        self.externals.insert(a.fullname, (e, now));
    }

    /// An advert was withdrawn (goodbye or expiry).
    pub fn handle_advert_removed(&mut self, fullname: &str) {
        self.externals.remove(fullname);
        self.adverts.remove(fullname);
    }

    /// An advert failed the node's validation.
    pub fn handle_advert_rejected(&mut self) {
        self.stats.reject("advert_invalid");
    }

    /// Advances timers: membership, then once a second the bounded maps' ageing, retries of
    /// put-off dials, expiry of unanswered requests and the periodic re-sync.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.membership.handle_timeout(now);
        if now >= self.next_tick {
            self.next_tick = now + 1_000;
            self.book.age(now);
            self.other_meshes.age(now);
            let ttl = self.cfg.external_ttl_ms;
            self.externals.retain(|_, (_, at)| now.saturating_sub(*at) < ttl);
            let forget = self.cfg.membership.forget_after_ms;
            let old: Vec<String> = self.unmet.iter().filter(|(_, t)| now.saturating_sub(**t) >= forget).map(|(p, _)| p.clone()).collect();
            for p in old {
                self.unmet.remove(&p);
                self.records.forget(&p);
            }
            self.records.prune_leaves(now, forget, self.cfg.max_leaves);
            let timeout = self.cfg.request_timeout_ms;
            let expired: Vec<u64> = self.pending.iter().filter(|(_, (_, sent))| now.saturating_sub(*sent) >= timeout).map(|(id, _)| *id).collect();
            for id in expired {
                self.handle_request_failed(id);
            }
            for p in std::mem::take(&mut self.retry_sync) {
                if self.connected.contains(&p) {
                    self.sync(&p, Vec::new(), 0);
                }
            }
            for p in self.book.due(now) {
                self.discovery_dial(&p, now);
            }
            if now >= self.next_resync {
                self.next_resync = now + self.cfg.resync_every_ms;
                self.resync_lacking();
            }
        }
        self.flush();
    }

    /// Asks connected peers whose record we lack for a sync again (see [`Records::lacking`]).
    fn resync_lacking(&mut self) {
        let lacking: Vec<String> = self.records.lacking(self.connected.iter().map(String::as_str)).into_iter().map(str::to_string).collect();
        for p in lacking {
            if !self.pending.values().any(|(x, _)| matches!(x, Pending::Sync { peer, .. } if *peer == p)) {
                self.sync(&p, Vec::new(), 0);
            }
        }
    }

    fn sync(&mut self, peer: &str, got: Vec<(String, u64)>, pages: u32) {
        let mut have = self.records.summary();
        have.extend(got.iter().cloned());
        let msg = Message::SyncRequest { mesh_id: self.mesh_id.clone(), have };
        self.request(peer, Pending::Sync { peer: peer.to_string(), pages, got }, msg);
    }

    fn request(&mut self, peer: &str, what: Pending, msg: Message) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, (what, self.now));
        self.actions.push_back(Action::Request { peer: peer.to_string(), id, msg });
    }

    // -----------------------------------------------------------------------------------
    // Our own record and leave
    // -----------------------------------------------------------------------------------

    /// Forces the next [`MeshCore::publish_record`] out (addresses changed).
    pub fn republish_soon(&mut self) {
        self.last_published = None;
    }

    /// Publishes this node's record when its services changed or the last one is older
    /// than `refresh_record_ms`. Returns the new version (to be persisted) if it published.
    pub fn publish_record(&mut self, mut record: NodeRecord, unix_ms: u64, now: u64) -> Option<u64> {
        self.now = self.now.max(now);
        if let Some((last, at)) = &self.last_published
            && *last == record.services
            && now.saturating_sub(*at) < self.cfg.refresh_record_ms
        {
            return None;
        }
        let version = next_version(self.own_version, unix_ms);
        record.peer_id = self.me.clone();
        record.mesh_id = self.mesh_id.clone();
        record.version = version;
        record.issued_at_ms = unix_ms;
        let signed = wire::sign_record(&record, &self.key).ok()?;
        self.own_version = version;
        self.last_published = Some((record.services, now));
        self.own = Some((signed.clone(), version));
        self.actions.push_back(Action::Publish(Message::Record(signed)));
        Some(version)
    }

    /// The signed goodbye to publish when stopping.
    pub fn leave(&self) -> Option<Message> {
        wire::sign_leave(&self.me, &self.mesh_id, self.own_version.max(1), &self.key).ok().map(Message::Leave)
    }

    /// Carries out membership actions and turns its events into mesh events.
    fn flush(&mut self) {
        while let Some(a) = self.membership.poll_action() {
            match a {
                membership::Action::Probe { peer, seq } => {
                    self.stats.probes_sent += 1;
                    self.actions.push_back(Action::Probe { peer, seq });
                }
                membership::Action::IndirectProbe { via, target, seq } => {
                    let msg = Message::ProbeRequest { req: seq, target: target.clone() };
                    self.request(&via.clone(), Pending::Indirect { via, seq, target }, msg);
                }
                membership::Action::ProbeReply { origin, req, target, alive } => {
                    if let Some(channel) = self.relays.remove(&(origin, req)) {
                        self.actions.push_back(Action::Respond { channel, msg: Message::ProbeResponse { req, target, alive } });
                    }
                }
                membership::Action::Broadcast { peer, incarnation, rumor } => {
                    if let Ok(r) = wire::sign_rumor(&self.mesh_id, &peer, incarnation, rumor, &self.key) {
                        self.actions.push_back(Action::Publish(Message::Member(r)));
                    }
                }
                membership::Action::Redial { peer } => {
                    let addrs = self.book.addrs(&peer);
                    if addrs.is_empty() {
                        let now = self.now;
                        self.membership.handle_dial_failed(&peer, false, now);
                        continue;
                    }
                    self.actions.push_back(Action::Dial { peer, addrs });
                }
            }
        }
        while let Some(e) = self.membership.poll_event() {
            match e {
                membership::Event::Changed { peer, from, to } => {
                    if matches!(to, State::Dead | State::Left) && self.connected.contains(&peer) {
                        // A connection that outlived the verdict (a cut-off host keeps its TCP
                        // state) would stop the redial from ever making a fresh one.
                        self.actions.push_back(Action::Disconnect { peer: peer.clone() });
                    }
                    let name = self.records.get(&peer).map(|r| r.record.name.clone());
                    self.events.push_back(Event::Member { peer, name, from, to });
                }
                membership::Event::Crashed { peer } => {
                    let name = self.records.get(&peer).map(|r| r.record.name.clone());
                    self.events.push_back(Event::Crashed { peer, name });
                }
                membership::Event::Forgotten { peer } => {
                    self.records.forget(&peer);
                    self.book.forget(&peer);
                    self.events.push_back(Event::Forgotten { peer });
                }
            }
        }
    }
}

/// The identify protocol string of a mesh: nodes of other meshes are told apart by it.
pub fn identify_protocol(mesh_id: &str) -> String {
    format!("/craftmesh/1/{mesh_id}")
}

/// A record with the fields the node fills in (the core sets id, mesh, version and time).
pub fn record(name: &str, addrs: Vec<String>, api_port: u16, services: Vec<ServiceAd>, capacity: Capacity, tags: Vec<String>, software: &str) -> NodeRecord {
    NodeRecord {
        peer_id: String::new(),
        mesh_id: String::new(),
        version: 0,
        issued_at_ms: 0,
        name: name.to_string(),
        addrs,
        api_port,
        services,
        capacity,
        tags,
        software_version: software.to_string(),
    }
}

#[cfg(test)]
mod tests;
