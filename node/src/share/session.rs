//! One client session (a `/mcp/NAME` HTTP session, an `mcp-proxy`, or a session another
//! node opened over the mesh), as an rmcp server: it answers `initialize` from the
//! instance's cached answer and forwards everything else to the instance's link.
//!
//! A *following* session (local clients) survives the instance: when the link breaks,
//! requests in flight get an MCP error, and the session connects again through the
//! [`Connector`] (which finds or deploys the next instance) and replays its log level and
//! subscriptions, so the client keeps its session. A *fixed* session (opened by another
//! node over the mesh) ends with its instance, and that node follows.

// MCP's logging, resource subscriptions and `ClientInfo` are marked deprecated by rmcp for the
// 2026-07-28 protocol; every client in use today speaks the versions that have them.
#![allow(deprecated)]

use super::link::{Link, caps_of, lock, logging_level, service_error};
use craftmesh_protocol::share::{LogLevel, SessionId};
use futures::future::BoxFuture;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CancelledNotification, CancelledNotificationParam, ClientInfo, ClientNotification, ClientRequest,
    CompleteRequest, CompleteRequestParams, CompleteResult, CustomRequest, CustomResult, GetPromptRequest, GetPromptRequestParams, GetPromptResponse,
    InitializeRequestParams, InitializeResult, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse, RootsListChangedNotification, ServerInfo, ServerResult, SetLevelRequest,
    SetLevelRequestParams, SubscribeRequest, SubscribeRequestParams, UnsubscribeRequest, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, Peer, PeerRequestOptions, RequestContext, RoleServer, ServiceError};
use rmcp::{ErrorData as McpError, ServerHandler};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Finds (or deploys) the instance of a server and connects a session to it.
pub trait Connector: Send + Sync + 'static {
    /// A link for a session of `server` that introduced itself with `client`.
    fn connect(&self, server: String, client: ClientInfo) -> BoxFuture<'static, Result<Arc<Link>, String>>;
    /// A session opened (+1) or closed (-1).
    fn count(&self, _server: &str, _delta: i64) {}
}

/// How long a session waits for an instance (a cold deploy included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
enum Source {
    Fixed(Arc<Link>),
    Follow,
}

#[derive(Default)]
struct State {
    client: Option<ClientInfo>,
    peer: Option<Peer<RoleServer>>,
    link: Option<(Arc<Link>, SessionId)>,
    level: Option<LogLevel>,
    subs: BTreeSet<String>,
}

/// An rmcp server for one client session.
pub struct Session {
    server: String,
    source: Source,
    connector: Option<Arc<dyn Connector>>,
    state: Arc<Mutex<State>>,
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// Cancelled when the session ends (stops its link watcher).
    ended: CancellationToken,
    /// The session rmcp runs (not a reconnect helper's copy): only it ends the session.
    owner: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("server", &self.server).field("source", &self.source).finish()
    }
}

impl Session {
    /// A local client's session: follows the server's instance wherever it runs.
    pub fn following(server: String, connector: Arc<dyn Connector>) -> Session {
        connector.count(&server, 1);
        Session {
            server,
            source: Source::Follow,
            connector: Some(connector),
            state: Arc::default(),
            connecting: Arc::default(),
            ended: CancellationToken::new(),
            owner: true,
        }
    }

    /// A session bound to one instance (another node's session over the mesh); `end` is
    /// cancelled when the instance goes, which ends the session.
    pub fn fixed(server: String, link: Arc<Link>, end: CancellationToken) -> Session {
        Session { server, source: Source::Fixed(link), connector: None, state: Arc::default(), connecting: Arc::default(), ended: end, owner: true }
    }

