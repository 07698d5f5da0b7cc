//! MCP between nodes: one libp2p stream (`/craftmesh/mcp/1`) per client session, on the
//! mesh's keyed, encrypted connections (never an open port on the LAN).
//!
//! The opener writes one header line `{"server": NAME}`; the holder answers
//! `{"ok": true}` or `{"ok": false, "error": ...}` and then both sides speak MCP as
//! newline-delimited JSON-RPC (rmcp's framing, lines bounded by [`MAX_MESSAGE`]). The
//! holder serves the stream as a [`Session`] bound to its instance: when the instance
//! goes, the stream closes and the opener's session follows the server elsewhere.

// MCP's logging, resource subscriptions and `ClientInfo` are marked deprecated by rmcp for the
// 2026-07-28 protocol; every client in use today speaks the versions that have them.
#![allow(deprecated)]

use super::child::MAX_MESSAGE;
use super::link::{self, Link, Router};
use super::session::Session;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use libp2p::StreamProtocol;
use rmcp::model::ClientInfo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use tokio_util::sync::CancellationToken;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/mcp/1");
/// Longest header line.
const MAX_HEADER: usize = 4096;
/// How long the header exchange may take. A holder still deploying answers "not ready"
/// within [`READY_WAIT`], and the opener asks again, so a silent holder (cut off with its
/// connection still open) is given up on quickly.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a holder waits for its instance before answering "not ready".
pub const READY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    server: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Reads one line of at most `max` bytes.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>, max: usize) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        let chunk = r.fill_buf().await.map_err(|e| e.to_string())?;
        if chunk.is_empty() {
            return Err("the stream closed".into());
        }
        if let Some(i) = chunk.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&chunk[..i]);
            r.consume(i + 1);
            break;
        }
        let n = chunk.len();
        buf.extend_from_slice(chunk);
        r.consume(n);
        if buf.len() > max {
            return Err(format!("header longer than {max} bytes"));
        }
    }
    if buf.len() > max {
        return Err(format!("header longer than {max} bytes"));
    }
    String::from_utf8(buf).map_err(|_| "header is not UTF-8".to_string())
}

pub(crate) async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, v: &T) -> Result<(), String> {
    let mut line = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(|e| e.to_string())?;
    w.flush().await.map_err(|e| e.to_string())
}

/// A member's stream after the header exchange; bytes that arrived after the answer stay
/// in its buffer.
pub(crate) type Opened = BufReader<tokio_util::compat::Compat<libp2p::Stream>>;

/// Opens a `protocol` stream to `peer` for `server`: sends the header line and reads the
/// holder's answer (within [`HEADER_TIMEOUT`]); an error when it refused.
pub(crate) async fn open_stream(control: &libp2p_stream::Control, peer: &str, protocol: StreamProtocol, server: &str) -> Result<Opened, String> {
    let pid: libp2p::PeerId = peer.parse().map_err(|e| format!("`{peer}` is not a peer id: {e}"))?;
    let mut control = control.clone();
    let stream = tokio::time::timeout(Duration::from_secs(5), control.open_stream(pid, protocol))
        .await
        .map_err(|_| format!("no stream to {peer} within 5 s"))?
        .map_err(|e| format!("cannot open a stream to {peer}: {e}"))?;
    let mut io = BufReader::new(stream.compat());
    let answer = tokio::time::timeout(HEADER_TIMEOUT, async {
        write_json(io.get_mut(), &Hello { server: server.to_string() }).await?;
        let line = read_line(&mut io, MAX_HEADER).await?;
        serde_json::from_str::<Answer>(&line).map_err(|e| format!("bad answer from {peer}: {e}"))
    })
    .await
    .map_err(|_| format!("{peer} did not answer for {server} within {} s", HEADER_TIMEOUT.as_secs()))??;
    if !answer.ok {
        return Err(format!("{peer}: {}", answer.error.unwrap_or_else(|| "refused".into())));
    }
    Ok(io)
}

