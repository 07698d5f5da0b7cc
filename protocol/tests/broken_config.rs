//! Broken configuration must produce a diagnostic naming the file, the line and the
//! field, so `craftmesh config check` can point the user at the mistake.

mod common;

use common::show;
use craftmesh_protocol::config::agents::AgentSource;
use craftmesh_protocol::config::{Diagnostic, Diagnostics, LayerFiles, LayerKind, Profile, Severity, TextFile, load};

const DISCOVERY: &str = ".mcp/discovery-config.yaml";
const CORE: &str = ".mcp/servers/core.json";
const AGENTS: &str = ".agents/discovery-config.yaml";

/// A small valid discovery file the cases below break in one place each.
const GOOD_DISCOVERY: &str = r#"version: "1.0"
settings:
  cache_ttl_minutes: 5
  health_check_timeout: 10
servers:
  zen-mcp:
    aliases: [zen]
    priority_order:
      1: external_deployment
      2: user_installation
    discovery_strategies:
      external:
        - type: port_check
          ports: [8000, 8001]
          health_endpoint: "/health"
        - type: env_variable
          variables: [ZEN_MCP_URL]
      user:
        - type: path_check
          paths: ["~/dev/zen-mcp-server"]
    resource_requirements:
      memory_mb: 512
      dependencies: [python]
production:
  health_check_timeout: 15
  prefer_external: true
"#;

/// A small valid servers file.
const GOOD_CORE: &str = r#"{
  "mcpServers": {
    "zen": {
      "command": "uv",
      "args": ["run", "python", "-m", "src.main"],
      "env": {
        "ZEN_MCP_PORT": "8000",
        "OPENAI_API_KEY": "${OPENAI_API_KEY:-}"
      },
      "enabled": true,
      "memory_requirement": "512MB"
    }
  }
}
"#;

const GOOD_AGENTS: &str = r#"version: "1.0"
default_priority_order: [user_override, project_specific, bundled_default]
agents:
  code-reviewer:
    priority_order: [project_specific, bundled_default]
resource_limits:
  total_memory_mb: 2048
  model_limits:
    sonnet: 8
    haiku: 15
"#;

const GOOD_AGENT_DEF: &str = r#"metadata:
  id: code-reviewer
  version: "1.0.0"
runtime:
  model: sonnet
  fallback_models: [haiku]
  memory_requirement: 512MB
  execution_mode: async
context:
  shared: ["/context/shared-architecture.md"]
implementation:
  type: markdown
  source: |
    Review the change.
"#;

fn layer(discovery: &str, core: &str) -> LayerFiles {
    let mut l = LayerFiles::empty(LayerKind::Project);
    l.mcp_discovery = Some(TextFile { path: DISCOVERY.into(), text: discovery.into() });
    l.server_files.push(TextFile { path: CORE.into(), text: core.into() });
    l.agents_discovery = Some(TextFile { path: AGENTS.into(), text: GOOD_AGENTS.into() });
    l.agent_defs.push((AgentSource::ProjectCore, TextFile { path: ".agents/core/code-reviewer.yaml".into(), text: GOOD_AGENT_DEF.into() }));
    l.context_files.push("shared-architecture.md".into());
    l
}

fn run(discovery: &str, core: &str, env: &[(&str, &str)]) -> Diagnostics {
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    let (cfg, diags) = load(&[layer(discovery, core)], Profile::Default, &lookup);
    assert_eq!(cfg.is_some(), !diags.has_errors(), "a config comes back exactly when there are no errors");
    diags
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1).unwrap_or_else(|| panic!("`{needle}` not in text"))
}

/// Replaces exactly one occurrence of `from`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once");
    text.replacen(from, to, 1)
}

#[test]
fn the_good_inputs_are_clean() {
    let d = run(GOOD_DISCOVERY, GOOD_CORE, &[]);
    assert!(d.0.is_empty(), "{}", show(&d));
}

/// What one broken input must produce.
struct Case {
    name: &'static str,
    discovery: String,
    core: String,
    env: Vec<(&'static str, &'static str)>,
    severity: Severity,
    file: &'static str,
    /// Expected line; `None` for "any line > 0", `Some(0)` for a diagnostic about no line.
    line: Option<usize>,
    field: &'static str,
    message: &'static str,
}

fn case(name: &'static str, discovery: String, core: String) -> Case {
    Case { name, discovery, core, env: Vec::new(), severity: Severity::Error, file: DISCOVERY, line: None, field: "", message: "" }
}

