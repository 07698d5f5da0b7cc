//! Claim-then-deploy: one instance of each shared server on the whole LAN.
//!
//! A session (or `resolve --ensure`) asks for a server. If a node holds the claim
//! `svc/NAME`, the instance is there and the session connects to it over the mesh. If
//! nobody holds it, this node acquires it (so no other node can deploy at the same time),
//! deploys through the server's `priority_order` (user installation, Docker, NPX), checks
//! the instance (MCP `initialize` + `tools/list`) and keeps renewing. The instance never
//! outlives the claim: when a renewal does not come back before the local deadline (TTL
//! minus a margin, on CLOCK_BOOTTIME) the child's whole process group is killed at once, or
//! the container force-removed.
//!
//! A child dies with its node, so a claim whose chain runs only processes is
//! `bound_to_node`: when this node is seen crashed the claim is handed on at once. A
//! container survives its node, so a chain with a Docker tier is not bound: the claim runs
//! out with its lease, and a node restarted within it gets the same grant back and adopts
//! its container ([`Deployer::reap`] at start, or the next `ensure`). When the node stops on
//! purpose its containers are left running with their claims unreleased, for the same
//! reason; a node that stays away longer than the lease leaves its container running until
//! it comes back and removes it (the claim, and so the LAN's instance, has moved on).

// MCP's logging, resource subscriptions and `ClientInfo` are marked deprecated by rmcp for the
// 2026-07-28 protocol; every client in use today speaks the versions that have them.
#![allow(deprecated)]

use super::chain::{chain, config_hash, log_attempt, npx_package, request_timeout, start_instance};
use super::container::{self, DockerLaunch};
use super::holder::{self, Held};
use super::instance::{Instance, Launch, Under};
use crate::claims::ClaimsHandle;
use crate::claims::wire::{ClientOp, ClientReply};
use crate::share::link::{Link, lock};
use crate::share::mesh;
use crate::share::session::Connector;
use craftmesh_protocol::claims::Meta;
use craftmesh_protocol::config::Config;
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::config::mcp::Tier;
use futures::future::BoxFuture;
use rmcp::model::ClientInfo;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

#[path = "manager_running.rs"]
mod running;

/// A deploy or stop, for `/v1/events` (`kind: "deploy"`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename = "deploy")]
pub struct DeployEvent {
    pub server: String,
    /// `deploying`, `deployed`, `failed`, `crashed`, `restarted`, `lost`, `stopped`.
    pub change: String,
    pub node: String,
    pub token: u64,
    pub detail: String,
}

/// One instance this node runs.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) child: Arc<dyn Instance>,
    pub(super) held: Arc<Held>,
    pub(super) via: String,
    pub(super) command: String,
    pub(super) since_ms: u64,
    pub(super) restarts: u32,
}

/// Where `ensure` found or put a server.
#[derive(Debug, Clone, Serialize)]
pub struct Ensured {
    pub server: String,
    pub node: String,
    pub local: bool,
    pub token: u64,
    /// True when this call deployed it.
    pub deployed: bool,
}

/// The deploy manager of one node.
pub struct Deployer {
    pub(super) config: Arc<Config>,
    pub(super) claims: ClaimsHandle,
    pub(super) control: libp2p_stream::Control,
    pub(super) me: String,
    ttl_ms: u64,
    events: broadcast::Sender<crate::driver::ApiEvent>,
    pub(super) running: Mutex<BTreeMap<String, Running>>,
    deploying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) sessions: Mutex<HashMap<String, i64>>,
    /// Bumped whenever a local instance appears or goes.
    pub(super) changed: watch::Sender<u64>,
    /// Fronts of plain services on this host's loopback ([`super::tunnel`]).
    pub(super) fronts: Mutex<HashMap<String, Arc<super::tunnel::Front>>>,
    /// Links of local sessions to other nodes' instances, with the grant they rely on:
    /// closed when the claim moves on (a holder cut off keeps its stream open for a while).
    pub(super) remotes: Mutex<Vec<Remote>>,
    pub(super) base_dir: PathBuf,
    /// Mesh members and whether they are alive (for placement).
    pub(super) members: watch::Receiver<crate::claims::Members>,
    /// Finds external instances (the `external_deployment` tier); `None` in unit setups.
    pub(super) discoverer: Option<Arc<crate::discovery::Discoverer>>,
    pub(super) driver: Option<crate::driver::DriverHandle>,
    /// This node's tags (`always-on`, ...) and host name, for placement.
    pub(super) tags: Vec<String>,
    pub(super) hostname: String,
    /// Set when the node stops: nothing new is deployed, and instances that outlive the
    /// node are left alone (their links end with the node; that is no crash).
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Deployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployer").field("me", &self.me).finish()
    }
}

