//! Merging configuration layers into the effective [`Config`] and validating it.
//!
//! Layers, lowest first: built-in defaults (the repo's own files, embedded), the project
//! (`.mcp/`, `.agents/` or `--config-dir`), the user (`~/.claude/mcp/`, `~/.claude/agents/`).
//! Then the production block when that profile is selected, then `CRAFTMESH_*` variables.
//! The node reads the files; everything here is pure and takes the environment as a lookup.

use super::agents::{AgentDefinition, AgentDiscovery, AgentSource, AgentsDiscoveryFile};
use super::diag::{Diagnostic, Diagnostics};
use super::mcp::{DeploymentConfig, DiscoveryFile, ResourceRequirements, ServerLaunch, ServersFile, SettingsPatch, Strategy, Tier};
use super::source::{self, Format, locate};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

mod servers;
use servers::merge_servers;

/// One file's name and text, read by the caller.
#[derive(Debug, Clone)]
pub struct TextFile {
    pub path: String,
    pub text: String,
}

/// Which layer a set of files belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Builtin,
    Project,
    User,
}

/// The files of one layer.
#[derive(Debug, Clone)]
pub struct LayerFiles {
    pub kind: LayerKind,
    pub mcp_discovery: Option<TextFile>,
    pub server_files: Vec<TextFile>,
    pub agents_discovery: Option<TextFile>,
    /// Agent definitions with the directory they came from.
    pub agent_defs: Vec<(AgentSource, TextFile)>,
    /// File names present in this layer's shared context directory.
    pub context_files: Vec<String>,
}

impl LayerFiles {
    pub fn empty(kind: LayerKind) -> Self {
        Self { kind, mcp_discovery: None, server_files: Vec::new(), agents_discovery: None, agent_defs: Vec::new(), context_files: Vec::new() }
    }
}

/// A named set of overrides; `production` applies the files' `production` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Default,
    Production,
}

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "default" | "development" | "dev" => Ok(Profile::Default),
            "production" | "prod" => Ok(Profile::Production),
            other => Err(format!("unknown profile `{other}`; expected `default` or `production`")),
        }
    }
}

/// Effective discovery settings, all filled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    pub cache_ttl_minutes: u64,
    pub health_check_timeout_ms: u64,
    pub discovery_timeout_ms: u64,
    pub discovery_interval_ms: u64,
    pub max_deployment_retries: u32,
    pub resource_check_enabled: bool,
    pub prefer_external: bool,
    pub disable_embedded: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cache_ttl_minutes: 5,
            health_check_timeout_ms: 10_000,
            discovery_timeout_ms: 30_000,
            discovery_interval_ms: 30_000,
            max_deployment_retries: 3,
            resource_check_enabled: true,
            prefer_external: false,
            disable_embedded: false,
        }
    }
}

/// Effective resource limits for MCP servers on one node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceLimits {
    pub total_memory_mb: u64,
    pub max_concurrent_servers: u32,
    pub max_embedded_servers: u32,
}

/// One MCP server as the merged configuration sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSpec {
    pub name: String,
    pub aliases: Vec<String>,
    pub enabled: bool,
    /// Tiers in the order they are tried.
    pub priority_order: Vec<Tier>,
    pub strategies: Vec<(Tier, Strategy)>,
    pub resource_requirements: Option<ResourceRequirements>,
    pub deployment: Option<DeploymentConfig>,
    pub requires_api_key: Option<String>,
    /// Launch entry from a servers JSON file, with `${VAR}` expanded.
    pub launch: Option<ServerLaunch>,
    /// Environment variables the server needs that are not set.
    pub missing_env: Vec<String>,
    /// Files that defined this server.
    pub defined_in: Vec<String>,
}

impl ServerSpec {
    /// A server known only by name (e.g. advertised on the LAN but not configured here):
    /// no strategies, checked as an MCP server.
    pub fn unconfigured(name: &str) -> ServerSpec {
        ServerSpec {
            name: name.to_string(),
            aliases: Vec::new(),
            enabled: true,
            priority_order: Tier::ALL.to_vec(),
            strategies: Vec::new(),
            resource_requirements: None,
            deployment: None,
            requires_api_key: None,
            launch: None,
            missing_env: Vec::new(),
            defined_in: Vec::new(),
        }
    }

