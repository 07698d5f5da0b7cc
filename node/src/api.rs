//! Local HTTP API (axum), bound to loopback by default. Every route sits behind
//! [`crate::apiauth::guard`] (token, Host, Origin); the CLI's client is [`crate::apiclient`].

use crate::apiauth::{self, ApiAuth};
use crate::discovery::{Discoverer, now_ms};
use crate::driver::{ApiEvent, DriverHandle, Input, Snapshot};
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use craftmesh_protocol::config::mcp::{StrategyKind, Tier};
use craftmesh_protocol::report::Finding;
use craftmesh_protocol::report::{Evidence, Status};
use craftmesh_protocol::select;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::broadcast;

/// Default API address; the CLI uses the same default.
pub const DEFAULT_API: &str = "127.0.0.1:7410";

#[derive(Debug, Clone)]
struct AppState {
    driver: DriverHandle,
    discoverer: Arc<Discoverer>,
    events: broadcast::Sender<ApiEvent>,
    auth: Arc<ApiAuth>,
    claims: Option<crate::claims::ClaimsHandle>,
    deploy: Option<Arc<crate::deploy::manager::Deployer>>,
    mcp: Option<Arc<crate::share::http::McpHttp>>,
}

impl FromRef<AppState> for Option<Arc<crate::deploy::manager::Deployer>> {
    fn from_ref(s: &AppState) -> Self {
        s.deploy.clone()
    }
}

impl FromRef<AppState> for Option<Arc<crate::share::http::McpHttp>> {
    fn from_ref(s: &AppState) -> Self {
        s.mcp.clone()
    }
}

impl FromRef<AppState> for Arc<ApiAuth> {
    fn from_ref(s: &AppState) -> Arc<ApiAuth> {
        s.auth.clone()
    }
}

impl FromRef<AppState> for Option<crate::claims::ClaimsHandle> {
    fn from_ref(s: &AppState) -> Option<crate::claims::ClaimsHandle> {
        s.claims.clone()
    }
}

/// A service anywhere in the mesh: a finding plus where it lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(flatten)]
    pub finding: Finding,
    /// Peer id of the node hosting it (empty for external adverts).
    pub node: String,
    pub node_name: String,
    pub local: bool,
    /// Round-trip time to the hosting node, for remote services.
    pub rtt_ms: Option<f64>,
}

fn local_views(snap: &Snapshot) -> Vec<ServiceView> {
    let report = snap.report.as_ref();
    report
        .map(|r| r.services().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|finding| ServiceView { finding, node: snap.node.peer_id.clone(), node_name: snap.node.hostname.clone(), local: true, rtt_ms: None })
        .collect()
}

fn remote_views(snap: &Snapshot) -> Vec<ServiceView> {
    let Some(m) = &snap.mesh else { return Vec::new() };
    let mut out: Vec<ServiceView> = m
        .remote
        .iter()
        .map(|r| ServiceView {
            finding: Finding {
                name: r.service.name.clone(),
                url: Some(r.service.url.clone()),
                protocol: Some(r.service.protocol),
                healthy: r.service.healthy,
                status: if r.service.healthy { Status::Healthy } else { Status::Unhealthy },
                source: StrategyKind::Mesh,
                tier: Tier::ExternalDeployment,
                evidence: Evidence::default(),
                server_info: r.service.server_info.clone(),
                tools: r.service.tools.clone(),
                process: None,
                latency_ms: None,
                health_url: None,
                detail: None,
                checked_at_ms: 0,
            },
            node: r.node.clone(),
            node_name: r.node_name.clone(),
            local: false,
            rtt_ms: r.rtt_ms,
        })
        .collect();
    for e in &m.externals {
        out.push(ServiceView {
            finding: Finding {
                name: e.name.clone(),
                url: Some(e.url.clone()),
                protocol: None,
                healthy: false,
                status: Status::Unreachable,
                source: StrategyKind::Mdns,
                tier: Tier::ExternalDeployment,
                evidence: Evidence::default(),
                server_info: None,
                tools: None,
                process: None,
                latency_ms: None,
                health_url: None,
                detail: Some("external, unverified: resolvable only after it passes the MCP health check".into()),
                checked_at_ms: 0,
            },
            node: String::new(),
            node_name: String::new(),
            local: false,
            rtt_ms: None,
        });
    }
    out
}

