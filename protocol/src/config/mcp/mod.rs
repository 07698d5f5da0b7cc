//! Types of `.mcp/discovery-config.yaml` and `.mcp/servers/*.json`, as PromptCraft writes them.
//!
//! Fields are optional where a higher layer may leave them out; [`super::catalog`] merges
//! layers and fills defaults. Strategies are parsed flat and then checked per type, so a
//! missing or misplaced field gets a precise diagnostic.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

mod servers;
pub use servers::{DeploymentPreference, GlobalSettings, HealthCheck, HealthCheckType, ServerLaunch, ServersFile};

/// `.mcp/discovery-config.yaml`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DiscoveryFile {
    pub version: Option<String>,
    #[serde(default)]
    pub settings: SettingsPatch,
    #[serde(default)]
    pub servers: BTreeMap<String, ServerDiscovery>,
    #[serde(default)]
    pub resource_limits: ResourceLimitsPatch,
    /// Overrides applied when the `production` profile is selected.
    pub production: Option<ProductionPatch>,
    /// How this node joins the mesh (command-line flags override it).
    #[serde(default)]
    pub mesh: MeshPatch,
    /// How this node takes part in claims (command-line flags override it).
    #[serde(default)]
    pub claims: ClaimsPatch,
}

/// Whether a node votes in the claims cluster.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleSetting {
    /// `client` on a machine with a battery (a laptop that sleeps), else `server`.
    #[default]
    Auto,
    /// May vote (up to 5 voters; further servers are learners).
    Server,
    /// Never in the Raft cluster: forwards its requests to the leader.
    Client,
}

/// The `claims` block.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ClaimsPatch {
    /// `auto` (default), `server` or `client`.
    pub role: Option<RoleSetting>,
    /// Seconds during which a key is not granted again after its holder vanished (lease
    /// expiry, crashed node); default 0. An acquire may ask for its own.
    pub lock_delay: Option<u64>,
    /// Seconds a voter may be dead before a live learner takes its place (default 30).
    pub promote_after: Option<u64>,
}

/// The `mesh` block: node-level mesh settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct MeshPatch {
    /// TCP port of the mesh (default 7411; 0 picks a free one).
    pub listen_port: Option<u16>,
    /// Interfaces to advertise and listen on: `allow` (only these) and `deny` (never these),
    /// by name or prefix (`eth*`). Loopback, container bridges and VPN tunnels are skipped
    /// unless allowed.
    #[serde(default)]
    pub interfaces: InterfacesPatch,
    /// Peers dialled directly, for networks where multicast is blocked (multiaddrs such as
    /// `/ip4/10.0.0.2/tcp/7411`).
    pub static_peers: Option<Vec<String>>,
    /// Advertise and browse DNS-SD (default true).
    pub mdns: Option<bool>,
    /// Tags published in this node's record.
    pub tags: Option<Vec<String>>,
    /// Path of the mesh key file (relative to the config dir).
    pub key_file: Option<String>,
    /// Join the open mesh (no key: any machine on the LAN can join). Default false: the
    /// data dir's `mesh.key`, created on first run.
    pub open: Option<bool>,
}

/// Interface allow/deny lists.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct InterfacesPatch {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

/// Discovery settings; every field optional so layers can override single values.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct SettingsPatch {
    pub cache_ttl_minutes: Option<u64>,
    /// Seconds.
    pub health_check_timeout: Option<f64>,
    /// Seconds; an upper bound for one whole discovery round.
    pub discovery_timeout: Option<f64>,
    pub max_deployment_retries: Option<u32>,
    pub resource_check_enabled: Option<bool>,
    /// Seconds between discovery rounds of a running node.
    pub discovery_interval: Option<f64>,
}

