//! Embeds the repository's own `.mcp/` and `.agents/` as the built-in configuration layer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json" | "md")) {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("node/ lives in the workspace root").to_path_buf();
    let mut files = Vec::new();
    for top in [".mcp", ".agents"] {
        let d = root.join(top);
        println!("cargo:rerun-if-changed={}", d.display());
        walk(&d, &mut files);
    }
    let mut src =
        String::from("/// (path relative to the repo root, contents) of every shipped config file.\npub static BUILTIN_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let rel = f.strip_prefix(&root).expect("walked under root").to_string_lossy().replace('\\', "/");
        writeln!(src, "    ({rel:?}, include_str!({:?})),", f.display().to_string()).expect("write to String");
    }
    src.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin_config.rs");
    std::fs::write(out, src).expect("write builtin_config.rs");
}