    /// The session's link, connecting (again) when there is none or it broke.
    async fn link(&self) -> Result<(Arc<Link>, SessionId), McpError> {
        if self.ended.is_cancelled() {
            return Err(McpError::internal_error("craftmesh: the session has ended", None));
        }
        if let Some((l, id)) = lock(&self.state).link.clone()
            && !l.is_closed()
        {
            return Ok((l, id));
        }
        let _one = self.connecting.lock().await;
        // The state's guard must be gone before `detach` locks it again: a guard in the
        // `if let` scrutinee would live through the block (a request racing the watch task
        // here froze the node's only runtime thread).
        let current = lock(&self.state).link.clone();
        if let Some((l, id)) = current {
            if !l.is_closed() {
                return Ok((l, id));
            }
            detach(&self.state);
        }
        let (client, peer) = {
            let s = lock(&self.state);
            (s.client.clone(), s.peer.clone())
        };
        let (Some(client), Some(peer)) = (client, peer) else {
            return Err(McpError::invalid_request("craftmesh: the session is not initialized", None));
        };
        let link = match &self.source {
            Source::Fixed(l) if !l.is_closed() => l.clone(),
            Source::Fixed(_) => return Err(McpError::internal_error("craftmesh: the server instance is gone", None)),
            Source::Follow => {
                let Some(c) = &self.connector else { return Err(McpError::internal_error("craftmesh: no connector", None)) };
                match tokio::time::timeout(CONNECT_TIMEOUT, c.connect(self.server.clone(), client.clone())).await {
                    Ok(Ok(l)) => l,
                    Ok(Err(e)) => return Err(McpError::internal_error(format!("craftmesh: no instance of {}: {e}", self.server), None)),
                    Err(_) => {
                        return Err(McpError::internal_error(
                            format!("craftmesh: no instance of {} within {} s", self.server, CONNECT_TIMEOUT.as_secs()),
                            None,
                        ));
                    }
                }
            }
        };
        let id = link.router.attach(peer, caps_of(&client.capabilities)).map_err(|e| McpError::internal_error(format!("craftmesh: {e}"), None))?;
        let (level, subs) = {
            let mut s = lock(&self.state);
            s.link = Some((link.clone(), id));
            (s.level, s.subs.clone())
        };
        // Replay what the session had set on its previous instance.
        if let Some(l) = level {
            let _ = self.set_level(&link, id, l).await;
        }
        for uri in subs {
            let _ = self.subscribe(&link, id, &uri, true).await;
        }
        self.watch(link.clone());
        Ok((link, id))
    }

    /// When the link breaks: a following session reconnects at once (so notifications
    /// resume and the next request finds the new instance); a fixed one ends.
    fn watch(&self, link: Arc<Link>) {
        let ended = self.ended.clone();
        let fixed = matches!(self.source, Source::Fixed(_));
        let state = Arc::downgrade(&self.state);
        let again = self.clone_for_reconnect();
        tokio::spawn(async move {
            tokio::select! {
                biased;
                () = ended.cancelled() => return,
                () = link.closed.cancelled() => {}
            }
            // The session itself ended (its link was closed with it): nothing to follow.
            if ended.is_cancelled() {
                return;
            }
            if fixed {
                ended.cancel();
                return;
            }
            if let Some(st) = state.upgrade() {
                detach(&st);
                tracing::info!(server = %again.server, instance = %link.router.label, "instance lost; the session reconnects");
                if let Err(e) = again.link().await {
                    tracing::warn!(server = %again.server, error = %e.message, "reconnecting a session failed; the next request tries again");
                }
            }
        });
    }

    fn clone_for_reconnect(&self) -> Session {
        Session {
            server: self.server.clone(),
            source: match &self.source {
                Source::Fixed(l) => Source::Fixed(l.clone()),
                Source::Follow => Source::Follow,
            },
            connector: self.connector.clone(),
            state: self.state.clone(),
            connecting: self.connecting.clone(),
            ended: self.ended.clone(),
            owner: false,
        }
    }

