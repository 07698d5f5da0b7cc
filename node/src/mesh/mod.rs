//! The mesh: libp2p (TCP, optional pnet, Noise, Yamux, identify, gossipsub,
//! request-response) plus DNS-SD adverts. Decisions come from `craftmesh_protocol`
//! (`state::Records` merges records, `membership::Membership` decides liveness); this
//! module only moves bytes and feeds observations in.

pub mod codec;
pub mod interfaces;
pub mod keys;
pub mod mdns;
pub mod probe;

use codec::Codec;
use craftmesh_protocol::membership::{self, Action, Membership, State};
use craftmesh_protocol::state::{Merged, Records};
use craftmesh_protocol::wire::{self, Message, NodeRecord, SignedRecord};
use futures::StreamExt as _;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, tcp, yamux};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

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
}

#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)]
pub struct Behaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::Behaviour<Codec>,
    stream: libp2p_stream::Behaviour,
}

/// One input for the mesh, produced by [`Mesh::next`].
#[derive(Debug)]
pub enum Input {
    Swarm(Box<SwarmEvent<BehaviourEvent>>),
    Probe(probe::ProbeEvent),
    Mdns(mdns::Seen),
    /// Time to look for address changes.
    Interfaces,
    Timer,
}

/// Something the app (API events, logs) cares about.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MeshEvent {
    Member { peer: String, name: Option<String>, from: Option<State>, to: State },
    Forgotten { peer: String },
    Record { peer: String, name: String, version: u64, services: usize },
    External { name: String, url: String, verified: bool },
}

/// Counters of rejected input, by reason (shown in `/v1/node`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MeshStats {
    pub rejected: BTreeMap<String, u64>,
    pub records_merged: u64,
    pub gossip_received: u64,
    pub probes_sent: u64,
}

impl MeshStats {
    fn reject(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }
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
}

/// An MCP server advertised on the LAN by something outside the mesh.
#[derive(Debug, Clone, Serialize)]
pub struct External {
    pub name: String,
    pub url: String,
    pub addresses: Vec<String>,
    pub verified: bool,
    #[serde(skip)]
    pub fullname: String,
}

/// The running mesh of this node.
pub struct Mesh {
    pub swarm: Swarm<Behaviour>,
    keypair: libp2p_identity::Keypair,
    me: String,
    mesh_id: String,
    topic: IdentTopic,
    pub records: Records,
    pub membership: Membership,
    mdns: Option<mdns::Mdns>,
    addrs_of: HashMap<PeerId, Vec<Multiaddr>>,
    own: Option<SignedRecord>,
    own_version: u64,
    probes: HashMap<OutboundRequestId, (PeerId, u64, Instant)>,
    prober: probe::Prober,
    probe_sent: HashMap<(PeerId, u64), Instant>,
    indirect: HashMap<OutboundRequestId, (PeerId, u64, String)>,
    relay_channels: HashMap<(String, u64), ResponseChannel<Message>>,
    epoch: Instant,
    pub stats: MeshStats,
    events: VecDeque<MeshEvent>,
    pub externals: BTreeMap<String, External>,
    listen_port: u16,
    api_port: u16,
    /// What we listen on (and advertise): the usable IPv4 addresses, or loopback alone
    /// while there is none.
    listeners: Vec<(IpAddr, libp2p::core::transport::ListenerId)>,
    policy: interfaces::InterfacePolicy,
    mdns_wanted: bool,
    /// The mDNS daemon of the previous address set, saying goodbye; the new one starts
    /// once it is done, so no late goodbye cancels a fresh announcement.
    mdns_stopping: Option<tokio::task::JoinHandle<()>>,
    next_interface_check: Instant,
    tags: Vec<String>,
    mcp_registered: BTreeMap<String, String>,
    last_published: Option<(Vec<wire::ServiceAd>, Instant)>,
}

/// A record is re-published at least this often even when its services did not change
/// (capacity drifts slowly; every republish costs each node a copy from several peers).
const REFRESH_RECORD: Duration = Duration::from_secs(600);

