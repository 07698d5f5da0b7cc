//! The mesh of this node: the libp2p swarm ([`swarm`]), DNS-SD adverts ([`mdns`]) and
//! standing probe streams ([`probe`]) around the pure decision core
//! `craftmesh_protocol::mesh::MeshCore`. This module only moves bytes: it feeds the core
//! what happened ([`drive`]) and carries out the actions the core returns.

pub mod codec;
mod drive;
pub mod interfaces;
pub mod keys;
pub mod mdns;
pub mod probe;
pub mod swarm;

use crate::supervise::SharedHealth;
use craftmesh_protocol::membership::{self, State};
use craftmesh_protocol::mesh::{self as core, MeshCore};
use craftmesh_protocol::wire;
use libp2p::gossipsub::IdentTopic;
use libp2p::pnet::PreSharedKey;
use libp2p::request_response::{OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm};
use mdns::Mdns;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use swarm::{Behaviour, BehaviourEvent};

pub use core::{Event as MeshEvent, External, Stats as CoreStats};

/// How the mesh is set up.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// TCP port to listen on (0: any).
    pub listen_port: u16,
    pub key: Option<PreSharedKey>,
    pub static_peers: Vec<Multiaddr>,
    pub interfaces: interfaces::InterfacePolicy,
    pub mdns: bool,
    pub tags: Vec<String>,
    pub membership: membership::Config,
    /// Where the highest record version published is kept (the data dir), so versions
    /// increase across restarts even when the wall clock goes back. `None`: not kept.
    pub state_dir: Option<PathBuf>,
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("mDNS failed to start: {0}")]
    Mdns(String),
    #[error("record version file {path} is unreadable ({reason}); move it away to start (versions then follow the wall clock)")]
    VersionFile { path: String, reason: String },
}

/// One input for the mesh, produced by [`Mesh::next`].
#[derive(Debug)]
pub enum Input {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Probe(probe::ProbeEvent),
    Mdns(mdns::Seen),
    /// The mDNS daemon's channel closed: its thread is gone.
    MdnsGone,
    /// Time to look for address changes.
    Interfaces,
    Timer,
}

/// Counters shown in `/v1/node`: the core's, plus restarts of the mesh's own tasks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshStats {
    #[serde(flatten)]
    pub core: CoreStats,
    /// Times the mDNS daemon died and was started again.
    pub mdns_restarts: u64,
    /// Times the inbound probe listener ended and was started again.
    pub probe_listener_restarts: u64,
    /// Peers known only from adverts or records, never connected (bounded).
    pub strangers: usize,
}

/// A member as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: String,
    pub name: Option<String>,
    pub addresses: Vec<String>,
    pub state: State,
    pub incarnation: u64,
    pub last_seen_ms_ago: u64,
    pub rtt_ms: Option<f64>,
    pub capacity: Option<wire::Capacity>,
    pub tags: Vec<String>,
    pub version: Option<u64>,
    /// Dead because a redial was refused: the process is gone, the host is up.
    pub crashed: bool,
}

/// The running mesh of this node.
pub struct Mesh {
    swarm: Swarm<Behaviour>,
    core: MeshCore,
    topic: IdentTopic,
    mdns: Option<mdns::Mdns>,
    /// The mDNS daemon of the previous address set, saying goodbye; the new one starts
    /// once it is done, so no late goodbye cancels a fresh announcement.
    mdns_stopping: Option<tokio::task::JoinHandle<()>>,
    mdns_wanted: bool,
    /// After a flood reset: browse again only from then on.
    browse_from: Option<Instant>,
    health: SharedHealth,
    /// After the mDNS daemon died: start it again only from then on (the backoff).
    mdns_retry_at: Option<Instant>,
    prober: probe::Prober,
    probe_sent: HashMap<(PeerId, u64), Instant>,
    /// libp2p's ids of our requests → the core's ids.
    requests: HashMap<OutboundRequestId, u64>,
    /// Inbound requests waiting for the core's answer.
    channels: HashMap<u64, ResponseChannel<wire::Message>>,
    next_channel: u64,
    epoch: Instant,
    events: VecDeque<MeshEvent>,
    stats: MeshStats,
    listen_port: u16,
    api_port: u16,
    /// What we listen on (and advertise): the usable IPv4 addresses, or loopback alone
    /// while there is none.
    listeners: Vec<(IpAddr, libp2p::core::transport::ListenerId)>,
    policy: interfaces::InterfacePolicy,
    next_interface_check: Instant,
    tags: Vec<String>,
    mcp_registered: BTreeMap<String, String>,
    version_file: Option<PathBuf>,
}

