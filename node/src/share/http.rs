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
    let json_ok = req.method() == axum::http::Method::POST && accepts_json(req.headers());
    let mut svc = mcp.service(&canonical);
    let response = match tower_service::Service::call(&mut svc, req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    };
    if json_ok { json_when_final(response).await } else { response }
}

/// How long the answer to a POSTed request is held back to see whether its first message is
/// already the response: long enough for any call that answers at once, short enough that a
/// long call's stream (and its keep-alives, which hold the client's read timeout off) goes
/// out well before any client gives up.
const JSON_WAIT: std::time::Duration = std::time::Duration::from_millis(1500);

fn accepts_json(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(axum::http::header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.split(',').any(|t| t.trim().starts_with("application/json")))
}

/// Answers a POSTed request with `application/json` when the event stream rmcp made for it
/// starts with the final response (the usual case for a tool call); otherwise, or when
/// nothing came within [`JSON_WAIT`], passes the stream on from its first byte. MCP lets a
/// server answer either way; clients such as the official Python SDK read a JSON answer
/// faster and keep their connection for the next call (they close a stream they stop
/// reading at the response).
async fn json_when_final(response: Response) -> Response {
    use axum::http::header;
    use craftmesh_protocol::sse::{Scan, SseScanner, is_final_response};
    use futures::StreamExt;
    let is_sse = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
    if response.status() != axum::http::StatusCode::OK || !is_sse {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut stream = body.into_data_stream();
    let mut scanner = SseScanner::new(super::child::MAX_MESSAGE + 64 * 1024);
    let deadline = tokio::time::Instant::now() + JSON_WAIT;
    let mut ended = false;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(_)) | None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        };
        match scanner.push(&chunk) {
            Scan::More => continue,
            Scan::Data(data) if is_final_response(&data) => {
                parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::CACHE_CONTROL);
                return Response::from_parts(parts, Body::from(data));
            }
            Scan::Data(_) | Scan::TooLong => break,
        }
    }
    let head = futures::stream::once(futures::future::ready(Ok::<_, axum::Error>(axum::body::Bytes::from(scanner.into_bytes()))));
    if ended {
        return Response::from_parts(parts, Body::from_stream(head));
    }
    Response::from_parts(parts, Body::from_stream(head.chain(stream)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{StatusCode, header};
    use http_body_util::BodyExt;

    fn sse(chunks: Vec<&'static str>, then_hang: bool) -> Response {
        let items = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, axum::Error>(axum::body::Bytes::from(c))));
        let body = if then_hang { Body::from_stream(futures::StreamExt::chain(items, futures::stream::pending())) } else { Body::from_stream(items) };
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header("mcp-session-id", "s1")
            .body(body)
            .expect("test value")
    }

    fn content_type(r: &Response) -> String {
        r.headers().get(header::CONTENT_TYPE).expect("test value").to_str().expect("test value").to_string()
    }

    #[tokio::test]
    async fn a_stream_that_starts_with_the_response_is_answered_as_json_with_its_headers() {
        let r = json_when_final(sse(vec!["id: 0\nretry: 3000\ndata:\n\n", "data: {\"jsonrpc\":\"2.0\",\"id\":4,", "\"result\":{}}\n\n"], true)).await;
        assert_eq!(content_type(&r), "application/json");
        assert_eq!(r.headers().get("mcp-session-id").expect("test value"), "s1");
        let body = r.into_body().collect().await.expect("test value").to_bytes();
        assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":4,"result":{}}"#);
    }

    #[tokio::test]
    async fn a_notification_first_passes_the_whole_stream_on_unchanged() {
        let chunks = vec![
            "data:\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":4,\"result\":{}}\n\n",
        ];
        let r = json_when_final(sse(chunks.clone(), false)).await;
        assert_eq!(content_type(&r), "text/event-stream");
        let body = r.into_body().collect().await.expect("test value").to_bytes();
        assert_eq!(String::from_utf8_lossy(&body), chunks.concat());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_answers_late_is_streamed_after_the_wait_with_nothing_lost() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, axum::Error>>(4);
        tx.send(Ok(axum::body::Bytes::from_static(b": ping\n\n"))).await.expect("test value");
        let body = Body::from_stream(tokio_stream_of(rx));
        let resp = Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, "text/event-stream").body(body).expect("test value");
        let started = tokio::time::Instant::now();
        let r = json_when_final(resp).await;
        assert_eq!(started.elapsed(), JSON_WAIT);
        assert_eq!(content_type(&r), "text/event-stream");
        tx.send(Ok(axum::body::Bytes::from_static(b"data: {\"id\":1,\"result\":{}}\n\n"))).await.expect("test value");
        drop(tx);
        let body = r.into_body().collect().await.expect("test value").to_bytes();
        assert_eq!(&body[..], b": ping\n\ndata: {\"id\":1,\"result\":{}}\n\n");
    }

    #[tokio::test]
    async fn errors_and_json_answers_are_left_alone() {
        let r = json_when_final((StatusCode::NOT_FOUND, "Not Found: Session not found").into_response()).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let accepted = Response::builder().status(StatusCode::ACCEPTED).body(Body::empty()).expect("test value");
        assert_eq!(json_when_final(accepted).await.status(), StatusCode::ACCEPTED);
    }

    fn tokio_stream_of<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> + Send + 'static {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[test]
    fn only_clients_that_accept_json_get_it() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!accepts_json(&h));
        h.insert(header::ACCEPT, "text/event-stream".parse().expect("test value"));
        assert!(!accepts_json(&h));
        h.insert(header::ACCEPT, "text/event-stream, application/json".parse().expect("test value"));
        assert!(accepts_json(&h));
    }
}
