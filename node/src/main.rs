//! The `craftmesh` binary: parse, set up logging and the runtime, run the command.

use clap::Parser as _;
use craftmesh::cli::{self, Cli, Command};
use tracing_subscriber::filter::Targets;

fn main() {
    let cli = Cli::parse();
    // Commands that only print end quietly on a closed stdout (`craftmesh cluster | head`).
    if matches!(
        cli.command,
        Command::Status { .. }
            | Command::Members { .. }
            | Command::Services { .. }
            | Command::Resolve { .. }
            | Command::Deploy { .. }
            | Command::ApiToken { .. }
            | Command::Discover { .. }
            | Command::Cluster { .. }
            | Command::Config { .. }
    ) {
        craftmesh::sys::default_sigpipe();
    }
    let default = if matches!(cli.command, Command::Up(_)) { "info" } else { "warn" };
    // `Targets` (level, or `target=level` pairs) rather than `EnvFilter`: no regex engine
    // is built at start-up, which keeps the node's resident code small.
    let spec = cli.global.log.clone().unwrap_or_else(|| default.to_string());
    let filter: Targets = match spec.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --log / CRAFTMESH_LOG `{spec}`: {e} (expected a level such as `debug`, or `info,craftmesh=trace`)");
            std::process::exit(2);
        }
    };
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr))
        .with(filter)
        .init();
    // Before any HTTP client is built (reqwest's rustls needs a crypto provider).
    craftmesh::tls::install_provider();
    // One thread is plenty for a node's I/O and keeps its memory small; blocking scans
    // (processes) go to tokio's blocking pool. One malloc arena for all of them: glibc gives
    // every thread that allocates an arena of its own (about 250 KiB resident each, 1.3 MB
    // over a node's threads), and a node's allocations are few and small.
    craftmesh::sys::one_malloc_arena();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::exit(code);
}
