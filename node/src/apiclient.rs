//! The CLI's client for the local API. It authenticates the node before it sends the token:
//! on one TCP connection it asks `/v1/hello` with a fresh nonce, checks the signature and the
//! peer id (from the data dir's `node.key`, or `--node-id`), and only then sends the request
//! with `Authorization: Bearer <token>` on the same connection. A process squatting on the
//! port can neither answer for the node nor learn the token.

use crate::api::ApiError;
use crate::apiauth::{self, Hello, HelloError};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use std::path::PathBuf;
use std::time::Duration;

/// Largest answer body the CLI reads.
const MAX_BODY: usize = 16 << 20;

/// Why the CLI could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the craftmesh node at {addr}: {reason}. Is `craftmesh up` running? (set --api or CRAFTMESH_API if it listens elsewhere)")]
    Unreachable { addr: String, reason: String },
    /// A non-2xx answer from the authenticated node, with its message.
    #[error("{0}")]
    Api(String),
    #[error("unexpected answer from the node: {0}")]
    Bad(String),
    #[error("the process answering at {addr} is not the craftmesh node of data dir {dir} (expected peer id {expected}): {reason}; the API token was not sent")]
    NotTheNode { addr: String, dir: String, expected: String, reason: String },
    #[error(
        "no craftmesh node has run with data dir {dir} (no node.key there; `craftmesh up` creates it), so the process at {addr} cannot be checked; pass the node's data dir with --data-dir, or its peer id with --node-id (and its token with --token)"
    )]
    NoNode { dir: String, addr: String },
    #[error("{0}")]
    Credentials(String),
    #[error("the node refused the API token: {0}")]
    Unauthorized(String),
}

/// Where the node is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: String,
    pub data_dir: PathBuf,
    /// `--token`; else the data dir's `api.token`.
    pub token: Option<String>,
    /// `--node-id`; else the data dir's `node.key`.
    pub node_id: Option<String>,
    pub timeout: Duration,
}

impl Client {
    /// A client of the node at `addr` whose data dir is `data_dir`.
    pub fn new(addr: &str, data_dir: PathBuf, timeout: Duration) -> Client {
        Client { addr: addr.to_string(), data_dir, token: None, node_id: None, timeout }
    }

    fn expected_peer(&self) -> Result<libp2p_identity::PeerId, ClientError> {
        if let Some(id) = &self.node_id {
            return id.trim().parse().map_err(|e| ClientError::Credentials(format!("--node-id / CRAFTMESH_NODE_ID `{id}` is not a peer id: {e}")));
        }
        match crate::identity::load(&self.data_dir) {
            Ok(Some(kp)) => Ok(kp.public().to_peer_id()),
            Ok(None) => Err(ClientError::NoNode { dir: self.data_dir.display().to_string(), addr: self.addr.clone() }),
            Err(e) => Err(ClientError::Credentials(format!("{e}"))),
        }
    }

    fn token(&self) -> Result<String, ClientError> {
        match &self.token {
            Some(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            Some(_) => Err(ClientError::Credentials("--token / CRAFTMESH_API_TOKEN is empty".into())),
            None => apiauth::read_token(&self.data_dir).map_err(|e| {
                ClientError::Credentials(format!("{e}; start the node once with `craftmesh up`, or pass the token with --token / CRAFTMESH_API_TOKEN"))
            }),
        }
    }

    /// GETs `path` and decodes JSON; a non-2xx answer becomes `ClientError::Api` with the node's message.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.once(hyper::Method::GET, path, None).await
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T, ClientError> {
        self.once(hyper::Method::POST, path, Some(body)).await
    }

    /// One request on a fresh authenticated connection, within the client's timeout.
    async fn once<T: serde::de::DeserializeOwned>(&self, method: hyper::Method, path: &str, body: Option<&serde_json::Value>) -> Result<T, ClientError> {
        let work = async {
            let mut s = self.session().await?;
            s.call(method, path, body).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Unreachable { addr: self.addr.clone(), reason: format!("no answer within {:?}", self.timeout) }),
        }
    }

    /// Connects and checks that the node of this data dir answers (its signed hello), on a
    /// connection then kept for [`Session::call`]s. Nothing is sent before the check, and
    /// the token only after it.
    pub async fn session(&self) -> Result<Session, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable { addr: self.addr.clone(), reason };
        let stream = match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&self.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => return Err(unreachable("connection timed out".into())),
        };
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().map_err(|e| unreachable(e.to_string()))?;
        // Something listens; nothing is sent before we know whom to expect and what to send.
        let expected = self.expected_peer()?;
        let token = self.token()?;
        let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| unreachable(e.to_string()))?;
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let conn = tokio::spawn(async move {
            let _ = conn.await;
            let _ = closed_tx.send(true);
        });
        let mut session = Session { sender, conn, closed: closed_rx, token, addr: self.addr.clone() };
        let not_the_node = |reason: String| ClientError::NotTheNode {
            addr: self.addr.clone(),
            dir: self.data_dir.display().to_string(),
            expected: expected.to_base58(),
            reason,
        };
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| ClientError::Bad(format!("no OS randomness: {e}")))?;
        let nonce = hex::encode(nonce);
        let (status, body) =
            session.send(hyper::Method::GET, &format!("{}?nonce={nonce}", apiauth::HELLO_PATH), None, false).await.map_err(|e| not_the_node(e.to_string()))?;
        if status != 200 {
            let msg = serde_json::from_slice::<ApiError>(&body).map(|e| e.error).unwrap_or_default();
            return Err(not_the_node(format!("it answered the identity check with HTTP {status} {msg}")));
        }
        let hello: Hello = serde_json::from_slice(&body).map_err(|_| not_the_node("its answer to the identity check is not a signed hello".into()))?;
        apiauth::verify_hello(&hello, &expected, &nonce, peer).map_err(|e: HelloError| not_the_node(e.to_string()))?;
        Ok(session)
    }
}

/// An authenticated connection to the node: requests carry the token; the connection is
/// kept between them (no new identity check, no new TCP handshake).
#[derive(Debug)]
pub struct Session {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    conn: tokio::task::JoinHandle<()>,
    closed: tokio::sync::watch::Receiver<bool>,
    token: String,
    addr: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Session {
    /// One request; a non-2xx answer becomes `ClientError::Api` (or `Unauthorized`).
    pub async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (status, body) = self.send(method, path, body, true).await.map_err(|e| ClientError::Unreachable { addr: self.addr.clone(), reason: e })?;
        if !(200..300).contains(&status) {
            let msg = serde_json::from_slice::<ApiError>(&body).map(|e| e.error).unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(if status == 401 { ClientError::Unauthorized(msg) } else { ClientError::Api(msg) });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Bad(e.to_string()))
    }

    /// Whether the connection is gone (the node closed it, or stopped).
    pub fn is_closed(&self) -> bool {
        self.conn.is_finished() || self.sender.is_closed()
    }

    /// A watch that turns `true` when the connection closes (usable while a call is in flight elsewhere).
    pub fn closed_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closed.clone()
    }

    /// One request on the connection; the body is read up to [`MAX_BODY`].
    async fn send(&mut self, method: hyper::Method, path: &str, body: Option<&serde_json::Value>, with_token: bool) -> Result<(u16, Bytes), String> {
        self.sender.ready().await.map_err(|e| format!("connection closed: {e}"))?;
        let mut req = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, self.addr.as_str());
        if with_token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let req = req.body(http_body_util::Full::new(bytes)).map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
        Ok((status, body))
    }
}
