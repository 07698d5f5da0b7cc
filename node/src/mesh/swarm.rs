//! The libp2p swarm of a node: TCP, then (with a mesh key) the private-network layer, Noise
//! and Yamux; identify, gossipsub, request-response and standing probe streams on top.

use super::MeshError;
use super::codec::{self, Codec};
use craftmesh_protocol::wire;
use libp2p::core::transport::Transport as _;
use libp2p::core::upgrade::Version;
use libp2p::gossipsub;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, identify, noise, tcp, yamux};
use std::time::Duration;

#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub rpc: request_response::Behaviour<Codec>,
    pub stream: libp2p_stream::Behaviour,
}

/// Builds the swarm for `mesh_id` (its identify protocol string names the mesh).
pub fn build(keypair: &libp2p_identity::Keypair, psk: Option<PreSharedKey>, mesh_id: &str) -> Result<Swarm<Behaviour>, MeshError> {
    let identify_protocol = craftmesh_protocol::mesh::identify_protocol(mesh_id);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
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
            let identify = identify::Behaviour::new(identify::Config::new(identify_protocol, key.public()).with_push_listen_addr_updates(true));
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
    Ok(swarm)
}

/// Whether a dial error says the host answered with a refusal (nothing listens there)
/// on every address tried.
pub fn is_refused(e: &libp2p::swarm::DialError) -> bool {
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