    async fn set_level(&self, link: &Link, id: SessionId, level: LogLevel) -> Result<ServerResult, McpError> {
        let send = if link.router.shared { link.router.set_level(id, level) } else { Some(level) };
        if let Some(l) = send {
            let req = ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(logging_level(l))));
            forward_plain(link, req, "logging/setLevel").await?;
        }
        Ok(ServerResult::empty(()))
    }

    async fn subscribe(&self, link: &Link, id: SessionId, uri: &str, on: bool) -> Result<ServerResult, McpError> {
        let send = if !link.router.shared {
            true
        } else if on {
            link.router.subscribe(id, uri)
        } else {
            link.router.unsubscribe(id, uri)
        };
        if send {
            let req = if on {
                ClientRequest::SubscribeRequest(SubscribeRequest::new(SubscribeRequestParams::new(uri)))
            } else {
                ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(UnsubscribeRequestParams::new(uri)))
            };
            return forward_plain(link, req, if on { "resources/subscribe" } else { "resources/unsubscribe" }).await;
        }
        Ok(ServerResult::empty(()))
    }

    /// Sends a session's request to the instance: progress mapped back, cancellation passed
    /// on, bounded by the link's timeout.
    async fn forward(&self, request: ClientRequest, context: RequestContext<RoleServer>) -> Result<ServerResult, McpError> {
        let method = request.method().to_string();
        let (link, id) = self.link().await?;
        let seq = link.router.begin(id).map_err(|e| McpError::internal_error(format!("craftmesh: {e}"), None))?;
        let mut meta = context.meta.clone();
        let theirs = meta.get_progress_token();
        meta.0.remove("progressToken");
        let mut opts = PeerRequestOptions::no_options();
        opts.timeout = Some(link.timeout);
        if !meta.0.is_empty() {
            opts.meta = Some(meta);
        }
        let sent = link.peer.send_request_with_option(request, opts).await;
        let result = match sent {
            Err(e) => Err(e),
            Ok(handle) => {
                let ours = handle.progress_token.clone();
                let (peer, req_id) = (handle.peer.clone(), handle.id.clone());
                if let Some(t) = theirs {
                    link.router.map_progress(ours.clone(), id, t);
                }
                let r = tokio::select! {
                    r = handle.await_response() => r,
                    () = context.ct.cancelled() => Err(ServiceError::Cancelled { reason: Some("cancelled by the client".into()) }),
                    () = link.closed.cancelled() => Err(ServiceError::TransportClosed),
                };
                if r.is_ok() {
                    link.router.flush(id).await;
                }
                link.router.unmap_progress(&ours);
                if let Err(ServiceError::Cancelled { reason }) = &r {
                    // The client cancelled: tell the instance, so it stops the work.
                    let n = CancelledNotification::new(CancelledNotificationParam::new(Some(req_id), reason.clone()));
                    let _ = tokio::time::timeout(Duration::from_secs(5), peer.send_notification(ClientNotification::CancelledNotification(n))).await;
                }
                r
            }
        };
        link.router.end(id, seq);
        if let Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) = &result {
            link.closed.cancel();
        }
        result.map_err(|e| service_error(e, &method))
    }
}

/// Sends a request the node itself makes on a session's behalf.
async fn forward_plain(link: &Link, req: ClientRequest, what: &str) -> Result<ServerResult, McpError> {
    let mut opts = PeerRequestOptions::no_options();
    opts.timeout = Some(link.timeout);
    let h = link.peer.send_request_with_option(req, opts).await.map_err(|e| service_error(e, what))?;
    h.await_response().await.map_err(|e| service_error(e, what))
}

/// Detaches the session from its link, telling a shared child what changes.
fn detach(state: &Mutex<State>) {
    let Some((link, id)) = lock(state).link.take() else { return };
    if !link.router.shared {
        link.close();
        return;
    }
    let closed = link.router.detach(id);
    if link.is_closed() || (closed.unsubscribe.is_empty() && closed.level.is_none()) {
        return;
    }
    tokio::spawn(async move {
        for uri in closed.unsubscribe {
            let req = ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(UnsubscribeRequestParams::new(uri)));
            let _ = forward_plain(&link, req, "resources/unsubscribe").await;
        }
        // No session sets a level any more: leave the child at its last one.
        if let Some(Some(l)) = closed.level {
            let req = ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(logging_level(l))));
            let _ = forward_plain(&link, req, "logging/setLevel").await;
        }
    });
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        self.ended.cancel();
        detach(&self.state);
        if let Some(c) = &self.connector {
            c.count(&self.server, -1);
        }
    }
}

/// A request whose params are optional.
fn opt<M: Default, P>(params: Option<P>) -> rmcp::model::RequestOptionalParam<M, P> {
    rmcp::model::RequestOptionalParam { method: M::default(), params, extensions: Default::default() }
}

/// Forwards one typed request and takes the matching result out of the answer.
macro_rules! fwd {
    ($self:ident, $ctx:ident, $req:expr, $($pat:pat => $out:expr),+ $(,)?) => {{
        let r = $self.forward($req, $ctx).await?;
        match r {
            $($pat => Ok($out),)+
            other => Err(McpError::internal_error(format!("craftmesh: the server answered with an unexpected result: {other:?}"), None)),
        }
    }};
}