fn cases() -> Vec<Case> {
    let d = GOOD_DISCOVERY;
    let c = GOOD_CORE;
    let mut v = Vec::new();

    // YAML syntax: an unclosed flow sequence. The parser notices on the next line.
    let text = edit(d, "aliases: [zen]", "aliases: [zen");
    v.push(Case {
        line: Some(line_of(&text, "priority_order:")),
        field: "servers.zen-mcp.aliases",
        message: "expected ',' or ']'",
        ..case("bad yaml syntax", text, c.into())
    });

    // YAML syntax: a tab used for indentation.
    let text = edit(d, "  cache_ttl_minutes: 5", "\tcache_ttl_minutes: 5");
    v.push(Case {
        line: Some(line_of(&text, "cache_ttl_minutes")),
        field: "settings",
        message: "cannot start any token",
        ..case("tab indentation", text, c.into())
    });

    // Wrong type.
    let text = edit(d, "ports: [8000, 8001]", "ports: \"eighty\"");
    v.push(Case {
        line: Some(line_of(&text, "eighty")),
        field: "servers.zen-mcp.discovery_strategies.external[0].ports",
        message: "invalid type",
        ..case("ports as a string", text, c.into())
    });

    // Wrong type inside a list.
    let text = edit(d, "ports: [8000, 8001]", "ports: [8000, 70000]");
    v.push(Case {
        line: Some(line_of(&text, "70000")),
        field: "servers.zen-mcp.discovery_strategies.external[0].ports[1]",
        ..case("port out of range", text, c.into())
    });

    // Bad size in a servers JSON file.
    let text = edit(c, "\"512MB\"", "\"512XB\"");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "512XB")),
        field: "mcpServers.zen.memory_requirement",
        message: "unknown size unit `XB`",
        ..case("bad size unit", d.into(), text)
    });

    // Unknown strategy type.
    let text = edit(d, "type: port_check", "type: port_scan");
    v.push(Case {
        line: Some(line_of(&text, "port_scan")),
        field: "servers.zen-mcp.discovery_strategies.external[0].type",
        message: "unknown variant `port_scan`",
        ..case("unknown strategy type", text, c.into())
    });

    // Unknown strategy group key.
    let text = edit(d, "      user:\n", "      cloud:\n");
    v.push(Case {
        line: Some(line_of(&text, "cloud:")),
        field: "servers.zen-mcp.discovery_strategies.cloud",
        message: "unknown strategy group `cloud`",
        ..case("unknown strategy group", text, c.into())
    });

    // Missing required strategy field: the line is the strategy's own.
    let text = edit(d, "          ports: [8000, 8001]\n", "");
    v.push(Case {
        line: Some(line_of(&text, "type: port_check")),
        field: "servers.zen-mcp.discovery_strategies.external[0].ports",
        message: "needs `ports`",
        ..case("port_check without ports", text, c.into())
    });

    // Missing required field of the second strategy in a group.
    let text = edit(d, "          variables: [ZEN_MCP_URL]\n", "");
    v.push(Case {
        line: Some(line_of(&text, "type: env_variable")),
        field: "servers.zen-mcp.discovery_strategies.external[1].variables",
        message: "needs `variables`",
        ..case("env_variable without variables", text, c.into())
    });

    // A path that does not start with '/'.
    let text = edit(d, "health_endpoint: \"/health\"", "health_endpoint: \"health\"");
    v.push(Case {
        line: Some(line_of(&text, "health_endpoint")),
        field: "servers.zen-mcp.discovery_strategies.external[0].health_endpoint",
        message: "must start with `/`",
        ..case("relative health endpoint", text, c.into())
    });

    // An unset variable in an enabled server: the line of the placeholder.
    let text = edit(c, "\"ZEN_MCP_PORT\": \"8000\"", "\"ZEN_MCP_PORT\": \"${UNSET_VAR_XYZ}\"");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "${UNSET_VAR_XYZ}")),
        field: "mcpServers.zen.env.ZEN_MCP_PORT",
        message: "`UNSET_VAR_XYZ` is not set",
        ..case("unset env var", d.into(), text)
    });

    // The same in args.
    let text = edit(c, "\"-m\", \"src.main\"]", "\"-m\",\n        \"${UNSET_VAR_XYZ}\"]");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "${UNSET_VAR_XYZ}")),
        field: "mcpServers.zen.args[3]",
        message: "`UNSET_VAR_XYZ` is not set",
        ..case("unset env var in args", d.into(), text)
    });

    // An unterminated placeholder.
    let text = edit(c, "\"ZEN_MCP_PORT\": \"8000\"", "\"ZEN_MCP_PORT\": \"${ZEN_PORT\"");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "${ZEN_PORT")),
        field: "mcpServers.zen.env.ZEN_MCP_PORT",
        message: "without a closing",
        ..case("unterminated placeholder", d.into(), text)
    });

    // priority_order with an unknown tier, numbered-map form.
    let text = edit(d, "2: user_installation", "2: cloud_magic");
    v.push(Case {
        line: Some(line_of(&text, "cloud_magic")),
        field: "servers.zen-mcp.priority_order.2",
        message: "unknown variant `cloud_magic`",
        ..case("unknown tier in map", text, c.into())
    });

    // priority_order with an unknown tier, list form.
    let text =
        edit(d, "    priority_order:\n      1: external_deployment\n      2: user_installation\n", "    priority_order: [external_deployment, cloud_magic]\n");
    v.push(Case {
        line: Some(line_of(&text, "cloud_magic")),
        field: "servers.zen-mcp.priority_order[1]",
        message: "unknown variant `cloud_magic`",
        ..case("unknown tier in list", text, c.into())
    });

    // A rank given twice.
    let text = edit(d, "2: user_installation", "1: user_installation");
    v.push(Case { field: "servers.zen-mcp.priority_order", message: "rank 1 is given twice", ..case("duplicate rank", text, c.into()) });

    // JSON syntax: a missing comma.
    let text = edit(c, "\"command\": \"uv\",", "\"command\": \"uv\"");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "\"args\"")),
        field: "mcpServers.zen",
        message: "expected `,` or `}`",
        ..case("bad json syntax", d.into(), text)
    });

    // JSON syntax: text after the document.
    let text = format!("{c}trailing\n");
    v.push(Case { file: CORE, line: Some(line_of(&text, "trailing")), message: "trailing characters", ..case("trailing json", d.into(), text) });

    // A server that can neither be run nor reached.
    let text = edit(c, "\"command\": \"uv\",", "");
    v.push(Case {
        file: CORE,
        line: Some(line_of(&text, "\"zen\"")),
        field: "mcpServers.zen",
        message: "needs `command`",
        ..case("no command or url", d.into(), text)
    });

    // Out-of-range setting.
    let text = edit(d, "health_check_timeout: 10", "health_check_timeout: 9000");
    v.push(Case {
        line: Some(line_of(&text, "9000")),
        field: "settings.health_check_timeout",
        message: "out of range",
        ..case("timeout out of range", text, c.into())
    });

    // Bad environment override.
    v.push(Case {
        env: vec![("CRAFTMESH_HEALTH_CHECK_TIMEOUT", "abc")],
        file: "env",
        line: Some(0),
        field: "CRAFTMESH_HEALTH_CHECK_TIMEOUT",
        message: "`abc` is not a valid value",
        ..case("bad env override", d.into(), c.into())
    });
    v.push(Case {
        env: vec![("CRAFTMESH_RESOURCE_CHECK_ENABLED", "yes please")],
        file: "env",
        line: Some(0),
        field: "CRAFTMESH_RESOURCE_CHECK_ENABLED",
        ..case("bad bool env override", d.into(), c.into())
    });

    // An environment override that parses but is out of range is blamed on the variable,
    // not on the file whose value it replaced.
    v.push(Case {
        env: vec![("CRAFTMESH_HEALTH_CHECK_TIMEOUT", "9000")],
        file: "env",
        line: Some(0),
        field: "CRAFTMESH_HEALTH_CHECK_TIMEOUT",
        message: "out of range",
        ..case("env override out of range", d.into(), c.into())
    });

    // --- warnings
    let text = edit(d, "  cache_ttl_minutes: 5\n", "  cache_ttl_minutes: 5\n  cache_ttl_minuets: 7\n");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "minuets")),
        field: "settings.cache_ttl_minuets",
        message: "unknown field",
        ..case("unknown settings field", text, c.into())
    });

    let text = edit(d, "          variables: [ZEN_MCP_URL]\n", "          variables: [ZEN_MCP_URL]\n          retries: 3\n");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "retries")),
        field: "servers.zen-mcp.discovery_strategies.external[1].retries",
        message: "unknown field",
        ..case("unknown strategy field", text, c.into())
    });

    let text = edit(d, "      memory_mb: 512\n", "      memory_mb: 512\n      gpu: 1\n");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "gpu")),
        field: "servers.zen-mcp.resource_requirements.gpu",
        message: "unknown field",
        ..case("unknown optional-struct field", text, c.into())
    });

    let text = edit(d, "  prefer_external: true\n", "  prefer_external: true\n  prefer_externals: false\n");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "prefer_externals")),
        field: "production.prefer_externals",
        message: "unknown field",
        ..case("unknown production field", text, c.into())
    });

    let text = edit(c, "\"enabled\": true,", "\"enabled\": true,\n      \"enabeld\": false,");
    v.push(Case {
        severity: Severity::Warning,
        file: CORE,
        line: Some(line_of(&text, "enabeld")),
        field: "mcpServers.zen.enabeld",
        message: "unknown field",
        ..case("unknown json field", d.into(), text)
    });

    // A field that belongs to another strategy type.
    let text = edit(d, "          paths: [\"~/dev/zen-mcp-server\"]\n", "          paths: [\"~/dev/zen-mcp-server\"]\n          ports: [1]\n");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "ports: [1]")),
        field: "servers.zen-mcp.discovery_strategies.user[0].ports",
        message: "no meaning for a `path_check`",
        ..case("misplaced strategy field", text, c.into())
    });

    // JSON `zen` next to YAML `zen-mcp` without the alias that joins them.
    let text = edit(d, "    aliases: [zen]\n", "");
    v.push(Case {
        severity: Severity::Warning,
        file: CORE,
        line: Some(line_of(c, "\"zen\"")),
        field: "mcpServers.zen",
        message: "add `aliases: [zen]` under servers.zen-mcp",
        ..case("name mismatch", text, c.into())
    });

    // A strategy group whose tier is missing from priority_order.
    let text = edit(d, "      2: user_installation\n", "");
    v.push(Case {
        severity: Severity::Warning,
        line: Some(line_of(&text, "priority_order")),
        field: "servers.zen-mcp.priority_order",
        message: "tier `user_installation`",
        ..case("tier not in priority_order", text, c.into())
    });

    v
}

