//! DNS-SD over mDNS (mdns-sd): this node as `_craftmesh._tcp.local.`, its healthy MCP
//! servers as `_mcp._tcp.local.`, and browsing of both. mDNS gives addresses, never trust:
//! peers still need the mesh key, and MCP adverts are verified before use.

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const NODE_SERVICE: &str = "_craftmesh._tcp.local.";
pub const MCP_SERVICE: &str = "_mcp._tcp.local.";
/// Longest TXT value we accept from others (bytes); longer adverts are rejected.
const MAX_TXT_VALUE: usize = 255;
/// At most this many TXT keys are read from one advert.
const MAX_TXT_KEYS: usize = 32;

/// A craftmesh node seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAdvert {
    pub fullname: String,
    pub peer_id: String,
    pub mesh_id: String,
    pub version: String,
    pub api_port: Option<u16>,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
}

/// An MCP server advertised on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpAdvert {
    pub fullname: String,
    pub name: String,
    pub transport: String,
    pub path: String,
    pub version: Option<String>,
    /// The advertising craftmesh node, if it says so.
    pub node: Option<String>,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
}

/// What browsing produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Node(NodeAdvert),
    Mcp(McpAdvert),
    Removed {
        fullname: String,
    },
    /// An advert that failed validation (counted, logged at debug).
    Rejected {
        fullname: String,
        reason: String,
    },
}

/// The mDNS daemon with our registrations.
pub struct Mdns {
    daemon: ServiceDaemon,
    registered: Vec<String>,
    /// Browse results; `None` while the daemon only answers (see [`Mdns::browse`]).
    pub node_rx: Option<mdns_sd::Receiver<ServiceEvent>>,
    pub mcp_rx: Option<mdns_sd::Receiver<ServiceEvent>>,
    hostname: String,
    addrs: Vec<IpAddr>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns").field("registered", &self.registered).finish()
    }
}

impl Mdns {
    /// Starts the daemon on the interfaces of `addrs` only; browses both types unless
    /// `browse` is false (then [`Mdns::browse`] starts it later).
    pub fn start(addrs: &[(String, IpAddr)], browse: bool) -> Result<Mdns, mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        daemon.disable_interface(IfKind::All)?;
        for (name, _) in addrs {
            daemon.enable_interface(IfKind::Name(name.clone()))?;
        }
        let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "craftmesh".into());
        let hostname = format!("{}.local.", hostname.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>());
        let mut m = Mdns { daemon, registered: Vec::new(), node_rx: None, mcp_rx: None, hostname, addrs: addrs.iter().map(|(_, a)| *a).collect() };
        if browse {
            m.browse()?;
        }
        Ok(m)
    }

    /// Browses both types (if not yet).
    pub fn browse(&mut self) -> Result<(), mdns_sd::Error> {
        if self.node_rx.is_none() {
            self.node_rx = Some(self.daemon.browse(NODE_SERVICE)?);
        }
        if self.mcp_rx.is_none() {
            self.mcp_rx = Some(self.daemon.browse(MCP_SERVICE)?);
        }
        Ok(())
    }

    pub fn browsing(&self) -> bool {
        self.node_rx.is_some()
    }

    /// Registers this node.
    pub fn register_node(&mut self, peer_id: &str, mesh_id: &str, port: u16, api_port: u16) -> Result<(), mdns_sd::Error> {
        let instance = format!("craftmesh-{}", peer_id.get(peer_id.len().saturating_sub(12)..).unwrap_or(peer_id));
        let props = [
            ("id", peer_id.to_string()),
            ("v", craftmesh_protocol::wire::WIRE_VERSION.to_string()),
            ("mesh", mesh_id.to_string()),
            ("api", api_port.to_string()),
        ];
        let info = ServiceInfo::new(NODE_SERVICE, &instance, &self.hostname, &self.addrs[..], port, &props[..])?;
        let full = info.get_fullname().to_string();
        self.daemon.register(info)?;
        self.registered.push(full);
        Ok(())
    }

    /// Registers (or re-registers) an MCP server hosted here. Returns its full name.
    pub fn register_mcp(&mut self, name: &str, port: u16, path: &str, version: &str, peer_id: &str) -> Result<String, mdns_sd::Error> {
        let instance = format!("{name} on {}", self.hostname.trim_end_matches(".local."));
        let props = [
            ("name", name.to_string()),
            ("transport", "streamable-http".to_string()),
            ("path", path.to_string()),
            ("version", version.to_string()),
            ("node", peer_id.to_string()),
        ];
        let info = ServiceInfo::new(MCP_SERVICE, &instance, &self.hostname, &self.addrs[..], port, &props[..])?;
        let full = info.get_fullname().to_string();
        self.daemon.register(info)?;
        if !self.registered.contains(&full) {
            self.registered.push(full.clone());
        }
        Ok(full)
    }

    pub fn unregister(&mut self, fullname: &str) {
        let _ = self.daemon.unregister(fullname);
        self.registered.retain(|f| f != fullname);
    }

    /// Sends goodbye packets for everything registered and stops the daemon.
    pub fn shutdown(mut self) {
        for f in std::mem::take(&mut self.registered) {
            if let Ok(rx) = self.daemon.unregister(&f) {
                let _ = rx.recv_timeout(std::time::Duration::from_millis(300));
            }
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(std::time::Duration::from_millis(300));
        }
    }
}