    /// Whether `name` is this server's name or one of its aliases.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// Effective agent limits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentLimits {
    pub total_memory_mb: u64,
    pub max_concurrent_agents: u32,
    pub model_limits: BTreeMap<String, u32>,
}

/// One agent after the cascade picked its definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentSpec {
    pub id: String,
    pub source: AgentSource,
    pub file: String,
    pub definition: AgentDefinition,
    pub discovery: Option<AgentDiscovery>,
    /// Every place a definition was found, best first.
    pub candidates: Vec<(AgentSource, String)>,
}

/// Agents configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentsConfig {
    pub cache_ttl_minutes: u64,
    pub default_priority_order: Vec<AgentSource>,
    pub limits: AgentLimits,
    pub agents: BTreeMap<String, AgentSpec>,
    pub context_files: Vec<String>,
}

/// The whole effective configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub profile: Profile,
    pub settings: Settings,
    /// The merged `mesh` block (higher layers override single fields).
    pub mesh: super::mcp::MeshPatch,
    /// The merged `claims` block (higher layers override single fields).
    pub claims: super::mcp::ClaimsPatch,
    pub resource_limits: ResourceLimits,
    pub servers: BTreeMap<String, ServerSpec>,
    pub agents: AgentsConfig,
    pub files: Vec<String>,
}

impl Config {
    /// Finds a server by name or alias.
    pub fn server(&self, name: &str) -> Option<&ServerSpec> {
        self.servers.get(name).or_else(|| self.servers.values().find(|s| s.answers_to(name)))
    }
}

/// Environment variables that override settings; each is `CRAFTMESH_` + the setting.
pub const ENV_OVERRIDES: [&str; 6] = [
    "CRAFTMESH_CACHE_TTL_MINUTES",
    "CRAFTMESH_HEALTH_CHECK_TIMEOUT",
    "CRAFTMESH_DISCOVERY_TIMEOUT",
    "CRAFTMESH_DISCOVERY_INTERVAL",
    "CRAFTMESH_MAX_DEPLOYMENT_RETRIES",
    "CRAFTMESH_RESOURCE_CHECK_ENABLED",
];

