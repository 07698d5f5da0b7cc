//! Merging the layers' MCP server entries (discovery files and launch JSON) into [`ServerSpec`]s.

use super::{LayerKind, ResourceLimits, ServerSpec};
use crate::config::diag::{Diagnostic, Diagnostics};
use crate::config::mcp::{DiscoveryFile, ServerLaunch, ServersFile, Tier};
use crate::config::source::{EnvError, expand_env, locate};
use std::collections::{BTreeMap, BTreeSet};

pub(super) fn merge_servers(
    discovery: &[(LayerKind, String, String, DiscoveryFile)],
    servers_files: &[(LayerKind, String, String, ServersFile)],
    env: &dyn Fn(&str) -> Option<String>,
    limits: &ResourceLimits,
    discovery_complete: bool,
    diags: &mut Diagnostics,
) -> BTreeMap<String, ServerSpec> {
    let mut out: BTreeMap<String, ServerSpec> = BTreeMap::new();
    // Discovery entries: higher layers replace a server wholesale.
    for (_, path, text, d) in discovery {
        for (name, sd) in &d.servers {
            let field = format!("servers.{name}");
            let mut strategies = Vec::new();
            for (group, list) in &sd.discovery_strategies {
                let gfield = format!("{field}.discovery_strategies.{group}");
                let Some(tier) = Tier::from_group(group) else {
                    let (l, c) = locate(text, &gfield);
                    diags.push(Diagnostic::error(
                        path,
                        l,
                        c,
                        gfield,
                        format!("unknown strategy group `{group}`; expected external, user, docker, npx or embedded"),
                    ));
                    continue;
                };
                for (i, raw) in list.iter().enumerate() {
                    let sfield = format!("{gfield}[{i}]");
                    let (strategy, problems) = raw.check();
                    for p in problems {
                        let f = format!("{sfield}.{}", p.field);
                        let (l, c) = locate(text, &f);
                        let (l, c) = if l == 0 { locate(text, &sfield) } else { (l, c) };
                        diags.push(if p.is_error { Diagnostic::error(path, l, c, f, p.message) } else { Diagnostic::warning(path, l, c, f, p.message) });
                    }
                    if let Some(s) = strategy {
                        strategies.push((tier, s));
                    }
                }
            }
            let mut order = sd.priority_order.0.clone();
            let mut seen = BTreeSet::new();
            if order.iter().any(|t| !seen.insert(*t)) {
                let (l, c) = locate(text, &format!("{field}.priority_order"));
                diags.push(Diagnostic::warning(path, l, c, format!("{field}.priority_order"), "a tier is listed more than once; the first place counts"));
                let mut s2 = BTreeSet::new();
                order.retain(|t| s2.insert(*t));
            }
            if order.is_empty() {
                order = Tier::ALL.to_vec();
            }
            for (tier, _) in &strategies {
                if !order.contains(tier) {
                    let (l, c) = locate(text, &format!("{field}.priority_order"));
                    diags.push(Diagnostic::warning(
                        path,
                        l,
                        c,
                        format!("{field}.priority_order"),
                        format!("strategies of tier `{}` exist but the tier is not in priority_order; it is tried last", tier.as_str()),
                    ));
                    order.push(*tier);
                }
            }
            // keep strategies sorted by the tier's rank, stable within a tier
            strategies.sort_by_key(|(t, _)| order.iter().position(|o| o == t).unwrap_or(usize::MAX));
            let requires_api_key = sd.requires_api_key.clone().or_else(|| sd.deployment_config.as_ref().and_then(|d| d.requires_api_key.clone()));
            let spec = ServerSpec {
                name: name.clone(),
                aliases: sd.aliases.clone(),
                enabled: true,
                priority_order: order,
                strategies,
                resource_requirements: sd.resource_requirements.clone(),
                deployment: sd.deployment_config.clone(),
                missing_env: requires_api_key.iter().filter(|k| env(k).is_none()).cloned().collect(),
                requires_api_key,
                launch: None,
                defined_in: vec![path.clone()],
            };
            out.insert(name.clone(), spec);
        }
    }
    // Alias conflicts among discovery entries.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for s in out.values() {
        for a in &s.aliases {
            if out.contains_key(a) && a != &s.name {
                diags.push(Diagnostic::error(
                    s.defined_in.last().map(String::as_str).unwrap_or(""),
                    0,
                    0,
                    format!("servers.{}.aliases", s.name),
                    format!("alias `{a}` is also the name of another server"),
                ));
            }
            if let Some(prev) = owner.insert(a.clone(), s.name.clone()) {
                diags.push(Diagnostic::error(
                    s.defined_in.last().map(String::as_str).unwrap_or(""),
                    0,
                    0,
                    format!("servers.{}.aliases", s.name),
                    format!("alias `{a}` is claimed by both `{prev}` and `{}`", s.name),
                ));
            }
        }
    }
    // Launch entries from JSON: linked by name or alias; higher layers replace.
    let mut unlinked_json: Vec<(String, String, String)> = Vec::new(); // (name, file, text)
    for (_, path, text, f) in servers_files {
        for (jname, launch) in &f.mcp_servers {
            let field = format!("mcpServers.{jname}");
            let mut launch = launch.clone();
            // ${VAR} expansion: errors for enabled servers, kept verbatim for disabled ones.
            let mut missing = Vec::new();
            let mut expand = |what: String, v: &mut String| match expand_env(v, env) {
                Ok(x) => *v = x,
                Err(EnvError::Unset(var)) if !launch_enabled(&f.mcp_servers, jname) => missing.push(var),
                Err(e) => {
                    let needle = match &e {
                        EnvError::Unset(var) => format!("${{{var}"),
                        _ => "${".to_string(),
                    };
                    let (l, c) = find_text(text, &needle, &locate(text, &what));
                    diags.push(Diagnostic::error(path, l, c, what, e.to_string()));
                }
            };
            for (k, v) in launch.env.iter_mut() {
                expand(format!("{field}.env.{k}"), v);
            }
            for (i, a) in launch.args.iter_mut().enumerate() {
                expand(format!("{field}.args[{i}]"), a);
            }
            if let Some(cwd) = launch.cwd.as_mut() {
                expand(format!("{field}.cwd"), cwd);
            }
            if let Some(url) = launch.url.as_mut() {
                expand(format!("{field}.url"), url);
            }
            if launch.command.is_none() && launch.url.is_none() {
                let (l, c) = locate(text, &field);
                diags.push(Diagnostic::error(path, l, c, field.clone(), "a server needs `command` (to run it) or `url` (to reach it)"));
            }
            let mut needed: Vec<String> = launch.health_check.as_ref().map(|h| h.required_env.clone()).unwrap_or_default();
            needed.retain(|k| env(k).is_none());
            missing.extend(needed);
            let target = out
                .values()
                .find(|s| s.name == *jname || s.aliases.contains(jname))
                .map(|s| s.name.clone())
                .or_else(|| out.values().find(|s| launch.aliases.contains(&s.name)).map(|s| s.name.clone()));
            match target {
                Some(t) => {
                    let s = out.get_mut(&t).expect("target came from the map");
                    s.enabled = launch.enabled;
                    for a in std::iter::once(jname).chain(launch.aliases.iter()) {
                        if a != &s.name && !s.aliases.contains(a) {
                            s.aliases.push(a.clone());
                        }
                    }
                    for m in missing {
                        if !s.missing_env.contains(&m) {
                            s.missing_env.push(m);
                        }
                    }
                    s.launch = Some(launch);
                    s.defined_in.push(path.clone());
                }
                None => {
                    unlinked_json.push((jname.clone(), path.clone(), text.clone()));
                    out.insert(
                        jname.clone(),
                        ServerSpec {
                            name: jname.clone(),
                            aliases: launch.aliases.clone(),
                            enabled: launch.enabled,
                            priority_order: Tier::ALL.to_vec(),
                            strategies: Vec::new(),
                            resource_requirements: None,
                            deployment: None,
                            requires_api_key: None,
                            missing_env: missing,
                            launch: Some(launch),
                            defined_in: vec![path.clone()],
                        },
                    );
                }
            }
        }
    }
    // Name mismatches: a JSON server with no discovery entry, next to a discovery entry
    // with no launch entry whose name looks the same.
    for (jname, path, text) in unlinked_json.iter().filter(|_| discovery_complete) {
        let similar = out.values().find(|s| s.launch.is_none() && similar_names(&s.name, jname)).map(|s| s.name.clone());
        let (l, c) = locate(text, &format!("mcpServers.{jname}"));
        let msg = match similar {
            Some(other) => format!(
                "server `{jname}` has no discovery entry, and discovery-config.yaml has `{other}` with no launch entry; if they are one server, add `aliases: [{jname}]` under servers.{other}"
            ),
            None => format!("server `{jname}` has no entry in discovery-config.yaml; only its launch settings are known, so it is not discovered"),
        };
        diags.push(Diagnostic::warning(path, l, c, format!("mcpServers.{jname}"), msg));
    }
    let total: u64 = out.values().filter(|s| s.enabled).filter_map(|s| s.resource_requirements.as_ref().and_then(|r| r.memory_mb)).sum();
    if total > limits.total_memory_mb
        && let Some((_, path, text, _)) = discovery.last()
    {
        let (l, c) = locate(text, "resource_limits.total_memory_mb");
        diags.push(Diagnostic::warning(
            path,
            l,
            c,
            "resource_limits.total_memory_mb",
            format!("enabled servers need {total} MB together, more than the limit of {} MB; not all can run on one node", limits.total_memory_mb),
        ));
    }
    out
}

fn launch_enabled(map: &BTreeMap<String, ServerLaunch>, name: &str) -> bool {
    map.get(name).is_none_or(|l| l.enabled)
}

/// `zen` vs `zen-mcp`, `context7` vs `context7_mcp`, case-insensitively.
fn similar_names(a: &str, b: &str) -> bool {
    fn norm(s: &str) -> String {
        let s = s.to_ascii_lowercase().replace('_', "-");
        let s = s.strip_suffix("-mcp").or_else(|| s.strip_suffix("-server")).unwrap_or(&s).to_string();
        s.strip_prefix("mcp-").unwrap_or(&s).to_string()
    }
    norm(a) == norm(b)
}

/// Line and column of the first `needle` at or after `near` (falls back to `near`).
fn find_text(text: &str, needle: &str, near: &(usize, usize)) -> (usize, usize) {
    let start_line = near.0.saturating_sub(1);
    for (i, line) in text.lines().enumerate().skip(start_line) {
        if let Some(c) = line.find(needle) {
            return (i + 1, c + 1);
        }
    }
    *near
}
