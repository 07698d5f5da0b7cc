//! Probing one endpoint: TCP connect, MCP `initialize` + `tools/list` over streamable
//! HTTP (rmcp), then a plain HTTP health request. Every step has a timeout and every
//! response a size cap, so a silent or flooding port cannot hold discovery.

use craftmesh_protocol::report::{ServerInfo, ToolsSummary};
use craftmesh_protocol::select::{self, Failure, Observation};
use futures::StreamExt as _;
use rmcp::ServiceExt as _;
use rmcp::model::{ClientCapabilities, ClientConfig, Implementation};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use std::time::{Duration, Instant};

/// Largest MCP JSON response or SSE event accepted from a probed server.
pub const MAX_MCP_RESPONSE: usize = 1024 * 1024;
/// Largest HTTP health body read (the rest is not read).
pub const MAX_HEALTH_BODY: usize = 64 * 1024;

/// What to check at an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An MCP server: MCP initialize must succeed for it to be healthy.
    Mcp,
    /// A plain HTTP service: the health endpoint must answer 2xx.
    Http,
    /// Only a TCP connect.
    Tcp,
}

/// The URLs of one endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` to connect to.
    pub authority: String,
    /// Full URL of the MCP endpoint.
    pub mcp_url: String,
    /// Full URL of the HTTP health endpoint, if any.
    pub health_url: Option<String>,
}

impl Target {
    /// Builds a target from a host, port and paths.
    pub fn from_port(host: &str, port: u16, mcp_path: &str, health: Option<&str>) -> Target {
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        let base = format!("http://{host}:{port}");
        Target { authority: format!("{host}:{port}"), mcp_url: format!("{base}{mcp_path}"), health_url: Some(format!("{base}{}", health.unwrap_or("/"))) }
    }

    /// Builds a target from a URL found in an env variable or lock file. A URL with a
    /// path is taken as the MCP endpoint; a bare origin gets `mcp_path` appended.
    pub fn from_url(url: &str, mcp_path: &str, health: Option<&str>) -> Result<Target, String> {
        let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if u.scheme() != "http" && u.scheme() != "https" {
            return Err(format!("`{url}`: only http and https URLs can be checked"));
        }
        let host = u.host_str().ok_or_else(|| format!("`{url}` has no host"))?;
        let port = u.port_or_known_default().ok_or_else(|| format!("`{url}` has no port"))?;
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        let origin = format!("{}://{host}:{port}", u.scheme());
        let mcp_url = if u.path().is_empty() || u.path() == "/" { format!("{origin}{mcp_path}") } else { u.to_string() };
        Ok(Target { authority: format!("{host}:{port}"), mcp_url, health_url: Some(format!("{origin}{}", health.unwrap_or("/"))) })
    }

    /// The URL a finding reports: the MCP endpoint for MCP, else the origin.
    pub fn report_url(&self, mcp: bool) -> String {
        if mcp { self.mcp_url.clone() } else { format!("http://{}", self.authority) }
    }
}

/// The outcome of probing a target.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub observation: Observation,
    pub latency: Duration,
}

/// Builds the HTTP client used for probes: no redirects, no idle pooling (avoids delayed-ACK
/// stalls on reused connections), and an overall per-request timeout. HTTPS is verified
/// against the OS trust store (and `SSL_CERT_FILE`), see [`crate::tls`].
pub fn http_client(timeout: Duration) -> reqwest::Client {
    crate::tls::install_provider();
    let builder = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("craftmesh/", env!("CARGO_PKG_VERSION")))
    };
    match builder().build() {
        Ok(c) => c,
        Err(e) => {
            // No usable trust store: HTTPS probes then fail with a certificate error, HTTP works.
            tracing::warn!(error = %e, "cannot load the OS trust store; https servers cannot be verified");
            builder().tls_certs_only(Vec::new()).build().unwrap_or_else(|_| reqwest::Client::new())
        }
    }
}

