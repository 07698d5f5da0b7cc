//! A plain service (see [`craftmesh_protocol::deploy::service`]) run as the node's child:
//! a process in a group of its own that dies with the node, checked by HTTP `GET` or TCP
//! connect on its port instead of MCP, then watched: it has exited, or failed
//! [`UNHEALTHY_AFTER`] health checks in a row (it is killed then), and the manager restarts
//! it under its claim or gives the claim up.

use super::instance::Instance;
use crate::share::child::{Command, kill_group, term_group};
use craftmesh_protocol::deploy::service::{Health, PlainService};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead};
use tokio::sync::watch;
use tokio::time::Instant;

/// Consecutive failed health checks after which a running service counts as crashed.
pub const UNHEALTHY_AFTER: u32 = 3;
/// Health checks of a running service, unless its configuration says how often.
pub const DEFAULT_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Longest single health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between checks while the service starts.
const START_POLL: Duration = Duration::from_millis(100);

/// Checks `health` of the service listening on `addr` once.
pub async fn check(addr: SocketAddr, health: &Health, timeout: Duration) -> Result<(), String> {
    let run = async {
        match health {
            Health::Tcp => tokio::net::TcpStream::connect(addr).await.map(drop).map_err(|e| format!("connect {addr}: {e}")),
            Health::Http { path } => {
                let url = format!("http://{addr}{path}");
                let r = http().get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
                if r.status().is_success() { Ok(()) } else { Err(format!("GET {url}: {}", r.status())) }
            }
        }
    };
    tokio::time::timeout(timeout, run).await.map_err(|_| format!("no answer from {addr} within {} ms", timeout.as_millis()))?
}

fn http() -> reqwest::Client {
    crate::tls::install_provider();
    // No proxy: the service is on this host's loopback.
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap_or_default()
}

/// A running plain service.
#[derive(Debug)]
pub struct ServiceProcess {
    pid: u32,
    addr: SocketAddr,
    exited: watch::Receiver<Option<String>>,
    stopping: Arc<AtomicBool>,
}

impl ServiceProcess {
    /// Starts `cmd` and waits (within `timeout`) until its health check passes. The port
    /// must be free before: a health check answered by another program would make a
    /// foreign process the LAN's instance.
    pub async fn start(name: &str, cmd: &Command, svc: &PlainService, check_every: Duration, timeout: Duration) -> Result<ServiceProcess, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], svc.port));
        if tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await.is_ok_and(|c| c.is_ok()) {
            return Err(format!("port {} is already in use on this host (by something that is not this grant's instance)", svc.port));
        }
        let (mut child, pid) = cmd.spawn_grouped(Stdio::null())?;
        if let Some(o) = child.stdout.take() {
            log_lines(name, pid, o);
        }
        if let Some(e) = child.stderr.take() {
            log_lines(name, pid, e);
        }
        let (tx, exited) = watch::channel(None);
        let tx = Arc::new(tx);
        let waiter_tx = tx.clone();
        tokio::spawn(async move {
            let why = match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            waiter_tx.send_if_modified(|w| {
                if w.is_none() {
                    *w = Some(why);
                    true
                } else {
                    false
                }
            });
        });
        let s = ServiceProcess { pid, addr, exited, stopping: Arc::default() };
        let deadline = Instant::now() + timeout;
        let mut last = "no check finished".to_string();
        loop {
            if let Some(why) = s.exited.borrow().clone() {
                return Err(format!("`{cmd}` (pid {pid}) exited while starting: {why}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.stop().await;
                return Err(format!("`{cmd}` (pid {pid}) was not healthy within {} s: {last}", timeout.as_secs()));
            }
            match check(addr, &svc.health, left.min(CHECK_TIMEOUT)).await {
                Ok(()) => break,
                Err(e) => last = e,
            }
            tokio::time::sleep(START_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        s.watch_health(svc.health.clone(), check_every, tx);
        Ok(s)
    }

    /// Kills the service after [`UNHEALTHY_AFTER`] failed checks in a row.
    fn watch_health(&self, health: Health, every: Duration, tx: Arc<watch::Sender<Option<String>>>) {
        let (addr, pid, stopping, mut exited) = (self.addr, self.pid, self.stopping.clone(), self.exited.clone());
        tokio::spawn(async move {
            let mut failed = 0;
            loop {
                tokio::select! {
                    _ = exited.wait_for(|e| e.is_some()) => return,
                    () = tokio::time::sleep(every) => {}
                }
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                match check(addr, &health, CHECK_TIMEOUT.min(every)).await {
                    Ok(()) => failed = 0,
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(pid, failed, error = %e, "a health check of the service failed");
                        if failed >= UNHEALTHY_AFTER {
                            tx.send_if_modified(|w| {
                                if w.is_none() {
                                    *w = Some(format!("unhealthy: {failed} health checks failed in a row, the last: {e}"));
                                    true
                                } else {
                                    false
                                }
                            });
                            kill_group(pid);
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn log_lines<R: AsyncRead + Unpin + Send + 'static>(name: &str, pid: u32, r: R) {
    let server = name.to_string();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let l: String = l.chars().take(2000).collect();
            tracing::info!(server = %server, pid, "service: {l}");
        }
    });
}

impl Instance for ServiceProcess {
    fn link(&self) -> Option<Arc<crate::share::link::Link>> {
        None
    }
    fn address(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stopping.store(true, Ordering::SeqCst);
            if self.exited.borrow().is_some() {
                return;
            }
            term_group(self.pid);
            let mut rx = self.exited.clone();
            if tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| e.is_some())).await.is_err() {
                kill_group(self.pid);
                let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|e| e.is_some())).await;
            }
        })
    }
    fn kill_now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        kill_group(self.pid);
    }
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
    fn describe(&self) -> String {
        format!("pid {} on {}", self.pid, self.addr)
    }
}
