//! Raft RPCs and forwarded requests on the mesh: one standing stream per Raft target (a
//! replication stream sends one RPC at a time, so one stream serves it without a
//! negotiation per RPC), a small pool of streams per peer for forwarded requests, and a
//! deadline on every wait: openraft's `RPCOption::hard_ttl` for Raft RPCs, the caller's for
//! the rest.
//!
//! The bytes go through a [`Transport`]: libp2p streams on the mesh's connections in the
//! node ([`super::mesh_transport`]), in-memory pipes with seeded faults in the simulation.

use super::types::{Cm, CmNode, NodeId};
use super::wire::{self, RaftRpc, Request, Response};
use futures::future::BoxFuture;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A byte stream to a peer.
pub trait Stream: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static {}
impl<T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Opens streams of the claims protocol to peers (base58 peer ids).
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    fn open(&self, peer: &str) -> BoxFuture<'static, io::Result<BoxStream>>;
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// How long opening a stream may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle streams kept per peer for forwarded requests.
const POOL_IDLE_PER_PEER: usize = 8;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No stream could be opened (the peer is not connected, or refused the protocol).
    #[error("cannot reach {peer}: {reason}")]
    Unreachable { peer: String, reason: String },
    /// The response did not come within the deadline.
    #[error("no answer from {peer} within {after:?}")]
    Timeout { peer: String, after: Duration },
    /// The stream broke or carried something that is not a claims message.
    #[error("stream to {peer} failed: {reason}")]
    Broken { peer: String, reason: String },
}

/// Writes one request and reads its response on `stream`, all within `deadline`.
async fn exchange(stream: &mut BoxStream, req: &Request, max_response: usize) -> io::Result<Response> {
    use futures::AsyncWriteExt as _;
    let bytes = wire::encode(req).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    crate::mesh::codec::write_chunked(stream, &bytes).await?;
    stream.flush().await?;
    let back = crate::mesh::codec::read_chunked(stream, max_response).await?;
    wire::decode(&back).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One standing stream to one peer, opened on first use and again after any failure.
/// (In a mutex only to be `Sync`, as openraft's network clients must be; `&mut self`
/// access never locks.)
#[derive(Default)]
pub struct Channel {
    stream: Mutex<Option<BoxStream>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").finish()
    }
}

impl Channel {
    /// Sends `req` to `peer` and waits for the response, at most `timeout` in all
    /// (opening the stream included). Any failure drops the stream.
    pub async fn call(&mut self, transport: &dyn Transport, peer: &str, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        let start = tokio::time::Instant::now();
        let slot = self.stream.get_mut().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let open = tokio::time::timeout(timeout.min(OPEN_TIMEOUT), transport.open(peer)).await;
            match open {
                Ok(Ok(s)) => *slot = Some(s),
                Ok(Err(e)) => return Err(CallError::Unreachable { peer: peer.to_string(), reason: e.to_string() }),
                Err(_) => return Err(CallError::Unreachable { peer: peer.to_string(), reason: "opening a stream timed out".into() }),
            }
        }
        let Some(stream) = slot.as_mut() else {
            return Err(CallError::Unreachable { peer: peer.to_string(), reason: "no stream".into() });
        };
        let left = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, exchange(stream, req, wire::MAX_MESSAGE)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                *slot = None;
                Err(CallError::Broken { peer: peer.to_string(), reason: e.to_string() })
            }
            Err(_) => {
                // The response may still come on this stream: it cannot be reused.
                *slot = None;
                Err(CallError::Timeout { peer: peer.to_string(), after: timeout })
            }
        }
    }
}

/// Idle streams per peer for forwarded requests and status queries: a call takes one (or
/// opens one), and gives it back when it succeeded.
#[derive(Debug, Clone)]
pub struct Pool {
    transport: SharedTransport,
    idle: Arc<Mutex<HashMap<String, Vec<Channel>>>>,
}

