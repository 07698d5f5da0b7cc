//! Which local addresses a node listens on and advertises: only addresses of interfaces
//! it really listens on, without loopback, container bridges or VPN tunnels unless
//! configured. Fed the interface list; reading it is the node's job.

use std::net::IpAddr;

/// Allow/deny lists of interface names: a plain name matches that interface only
/// (`eth1` is not `eth10`); a name ending in `*` matches every name it starts (`eth*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfacePolicy {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Interface name prefixes skipped unless explicitly allowed.
const SKIPPED_BY_DEFAULT: &[&str] = &["lo", "docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "tun", "tap", "wg", "tailscale", "zt", "utun", "vmnet"];

fn matches(name: &str, pat: &str) -> bool {
    match pat.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pat,
    }
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

    /// The (interface, address) pairs this policy permits, IPv4 first, then by name.
    pub fn usable(&self, all: impl IntoIterator<Item = (String, IpAddr)>) -> Vec<(String, IpAddr)> {
        let mut v: Vec<(String, IpAddr)> = all.into_iter().filter(|(n, ip)| self.permits(n, ip)).collect();
        v.sort_by(|(na, a), (nb, b)| (a.is_ipv6(), na).cmp(&(b.is_ipv6(), nb)));
        v
    }
}

/// The addresses to listen on and advertise: the usable IPv4 ones, or loopback alone when
/// there is none (static peers on this host still work, and a real address is taken up
/// when one appears).
pub fn listen_targets(usable: &[(String, IpAddr)]) -> Vec<IpAddr> {
    let v4: Vec<IpAddr> = usable.iter().map(|(_, ip)| *ip).filter(IpAddr::is_ipv4).collect();
    if v4.is_empty() { vec![IpAddr::from([127, 0, 0, 1])] } else { v4 }
}

/// What to start and stop listening on to go from `current` to `wanted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressChange {
    pub add: Vec<IpAddr>,
    pub remove: Vec<IpAddr>,
}

/// `None` when `wanted` holds the same addresses as `current` (order aside).
pub fn address_change(current: &[IpAddr], wanted: &[IpAddr]) -> Option<AddressChange> {
    let add: Vec<IpAddr> = wanted.iter().filter(|ip| !current.contains(ip)).copied().collect();
    let remove: Vec<IpAddr> = current.iter().filter(|ip| !wanted.contains(ip)).copied().collect();
    (!add.is_empty() || !remove.is_empty()).then_some(AddressChange { add, remove })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn loopback_bridges_and_tunnels_are_skipped_by_default() {
        let p = InterfacePolicy::default();
        let lan = ip("10.1.2.3");
        assert!(p.permits("eth0", &lan));
        assert!(!p.permits("lo", &ip("127.0.0.1")));
        assert!(!p.permits("docker0", &lan));
        assert!(!p.permits("br-1234", &lan));
        assert!(!p.permits("wg0", &lan));
        assert!(!p.permits("tailscale0", &lan));
        assert!(!p.permits("eth0", &ip("fe80::1")));
    }

    #[test]
    fn allow_and_deny_lists_override() {
        let lan = ip("10.1.2.3");
        let p = InterfacePolicy { allow: vec!["veth*".into()], deny: vec![] };
        assert!(p.permits("veth-h1", &lan));
        assert!(!p.permits("eth0", &lan));
        let p = InterfacePolicy { allow: vec![], deny: vec!["eth1".into()] };
        assert!(!p.permits("eth1", &lan));
        assert!(p.permits("eth0", &lan));
    }

    #[test]
    fn a_plain_interface_name_matches_only_itself_and_a_star_matches_a_prefix() {
        let lan = ip("10.1.2.3");
        let p = InterfacePolicy { allow: vec!["eth1".into()], deny: vec![] };
        assert!(p.permits("eth1", &lan));
        assert!(!p.permits("eth10", &lan), "--interface eth1 must not take eth10");
        let p = InterfacePolicy { allow: vec!["eth*".into()], deny: vec![] };
        assert!(p.permits("eth1", &lan) && p.permits("eth10", &lan) && p.permits("eth", &lan));
        assert!(!p.permits("wlan0", &lan));
        let p = InterfacePolicy { allow: vec![], deny: vec!["eth1".into()] };
        assert!(!p.permits("eth1", &lan));
        assert!(p.permits("eth10", &lan), "denying eth1 leaves eth10 alone");
        // The built-in skip list stays prefix-based.
        assert!(!InterfacePolicy::default().permits("docker12", &lan));
    }

    #[test]
    fn usable_keeps_permitted_pairs_ipv4_first() {
        let all =
            vec![("wlan0".into(), ip("2001:db8::5")), ("lo".into(), ip("127.0.0.1")), ("wlan0".into(), ip("192.168.7.5")), ("eth0".into(), ip("10.0.0.2"))];
        let u = InterfacePolicy::default().usable(all);
        assert_eq!(u.iter().map(|(_, a)| *a).collect::<Vec<_>>(), vec![ip("10.0.0.2"), ip("192.168.7.5"), ip("2001:db8::5")]);
    }

    #[test]
    fn listen_targets_fall_back_to_loopback_without_ipv4() {
        assert_eq!(listen_targets(&[]), vec![ip("127.0.0.1")]);
        // Only IPv6: still loopback (the mesh dials IPv4), never an empty list.
        assert_eq!(listen_targets(&[("eth0".into(), ip("2001:db8::1"))]), vec![ip("127.0.0.1")]);
        assert_eq!(listen_targets(&[("eth0".into(), ip("10.0.0.2")), ("eth0".into(), ip("2001:db8::1"))]), vec![ip("10.0.0.2")]);
    }

    #[test]
    fn address_change_lists_what_to_add_and_remove() {
        let (lo, a, b) = (ip("127.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        assert_eq!(address_change(&[a, b], &[b, a]), None);
        assert_eq!(address_change(&[lo], &[a]), Some(AddressChange { add: vec![a], remove: vec![lo] }));
        assert_eq!(address_change(&[a], &[a, b]), Some(AddressChange { add: vec![b], remove: vec![] }));
        assert_eq!(address_change(&[a, b], &[b]), Some(AddressChange { add: vec![], remove: vec![a] }));
    }
}
