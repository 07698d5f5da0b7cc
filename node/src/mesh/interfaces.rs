//! The machine's interfaces, read from the OS (which of them a node uses is decided by
//! [`craftmesh_protocol::interfaces`]), listening on them, and the multiaddr forms the mesh
//! core is given.

use super::MeshError;
use super::swarm::Behaviour;
pub use craftmesh_protocol::interfaces::InterfacePolicy;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Swarm};
use std::net::IpAddr;

/// (interface name, address) pairs the policy permits, IPv4 first.
pub fn usable(policy: &InterfacePolicy) -> Vec<(String, IpAddr)> {
    policy.usable(if_addrs::get_if_addrs().unwrap_or_default().into_iter().map(|i| (i.name.clone(), i.ip())))
}

/// Listens on `ip:port`.
pub fn listen(swarm: &mut Swarm<Behaviour>, ip: IpAddr, port: u16) -> Result<libp2p::core::transport::ListenerId, MeshError> {
    let addr: Multiaddr =
        format!("/ip4/{ip}/tcp/{port}").parse().map_err(|e: libp2p::multiaddr::Error| MeshError::Listen { addr: ip.to_string(), reason: e.to_string() })?;
    swarm.listen_on(addr.clone()).map_err(|e| MeshError::Listen { addr: addr.to_string(), reason: e.to_string() })
}

/// mDNS on the usable IPv4 interfaces, this node registered; `None` when there is none.
pub fn start_mdns(
    usable: &[(String, IpAddr)],
    me: &str,
    mesh_id: &str,
    port: u16,
    api_port: u16,
    browse: bool,
) -> Result<Option<super::mdns::Mdns>, MeshError> {
    let ifaces: Vec<(String, IpAddr)> = usable.iter().filter(|(_, ip)| ip.is_ipv4()).cloned().collect();
    if ifaces.is_empty() {
        return Ok(None);
    }
    let mut m = super::mdns::Mdns::start(&ifaces, browse).map_err(|e| MeshError::Mdns(e.to_string()))?;
    m.register_node(me, mesh_id, port, api_port).map_err(|e| MeshError::Mdns(e.to_string()))?;
    Ok(Some(m))
}

/// The form the core keeps: without a trailing `/p2p/<id>` (the same address either way);
/// `None` for loopback (never useful to another host).
pub fn normalize(mut a: Multiaddr) -> Option<String> {
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    let loopback = a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()) || matches!(p, Protocol::Ip6(ip) if ip.is_loopback()));
    (!loopback).then(|| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_the_p2p_suffix_and_loopback_is_dropped() {
        let peer = libp2p::PeerId::random();
        let with_id: Multiaddr = format!("/ip4/10.0.0.2/tcp/7411/p2p/{peer}").parse().expect("multiaddr");
        assert_eq!(normalize(with_id).as_deref(), Some("/ip4/10.0.0.2/tcp/7411"));
        assert_eq!(normalize("/ip4/127.0.0.1/tcp/7411".parse().expect("multiaddr")), None);
    }
}
