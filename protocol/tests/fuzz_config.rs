//! Property tests: no input, however broken, makes the parsers or the loader panic.
//!
//! Inputs are random bytes, random strings, lines assembled from configuration-like
//! fragments, and random mutations of the repository's shipped files.

mod common;

use common::{shipped_layer, text_file};
use craftmesh_protocol::config::agents::{AgentDefinition, AgentSource, AgentsDiscoveryFile};
use craftmesh_protocol::config::mcp::{DiscoveryFile, ServersFile};
use craftmesh_protocol::config::source::{self, Format};
use craftmesh_protocol::config::{LayerFiles, LayerKind, Profile, TextFile, load};
use proptest::prelude::*;

const CASES: u32 = 256;

/// Runs every parser on `text` in both formats; returns nothing, must not panic.
fn parse_all(text: &str) {
    for fmt in [Format::Yaml, Format::Json] {
        let _ = source::parse::<DiscoveryFile>("f", text, fmt);
        let _ = source::parse::<ServersFile>("f", text, fmt);
        let _ = source::parse::<AgentsDiscoveryFile>("f", text, fmt);
        let _ = source::parse::<AgentDefinition>("f", text, fmt);
    }
}

/// Loads `text` in the place of one file of the shipped layer (the other files intact),
/// in both profiles, with an environment that sets a few variables to odd values.
fn load_with(slot: usize, text: &str) {
    let mut layer = shipped_layer(LayerKind::Project);
    let replace = |f: &mut TextFile| f.text = text.to_string();
    match slot % 5 {
        0 => replace(layer.mcp_discovery.as_mut().expect("discovery")),
        1 => replace(&mut layer.server_files[0]),
        2 => replace(layer.server_files.last_mut().expect("servers")),
        3 => replace(layer.agents_discovery.as_mut().expect("agents")),
        _ => replace(&mut layer.agent_defs[0].1),
    }
    let env = |k: &str| match k {
        "CRAFTMESH_HEALTH_CHECK_TIMEOUT" => Some(text.chars().take(8).collect()),
        "OPENAI_API_KEY" => Some("${NESTED}".to_string()),
        _ => None,
    };
    for profile in [Profile::Default, Profile::Production] {
        let (cfg, diags) = load(std::slice::from_ref(&layer), profile, &env);
        // the loader's own contract: a config exactly when there are no errors
        assert_eq!(cfg.is_some(), !diags.has_errors());
        for d in &diags.0 {
            let _ = d.to_string();
        }
    }
}

fn shipped_texts() -> Vec<String> {
    let layer = shipped_layer(LayerKind::Project);
    let mut v: Vec<String> = Vec::new();
    v.extend(layer.mcp_discovery.map(|f| f.text));
    v.extend(layer.server_files.into_iter().map(|f| f.text));
    v.extend(layer.agents_discovery.map(|f| f.text));
    v.extend(layer.agent_defs.into_iter().map(|(_, f)| f.text));
    v
}

