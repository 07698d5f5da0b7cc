//! Types of `.agents/discovery-config.yaml` and agent definitions `.agents/*/NAME.yaml`.
//!
//! Parsed and validated now; placement of agents on the mesh is a later step.

use super::size::ByteSize;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where an agent definition comes from, in cascade vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentSource {
    /// `~/.claude/agents/`
    UserOverride,
    /// `.agents/project/` (and `.agents/core/` when `project_core` is not listed)
    ProjectSpecific,
    /// `.agents/core/`
    ProjectCore,
    /// `.agents/defaults/`
    BundledDefault,
    /// Another node of the mesh (later issue) or a registry.
    RemoteRegistry,
}

impl AgentSource {
    /// The cascade user → project → core → defaults → remote.
    pub const CASCADE: [AgentSource; 5] =
        [AgentSource::UserOverride, AgentSource::ProjectSpecific, AgentSource::ProjectCore, AgentSource::BundledDefault, AgentSource::RemoteRegistry];
}

/// `.agents/discovery-config.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AgentsDiscoveryFile {
    pub version: Option<String>,
    #[serde(default)]
    pub settings: AgentSettingsPatch,
    pub default_priority_order: Option<Vec<AgentSource>>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentDiscovery>,
    #[serde(default)]
    pub resource_limits: AgentLimitsPatch,
    pub search_paths: Option<SearchPaths>,
    pub context_config: Option<ContextConfig>,
    pub remote_registry: Option<RemoteRegistry>,
    pub production: Option<AgentsProductionPatch>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentSettingsPatch {
    pub cache_ttl_minutes: Option<u64>,
    pub max_concurrent_agents: Option<u32>,
    pub resource_monitoring_enabled: Option<bool>,
    pub remote_registry_enabled: Option<bool>,
}

/// One agent's entry under `agents:`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentDiscovery {
    pub priority_order: Option<Vec<AgentSource>>,
    pub resource_requirements: Option<AgentRequirements>,
    pub dependencies: Option<Dependencies>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentRequirements {
    pub memory: Option<ByteSize>,
    pub model: Option<String>,
    pub execution_mode: Option<ExecutionMode>,
}

/// How an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    Async,
    Sync,
    Background,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Dependencies {
    /// Service name → address or `auto_discover`.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentLimitsPatch {
    pub total_memory_mb: Option<u64>,
    pub max_concurrent_agents: Option<u32>,
    /// Model → maximum concurrent agents on one node.
    pub model_limits: Option<BTreeMap<String, u32>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct SearchPaths {
    pub user_level: Option<String>,
    pub project_core: Option<String>,
    pub project_specific: Option<String>,
    pub bundled_defaults: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ContextConfig {
    pub shared_context_path: Option<String>,
    pub max_context_size_mb: Option<u64>,
    pub context_cache_enabled: Option<bool>,
    pub context_cache_ttl_minutes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct RemoteRegistry {
    pub enabled: Option<bool>,
    pub url: Option<String>,
    pub timeout: Option<u64>,
    pub max_agents: Option<u32>,
    pub cache_ttl_hours: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentsProductionPatch {
    pub max_concurrent_agents: Option<u32>,
    #[serde(default)]
    pub resource_limits: AgentLimitsPatch,
    pub prefer_project_agents: Option<bool>,
    pub disable_user_overrides: Option<bool>,
}

/// An agent definition file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct AgentDefinition {
    pub metadata: AgentMetadata,
    pub runtime: AgentRuntime,
    #[serde(default)]
    pub dependencies: Dependencies,
    #[serde(default)]
    pub tools: AgentTools,
    #[serde(default)]
    pub context: AgentContext,
    pub implementation: Option<Implementation>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct AgentMetadata {
    pub id: String,
    pub version: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct AgentRuntime {
    pub model: String,
    #[serde(default)]
    pub fallback_models: Vec<String>,
    pub memory_requirement: Option<ByteSize>,
    pub execution_mode: Option<ExecutionMode>,
    /// Seconds.
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentTools {
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub optional: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct AgentContext {
    /// Paths under the shared context directory, written `/context/NAME.md`.
    #[serde(default)]
    pub shared: Vec<String>,
    /// Paths in the project (files or directories), written `./...`.
    #[serde(default)]
    pub project: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Implementation {
    #[serde(rename = "type")]
    pub kind: ImplementationType,
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImplementationType {
    Markdown,
    Prompt,
    Command,
}
