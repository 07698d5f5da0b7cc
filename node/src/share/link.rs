//! A connection to an MCP server instance (a shared child, or a holder node over the mesh)
//! and the routing of what that instance sends to the sessions attached to it.
//!
//! The instance side is an rmcp client ([`Upstream`], a `Service<RoleClient>`): rmcp gives
//! every request we send a fresh id and progress token, so sessions never collide; the
//! [`Router`] maps progress tokens back, and sends server-to-client requests, log
//! messages, resource updates and `list_changed` to the sessions [`Table`] picks.

// MCP's logging, resource subscriptions and `ClientInfo` are marked deprecated by rmcp for the
// 2026-07-28 protocol; every client in use today speaks the versions that have them.
#![allow(deprecated)]

use craftmesh_protocol::share::{Caps, LogLevel, SessionId, Table};
use rmcp::model::{
    ClientCapabilities, ClientInfo, ClientResult, ElicitationCapability, Implementation, InitializeResult, LoggingLevel, ProgressToken, ProtocolVersion,
    RootsCapabilities, SamplingCapability, ServerNotification, ServerRequest,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleClient, RoleServer, ServiceError};
use rmcp::{ErrorData as McpError, Service};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a session may take to answer a server-to-client request (sampling and
/// elicitation may wait for a person).
pub const CLIENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// Notifications queued for one session before further ones are dropped (a session that
/// does not read must not hold up the instance or the other sessions).
const NOTE_QUEUE: usize = 1024;

/// Locks a mutex, recovering from poisoning (the data stays consistent: every critical
/// section is a few map operations).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An item of a session's notification queue.
#[derive(Debug)]
enum Note {
    Send(ServerNotification),
    /// Answered once everything queued before it has been handed to the session.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// One attached session: its peer (for requests) and its ordered notification queue.
#[derive(Debug, Clone)]
struct Port {
    peer: Peer<RoleServer>,
    notes: mpsc::Sender<Note>,
}

/// Who receives what one instance sends.
#[derive(Debug)]
pub struct Router {
    /// Where the instance is (for logs and errors).
    pub label: String,
    /// True for a shared child (the table decides); false for a private link of one
    /// session to a holder node (which does the sharing itself).
    pub shared: bool,
    table: Mutex<Table>,
    ports: Mutex<HashMap<SessionId, Port>>,
    progress: Mutex<HashMap<ProgressToken, (SessionId, ProgressToken)>>,
}

impl Router {
    pub fn new(label: String, shared: bool) -> Arc<Router> {
        Arc::new(Router { label, shared, table: Mutex::new(Table::new()), ports: Mutex::new(HashMap::new()), progress: Mutex::new(HashMap::new()) })
    }

    /// Attaches a session; its notifications are delivered in order by a task of its own.
    pub fn attach(&self, peer: Peer<RoleServer>, caps: Caps) -> Result<SessionId, String> {
        let id = lock(&self.table).open(caps).map_err(|e| e.to_string())?;
        let (tx, mut rx) = mpsc::channel::<Note>(NOTE_QUEUE);
        let p = peer.clone();
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let n = match n {
                    Note::Send(n) => n,
                    Note::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                match tokio::time::timeout(Duration::from_secs(10), p.send_notification(n)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => tracing::debug!("a session did not take a notification within 10 s"),
                }
            }
        });
        lock(&self.ports).insert(id, Port { peer, notes: tx });
        Ok(id)
    }

    /// Detaches a session; says what the instance must be told.
    pub fn detach(&self, id: SessionId) -> craftmesh_protocol::share::Closed {
        lock(&self.ports).remove(&id);
        lock(&self.progress).retain(|_, (s, _)| *s != id);
        lock(&self.table).close(id)
    }

    pub fn sessions(&self) -> usize {
        lock(&self.table).len()
    }

    pub fn begin(&self, id: SessionId) -> Result<u64, String> {
        lock(&self.table).begin(id).map_err(|e| e.to_string())
    }

    pub fn end(&self, id: SessionId, seq: u64) {
        lock(&self.table).end(id, seq);
    }

    pub fn map_progress(&self, ours: ProgressToken, id: SessionId, theirs: ProgressToken) {
        lock(&self.progress).insert(ours, (id, theirs));
    }

    pub fn unmap_progress(&self, ours: &ProgressToken) {
        lock(&self.progress).remove(ours);
    }

    pub fn set_level(&self, id: SessionId, level: LogLevel) -> Option<LogLevel> {
        lock(&self.table).set_level(id, level)
    }

    pub fn subscribe(&self, id: SessionId, uri: &str) -> bool {
        lock(&self.table).subscribe(id, uri)
    }

    pub fn unsubscribe(&self, id: SessionId, uri: &str) -> bool {
        lock(&self.table).unsubscribe(id, uri)
    }

    fn deliver(&self, to: &[SessionId], n: &ServerNotification) {
        let ports = lock(&self.ports);
        for id in to {
            if let Some(p) = ports.get(id)
                && p.notes.try_send(Note::Send(n.clone())).is_err()
            {
                tracing::debug!(session = id, instance = %self.label, "notification dropped: the session's queue is full");
            }
        }
    }

    /// Waits (briefly) until the notifications queued for `id` so far have gone out, so a
    /// request's progress reaches the session before its answer does.
    pub async fn flush(&self, id: SessionId) {
        // rmcp hands each notification to a task of its own: let those run first.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let port = lock(&self.ports).get(&id).cloned();
        if let Some(p) = port {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if p.notes.send(Note::Flush(tx)).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx).await;
            }
        }
    }

    fn all(&self) -> Vec<SessionId> {
        lock(&self.table).sessions()
    }
}