/// How often the node looks for addresses that appeared or went away (DHCP, Wi-Fi,
/// cables): new ones are listened on and advertised, gone ones dropped.
const INTERFACE_CHECK: Duration = Duration::from_secs(5);

fn listen(swarm: &mut Swarm<Behaviour>, ip: IpAddr, port: u16) -> Result<libp2p::core::transport::ListenerId, MeshError> {
    let addr: Multiaddr =
        format!("/ip4/{ip}/tcp/{port}").parse().map_err(|e: libp2p::multiaddr::Error| MeshError::Listen { addr: ip.to_string(), reason: e.to_string() })?;
    swarm.listen_on(addr.clone()).map_err(|e| MeshError::Listen { addr: addr.to_string(), reason: e.to_string() })
}

/// mDNS on the usable IPv4 interfaces, this node registered; `None` when there is none.
fn start_mdns(usable: &[(String, IpAddr)], me: &str, mesh_id: &str, port: u16, api_port: u16) -> Result<Option<mdns::Mdns>, MeshError> {
    let ifaces: Vec<(String, IpAddr)> = usable.iter().filter(|(_, ip)| ip.is_ipv4()).cloned().collect();
    if ifaces.is_empty() {
        return Ok(None);
    }
    let mut m = mdns::Mdns::start(&ifaces).map_err(|e| MeshError::Mdns(e.to_string()))?;
    m.register_node(me, mesh_id, port, api_port).map_err(|e| MeshError::Mdns(e.to_string()))?;
    Ok(Some(m))
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").field("me", &self.me).field("mesh_id", &self.mesh_id).finish()
    }
}

fn unix_ms() -> u64 {
    crate::discovery::now_ms()
}

