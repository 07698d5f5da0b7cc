//! `craftmesh deploy status|stop`, `resolve --ensure` and `mcp-proxy`.

#![allow(deprecated)]

use super::{Global, client, client_error, exit, urlencode};
use clap::Subcommand;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// How often `resolve --ensure` says it is still waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// `craftmesh resolve --ensure NAME`: the instance on the LAN (deployed when none runs),
/// printed as this node's `/mcp/NAME` URL, which reaches it wherever it runs.
pub async fn resolve_ensure(g: &Global, name: &str, json: bool) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(310));
    eprintln!("ensuring {name} runs on the LAN (deploys it here when no node does)...");
    let (path, body) = (format!("/v1/deployments/{}/ensure", urlencode(name)), serde_json::json!({}));
    let ask = c.post::<serde_json::Value>(&path, &body);
    tokio::pin!(ask);
    // A deploy can take long (an image, a slow server): say so every few seconds.
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let answer = loop {
        tokio::select! {
            r = &mut ask => break r,
            _ = tick.tick() => eprintln!("  still waiting for {name} ({} s; `craftmesh deploy status` shows what runs where)", started.elapsed().as_secs()),
        }
    };
    match answer {
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

/// `craftmesh mcp-proxy NAME`: MCP over stdio for clients that start a command. The node
/// serves the session (`/v1/mcp-stream/NAME`, the same session as `/mcp/NAME`, following
/// the instance anywhere on the LAN) as newline-delimited JSON-RPC on an upgraded
/// connection, so this process only copies bytes between its stdio and that connection.
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
    let (sock, early) = match upgrade(&c.addr, name, &token).await {
        Ok(x) => x,
        Err((code, e)) => {
            eprintln!("error: {e}");
            return Ok(code);
        }
    };
    let (mut from_node, mut to_node) = sock.into_split();
    let mut stdout = tokio::io::stdout();
    let down = async {
        if !early.is_empty() {
            stdout.write_all(&early).await?;
            stdout.flush().await?;
        }
        copy_flushing(&mut from_node, &mut stdout).await
    };
    let up = async {
        let mut stdin = tokio::io::stdin();
        tokio::io::copy(&mut stdin, &mut to_node).await?;
        // The client closed its side: the session ends once the node has answered.
        to_node.shutdown().await
    };
    tokio::pin!(down, up);
    let mut up_done = false;
    loop {
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                if let Err(e) = r {
                    eprintln!("craftmesh mcp-proxy: the node did not take a message: {e}");
                    return Ok(exit::UNREACHABLE);
                }
            }
            r = &mut down => {
                return Ok(match r {
                    Ok(()) if up_done => exit::OK,
                    Ok(()) => {
                        eprintln!("craftmesh mcp-proxy: the node closed the session");
                        exit::UNREACHABLE
                    }
                    // The client went away (stdout closed).
                    Err(_) if up_done => exit::OK,
                    Err(e) => {
                        eprintln!("craftmesh mcp-proxy: {e}");
                        exit::UNREACHABLE
                    }
                });
            }
        }
    }
}

/// Copies `r` to `w`, flushing after every read (each message reaches the client at once).
async fn copy_flushing<R: tokio::io::AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(r: &mut R, w: &mut W) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
    }
}

/// Opens `/v1/mcp-stream/NAME` on the node at `addr` and upgrades it: the connection and
/// any bytes the node sent after its answer.
async fn upgrade(addr: &str, name: &str, token: &str) -> Result<(tokio::net::TcpStream, Vec<u8>), (i32, String)> {
    let unreachable = |e: String| (exit::UNREACHABLE, e);
    let mut sock = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| unreachable(format!("no connection to the node at {addr} within 5 s")))?
        .map_err(|e| unreachable(format!("cannot connect to the node at {addr}: {e}")))?;
    let _ = sock.set_nodelay(true);
    let req = format!(
        "GET /v1/mcp-stream/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
        urlencode(name),
        crate::share::http::STREAM_UPGRADE
    );
    sock.write_all(req.as_bytes()).await.map_err(|e| unreachable(e.to_string()))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(p);
            }
            if head.len() > 64 * 1024 {
                return Err("the node's answer head is too long".to_string());
            }
            let n = sock.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the node closed the connection".to_string());
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .map_err(|_| unreachable("the node did not answer within 10 s".into()))?
    .map_err(unreachable)?;
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = head[end + 4..].to_vec();
    if status == 101 {
        return Ok((sock, rest));
    }
    // An error answer: its body says why (read what arrived, within a second).
    let mut body = rest;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while body.len() < 64 * 1024 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let why = String::from_utf8_lossy(&body).trim().to_string();
    let why = serde_json::from_str::<serde_json::Value>(&why).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(why);
    let code = match status {
        404 => exit::NOT_FOUND,
        _ => exit::UNREACHABLE,
    };
    Err((code, format!("the node refused the session ({status}): {why}")))
}
