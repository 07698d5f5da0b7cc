//! The mesh core's inputs, outputs and settings.

use crate::membership::{self, State};
use crate::wire::{self, Message};
use serde::Serialize;
use std::collections::BTreeMap;

/// Limits and timers of the mesh (the defaults are what the node runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub membership: membership::Config,
    /// Peers known only from adverts or records, never connected.
    pub max_strangers: usize,
    pub stranger_ttl_ms: u64,
    /// Dials to peers that are not members yet (adverts, records): a token bucket.
    pub dials_per_sec: u64,
    pub dial_burst: u64,
    /// Outside `_mcp._tcp` adverts kept, and for how long without a refresh.
    pub max_externals: usize,
    pub external_ttl_ms: u64,
    /// Nodes of other meshes counted (never more), and for how long.
    pub max_other_meshes: usize,
    pub other_mesh_ttl_ms: u64,
    /// Indirect probe requests one member may have waiting on us.
    pub max_relays_per_origin: usize,
    /// Records of peers never connected, and leaves remembered.
    pub max_unmet_records: usize,
    pub max_leaves: usize,
    /// Bytes of records in one sync reply page (below the frame cap).
    pub sync_page_bytes: usize,
    pub max_sync_pages: u32,
    /// Connected peers whose record we lack are asked again this often.
    pub resync_every_ms: u64,
    /// An unchanged record is republished this often.
    pub refresh_record_ms: u64,
    /// A request with no answer or failure after this long is given up.
    pub request_timeout_ms: u64,
    /// Distinct adverts one mDNS daemon may take in before it is restarted with an empty
    /// cache (the daemon caches every advert it resolves, without a bound of its own).
    pub max_adverts_per_mdns: usize,
    /// After such a restart the daemon answers but does not browse for this long (doubling
    /// while the flood goes on, up to 10 minutes).
    pub mdns_quiet_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            membership: membership::Config::default(),
            max_strangers: 256,
            stranger_ttl_ms: 10 * 60_000,
            dials_per_sec: 10,
            dial_burst: 20,
            max_externals: 64,
            external_ttl_ms: 75 * 60_000,
            max_other_meshes: 256,
            other_mesh_ttl_ms: 10 * 60_000,
            max_relays_per_origin: 8,
            max_unmet_records: 256,
            max_leaves: 1024,
            sync_page_bytes: wire::MAX_FRAME - 4096,
            max_sync_pages: 2048,
            resync_every_ms: 5_000,
            refresh_record_ms: 10 * 60_000,
            request_timeout_ms: 10_000,
            max_adverts_per_mdns: 512,
            mdns_quiet_ms: 30_000,
        }
    }
}

/// Something the node must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Dial `peer` at these multiaddrs (unless connected or dialling).
    Dial { peer: String, addrs: Vec<String> },
    /// Close every connection to `peer`.
    Disconnect { peer: String },
    /// Send a request; its answer comes to `handle_response(peer, id, ..)` or
    /// `handle_request_failed(id, ..)`.
    Request { peer: String, id: u64, msg: Message },
    /// Answer the inbound request `channel`.
    Respond { channel: u64, msg: Message },
    /// Drop the inbound request `channel` unanswered.
    Release { channel: u64 },
    /// Publish on the mesh's gossip topic.
    Publish(Message),
    /// Restart the mDNS daemon (dropping its cache) and browse again only after
    /// `browse_after_ms`: a flood of adverts is filling its cache.
    ResetMdns { browse_after_ms: u64 },
    /// Send probe `seq` to `peer`; report `handle_probe_ack` or `handle_probe_failed`.
    Probe { peer: String, seq: u64 },
}

/// Something the app (API events, logs) cares about. `Crashed`: a member already dead (by
/// suspicion or a rumor) refused a dial, so its process is proven gone (`Member::crashed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Member { peer: String, name: Option<String>, from: Option<State>, to: State },
    Crashed { peer: String, name: Option<String> },
    Forgotten { peer: String },
    Record { peer: String, name: String, version: u64, services: usize },
    External { name: String, url: String, verified: bool },
}

/// Counters (shown in `/v1/node`): rejected input by reason, and work done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub rejected: BTreeMap<String, u64>,
    pub records_merged: u64,
    pub gossip_received: u64,
    pub probes_sent: u64,
    /// Dials to peers that were not members yet.
    pub dials: u64,
    /// Such dials put off because the dial budget was spent.
    pub dials_deferred: u64,
    pub sync_pages: u64,
    /// Times a flood of adverts made the node restart its mDNS daemon.
    pub mdns_flood_resets: u64,
}

impl Stats {
    pub(crate) fn reject(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }
}

/// A `_craftmesh._tcp` advert, validated by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    /// The DNS-SD instance name (counted against the mDNS cache bound).
    pub fullname: String,
    pub peer_id: String,
    pub mesh_id: String,
    /// Multiaddrs to dial (`/ip4/A/tcp/P`).
    pub addrs: Vec<String>,
}

/// An `_mcp._tcp` advert, validated by the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSeen {
    pub fullname: String,
    pub name: String,
    pub url: String,
    pub node: Option<String>,
    pub addresses: Vec<String>,
}

/// An MCP server advertised on the LAN by something outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct External {
    pub name: String,
    pub url: String,
    pub addresses: Vec<String>,
    pub verified: bool,
    #[serde(skip)]
    pub fullname: String,
}

/// What to tell gossip about a message (gossipsub's validation result).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Harmless but not to be spread (a duplicate, a stale record).
    Ignore,
    /// Invalid: not to be spread, and the sender is penalised.
    Reject,
}