#[derive(Debug)]
pub(super) struct Remote {
    pub(super) key: String,
    pub(super) node: String,
    pub(super) token: u64,
    pub(super) target: super::watch::Watched,
}

/// Lease of a `svc/NAME` claim unless `CRAFTMESH_SERVICE_TTL_MS` says otherwise.
pub const DEFAULT_SERVICE_TTL_MS: u64 = 5000;

/// What a [`Deployer`] is built from.
#[allow(missing_debug_implementations)]
pub struct Wiring {
    pub config: Arc<Config>,
    /// The configuration's base directory (relative `cwd`s of launch entries).
    pub base_dir: PathBuf,
    pub claims: ClaimsHandle,
    pub control: libp2p_stream::Control,
    pub events: broadcast::Sender<crate::driver::ApiEvent>,
    pub members: watch::Receiver<crate::claims::Members>,
    pub tags: Vec<String>,
    pub discoverer: Option<Arc<crate::discovery::Discoverer>>,
    /// The node's state: the services members advertise.
    pub driver: Option<crate::driver::DriverHandle>,
}

impl Deployer {
    pub fn new(w: Wiring) -> Arc<Deployer> {
        let Wiring { config, base_dir, claims, control, events, members, tags, discoverer, driver } = w;
        let ttl_ms = std::env::var("CRAFTMESH_SERVICE_TTL_MS").ok().and_then(|v| v.parse().ok()).filter(|v| *v >= 1000).unwrap_or(DEFAULT_SERVICE_TTL_MS);
        Arc::new(Deployer {
            config,
            me: claims.me().to_string(),
            claims,
            control,
            ttl_ms,
            events,
            running: Mutex::new(BTreeMap::new()),
            deploying: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            fronts: Mutex::new(HashMap::new()),
            remotes: Mutex::new(Vec::new()),
            base_dir,
            members,
            discoverer,
            driver,
            tags,
            hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
            stopping: false.into(),
        })
    }

    /// The canonical name of a shared server (`None`: no such server or it cannot be run).
    pub fn canonical(&self, name: &str) -> Option<String> {
        self.config
            .server(name)
            .filter(|s| {
                s.launch.as_ref().is_some_and(|l| l.command.is_some())
                    || npx_package(s).is_some()
                    || DockerLaunch::from_spec(s).is_some()
                    || s.strategies.iter().any(|(t, _)| *t == Tier::ExternalDeployment)
            })
            .map(|s| s.name.clone())
    }

    pub(super) fn spec(&self, name: &str) -> Result<ServerSpec, String> {
        let s = self.config.server(name).ok_or_else(|| format!("no server named `{name}` is configured"))?;
        if let Some(Err(e)) = craftmesh_protocol::deploy::service::plain_service(s) {
            return Err(format!("server `{}`: {e}", s.name));
        }
        if !s.enabled {
            return Err(format!("server `{}` is disabled", s.name));
        }
        if !s.missing_env.is_empty() {
            return Err(format!("server `{}` needs {} set", s.name, s.missing_env.join(", ")));
        }
        Ok(s.clone())
    }

    fn emit(&self, server: &str, change: &str, token: u64, detail: String) {
        tracing::info!(server, change, token, %detail, "deploy");
        let e = DeployEvent { server: server.to_string(), change: change.to_string(), node: self.me.clone(), token, detail };
        let _ = self.events.send(crate::driver::ApiEvent::Deploy(e));
    }

