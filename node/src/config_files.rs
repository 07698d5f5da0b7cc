//! Reading configuration layers from disk (and from the embedded defaults) for the
//! pure loader in `craftmesh_protocol::config`.

use craftmesh_protocol::config::agents::AgentSource;
use craftmesh_protocol::config::source::MAX_CONFIG_BYTES;
use craftmesh_protocol::config::{self, Config, Diagnostic, Diagnostics, LayerFiles, LayerKind, Profile, TextFile};
use std::path::{Path, PathBuf};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_config.rs"));
}

/// Where configuration is read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Project root holding `.mcp/` and `.agents/`; `None` when there is no project.
    pub project_dir: Option<PathBuf>,
    /// Whether the project dir was named explicitly (then missing files are errors).
    pub project_explicit: bool,
    /// User config root (`~/.claude`), holding `mcp/` and `agents/`.
    pub user_dir: Option<PathBuf>,
    /// Whether to include the embedded defaults.
    pub builtin: bool,
    pub profile: Profile,
}

impl Sources {
    /// Resolves the defaults: `--config-dir`, else the current directory if it has
    /// `.mcp/` or `.agents/`; user dir from `CRAFTMESH_USER_CONFIG_DIR` or `~/.claude`.
    pub fn resolve(config_dir: Option<PathBuf>, profile: Profile, env: &dyn Fn(&str) -> Option<String>) -> Sources {
        let (project_dir, project_explicit) = match config_dir {
            Some(d) => (Some(d), true),
            None => {
                let cwd = std::env::current_dir().ok();
                (cwd.filter(|d| d.join(".mcp").is_dir() || d.join(".agents").is_dir()), false)
            }
        };
        let user_dir = match env("CRAFTMESH_USER_CONFIG_DIR") {
            Some(d) if d.is_empty() => None,
            Some(d) => Some(PathBuf::from(d)),
            None => home_dir().map(|h| h.join(".claude")),
        };
        let builtin = !matches!(env("CRAFTMESH_NO_BUILTIN").as_deref(), Some("1" | "true" | "yes"));
        Sources { project_dir, project_explicit, user_dir, builtin, profile }
    }
}

/// The user's home directory from `HOME`.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// Expands a leading `~/` with the home directory.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), home_dir()) {
        (Some(rest), Some(h)) => h.join(rest),
        _ if p == "~" => home_dir().unwrap_or_else(|| PathBuf::from(p)),
        _ => PathBuf::from(p),
    }
}

/// Reads all layers and loads the effective configuration.
pub fn load(sources: &Sources, env: &dyn Fn(&str) -> Option<String>) -> (Option<Config>, Diagnostics) {
    let mut diags = Diagnostics::default();
    let mut layers = Vec::new();
    if sources.builtin {
        layers.push(builtin_layer());
    }
    if let Some(dir) = &sources.project_dir {
        if sources.project_explicit && !dir.is_dir() {
            diags.push(Diagnostic::error(&dir.display().to_string(), 0, 0, "", "config directory does not exist"));
        } else if sources.project_explicit && !dir.join(".mcp").is_dir() && !dir.join(".agents").is_dir() {
            diags.push(Diagnostic::error(&dir.display().to_string(), 0, 0, "", "config directory has neither .mcp/ nor .agents/"));
        } else {
            layers.push(project_layer(dir, sources.project_explicit, &mut diags));
        }
    }
    if let Some(dir) = &sources.user_dir {
        layers.push(user_layer(dir, &mut diags));
    }
    let (cfg, more) = config::load(&layers, sources.profile, env);
    diags.extend(more.0);
    if diags.has_errors() { (None, diags) } else { (cfg, diags) }
}

fn builtin_layer() -> LayerFiles {
    let mut l = LayerFiles::empty(LayerKind::Builtin);
    for (rel, text) in builtin::BUILTIN_FILES {
        let path = format!("<builtin>/{rel}");
        let f = TextFile { path: path.clone(), text: (*text).to_string() };
        classify(&mut l, rel, f);
    }
    l
}

/// Puts a file into the right slot of a layer by its path relative to the layer root.
fn classify(l: &mut LayerFiles, rel: &str, f: TextFile) {
    let is_yaml = rel.ends_with(".yaml") || rel.ends_with(".yml");
    match rel {
        ".mcp/discovery-config.yaml" => l.mcp_discovery = Some(f),
        ".agents/discovery-config.yaml" => l.agents_discovery = Some(f),
        r if r.starts_with(".mcp/servers/") && r.ends_with(".json") => l.server_files.push(f),
        r if r.starts_with(".agents/context/") => {
            if let Some(name) = r.strip_prefix(".agents/context/") {
                l.context_files.push(name.to_string());
            }
        }
        r if r.starts_with(".agents/core/") && is_yaml => l.agent_defs.push((AgentSource::ProjectCore, f)),
        r if r.starts_with(".agents/project/") && is_yaml => l.agent_defs.push((AgentSource::ProjectSpecific, f)),
        r if r.starts_with(".agents/defaults/") && is_yaml => l.agent_defs.push((AgentSource::BundledDefault, f)),
        _ => {}
    }
}