impl Pool {
    pub fn new(transport: SharedTransport) -> Pool {
        Pool { transport, idle: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn transport(&self) -> &SharedTransport {
        &self.transport
    }

    /// Sends `req` to `peer` on an idle stream (or a new one) within `timeout`.
    pub async fn call(&self, peer: &str, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        let mut ch = self.idle.lock().ok().and_then(|mut m| m.get_mut(peer).and_then(|v| v.pop())).unwrap_or_default();
        let r = ch.call(self.transport.as_ref(), peer, req, timeout).await;
        if r.is_ok()
            && let Ok(mut m) = self.idle.lock()
        {
            let list = m.entry(peer.to_string()).or_default();
            if list.len() < POOL_IDLE_PER_PEER {
                list.push(ch);
            }
        }
        r
    }

    /// Drops the idle streams of peers not in `keep` (gone from the mesh).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.idle.lock() {
            m.retain(|p, _| keep(p));
        }
    }
}

/// openraft's network factory: a [`RaftClient`] per target, tagged with our cluster id.
#[derive(Debug, Clone)]
pub struct Network {
    pub transport: SharedTransport,
    /// The cluster this node's Raft instance belongs to (or joins).
    pub cluster: String,
    pub me: NodeId,
}

impl RaftNetworkFactory<Cm> for Network {
    type Network = RaftClient;

    async fn new_client(&mut self, target: NodeId, node: &CmNode) -> RaftClient {
        RaftClient {
            transport: self.transport.clone(),
            cluster: self.cluster.clone(),
            me: self.me,
            target,
            peer: node.peer.clone(),
            channel: Channel::default(),
        }
    }
}

/// The Raft RPC client of one target: one standing stream.
pub struct RaftClient {
    transport: SharedTransport,
    cluster: String,
    me: NodeId,
    target: NodeId,
    peer: String,
    channel: Channel,
}

impl std::fmt::Debug for RaftClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftClient").field("target", &self.target).field("peer", &self.peer).finish()
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, CmNode, RaftError<NodeId, E>>;

/// A plain error carrying a message, for openraft's `AnyError` wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

impl RaftClient {
    async fn rpc<E: std::error::Error>(&mut self, rpc: RaftRpc, kind: RPCTypes, option: &RPCOption) -> Result<Response, RpcErr<E>> {
        let req = Request::Raft { cluster: self.cluster.clone(), rpc };
        let ttl = option.hard_ttl();
        match self.channel.call(self.transport.as_ref(), &self.peer, &req, ttl).await {
            Ok(Response::WrongCluster { mine }) => {
                let reason = match mine {
                    Some(c) => format!("{} is in cluster {c}, not {}", self.peer, self.cluster),
                    None => format!("{} is in no cluster", self.peer),
                };
                Err(RPCError::Unreachable(Unreachable::new(&Msg(reason))))
            }
            Ok(Response::Error(e)) => Err(RPCError::Network(NetworkError::new(&Msg(e)))),
            Ok(other) => Ok(other),
            Err(CallError::Timeout { .. }) => Err(RPCError::Timeout(Timeout { action: kind, id: self.me, target: self.target, timeout: ttl })),
            Err(e @ CallError::Unreachable { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e @ CallError::Broken { .. }) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, what: &str) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&Msg(format!("unexpected answer to {what} from {}", self.peer))))
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<NodeId, E>) -> RpcErr<E> {
        RPCError::RemoteError(RemoteError::new_with_node(self.target, CmNode { peer: self.peer.clone() }, e))
    }
}

impl RaftNetwork<Cm> for RaftClient {
    async fn append_entries(&mut self, rpc: AppendEntriesRequest<Cm>, option: RPCOption) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self.rpc(RaftRpc::Append(rpc), RPCTypes::AppendEntries, &option).await? {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected("append-entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Cm>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.rpc(RaftRpc::Snapshot(rpc), RPCTypes::InstallSnapshot, &option).await? {
            Response::Snapshot(Ok(r)) => Ok(r),
            Response::Snapshot(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected("install-snapshot")),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.rpc(RaftRpc::Vote(rpc), RPCTypes::Vote, &option).await? {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(self.remote(e)),
            _ => Err(self.unexpected("vote")),
        }
    }
}