    fn local_link(&self, name: &str) -> Option<Arc<Link>> {
        lock(&self.running).get(name).filter(|r| !r.held.is_lost()).and_then(|r| r.child.link()).filter(|l| !l.is_closed())
    }

    /// The live holder of `svc/NAME`: (node, token, expires_in_ms).
    pub(super) async fn holder(&self, key: &str) -> Result<Option<(String, u64, u64)>, String> {
        match self.claims.request(ClientOp::List, Duration::from_secs(3)).await {
            ClientReply::List { keys, .. } => {
                Ok(keys.into_iter().find(|k| k.key == key).and_then(|k| k.holders.into_iter().next()).map(|h| (h.holder.node, h.holder.token, h.expires_in_ms)))
            }
            ClientReply::Unavailable { reason } => Err(format!("claims unavailable: {reason}")),
            other => Err(format!("unexpected claims answer: {other:?}")),
        }
    }

    /// Makes sure `name` runs somewhere on the LAN; deploys it here when nobody runs it.
    pub async fn ensure(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<Ensured, String> {
        let spec = self.spec(name)?;
        let key = svc_key(&spec.name);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut deployed = false;
        let mut last = String::new();
        loop {
            if let Some(r) = lock(&self.running).get(&spec.name).filter(|r| !r.held.is_lost() && r.child.link().is_none_or(|l| !l.is_closed())) {
                return Ok(Ensured { server: spec.name.clone(), node: self.me.clone(), local: true, token: r.held.token, deployed });
            }
            match self.holder(&key).await {
                Ok(Some((node, token, _))) if node != self.me => {
                    return Ok(Ensured { server: spec.name.clone(), node, local: false, token, deployed });
                }
                // Held by this node with nothing running here: a deploy in progress, an
                // instance being stopped, or a grant from before a restart. Re-acquiring with
                // the same session gets that grant back (and adopts its container).
                Ok(Some(_)) if self.busy(&spec.name) => self.wait_change(Duration::from_millis(200)).await,
                Ok(Some(_)) => match self.deploy(&spec).await {
                    Ok(()) => deployed = true,
                    Err(DeployError::Taken) => {}
                    Err(DeployError::Failed(e)) => return Err(e),
                },
                Ok(None) => match self.place(&spec).await {
                    Ok(()) => deployed = true,
                    Err(DeployError::Taken) => {}
                    Err(DeployError::Failed(e)) => return Err(e),
                },
                Err(e) => {
                    last = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "{} is not running anywhere after {} s{}",
                    spec.name,
                    timeout.as_secs(),
                    if last.is_empty() { String::new() } else { format!(": {last}") }
                ));
            }
        }
    }

    /// Whether an instance of `name` is recorded here or a deploy of it is under way.
    fn busy(&self, name: &str) -> bool {
        lock(&self.running).contains_key(name) || lock(&self.deploying).get(name).is_some_and(|m| m.try_lock().is_err())
    }

    async fn wait_change(&self, max: Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(max, rx.changed()).await;
    }

