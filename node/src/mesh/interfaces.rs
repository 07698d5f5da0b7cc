//! Which local addresses a node advertises: only addresses of interfaces it really
//! listens on, without loopback, container bridges or VPN tunnels unless configured.

use std::net::IpAddr;

/// Allow/deny lists of interface names (prefix match; `*` suffix optional).
#[derive(Debug, Clone, Default)]
pub struct InterfacePolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Interface name prefixes skipped unless explicitly allowed.
const SKIPPED_BY_DEFAULT: &[&str] = &["lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tun", "tap", "wg", "tailscale", "zt", "utun", "vmnet"];

fn matches(name: &str, pat: &str) -> bool {
    let p = pat.trim_end_matches('*');
    name == pat || name.starts_with(p)
}

impl InterfacePolicy {
    /// Whether an interface may be advertised. An explicit allow wins over the defaults;
    /// an explicit deny wins over everything.
    pub fn permits(&self, name: &str, ip: &IpAddr) -> bool {
        if self.deny.iter().any(|d| matches(name, d)) {
            return false;
        }
        if !self.allow.is_empty() {
            return self.allow.iter().any(|a| matches(name, a));
        }
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if let IpAddr::V6(v6) = ip {
            // link-local v6 needs a scope id to be dialled; skip it
            if (v6.segments()[0] & 0xffc0) == 0xfe80 {
                return false;
            }
        }
        !SKIPPED_BY_DEFAULT.iter().any(|p| name.starts_with(p))
    }
}

/// (interface name, address) pairs the policy permits, IPv4 first.
pub fn usable(policy: &InterfacePolicy) -> Vec<(String, IpAddr)> {
    let mut v: Vec<(String, IpAddr)> =
        if_addrs::get_if_addrs().unwrap_or_default().into_iter().map(|i| (i.name.clone(), i.ip())).filter(|(n, ip)| policy.permits(n, ip)).collect();
    v.sort_by_key(|(n, ip)| (ip.is_ipv6(), n.clone()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_bridges_and_tunnels_are_skipped_by_default() {
        let p = InterfacePolicy::default();
        let lan: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(p.permits("eth0", &lan));
        assert!(!p.permits("lo", &"127.0.0.1".parse().expect("ip")));
        assert!(!p.permits("docker0", &lan));
        assert!(!p.permits("br-1234", &lan));
        assert!(!p.permits("wg0", &lan));
        assert!(!p.permits("tailscale0", &lan));
        assert!(!p.permits("eth0", &"fe80::1".parse().expect("ip")));
    }

    #[test]
    fn allow_and_deny_lists_override() {
        let lan: IpAddr = "10.1.2.3".parse().expect("ip");
        let p = InterfacePolicy { allow: vec!["veth*".into()], deny: vec![] };
        assert!(p.permits("veth-h1", &lan));
        assert!(!p.permits("eth0", &lan));
        let p = InterfacePolicy { allow: vec![], deny: vec!["eth1".into()] };
        assert!(!p.permits("eth1", &lan));
        assert!(p.permits("eth0", &lan));
    }
}