fn matches(d: &Diagnostic, c: &Case) -> bool {
    d.severity == c.severity && d.file == c.file && d.field == c.field && d.message.contains(c.message)
}

#[test]
fn each_broken_input_gives_a_located_diagnostic() {
    let mut failures = Vec::new();
    for c in cases() {
        let diags = run(&c.discovery, &c.core, &c.env);
        let Some(d) = diags.0.iter().find(|d| matches(d, &c)) else {
            failures.push(format!("[{}] no {:?} in {} for field `{}` containing {:?}; got:\n{}", c.name, c.severity, c.file, c.field, c.message, show(&diags)));
            continue;
        };
        match c.line {
            Some(0) => {
                if d.line != 0 {
                    failures.push(format!("[{}] expected no line, got {d}", c.name));
                }
            }
            Some(l) => {
                if d.line != l {
                    failures.push(format!("[{}] expected line {l}, got {d}", c.name));
                }
            }
            None => {
                if d.line == 0 {
                    failures.push(format!("[{}] expected a line, got {d}", c.name));
                }
            }
        }
        if c.severity == Severity::Warning && diags.has_errors() {
            failures.push(format!("[{}] a warning case must not produce errors:\n{}", c.name, show(&diags)));
        }
        if c.severity == Severity::Error && c.file != "env" && d.column == 0 && d.line != 0 {
            failures.push(format!("[{}] located error without a column: {d}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn an_unset_variable_in_a_disabled_server_is_not_an_error() {
    let text = edit(GOOD_CORE, "\"enabled\": true", "\"enabled\": false");
    let text = edit(&text, "\"${OPENAI_API_KEY:-}\"", "\"${UNSET_VAR_XYZ}\"");
    let lookup = |_: &str| None;
    let (cfg, diags) = load(&[layer(GOOD_DISCOVERY, &text)], Profile::Default, &lookup);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let zen = cfg.as_ref().and_then(|c| c.server("zen")).expect("zen");
    assert!(!zen.enabled);
    assert_eq!(zen.missing_env, ["UNSET_VAR_XYZ"]);
}

#[test]
fn a_set_variable_is_expanded() {
    let text = edit(GOOD_CORE, "\"8000\"", "\"${ZEN_PORT_FOR_TEST:-8000}\"");
    let lookup = |k: &str| (k == "ZEN_PORT_FOR_TEST").then(|| "9123".to_string());
    let (cfg, diags) = load(&[layer(GOOD_DISCOVERY, &text)], Profile::Default, &lookup);
    assert!(diags.0.is_empty(), "{}", show(&diags));
    let zen = cfg.as_ref().and_then(|c| c.server("zen-mcp")).expect("zen-mcp");
    let env = &zen.launch.as_ref().expect("launch").env;
    assert_eq!(env["ZEN_MCP_PORT"], "9123");
}

#[test]
fn every_broken_file_is_reported_in_one_run() {
    let disc = edit(GOOD_DISCOVERY, "type: port_check", "type: port_scan");
    let core = edit(GOOD_CORE, "\"512MB\"", "\"512XB\"");
    let diags = run(&disc, &core, &[("CRAFTMESH_DISCOVERY_INTERVAL", "soon")]);
    let files: Vec<&str> = diags.errors().map(|d| d.file.as_str()).collect();
    for f in [DISCOVERY, CORE, "env"] {
        assert!(files.contains(&f), "no error for {f}:\n{}", show(&diags));
    }
}

#[test]
fn agent_problems_are_located() {
    let mut l = layer(GOOD_DISCOVERY, GOOD_CORE);
    let bad = edit(GOOD_AGENT_DEF, "memory_requirement: 512MB", "memory_requirement: 512XB");
    l.agent_defs.push((AgentSource::BundledDefault, TextFile { path: ".agents/defaults/code-reviewer.yaml".into(), text: bad.clone() }));
    let missing_ctx = edit(GOOD_AGENT_DEF, "shared-architecture.md", "nowhere.md");
    let missing_ctx = edit(&missing_ctx, "id: code-reviewer", "id: ai-engineer");
    l.agent_defs.push((AgentSource::ProjectCore, TextFile { path: ".agents/core/ai-engineer.yaml".into(), text: missing_ctx.clone() }));
    let (_, diags) = load(&[l], Profile::Default, &|_| None);
    let size = diags.errors().find(|d| d.file == ".agents/defaults/code-reviewer.yaml").unwrap_or_else(|| panic!("{}", show(&diags)));
    assert_eq!((size.field.as_str(), size.line), ("runtime.memory_requirement", line_of(&bad, "512XB")));
    let ctx =
        diags.warnings().find(|d| d.file == ".agents/core/ai-engineer.yaml" && d.field == "context.shared[0]").unwrap_or_else(|| panic!("{}", show(&diags)));
    assert_eq!(ctx.line, line_of(&missing_ctx, "context:") + 1);
}

#[test]
fn an_out_of_range_production_value_is_reported_where_it_is_written() {
    let text = edit(GOOD_DISCOVERY, "  health_check_timeout: 15", "  health_check_timeout: 0");
    let (_, diags) = load(&[layer(&text, GOOD_CORE)], Profile::Production, &|_| None);
    let e = diags.errors().next().unwrap_or_else(|| panic!("no error:\n{}", show(&diags)));
    assert_eq!((e.file.as_str(), e.field.as_str()), (DISCOVERY, "production.health_check_timeout"), "{e}");
    assert_eq!(e.line, line_of(&text, "health_check_timeout: 0"));
    assert_eq!(diags.errors().count(), 1, "{}", show(&diags));
    // the default profile does not apply the block, so nothing is wrong there
    let (cfg, diags) = load(&[layer(&text, GOOD_CORE)], Profile::Default, &|_| None);
    assert!(cfg.is_some() && diags.0.is_empty(), "{}", show(&diags));
}

#[test]
fn an_out_of_range_value_in_a_lower_layer_is_reported_in_that_layer() {
    let mut low = layer(&edit(GOOD_DISCOVERY, "health_check_timeout: 10", "health_check_timeout: 9000"), GOOD_CORE);
    low.kind = LayerKind::Builtin;
    for f in low.mcp_discovery.iter_mut().chain(low.server_files.iter_mut()) {
        f.path = format!("<builtin>/{}", f.path);
    }
    low.agent_defs.clear();
    let high = layer(&edit(GOOD_DISCOVERY, "  health_check_timeout: 10\n", ""), GOOD_CORE);
    let (_, diags) = load(&[low, high], Profile::Default, &|_| None);
    let e = diags.errors().next().unwrap_or_else(|| panic!("no error:\n{}", show(&diags)));
    assert_eq!((e.file.as_str(), e.field.as_str()), ("<builtin>/.mcp/discovery-config.yaml", "settings.health_check_timeout"), "{e}");
    assert_eq!(e.line, 4);
}

#[test]
fn an_unparsable_discovery_file_does_not_add_misleading_warnings() {
    let text = edit(GOOD_DISCOVERY, "type: port_check", "type: [port_check");
    let diags = run(&text, GOOD_CORE, &[]);
    assert_eq!(diags.0.len(), 1, "only the syntax error:\n{}", show(&diags));
    assert_eq!(diags.0[0].file, DISCOVERY);
}
