//! Types of `.mcp/servers/*.json`: the `mcpServers` launch entries and their settings.

use crate::config::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `.mcp/servers/core.json` or `optional.json`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServersFile {
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(rename = "mcpServers", default)]
    pub mcp_servers: BTreeMap<String, ServerLaunch>,
    #[serde(default)]
    pub global_settings: GlobalSettings,
}

/// One entry of `mcpServers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ServerLaunch {
    #[serde(default)]
    pub aliases: Vec<String>,
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// URL of a remote (HTTP) server instead of a command.
    pub url: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub priority: Option<u32>,
    /// Seconds.
    pub timeout: Option<u64>,
    pub retry_attempts: Option<u32>,
    #[serde(default)]
    pub docker_compatible: bool,
    pub memory_requirement: Option<ByteSize>,
    pub deployment_preference: Option<DeploymentPreference>,
    #[serde(default)]
    pub docker_features: Vec<String>,
    #[serde(default)]
    pub self_hosted_features: Vec<String>,
    #[serde(default)]
    pub npx_features: Vec<String>,
    pub health_check: Option<HealthCheck>,
}

fn yes() -> bool {
    true
}

/// `deployment_preference` of a server entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentPreference {
    Auto,
    Npx,
    Docker,
    User,
    External,
    Embedded,
}

/// `health_check` of a server entry.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct HealthCheck {
    pub endpoint: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<HealthCheckType>,
    /// Seconds.
    pub interval: Option<u64>,
    /// Seconds.
    pub timeout: Option<u64>,
    #[serde(default)]
    pub required_env: Vec<String>,
}

/// What a health check verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckType {
    Mcp,
    Http,
    Tcp,
    ApiKeyRequired,
}

/// `global_settings` of a servers file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct GlobalSettings {
    pub parallel_execution: Option<bool>,
    pub max_concurrent_servers: Option<u32>,
    pub health_check_interval: Option<u64>,
    pub auto_restart: Option<bool>,
    pub discovery_enabled: Option<bool>,
    pub graceful_degradation: Option<bool>,
    pub fallback_enabled: Option<bool>,
}