/// Reads an inbound stream's header (within [`HEADER_TIMEOUT`]): the stream and the server
/// it asks for.
pub(crate) async fn accept_stream(stream: libp2p::Stream) -> Result<(Opened, String), String> {
    let mut io = BufReader::new(stream.compat());
    let hello: Hello = tokio::time::timeout(HEADER_TIMEOUT, read_line(&mut io, MAX_HEADER))
        .await
        .map_err(|_| "no header in time".to_string())?
        .and_then(|l| serde_json::from_str(&l).map_err(|e| format!("bad header: {e}")))?;
    Ok((io, hello.server))
}

/// Answers an inbound stream's header: accepted, or refused with `error`.
pub(crate) async fn answer(io: &mut Opened, error: Option<String>) -> Result<(), String> {
    write_json(io.get_mut(), &Answer { ok: error.is_none(), error }).await
}

/// Opens a session of `server` on `peer` for a client that introduced itself as `client`.
pub async fn open(control: &libp2p_stream::Control, peer: &str, server: &str, client: ClientInfo, request_timeout: Duration) -> Result<Arc<Link>, String> {
    let io = open_stream(control, peer, PROTOCOL, server).await?;
    let (r, w) = tokio::io::split(io);
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_client(r, w).with_max_line_length(MAX_MESSAGE);
    let router = Router::new(format!("{server} on {peer}"), false);
    link::connect(router, client, transport, Duration::from_secs(30), request_timeout).await
}

/// Where a holder finds its instance of a server (waiting while it deploys).
pub type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Arc<Link>, String>> + Send + Sync>;

/// Serves inbound MCP streams until the node stops. Fails only when the protocol is
/// registered twice.
pub fn serve(control: &libp2p_stream::Control, lookup: Lookup) -> Result<(), String> {
    let mut control = control.clone();
    let mut incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let lookup = lookup.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(peer.to_base58(), stream, lookup).await {
                    tracing::debug!(%peer, error = %e, "MCP stream from a member ended");
                }
            });
        }
    });
    Ok(())
}

async fn serve_one(peer: String, stream: libp2p::Stream, lookup: Lookup) -> Result<(), String> {
    let (mut io, server) = accept_stream(stream).await?;
    let found = tokio::time::timeout(READY_WAIT + Duration::from_millis(500), lookup(server.clone())).await;
    let link = match found {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            let _ = answer(&mut io, Some(e.clone())).await;
            return Err(e);
        }
        Err(_) => {
            let e = format!("{server} is not ready here");
            let _ = answer(&mut io, Some(e.clone())).await;
            return Err(e);
        }
    };
    answer(&mut io, None).await?;
    tracing::debug!(%peer, %server, "serving an MCP session to a member");
    let end = CancellationToken::new();
    let session = Session::fixed(server.clone(), link, end.clone());
    let (r, w) = tokio::io::split(io);
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(r, w).with_max_line_length(MAX_MESSAGE);
    let running = tokio::time::timeout(Duration::from_secs(30), rmcp::service::serve_server_with_ct(session, transport, end.clone()))
        .await
        .map_err(|_| "no initialize within 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = running.waiting().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn line_of(bytes: &[u8], max: usize) -> Result<String, String> {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        a.write_all(bytes).await.map_err(|e| e.to_string())?;
        drop(a);
        read_line(&mut BufReader::new(b), max).await
    }

    #[tokio::test]
    async fn header_lines_are_bounded_and_checked() {
        assert_eq!(line_of(b"{\"server\":\"zen\"}\nrest", MAX_HEADER).await, Ok("{\"server\":\"zen\"}".to_string()));
        let long = vec![b'x'; MAX_HEADER + 10];
        assert!(line_of(&long, MAX_HEADER).await.is_err_and(|e| e.contains("longer than")), "an endless header is refused");
        let mut long_line = vec![b'x'; MAX_HEADER + 10];
        long_line.push(b'\n');
        assert!(line_of(&long_line, MAX_HEADER).await.is_err_and(|e| e.contains("longer than")));
        assert!(line_of(b"{\"server\"", MAX_HEADER).await.is_err_and(|e| e.contains("closed")), "EOF before the newline");
        assert!(line_of(b"\xff\xfe\n", MAX_HEADER).await.is_err_and(|e| e.contains("UTF-8")));
        assert!(serde_json::from_str::<Hello>("{\"nope\":1}").is_err(), "a header without a server is refused");
    }
}
