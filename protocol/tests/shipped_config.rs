//! The configuration shipped in the repository (`.mcp/`, `.agents/`) must load cleanly and
//! mean what it says.

mod common;

use common::{no_env, shipped_layer, show};
use craftmesh_protocol::config::agents::AgentSource;
use craftmesh_protocol::config::mcp::{Strategy, Tier};
use craftmesh_protocol::config::{Config, LayerKind, Profile, load};

fn load_project(profile: Profile) -> Config {
    let (cfg, diags) = load(&[shipped_layer(LayerKind::Project)], profile, &no_env);
    assert!(diags.0.is_empty(), "shipped configuration must load without diagnostics:\n{}", show(&diags));
    cfg.expect("no errors, so a config")
}

#[test]
fn shipped_files_load_without_errors_or_warnings() {
    let cfg = load_project(Profile::Default);
    let names: Vec<&str> = cfg.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["context7", "perplexity", "qdrant", "sentry", "zen-mcp"]);
    let agents: Vec<&str> = cfg.agents.agents.keys().map(String::as_str).collect();
    assert_eq!(agents, ["ai-engineer", "code-reviewer", "journey-orchestrator"]);
    // every file of the layer was read
    assert!(cfg.files.iter().any(|f| f == ".mcp/servers/core.json"));
    assert!(cfg.files.iter().any(|f| f == ".mcp/servers/optional.json"));
}

#[test]
fn qdrant_is_a_plain_http_service_on_its_own_port() {
    let cfg = load_project(Profile::Default);
    let q = cfg.server("qdrant").expect("qdrant");
    let svc = craftmesh_protocol::deploy::service::plain_service(q).expect("a plain service").expect("with a port");
    assert_eq!(svc.port, 6333);
    assert_eq!(svc.health, craftmesh_protocol::deploy::service::Health::Http { path: "/healthz".into() });
}

#[test]
fn zen_alias_and_canonical_name_resolve_to_one_server() {
    let cfg = load_project(Profile::Default);
    let by_alias = cfg.server("zen").expect("zen resolves");
    let by_name = cfg.server("zen-mcp").expect("zen-mcp resolves");
    assert_eq!(by_alias, by_name);
    assert_eq!(by_name.name, "zen-mcp");
    assert!(by_name.enabled);
    assert_eq!(by_name.priority_order, [Tier::ExternalDeployment, Tier::UserInstallation, Tier::DockerSidecar, Tier::EmbeddedSubmodule]);
    // the launch entry from core.json got linked through the alias
    let launch = by_name.launch.as_ref().expect("zen has a launch entry");
    assert_eq!(launch.command.as_deref(), Some("uv"));
    assert_eq!(launch.env.get("ZEN_MCP_PORT").map(String::as_str), Some("8000"));
    // `${OPENAI_API_KEY:-}` with nothing set expands to the empty default
    assert_eq!(launch.env.get("OPENAI_API_KEY").map(String::as_str), Some(""));
    assert_eq!(launch.memory_requirement.map(|m| m.as_mb()), Some(512));
    assert!(by_name.defined_in.iter().any(|f| f == ".mcp/servers/core.json"));
    assert!(by_name.missing_env.is_empty(), "{:?}", by_name.missing_env);
    assert!(cfg.server("no-such-server").is_none());
}

#[test]
fn zen_port_check_probes_8000_to_8002() {
    let cfg = load_project(Profile::Default);
    let zen = cfg.server("zen").expect("zen");
    let port_checks: Vec<_> = zen
        .strategies
        .iter()
        .filter_map(|(tier, s)| match s {
            Strategy::PortCheck { host, ports, health_endpoint, mcp_path } => Some((*tier, host, ports, health_endpoint, mcp_path)),
            _ => None,
        })
        .collect();
    assert_eq!(port_checks.len(), 1, "{:?}", zen.strategies);
    let (tier, host, ports, health, mcp_path) = port_checks[0];
    assert_eq!(tier, Tier::ExternalDeployment);
    assert_eq!(host, "127.0.0.1");
    assert_eq!(ports, &vec![8000, 8001, 8002]);
    assert_eq!(health.as_deref(), Some("/health"));
    assert_eq!(mcp_path, "/mcp");
    // strategies come in tier order: external before user before docker
    let tiers: Vec<Tier> = zen.strategies.iter().map(|(t, _)| *t).collect();
    let mut sorted = tiers.clone();
    sorted.sort_by_key(|t| zen.priority_order.iter().position(|o| o == t));
    assert_eq!(tiers, sorted);
    assert_eq!(zen.strategies.len(), 6);
}

