//! `craftmesh deploy status|stop`, `resolve --ensure` and `mcp-proxy`.

#![allow(deprecated)]

use super::{Global, client, client_error, exit, urlencode};
use clap::Subcommand;
use rmcp::service::{RoleClient, RoleServer};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{IntoTransport, StreamableHttpClientTransport, Transport};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// What shared servers run where: node, claim token, pid, since when, restarts, sessions.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop this node's instance of NAME and release its claim.
    Stop {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: &Global, cmd: &DeployCommand) -> anyhow::Result<i32> {
    match cmd {
        DeployCommand::Status { json } => status(g, *json).await,
        DeployCommand::Stop { name, json } => {
            let c = client(g, Duration::from_secs(15));
            match c.post::<serde_json::Value>(&format!("/v1/deployments/{}/stop", urlencode(name)), &serde_json::json!({})).await {
                Ok(v) => {
                    if *json {
                        println!("{v}");
                    } else {
                        println!("stopped {name} (claim token {})", v["token"]);
                    }
                    Ok(exit::OK)
                }
                Err(e) => Ok(client_error(e)),
            }
        }
    }
}

async fn status(g: &Global, json: bool) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(10));
    let v: Vec<crate::deploy::status::DeploymentView> = match c.get::<serde_json::Value>("/v1/deployments").await {
        Ok(v) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(exit::OK);
            }
            serde_json::from_value(v).unwrap_or_default()
        }
        Err(e) => return Ok(client_error(e)),
    };
    if v.is_empty() {
        println!("no shared server runs on the LAN");
        return Ok(exit::OK);
    }
    println!("{:<16} {:<14} {:>7} {:>8} {:>6} {:>8} {:>9}  command", "SERVER", "NODE", "TOKEN", "PID", "UP", "RESTARTS", "SESSIONS");
    let now = crate::discovery::now_ms();
    for d in v {
        let node =
            d.node.as_deref().map(|n| if d.local { "this node".to_string() } else { n.chars().rev().take(12).collect::<String>().chars().rev().collect() });
        let up = d.since_ms.map(|s| format!("{}s", now.saturating_sub(s) / 1000)).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<14} {:>7} {:>8} {:>6} {:>8} {:>9}  {}",
            d.server,
            node.unwrap_or_else(|| "-".into()),
            d.token.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            d.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            up,
            d.restarts,
            d.sessions,
            d.command.unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

/// `craftmesh resolve --ensure NAME`: the instance on the LAN (deployed when none runs),
/// printed as this node's `/mcp/NAME` URL, which reaches it wherever it runs.
pub async fn resolve_ensure(g: &Global, name: &str, json: bool) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(310));
    eprintln!("ensuring {name} runs on the LAN (deploys it here when no node does)...");
    match c.post::<serde_json::Value>(&format!("/v1/deployments/{}/ensure", urlencode(name)), &serde_json::json!({})).await {
        Ok(mut v) => {
            // A plain service's URL is this node's front for it; an MCP server's is `/mcp/NAME`.
            let url = match v["url"].as_str() {
                Some(u) => u.to_string(),
                None => format!("http://{}/mcp/{}", c.addr, v["server"].as_str().unwrap_or(name)),
            };
            v["url"] = serde_json::Value::String(url.clone());
            if json {
                println!("{v}");
            } else {
                println!("{url}");
                eprintln!(
                    "{} on {} (claim token {}){}",
                    v["server"].as_str().unwrap_or(name),
                    if v["local"].as_bool() == Some(true) { "this node".to_string() } else { v["node"].as_str().unwrap_or("?").to_string() },
                    v["token"],
                    if v["deployed"].as_bool() == Some(true) { ", deployed just now" } else { "" }
                );
            }
            Ok(exit::OK)
        }
        Err(e) => Ok(client_error(e)),
    }
}

/// `craftmesh mcp-proxy NAME`: MCP over stdio for clients that start a command, bridged to
/// this node's `/mcp/NAME` (which follows the instance anywhere on the LAN).
pub async fn mcp_proxy(g: &Global, name: &str) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(10));
    // The node proves who it is before the token is sent anywhere.
    if let Err(e) = c.session().await {
        return Ok(client_error(e));
    }
    let token = match crate::apiauth::read_token(&c.data_dir) {
        Ok(t) => g.token.clone().unwrap_or(t),
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::UNREACHABLE);
        }
    };
    let url = format!("http://{}/mcp/{}", c.addr, urlencode(name));
    // Kept-alive connections to the node; no overall timeout (the server's event stream
    // stays open); every request of the session is bounded by the node's own timeouts.
    crate::tls::install_provider();
    let http = match reqwest::Client::builder().no_proxy().tcp_nodelay(true).connect_timeout(Duration::from_secs(5)).build() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: cannot build the HTTP client: {e}");
            return Ok(exit::UNREACHABLE);
        }
    };
    let cfg = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
    let mut up = StreamableHttpClientTransport::with_client(http, cfg);
    let mut down = IntoTransport::<RoleServer, _, _>::into_transport(rmcp::transport::io::stdio());
    loop {
        tokio::select! {
            m = Transport::<RoleServer>::receive(&mut down) => match m {
                Some(m) => {
                    if let Err(e) = Transport::<RoleClient>::send(&mut up, m).await {
                        eprintln!("craftmesh mcp-proxy: the node did not take a message: {e}");
                        return Ok(exit::UNREACHABLE);
                    }
                }
                None => break,
            },
            m = Transport::<RoleClient>::receive(&mut up) => match m {
                Some(m) => {
                    if Transport::<RoleServer>::send(&mut down, m).await.is_err() {
                        break;
                    }
                }
                None => {
                    eprintln!("craftmesh mcp-proxy: the node closed the session");
                    return Ok(exit::UNREACHABLE);
                }
            },
        }
    }
    let _ = Transport::<RoleClient>::close(&mut up).await;
    Ok(exit::OK)
}