/// Probes a target. Never takes longer than about `timeout` per stage.
pub async fn probe(client: &reqwest::Client, target: &Target, expect: Expect, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let connect = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target.authority)).await {
        Ok(Ok(s)) => {
            drop(s);
            Ok(())
        }
        Ok(Err(e)) => Err(format!("connect to {}: {e}", target.authority)),
        Err(_) => Err(format!("connect to {}: timed out after {timeout:?}", target.authority)),
    };
    let mut obs = Observation { connect, mcp: None, http: None };
    if obs.connect.is_ok() {
        if expect == Expect::Mcp {
            obs.mcp = Some(match tokio::time::timeout(timeout, mcp_initialize(client.clone(), &target.mcp_url)).await {
                Ok(r) => r.map_err(Failure::answered),
                Err(_) => Err(Failure::silent(format!("no MCP answer within {timeout:?}"))),
            });
        }
        let mcp_ok = matches!(obs.mcp, Some(Ok(_)));
        // A server silent to MCP would be silent to HTTP too: do not wait a second time.
        let mcp_silent = matches!(&obs.mcp, Some(Err(f)) if f.silent);
        if !mcp_ok
            && !mcp_silent
            && expect != Expect::Tcp
            && let Some(h) = &target.health_url
        {
            obs.http = Some(http_status(client, h, timeout).await);
        }
    }
    ProbeResult { observation: obs, latency: start.elapsed() }
}

/// MCP `initialize` then `tools/list` (when the server offers tools), then a clean close.
pub async fn mcp_initialize(client: reqwest::Client, url: &str) -> Result<(ServerInfo, Option<ToolsSummary>), String> {
    let cfg = StreamableHttpClientTransportConfig::with_uri(url.to_string())
        .max_json_response_size(MAX_MCP_RESPONSE)
        .max_sse_event_size(MAX_MCP_RESPONSE)
        .max_error_response_size(4096)
        .reinit_on_expired_session(false);
    let transport = StreamableHttpClientTransport::with_client(client, cfg);
    let hello = ClientConfig::new(ClientCapabilities::default(), Implementation::new("craftmesh", env!("CARGO_PKG_VERSION")));
    let service = hello.serve(transport).await.map_err(|e| short(&e.to_string()))?;
    let Some(peer) = service.peer_info() else {
        let _ = service.cancel().await;
        return Err("server sent no initialize result".into());
    };
    let info = ServerInfo {
        name: peer.server_info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
        version: peer.server_info.as_ref().map(|i| i.version.clone()).unwrap_or_default(),
        protocol_version: peer.protocol_version.to_string(),
    };
    let tools = if peer.capabilities.tools.is_some() {
        match service.list_all_tools().await {
            Ok(list) => {
                let pairs: Vec<(String, String)> =
                    list.iter().map(|t| (t.name.to_string(), serde_json::to_string(&*t.input_schema).unwrap_or_default())).collect();
                Some(ToolsSummary { count: pairs.len(), hash: select::tools_hash(&pairs) })
            }
            Err(e) => {
                let _ = service.cancel().await;
                return Err(format!("tools/list failed: {}", short(&e.to_string())));
            }
        }
    } else {
        None
    };
    let _ = service.cancel().await;
    Ok((info, tools))
}

/// GET `url`, returning the status code; reads at most [`MAX_HEALTH_BODY`] of the body.
pub async fn http_status(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<u16, Failure> {
    let fut = async {
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { Failure::silent(short(&describe(&e))) } else { Failure::answered(short(&describe(&e))) })?;
        let status = resp.status().as_u16();
        let mut stream = resp.bytes_stream();
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    read += c.len();
                    if read >= MAX_HEALTH_BODY {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Ok(status)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure::silent(format!("no HTTP answer within {timeout:?}"))),
    }
}

fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Keeps error text readable in tables: one line, generic type parameters (`Foo<Bar>`)
/// removed, at most 200 characters.
fn short(s: &str) -> String {
    let mut one = String::with_capacity(s.len());
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '<' => depth += 1,
            '>' if depth > 0 => depth -= 1,
            '\n' if depth == 0 => one.push(' '),
            _ if depth == 0 => one.push(c),
            _ => {}
        }
    }
    if one.chars().count() > 200 { format!("{}…", one.chars().take(200).collect::<String>()) } else { one }
}