/// Loads layers (lowest first) into a [`Config`].
///
/// Returns the config when there are no errors, and every diagnostic found either way.
pub fn load(layers: &[LayerFiles], profile: Profile, env: &dyn Fn(&str) -> Option<String>) -> (Option<Config>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let mut files = Vec::new();

    // --- parse every file of every layer
    let mut discovery: Vec<(LayerKind, String, String, DiscoveryFile)> = Vec::new();
    let mut servers_files: Vec<(LayerKind, String, String, ServersFile)> = Vec::new();
    let mut agent_disc: Vec<(String, AgentsDiscoveryFile)> = Vec::new();
    // (layer, source in the cascade, directory the file came from, path, text, definition)
    let mut agent_defs: Vec<AgentDefEntry> = Vec::new();
    let mut context_files: BTreeSet<String> = BTreeSet::new();
    for layer in layers {
        if let Some(f) = &layer.mcp_discovery {
            files.push(f.path.clone());
            if let Some(v) = parse_into::<DiscoveryFile>(f, &mut diags) {
                discovery.push((layer.kind, f.path.clone(), f.text.clone(), v));
            }
        }
        for f in &layer.server_files {
            files.push(f.path.clone());
            if let Some(v) = parse_into::<ServersFile>(f, &mut diags) {
                servers_files.push((layer.kind, f.path.clone(), f.text.clone(), v));
            }
        }
        if let Some(f) = &layer.agents_discovery {
            files.push(f.path.clone());
            if let Some(v) = parse_into::<AgentsDiscoveryFile>(f, &mut diags) {
                agent_disc.push((f.path.clone(), v));
            }
        }
        for (dir, f) in &layer.agent_defs {
            files.push(f.path.clone());
            if let Some(v) = parse_into::<AgentDefinition>(f, &mut diags) {
                let src = if layer.kind == LayerKind::User {
                    AgentSource::UserOverride
                } else if layer.kind == LayerKind::Builtin {
                    AgentSource::BundledDefault
                } else {
                    *dir
                };
                agent_defs.push((layer.kind, src, *dir, f.path.clone(), f.text.clone(), v));
            }
        }
        context_files.extend(layer.context_files.iter().cloned());
    }

    // --- settings: layers, then production, then env
    let mut patch = SettingsPatch::default();
    let mut prefer_external = None;
    let mut disable_embedded = None;
    let mut limits = ResourceLimits { total_memory_mb: 2048, max_concurrent_servers: 8, max_embedded_servers: 3 };
    // Where each setting's effective value came from, so a bad value is reported in the
    // file (or variable) that set it.
    let mut origins: Origins<'_> = BTreeMap::new();
    let mut mesh = super::mcp::MeshPatch::default();
    let mut claims = super::mcp::ClaimsPatch::default();
    for (_, path, text, d) in &discovery {
        claims.role = d.claims.role.or(claims.role);
        claims.lock_delay = d.claims.lock_delay.or(claims.lock_delay);
        claims.promote_after = d.claims.promote_after.or(claims.promote_after);
        let m = &d.mesh;
        mesh.listen_port = m.listen_port.or(mesh.listen_port);
        mesh.interfaces.allow = m.interfaces.allow.clone().or(mesh.interfaces.allow.take());
        mesh.interfaces.deny = m.interfaces.deny.clone().or(mesh.interfaces.deny.take());
        mesh.static_peers = m.static_peers.clone().or(mesh.static_peers.take());
        mesh.mdns = m.mdns.or(mesh.mdns);
        mesh.tags = m.tags.clone().or(mesh.tags.take());
        mesh.key_file = m.key_file.clone().or(mesh.key_file.take());
        mesh.open = m.open.or(mesh.open);
        merge_settings(&mut patch, &d.settings);
        note_origins(&mut origins, &d.settings, path, text, "settings");
        if let Some(v) = d.resource_limits.total_memory_mb {
            limits.total_memory_mb = v;
        }
        if let Some(v) = d.resource_limits.max_concurrent_servers {
            limits.max_concurrent_servers = v;
        }
        if let Some(v) = d.resource_limits.max_embedded_servers {
            limits.max_embedded_servers = v;
        }
    }
    if profile == Profile::Production {
        for (_, path, text, d) in &discovery {
            if let Some(p) = &d.production {
                merge_settings(&mut patch, &p.settings);
                note_origins(&mut origins, &p.settings, path, text, "production");
                prefer_external = p.prefer_external.or(prefer_external);
                disable_embedded = p.disable_embedded.or(disable_embedded);
            }
        }
    }
    apply_env(&mut patch, env, &mut origins, &mut diags);
    let settings = finish_settings(&patch, prefer_external, disable_embedded, &origins, &mut diags);

    // --- servers
    // When a discovery file did not parse, its servers are unknown; saying that a JSON
    // server "has no entry" there would only mislead.
    let discovery_complete = discovery.len() == layers.iter().filter(|l| l.mcp_discovery.is_some()).count();
    let servers = merge_servers(&discovery, &servers_files, env, &limits, discovery_complete, &mut diags);

    // --- agents
    let agents = merge_agents(&agent_disc, &agent_defs, &context_files, profile, &mut diags);

    let cfg = Config { profile, settings, mesh, claims, resource_limits: limits, servers, agents, files };
    if diags.has_errors() { (None, diags) } else { (Some(cfg), diags) }
}

/// A parsed agent definition: (layer, source in the cascade, directory it came from,
/// path, text, definition).
type AgentDefEntry = (LayerKind, AgentSource, AgentSource, String, String, AgentDefinition);

fn parse_into<T: serde::de::DeserializeOwned>(f: &TextFile, diags: &mut Diagnostics) -> Option<T> {
    match source::parse::<T>(&f.path, &f.text, Format::from_path(&f.path)) {
        Ok((v, warnings)) => {
            diags.extend(warnings);
            Some(v)
        }
        Err(e) => {
            diags.push(e);
            None
        }
    }
}

