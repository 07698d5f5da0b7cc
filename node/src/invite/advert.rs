//! DNS-SD for invites: the inviter registers `_craftmesh-invite._tcp.local.` with TXT
//! `v` (exchange version) and `nameplate`; the joiner browses for its nameplate. The advert
//! gives an address, never trust: the exchange itself proves the code.

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub const INVITE_SERVICE: &str = "_craftmesh-invite._tcp.local.";
/// At most this many addresses are taken from one advert.
const MAX_ADDRS: usize = 16;

fn daemon(addrs: &[(String, IpAddr)]) -> Result<ServiceDaemon, mdns_sd::Error> {
    let d = ServiceDaemon::new()?;
    // `craftmesh-invite` is 16 characters; RFC 6335 service names stop at 15, which
    // mdns-sd enforces by default. Only craftmesh browses for it.
    d.set_service_name_len_max(20)?;
    d.disable_interface(IfKind::All)?;
    for (name, _) in addrs {
        d.enable_interface(IfKind::Name(name.clone()))?;
    }
    Ok(d)
}

/// The inviter's registration; unregistered (goodbye sent) on [`Advert::stop`].
pub struct Advert {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advert").field("fullname", &self.fullname).finish()
    }
}

impl Advert {
    /// Registers an invite for `nameplate` on port `port` of `addrs`' interfaces.
    pub fn start(addrs: &[(String, IpAddr)], nameplate: u16, port: u16, instance_suffix: &str) -> Result<Advert, mdns_sd::Error> {
        let daemon = daemon(addrs)?;
        let host = sysinfo::System::host_name().unwrap_or_else(|_| "craftmesh".into());
        let host = format!("{}.local.", host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>());
        let instance = format!("craftmesh-invite-{nameplate}-{instance_suffix}");
        let props = [("v", super::exchange::VERSION.to_string()), ("nameplate", nameplate.to_string())];
        let ips: Vec<IpAddr> = addrs.iter().map(|(_, a)| *a).collect();
        let info = ServiceInfo::new(INVITE_SERVICE, &instance, &host, &ips[..], port, &props[..])?;
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        Ok(Advert { daemon, fullname })
    }

    /// Sends the goodbye and stops the daemon (each step waits at most 300 ms).
    pub fn stop(self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(Duration::from_millis(300));
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_millis(300));
        }
    }
}

/// Browses for an invite with `nameplate` for at most `wait`; returns its socket
/// addresses (IPv4 first), or none. Blocking: call it from a blocking task.
pub fn find(addrs: &[(String, IpAddr)], nameplate: u16, wait: Duration) -> Result<Vec<SocketAddr>, mdns_sd::Error> {
    let d = daemon(addrs)?;
    let rx = d.browse(INVITE_SERVICE)?;
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    while found.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let Ok(ev) = rx.recv_timeout(left.min(Duration::from_millis(500))) else { continue };
        if let ServiceEvent::ServiceResolved(s) = ev {
            let np = s.txt_properties.get_property_val_str("nameplate").and_then(|v| v.parse::<u16>().ok());
            let v = s.txt_properties.get_property_val_str("v").and_then(|v| v.parse::<u8>().ok());
            if np != Some(nameplate) || v != Some(super::exchange::VERSION) || s.get_port() == 0 {
                tracing::debug!(advert = %s.get_fullname(), ?np, ?v, "ignoring another invite");
                continue;
            }
            let mut ips: Vec<IpAddr> = s.get_addresses().iter().map(|a| a.to_ip_addr()).take(MAX_ADDRS).collect();
            ips.sort_by_key(|a| !a.is_ipv4());
            found = ips.into_iter().map(|ip| SocketAddr::new(ip, s.get_port())).collect();
        }
    }
    if let Ok(rx) = d.shutdown() {
        let _ = rx.recv_timeout(Duration::from_millis(300));
    }
    Ok(found)
}
