//! Shared helpers for the protocol integration tests: reading the repository's shipped
//! configuration into [`LayerFiles`] the way the node does.
#![allow(dead_code)]

use craftmesh_protocol::config::agents::AgentSource;
use craftmesh_protocol::config::{LayerFiles, LayerKind, TextFile};
use std::path::{Path, PathBuf};

/// The workspace root (the protocol crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("protocol/ has a parent").to_path_buf()
}

/// Reads `rel` (relative to the repo root) into a [`TextFile`] named by its relative path.
pub fn text_file(rel: &str) -> TextFile {
    let full = repo_root().join(rel);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
    TextFile { path: rel.to_string(), text }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The shipped `.mcp/` and `.agents/` files as one layer of the given kind.
pub fn shipped_layer(kind: LayerKind) -> LayerFiles {
    let root = repo_root();
    let mut layer = LayerFiles::empty(kind);
    layer.mcp_discovery = Some(text_file(".mcp/discovery-config.yaml"));
    for p in sorted_entries(&root.join(".mcp/servers")) {
        if p.extension().is_some_and(|e| e == "json") {
            let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
            layer.server_files.push(text_file(&format!(".mcp/servers/{name}")));
        }
    }
    layer.agents_discovery = Some(text_file(".agents/discovery-config.yaml"));
    for (dir, src) in [("core", AgentSource::ProjectCore), ("project", AgentSource::ProjectSpecific), ("defaults", AgentSource::BundledDefault)] {
        for p in sorted_entries(&root.join(".agents").join(dir)) {
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
                layer.agent_defs.push((src, text_file(&format!(".agents/{dir}/{name}"))));
            }
        }
    }
    for p in sorted_entries(&root.join(".agents/context")) {
        if p.is_file() {
            layer.context_files.push(p.file_name().and_then(|n| n.to_str()).expect("utf-8 name").to_string());
        }
    }
    layer
}

/// An environment with nothing set.
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// Every diagnostic, one per line, for assertion messages.
pub fn show(d: &craftmesh_protocol::config::Diagnostics) -> String {
    d.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}
