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

/// glibc (major, minor) on the build machine, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = std::process::Command::new("getconf").arg("GNU_LIBC_VERSION").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let (major, minor) = text.trim().strip_prefix("glibc ")?.split_once('.')?;
    Some((major.parse().ok()?, minor.split('.').next()?.parse().ok()?))
}

/// Packs the binary's relative relocations (DT_RELR) when building natively against a glibc
/// that understands them (2.36+): the 400 KB table of 24-byte RELA entries that the loader
/// reads at every start shrinks to a few KB, and the node's resident set with it.
/// `CRAFTMESH_NO_RELR=1` turns it off.
fn pack_relocations() {
    println!("cargo:rerun-if-env-changed=CRAFTMESH_NO_RELR");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("TARGET") == var("HOST");
    if var("CRAFTMESH_NO_RELR") == "1" || !native || var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if host_glibc().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

fn main() {
    pack_relocations();
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