/// One edit of a text, at a position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: f64, len: usize },
    Insert { at: f64, what: String },
    DuplicateLine { at: f64 },
    DeleteLine { at: f64 },
    SwapLines { a: f64, b: f64 },
    Indent { at: f64, spaces: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let frag = prop_oneof![
        any::<String>(),
        Just(":".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("${".to_string()),
        Just("${UNSET_FUZZ_VAR}".to_string()),
        Just("${A:-b}".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("\"".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("99999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just(".nan".to_string()),
        Just("512XB".to_string()),
        Just("type: port_check".to_string()),
        Just("aliases: [zen-mcp]".to_string()),
    ];
    prop_oneof![
        (0.0..1.0f64, 1usize..40).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (0.0..1.0f64, frag).prop_map(|(at, what)| Mutation::Insert { at, what }),
        (0.0..1.0f64).prop_map(|at| Mutation::DuplicateLine { at }),
        (0.0..1.0f64).prop_map(|at| Mutation::DeleteLine { at }),
        (0.0..1.0f64, 0.0..1.0f64).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        (0.0..1.0f64, 0usize..9).prop_map(|(at, spaces)| Mutation::Indent { at, spaces }),
    ]
}

fn char_pos(text: &str, at: f64) -> usize {
    let n = text.chars().count();
    let i = ((n as f64) * at) as usize;
    text.char_indices().nth(i.min(n)).map_or(text.len(), |(b, _)| b)
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let line_at = |at: f64, n: usize| ((n as f64 * at) as usize).min(n.saturating_sub(1));
    match m {
        Mutation::Delete { at, len } => {
            let start = char_pos(text, *at);
            let end = text[start..].char_indices().nth(*len).map_or(text.len(), |(b, _)| start + b);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert { at, what } => {
            let p = char_pos(text, *at);
            format!("{}{what}{}", &text[..p], &text[p..])
        }
        Mutation::DuplicateLine { at } if !lines.is_empty() => {
            let i = line_at(*at, lines.len());
            let l = lines[i].clone();
            lines.insert(i, l);
            lines.join("\n")
        }
        Mutation::DeleteLine { at } if !lines.is_empty() => {
            lines.remove(line_at(*at, lines.len()));
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } if !lines.is_empty() => {
            let (i, j) = (line_at(*a, lines.len()), line_at(*b, lines.len()));
            lines.swap(i, j);
            lines.join("\n")
        }
        Mutation::Indent { at, spaces } if !lines.is_empty() => {
            let i = line_at(*at, lines.len());
            lines[i] = format!("{}{}", " ".repeat(*spaces), lines[i].trim_start());
            lines.join("\n")
        }
        _ => text.to_string(),
    }
}

/// Lines built from keys and values of the real schema, at random indentation, so the
/// parsers get past the syntax and into field checks, `${}` expansion and locating.
fn config_like() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "version",
        "settings",
        "servers",
        "zen-mcp",
        "zen",
        "aliases",
        "priority_order",
        "discovery_strategies",
        "external",
        "user",
        "docker",
        "npx",
        "embedded",
        "type",
        "ports",
        "health_endpoint",
        "mcp_path",
        "host",
        "variables",
        "patterns",
        "paths",
        "package",
        "names",
        "labels",
        "resource_requirements",
        "memory_mb",
        "deployment_config",
        "production",
        "resource_limits",
        "mcpServers",
        "command",
        "args",
        "env",
        "enabled",
        "memory_requirement",
        "health_check",
        "required_env",
        "agents",
        "metadata",
        "id",
        "runtime",
        "model",
        "fallback_models",
        "context",
        "shared",
        "implementation",
        "source",
        "1",
        "2",
        "0",
    ]);
    let value = prop::sample::select(vec![
        "",
        "1",
        "0",
        "-3",
        "8000",
        "70000",
        "1.5",
        "true",
        "[]",
        "{}",
        "[8000, 8001]",
        "port_check",
        "port_scan",
        "external_deployment",
        "npx_cloud",
        "bogus_tier",
        "\"/health\"",
        "health",
        "512MB",
        "512XB",
        "\"${UNSET_FUZZ_VAR}\"",
        "\"${OK:-x}\"",
        "\"${\"",
        "[zen]",
        "[zen-mcp]",
        "sonnet",
        "opus",
        "markdown",
        "|",
        "~",
        "null",
        "&x",
        "*x",
    ]);
    let line =
        (0usize..4, prop::bool::ANY, key, value).prop_map(|(depth, dash, k, v)| format!("{}{}{k}: {v}", "  ".repeat(depth), if dash { "- " } else { "" }));
    prop::collection::vec(line, 0..40).prop_map(|ls| ls.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), slot in 0usize..5) {
        let text = String::from_utf8_lossy(&bytes);
        parse_all(&text);
        load_with(slot, &text);
    }

    #[test]
    fn random_strings_never_panic(text in ".{0,400}", slot in 0usize..5) {
        parse_all(&text);
        load_with(slot, &text);
    }

    #[test]
    fn config_like_text_never_panics(text in config_like(), slot in 0usize..5) {
        parse_all(&text);
        load_with(slot, &text);
    }

    #[test]
    fn mutated_shipped_files_never_panic(
        which in 0usize..64,
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let texts = shipped_texts();
        let slot_of = |i: usize| match i { 0 => 0, 1 => 1, 2 => 2, 3 => 3, _ => 4 };
        let i = which % texts.len();
        let mut text = texts[i].clone();
        for m in &muts {
            text = apply(&text, m);
        }
        parse_all(&text);
        load_with(slot_of(i), &text);
    }
}

/// A file over the size limit is refused before parsing, with a diagnostic.
#[test]
fn oversized_file_is_refused() {
    let big = "#".repeat(source::MAX_CONFIG_BYTES + 1);
    let e = source::parse::<DiscoveryFile>("big.yaml", &big, Format::Yaml).expect_err("too big");
    assert!(e.message.contains("limit"), "{e}");
}

/// Deep nesting and alias expansion end in an error, not a stack overflow or a hang.
#[test]
fn deep_nesting_and_alias_bombs_are_errors() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    parse_all(&deep);
    let deep_map = "a: ".repeat(5_000);
    parse_all(&deep_map);
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9 {
        let prev = if i == 0 { "a".to_string() } else { format!("b{}", i - 1) };
        bomb.push_str(&format!("b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    parse_all(&bomb);
}

/// Many unknown fields in a big file: the first ones one by one, the rest summed up, in
/// reasonable time (locating each warning scans the text).
#[test]
fn many_unknown_fields_are_reported_quickly() {
    let mut text = String::from("settings:\n");
    for i in 0..20_000 {
        text.push_str(&format!("  unknown_{i}: 1\n"));
    }
    let started = std::time::Instant::now();
    let (_, warnings) = source::parse::<DiscoveryFile>("f.yaml", &text, Format::Yaml).expect("parses");
    let cap = source::MAX_UNKNOWN_FIELD_WARNINGS;
    assert_eq!(warnings.len(), cap + 1);
    assert_eq!((warnings[cap - 1].field.as_str(), warnings[cap - 1].line), (format!("settings.unknown_{}", cap - 1).as_str(), cap + 1));
    assert!(warnings[cap].message.contains(&format!("{} more unknown fields", 20_000 - cap)), "{}", warnings[cap]);
    assert_eq!(warnings[cap].line, cap + 2);
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
}

/// The helper reads real files (guards against the fuzzers silently testing nothing).
#[test]
fn fuzz_inputs_are_the_real_files() {
    assert!(text_file(".mcp/discovery-config.yaml").text.contains("zen-mcp"));
    assert!(shipped_texts().len() >= 7);
    let layer: LayerFiles = shipped_layer(LayerKind::Project);
    assert!(layer.agent_defs.iter().any(|(s, _)| *s == AgentSource::BundledDefault));
}