/// The `production` block: settings overrides plus policy switches.
///
/// Written flat in the file (`health_check_timeout: 15` next to `prefer_external: true`).
/// It is read through [`ProductionFile`] rather than `#[serde(flatten)]`, because a
/// flattened struct swallows unknown keys silently and loses field paths in errors.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(from = "ProductionFile")]
pub struct ProductionPatch {
    #[serde(flatten)]
    pub settings: SettingsPatch,
    pub prefer_external: Option<bool>,
    pub disable_embedded: Option<bool>,
}

/// The `production` block exactly as written; see [`ProductionPatch`].
#[derive(Debug, Clone, Default, Deserialize)]
struct ProductionFile {
    cache_ttl_minutes: Option<u64>,
    health_check_timeout: Option<f64>,
    discovery_timeout: Option<f64>,
    max_deployment_retries: Option<u32>,
    resource_check_enabled: Option<bool>,
    discovery_interval: Option<f64>,
    prefer_external: Option<bool>,
    disable_embedded: Option<bool>,
}

impl From<ProductionFile> for ProductionPatch {
    fn from(f: ProductionFile) -> Self {
        ProductionPatch {
            settings: SettingsPatch {
                cache_ttl_minutes: f.cache_ttl_minutes,
                health_check_timeout: f.health_check_timeout,
                discovery_timeout: f.discovery_timeout,
                max_deployment_retries: f.max_deployment_retries,
                resource_check_enabled: f.resource_check_enabled,
                discovery_interval: f.discovery_interval,
            },
            prefer_external: f.prefer_external,
            disable_embedded: f.disable_embedded,
        }
    }
}

/// Top-level `resource_limits`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ResourceLimitsPatch {
    pub total_memory_mb: Option<u64>,
    pub max_concurrent_servers: Option<u32>,
    pub max_embedded_servers: Option<u32>,
}

/// The discovery tiers, in the vocabulary of `priority_order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    ExternalDeployment,
    UserInstallation,
    DockerSidecar,
    NpxCloud,
    EmbeddedSubmodule,
}

impl Tier {
    pub const ALL: [Tier; 5] = [Tier::ExternalDeployment, Tier::UserInstallation, Tier::DockerSidecar, Tier::NpxCloud, Tier::EmbeddedSubmodule];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::ExternalDeployment => "external_deployment",
            Tier::UserInstallation => "user_installation",
            Tier::DockerSidecar => "docker_sidecar",
            Tier::NpxCloud => "npx_cloud",
            Tier::EmbeddedSubmodule => "embedded_submodule",
        }
    }

    /// The tier a `discovery_strategies` group key stands for (`external`, `user`, ...).
    pub fn from_group(key: &str) -> Option<Tier> {
        Some(match key {
            "external" | "external_deployment" => Tier::ExternalDeployment,
            "user" | "user_installation" => Tier::UserInstallation,
            "docker" | "docker_sidecar" => Tier::DockerSidecar,
            "npx" | "npx_cloud" => Tier::NpxCloud,
            "embedded" | "embedded_submodule" => Tier::EmbeddedSubmodule,
            _ => return None,
        })
    }
}

/// `priority_order`, written either as a list or as a map `{1: tier, 2: tier}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PriorityOrder(pub Vec<Tier>);