fn project_layer(root: &Path, explicit: bool, diags: &mut Diagnostics) -> LayerFiles {
    let mut l = LayerFiles::empty(LayerKind::Project);
    let mcp = root.join(".mcp");
    if mcp.is_dir() {
        let disc = mcp.join("discovery-config.yaml");
        match read_text(&disc) {
            Ok(Some(f)) => l.mcp_discovery = Some(f),
            Ok(None) if explicit => {
                diags.push(Diagnostic::error(&disc.display().to_string(), 0, 0, "", "file not found (every .mcp/ needs a discovery-config.yaml)"))
            }
            Ok(None) => {}
            Err(d) => diags.push(d),
        }
        l.server_files = read_all(&list(&mcp.join("servers"), &["json"]), diags);
    }
    let agents = root.join(".agents");
    if agents.is_dir() {
        l.agents_discovery = read_or_note(&agents.join("discovery-config.yaml"), diags);
        for (sub, src) in [("core", AgentSource::ProjectCore), ("project", AgentSource::ProjectSpecific), ("defaults", AgentSource::BundledDefault)] {
            l.agent_defs.extend(read_all(&list(&agents.join(sub), &["yaml", "yml"]), diags).into_iter().map(|f| (src, f)));
        }
        l.context_files = file_names(&list(&agents.join("context"), &["md", "txt", "yaml", "json"]));
    }
    l
}

fn user_layer(root: &Path, diags: &mut Diagnostics) -> LayerFiles {
    let mut l = LayerFiles::empty(LayerKind::User);
    let mcp = root.join("mcp");
    l.mcp_discovery = read_or_note(&mcp.join("discovery-config.yaml"), diags);
    l.server_files = read_all(&list(&mcp.join("servers"), &["json"]), diags);
    let agents = root.join("agents");
    // `~/.claude/agents/` holds definitions and, optionally, its own discovery-config.yaml.
    let (disc, defs): (Vec<PathBuf>, Vec<PathBuf>) =
        list(&agents, &["yaml", "yml"]).into_iter().partition(|p| p.file_stem().and_then(|s| s.to_str()) == Some("discovery-config"));
    if let Some(p) = disc.first() {
        l.agents_discovery = read_or_note(p, diags);
    }
    l.agent_defs = read_all(&defs, diags).into_iter().map(|f| (AgentSource::UserOverride, f)).collect();
    l.context_files = file_names(&list(&agents.join("context"), &["md", "txt"]));
    l
}

/// Reads a file; an unreadable one becomes a diagnostic. `None` when absent or unreadable.
fn read_or_note(p: &Path, diags: &mut Diagnostics) -> Option<TextFile> {
    read_text(p).unwrap_or_else(|d| {
        diags.push(d);
        None
    })
}

/// Reads every file of `paths` that can be read, noting the others.
fn read_all(paths: &[PathBuf], diags: &mut Diagnostics) -> Vec<TextFile> {
    paths.iter().filter_map(|p| read_or_note(p, diags)).collect()
}

fn file_names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string)).collect()
}

/// Files in `dir` with one of `exts`, sorted by name; empty when the dir is missing.
fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)))
        .collect();
    v.sort();
    v
}

/// Reads a config file: `Ok(None)` when it does not exist, an error diagnostic when it is
/// too large, unreadable or not UTF-8. The size is checked before reading.
fn read_text(p: &Path) -> Result<Option<TextFile>, Diagnostic> {
    let name = p.display().to_string();
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Diagnostic::error(&name, 0, 0, "", format!("cannot read: {e}"))),
    };
    if !meta.is_file() {
        return Err(Diagnostic::error(&name, 0, 0, "", "not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(Diagnostic::error(&name, 0, 0, "", format!("file is {} bytes; the limit is {MAX_CONFIG_BYTES}", meta.len())));
    }
    let bytes = std::fs::read(p).map_err(|e| Diagnostic::error(&name, 0, 0, "", format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| Diagnostic::error(&name, 0, 0, "", format!("not valid UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
    Ok(Some(TextFile { path: name, text }))
}