/// Turns a browse event into something the node acts on; validates every field.
pub fn interpret(ev: ServiceEvent) -> Option<Seen> {
    match ev {
        ServiceEvent::ServiceResolved(s) => {
            let full = s.get_fullname().to_string();
            let mut txt: BTreeMap<String, String> = BTreeMap::new();
            for p in s.txt_properties.iter().take(MAX_TXT_KEYS + 1) {
                if txt.len() >= MAX_TXT_KEYS {
                    return Some(Seen::Rejected { fullname: full, reason: "too many TXT keys".into() });
                }
                let v = p.val_str();
                if v.len() > MAX_TXT_VALUE || p.key().len() > 64 {
                    return Some(Seen::Rejected { fullname: full, reason: format!("TXT field `{}` too large", p.key().chars().take(64).collect::<String>()) });
                }
                txt.insert(p.key().to_ascii_lowercase(), v.to_string());
            }
            let addrs: Vec<IpAddr> = s.get_addresses().iter().map(|a| a.to_ip_addr()).take(16).collect();
            let port = s.get_port();
            if addrs.is_empty() || port == 0 {
                return Some(Seen::Rejected { fullname: full, reason: "no address or port".into() });
            }
            if s.ty_domain.eq_ignore_ascii_case(NODE_SERVICE) {
                let (Some(peer_id), Some(mesh_id)) = (txt.get("id").cloned(), txt.get("mesh").cloned()) else {
                    return Some(Seen::Rejected { fullname: full, reason: "missing id or mesh".into() });
                };
                if peer_id.parse::<libp2p::PeerId>().is_err() {
                    return Some(Seen::Rejected { fullname: full, reason: "id is not a peer id".into() });
                }
                Some(Seen::Node(NodeAdvert {
                    fullname: full,
                    peer_id,
                    mesh_id,
                    version: txt.get("v").cloned().unwrap_or_default(),
                    api_port: txt.get("api").and_then(|p| p.parse().ok()),
                    addrs,
                    port,
                }))
            } else {
                let name = txt.get("name").cloned().unwrap_or_else(|| full.split('.').next().unwrap_or("").to_string());
                let path = txt.get("path").cloned().unwrap_or_else(|| "/mcp".into());
                if !path.starts_with('/') {
                    return Some(Seen::Rejected { fullname: full, reason: "path must start with /".into() });
                }
                Some(Seen::Mcp(McpAdvert {
                    fullname: full,
                    name,
                    transport: txt.get("transport").cloned().unwrap_or_else(|| "streamable-http".into()),
                    path,
                    version: txt.get("version").cloned(),
                    node: txt.get("node").cloned(),
                    addrs,
                    port,
                }))
            }
        }
        ServiceEvent::ServiceRemoved(_, full) => Some(Seen::Removed { fullname: full }),
        _ => None,
    }
}
