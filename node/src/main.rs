//! The `craftmesh` binary: parse, set up logging and the runtime, run the command.

use clap::Parser as _;
use craftmesh::cli::{self, Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let default = if matches!(cli.command, Command::Up(_)) { "info" } else { "warn" };
    let filter = cli.global.log.clone().map(EnvFilter::new).unwrap_or_else(|| EnvFilter::new(default));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
    // One thread is plenty for a node's I/O and keeps its memory small; blocking scans
    // (processes) go to tokio's blocking pool.
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