/// How often the node looks for addresses that appeared or went away (DHCP, Wi-Fi,
/// cables): new ones are listened on and advertised, gone ones dropped. The same tick
/// restarts a dead mDNS daemon or probe listener.
const INTERFACE_CHECK: Duration = Duration::from_secs(5);

/// File in the data dir holding the highest record version published.
pub const VERSION_FILE: &str = "record.version";

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("me", &self.core.me()).field("mesh_id", &self.core.mesh_id()).finish()
    }
}

/// Reads the persisted record version (0 when there is none yet).
fn read_version(path: &std::path::Path) -> Result<u64, MeshError> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.len() <= 64 => {
            s.trim().parse().map_err(|e: std::num::ParseIntError| MeshError::VersionFile { path: path.display().to_string(), reason: e.to_string() })
        }
        Ok(s) => Err(MeshError::VersionFile { path: path.display().to_string(), reason: format!("{} bytes", s.len()) }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(MeshError::VersionFile { path: path.display().to_string(), reason: e.to_string() }),
    }
}

/// Writes the version atomically (temp file, fsync, rename).
fn write_version(path: &std::path::Path, v: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{v}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Mesh {
    /// Builds the swarm, listens on the usable interfaces, starts mDNS and dials static peers.
    /// Failures of the mesh's own tasks (the mDNS daemon, the probe listener) are counted
    /// in `health` and restarted after its backoff.
    pub fn start(opts: MeshOptions, keypair: libp2p_identity::Keypair, api_port: u16, health: SharedHealth) -> Result<Mesh, MeshError> {
        let mesh_id = keys::mesh_id(opts.key.as_ref());
        let me = keypair.public().to_peer_id();
        let version_file = opts.state_dir.as_ref().map(|d| d.join(VERSION_FILE));
        let last_version = match &version_file {
            Some(p) => read_version(p)?,
            None => 0,
        };
        let mut swarm = swarm::build(&keypair, opts.key, &mesh_id)?;
        let prober = probe::Prober::new(swarm.behaviour().stream.new_control()).map_err(MeshError::Transport)?;
        let topic = IdentTopic::new(format!("craftmesh/{mesh_id}/v1"));
        swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| MeshError::Transport(e.to_string()))?;

        // Listen on exactly the addresses we advertise (checked again every
        // INTERFACE_CHECK: addresses come and go).
        let usable = interfaces::usable(&opts.interfaces);
        let targets = craftmesh_protocol::interfaces::listen_targets(&usable);
        let listen_port = match opts.listen_port {
            // One port on every address: let the OS pick it on the first address.
            0 => std::net::TcpListener::bind((targets[0], 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| MeshError::Listen { addr: targets[0].to_string(), reason: e.to_string() })?,
            p => p,
        };
        let mut listeners = Vec::new();
        for ip in &targets {
            listeners.push((*ip, interfaces::listen(&mut swarm, *ip, listen_port)?));
        }
        let mdns = if opts.mdns { interfaces::start_mdns(&usable, &me.to_base58(), &mesh_id, listen_port, api_port, true)? } else { None };
        for addr in &opts.static_peers {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial static peer");
            }
        }
        tracing::info!(mesh_id = %mesh_id, port = listen_port, addrs = ?targets, mdns = mdns.is_some(), "mesh up");
        let cfg = core::Config { membership: opts.membership, ..core::Config::default() };
        Ok(Mesh {
            swarm,
            core: MeshCore::new(keypair, mesh_id, cfg, last_version),
            topic,
            mdns,
            mdns_stopping: None,
            mdns_wanted: opts.mdns,
            browse_from: None,
            health,
            mdns_retry_at: None,
            prober,
            probe_sent: HashMap::new(),
            requests: HashMap::new(),
            channels: HashMap::new(),
            next_channel: 1,
            epoch: Instant::now(),
            events: VecDeque::new(),
            stats: MeshStats::default(),
            listen_port,
            api_port,
            listeners,
            policy: opts.interfaces,
            next_interface_check: Instant::now() + INTERFACE_CHECK,
            tags: opts.tags,
            mcp_registered: BTreeMap::new(),
            version_file,
        })
    }

    pub fn mesh_id(&self) -> &str {
        self.core.mesh_id()
    }

    /// A handle to open and accept protocol streams on the mesh's connections (claims).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().stream.new_control()
    }

    /// Every member's liveness, for the claims service.
    pub fn liveness(&self) -> std::collections::BTreeMap<String, crate::claims::Liveness> {
        self.core.membership().members().map(|(id, m)| (id.clone(), crate::claims::Liveness { alive: m.state == State::Alive, crashed: m.crashed })).collect()
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Addresses this node advertises (and listens on).
    pub fn advertised(&self) -> Vec<IpAddr> {
        self.listeners.iter().map(|(ip, _)| *ip).collect()
    }

    /// Counters, the core's and the mesh's own.
    pub fn stats(&self) -> MeshStats {
        MeshStats { core: self.core.stats().clone(), strangers: self.core.strangers(), ..self.stats.clone() }
    }

    /// Outside `_mcp._tcp` adverts (unverified).
    pub fn externals(&self) -> Vec<External> {
        self.core.externals().cloned().collect()
    }

    /// Distinct nodes of other meshes seen recently on the LAN.
    pub fn other_meshes(&self) -> usize {
        self.core.other_meshes()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits for the next input. Cancel-safe: nothing is lost if dropped.
    pub async fn next(&mut self) -> Input {
        let deadline = self.core.poll_timeout().map(|t| self.epoch + Duration::from_millis(t));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => futures::future::pending::<()>().await,
            }
        };
        let mdns = self.mdns.as_ref();
        let node_ev = async {
            match mdns {
                Some(Mdns { node_rx: Some(rx), .. }) => rx.recv_async().await.ok(),
                _ => futures::future::pending().await,
            }
        };
        let mcp_ev = async {
            match mdns {
                Some(Mdns { mcp_rx: Some(rx), .. }) => rx.recv_async().await.ok(),
                _ => futures::future::pending().await,
            }
        };
        let check_at = self.next_interface_check;
        use futures::StreamExt as _;
        tokio::select! {
            ev = self.swarm.select_next_some() => Input::Swarm(Box::new(ev)),
            () = tokio::time::sleep_until(check_at.into()) => Input::Interfaces,
            Some(ev) = self.prober.events_rx.recv() => Input::Probe(ev),
            ev = node_ev => ev.map(|e| mdns::interpret(e).map(Input::Mdns).unwrap_or(Input::Timer)).unwrap_or(Input::MdnsGone),
            ev = mcp_ev => ev.map(|e| mdns::interpret(e).map(Input::Mdns).unwrap_or(Input::Timer)).unwrap_or(Input::MdnsGone),
            () = sleep => Input::Timer,
        }
    }

    /// Handles one input and carries out what the core decided.
    pub fn handle(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Swarm(ev) => self.on_swarm(*ev, now),
            Input::Mdns(seen) => self.on_mdns(seen, now),
            Input::MdnsGone => {
                if let Some(m) = self.mdns.take() {
                    self.stats.mdns_restarts += 1;
                    let delay = self.health.record_failure("mdns", "the mDNS daemon stopped unexpectedly");
                    self.mdns_retry_at = Some(Instant::now() + delay);
                    self.mdns_stopping = Some(tokio::task::spawn_blocking(move || m.shutdown()));
                    self.mcp_registered.clear();
                }
            }
            Input::Probe(ev) => match ev {
                probe::ProbeEvent::Ack { peer, seq } => {
                    if let Some(sent) = self.probe_sent.remove(&(peer, seq)) {
                        self.core.handle_probe_ack(&peer.to_base58(), seq, sent.elapsed().as_secs_f64() * 1000.0, now);
                    }
                }
                probe::ProbeEvent::Failed { peer, seq } => {
                    self.probe_sent.remove(&(peer, seq));
                    self.core.handle_probe_failed(&peer.to_base58(), seq, now);
                }
            },
            Input::Interfaces => {
                self.check_interfaces();
                if self.prober.accept_ended() {
                    // Counted (`tasks` and the mesh stats) and logged; restarted at this
                    // check, every 5 s at most: every peer's probes depend on it.
                    self.stats.probe_listener_restarts += 1;
                    let _ = self.health.record_failure("probe-listener", "the inbound probe listener ended unexpectedly");
                    self.prober.restart_accept();
                }
            }
            Input::Timer => {}
        }
        self.core.handle_timeout(now);
        self.execute();
    }

    /// Events for the API and logs.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    /// Drops the mDNS daemon (and its cache) because a flood of adverts is filling it; a
    /// new one starts at the next address check and browses after `quiet`.
    pub(super) fn reset_mdns(&mut self, quiet: Duration) {
        let Some(m) = self.mdns.take() else { return };
        tracing::warn!(quiet_s = quiet.as_secs(), "a flood of DNS-SD adverts: restarting mDNS with an empty cache; browsing again later");
        self.mdns_stopping = Some(tokio::task::spawn_blocking(move || m.shutdown()));
        self.mcp_registered.clear();
        self.browse_from = Some(Instant::now() + quiet);
        self.next_interface_check = self.next_interface_check.min(Instant::now() + Duration::from_secs(1));
    }

    /// Follows address changes: listens on addresses that appeared, stops listening on
    /// those that went away, restarts mDNS on the new set (goodbyes for the old one first)
    /// and republishes the record with the new addresses at the next round.
    fn check_interfaces(&mut self) {
        self.next_interface_check = Instant::now() + INTERFACE_CHECK;
        let usable = interfaces::usable(&self.policy);
        let wanted = craftmesh_protocol::interfaces::listen_targets(&usable);
        if let Some(change) = craftmesh_protocol::interfaces::address_change(&self.advertised(), &wanted) {
            tracing::info!(added = ?change.add, removed = ?change.remove, "addresses changed");
            for (_, id) in self.listeners.extract_if(.., |(ip, _)| change.remove.contains(ip)) {
                self.swarm.remove_listener(id);
            }
            for ip in change.add {
                match interfaces::listen(&mut self.swarm, ip, self.listen_port) {
                    Ok(id) => self.listeners.push((ip, id)),
                    Err(e) => tracing::warn!(error = %e, "cannot listen on a new address"),
                }
            }
            if let Some(old) = self.mdns.take() {
                self.mdns_stopping = Some(tokio::task::spawn_blocking(move || old.shutdown()));
            }
            self.mcp_registered.clear();
            // The next round republishes (the record carries the addresses).
            self.core.republish_soon();
        }
        let stopped = self.mdns_stopping.as_ref().is_none_or(|h| h.is_finished()) && self.mdns_retry_at.is_none_or(|t| Instant::now() >= t);
        let browse = self.browse_from.is_none_or(|t| Instant::now() >= t);
        if self.mdns_wanted && self.mdns.is_none() && stopped {
            self.mdns_stopping = None;
            match interfaces::start_mdns(&usable, self.core.me(), self.core.mesh_id(), self.listen_port, self.api_port, browse) {
                Ok(m) => {
                    if m.is_some() && self.mdns_retry_at.take().is_some() {
                        tracing::info!("mDNS started again");
                    }
                    self.mdns = m;
                }
                Err(e) => tracing::warn!(error = %e, "mDNS did not start on the current addresses; trying again at the next check"),
            }
        }
        if browse && let Some(m) = self.mdns.as_mut().filter(|m| !m.browsing()) {
            self.browse_from = None;
            tracing::info!("browsing DNS-SD again after the advert flood");
            if let Err(e) = m.browse() {
                tracing::warn!(error = %e, "cannot browse DNS-SD");
            }
        }
    }

    /// Publishes this node's record (a new version) with the given services and capacity,
    /// when they changed or the last one is due for a refresh.
    pub fn publish_record(&mut self, name: &str, api_port: u16, services: Vec<wire::ServiceAd>, capacity: wire::Capacity) {
        let addrs = self.advertised().iter().filter(|ip| !ip.is_loopback()).map(|ip| format!("/ip4/{ip}/tcp/{}", self.listen_port)).collect();
        let record = core::record(name, addrs, api_port, services, capacity, self.tags.clone(), env!("CARGO_PKG_VERSION"));
        let now = self.now();
        if let Some(v) = self.core.publish_record(record, crate::discovery::now_ms(), now)
            && let Some(path) = &self.version_file
            && let Err(e) = write_version(path, v)
        {
            tracing::warn!(file = %path.display(), error = %e, "cannot persist the record version");
        }
        self.execute();
    }

    /// Registers `_mcp._tcp` adverts for healthy local MCP servers (and drops stale ones).
    pub fn advertise_mcp(&mut self, servers: &[(String, u16, String, String)]) {
        let Some(m) = self.mdns.as_mut() else { return };
        let wanted: BTreeMap<String, (u16, String, String)> = servers.iter().map(|(n, p, path, v)| (n.clone(), (*p, path.clone(), v.clone()))).collect();
        let stale: Vec<String> = self.mcp_registered.keys().filter(|n| !wanted.contains_key(*n)).cloned().collect();
        for n in stale {
            if let Some(full) = self.mcp_registered.remove(&n) {
                m.unregister(&full);
            }
        }
        for (n, (port, path, version)) in wanted {
            if self.mcp_registered.contains_key(&n) {
                continue;
            }
            match m.register_mcp(&n, port, &path, &version, self.core.me()) {
                Ok(full) => {
                    self.mcp_registered.insert(n, full);
                }
                Err(e) => tracing::debug!(error = %e, "cannot advertise MCP server"),
            }
        }
    }

    /// Says goodbye: a signed leave on gossip, then mDNS goodbye packets.
    pub async fn leave(mut self) {
        if let Some(l) = self.core.leave() {
            self.publish(&l);
        }
        // Give the leave a moment to go out on the connections we have.
        let until = tokio::time::Instant::now() + Duration::from_millis(150);
        use futures::StreamExt as _;
        while let Ok(ev) = tokio::time::timeout_at(until, self.swarm.select_next_some()).await {
            drop(ev);
        }
        if let Some(m) = self.mdns.take() {
            let _ = tokio::task::spawn_blocking(move || m.shutdown()).await;
        }
    }

    /// Members as the API shows them.
    pub fn members(&self) -> Vec<MemberView> {
        let now = self.now();
        self.core
            .membership()
            .members()
            .map(|(id, m)| {
                let rec = self.core.records().get(id).map(|e| &e.record);
                MemberView {
                    id: id.clone(),
                    name: rec.map(|r| r.name.clone()),
                    addresses: self.core.addrs(id),
                    state: m.state,
                    incarnation: m.incarnation,
                    last_seen_ms_ago: now.saturating_sub(m.last_seen_ms),
                    rtt_ms: m.rtt_ms.map(|r| (r * 100.0).round() / 100.0),
                    capacity: rec.map(|r| r.capacity.clone()),
                    tags: rec.map(|r| r.tags.clone()).unwrap_or_default(),
                    version: rec.map(|r| r.version),
                    crashed: m.crashed,
                }
            })
            .collect()
    }

    /// Remote services of members that are alive, with the member's RTT.
    pub fn remote_services(&self) -> Vec<(String, String, Option<f64>, wire::ServiceAd)> {
        let mut out = Vec::new();
        for e in self.core.records().iter() {
            let m = self.core.membership().get(&e.record.peer_id);
            if m.is_none_or(|m| m.state != State::Alive) {
                continue;
            }
            for s in &e.record.services {
                out.push((e.record.peer_id.clone(), e.record.name.clone(), m.and_then(|m| m.rtt_ms), s.clone()));
            }
        }
        out
    }
}
