//! `/v1/deployments`: what shared servers run where, `ensure` (deploy when nobody runs it)
//! and `stop`, behind the API's token like every route.

use crate::deploy::manager::Deployer;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest an ensure may wait (a cold deploy of a slow server included).
pub const MAX_ENSURE_MS: u64 = 300_000;

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn off() -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, "shared servers need the mesh and claims; this node runs without them")
}

/// `GET /v1/deployments`.
pub async fn list(State(d): State<Option<Arc<Deployer>>>) -> Response {
    let Some(d) = d else { return off() };
    match d.status().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => err(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsureBody {
    pub timeout_ms: Option<u64>,
}

/// `POST /v1/deployments/{name}/ensure`: the instance of NAME on the LAN, deployed here
/// first when nobody runs it.
pub async fn ensure(State(d): State<Option<Arc<Deployer>>>, Path(name): Path<String>, body: Option<Json<EnsureBody>>) -> Response {
    let Some(d) = d else { return off() };
    if d.canonical(&name).is_none() {
        return err(
            StatusCode::NOT_FOUND,
            format!("no shared server named `{name}` (it needs a command in .mcp/servers/*.json, an npx package or a docker image and port)"),
        );
    }
    let t = body.and_then(|b| b.0.timeout_ms).unwrap_or(120_000).min(MAX_ENSURE_MS);
    let started = std::time::Instant::now();
    match d.ensure(&name, Duration::from_millis(t)).await {
        Ok(e) => {
            let mut v = serde_json::to_value(&e).unwrap_or_default();
            // A plain service is reached through this node's front, on its loopback.
            if d.is_plain(&e.server) {
                match d.front(&e.server).await {
                    Ok((port, url)) => {
                        v["url"] = serde_json::json!(url);
                        v["port"] = serde_json::json!(port);
                    }
                    Err(err) => return self::err(StatusCode::BAD_GATEWAY, err),
                }
            }
            v["ms"] = serde_json::json!(started.elapsed().as_secs_f64() * 1000.0);
            Json(v).into_response()
        }
        Err(e) => err(StatusCode::BAD_GATEWAY, e),
    }
}

/// `POST /v1/deployments/{name}/stop`: stops this node's instance and releases its claim.
pub async fn stop(State(d): State<Option<Arc<Deployer>>>, Path(name): Path<String>) -> Response {
    let Some(d) = d else { return off() };
    match d.stop(&name).await {
        Ok(token) => Json(serde_json::json!({ "server": name, "stopped": true, "token": token })).into_response(),
        Err(e) => err(StatusCode::NOT_FOUND, e),
    }
}
