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
