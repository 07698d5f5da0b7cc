//! The machine's interfaces, read from the OS; which of them a node uses is decided by
//! [`craftmesh_protocol::interfaces`].

pub use craftmesh_protocol::interfaces::InterfacePolicy;
use std::net::IpAddr;

/// (interface name, address) pairs the policy permits, IPv4 first.
pub fn usable(policy: &InterfacePolicy) -> Vec<(String, IpAddr)> {
    policy.usable(if_addrs::get_if_addrs().unwrap_or_default().into_iter().map(|i| (i.name.clone(), i.ip())))
}