impl Mesh {
    /// Builds the swarm, listens on the usable interfaces, starts mDNS and dials static peers.
    pub fn start(opts: MeshOptions, keypair: libp2p_identity::Keypair, api_port: u16) -> Result<Mesh, MeshError> {
        let mesh_id = keys::mesh_id(opts.key.as_ref());
        let me = keypair.public().to_peer_id();
        let psk = opts.key;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
            .with_tokio()
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let noise = noise::Config::new(key)?;
                let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
                let maybe_private = match psk {
                    Some(psk) => either::Either::Left(base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))),
                    None => either::Either::Right(base),
                };
                Ok(maybe_private.upgrade(Version::V1Lazy).authenticate(noise).multiplex(yamux::Config::default()).timeout(Duration::from_secs(3)))
            })
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_behaviour(|key| {
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .heartbeat_interval(Duration::from_secs(1))
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .validate_messages()
                    .max_transmit_size(wire::MAX_FRAME)
                    .build()
                    .map_err(|e| e.to_string())?;
                let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_cfg)?;
                let identify =
                    identify::Behaviour::new(identify::Config::new(format!("/craftmesh/1/{mesh_id}"), key.public()).with_push_listen_addr_updates(true));
                let rpc = request_response::Behaviour::with_codec(
                    Codec,
                    [(codec::PROTOCOL, ProtocolSupport::Full)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(5)),
                );
                Ok(Behaviour { identify, gossipsub, rpc, stream: libp2p_stream::Behaviour::new() })
            })
            .map_err(|e| MeshError::Transport(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(u64::from(u32::MAX))))
            .build();
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
            let id = listen(&mut swarm, *ip, listen_port)?;
            listeners.push((*ip, id));
        }
        let mdns_handle = if opts.mdns { start_mdns(&usable, &me.to_base58(), &mesh_id, listen_port, api_port)? } else { None };
        for addr in &opts.static_peers {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial static peer");
            }
        }
        tracing::info!(mesh_id = %mesh_id, port = listen_port, addrs = ?targets, mdns = mdns_handle.is_some(), "mesh up");
        Ok(Mesh {
            swarm,
            records: Records::new(mesh_id.clone(), me.to_base58()),
            membership: Membership::new(me.to_base58(), opts.membership),
            keypair,
            me: me.to_base58(),
            mesh_id,
            topic,
            mdns: mdns_handle,
            addrs_of: HashMap::new(),
            own: None,
            own_version: 0,
            probes: HashMap::new(),
            prober,
            probe_sent: HashMap::new(),
            indirect: HashMap::new(),
            relay_channels: HashMap::new(),
            epoch: Instant::now(),
            stats: MeshStats::default(),
            events: VecDeque::new(),
            externals: BTreeMap::new(),
            listen_port,
            api_port,
            listeners,
            policy: opts.interfaces,
            mdns_wanted: opts.mdns,
            mdns_stopping: None,
            next_interface_check: Instant::now() + INTERFACE_CHECK,
            tags: opts.tags,
            mcp_registered: BTreeMap::new(),
            last_published: None,
        })
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// Addresses this node advertises (and listens on).
    pub fn advertised(&self) -> Vec<IpAddr> {
        self.listeners.iter().map(|(ip, _)| *ip).collect()
    }

    /// Follows address changes: listens on addresses that appeared, stops listening on
    /// those that went away, restarts mDNS on the new set (goodbyes for the old one first)
    /// and republishes the record with the new addresses at the next round.
    /// Asks connected peers whose record we lack for a sync again (see [`Records::lacking`]).
    fn resync_lacking(&mut self) {
        let connected: Vec<String> = self.swarm.connected_peers().map(|p| p.to_base58()).collect();
        let lacking: Vec<PeerId> = self.records.lacking(connected.iter().map(String::as_str)).into_iter().filter_map(|p| p.parse().ok()).collect();
        if lacking.is_empty() {
            return;
        }
        let have = self.records.summary();
        for p in lacking {
            tracing::debug!(peer = %p, "no record of a connected peer: asking for a sync again");
            self.swarm.behaviour_mut().rpc.send_request(&p, Message::SyncRequest { mesh_id: self.mesh_id.clone(), have: have.clone() });
        }
    }

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
                match listen(&mut self.swarm, ip, self.listen_port) {
                    Ok(id) => self.listeners.push((ip, id)),
                    Err(e) => tracing::warn!(error = %e, "cannot listen on a new address"),
                }
            }
            if let Some(old) = self.mdns.take() {
                self.mdns_stopping = Some(tokio::task::spawn_blocking(move || old.shutdown()));
            }
            self.mcp_registered.clear();
            // The next round republishes (the record carries the addresses).
            self.last_published = None;
        }
        let stopped = self.mdns_stopping.as_ref().is_none_or(|h| h.is_finished());
        if self.mdns_wanted && self.mdns.is_none() && stopped {
            self.mdns_stopping = None;
            match start_mdns(&usable, &self.me, &self.mesh_id, self.listen_port, self.api_port) {
                Ok(m) => self.mdns = m,
                Err(e) => tracing::debug!(error = %e, "mDNS did not start on the current addresses; trying again"),
            }
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits for the next input. Cancel-safe: nothing is lost if dropped.
    pub async fn next(&mut self) -> Input {
        let deadline = self.membership.poll_timeout().map(|t| self.epoch + Duration::from_millis(t));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => futures::future::pending::<()>().await,
            }
        };
        let mdns = self.mdns.as_ref();
        let node_ev = async {
            match mdns {
                Some(m) => m.node_rx.recv_async().await.ok(),
                None => futures::future::pending().await,
            }
        };
        let mcp_ev = async {
            match mdns {
                Some(m) => m.mcp_rx.recv_async().await.ok(),
                None => futures::future::pending().await,
            }
        };
        let check_at = self.next_interface_check;
        tokio::select! {
            ev = self.swarm.select_next_some() => Input::Swarm(Box::new(ev)),
            () = tokio::time::sleep_until(check_at.into()) => Input::Interfaces,
            Some(ev) = self.prober.events_rx.recv() => Input::Probe(ev),
            Some(ev) = node_ev => mdns::interpret(ev).map(Input::Mdns).unwrap_or(Input::Timer),
            Some(ev) = mcp_ev => mdns::interpret(ev).map(Input::Mdns).unwrap_or(Input::Timer),
            () = sleep => Input::Timer,
        }
    }

    /// Handles one input and carries out what the protocol decided.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Swarm(ev) => self.on_swarm(*ev),
            Input::Mdns(seen) => self.on_mdns(seen),
            Input::Probe(ev) => {
                let now = self.now();
                match ev {
                    probe::ProbeEvent::Ack { peer, seq } => {
                        if let Some(sent) = self.probe_sent.remove(&(peer, seq)) {
                            self.membership.handle_ack(&peer.to_base58(), seq, sent.elapsed().as_secs_f64() * 1000.0, now);
                        }
                    }
                    probe::ProbeEvent::Failed { peer, seq } => {
                        self.probe_sent.remove(&(peer, seq));
                        self.membership.handle_probe_failed(&peer.to_base58(), seq, now);
                    }
                }
            }
            Input::Interfaces => {
                self.check_interfaces();
                self.resync_lacking();
            }
            Input::Timer => {}
        }
        let now = self.now();
        self.membership.handle_timeout(now);
        self.flush();
    }

    /// Events for the API and logs.
    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        let now = self.now();
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } => {
                if endpoint.is_dialer() {
                    remember_addrs(&mut self.addrs_of, peer_id, [endpoint.get_remote_address().clone()]);
                }
                if num_established.get() == 1 {
                    self.membership.handle_connected(&peer_id.to_base58(), now);
                    let have = self.records.summary();
                    self.swarm.behaviour_mut().rpc.send_request(&peer_id, Message::SyncRequest { mesh_id: self.mesh_id.clone(), have });
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                self.prober.forget(&peer_id);
                let graceful = self.membership.get(&peer_id.to_base58()).is_some_and(|m| m.state == State::Left);
                tracing::debug!(peer = %peer_id, ?cause, graceful, "connection closed");
                self.membership.handle_disconnected(&peer_id.to_base58(), !graceful, now);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                let refused = is_refused(&error);
                tracing::debug!(%peer, refused, error = %error, "dial failed");
                self.membership.handle_dial_failed(&peer.to_base58(), refused, now);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // Wrong key, no key, garbage: the handshake fails here.
                tracing::debug!(%error, "incoming connection rejected");
                self.stats.reject("handshake");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                if info.protocol_version != format!("/craftmesh/1/{}", self.mesh_id) {
                    self.stats.reject("identify_other_mesh");
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                remember_addrs(&mut self.addrs_of, peer_id, info.listen_addrs.into_iter().filter(|a| !is_loopback(a)));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) => {
                self.stats.gossip_received += 1;
                let verdict = self.on_gossip(message.source, &message.data, now);
                let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. })) => match message {
                request_response::Message::Request { request, channel, .. } => self.on_request(peer, request, channel, now),
                request_response::Message::Response { request_id, response } => self.on_response(peer, request_id, response, now),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, peer, error, .. })) => {
                if let Some((p, seq, _)) = self.probes.remove(&request_id) {
                    tracing::trace!(%peer, %error, "probe failed");
                    self.membership.handle_probe_failed(&p.to_base58(), seq, now);
                }
                self.indirect.remove(&request_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::InboundFailure { error, .. })) => {
                tracing::debug!(%error, "inbound request failed");
                self.stats.reject("rpc_inbound");
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, source: Option<PeerId>, data: &[u8], now: u64) -> MessageAcceptance {
        let msg = match wire::decode(data) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "bad gossip frame");
                self.stats.reject("frame");
                return MessageAcceptance::Reject;
            }
        };
        let Some(source) = source else {
            self.stats.reject("unsigned");
            return MessageAcceptance::Reject;
        };
        self.membership.handle_heard_from(&source.to_base58(), now);
        match msg {
            Message::Record(s) => self.merge_record(&s, now),
            Message::Leave(l) => match self.records.leave(&l) {
                Ok(_) => {
                    self.membership.handle_leave(&l.peer_id, now);
                    MessageAcceptance::Accept
                }
                Err(e) => {
                    tracing::debug!(error = %e, "leave rejected");
                    self.stats.reject("leave");
                    MessageAcceptance::Reject
                }
            },
            Message::Member { peer, incarnation, rumor } => {
                self.membership.handle_rumor(&source.to_base58(), &peer, incarnation, rumor, now);
                MessageAcceptance::Accept
            }
            _ => {
                self.stats.reject("unexpected_gossip");
                MessageAcceptance::Reject
            }
        }
    }

    fn merge_record(&mut self, s: &SignedRecord, now: u64) -> MessageAcceptance {
        match self.records.merge(s) {
            Ok(m) => {
                self.stats.records_merged += 1;
                if let Some(e) = self.records.get(m.peer()).map(|e| e.record.clone()) {
                    tracing::debug!(peer = %e.peer_id, version = e.version, new = matches!(m, Merged::New { .. }), "record merged");
                    self.events.push_back(MeshEvent::Record { peer: e.peer_id.clone(), name: e.name.clone(), version: e.version, services: e.services.len() });
                    if let Ok(p) = e.peer_id.parse::<PeerId>() {
                        // Newer than any leave (Records checked that): a new run of the node.
                        self.membership.handle_rejoined(&e.peer_id, now);
                        remember_addrs(&mut self.addrs_of, p, e.addrs.iter().take(MAX_ADDRS).filter_map(|a| a.parse::<Multiaddr>().ok()));
                        if !self.swarm.is_connected(&p) && p.to_base58() != self.me {
                            let _ = self.swarm.dial(
                                DialOpts::peer_id(p)
                                    .addresses(self.addrs_of.get(&p).cloned().unwrap_or_default())
                                    .condition(PeerCondition::DisconnectedAndNotDialing)
                                    .build(),
                            );
                        }
                    }
                }
                MessageAcceptance::Accept
            }
            Err(craftmesh_protocol::state::Rejected::Stale { .. }) | Err(craftmesh_protocol::state::Rejected::Own) => MessageAcceptance::Ignore,
            Err(e) => {
                tracing::debug!(error = %e, "record rejected");
                self.stats.reject(match e {
                    craftmesh_protocol::state::Rejected::Invalid(wire::VerifyError::OtherMesh(_)) => "record_other_mesh",
                    craftmesh_protocol::state::Rejected::Invalid(wire::VerifyError::BadSignature) => "record_signature",
                    craftmesh_protocol::state::Rejected::AfterLeave { .. } => "record_replay",
                    _ => "record_invalid",
                });
                MessageAcceptance::Reject
            }
        }
    }

    fn on_request(&mut self, peer: PeerId, req: Message, channel: ResponseChannel<Message>, now: u64) {
        let rpc = &mut self.swarm.behaviour_mut().rpc;
        match req {
            Message::Probe { seq } => {
                let _ = rpc.send_response(channel, Message::Ack { seq });
                self.membership.handle_heard_from(&peer.to_base58(), now);
            }
            Message::ProbeRequest { req, target } => {
                self.relay_channels.insert((peer.to_base58(), req), channel);
                self.membership.handle_probe_request(&peer.to_base58(), req, &target, now);
            }
            Message::SyncRequest { mesh_id, have } => {
                if mesh_id != self.mesh_id {
                    self.stats.reject("sync_other_mesh");
                    let _ = rpc.send_response(channel, Message::SyncResponse { records: Vec::new() });
                    return;
                }
                let mut records = self.records.newer_than(&have, &peer.to_base58(), 256);
                if let Some(own) = &self.own {
                    records.push(own.clone());
                }
                let _ = rpc.send_response(channel, Message::SyncResponse { records });
            }
            _ => {
                self.stats.reject("unexpected_request");
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, resp: Message, now: u64) {
        match resp {
            Message::Ack { seq } => {
                if let Some((p, s, sent)) = self.probes.remove(&id)
                    && p == peer
                    && s == seq
                {
                    let rtt = sent.elapsed().as_secs_f64() * 1000.0;
                    self.membership.handle_ack(&peer.to_base58(), seq, rtt, now);
                }
            }
            Message::ProbeResponse { req, target, alive } => {
                if let Some((via, seq, t)) = self.indirect.remove(&id)
                    && via == peer
                    && seq == req
                    && t == target
                {
                    self.membership.handle_probe_reply(&via.to_base58(), seq, &target, alive, now);
                }
            }
            Message::SyncResponse { records } => {
                for r in records.iter().take(512) {
                    self.merge_record(r, now);
                }
            }
            _ => self.stats.reject("unexpected_response"),
        }
    }

    fn on_mdns(&mut self, seen: mdns::Seen) {
        match seen {
            mdns::Seen::Node(n) => {
                if n.peer_id == self.me {
                    return;
                }
                if n.mesh_id != self.mesh_id {
                    self.stats.reject("advert_other_mesh");
                    return;
                }
                let Ok(peer) = n.peer_id.parse::<PeerId>() else { return };
                let addrs: Vec<Multiaddr> =
                    n.addrs.iter().filter(|a| a.is_ipv4() && !a.is_loopback()).filter_map(|a| format!("/ip4/{a}/tcp/{}", n.port).parse().ok()).collect();
                remember_addrs(&mut self.addrs_of, peer, addrs.iter().cloned());
                if !self.swarm.is_connected(&peer) && !addrs.is_empty() {
                    tracing::debug!(%peer, ?addrs, "dialling peer found by mDNS");
                    let _ = self.swarm.dial(DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build());
                }
            }
            mdns::Seen::Mcp(a) => {
                let ours = a.node.as_deref().is_some_and(|n| n == self.me || self.records.get(n).is_some());
                if ours {
                    return; // mesh members' servers travel in their signed records
                }
                let Some(ip) = a.addrs.iter().find(|ip| ip.is_ipv4()).copied() else { return };
                let url = format!("http://{ip}:{}{}", a.port, a.path);
                let entry = External {
                    name: a.name.clone(),
                    url: url.clone(),
                    addresses: a.addrs.iter().map(|x| x.to_string()).collect(),
                    verified: false,
                    fullname: a.fullname.clone(),
                };
                if self.externals.len() < 64 || self.externals.contains_key(&a.fullname) {
                    self.events.push_back(MeshEvent::External { name: a.name, url, verified: false });
                    self.externals.insert(a.fullname, entry);
                } else {
                    self.stats.reject("advert_flood");
                }
            }
            mdns::Seen::Removed { fullname } => {
                self.externals.remove(&fullname);
            }
            mdns::Seen::Rejected { fullname, reason } => {
                tracing::debug!(%fullname, %reason, "advert rejected");
                self.stats.reject("advert_invalid");
            }
        }
    }

    /// Carries out membership actions and turns its events into mesh events.
    fn flush(&mut self) {
        while let Some(a) = self.membership.poll_action() {
            match a {
                Action::Probe { peer, seq } => {
                    let Ok(p) = peer.parse::<PeerId>() else { continue };
                    self.stats.probes_sent += 1;
                    self.probe_sent.insert((p, seq), Instant::now());
                    self.prober.probe(p, seq);
                }
                Action::IndirectProbe { via, target, seq } => {
                    let Ok(v) = via.parse::<PeerId>() else { continue };
                    let id = self.swarm.behaviour_mut().rpc.send_request(&v, Message::ProbeRequest { req: seq, target: target.clone() });
                    self.indirect.insert(id, (v, seq, target));
                }
                Action::ProbeReply { origin, req, target, alive } => {
                    if let Some(ch) = self.relay_channels.remove(&(origin, req)) {
                        let _ = self.swarm.behaviour_mut().rpc.send_response(ch, Message::ProbeResponse { req, target, alive });
                    }
                }
                Action::Broadcast { peer, incarnation, rumor } => self.publish(&Message::Member { peer, incarnation, rumor }),
                Action::Redial { peer } => {
                    let Ok(p) = peer.parse::<PeerId>() else { continue };
                    let addrs = self.addrs_of.get(&p).cloned().unwrap_or_default();
                    if addrs.is_empty() {
                        let now = self.now();
                        self.membership.handle_dial_failed(&peer, false, now);
                        continue;
                    }
                    let _ = self.swarm.dial(DialOpts::peer_id(p).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build());
                }
            }
        }
        while let Some(e) = self.membership.poll_event() {
            match e {
                membership::Event::Changed { peer, from, to } => {
                    if matches!(to, State::Dead | State::Left) {
                        // A connection that outlived the verdict (a cut-off host keeps its
                        // TCP state) would stop the redial from ever making a fresh one.
                        if let Ok(p) = peer.parse::<PeerId>() {
                            let _ = self.swarm.disconnect_peer_id(p);
                        }
                    }
                    let name = self.records.get(&peer).map(|r| r.record.name.clone());
                    tracing::info!(%peer, name = name.as_deref().unwrap_or("?"), ?from, ?to, "member state");
                    self.events.push_back(MeshEvent::Member { peer, name, from, to });
                }
                membership::Event::Forgotten { peer } => {
                    self.records.forget(&peer);
                    if let Ok(p) = peer.parse::<PeerId>() {
                        self.addrs_of.remove(&p);
                    }
                    self.events.push_back(MeshEvent::Forgotten { peer });
                }
            }
        }
        // request ids of requests that can no longer be answered are dropped by libp2p's
        // own timeouts; keep our maps bounded anyway
        if self.probes.len() > 4096 {
            self.probes.clear();
        }
        if self.probe_sent.len() > 4096 {
            // acks that never came (the membership timed them out long ago)
            self.probe_sent.retain(|_, t| t.elapsed() < Duration::from_secs(10));
        }
        if self.indirect.len() > 4096 {
            self.indirect.clear();
        }
        if self.relay_channels.len() > 4096 {
            self.relay_channels.clear();
        }
    }

    fn publish(&mut self, msg: &Message) {
        let bytes = wire::encode(msg);
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::debug!(error = %e, "publish failed"),
        }
    }

    /// Publishes this node's record (a new version) with the given services and capacity.
    /// Skipped when the services are unchanged and the last record is younger than [`REFRESH_RECORD`].
    pub fn publish_record(&mut self, name: &str, api_port: u16, services: Vec<wire::ServiceAd>, capacity: wire::Capacity) {
        if let Some((last, at)) = &self.last_published
            && *last == services
            && at.elapsed() < REFRESH_RECORD
        {
            return;
        }
        self.last_published = Some((services.clone(), Instant::now()));
        let version = self.own_version.saturating_add(1).max(unix_ms());
        self.own_version = version;
        let addrs = self.advertised().iter().filter(|ip| !ip.is_loopback()).map(|ip| format!("/ip4/{ip}/tcp/{}", self.listen_port)).collect();
        let record = NodeRecord {
            peer_id: self.me.clone(),
            mesh_id: self.mesh_id.clone(),
            version,
            issued_at_ms: unix_ms(),
            name: name.to_string(),
            addrs,
            api_port,
            services,
            capacity,
            tags: self.tags.clone(),
            software_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        match wire::sign_record(&record, &self.keypair) {
            Ok(s) => {
                self.own = Some(s.clone());
                self.publish(&Message::Record(s));
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign own record"),
        }
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
            match m.register_mcp(&n, port, &path, &version, &self.me) {
                Ok(full) => {
                    self.mcp_registered.insert(n, full);
                }
                Err(e) => tracing::debug!(error = %e, "cannot advertise MCP server"),
            }
        }
    }

    /// Says goodbye: a signed leave on gossip, then mDNS goodbye packets.
    pub async fn leave(mut self) {
        match wire::sign_leave(&self.me, &self.mesh_id, self.own_version.max(1), &self.keypair) {
            Ok(l) => self.publish(&Message::Leave(l)),
            Err(e) => tracing::warn!(error = %e, "cannot sign leave"),
        }
        // Give the leave a moment to go out on the connections we have.
        let until = tokio::time::Instant::now() + Duration::from_millis(150);
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
        self.membership
            .members()
            .map(|(id, m)| {
                let rec = self.records.get(id).map(|e| &e.record);
                let addresses =
                    id.parse::<PeerId>().ok().and_then(|p| self.addrs_of.get(&p)).map(|v| v.iter().map(|a| a.to_string()).collect()).unwrap_or_default();
                MemberView {
                    id: id.clone(),
                    name: rec.map(|r| r.name.clone()),
                    addresses,
                    state: m.state,
                    incarnation: m.incarnation,
                    last_seen_ms_ago: now.saturating_sub(m.last_seen_ms),
                    rtt_ms: m.rtt_ms.map(|r| (r * 100.0).round() / 100.0),
                    capacity: rec.map(|r| r.capacity.clone()),
                    tags: rec.map(|r| r.tags.clone()).unwrap_or_default(),
                    version: rec.map(|r| r.version),
                }
            })
            .collect()
    }

    /// Remote services of members that are alive, with the member's RTT.
    pub fn remote_services(&self) -> Vec<(String, String, Option<f64>, wire::ServiceAd)> {
        let mut out = Vec::new();
        for e in self.records.iter() {
            let m = self.membership.get(&e.record.peer_id);
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

/// Addresses kept per peer (from dials, identify, records and mDNS).
const MAX_ADDRS: usize = 16;

/// Adds `addrs` to what we know of `peer`: without a trailing `/p2p/<id>` (the same address
/// either way), without duplicates, at most [`MAX_ADDRS`].
fn remember_addrs(addrs_of: &mut HashMap<PeerId, Vec<Multiaddr>>, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
    let list = addrs_of.entry(peer).or_default();
    for mut a in addrs {
        if matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
            a.pop();
        }
        if list.len() < MAX_ADDRS && !list.contains(&a) {
            list.push(a);
        }
    }
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter()
        .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ip4(ip) if ip.is_loopback()) || matches!(p, libp2p::multiaddr::Protocol::Ip6(ip) if ip.is_loopback()))
}

/// Whether a dial error says the host answered with a refusal (nothing listens there)
/// on every address tried.
fn is_refused(e: &libp2p::swarm::DialError) -> bool {
    let libp2p::swarm::DialError::Transport(list) = e else { return false };
    !list.is_empty() && list.iter().all(|(_, te)| chain_refused(te))
}

/// Walks an error's chain, looking inside `io::Error` wrappers too (whose `source()`
/// skips the wrapped error itself).
fn chain_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut stack: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    let mut seen = 0;
    while let Some(cur) = stack.pop() {
        seen += 1;
        if seen > 32 {
            break;
        }
        // Boxed errors in the chain defeat downcasting; their text still says it.
        let text = cur.to_string();
        if text.contains("Connection refused") || text.contains("os error 111") {
            return true;
        }
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                stack.push(inner);
            }
        }
        if let Some(s) = cur.source() {
            stack.push(s);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_addresses_drop_the_p2p_suffix_and_duplicates() {
        let peer = PeerId::random();
        let plain: Multiaddr = "/ip4/10.0.0.2/tcp/7411".parse().expect("multiaddr");
        let with_id: Multiaddr = format!("/ip4/10.0.0.2/tcp/7411/p2p/{peer}").parse().expect("multiaddr");
        let mut known = HashMap::new();
        remember_addrs(&mut known, peer, [plain.clone(), with_id, plain.clone()]);
        assert_eq!(known[&peer], vec![plain]);
        let many = (0..40u16).map(|p| format!("/ip4/10.0.0.3/tcp/{p}").parse::<Multiaddr>().expect("multiaddr"));
        remember_addrs(&mut known, peer, many);
        assert_eq!(known[&peer].len(), MAX_ADDRS);
    }
}