/// Error body of every non-2xx answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn err(code: StatusCode, msg: impl Into<String>, name: Option<&str>) -> Response {
    (code, Json(ApiError { error: msg.into(), name: name.map(str::to_string) })).into_response()
}

/// The API router. Serve it with `into_make_service_with_connect_info::<apiauth::ConnAddrs>()`
/// so `/v1/hello` signs the address the client connected to.
pub fn router(
    driver: DriverHandle,
    discoverer: Arc<Discoverer>,
    events: broadcast::Sender<ApiEvent>,
    auth: Arc<ApiAuth>,
    claims: Option<crate::claims::ClaimsHandle>,
    deploy: Option<Arc<crate::deploy::manager::Deployer>>,
    mcp: Option<Arc<crate::share::http::McpHttp>>,
) -> Router {
    Router::new()
        .route(apiauth::HELLO_PATH, get(apiauth::hello))
        .route("/v1/node", get(node))
        .route("/v1/services", get(services))
        .route("/v1/members", get(members))
        .route("/v1/events", get(events_stream))
        .route("/v1/resolve/{name}", get(resolve))
        .route("/v1/claims", get(crate::api_claims::list).post(crate::api_claims::post))
        .route("/v1/cluster", get(crate::api_claims::cluster))
        .route("/v1/deployments", get(crate::api_deploy::list))
        .route("/v1/deployments/{name}/ensure", axum::routing::post(crate::api_deploy::ensure))
        .route("/v1/deployments/{name}/stop", axum::routing::post(crate::api_deploy::stop))
        .route("/mcp/{name}", axum::routing::any(crate::share::http::handle))
        .route("/v1/mcp-stream/{name}", get(crate::share::http::stream))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such API route", None) })
        .layer(axum::middleware::from_fn_with_state(auth.clone(), apiauth::guard))
        .with_state(AppState { driver, discoverer, events, auth, claims, deploy, mcp })
}

