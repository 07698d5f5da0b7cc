//! `craftmesh up`: wires the data dir, identity, discovery driver and API together.

use crate::api;
use crate::datadir::DataDir;
use crate::discovery::{Discoverer, now_ms};
use crate::driver::{self, NodeInfo};
use craftmesh_protocol::config::Config;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Everything `up` needs, prepared by the caller so tests can inject a listener and a
/// shutdown future.
#[derive(Debug)]
pub struct Setup {
    pub config: Arc<Config>,
    pub base_dir: PathBuf,
    pub data_dir: DataDir,
    pub keypair: libp2p_identity::Keypair,
    /// `None` runs the node without a mesh (local discovery and API only).
    pub mesh: Option<crate::mesh::MeshOptions>,
    /// The API token (from `api.token` in the data dir) every API request must carry.
    pub api_token: String,
    /// `--api-allow-remote`: the API may listen on a non-loopback address.
    pub api_allow_remote: bool,
    /// Claims (on the mesh's connections); `None` when off or the mesh is off.
    pub claims: Option<crate::claims::ClaimsOptions>,
}

/// When the node drops the pages of its start-up code (see [`crate::sys::trim_code_pages`]).
const TRIM_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

/// Errors that stop the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("API server failed: {0}")]
    Api(std::io::Error),
    #[error(transparent)]
    Mesh(#[from] crate::mesh::MeshError),
    #[error(transparent)]
    Claims(#[from] crate::claims::StartError),
    #[error("claims: {0}")]
    ClaimsProtocol(String),
}

/// Runs the node until `shutdown` resolves, then stops cleanly (API drained, `api.addr` removed).
pub async fn run(setup: Setup, listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    let addr = listener.local_addr().map_err(NodeError::Api)?;
    let addr_file = DataDir::api_addr_file(setup.data_dir.path());
    if let Err(e) = std::fs::write(&addr_file, format!("{addr}\n")) {
        tracing::warn!(file = %addr_file.display(), error = %e, "cannot write API address file; the CLI will need --api");
    }
    let peer_id = setup.keypair.public().to_peer_id().to_base58();
    // Restart counters of supervised tasks, shown as `tasks` in `/v1/node`: hand a clone
    // to `supervise::spawn_supervised` for each long-lived task the node runs.
    let health = crate::supervise::SharedHealth::new(craftmesh_protocol::supervise::Backoff::default());
    let mesh = match setup.mesh.clone() {
        Some(opts) => Some(crate::mesh::Mesh::start(opts, setup.keypair.clone(), addr.port(), health.clone())?),
        None => None,
    };
    let info = NodeInfo {
        peer_id: peer_id.clone(),
        hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        profile: format!("{:?}", setup.config.profile).to_lowercase(),
        data_dir: setup.data_dir.path().display().to_string(),
        api: addr.to_string(),
        started_at_ms: now_ms(),
        config_files: setup.config.files.clone(),
        servers_configured: setup.config.servers.len(),
        agents_configured: setup.config.agents.agents.len(),
    };
    let discoverer = Arc::new(Discoverer::new(setup.config.clone(), setup.base_dir.clone()));
    let (handle, rx) = driver::channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let (events_tx, _) = tokio::sync::broadcast::channel(256);
    // Claims ride on the mesh's connections; the driver tells them who is alive.
    let (members_tx, claims) = match (&mesh, setup.claims.clone()) {
        (Some(m), Some(opts)) => {
            let transport = crate::claims::mesh_transport::MeshTransport::new(m.stream_control());
            let incoming = transport.incoming().map_err(NodeError::ClaimsProtocol)?;
            let (members_tx, members_rx) = tokio::sync::watch::channel(Arc::new(m.liveness()));
            let sink_tx = events_tx.clone();
            let wiring = crate::claims::Wiring {
                opts,
                me: peer_id.clone(),
                clock: crate::claims::clock::boot_clock(),
                transport: Arc::new(transport),
                incoming,
                members: members_rx,
                events: Arc::new(move |e| {
                    let _ = sink_tx.send(driver::ApiEvent::Claims(e));
                }),
            };
            let (h, task) = crate::claims::start(wiring, stopped(stop_rx.clone())).await?;
            (Some(members_tx), Some((h, task)))
        }
        _ => (None, None),
    };
    let (claims, claims_task) = match claims {
        Some((h, t)) => (Some(h), Some(t)),
        None => (None, None),
    };
    // Shared servers: claim-then-deploy, sessions over the mesh, `/mcp/NAME`.
    let (deployer, mcp) = match (&mesh, &claims) {
        (Some(m), Some(h)) => {
            let control = m.stream_control();
            let members = members_tx.as_ref().map(|t| t.subscribe()).unwrap_or_else(|| tokio::sync::watch::channel(Arc::default()).1);
            let tags = setup.mesh.as_ref().map(|o| o.tags.clone()).unwrap_or_default();
            let d = crate::deploy::manager::Deployer::new(crate::deploy::manager::Wiring {
                config: setup.config.clone(),
                base_dir: setup.base_dir.clone(),
                claims: h.clone(),
                control: control.clone(),
                events: events_tx.clone(),
                members,
                tags,
                discoverer: Some(discoverer.clone()),
                driver: Some(handle.clone()),
            });
            crate::deploy::place::serve(&control, d.clone()).map_err(NodeError::ClaimsProtocol)?;
            crate::deploy::tunnel::serve(&control, d.clone()).map_err(NodeError::ClaimsProtocol)?;
            // Containers this node left (a crash, a restart): re-adopted or removed, off the
            // startup path.
            let reap_d = d.clone();
            tokio::spawn(async move { reap_d.reap().await });
            d.keep_started();
            let lookup_d = d.clone();
            let lookup: crate::share::mesh::Lookup = Arc::new(move |name: String| {
                let d = lookup_d.clone();
                Box::pin(async move { d.local_for_member(&name, crate::share::mesh::READY_WAIT).await })
            });
            crate::share::mesh::serve(&control, lookup).map_err(NodeError::ClaimsProtocol)?;
            let canon_d = d.clone();
            let mcp = crate::share::http::McpHttp::new(
                Arc::new(crate::deploy::manager::ArcDeployer(d.clone())),
                Arc::new(move |n: &str| canon_d.canonical(n).filter(|c| !canon_d.is_plain(c))),
            );
            (Some(d), Some(mcp))
        }
        _ => (None, None),
    };
    let driver_task =
        tokio::spawn(driver::run(rx, handle.clone(), discoverer.clone(), info, mesh, events_tx.clone(), health.clone(), members_tx, stopped(stop_rx.clone())));
    tracing::info!(api = %addr, %peer_id, servers = setup.config.servers.len(), "craftmesh node up");
    // Start-up code (arguments, configuration, TLS, the first rounds) is not needed again:
    // drop its pages from the resident set once the node has settled.
    if std::env::var_os("CRAFTMESH_KEEP_CODE_PAGES").is_none() {
        tokio::spawn(async {
            tokio::time::sleep(TRIM_AFTER).await;
            let bytes = crate::sys::trim_code_pages();
            tracing::debug!(bytes, "dropped the start-up code pages from the resident set");
        });
    }
    let auth =
        Arc::new(crate::apiauth::ApiAuth { token: setup.api_token.clone(), allow_remote: setup.api_allow_remote, bound: addr, keypair: setup.keypair.clone() });
    let app = api::router(handle, discoverer, events_tx, auth, claims, deployer.clone(), mcp);
    let server = axum::serve(crate::apiauth::NoDelay(listener), app.into_make_service_with_connect_info::<crate::apiauth::ConnAddrs>())
        .with_graceful_shutdown(stopped(stop_rx));
    let server_task = tokio::spawn(async move { server.await });
    shutdown.await;
    tracing::info!("shutting down");
    // Instances stop with the node (their claims are released while claims still run).
    if let Some(d) = &deployer {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), d.shutdown()).await;
    }
    let _ = stop_tx.send(true);
    let api_result = match tokio::time::timeout(std::time::Duration::from_secs(5), server_task).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) | Err(_) => Ok(()),
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver_task).await;
    if let Some(t) = claims_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
    }
    let _ = std::fs::remove_file(&addr_file);
    drop(setup.data_dir);
    api_result.map_err(NodeError::Api)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