impl<'de> Deserialize<'de> for PriorityOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PriorityOrder;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of tiers or a numbered map such as `1: external_deployment`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<PriorityOrder, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element::<Tier>()? {
                    out.push(t);
                }
                Ok(PriorityOrder(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<PriorityOrder, A::Error> {
                let mut out: BTreeMap<u32, Tier> = BTreeMap::new();
                while let Some(k) = map.next_key::<RankKey>()? {
                    let t = map.next_value::<Tier>()?;
                    if out.insert(k.0, t).is_some() {
                        return Err(serde::de::Error::custom(format!("rank {} is given twice", k.0)));
                    }
                }
                Ok(PriorityOrder(out.into_values().collect()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A rank in a numbered `priority_order` map: an integer, possibly written as a string.
struct RankKey(u32);

impl<'de> Deserialize<'de> for RankKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RankKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a rank number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RankKey, E> {
                u32::try_from(v).map(RankKey).map_err(|_| E::custom("rank is too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RankKey, E> {
                u32::try_from(v).map(RankKey).map_err(|_| E::custom("rank must be a positive number"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RankKey, E> {
                v.trim().parse().map(RankKey).map_err(|_| E::custom(format!("rank `{v}` is not a number")))
            }
        }
        d.deserialize_any(V)
    }
}

/// One server's entry under `servers:` in the discovery file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServerDiscovery {
    /// Other names of this server (e.g. `zen` in core.json for `zen-mcp` here).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub priority_order: PriorityOrder,
    /// Strategy groups keyed by tier (`external`, `user`, `docker`, `npx`, `embedded`).
    #[serde(default)]
    pub discovery_strategies: BTreeMap<String, Vec<RawStrategy>>,
    pub resource_requirements: Option<ResourceRequirements>,
    pub deployment_config: Option<DeploymentConfig>,
    /// Name of the environment variable holding the API key the server needs.
    pub requires_api_key: Option<String>,
}

/// A strategy as written: a `type` plus the fields of every type, checked by [`RawStrategy::check`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawStrategy {
    #[serde(rename = "type")]
    pub kind: StrategyKind,
    pub ports: Option<Vec<u16>>,
    pub health_endpoint: Option<String>,
    /// Path of the MCP streamable-HTTP endpoint (default `/mcp`).
    pub mcp_path: Option<String>,
    pub host: Option<String>,
    pub variables: Option<Vec<String>>,
    pub patterns: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub package: Option<String>,
    pub names: Option<Vec<String>>,
    pub images: Option<Vec<String>>,
    pub labels: Option<Vec<String>>,
}

/// The strategy types craftmesh implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    #[default]
    PortCheck,
    EnvVariable,
    ProcessCheck,
    PathCheck,
    LockFile,
    NpxAvailable,
    Docker,
    /// Not configurable: a service another mesh member advertises in its signed record.
    Mesh,
    /// Not configurable: an `_mcp._tcp` DNS-SD advert from outside the mesh.
    Mdns,
    /// Not configurable: the `url` of the server's launch entry (`mcpServers.NAME.url` in
    /// a servers JSON file), checked every round as an external deployment.
    LaunchUrl,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::PortCheck => "port_check",
            StrategyKind::EnvVariable => "env_variable",
            StrategyKind::ProcessCheck => "process_check",
            StrategyKind::PathCheck => "path_check",
            StrategyKind::LockFile => "lock_file",
            StrategyKind::NpxAvailable => "npx_available",
            StrategyKind::Docker => "docker",
            StrategyKind::Mesh => "mesh",
            StrategyKind::Mdns => "mdns",
            StrategyKind::LaunchUrl => "launch_url",
        }
    }
}

/// A checked strategy, ready to run. A `docker` strategy's `ports` are what the server
/// listens on inside the container (the first is the one the Docker tier publishes when it
/// deploys `images[0]`); empty when not given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Strategy {
    PortCheck { host: String, ports: Vec<u16>, health_endpoint: Option<String>, mcp_path: String },
    EnvVariable { variables: Vec<String>, mcp_path: String, health_endpoint: Option<String> },
    ProcessCheck { patterns: Vec<String> },
    PathCheck { paths: Vec<String> },
    LockFile { patterns: Vec<String>, mcp_path: String, health_endpoint: Option<String> },
    NpxAvailable { package: String },
    Docker { names: Vec<String>, images: Vec<String>, labels: Vec<String>, ports: Vec<u16>, mcp_path: String, health_endpoint: Option<String> },
}

impl Strategy {
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::PortCheck { .. } => StrategyKind::PortCheck,
            Strategy::EnvVariable { .. } => StrategyKind::EnvVariable,
            Strategy::ProcessCheck { .. } => StrategyKind::ProcessCheck,
            Strategy::PathCheck { .. } => StrategyKind::PathCheck,
            Strategy::LockFile { .. } => StrategyKind::LockFile,
            Strategy::NpxAvailable { .. } => StrategyKind::NpxAvailable,
            Strategy::Docker { .. } => StrategyKind::Docker,
        }
    }
}

