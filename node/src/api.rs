//! Local HTTP API (axum), bound to loopback by default, and the CLI's client for it.

use crate::discovery::{now_ms, Discoverer};
use crate::driver::{DriverHandle, Input};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use craftmesh_protocol::report::Finding;
use craftmesh_protocol::select;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Default API address; the CLI uses the same default.
pub const DEFAULT_API: &str = "127.0.0.1:7410";

#[derive(Debug, Clone)]
struct AppState {
    driver: DriverHandle,
    discoverer: Arc<Discoverer>,
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

/// The API router.
pub fn router(driver: DriverHandle, discoverer: Arc<Discoverer>) -> Router {
    Router::new()
        .route("/v1/node", get(node))
        .route("/v1/services", get(services))
        .route("/v1/resolve/{name}", get(resolve))
        .with_state(AppState { driver, discoverer })
}

async fn node(State(s): State<AppState>) -> Response {
    match s.driver.snapshot().await {
        Ok(snap) => {
            let host = snap.report.as_ref().map(|r| r.host.clone());
            let uptime_s = now_ms().saturating_sub(snap.node.started_at_ms) / 1000;
            Json(serde_json::json!({
                "node": snap.node,
                "uptime_s": uptime_s,
                "stats": snap.stats,
                "host": host,
                "last_discovery_at_ms": snap.report.as_ref().map(|r| r.finished_at_ms),
            }))
            .into_response()
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

async fn services(State(s): State<AppState>) -> Response {
    match s.driver.snapshot().await {
        Ok(snap) => {
            let list: Vec<Finding> = snap.report.as_ref().map(|r| r.services().cloned().collect()).unwrap_or_default();
            Json(list).into_response()
        }
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
    }
}

/// Resolves a name to a verified endpoint: cached candidates are re-checked first; if none
/// passes (or the cache is older than `cache_ttl_minutes`), the server is discovered again.
async fn resolve(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let cfg = s.discoverer.config().clone();
    let Some(spec) = cfg.server(&name) else {
        return err(StatusCode::NOT_FOUND, format!("no server named `{name}` is configured"), Some(&name));
    };
    let snap = match s.driver.snapshot().await {
        Ok(x) => x,
        Err(e) => return err(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Some(&name)),
    };
    if let Some(report) = snap.report.as_ref().filter(|r| select::is_fresh(r.finished_at_ms, now_ms(), cfg.settings.cache_ttl_minutes)) {
        if let Some(sr) = report.servers.iter().find(|x| x.name == spec.name) {
            for f in sr.findings.iter().filter(|f| f.healthy && f.url.is_some()) {
                let checked = s.discoverer.reverify(spec, f).await;
                if checked.healthy {
                    return Json(checked).into_response();
                }
                tracing::info!(server = %spec.name, url = ?f.url, "cached endpoint failed re-verification");
            }
        }
    }
    let (reports, _) = s.discoverer.discover(&[spec]).await;
    let found = reports.first().and_then(|r| select::best(&r.findings).cloned());
    let _ = s.driver.send(Input::ServersRefreshed(reports)).await;
    match found {
        Some(f) => Json(f).into_response(),
        None => err(StatusCode::SERVICE_UNAVAILABLE, format!("no healthy instance of `{}` was found", spec.name), Some(&spec.name)),
    }
}

/// A small client for the CLI.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the craftmesh node at {addr}: {reason}. Is `craftmesh up` running? (set --api or CRAFTMESH_API if it listens elsewhere)")]
    Unreachable { addr: String, reason: String },
    #[error("{0}")]
    Api(String),
    #[error("unexpected answer from the node: {0}")]
    Bad(String),
}

impl Client {
    pub fn new(addr: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder().timeout(timeout).connect_timeout(Duration::from_secs(2)).build().unwrap_or_default();
        Client { base: format!("http://{addr}"), http }
    }

    /// GETs `path` and decodes JSON; a non-2xx answer becomes `ClientError::Api` with the node's message.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let resp = self.http.get(&url).send().await.map_err(|e| ClientError::Unreachable { addr: self.base.trim_start_matches("http://").to_string(), reason: e.to_string() })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ClientError::Bad(e.to_string()))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&body).map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(ClientError::Api(msg));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Bad(e.to_string()))
    }
}
