//! What discovery reports: findings with their evidence, and the host's resources.
//!
//! These are the JSON shapes of `craftmesh discover --json`, `/v1/services` and
//! `/v1/resolve/{name}`; field names are part of the stable interface.

use crate::config::mcp::{StrategyKind, Tier};
use serde::{Deserialize, Serialize};

/// How a found endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Answered MCP `initialize` over streamable HTTP.
    Mcp,
    /// Answers HTTP but not MCP.
    Http,
    /// Accepts TCP connections but did not answer HTTP usefully.
    Tcp,
}

/// What a finding amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Verified: MCP initialize succeeded, or the HTTP health endpoint answered 2xx.
    Healthy,
    /// Reachable but failed its check (HTTP error status, MCP error, timeout after connect).
    Unhealthy,
    /// A server expected to be MCP answered, but not as MCP.
    NotMcp,
    /// A URL was named (env variable, lock file, container) but nothing answered there.
    Unreachable,
    /// A matching process runs; no endpoint was verified from it.
    Running,
    /// An installation was found on disk (path_check).
    Installed,
    /// It can be launched on demand (npx available).
    Available,
}

/// The facts behind a finding, so a user can check it by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub env_var: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lock_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub package: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pattern: Option<String>,
}

/// What an MCP server said about itself in `initialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
    pub protocol_version: String,
}

/// Summary of `tools/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolsSummary {
    pub count: usize,
    /// Hex SHA-256 prefix over the sorted tool names and schemas; changes when tools change.
    pub hash: String,
}

/// A matched process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub name: String,
    pub memory_bytes: u64,
    pub cpu_percent: f32,
}

/// One thing a strategy found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The configured server this belongs to.
    pub name: String,
    pub url: Option<String>,
    pub protocol: Option<Protocol>,
    pub healthy: bool,
    pub status: Status,
    /// The strategy that found it.
    pub source: StrategyKind,
    pub tier: Tier,
    pub evidence: Evidence,
    pub server_info: Option<ServerInfo>,
    pub tools: Option<ToolsSummary>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub process: Option<ProcessInfo>,
    /// Time the check took, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub latency_ms: Option<f64>,
    /// The HTTP health URL used for plain HTTP services (kept for re-verification).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub health_url: Option<String>,
    /// Why it is not healthy, or a note.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<String>,
    /// Unix time of the check, milliseconds.
    pub checked_at_ms: u64,
}

/// Memory and CPU of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostResources {
    pub hostname: String,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpu_count: usize,
    pub load_average_1m: f64,
    pub cpu_usage_percent: f32,
}

/// Discovery outcome for one configured server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    pub name: String,
    pub aliases: Vec<String>,
    pub enabled: bool,
    /// URL of the best healthy finding, in priority order.
    pub resolved: Option<String>,
    pub findings: Vec<Finding>,
    /// Things the user should know (missing env, strategy failures, strategies that did
    /// not finish in time).
    pub notes: Vec<String>,
    /// Some of this server's strategies did not finish within `discovery_timeout` this
    /// round (each is named in `notes`): what they would have found is unknown, so a
    /// missing instance is not a lost one. Findings of the strategies that finished are kept.
    #[serde(default)]
    pub timed_out: bool,
}

/// A whole discovery round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub host: HostResources,
    pub servers: Vec<ServerReport>,
    /// How many probes ran.
    pub probes: usize,
    pub elapsed_ms: f64,
    pub finished_at_ms: u64,
    /// The round hit `discovery_timeout`; the servers concerned have `timed_out` set.
    #[serde(default)]
    pub timed_out: bool,
}

impl Report {
    /// Every finding that stands for something present, best first per server.
    pub fn services(&self) -> impl Iterator<Item = &Finding> {
        self.servers.iter().flat_map(|s| s.findings.iter())
    }
}
