//! The Docker tier of the fallback chain: a shared server run as one container under the
//! node's claim, reached over MCP streamable HTTP on the port [`super::docker`] publishes on
//! 127.0.0.1.
//!
//! A container is not the node's child: it survives a crash or restart of its node. The
//! claim (`svc/NAME`, fencing token) is written on it as labels, so a restarted node that
//! gets the same grant back (same session, same token) [`adopt`]s the running container
//! instead of deploying a second one, and removes containers of that key left by any other
//! grant. While the node runs, the container never outlives the claim: claim lost →
//! [`Instance::kill_now`] force-removes it.
//!
//! A restarted node does the same for everything it finds with its name on it
//! ([`Deployer::reap`]).
//!
//! The node must share the engine's network namespace (the usual case: both on the host):
//! the published port is on the engine's loopback, and only there, so an instance is never
//! an open port on the LAN.

// MCP's `ClientInfo` is marked deprecated by rmcp for the 2026-07-28 protocol.
#![allow(deprecated)]

use super::docker::{self, DockerInstance, DockerSpec};
use super::instance::{Instance, Under};
use super::manager::{DeployError, Deployer, svc_key};
use crate::share::link::{self, Link, Router, lock};
use bollard::Docker;
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::config::mcp::{Strategy, Tier};
use craftmesh_protocol::deploy::service::Health;
use futures::future::BoxFuture;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a running container is checked with the engine.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Pause between attempts to reach a starting server.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// Longest single attempt (one `initialize`, one health request) while waiting for it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an adopted container (it answered before) gets to answer again.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Budget of a removal with grace ([`docker::remove`]).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);
/// Budget of a forced removal ([`docker::remove_now`]).
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to a server kept idle at most this long: below the 5 s keep-alive of
/// uvicorn and Node, so the client never reuses a connection the server is closing.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// Concurrent POSTs on one link: every session of the LAN shares it.
const MAX_CONCURRENT_REQUESTS: usize = 64;
/// Log lines of a failed container quoted in the error.
const LOG_LINES: usize = 20;
/// How long [`Deployer::reap`] waits for the claims to answer before it removes what it
/// cannot prove is still claimed.
const REAP_CLAIMS_WAIT: Duration = Duration::from_secs(60);

/// How the Docker tier runs a server: what the server's `docker` discovery strategy and
/// `resource_requirements` say.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerLaunch {
    /// Image reference; must already be on the host (craftmesh does not pull).
    pub image: String,
    /// The port the server listens on inside the container.
    pub container_port: u16,
    /// Path of the MCP endpoint; `None` for a plain service (no MCP link).
    pub mcp_path: Option<String>,
    /// A path answering 2xx once the server is up, checked before MCP when given.
    pub health_endpoint: Option<String>,
    pub env: Vec<(String, String)>,
    pub memory_mb: Option<u64>,
    pub cpu_cores: Option<f64>,
}

impl DockerLaunch {
    /// The Docker launch of `spec`: its first `docker` strategy of the `docker` tier that
    /// names an image; the container port is that strategy's first `ports` entry, else the
    /// first of `resource_requirements.ports`. `None` when there is no image or no port.
    ///
    /// The environment is the launch entry's (`mcpServers.NAME.env`, already expanded),
    /// plus the variable named by `requires_api_key` from the node's environment.
    pub fn from_spec(spec: &ServerSpec) -> Option<DockerLaunch> {
        let key_var = spec.requires_api_key.as_ref().and_then(|k| std::env::var(k).ok().map(|v| (k.clone(), v)));
        DockerLaunch::from_spec_with(spec, key_var)
    }