/// Default path of an MCP streamable-HTTP endpoint (FastMCP, rmcp and most servers).
pub const DEFAULT_MCP_PATH: &str = "/mcp";

/// A problem with one strategy: the field it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyProblem {
    pub field: &'static str,
    pub message: String,
    pub is_error: bool,
}

impl RawStrategy {
    /// Checks required fields for the type and flags fields that do not belong to it.
    pub fn check(&self) -> (Option<Strategy>, Vec<StrategyProblem>) {
        let mut problems = Vec::new();
        let kind = self.kind;
        if matches!(kind, StrategyKind::Mesh | StrategyKind::Mdns | StrategyKind::LaunchUrl) {
            problems.push(StrategyProblem {
                field: "type",
                message: format!("`{}` is not a configurable strategy; the mesh finds these by itself", kind.as_str()),
                is_error: true,
            });
            return (None, problems);
        }
        let allowed: &[&str] = match kind {
            StrategyKind::Mesh | StrategyKind::Mdns | StrategyKind::LaunchUrl => &[],
            StrategyKind::PortCheck => &["ports", "health_endpoint", "mcp_path", "host"],
            StrategyKind::EnvVariable => &["variables", "mcp_path", "health_endpoint"],
            StrategyKind::ProcessCheck => &["patterns"],
            StrategyKind::PathCheck => &["paths"],
            StrategyKind::LockFile => &["patterns", "mcp_path", "health_endpoint"],
            StrategyKind::NpxAvailable => &["package"],
            StrategyKind::Docker => &["names", "images", "labels", "ports", "mcp_path", "health_endpoint"],
        };
        let present: [(&'static str, bool); 11] = [
            ("ports", self.ports.is_some()),
            ("health_endpoint", self.health_endpoint.is_some()),
            ("mcp_path", self.mcp_path.is_some()),
            ("host", self.host.is_some()),
            ("variables", self.variables.is_some()),
            ("patterns", self.patterns.is_some()),
            ("paths", self.paths.is_some()),
            ("package", self.package.is_some()),
            ("names", self.names.is_some()),
            ("images", self.images.is_some()),
            ("labels", self.labels.is_some()),
        ];
        for (name, is) in present {
            if is && !allowed.contains(&name) {
                problems.push(StrategyProblem {
                    field: name,
                    message: format!("field `{name}` has no meaning for a `{}` strategy (ignored)", kind.as_str()),
                    is_error: false,
                });
            }
        }
        let mut need = |field: &'static str, v: &Option<Vec<String>>| -> Vec<String> {
            match v {
                Some(v) if !v.is_empty() && v.iter().all(|s| !s.trim().is_empty()) => v.clone(),
                Some(_) => {
                    problems.push(StrategyProblem { field, message: format!("`{field}` must list at least one non-empty value"), is_error: true });
                    Vec::new()
                }
                None => {
                    problems.push(StrategyProblem { field, message: format!("a `{}` strategy needs `{field}`", kind.as_str()), is_error: true });
                    Vec::new()
                }
            }
        };
        let mcp_path = self.mcp_path.clone().unwrap_or_else(|| DEFAULT_MCP_PATH.to_string());
        let health_endpoint = self.health_endpoint.clone();
        let s = match kind {
            StrategyKind::PortCheck => {
                let ports = match &self.ports {
                    Some(p) if !p.is_empty() && !p.contains(&0) => p.clone(),
                    Some(_) => {
                        problems.push(StrategyProblem { field: "ports", message: "`ports` must list ports between 1 and 65535".into(), is_error: true });
                        Vec::new()
                    }
                    None => {
                        problems.push(StrategyProblem { field: "ports", message: "a `port_check` strategy needs `ports`".into(), is_error: true });
                        Vec::new()
                    }
                };
                Strategy::PortCheck { host: self.host.clone().unwrap_or_else(|| "127.0.0.1".to_string()), ports, health_endpoint, mcp_path }
            }
            StrategyKind::EnvVariable => Strategy::EnvVariable { variables: need("variables", &self.variables), mcp_path, health_endpoint },
            StrategyKind::ProcessCheck => Strategy::ProcessCheck { patterns: need("patterns", &self.patterns) },
            StrategyKind::PathCheck => Strategy::PathCheck { paths: need("paths", &self.paths) },
            StrategyKind::LockFile => Strategy::LockFile { patterns: need("patterns", &self.patterns), mcp_path, health_endpoint },
            StrategyKind::NpxAvailable => match &self.package {
                Some(p) if !p.trim().is_empty() => Strategy::NpxAvailable { package: p.clone() },
                _ => {
                    problems.push(StrategyProblem {
                        field: "package",
                        message: "an `npx_available` strategy needs a non-empty `package`".into(),
                        is_error: true,
                    });
                    Strategy::NpxAvailable { package: String::new() }
                }
            },
            StrategyKind::Mesh | StrategyKind::Mdns | StrategyKind::LaunchUrl => return (None, problems),
            StrategyKind::Docker => {
                let names = self.names.clone().unwrap_or_default();
                let images = self.images.clone().unwrap_or_default();
                let labels = self.labels.clone().unwrap_or_default();
                if names.is_empty() && images.is_empty() && labels.is_empty() {
                    problems.push(StrategyProblem {
                        field: "names",
                        message: "a `docker` strategy needs at least one of `names`, `images`, `labels`".into(),
                        is_error: true,
                    });
                }
                let ports = self.ports.clone().unwrap_or_default();
                if ports.contains(&0) {
                    problems.push(StrategyProblem { field: "ports", message: "`ports` must list ports between 1 and 65535".into(), is_error: true });
                }
                Strategy::Docker { names, images, labels, ports, mcp_path, health_endpoint }
            }
        };
        for (field, p) in [("health_endpoint", &self.health_endpoint), ("mcp_path", &self.mcp_path)] {
            if let Some(p) = p.as_ref().filter(|p| !p.starts_with('/')) {
                problems.push(StrategyProblem { field, message: format!("path `{p}` must start with `/`"), is_error: true });
            }
        }
        let ok = !problems.iter().any(|p| p.is_error);
        (ok.then_some(s), problems)
    }
}

