//! Test harness for craftmesh: runs the real `craftmesh` binary against real and hostile
//! servers on 127.0.0.1.
//!
//! * Paths: [`workspace_root`], [`craftmesh_bin`], [`python`].
//! * Prerequisites: [`require`] skips a test outside CI and fails it in CI (`CI=true`).
//! * Servers: [`McpServer`] (the official MCP Python SDK, `tests/fixtures/mcp_server.py`),
//!   and in-process [`plain_http_server`], [`silent_server`], [`flood_server`], [`garbage_server`].
//! * Configuration and runs: [`ConfigDir`] writes a project directory and runs
//!   `craftmesh --config-dir DIR ...` with only that configuration, always under a timeout.
//!
//! * The local API from the test process: [`api`] (raw HTTP with the node's token).
//! * Docker: [`docker_available`], [`docker_ok`], [`build_static_fixture_image`] (a std-only
//!   fixture compiled statically into a `FROM scratch` image, nothing pulled), [`DockerCleanup`].
//!
//! Every wait here has a deadline, and every spawned process or thread is stopped on drop.

pub mod api;
pub mod claimsim;
pub mod meshnode;
pub mod netns;
pub mod sim;

mod docker;
mod servers;
pub use docker::{DockerCleanup, build_static_fixture_image, docker_ok};
pub use servers::{FLOOD_BYTES, GARBAGE_BYTES, TestServer, flood_server, garbage_server, plain_http_server, silent_server};

use serde_json::Value;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a `craftmesh` run may take before the harness kills it and fails the test.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the MCP fixture may take to start listening.
pub const MCP_START_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Paths and prerequisites
// ---------------------------------------------------------------------------------------

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent directory").to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` if set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { workspace_root().join(d) }
        }
        None => workspace_root().join("target"),
    }
}

/// Path of the `craftmesh` binary: `CRAFTMESH_BIN` if set, else `target/debug/craftmesh`.
///
/// Panics with a clear message when the binary does not exist: tests use the real binary,
/// and cargo does not build another package's binaries for this crate's tests.
pub fn craftmesh_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CRAFTMESH_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CRAFTMESH_BIN={} does not exist; run `cargo build --bins` first", p.display());
        return p;
    }
    let p = target_dir().join("debug").join("craftmesh");
    assert!(p.is_file(), "craftmesh binary not found at {}: run `cargo build --bins` first (or set CRAFTMESH_BIN)", p.display());
    p
}

/// The Python interpreter with the MCP SDK: `CRAFTMESH_TEST_PYTHON`, else `<root>/.venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("CRAFTMESH_TEST_PYTHON").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv").join("bin").join("python"),
    }
}

/// The Zen MCP server from PyPI (`tests/fixtures/ZEN.md`): `CRAFTMESH_TEST_ZEN`, else
/// `$REPO/.venv-zen/bin/zen-mcp-server` (made by `tests/scripts/run-tests.sh`), when it exists.
pub fn zen_server() -> Option<PathBuf> {
    let p = match std::env::var_os("CRAFTMESH_TEST_ZEN").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join(".venv-zen").join("bin").join("zen-mcp-server"),
    };
    p.is_file().then_some(p)
}

/// A fixture file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests").join("fixtures").join(name)
}

/// Whether we run in CI (`CI` set to anything but empty, `0`, `false` or `no`).
pub fn is_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"),
        Err(_) => false,
    }
}

/// Checks a prerequisite. Returns `true` when `ok`. Otherwise, outside CI, prints
/// `SKIP: <prereq>` to stderr and returns `false` (the test should return early);
/// in CI (`CI=true`) a missing prerequisite is a failure, so this panics.
pub fn require(prereq: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if is_ci() {
        panic!("prerequisite missing in CI: {prereq}");
    }
    eprintln!("SKIP: {prereq}");
    false
}

/// Whether [`python`] exists and imports `mcp.server.fastmcp.FastMCP`.
pub fn python_has_mcp() -> bool {
    let py = python();
    if !py.exists() {
        return false;
    }
    let out = run_with_timeout(Command::new(&py).args(["-c", "from mcp.server.fastmcp import FastMCP"]), Duration::from_secs(60));
    out.success()
}

/// Whether the `docker` client works and reaches a running engine.
pub fn docker_available() -> bool {
    let out = run_with_timeout(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]), Duration::from_secs(30));
    out.success() && !out.stdout.trim().is_empty()
}