    fn from_spec_with(spec: &ServerSpec, key_var: Option<(String, String)>) -> Option<DockerLaunch> {
        let (image, ports, mcp_path, health_endpoint) = spec.strategies.iter().find_map(|(tier, s)| match s {
            Strategy::Docker { images, ports, mcp_path, health_endpoint, .. } if *tier == Tier::DockerSidecar => {
                images.first().filter(|i| !i.trim().is_empty()).map(|i| (i.clone(), ports.clone(), mcp_path.clone(), health_endpoint.clone()))
            }
            _ => None,
        })?;
        let res = spec.resource_requirements.as_ref();
        let container_port = ports.first().copied().or_else(|| res.and_then(|r| r.ports.first().copied())).filter(|p| *p != 0)?;
        let mut env: Vec<(String, String)> = spec.launch.as_ref().map(|l| l.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
        if let Some((k, v)) = key_var
            && !env.iter().any(|(e, _)| *e == k)
        {
            env.push((k, v));
        }
        // A plain service is checked by its HTTP health path (or a TCP connect), not MCP.
        let (mcp_path, health_endpoint) = match craftmesh_protocol::deploy::service::plain_service(spec) {
            Some(Ok(p)) => match p.health {
                Health::Http { path } => (None, Some(path)),
                Health::Tcp => (None, None),
            },
            Some(Err(_)) => return None,
            None => (Some(mcp_path), health_endpoint),
        };
        Some(DockerLaunch {
            image,
            container_port,
            mcp_path,
            health_endpoint,
            env,
            memory_mb: res.and_then(|r| r.memory_mb),
            cpu_cores: res.and_then(|r| r.cpu_cores),
        })
    }

    fn docker_spec(&self, under: &Under) -> DockerSpec {
        DockerSpec {
            server: under.server.clone(),
            key: under.key.clone(),
            holder: under.holder.clone(),
            token: under.token,
            image: self.image.clone(),
            cmd: None,
            env: self.env.clone(),
            container_port: self.container_port,
            memory_mb: self.memory_mb,
            cpu_cores: self.cpu_cores,
        }
    }
}

impl std::fmt::Display for DockerLaunch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "docker {} (port {}{})", self.image, self.container_port, self.mcp_path.as_deref().unwrap_or(""))
    }
}

/// A running container of a shared server.
#[derive(Debug)]
pub struct ContainerInstance {
    docker: Docker,
    pub id: String,
    pub name: String,
    /// The port on 127.0.0.1 that reaches the server.
    pub host_port: u16,
    link: Option<Arc<Link>>,
    exited: watch::Receiver<Option<String>>,
    /// Ends the watcher when the instance is dropped.
    done: CancellationToken,
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

impl Instance for ContainerInstance {
    fn link(&self) -> Option<Arc<Link>> {
        self.link.clone()
    }

    fn address(&self) -> Option<std::net::SocketAddr> {
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], self.host_port)))
    }

    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(l) = &self.link {
                l.close();
            }
            if let Err(e) = docker::remove(&self.docker, &self.id, REMOVE_TIMEOUT).await {
                tracing::warn!(container = %self.name, error = %e, "could not remove the container");
            }
        })
    }

    fn kill_now(&self) {
        if let Some(l) = &self.link {
            l.close();
        }
        let (d, id, name) = (self.docker.clone(), self.id.clone(), self.name.clone());
        tokio::spawn(async move {
            if let Err(e) = docker::remove_now(&d, &id, KILL_TIMEOUT).await {
                tracing::warn!(container = %name, error = %e, "could not force-remove the container");
            }
        });
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn describe(&self) -> String {
        format!("container {} ({}) on 127.0.0.1:{}", self.name, self.id.chars().take(12).collect::<String>(), self.host_port)
    }

    fn outlives_node(&self) -> bool {
        true
    }
}

/// Deploys `launch` as the instance of the grant `under`, then waits (within `timeout`)
/// until the server answers MCP `initialize` and `tools/list`. On any failure the
/// container is removed and the error quotes its last log lines.
pub async fn start(launch: &DockerLaunch, under: &Under, timeout: Duration, request_timeout: Duration) -> Result<ContainerInstance, String> {
    let deadline = Instant::now() + timeout;
    let d = docker::connect().await.map_err(|e| e.to_string())?;
    let made = docker::deploy(&d, &launch.docker_spec(under), timeout).await.map_err(|e| e.to_string())?;
    match ready(&d, launch, &made, deadline, request_timeout).await {
        Ok(i) => Ok(i),
        Err(e) => Err(discard(&d, &made, e).await),
    }
}