    /// A link to the instance of `name` for a session: local, or over the mesh to the holder.
    pub async fn link_for(self: &Arc<Self>, name: &str, client: ClientInfo) -> Result<Arc<Link>, String> {
        let spec = self.spec(name)?;
        let timeout = request_timeout(&spec);
        if spec.deployment.as_ref().and_then(|d| d.share) == Some(craftmesh_protocol::config::mcp::ShareMode::PerSession) {
            return self.private_child(&spec, client).await;
        }
        let deadline = tokio::time::Instant::now() + crate::share::session::CONNECT_TIMEOUT - Duration::from_secs(2);
        loop {
            if let Some(l) = self.local_link(&spec.name) {
                return Ok(l);
            }
            let e = self.ensure(&spec.name, deadline.saturating_duration_since(tokio::time::Instant::now())).await?;
            if !e.local {
                match mesh::open(&self.control, &e.node, &spec.name, client.clone(), timeout).await {
                    Ok(l) => {
                        self.watch_remote(svc_key(&spec.name), e.node.clone(), e.token, &l);
                        return Ok(l);
                    }
                    Err(err) => {
                        tracing::debug!(server = %spec.name, holder = %e.node, error = %err, "cannot reach the holder's instance yet");
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                }
            } else {
                self.wait_change(Duration::from_millis(100)).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no reachable instance of {}", spec.name));
            }
        }
    }

    /// `share: per-session`: a child of this session's own on this node (no claim: it is
    /// not shared), stopped when the session ends.
    async fn private_child(&self, spec: &ServerSpec, client: ClientInfo) -> Result<Arc<Link>, String> {
        let mut errors = Vec::new();
        for (tier, launch) in chain(spec, &self.base_dir) {
            // Containers and external instances are never per session: only process tiers apply.
            let super::instance::Launch::Process(cmd) = &launch else { continue };
            match crate::share::child::Child::start_for(&spec.name, cmd, super::chain::START_TIMEOUT, request_timeout(spec), Some(client.clone())).await {
                Ok(child) => {
                    let link = child.link.clone();
                    tokio::spawn(async move {
                        child.link.closed.cancelled().await;
                        child.stop().await;
                    });
                    return Ok(link);
                }
                Err(e) => errors.push(format!("{}: {e}", tier.as_str())),
            }
        }
        Err(format!("could not start a child of {} for this session: {}", spec.name, errors.join("; ")))
    }

    /// The local instance for a member's session, waiting while this node deploys it.
    pub async fn local_for_member(self: &Arc<Self>, name: &str, wait: Duration) -> Result<Arc<Link>, String> {
        let canonical = self.canonical(name).ok_or_else(|| format!("no shared server `{name}` here"))?;
        self.wait_local(&canonical, wait, |d, n| d.local_link(n)).await
    }

    /// What `get` finds of the local instance of `canonical`, waiting (up to `wait`) while
    /// this node deploys it; an error at once when it neither runs nor deploys here.
    pub(super) async fn wait_local<T>(&self, canonical: &str, wait: Duration, get: impl Fn(&Self, &str) -> Option<T>) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(x) = get(self, canonical) {
                return Ok(x);
            }
            let busy = lock(&self.deploying).get(canonical).is_some_and(|m| m.try_lock().is_err());
            if !busy && tokio::time::Instant::now() + Duration::from_millis(500) > deadline {
                return Err(format!("{canonical} does not run on this node"));
            }
            if !busy {
                // Not deploying: only the holder of the claim serves it.
                match self.holder(&svc_key(canonical)).await {
                    Ok(Some((n, _, _))) if n == self.me => {}
                    _ => return Err(format!("{canonical} does not run on this node")),
                }
            }
            self.wait_change(Duration::from_millis(200)).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{canonical} did not become ready here in {} s", wait.as_secs()));
            }
        }
    }

    /// Whether `canonical` is a plain service (not MCP).
    pub fn is_plain(&self, canonical: &str) -> bool {
        self.config.server(canonical).is_some_and(|s| craftmesh_protocol::deploy::service::plain_service(s).is_some())
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts one tier's instance; a plain service run as a process here gets the
    /// service's port from this node's front first.
    async fn start_one(&self, spec: &ServerSpec, launch: &Launch, under: &Under) -> Result<Arc<dyn Instance>, String> {
        let front = match launch {
            Launch::Process(_) => self.front_of(&spec.name),
            Launch::Docker(_) => None,
            Launch::External => {
                let url = self.find_external(spec).await.ok_or_else(|| "no external instance answers".to_string())?;
                let plain = match craftmesh_protocol::deploy::service::plain_service(spec) {
                    Some(Ok(p)) => Some(p),
                    _ => None,
                };
                let every = super::chain::check_every(spec);
                let e = super::external::adopt(&spec.name, &url, plain.as_ref(), every, request_timeout(spec)).await?;
                return Ok(Arc::new(e));
            }
        };
        if let Some(f) = &front {
            f.pause().await;
        }
        let r = start_instance(spec, launch, under).await;
        if let Some(f) = front {
            f.resume();
        }
        r
    }

    /// Acquires `svc/NAME` and deploys through the fallback chain.
    pub(super) async fn deploy(self: &Arc<Self>, spec: &ServerSpec) -> Result<(), DeployError> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DeployError::Failed("the node is stopping".into()));
        }
        let m = lock(&self.deploying).entry(spec.name.clone()).or_default().clone();
        let _one = m.lock().await;
        if self.local_link(&spec.name).is_some() {
            return Ok(());
        }
        let key = svc_key(&spec.name);
        let chain = chain(spec, &self.base_dir);
        // Bound to the node only when every tier is a process that dies with it.
        let bound_to_node = !chain.iter().any(|(_, l)| matches!(l, Launch::Docker(_)));
        let meta = Meta { instance: Some(format!("craftmesh://{}/{}", self.me, spec.name)), config_hash: Some(config_hash(spec)), bound_to_node };
        let held = match holder::acquire(&self.claims, &key, self.ttl_ms, meta, &format!("svc-{}", spec.name)).await {
            Ok(h) => Arc::new(h),
            Err(holder::AcquireError::Taken) => return Err(DeployError::Taken),
            Err(holder::AcquireError::Failed(e)) => return Err(DeployError::Failed(e)),
        };
        self.emit(&spec.name, "deploying", held.token, format!("claim {key} granted with token {}", held.token));
        holder::keep(self.claims.clone(), held.clone());
        let under = Under { server: spec.name.clone(), key: key.clone(), holder: self.me.clone(), token: held.token };
        // The container of this very grant (left running by this node before a restart) is
        // the instance, whatever tier comes first.
        if let Some((tier, Launch::Docker(d))) = chain.iter().find(|(_, l)| matches!(l, Launch::Docker(_))) {
            match container::adopt(d, &under, request_timeout(spec)).await {
                Ok(Some(c)) => {
                    self.adopt(spec.clone(), Arc::new(c), held.clone(), *tier, format!("{d} (adopted)"), 0);
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(server = %spec.name, error = %e, "could not adopt the container of this grant"),
            }
        }
        let attempts = self.config.settings.max_deployment_retries.max(1);
        let mut errors = Vec::new();
        'outer: for attempt in 1..=attempts {
            for (tier, launch) in chain.iter().cloned() {
                if held.is_lost() {
                    errors.push("the claim was lost while deploying".to_string());
                    break 'outer;
                }
                log_attempt(&spec.name, tier, &launch, attempt);
                match self.start_one(spec, &launch, &under).await {
                    Ok(child) => {
                        if held.is_lost() {
                            child.kill_now();
                            errors.push("the claim was lost while deploying".to_string());
                            break 'outer;
                        }
                        self.adopt(spec.clone(), child, held.clone(), tier, launch.to_string(), 0);
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(server = %spec.name, tier = tier.as_str(), attempt, error = %e, "deploy attempt failed");
                        errors.push(format!("{}: {e}", tier.as_str()));
                    }
                }
            }
        }
        held.give_up();
        holder::release(&self.claims, &held).await;
        let detail = if errors.is_empty() { "no deployable tier (no launch command, no docker image, no npx package)".to_string() } else { errors.join("; ") };
        self.emit(&spec.name, "failed", held.token, detail.clone());
        Err(DeployError::Failed(format!("could not deploy {}: {detail}", spec.name)))
    }
}

#[derive(Debug)]
pub(super) enum DeployError {
    /// Another node holds the claim (it deploys).
    Taken,
    Failed(String),
}

pub(super) fn svc_key(name: &str) -> String {
    format!("svc/{name}")
}

/// The manager as the sessions' [`Connector`].
#[derive(Debug, Clone)]
pub struct ArcDeployer(pub Arc<Deployer>);

impl Connector for ArcDeployer {
    fn connect(&self, server: String, client: ClientInfo) -> BoxFuture<'static, Result<Arc<Link>, String>> {
        let d = self.0.clone();
        Box::pin(async move { d.link_for(&server, client).await })
    }

    fn count(&self, server: &str, delta: i64) {
        *lock(&self.0.sessions).entry(server.to_string()).or_default() += delta;
    }
}