/// A free TCP port on 127.0.0.1 (bound, then released; good enough for tests).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A random hex string, for unique names (labels, image tags, process markers).
pub fn random_suffix() -> String {
    let mut h = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`, up to `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

// ---------------------------------------------------------------------------------------
// Running processes with a deadline
// ---------------------------------------------------------------------------------------

/// What a process did when run with [`run_with_timeout`].
#[derive(Debug)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// `None` when the process was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl CmdOutput {
    /// The exit code, if the process exited normally.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// A multi-line description for assertion messages.
    pub fn describe(&self) -> String {
        fn cut(s: &str) -> &str {
            const MAX: usize = 8000;
            if s.len() <= MAX {
                return s;
            }
            let mut end = MAX;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        format!(
            "command: {}\nexit: {}\nelapsed: {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            if self.timed_out { "KILLED at the deadline".to_string() } else { format!("{:?}", self.code()) },
            self.elapsed,
            cut(&self.stdout),
            cut(&self.stderr)
        )
    }
}

fn describe_command(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (stdin closed, stdout and stderr captured), killing it at `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let command = describe_command(cmd);
    let start = Instant::now();
    let mut child = match cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            return CmdOutput {
                command,
                status: None,
                stdout: String::new(),
                stderr: format!("failed to spawn: {e}"),
                elapsed: start.elapsed(),
                timed_out: false,
            };
        }
    };
    // Readers hand their bytes over a channel so a grandchild that keeps a pipe open
    // cannot make us wait forever.
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_err, rx_err) = mpsc::channel();
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        let _ = tx_out.send(b);
    });
    std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        let _ = tx_err.send(b);
    });
    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let elapsed = start.elapsed();
    let grace = Duration::from_secs(3);
    let stdout = rx_out.recv_timeout(grace).unwrap_or_default();
    let stderr = rx_err.recv_timeout(grace).unwrap_or_default();
    CmdOutput {
        command,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
        timed_out,
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The MCP fixture
// ---------------------------------------------------------------------------------------

/// `tests/fixtures/mcp_server.py` running on a free port of 127.0.0.1; killed on drop.
#[derive(Debug)]
pub struct McpServer {
    child: Child,
    /// The name it reports in `initialize` (`serverInfo.name`).
    pub name: String,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl McpServer {
    /// The tools the fixture offers.
    pub const TOOLS: &'static [&'static str] = &["add", "echo", "reverse"];

    /// Starts the fixture and waits until it listens. Panics (with its log) when it does not
    /// start within [`MCP_START_TIMEOUT`]; retries on another port if it lost a port race.
    pub fn start(name: &str) -> McpServer {
        Self::start_with(name, &[])
    }

    /// Like [`McpServer::start`], serving HTTPS with the PEM `cert` and `key`
    /// (`https://127.0.0.1:PORT/mcp`).
    pub fn start_tls(name: &str, cert: &Path, key: &Path) -> McpServer {
        let args = ["--certfile".to_string(), cert.display().to_string(), "--keyfile".to_string(), key.display().to_string()];
        Self::start_with(name, &args)
    }

    /// Starts the fixture with extra command-line arguments.
    pub fn start_with(name: &str, extra: &[String]) -> McpServer {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let log = dir.path().join("mcp_server.log");
            let logf = std::fs::File::create(&log).expect("create log");
            let child = Command::new(python())
                .arg(fixture("mcp_server.py"))
                .args(["--port", &port.to_string(), "--name", name])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("clone log"))
                .stderr(logf)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} with python {}: {e}", fixture("mcp_server.py").display(), python().display()));
            let mut server = McpServer { child, name: name.to_string(), port, log, _dir: dir };
            let deadline = Instant::now() + MCP_START_TIMEOUT;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return server;
                }
                if let Ok(Some(status)) = server.child.try_wait() {
                    // Most likely another process took the port first; try another.
                    last_log = format!("exited with {status}:\n{}", server.log_text());
                    break;
                }
                if Instant::now() >= deadline {
                    panic!("MCP fixture `{name}` did not listen on port {port} within {MCP_START_TIMEOUT:?}; log:\n{}", server.log_text());
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("MCP fixture `{name}` failed to start three times; last attempt {last_log}");
    }

    /// The streamable-HTTP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// `http://127.0.0.1:PORT` without a path.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the fixture wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Configuration directories and craftmesh runs
// ---------------------------------------------------------------------------------------

/// A temporary project: `project/.mcp/discovery-config.yaml` (+ `servers/*.json`), an empty
/// user configuration directory, a data directory and a scratch directory for the test.
#[derive(Debug)]
pub struct ConfigDir {
    dir: tempfile::TempDir,
}