/// Converts between rmcp's log level and ours (they share the MCP names).
pub fn level_of(l: LoggingLevel) -> LogLevel {
    serde_json::to_value(l).ok().and_then(|v| v.as_str().and_then(LogLevel::parse)).unwrap_or(LogLevel::Emergency)
}

pub fn logging_level(l: LogLevel) -> LoggingLevel {
    serde_json::from_value(serde_json::Value::String(l.as_str().into())).unwrap_or(LoggingLevel::Info)
}

/// The client capabilities a session declared.
pub fn caps_of(c: &ClientCapabilities) -> Caps {
    Caps { sampling: c.sampling.is_some(), elicitation: c.elicitation.is_some(), roots: c.roots.is_some() }
}

/// What the node declares to a shared child: every client capability, since some
/// session may need each (requests needing one a session lacks are refused per session).
pub fn full_client_info() -> ClientInfo {
    let mut caps = ClientCapabilities::default();
    caps.sampling = Some(SamplingCapability::default());
    caps.elicitation = Some(ElicitationCapability::default());
    let mut roots = RootsCapabilities::default();
    roots.list_changed = Some(true);
    caps.roots = Some(roots);
    let mut info = ClientInfo::new(caps, Implementation::new("craftmesh", env!("CARGO_PKG_VERSION")));
    info.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
    info
}

/// The rmcp client side of a link: what the instance sends lands here.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub router: Arc<Router>,
    pub info: ClientInfo,
}

impl Service<RoleClient> for Upstream {
    async fn handle_request(&self, request: ServerRequest, context: RequestContext<RoleClient>) -> Result<ClientResult, McpError> {
        if let ServerRequest::PingRequest(_) = request {
            return Ok(ClientResult::empty(()));
        }
        let method = match &request {
            ServerRequest::CreateMessageRequest(_) => "sampling/createMessage".to_string(),
            ServerRequest::ListRootsRequest(_) => "roots/list".to_string(),
            ServerRequest::ElicitRequest(_) => "elicitation/create".to_string(),
            ServerRequest::CustomRequest(r) => r.method.clone(),
            _ => "a server request".to_string(),
        };
        let target = {
            let table = lock(&self.router.table);
            if self.router.shared {
                table.route(&method).map_err(|e| e.to_string())
            } else {
                table.sessions().first().copied().ok_or_else(|| "no session".to_string())
            }
        };
        let id = target.map_err(|e| McpError::invalid_request(format!("craftmesh: {e}"), None))?;
        let Some(port) = lock(&self.router.ports).get(&id).cloned() else {
            return Err(McpError::invalid_request("craftmesh: the session that should answer has gone", None));
        };
        let mut opts = PeerRequestOptions::no_options();
        opts.timeout = Some(CLIENT_ANSWER_TIMEOUT);
        let handle = port.peer.send_request_with_option(request, opts).await.map_err(|e| service_error(e, &method))?;
        tokio::select! {
            r = handle.await_response() => r.map_err(|e| service_error(e, &method)),
            () = context.ct.cancelled() => Err(McpError::internal_error("cancelled by the server", None)),
        }
    }