fn merge_settings(into: &mut SettingsPatch, from: &SettingsPatch) {
    into.cache_ttl_minutes = from.cache_ttl_minutes.or(into.cache_ttl_minutes);
    into.health_check_timeout = from.health_check_timeout.or(into.health_check_timeout);
    into.discovery_timeout = from.discovery_timeout.or(into.discovery_timeout);
    into.discovery_interval = from.discovery_interval.or(into.discovery_interval);
    into.max_deployment_retries = from.max_deployment_retries.or(into.max_deployment_retries);
    into.resource_check_enabled = from.resource_check_enabled.or(into.resource_check_enabled);
}

/// Where a setting's value came from: a field in a file, or an environment variable.
#[derive(Debug, Clone)]
enum Origin<'a> {
    File { path: &'a str, text: &'a str, field: String },
    Env(&'static str),
}

type Origins<'a> = BTreeMap<&'static str, Origin<'a>>;

/// Records `block.NAME` of `path` as the origin of every setting `p` sets.
fn note_origins<'a>(origins: &mut Origins<'a>, p: &SettingsPatch, path: &'a str, text: &'a str, block: &str) {
    let set = [
        ("cache_ttl_minutes", p.cache_ttl_minutes.is_some()),
        ("health_check_timeout", p.health_check_timeout.is_some()),
        ("discovery_timeout", p.discovery_timeout.is_some()),
        ("discovery_interval", p.discovery_interval.is_some()),
        ("max_deployment_retries", p.max_deployment_retries.is_some()),
        ("resource_check_enabled", p.resource_check_enabled.is_some()),
    ];
    for (name, is_set) in set {
        if is_set {
            origins.insert(name, Origin::File { path, text, field: format!("{block}.{name}") });
        }
    }
}

fn apply_env(patch: &mut SettingsPatch, env: &dyn Fn(&str) -> Option<String>, origins: &mut Origins<'_>, diags: &mut Diagnostics) {
    fn num<T: std::str::FromStr>(name: &str, env: &dyn Fn(&str) -> Option<String>, diags: &mut Diagnostics) -> Option<T> {
        let v = env(name)?;
        match v.trim().parse::<T>() {
            Ok(n) => Some(n),
            Err(_) => {
                diags.push(Diagnostic::error("env", 0, 0, name, format!("`{v}` is not a valid value")));
                None
            }
        }
    }
    if let Some(v) = num::<u64>("CRAFTMESH_CACHE_TTL_MINUTES", env, diags) {
        patch.cache_ttl_minutes = Some(v);
        origins.insert("cache_ttl_minutes", Origin::Env("CRAFTMESH_CACHE_TTL_MINUTES"));
    }
    if let Some(v) = num::<f64>("CRAFTMESH_HEALTH_CHECK_TIMEOUT", env, diags) {
        patch.health_check_timeout = Some(v);
        origins.insert("health_check_timeout", Origin::Env("CRAFTMESH_HEALTH_CHECK_TIMEOUT"));
    }
    if let Some(v) = num::<f64>("CRAFTMESH_DISCOVERY_TIMEOUT", env, diags) {
        patch.discovery_timeout = Some(v);
        origins.insert("discovery_timeout", Origin::Env("CRAFTMESH_DISCOVERY_TIMEOUT"));
    }
    if let Some(v) = num::<f64>("CRAFTMESH_DISCOVERY_INTERVAL", env, diags) {
        patch.discovery_interval = Some(v);
        origins.insert("discovery_interval", Origin::Env("CRAFTMESH_DISCOVERY_INTERVAL"));
    }
    if let Some(v) = num::<u32>("CRAFTMESH_MAX_DEPLOYMENT_RETRIES", env, diags) {
        patch.max_deployment_retries = Some(v);
        origins.insert("max_deployment_retries", Origin::Env("CRAFTMESH_MAX_DEPLOYMENT_RETRIES"));
    }
    if let Some(v) = num::<bool>("CRAFTMESH_RESOURCE_CHECK_ENABLED", env, diags) {
        patch.resource_check_enabled = Some(v);
        origins.insert("resource_check_enabled", Origin::Env("CRAFTMESH_RESOURCE_CHECK_ENABLED"));
    }
}