impl ConfigDir {
    /// Writes `yaml` as the project's `.mcp/discovery-config.yaml`.
    pub fn new(yaml: &str) -> ConfigDir {
        let dir = tempfile::Builder::new().prefix("craftmesh-test-").tempdir().expect("tempdir");
        let c = ConfigDir { dir };
        for d in [c.project_dir().join(".mcp").join("servers"), c.user_dir(), c.data_dir(), c.scratch_dir()] {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        c.write_file(".mcp/discovery-config.yaml", yaml);
        c
    }

    /// Adds `.mcp/servers/<stem>.json`.
    pub fn with_servers_json(self, stem: &str, json: &str) -> ConfigDir {
        self.write_file(&format!(".mcp/servers/{stem}.json"), json);
        self
    }

    /// Writes a file relative to the project directory and returns its path.
    pub fn write_file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.project_dir().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// The directory passed as `--config-dir`.
    pub fn project_dir(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// `.mcp/discovery-config.yaml` inside the project.
    pub fn discovery_file(&self) -> PathBuf {
        self.project_dir().join(".mcp").join("discovery-config.yaml")
    }

    /// The (empty) user configuration directory, `CRAFTMESH_USER_CONFIG_DIR`.
    pub fn user_dir(&self) -> PathBuf {
        self.dir.path().join("user")
    }

    /// `CRAFTMESH_DATA_DIR`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A directory for the test's own files (lock files, build contexts).
    pub fn scratch_dir(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// `craftmesh --config-dir PROJECT <args>` with only this configuration: no built-in
    /// defaults, an empty user layer, a private data directory, and no inherited
    /// `CRAFTMESH_*` variables.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&craftmesh_bin(), args)
    }

    /// [`ConfigDir::command`] with another craftmesh binary (the bench runs release builds).
    pub fn command_with(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CRAFTMESH_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config-dir")
            .arg(self.project_dir())
            .args(args)
            .env("CRAFTMESH_USER_CONFIG_DIR", self.user_dir())
            .env("CRAFTMESH_NO_BUILTIN", "1")
            // Host-level tests never start the mesh: no mDNS on the real network.
            .env("CRAFTMESH_NO_MESH", "1")
            .env("CRAFTMESH_DATA_DIR", self.data_dir())
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `craftmesh` with `args` and extra environment, killed at `timeout`.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> CmdOutput {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(&mut cmd, timeout)
    }

    /// `craftmesh discover --once --json`; asserts it exits 0 within [`DEFAULT_RUN_TIMEOUT`].
    pub fn discover(&self) -> Discovery {
        self.discover_with(&[], DEFAULT_RUN_TIMEOUT)
    }

    /// `craftmesh discover --once --json` with extra environment; asserts it exits 0 within
    /// `timeout` and prints a report of the documented shape.
    pub fn discover_with(&self, env: &[(&str, &str)], timeout: Duration) -> Discovery {
        let out = self.run(&["discover", "--once", "--json"], env, timeout);
        assert!(!out.timed_out, "`craftmesh discover` did not finish within {timeout:?}\n{}", out.describe());
        assert_eq!(out.code(), Some(0), "`craftmesh discover` should exit 0\n{}", out.describe());
        Discovery::parse(out)
    }
}

/// The JSON report of one `craftmesh discover --json` run, with lookups for assertions.
#[derive(Debug)]
pub struct Discovery {
    pub json: Value,
    pub out: CmdOutput,
}

impl Discovery {
    /// Parses stdout; panics unless it is JSON matching `craftmesh_protocol::report::Report`.
    /// With `CRAFTMESH_TEST_DUMP` set, prints the report to stderr (use `--no-capture`).
    pub fn parse(out: CmdOutput) -> Discovery {
        let json: Value =
            serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("stdout of `craftmesh discover --json` is not JSON: {e}\n{}", out.describe()));
        if let Err(e) = serde_json::from_value::<craftmesh_protocol::report::Report>(json.clone()) {
            panic!("the discover report does not match protocol::report::Report: {e}\n{}", out.describe());
        }
        let d = Discovery { json, out };
        if std::env::var_os("CRAFTMESH_TEST_DUMP").is_some() {
            eprintln!("{}", d.dump());
        }
        d
    }

    /// The report of server `name`; panics when absent.
    pub fn server(&self, name: &str) -> &Value {
        self.json["servers"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("server `{name}` missing from the report\n{}", self.dump()))
    }

    /// The findings of server `name`.
    pub fn findings(&self, name: &str) -> Vec<&Value> {
        self.server(name)["findings"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }

    /// The finding of server `name` whose `evidence.port` is `port`.
    pub fn finding_on_port(&self, name: &str, port: u16) -> Option<&Value> {
        self.findings(name).into_iter().find(|f| f["evidence"]["port"] == port)
    }

    /// The one finding of server `name` matching `pred`; panics with the report otherwise.
    pub fn the_finding(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> &Value {
        let found: Vec<&Value> = self.findings(name).into_iter().filter(|f| pred(f)).collect();
        assert_eq!(found.len(), 1, "expected exactly one finding of `{name}` {what}\n{}", self.dump());
        found[0]
    }

    /// `resolved` of server `name`.
    pub fn resolved(&self, name: &str) -> Option<&str> {
        self.server(name)["resolved"].as_str()
    }

    /// The report, pretty, plus the run's stderr; for assertion messages.
    pub fn dump(&self) -> String {
        format!("--- report ---\n{}\n--- stderr ---\n{}", serde_json::to_string_pretty(&self.json).unwrap_or_default(), self.out.stderr)
    }
}