    async fn handle_notification(&self, notification: ServerNotification, _context: NotificationContext<RoleClient>) -> Result<(), McpError> {
        let r = &self.router;
        match notification {
            ServerNotification::ProgressNotification(mut n) => {
                let target = lock(&r.progress).get(&n.params.progress_token).cloned();
                if let Some((id, theirs)) = target {
                    n.params.progress_token = theirs;
                    r.deliver(&[id], &ServerNotification::ProgressNotification(n));
                }
            }
            ServerNotification::LoggingMessageNotification(n) => {
                let to = if r.shared { lock(&r.table).log_targets(level_of(n.params.level)) } else { r.all() };
                r.deliver(&to, &ServerNotification::LoggingMessageNotification(n));
            }
            ServerNotification::ResourceUpdatedNotification(n) => {
                let to = if r.shared { lock(&r.table).subscribers(&n.params.uri) } else { r.all() };
                r.deliver(&to, &ServerNotification::ResourceUpdatedNotification(n));
            }
            // rmcp cancels the handler of a request the instance cancels; the rest of
            // these concern the link itself.
            ServerNotification::CancelledNotification(_)
            | ServerNotification::SubscriptionsAcknowledgedNotification(_)
            | ServerNotification::TaskStatusNotification(_) => {}
            other => {
                let to = r.all();
                r.deliver(&to, &other);
            }
        }
        Ok(())
    }

    fn get_info(&self) -> ClientInfo {
        self.info.clone()
    }
}

/// A service error as the MCP error a session sees.
pub fn service_error(e: ServiceError, what: &str) -> McpError {
    match e {
        ServiceError::McpError(e) => e,
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => {
            McpError::internal_error(format!("craftmesh: the server instance went away during {what}; the request was lost (the session reconnects)"), None)
        }
        ServiceError::Timeout { timeout } => McpError::internal_error(format!("craftmesh: no answer to {what} within {} s", timeout.as_secs()), None),
        other => McpError::internal_error(format!("craftmesh: {what}: {other}"), None),
    }
}

/// A live connection to an instance.
#[derive(Debug)]
pub struct Link {
    pub peer: Peer<RoleClient>,
    pub router: Arc<Router>,
    pub init: InitializeResult,
    /// Cancelled when the connection ends (the child exits, the mesh stream breaks).
    pub closed: CancellationToken,
    /// Stops the connection's rmcp service.
    pub stop: CancellationToken,
    /// Per-request timeout for requests sent through this link.
    pub timeout: Duration,
}

impl Link {
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled() || self.peer.is_transport_closed()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.stop.cancel();
        self.closed.cancel();
    }
}

/// The initialize answer an instance gave, as a session receives it.
pub fn init_of(info: &rmcp::model::ServerPeerInfo) -> InitializeResult {
    let mut r = InitializeResult::new(info.capabilities.clone());
    r.protocol_version = info.protocol_version.clone();
    r.server_info = info.server_info.clone().unwrap_or_else(|| Implementation::new("unknown", "0"));
    r.instructions = info.instructions.clone();
    r
}

/// Starts the rmcp client on `transport` and returns the link once `initialize` is done.
pub async fn connect<T, E, A>(router: Arc<Router>, info: ClientInfo, transport: T, timeout: Duration, request_timeout: Duration) -> Result<Arc<Link>, String>
where
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    let stop = CancellationToken::new();
    let upstream = Upstream { router: router.clone(), info };
    let running = match tokio::time::timeout(timeout, rmcp::service::serve_client_with_ct(upstream, transport, stop.clone())).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("MCP initialize failed: {e}")),
        Err(_) => {
            stop.cancel();
            return Err(format!("MCP initialize did not finish within {} s", timeout.as_secs()));
        }
    };
    let peer = running.peer().clone();
    let Some(info) = peer.peer_info() else { return Err("the server sent no initialize result".into()) };
    let link = Arc::new(Link { peer, router, init: init_of(&info), closed: CancellationToken::new(), stop, timeout: request_timeout });
    let closed = link.closed.clone();
    tokio::spawn(async move {
        let _ = running.waiting().await;
        closed.cancel();
    });
    Ok(link)
}