async fn members(State(s): State<AppState>) -> Response {
    match s.driver.snapshot().await {
        Ok(snap) => Json(snap.mesh.map(|m| m.members).unwrap_or_default()).into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

/// Server-sent events: joins, leaves, state changes, records and service changes.
async fn events_stream(State(s): State<AppState>) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let rx = s.events.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => {
                // One `kind` per event, and the SSE event name is that kind.
                SseEvent::default().event(ev.kind()).data(serde_json::to_string(&ev).unwrap_or_default())
            }
            // The client fell behind; say how many events it missed.
            Err(broadcast::error::RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn node(State(s): State<AppState>) -> Response {
    match s.driver.snapshot().await {
        Ok(snap) => {
            let host = snap.report.as_ref().map(|r| r.host.clone());
            let uptime_s = now_ms().saturating_sub(snap.node.started_at_ms) / 1000;
            let mesh = snap.mesh.as_ref().map(|m| {
                serde_json::json!({
                    "mesh_id": m.mesh_id,
                    "listen_port": m.listen_port,
                    "addresses": m.addresses,
                    "members": m.members.len(),
                    "other_meshes": m.other_meshes,
                    "stats": m.stats,
                })
            });
            Json(serde_json::json!({
                "node": snap.node,
                "uptime_s": uptime_s,
                "stats": snap.stats,
                "host": host,
                "mesh": mesh,
                "last_discovery_at_ms": snap.report.as_ref().map(|r| r.finished_at_ms),
                "tasks": snap.tasks,
                "cluster": s.claims.as_ref().map(|c| c.view()),
            }))
            .into_response()
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

async fn services(State(s): State<AppState>) -> Response {
    match s.driver.snapshot().await {
        Ok(snap) => {
            let mut list = local_views(&snap);
            list.extend(remote_views(&snap));
            Json(list).into_response()
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

/// Resolves a name to a verified endpoint, in this order: fresh cached local findings
/// (re-verified); healthy remote instances of mesh members, lowest RTT first, each verified
/// from here; only then a local discovery of the server; then outside mDNS adverts.
async fn resolve(
    State(s): State<AppState>,
    conn: Option<axum::Extension<axum::extract::ConnectInfo<apiauth::ConnAddrs>>>,
    Path(name): Path<String>,
) -> Response {
    let cfg = s.discoverer.config().clone();
    let snap = match s.driver.snapshot().await {
        Ok(x) => x,
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Some(&name)),
    };
    let unconfigured;
    let spec = match cfg.server(&name) {
        Some(spec) => spec,
        None if remote_views(&snap).iter().any(|v| v.finding.name == name) => {
            unconfigured = craftmesh_protocol::config::ServerSpec::unconfigured(&name);
            &unconfigured
        }
        None => return err(StatusCode::NOT_FOUND, format!("no server named `{name}` is configured or advertised"), Some(&name)),
    };
    if !spec.enabled {
        return err(StatusCode::NOT_FOUND, format!("server `{}` is disabled in the configuration (enabled: false)", spec.name), Some(&name));
    }
    // A shared server that runs somewhere on the LAN under its claim: this node's way to it
    // (`/mcp/NAME`, or a plain service's loopback front). Nothing is deployed here.
    if let Some(d) = &s.deploy {
        let api = conn.and_then(|c| c.0.0.local).unwrap_or(s.auth.bound);
        if let Some(f) = d.claimed_finding(&spec.name, api).await {
            return Json(f).into_response();
        }
    }
    if let Some(report) = snap.report.as_ref().filter(|r| select::is_fresh(r.finished_at_ms, now_ms(), cfg.settings.cache_ttl_minutes))
        && let Some(sr) = report.servers.iter().find(|x| x.name == spec.name)
    {
        for f in sr.findings.iter().filter(|f| f.healthy && f.url.is_some()) {
            let checked = s.discoverer.reverify(spec, f).await;
            if checked.healthy {
                return Json(checked).into_response();
            }
            tracing::info!(server = %spec.name, url = ?f.url, "cached endpoint failed re-verification");
        }
    }
    // Then the mesh, before any (slow) local discovery: healthy instances of members,
    // lowest RTT first, each verified from here.
    let (mut members, externals): (Vec<ServiceView>, Vec<ServiceView>) =
        remote_views(&snap).into_iter().filter(|v| spec.answers_to(&v.finding.name)).partition(|v| v.finding.source != StrategyKind::Mdns);
    members.retain(|v| v.finding.healthy);
    members.sort_by(|a, b| a.rtt_ms.unwrap_or(f64::MAX).total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)));
    if let Some(f) = first_verified(&s, spec, &members).await {
        return Json(f).into_response();
    }
    // Only then discover the server here again (up to health_check_timeout per candidate).
    let (reports, _) = s.discoverer.discover(&[spec]).await;
    let found = reports.first().and_then(|r| select::best(&r.findings).cloned());
    let _ = s.driver.send(Input::ServersRefreshed(reports)).await;
    if let Some(f) = found {
        return Json(f).into_response();
    }
    // Last, outside `_mcp._tcp` adverts, which only count once they pass the health check.
    if let Some(f) = first_verified(&s, spec, &externals).await {
        return Json(f).into_response();
    }
    err(StatusCode::SERVICE_UNAVAILABLE, format!("no healthy instance of `{}` was found", spec.name), Some(&spec.name))
}

/// The first of (up to 8) remote candidates that passes verification from here.
async fn first_verified(s: &AppState, spec: &craftmesh_protocol::config::ServerSpec, candidates: &[ServiceView]) -> Option<Finding> {
    for v in candidates.iter().take(8) {
        let mut probe = v.finding.clone();
        probe.name = spec.name.clone();
        let checked = s.discoverer.reverify(spec, &probe).await;
        if checked.healthy {
            return Some(checked);
        }
        tracing::debug!(server = %spec.name, url = ?v.finding.url, "remote instance failed verification");
    }
    None
}
