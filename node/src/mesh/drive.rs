//! The seam between libp2p/mDNS and the core: swarm events and adverts become core inputs,
//! core actions become swarm calls.

use super::swarm::{self, BehaviourEvent};
use super::{Mesh, interfaces, mdns};
use craftmesh_protocol::mesh::{Action, McpSeen, NodeSeen, Verdict};
use craftmesh_protocol::wire::{self, Message};
use libp2p::gossipsub::{self, MessageAcceptance};
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, identify};
use std::time::{Duration, Instant};

/// Safety bounds on the effect side's own maps (libp2p answers or fails every request,
/// and the core answers or releases every inbound one; these only guard against a bug).
const MAX_IN_FLIGHT: usize = 4096;

impl Mesh {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>, now: u64) {
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, num_established, .. } if num_established.get() == 1 => {
                let dialled = endpoint.is_dialer().then(|| endpoint.get_remote_address().clone()).and_then(interfaces::normalize);
                self.core.handle_connected(&peer_id.to_base58(), dialled, now);
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                self.prober.forget(&peer_id);
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.core.handle_disconnected(&peer_id.to_base58(), now);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                let refused = swarm::is_refused(&error);
                tracing::debug!(%peer, refused, error = %error, "dial failed");
                self.core.handle_dial_failed(&peer.to_base58(), refused, now);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                // Wrong key, no key, garbage: the handshake fails here.
                tracing::debug!(%error, "incoming connection rejected");
                self.core.reject("handshake");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                let addrs = info.listen_addrs.into_iter().filter_map(interfaces::normalize).collect();
                self.core.handle_identify(&peer_id.to_base58(), &info.protocol_version, addrs, now);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message })) => {
                let source = message.source.map(|s| s.to_base58());
                let verdict = match self.core.handle_gossip(source.as_deref(), &message.data, now) {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&message_id, &propagation_source, verdict);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. })) => match message {
                request_response::Message::Request { request, channel, .. } => {
                    if self.channels.len() >= MAX_IN_FLIGHT {
                        self.core.reject("rpc_overload");
                        return; // dropping the channel fails the request on the peer's side
                    }
                    let id = self.next_channel;
                    self.next_channel += 1;
                    self.channels.insert(id, channel);
                    self.core.handle_request(&peer.to_base58(), id, request, now);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(id) = self.requests.remove(&request_id) {
                        self.core.handle_response(&peer.to_base58(), id, response, now);
                    }
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, peer, error, .. })) => {
                tracing::trace!(%peer, %error, "request failed");
                if let Some(id) = self.requests.remove(&request_id) {
                    self.core.handle_request_failed(id);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::InboundFailure { error, .. }))
                if !matches!(error, request_response::InboundFailure::ResponseOmission) =>
            {
                tracing::debug!(%error, "inbound request failed");
                self.core.reject("rpc_inbound");
            }
            _ => {}
        }
    }

    pub(super) fn on_mdns(&mut self, seen: mdns::Seen, now: u64) {
        match seen {
            mdns::Seen::Node(n) => {
                let addrs = n.addrs.iter().filter(|a| a.is_ipv4() && !a.is_loopback()).map(|a| format!("/ip4/{a}/tcp/{}", n.port)).collect();
                self.core.handle_node_advert(NodeSeen { fullname: n.fullname, peer_id: n.peer_id, mesh_id: n.mesh_id, addrs }, now);
            }
            mdns::Seen::Mcp(a) => {
                let Some(ip) = a.addrs.iter().find(|ip| ip.is_ipv4()).copied() else { return };
                let url = format!("http://{ip}:{}{}", a.port, a.path);
                let addresses = a.addrs.iter().map(|x| x.to_string()).collect();
                self.core.handle_mcp_advert(McpSeen { fullname: a.fullname, name: a.name, url, node: a.node, addresses }, now);
            }
            mdns::Seen::Removed { fullname } => self.core.handle_advert_removed(&fullname),
            mdns::Seen::Rejected { fullname, reason } => {
                tracing::debug!(%fullname, %reason, "advert rejected");
                self.core.handle_advert_rejected();
            }
        }
    }

    /// Carries out the core's actions and collects its events.
    pub(super) fn execute(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Dial { peer, addrs } => {
                    let Ok(p) = peer.parse::<PeerId>() else { continue };
                    let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    tracing::debug!(%peer, ?addrs, "dialling");
                    // Refused when connected or already dialling: that dial's failure (any
                    // dial's) reaches the core as well, so nothing is lost.
                    if let Err(e) = self.swarm.dial(DialOpts::peer_id(p).addresses(addrs).condition(PeerCondition::DisconnectedAndNotDialing).build()) {
                        tracing::debug!(%peer, error = %e, "dial not made");
                    }
                }
                Action::Disconnect { peer } => {
                    if let Ok(p) = peer.parse::<PeerId>() {
                        let _ = self.swarm.disconnect_peer_id(p);
                    }
                }
                Action::Request { peer, id, msg } => {
                    let Ok(p) = peer.parse::<PeerId>() else {
                        self.core.handle_request_failed(id);
                        continue;
                    };
                    if self.requests.len() >= MAX_IN_FLIGHT {
                        self.requests.clear();
                    }
                    let rid = self.swarm.behaviour_mut().rpc.send_request(&p, msg);
                    self.requests.insert(rid, id);
                }
                Action::Respond { channel, msg } => {
                    if let Some(ch) = self.channels.remove(&channel) {
                        let _ = self.swarm.behaviour_mut().rpc.send_response(ch, msg);
                    }
                }
                Action::Release { channel } => {
                    self.channels.remove(&channel);
                }
                Action::Publish(msg) => self.publish(&msg),
                Action::ResetMdns { browse_after_ms } => self.reset_mdns(Duration::from_millis(browse_after_ms)),
                Action::Probe { peer, seq } => {
                    let Ok(p) = peer.parse::<PeerId>() else { continue };
                    if self.probe_sent.len() >= MAX_IN_FLIGHT {
                        // acks that never came (the membership timed them out long ago)
                        self.probe_sent.retain(|_, t| t.elapsed() < Duration::from_secs(10));
                    }
                    self.probe_sent.insert((p, seq), Instant::now());
                    self.prober.probe(p, seq);
                }
            }
        }
        while let Some(e) = self.core.poll_event() {
            if let craftmesh_protocol::mesh::Event::Member { peer, name, from, to } = &e {
                tracing::info!(%peer, name = name.as_deref().unwrap_or("?"), ?from, ?to, "member state");
            }
            if let craftmesh_protocol::mesh::Event::Crashed { peer, name } = &e {
                tracing::info!(%peer, name = name.as_deref().unwrap_or("?"), "dead member proven crashed (a dial was refused)");
            }
            self.events.push_back(e);
        }
    }

    pub(super) fn publish(&mut self, msg: &Message) {
        let bytes = wire::encode(msg);
        match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) | Err(gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::debug!(error = %e, "publish failed"),
        }
    }
}