fn finish_settings(
    p: &SettingsPatch,
    prefer_external: Option<bool>,
    disable_embedded: Option<bool>,
    origins: &Origins<'_>,
    diags: &mut Diagnostics,
) -> Settings {
    let d = Settings::default();
    let mut secs = |field: &'static str, v: Option<f64>, default_ms: u64, min: f64, max: f64| -> u64 {
        match v {
            None => default_ms,
            Some(s) if s.is_finite() && s >= min && s <= max => (s * 1000.0).round() as u64,
            Some(s) => {
                let msg = format!("{s} seconds is out of range ({min}..={max})");
                diags.push(match origins.get(field) {
                    Some(Origin::File { path, text, field: f }) => {
                        let (l, c) = locate(text, f);
                        Diagnostic::error(path, l, c, f.clone(), msg)
                    }
                    Some(Origin::Env(var)) => Diagnostic::error("env", 0, 0, *var, msg),
                    None => Diagnostic::error("env", 0, 0, format!("settings.{field}"), msg),
                });
                default_ms
            }
        }
    };
    Settings {
        cache_ttl_minutes: p.cache_ttl_minutes.unwrap_or(d.cache_ttl_minutes).min(24 * 60),
        health_check_timeout_ms: secs("health_check_timeout", p.health_check_timeout, d.health_check_timeout_ms, 0.01, 300.0),
        discovery_timeout_ms: secs("discovery_timeout", p.discovery_timeout, d.discovery_timeout_ms, 0.05, 3600.0),
        discovery_interval_ms: secs("discovery_interval", p.discovery_interval, d.discovery_interval_ms, 1.0, 86_400.0),
        max_deployment_retries: p.max_deployment_retries.unwrap_or(d.max_deployment_retries),
        resource_check_enabled: p.resource_check_enabled.unwrap_or(d.resource_check_enabled),
        prefer_external: prefer_external.unwrap_or(false),
        disable_embedded: disable_embedded.unwrap_or(false),
    }
}

