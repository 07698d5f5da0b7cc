//! Docker helpers: `docker` commands that must succeed, static fixture images, cleanup on drop.

use crate::{CmdOutput, fixture, run_with_timeout};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `docker ARGS`; asserts it exits 0 within `timeout`.
pub fn docker_ok(args: &[&str], timeout: Duration) -> CmdOutput {
    let out = run_with_timeout(Command::new("docker").args(args), timeout);
    assert!(out.success(), "docker {} failed\n{}", args.join(" "), out.describe());
    out
}

/// Compiles the std-only `tests/fixtures/<stem>.rs` statically (`crt-static`, so it runs
/// with no libc in the image) into the build context `ctx` and builds image `tag`
/// `FROM scratch` around it: entrypoint `/<stem>`, command `<port>`, `EXPOSE <port>`.
/// Nothing is pulled. The image is removed when the returned guard drops.
pub fn build_static_fixture_image(stem: &str, port: u16, ctx: &Path, tag: &str) -> DockerCleanup {
    std::fs::create_dir_all(ctx).unwrap_or_else(|e| panic!("create build context {}: {e}", ctx.display()));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = run_with_timeout(
        Command::new(&rustc)
            .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "--target", "x86_64-unknown-linux-gnu", "-o"])
            .arg(ctx.join(stem))
            .arg(fixture(&format!("{stem}.rs"))),
        Duration::from_secs(180),
    );
    assert!(out.success(), "compiling the static fixture {stem}.rs failed\n{}", out.describe());
    let dockerfile = format!("FROM scratch\nCOPY {stem} /{stem}\nEXPOSE {port}\nENTRYPOINT [\"/{stem}\"]\nCMD [\"{port}\"]\n");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write Dockerfile");
    let ctx_s = ctx.to_string_lossy().into_owned();
    docker_ok(&["build", "-q", "-t", tag, &ctx_s], Duration::from_secs(180));
    DockerCleanup::Image(tag.to_string())
}

/// A docker resource removed on drop (`docker rm -f` / `docker rmi -f`), even on failure.
#[derive(Debug)]
pub enum DockerCleanup {
    Container(String),
    Image(String),
    Network(String),
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let args: Vec<&str> = match self {
            DockerCleanup::Container(id) => vec!["rm", "-f", "-v", id.as_str()],
            DockerCleanup::Image(tag) => vec!["rmi", "-f", tag.as_str()],
            DockerCleanup::Network(name) => vec!["network", "rm", name.as_str()],
        };
        let out = run_with_timeout(Command::new("docker").args(&args), Duration::from_secs(60));
        if !out.success() {
            eprintln!("cleanup failed: {}", out.describe());
        }
    }
}
