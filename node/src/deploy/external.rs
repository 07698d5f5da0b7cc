//! The `external_deployment` tier: an instance someone already runs, found by the server's
//! external discovery strategies (a URL in the environment, a port on this host), taken
//! as the LAN's instance under the claim instead of starting another one. That is the
//! PromptCraft fallback's first step (external, then user installation, Docker, NPX), made
//! LAN-wide: the node that holds the claim serves the external instance to every session
//! (MCP over streamable HTTP, or a plain service through the fronts), so nobody starts a
//! duplicate while it answers.
//!
//! It is not this node's to stop: losing the claim or `deploy stop` only drops the
//! connection to it. It is watched like the others: the link ending, or
//! [`UNHEALTHY_AFTER`] failed checks in a row, counts as the instance gone; the claim is then
//! given up (or, with `auto_restart`, the chain is walked again).

use super::container::{http_client, http_link};
use super::instance::Instance;
use super::manager::Deployer;
use super::service::{UNHEALTHY_AFTER, check};
use crate::share::link::{Link, lock};
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::config::mcp::Tier;
use craftmesh_protocol::deploy::service::{Health, PlainService};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Longest check of a running external instance.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// An instance this node does not run, adopted under its claim.
#[derive(Debug)]
pub struct External {
    url: String,
    link: Option<Arc<Link>>,
    addr: SocketAddr,
    exited: watch::Receiver<Option<String>>,
    done: CancellationToken,
}

impl Drop for External {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl Instance for External {
    fn link(&self) -> Option<Arc<Link>> {
        self.link.clone()
    }
    fn address(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }
    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.kill_now() })
    }
    fn kill_now(&self) {
        // Not ours to stop: only this node's use of it ends.
        if let Some(l) = &self.link {
            l.close();
        }
        self.done.cancel();
    }
    fn pid(&self) -> Option<u32> {
        None
    }
    fn describe(&self) -> String {
        format!("external {}", self.url)
    }
}

/// `host:port` of `url`, resolved.
async fn socket_of(url: &str) -> Result<SocketAddr, String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = u.host_str().ok_or_else(|| format!("`{url}` has no host"))?.trim_matches(['[', ']']).to_string();
    let port = u.port_or_known_default().ok_or_else(|| format!("`{url}` has no port"))?;
    let mut addrs = tokio::time::timeout(CHECK_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
        .await
        .map_err(|_| format!("resolving {host} took longer than {} s", CHECK_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host} resolves to no address"))
}

/// Adopts the instance at `url`: an MCP link for an MCP server, the address for a plain
/// service (`plain`), checked before it is taken.
pub async fn adopt(name: &str, url: &str, plain: Option<&PlainService>, every: Duration, request_timeout: Duration) -> Result<External, String> {
    let addr = socket_of(url).await?;
    let link = match plain {
        Some(p) => {
            check(addr, &p.health, CHECK_TIMEOUT).await?;
            None
        }
        None => Some(http_link(&http_client(), url, &format!("{name} (external {url})"), Duration::from_secs(10), request_timeout).await?),
    };
    let health = plain.map(|p| p.health.clone()).unwrap_or(Health::Tcp);
    let done = CancellationToken::new();
    let (tx, exited) = watch::channel(None);
    let (closed, stop) = (link.as_ref().map(|l| l.closed.clone()), done.clone());
    tokio::spawn(async move {
        let mut failed = 0;
        let why = loop {
            let link_closed = async {
                match &closed {
                    Some(c) => c.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = link_closed => break "the MCP connection to it ended".to_string(),
                () = tokio::time::sleep(every) => {}
            }
            match check(addr, &health, CHECK_TIMEOUT.min(every)).await {
                Ok(()) => failed = 0,
                Err(e) => {
                    failed += 1;
                    if failed >= UNHEALTHY_AFTER {
                        break format!("unhealthy: {failed} checks failed in a row, the last: {e}");
                    }
                }
            }
        };
        let _ = tx.send(Some(why));
    });
    Ok(External { url: url.to_string(), link, addr, exited, done })
}

impl Deployer {
    /// Whether the server's chain starts with the external tier.
    pub(super) fn external_first(&self, spec: &ServerSpec) -> bool {
        super::chain::chain(spec, &self.base_dir).first().is_some_and(|(_, l)| matches!(l, super::instance::Launch::External))
    }

    /// Whether an instance of `spec` already runs here, found by the external tier that
    /// starts its chain (it is then taken here, whatever room the host has).
    pub(super) async fn runs_here(&self, spec: &ServerSpec) -> bool {
        self.external_first(spec) && self.find_external(spec).await.is_some()
    }

    /// A live member that advertises a healthy instance of `spec` (its discovery found one
    /// running there), nearest first, when the server's chain starts with the external
    /// tier: that member takes it under the claim instead of anyone starting another.
    pub(super) async fn member_with_instance(&self, spec: &ServerSpec) -> Option<String> {
        if !self.external_first(spec) {
            return None;
        }
        let snap = self.driver.as_ref()?.snapshot().await.ok()?;
        let members = self.members.borrow().clone();
        let mut found: Vec<_> = snap
            .mesh?
            .remote
            .into_iter()
            .filter(|r| r.service.healthy && spec.answers_to(&r.service.name) && r.node != self.me)
            .filter(|r| members.get(&r.node).is_some_and(|l| l.alive))
            .collect();
        found.sort_by(|a, b| a.rtt_ms.unwrap_or(f64::MAX).total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)));
        found.into_iter().next().map(|r| r.node)
    }

    /// A healthy instance of `spec` found by its `external_deployment` strategies here, as
    /// a URL. This node's own fronts and `/mcp/` routes are not external instances: taking
    /// one would make the LAN's instance a loop back to itself.
    pub(super) async fn find_external(&self, spec: &ServerSpec) -> Option<String> {
        if !spec.strategies.iter().any(|(t, _)| *t == Tier::ExternalDeployment) {
            return None;
        }
        let discoverer = self.discoverer.as_ref()?;
        let external = ServerSpec { strategies: spec.strategies.iter().filter(|(t, _)| *t == Tier::ExternalDeployment).cloned().collect(), ..spec.clone() };
        let (reports, _) = discoverer.discover(&[&external]).await;
        let fronts: Vec<u16> = lock(&self.fronts).values().filter_map(|f| f.port()).collect();
        for f in reports.into_iter().flat_map(|r| r.findings) {
            let Some(url) = f.url.filter(|_| f.healthy && f.tier == Tier::ExternalDeployment) else { continue };
            if let Ok(u) = reqwest::Url::parse(&url) {
                let local = u.host_str().is_some_and(|h| matches!(h, "127.0.0.1" | "localhost" | "[::1]" | "::1"));
                if local && u.port().is_some_and(|p| fronts.contains(&p) || u.path().starts_with("/mcp/")) {
                    tracing::debug!(server = %spec.name, %url, "skipping this node's own front or route as an external instance");
                    continue;
                }
            }
            return Some(url);
        }
        None
    }
}