/// The running container of the grant `under`, connected, if this engine has one (a node
/// restarted within its lease gets its grant back and finds it). Every other container of
/// the same key (another token, stopped, another image) is removed: at most one grant is
/// live, and it is `under`. A container of the grant that no longer answers is removed too
/// (`Err`); the caller then deploys.
pub async fn adopt(launch: &DockerLaunch, under: &Under, request_timeout: Duration) -> Result<Option<ContainerInstance>, String> {
    let d = docker::connect().await.map_err(|e| e.to_string())?;
    let mut found = None;
    for c in docker::list_managed(&d).await.map_err(|e| e.to_string())?.into_iter().filter(|c| c.key == under.key) {
        let ours = c.token == under.token
            && c.holder == under.holder
            && c.running
            && c.host_port.is_some()
            && c.image.as_deref() == Some(launch.image.as_str())
            && found.is_none();
        if ours {
            found = Some(c);
            continue;
        }
        tracing::info!(container = %c.name, key = %c.key, token = c.token, grant = under.token, running = c.running, "removing a container that is not the current grant's instance");
        if let Err(e) = docker::remove(&d, &c.id, REMOVE_TIMEOUT).await {
            tracing::warn!(container = %c.name, error = %e, "could not remove a stale container");
        }
    }
    let Some(c) = found else { return Ok(None) };
    tracing::info!(container = %c.name, key = %c.key, token = c.token, "adopting the running container of this grant");
    match ready(&d, launch, &c, Instant::now() + ADOPT_TIMEOUT, request_timeout).await {
        Ok(i) => Ok(Some(i)),
        Err(e) => Err(discard(&d, &c, format!("the container of this grant did not answer ({e})")).await),
    }
}

impl Deployer {
    /// What a restarted node finds on the local engine: every container labelled with this
    /// node as holder is re-adopted when this node still holds its key with the container's
    /// token (the same grant: acquiring again with the same session gets it back), and
    /// removed otherwise. Containers of other holders are theirs to handle. Without an
    /// engine there is nothing to do; without claims for [`REAP_CLAIMS_WAIT`], what cannot
    /// be proven claimed is removed (no instance outlives its claim).
    pub async fn reap(self: &Arc<Self>) {
        let d = match docker::connect().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "no Docker engine: no containers to reap");
                return;
            }
        };
        let mine: Vec<DockerInstance> = match docker::list_managed(&d).await {
            Ok(all) => all.into_iter().filter(|c| c.holder == self.me).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list this node's containers; leftovers are removed when their server is next deployed");
                return;
            }
        };
        let deadline = Instant::now() + REAP_CLAIMS_WAIT;
        for c in mine {
            let held = loop {
                match self.holder(&c.key).await {
                    Ok(h) => break Some(h),
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "waiting for the claims to reap containers");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(_) => break None,
                }
            };
            let ours = matches!(&held, Some(Some((node, token, _))) if *node == self.me && *token == c.token);
            let spec = self.spec(&c.server).ok().filter(|s| svc_key(&s.name) == c.key);
            if ours
                && c.running
                && let Some(spec) = spec
            {
                tracing::info!(container = %c.name, key = %c.key, token = c.token, "re-adopting a container of this node's grant");
                if let Err(DeployError::Failed(e)) = self.deploy(&spec).await {
                    tracing::warn!(container = %c.name, error = %e, "could not re-adopt");
                }
                // Adopted, or replaced under the same grant (a container that did not answer
                // was removed by the deploy).
                if lock(&self.running).contains_key(&spec.name) {
                    continue;
                }
            }
            let why = match &held {
                None => "the claims did not answer".to_string(),
                Some(None) => format!("nobody holds {}", c.key),
                Some(Some((node, token, _))) if *node == self.me && *token == c.token => {
                    "it stopped, its server is not deployable here any more, or it could not be re-adopted".to_string()
                }
                Some(Some((node, token, _))) => format!("{} is held by {node} with token {token}", c.key),
            };
            tracing::info!(container = %c.name, key = %c.key, token = c.token, %why, "removing a container left by this node");
            if let Err(e) = docker::remove(&d, &c.id, REMOVE_TIMEOUT).await {
                tracing::warn!(container = %c.name, error = %e, "could not remove a leftover container");
            }
        }
    }
}

/// Removes a container that failed to become an instance; the error to report.
async fn discard(d: &Docker, c: &DockerInstance, e: String) -> String {
    let logs = docker::logs_tail(d, &c.id, LOG_LINES).await;
    if let Err(r) = docker::remove(d, &c.id, REMOVE_TIMEOUT).await {
        tracing::warn!(container = %c.name, error = %r, "could not remove the container of a failed start");
    }
    if logs.is_empty() { format!("container {}: {e}; removed", c.name) } else { format!("container {}: {e}; removed; its last output:\n{logs}", c.name) }
}