#[test]
fn optional_servers_are_npx_first_and_keyed_ones_disabled() {
    let cfg = load_project(Profile::Default);
    let perplexity = cfg.server("perplexity").expect("perplexity");
    assert!(!perplexity.enabled);
    assert_eq!(perplexity.requires_api_key.as_deref(), Some("PERPLEXITY_API_KEY"));
    assert_eq!(perplexity.missing_env, ["PERPLEXITY_API_KEY"]);
    // a disabled server keeps its unexpanded placeholder
    let env = &perplexity.launch.as_ref().expect("launch").env;
    assert_eq!(env.get("PERPLEXITY_API_KEY").map(String::as_str), Some("${PERPLEXITY_API_KEY}"));

    let sentry = cfg.server("sentry").expect("sentry");
    assert!(!sentry.enabled);
    assert_eq!(sentry.requires_api_key.as_deref(), Some("SENTRY_AUTH_TOKEN"));

    let context7 = cfg.server("context7").expect("context7");
    assert!(context7.enabled);
    assert_eq!(context7.priority_order, [Tier::NpxCloud, Tier::ExternalDeployment]);
    assert!(matches!(
        &context7.strategies[0],
        (Tier::NpxCloud, Strategy::NpxAvailable { package }) if package == "@upstash/context7-mcp"
    ));
}

#[test]
fn api_key_in_environment_clears_missing_env() {
    let env = |k: &str| (k == "PERPLEXITY_API_KEY").then(|| "secret".to_string());
    let (cfg, diags) = load(&[shipped_layer(LayerKind::Project)], Profile::Default, &env);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let cfg = cfg.expect("config");
    assert!(cfg.server("perplexity").expect("perplexity").missing_env.is_empty());
}

#[test]
fn agent_cascade_prefers_project_core_over_bundled_default() {
    let cfg = load_project(Profile::Default);
    let reviewer = &cfg.agents.agents["code-reviewer"];
    assert_eq!(reviewer.file, ".agents/core/code-reviewer.yaml");
    assert_eq!(reviewer.source, AgentSource::ProjectCore);
    assert_eq!(
        reviewer.candidates,
        [
            (AgentSource::ProjectCore, ".agents/core/code-reviewer.yaml".to_string()),
            (AgentSource::BundledDefault, ".agents/defaults/code-reviewer.yaml".to_string()),
        ]
    );
    assert_eq!(cfg.agents.agents["journey-orchestrator"].source, AgentSource::ProjectSpecific);
    assert_eq!(cfg.agents.limits.model_limits.get("opus"), Some(&3));
    assert_eq!(cfg.agents.limits.max_concurrent_agents, 10);
    for name in ["shared-architecture.md", "c-r-e-a-t-e-framework.md"] {
        assert!(cfg.agents.context_files.iter().any(|f| f == name), "{name} missing");
    }
}

#[test]
fn default_profile_uses_the_settings_block() {
    let cfg = load_project(Profile::Default);
    assert_eq!(cfg.settings.health_check_timeout_ms, 10_000);
    assert_eq!(cfg.settings.discovery_interval_ms, 30_000);
    assert_eq!(cfg.settings.cache_ttl_minutes, 5);
    assert!(!cfg.settings.prefer_external);
    assert_eq!(cfg.resource_limits.total_memory_mb, 2048);
    assert_eq!(cfg.resource_limits.max_concurrent_servers, 8);
}

