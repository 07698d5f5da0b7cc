//! `/mcp/NAME` on the node's API: each shared server as streamable HTTP (rmcp's server,
//! one rmcp session per client session), behind the API's token like every route.

use super::session::{Connector, Session};
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Svc = StreamableHttpService<Session, LocalSessionManager>;
/// Maps a name a client used to the server's canonical name (`None`: not shared here).
pub type Canonical = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The HTTP services of the shared servers, made on first use.
pub struct McpHttp {
    connector: Arc<dyn Connector>,
    canonical: Canonical,
    services: Mutex<HashMap<String, Svc>>,
}

impl std::fmt::Debug for McpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpHttp")
    }
}

impl McpHttp {
    pub fn new(connector: Arc<dyn Connector>, canonical: Canonical) -> Arc<McpHttp> {
        Arc::new(McpHttp { connector, canonical, services: Mutex::new(HashMap::new()) })
    }

    fn service(&self, name: &str) -> Svc {
        let mut m = super::link::lock(&self.services);
        if let Some(s) = m.get(name) {
            return s.clone();
        }
        let (n, c) = (name.to_string(), self.connector.clone());
        let svc = StreamableHttpService::new(
            move || Ok(Session::following(n.clone(), c.clone())),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        m.insert(name.to_string(), svc.clone());
        svc
    }
}

/// Axum handler for `/mcp/{name}` (every method: POST, GET, DELETE).
pub async fn handle(State(mcp): State<Option<Arc<McpHttp>>>, Path(name): Path<String>, req: Request) -> Response {
    let Some(mcp) = mcp else {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "shared MCP servers need the mesh and claims (this node runs without them)\n").into_response();
    };
    let Some(canonical) = (mcp.canonical)(&name) else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "no shared MCP server named `{name}` is configured (it needs a command in .mcp/servers/*.json, an npx package or a docker image and port)\n"
            ),
        )
            .into_response();
    };
    let mut svc = mcp.service(&canonical);
    match tower_service::Service::call(&mut svc, req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}

/// The protocol name `mcp-proxy` upgrades to on `/v1/mcp-stream/{name}`.
pub const STREAM_UPGRADE: &str = "craftmesh-mcp/1";

/// `GET /v1/mcp-stream/{name}` with `Upgrade: craftmesh-mcp/1`: after `101 Switching
/// Protocols` the connection carries the session as newline-delimited JSON-RPC, as MCP's
/// stdio transport does, so `craftmesh mcp-proxy` only copies bytes between its stdio and
/// this connection. The session is the same as `/mcp/NAME`'s: it follows the instance
/// anywhere on the LAN. Behind the API's token like every route.
pub async fn stream(State(mcp): State<Option<Arc<McpHttp>>>, Path(name): Path<String>, mut req: Request) -> Response {
    use axum::http::{StatusCode, header};
    let Some(mcp) = mcp else {
        return (StatusCode::SERVICE_UNAVAILABLE, "shared MCP servers need the mesh and claims (this node runs without them)\n").into_response();
    };
    let Some(canonical) = (mcp.canonical)(&name) else {
        return (StatusCode::NOT_FOUND, format!("no shared MCP server named `{name}` is configured\n")).into_response();
    };
    let asked = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(STREAM_UPGRADE));
    if !asked {
        return (StatusCode::UPGRADE_REQUIRED, format!("this route needs `Upgrade: {STREAM_UPGRADE}` (use `craftmesh mcp-proxy`)\n")).into_response();
    }
    let on = hyper::upgrade::on(&mut req);
    let connector = mcp.connector.clone();
    tokio::spawn(async move {
        let io = match on.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "mcp-stream upgrade failed");
                return;
            }
        };
        let (r, w) = tokio::io::split(io);
        let end = tokio_util::sync::CancellationToken::new();
        let session = Session::following(canonical.clone(), connector);
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(r, w).with_max_line_length(super::child::MAX_MESSAGE);
        match tokio::time::timeout(std::time::Duration::from_secs(300), rmcp::service::serve_server_with_ct(session, transport, end)).await {
            Ok(Ok(running)) => {
                let _ = running.waiting().await;
            }
            Ok(Err(e)) => tracing::debug!(server = %canonical, error = %e, "an mcp-proxy session did not start"),
            Err(_) => tracing::debug!(server = %canonical, "no session from mcp-proxy within 300 s (initialize and the first deploy)"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, STREAM_UPGRADE)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