fn merge_agents(
    disc: &[(String, AgentsDiscoveryFile)],
    defs: &[AgentDefEntry],
    context_files: &BTreeSet<String>,
    profile: Profile,
    diags: &mut Diagnostics,
) -> AgentsConfig {
    let mut cache_ttl = 30;
    let mut default_order: Vec<AgentSource> = AgentSource::CASCADE.to_vec();
    let mut limits = AgentLimits { total_memory_mb: 2048, max_concurrent_agents: 10, model_limits: BTreeMap::new() };
    let mut per_agent: BTreeMap<String, AgentDiscovery> = BTreeMap::new();
    for (_, d) in disc {
        if let Some(v) = d.settings.cache_ttl_minutes {
            cache_ttl = v;
        }
        if let Some(v) = d.settings.max_concurrent_agents {
            limits.max_concurrent_agents = v;
        }
        if let Some(v) = &d.default_priority_order {
            default_order = v.clone();
        }
        if let Some(v) = d.resource_limits.total_memory_mb {
            limits.total_memory_mb = v;
        }
        if let Some(v) = d.resource_limits.max_concurrent_agents {
            limits.max_concurrent_agents = v;
        }
        if let Some(v) = &d.resource_limits.model_limits {
            limits.model_limits.extend(v.clone());
        }
        for (k, v) in &d.agents {
            per_agent.insert(k.clone(), v.clone());
        }
        if profile == Profile::Production
            && let Some(p) = &d.production
        {
            if let Some(v) = p.resource_limits.max_concurrent_agents {
                limits.max_concurrent_agents = v;
            }
            if let Some(v) = p.max_concurrent_agents {
                limits.max_concurrent_agents = v;
            }
            if let Some(v) = p.resource_limits.total_memory_mb {
                limits.total_memory_mb = v;
            }
            if let Some(v) = &p.resource_limits.model_limits {
                limits.model_limits.extend(v.clone());
            }
        }
    }
    // Candidates per id.
    // Candidates keep the directory they came from: every built-in definition counts as
    // `bundled_default`, and the directory orders built-in copies of one agent (the
    // embedded `core/` and `defaults/` may both define it).
    type Candidate<'a> = (AgentSource, LayerKind, AgentSource, &'a str, &'a str, &'a AgentDefinition);
    let mut by_id: BTreeMap<String, Vec<Candidate<'_>>> = BTreeMap::new();
    for (kind, src, dir, path, text, def) in defs {
        let id = def.metadata.id.trim();
        let stem = std::path::Path::new(path).file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if id.is_empty() {
            let (l, c) = locate(text, "metadata.id");
            diags.push(Diagnostic::error(path, l, c, "metadata.id", "agent id is empty"));
            continue;
        }
        if id != stem {
            let (l, c) = locate(text, "metadata.id");
            diags.push(Diagnostic::warning(path, l, c, "metadata.id", format!("agent id `{id}` differs from the file name `{stem}`; the id is used")));
        }
        if !limits.model_limits.is_empty() {
            for (i, m) in std::iter::once(&def.runtime.model).chain(def.runtime.fallback_models.iter()).enumerate() {
                if !limits.model_limits.contains_key(m) {
                    let f = if i == 0 { "runtime.model".to_string() } else { format!("runtime.fallback_models[{}]", i - 1) };
                    let (l, c) = locate(text, &f);
                    diags.push(Diagnostic::warning(path, l, c, f, format!("model `{m}` has no entry in resource_limits.model_limits")));
                }
            }
        }
        if let Some(mem) = def.runtime.memory_requirement
            && mem.as_mb() > limits.total_memory_mb
        {
            let (l, c) = locate(text, "runtime.memory_requirement");
            diags.push(Diagnostic::error(
                path,
                l,
                c,
                "runtime.memory_requirement",
                format!("{mem} is more than the agents' total memory limit of {} MB", limits.total_memory_mb),
            ));
        }
        for (i, shared) in def.context.shared.iter().enumerate() {
            let name = shared.trim_start_matches('/').trim_start_matches("context/");
            if !context_files.contains(name) {
                let f = format!("context.shared[{i}]");
                let (l, c) = locate(text, &f);
                diags.push(Diagnostic::warning(path, l, c, f, format!("shared context `{shared}` not found in any context directory")));
            }
        }
        let list = by_id.entry(id.to_string()).or_default();
        if list.iter().any(|(s, k, d, ..)| s == src && k == kind && d == dir) {
            let (l, c) = locate(text, "metadata.id");
            diags.push(Diagnostic::error(path, l, c, "metadata.id", format!("agent `{id}` is defined twice in the same place")));
            continue;
        }
        list.push((*src, *kind, *dir, path, text, def));
    }
    for name in per_agent.keys() {
        if !by_id.contains_key(name)
            && let Some((path, _)) = disc.last()
        {
            diags.push(Diagnostic::warning(path, 0, 0, format!("agents.{name}"), format!("agent `{name}` is configured but no definition file was found")));
        }
    }
    let mut agents = BTreeMap::new();
    for (id, mut cands) in by_id {
        let order = per_agent.get(&id).and_then(|a| a.priority_order.clone()).unwrap_or_else(|| default_order.clone());
        let rank = |s: AgentSource| -> usize {
            let explicit_core = order.contains(&AgentSource::ProjectCore);
            order
                .iter()
                .position(|o| *o == s || (*o == AgentSource::ProjectSpecific && s == AgentSource::ProjectCore && !explicit_core))
                .map(|p| p * 2 + usize::from(s == AgentSource::ProjectCore))
                .unwrap_or(usize::MAX)
        };
        cands.sort_by_key(|(s, k, d, ..)| (rank(*s), std::cmp::Reverse(*k), rank(*d), AgentSource::CASCADE.iter().position(|c| c == d)));
        let Some((src, _, _, path, _, def)) = cands.first().copied() else { continue };
        if rank(src) == usize::MAX {
            continue; // no allowed source for this agent
        }
        agents.insert(
            id.clone(),
            AgentSpec {
                id: id.clone(),
                source: src,
                file: path.to_string(),
                definition: def.clone(),
                discovery: per_agent.get(&id).cloned(),
                candidates: cands.iter().map(|(s, _, _, p, ..)| (*s, p.to_string())).collect(),
            },
        );
    }
    AgentsConfig { cache_ttl_minutes: cache_ttl, default_priority_order: default_order, limits, agents, context_files: context_files.iter().cloned().collect() }
}