/// `resource_requirements` of a server.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ResourceRequirements {
    pub memory_mb: Option<u64>,
    pub cpu_cores: Option<f64>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

/// `deployment_config` of a server.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct DeploymentConfig {
    pub prevent_duplicate: Option<bool>,
    pub auto_restart: Option<bool>,
    /// Seconds.
    pub health_check_interval: Option<u64>,
    #[serde(rename = "type")]
    pub kind: Option<DeploymentType>,
    pub on_demand: Option<bool>,
    /// Accepted here too, as the PromptCraft files place it.
    pub requires_api_key: Option<String>,
    /// Members to deploy on when the resource check places the server, best first: a peer
    /// id or a node name (see [`crate::deploy`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_hosts: Vec<String>,
    /// How client sessions share an instance: `shared` (default: one instance per LAN for
    /// every session) or `per-session` (each session gets a child of its own on its node).
    pub share: Option<ShareMode>,
    /// What the instance speaks: `mcp` (default), or `http` / `tcp` for a plain service such
    /// as a database (see [`crate::deploy::service`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ServiceProtocol>,
}

/// `deployment_config.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceProtocol {
    Mcp,
    Http,
    Tcp,
}

/// `deployment_config.share`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShareMode {
    Shared,
    PerSession,
}

/// How a server is deployed when craftmesh has to start it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentType {
    Npx,
    Docker,
    Process,
    External,
    Embedded,
}