/// Waits until the server in `c` answers (health endpoint, then MCP `initialize` and
/// `tools/list`) and watches it from then on.
async fn ready(d: &Docker, launch: &DockerLaunch, c: &DockerInstance, deadline: Instant, request_timeout: Duration) -> Result<ContainerInstance, String> {
    let Some(port) = c.host_port.filter(|_| c.running) else { return Err("the container exited at once".into()) };
    let client = http_client();
    let base = format!("http://127.0.0.1:{port}");
    if let Some(h) = &launch.health_endpoint {
        let url = format!("{base}{h}");
        retry(d, &c.id, deadline, "the health endpoint", |t| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).timeout(t).send().await.map_err(|e| format!("GET {url}: {e}"))?;
                if r.status().is_success() { Ok(()) } else { Err(format!("GET {url}: {}", r.status())) }
            }
        })
        .await?;
    }
    if launch.mcp_path.is_none() && launch.health_endpoint.is_none() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        retry(d, &c.id, deadline, "a TCP connection", |t| async move { super::service::check(addr, &Health::Tcp, t).await }).await?;
    }
    let link = match &launch.mcp_path {
        None => None,
        Some(path) => {
            let url = format!("{base}{path}");
            let label = format!("{} (container {})", c.server, c.name);
            let link = retry(d, &c.id, deadline, "MCP initialize", |t| http_link(&client, &url, &label, t, request_timeout)).await?;
            if link.init.capabilities.tools.is_some() {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
                let listed = tokio::time::timeout(left, link.peer.list_tools(None)).await;
                let failed = match listed {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(format!("tools/list failed: {e}")),
                    Err(_) => Some(format!("tools/list took longer than {} s", left.as_secs())),
                };
                if let Some(e) = failed {
                    link.close();
                    return Err(e);
                }
            }
            Some(link)
        }
    };
    let done = CancellationToken::new();
    let exited = watch_container(d.clone(), c.id.clone(), link.clone(), done.clone());
    Ok(ContainerInstance { docker: d.clone(), id: c.id.clone(), name: c.name.clone(), host_port: port, link, exited, done })
}

/// Runs `attempt` (given its own timeout) until it succeeds, the container stops, or
/// `deadline` passes; the error names `what` and the last failure.
async fn retry<T, F: Future<Output = Result<T, String>>>(
    d: &Docker,
    id: &str,
    deadline: Instant,
    what: &str,
    mut attempt: impl FnMut(Duration) -> F,
) -> Result<T, String> {
    let mut last = "no attempt finished".to_string();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("{what}: no answer in time; last error: {last}"));
        }
        match attempt(left.min(ATTEMPT_TIMEOUT)).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        match docker::inspect(d, id).await {
            Ok(Some(i)) if i.running => {}
            Ok(Some(_)) => return Err(format!("the container stopped while waiting for {what} (last error: {last})")),
            Ok(None) => return Err(format!("the container was removed while waiting for {what}")),
            Err(e) => tracing::debug!(error = %e, "cannot inspect the starting container"),
        }
        tokio::time::sleep(RETRY_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Reports (once) when the container stops, disappears, or its MCP connection ends; the
/// link is closed then. Stops watching when `done` is cancelled.
fn watch_container(d: Docker, id: String, link: Option<Arc<Link>>, done: CancellationToken) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let closed = link.as_ref().map(|l| l.closed.clone());
        let link_closed = async {
            match &closed {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(link_closed);
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                () = done.cancelled() => return,
                () = &mut link_closed => break "the MCP connection to the container ended".to_string(),
                _ = tick.tick() => match docker::inspect(&d, &id).await {
                    Ok(Some(i)) if i.running => {}
                    Ok(Some(_)) => break "the container stopped".to_string(),
                    Ok(None) => break "the container was removed".to_string(),
                    // The engine not answering says nothing about the container.
                    Err(e) => tracing::debug!(error = %e, "cannot inspect the container"),
                },
            }
        };
        if let Some(l) = &link {
            l.close();
        }
        let _ = tx.send(Some(why));
    });
    rx
}