#[test]
fn production_profile_applies_the_production_block() {
    let cfg = load_project(Profile::Production);
    assert_eq!(cfg.settings.health_check_timeout_ms, 15_000);
    assert_eq!(cfg.settings.discovery_timeout_ms, 30_000);
    assert!(cfg.settings.prefer_external);
    assert!(!cfg.settings.disable_embedded);
    // untouched settings keep their values
    assert_eq!(cfg.settings.cache_ttl_minutes, 5);
    assert_eq!(cfg.agents.limits.max_concurrent_agents, 6);
}

#[test]
fn env_override_beats_production_profile() {
    let env = |k: &str| (k == "CRAFTMESH_HEALTH_CHECK_TIMEOUT").then(|| "2.5".to_string());
    let (cfg, diags) = load(&[shipped_layer(LayerKind::Project)], Profile::Production, &env);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    assert_eq!(cfg.expect("config").settings.health_check_timeout_ms, 2_500);
}

/// The node embeds the same files as its built-in layer and loads the project's copy on
/// top; that must be just as clean, and the project layer must win.
#[test]
fn shipped_files_as_builtin_and_project_layers_load_cleanly() {
    let layers = [shipped_layer(LayerKind::Builtin), shipped_layer(LayerKind::Project)];
    let (cfg, diags) = load(&layers, Profile::Default, &no_env);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let cfg = cfg.expect("config");
    assert_eq!(cfg.server("zen").expect("zen").name, "zen-mcp");
    let reviewer = &cfg.agents.agents["code-reviewer"];
    assert_eq!((reviewer.source, reviewer.file.as_str()), (AgentSource::ProjectCore, ".agents/core/code-reviewer.yaml"));
}

/// With only the built-in layer (no project files on disk), every agent still resolves
/// and the built-in copy of core/ outranks the built-in copy of defaults/.
#[test]
fn shipped_files_as_builtin_layer_alone_load_cleanly() {
    let (cfg, diags) = load(&[shipped_layer(LayerKind::Builtin)], Profile::Default, &no_env);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let cfg = cfg.expect("config");
    let agents: Vec<&str> = cfg.agents.agents.keys().map(String::as_str).collect();
    assert_eq!(agents, ["ai-engineer", "code-reviewer", "journey-orchestrator"]);
    assert_eq!(cfg.agents.agents["code-reviewer"].file, ".agents/core/code-reviewer.yaml");
    assert_eq!(cfg.agents.agents["code-reviewer"].source, AgentSource::BundledDefault);
}

#[test]
fn shipped_files_contain_no_lan_addresses() {
    let layer = shipped_layer(LayerKind::Project);
    let texts = layer.mcp_discovery.iter().chain(layer.server_files.iter()).chain(layer.agents_discovery.iter()).chain(layer.agent_defs.iter().map(|(_, f)| f));
    for f in texts {
        for bad in ["192.168.", "10.0.", "172.16."] {
            assert!(!f.text.contains(bad), "{} contains a LAN address ({bad})", f.path);
        }
    }
}

/// Every key of the agents' `production.resource_limits` block applies, like the
/// top-level `production.max_concurrent_agents` (which wins when both are given).
#[test]
fn agents_production_resource_limits_apply() {
    let mut layer = shipped_layer(LayerKind::Project);
    let f = layer.agents_discovery.as_mut().expect("agents discovery");
    f.text =
        f.text.replace("  max_concurrent_agents: 6\n", "").replace("    total_memory_mb: 1536\n", "    total_memory_mb: 1536\n    max_concurrent_agents: 4\n");
    assert!(f.text.contains("    max_concurrent_agents: 4\n"), "edit applied");
    let (cfg, diags) = load(&[layer.clone()], Profile::Production, &no_env);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let limits = cfg.expect("config").agents.limits;
    assert_eq!((limits.max_concurrent_agents, limits.total_memory_mb), (4, 1536));
    let (cfg, _) = load(&[layer], Profile::Default, &no_env);
    assert_eq!(cfg.expect("config").agents.limits.max_concurrent_agents, 10);
}
