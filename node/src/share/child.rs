//! A stdio MCP server run as the node's child and shared by every session: one process,
//! initialized once (with every client capability), health-checked with `tools/list`.
//!
//! The child runs in a process group of its own and gets `PR_SET_PDEATHSIG`, so it dies
//! with the node; stopping it signals the whole group (SIGTERM, then SIGKILL).

use super::link::{self, Link, Router};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::watch;

/// Largest JSON-RPC message (one line) taken from a child or the mesh.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

impl Command {
    /// Starts the command in a process group of its own that dies with this node
    /// (`PR_SET_PDEATHSIG`), stdout and stderr piped: the child and its pid.
    pub(crate) fn spawn_grouped(&self, stdin: Stdio) -> Result<(tokio::process::Child, u32), String> {
        let mut c = tokio::process::Command::new(&self.program);
        c.args(&self.args).envs(&self.env).stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        crate::sys::die_with_parent(&mut c);
        let child = c.spawn().map_err(|e| format!("cannot start `{self}`: {e}"))?;
        let pid = child.id().unwrap_or(0);
        Ok((child, pid))
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// A running shared child.
#[derive(Debug)]
pub struct Child {
    pub link: Arc<Link>,
    pub pid: u32,
    /// `Some(description)` once the child has exited.
    pub exited: watch::Receiver<Option<String>>,
    /// Set by [`Child::stop`]: the link is closed on purpose, the child gets its grace.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Child {
    /// Starts `cmd`, initializes it and checks it lists its tools, all within `timeout`.
    /// A `shared` child serves many sessions (every client capability is declared and
    /// the routing table decides); otherwise it serves one session, which introduced
    /// itself as `client`.
    pub async fn start(name: &str, cmd: &Command, timeout: Duration, request_timeout: Duration) -> Result<Child, String> {
        Child::start_for(name, cmd, timeout, request_timeout, None).await
    }

    /// [`Child::start`] for one session (`Some(client)`) or for many (`None`).
    pub async fn start_for(
        name: &str,
        cmd: &Command,
        timeout: Duration,
        request_timeout: Duration,
        client: Option<rmcp::model::ClientConfig>,
    ) -> Result<Child, String> {
        let (mut child, pid) = cmd.spawn_grouped(Stdio::piped())?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err("the child's pipes are missing".into());
        };
        // The child's stderr goes to the node's log, line by line (bounded lines).
        let server = name.to_string();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let l: String = l.chars().take(2000).collect();
                tracing::info!(server = %server, pid, "child: {l}");
            }
        });
        let (exit_tx, exited) = watch::channel(None);
        let router = Router::new(format!("{name} (pid {pid})"), client.is_none());
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new_client(stdout, stdin).with_max_line_length(MAX_MESSAGE);
        // The child is waited for by its own task, which reports its exit and closes the link.
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            let why = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = exit_tx.send(Some(why));
        });
        let info = client.unwrap_or_else(link::full_client_info);
        let link = match link::connect(router, info, transport, timeout, request_timeout).await {
            Ok(l) => l,
            Err(e) => {
                kill_group(pid);
                waiter.abort();
                return Err(format!("`{cmd}` (pid {pid}): {e}"));
            }
        };
        let ch = Child { link, pid, exited, stopping: Arc::default() };
        ch.watch_exit();
        ch.watch_link();
        if ch.link.init.capabilities.tools.is_some() {
            let listed = tokio::time::timeout(timeout, ch.link.peer.list_tools(None)).await;
            match listed {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    ch.stop().await;
                    return Err(format!("`{cmd}` (pid {pid}): tools/list failed: {e}"));
                }
                Err(_) => {
                    ch.stop().await;
                    return Err(format!("`{cmd}` (pid {pid}): tools/list took longer than {} s", timeout.as_secs()));
                }
            }
        }
        Ok(ch)
    }

    /// Closes the link when the child exits.
    fn watch_exit(&self) {
        let mut rx = self.exited.clone();
        let link = self.link.clone();
        tokio::spawn(async move {
            let _ = rx.wait_for(|e| e.is_some()).await;
            link.close();
        });
    }

    /// A child whose MCP stream ended (it closed stdout, or wrote what is not JSON-RPC)
    /// while it still runs is of no use to anyone: it is killed, so it counts as crashed
    /// (restarted under its claim, or its claim released) instead of holding the claim
    /// with nothing behind it.
    fn watch_link(&self) {
        let (link, exited, stopping, pid) = (self.link.clone(), self.exited.clone(), self.stopping.clone(), self.pid);
        tokio::spawn(async move {
            link.closed.cancelled().await;
            if exited.borrow().is_none() && !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::warn!(pid, "the child's MCP stream ended while it runs; killing it");
                kill_group(pid);
            }
        });
    }

    pub fn has_exited(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Stops the child: SIGTERM to its process group, SIGKILL after a short grace.
    pub async fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.link.close();
        if self.has_exited().is_some() {
            return;
        }
        term_group(self.pid);
        let mut rx = self.exited.clone();
        if tokio::time::timeout(Duration::from_millis(1500), rx.wait_for(|e| e.is_some())).await.is_err() {
            kill_group(self.pid);
            let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.is_some())).await;
        }
    }

    /// Kills the child's whole group at once (the claim is lost: no grace).
    pub fn kill_now(&self) {
        self.link.close();
        kill_group(self.pid);
    }
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), sig);
    }
}

pub(crate) fn term_group(pid: u32) {
    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
}

pub(crate) fn kill_group(pid: u32) {
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
}