impl ServerHandler for Session {
    async fn initialize(&self, request: InitializeRequestParams, context: RequestContext<RoleServer>) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        {
            let mut s = lock(&self.state);
            s.client = Some(request);
            s.peer = Some(context.peer.clone());
        }
        let (link, _) = self.link().await?;
        Ok(link.init.clone())
    }

    async fn ping(&self, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        Ok(())
    }

    async fn set_level(&self, request: SetLevelRequestParams, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        let level = super::link::level_of(request.level);
        lock(&self.state).level = Some(level);
        let (link, id) = self.link().await?;
        self.set_level(&link, id, level).await.map(|_| ())
    }

    #[allow(deprecated)]
    async fn subscribe(&self, request: SubscribeRequestParams, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        lock(&self.state).subs.insert(request.uri.clone());
        let (link, id) = self.link().await?;
        self.subscribe(&link, id, &request.uri, true).await.map(|_| ())
    }

    #[allow(deprecated)]
    async fn unsubscribe(&self, request: UnsubscribeRequestParams, _context: RequestContext<RoleServer>) -> Result<(), McpError> {
        lock(&self.state).subs.remove(&request.uri);
        let (link, id) = self.link().await?;
        self.subscribe(&link, id, &request.uri, false).await.map(|_| ())
    }

    async fn complete(&self, request: CompleteRequestParams, context: RequestContext<RoleServer>) -> Result<CompleteResult, McpError> {
        fwd!(self, context, ClientRequest::CompleteRequest(CompleteRequest::new(request)), ServerResult::CompleteResult(r) => r)
    }

    async fn get_prompt(&self, request: GetPromptRequestParams, context: RequestContext<RoleServer>) -> Result<GetPromptResponse, McpError> {
        fwd!(self, context, ClientRequest::GetPromptRequest(GetPromptRequest::new(request)),
            ServerResult::GetPromptResult(r) => GetPromptResponse::Complete(r),
            ServerResult::InputRequiredResult(r) => GetPromptResponse::InputRequired(r))
    }

    async fn list_prompts(&self, request: Option<PaginatedRequestParams>, context: RequestContext<RoleServer>) -> Result<ListPromptsResult, McpError> {
        fwd!(self, context, ClientRequest::ListPromptsRequest(opt(request)), ServerResult::ListPromptsResult(r) => r)
    }

    async fn list_resources(&self, request: Option<PaginatedRequestParams>, context: RequestContext<RoleServer>) -> Result<ListResourcesResult, McpError> {
        fwd!(self, context, ClientRequest::ListResourcesRequest(opt(request)), ServerResult::ListResourcesResult(r) => r)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        fwd!(self, context, ClientRequest::ListResourceTemplatesRequest(opt(request)),
            ServerResult::ListResourceTemplatesResult(r) => r)
    }

    async fn read_resource(&self, request: ReadResourceRequestParams, context: RequestContext<RoleServer>) -> Result<ReadResourceResponse, McpError> {
        fwd!(self, context, ClientRequest::ReadResourceRequest(ReadResourceRequest::new(request)),
            ServerResult::ReadResourceResult(r) => ReadResourceResponse::Complete(r),
            ServerResult::InputRequiredResult(r) => ReadResourceResponse::InputRequired(r))
    }

    async fn call_tool(&self, request: CallToolRequestParams, context: RequestContext<RoleServer>) -> Result<CallToolResponse, McpError> {
        fwd!(self, context, ClientRequest::CallToolRequest(CallToolRequest::new(request)),
            ServerResult::CallToolResult(r) => CallToolResponse::Complete(r),
            ServerResult::InputRequiredResult(r) => CallToolResponse::InputRequired(r),
            ServerResult::CreateTaskResult(r) => CallToolResponse::Task(r))
    }

    async fn list_tools(&self, request: Option<PaginatedRequestParams>, context: RequestContext<RoleServer>) -> Result<ListToolsResult, McpError> {
        fwd!(self, context, ClientRequest::ListToolsRequest(opt(request)), ServerResult::ListToolsResult(r) => r)
    }

    async fn on_custom_request(&self, request: CustomRequest, context: RequestContext<RoleServer>) -> Result<CustomResult, McpError> {
        let r = self.forward(ClientRequest::CustomRequest(request), context).await?;
        match r {
            ServerResult::CustomResult(c) => Ok(c),
            other => serde_json::to_value(&other).map(CustomResult::new).map_err(|e| McpError::internal_error(e.to_string(), None)),
        }
    }

    async fn on_roots_list_changed(&self, _context: NotificationContext<RoleServer>) {
        let link = lock(&self.state).link.clone();
        if let Some((link, _)) = link {
            let n = ClientNotification::RootsListChangedNotification(RootsListChangedNotification::default());
            let _ = tokio::time::timeout(Duration::from_secs(5), link.peer.send_notification(n)).await;
        }
    }

    async fn on_initialized(&self, _context: NotificationContext<RoleServer>) {}

    fn get_info(&self) -> ServerInfo {
        match lock(&self.state).link.as_ref() {
            Some((l, _)) => l.init.clone(),
            None => ServerInfo::default(),
        }
    }
}