/// A shared link to the MCP server at `url` (streamable HTTP), initialized within `t`.
pub(super) fn http_link(
    client: &reqwest::Client,
    url: &str,
    label: &str,
    t: Duration,
    request_timeout: Duration,
) -> impl Future<Output = Result<Arc<Link>, String>> + use<> {
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_string()).max_concurrent_requests(MAX_CONCURRENT_REQUESTS);
    let transport = StreamableHttpClientTransport::with_client(client.clone(), config);
    link::connect(Router::new(label.to_string(), true), link::full_client_info(), transport, t, request_timeout)
}

/// The HTTP client of a link: like discovery's, without a total timeout (a tool call
/// streams as long as it runs; rmcp times requests out) and with short-lived keep-alive.
pub(super) fn http_client() -> reqwest::Client {
    crate::tls::install_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("craftmesh/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use craftmesh_protocol::config::mcp::{ResourceRequirements, ServerLaunch};

    fn docker_strategy(images: &[&str], ports: &[u16]) -> Strategy {
        Strategy::Docker {
            names: vec![],
            images: images.iter().map(|s| s.to_string()).collect(),
            labels: vec![],
            ports: ports.to_vec(),
            mcp_path: "/rpc".into(),
            health_endpoint: Some("/health".into()),
        }
    }

    fn spec(strategies: Vec<(Tier, Strategy)>) -> ServerSpec {
        let mut s = ServerSpec::unconfigured("files");
        s.strategies = strategies;
        s
    }

    #[test]
    fn the_launch_comes_from_the_docker_strategy_and_the_resource_requirements() {
        let mut s = spec(vec![(Tier::DockerSidecar, docker_strategy(&["stub:1", "stub:0"], &[9000, 9001]))]);
        s.resource_requirements = Some(ResourceRequirements { memory_mb: Some(64), cpu_cores: Some(0.5), ports: vec![7000], dependencies: vec![] });
        let mut l = ServerLaunch::default();
        l.env.insert("MODE".into(), "a".into());
        s.launch = Some(l);
        let d = DockerLaunch::from_spec_with(&s, Some(("API_KEY".into(), "k".into()))).unwrap();
        assert_eq!(
            d,
            DockerLaunch {
                image: "stub:1".into(),
                container_port: 9000,
                mcp_path: Some("/rpc".into()),
                health_endpoint: Some("/health".into()),
                env: vec![("MODE".into(), "a".into()), ("API_KEY".into(), "k".into())],
                memory_mb: Some(64),
                cpu_cores: Some(0.5),
            }
        );
        assert_eq!(d.to_string(), "docker stub:1 (port 9000/rpc)");
    }

    #[test]
    fn without_a_strategy_port_the_first_required_port_is_the_container_port() {
        let mut s = spec(vec![(Tier::DockerSidecar, docker_strategy(&["stub:1"], &[]))]);
        assert_eq!(DockerLaunch::from_spec_with(&s, None), None, "no port anywhere: nothing to publish");
        s.resource_requirements = Some(ResourceRequirements { ports: vec![8000], ..Default::default() });
        let d = DockerLaunch::from_spec_with(&s, None).unwrap();
        assert_eq!((d.container_port, d.memory_mb, d.cpu_cores), (8000, None, None));
    }

    #[test]
    fn a_docker_strategy_without_an_image_or_outside_the_docker_tier_launches_nothing() {
        assert_eq!(DockerLaunch::from_spec_with(&spec(vec![(Tier::DockerSidecar, docker_strategy(&[], &[9000]))]), None), None);
        assert_eq!(DockerLaunch::from_spec_with(&spec(vec![(Tier::UserInstallation, docker_strategy(&["stub:1"], &[9000]))]), None), None);
        assert_eq!(DockerLaunch::from_spec_with(&spec(vec![]), None), None);
    }

    #[test]
    fn the_container_carries_the_grant_it_runs_under() {
        let s = spec(vec![(Tier::DockerSidecar, docker_strategy(&["stub:1"], &[9000]))]);
        let d = DockerLaunch::from_spec_with(&s, None).unwrap();
        let under = Under { server: "files".into(), key: "svc/files".into(), holder: "peer".into(), token: 42 };
        let ds = d.docker_spec(&under);
        assert_eq!((ds.server.as_str(), ds.key.as_str(), ds.holder.as_str(), ds.token), ("files", "svc/files", "peer", 42));
        assert_eq!((ds.image.as_str(), ds.container_port, ds.cmd), ("stub:1", 9000, None));
    }
}
