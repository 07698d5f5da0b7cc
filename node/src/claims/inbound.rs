//! Serves the claims protocol to other nodes: Raft RPCs go to this node's Raft instance
//! when they carry its cluster id (anything else is refused, so a node never drifts into
//! another cluster), forwarded client ops go to the actor, status answers come from the
//! latest published status. Each stream is served on its own task, one request at a time;
//! streams are capped per peer and in all.

use super::actor::In;
use super::network::BoxStream;
use super::types::Raft;
use super::wire::{self, RaftRpc, Request, Response};
use craftmesh_protocol::claims::cluster::Status;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// Inbound streams served at once.
const MAX_INBOUND: usize = 1024;
/// Inbound streams one peer may hold (Raft replication, votes, forwarded requests).
const MAX_INBOUND_PER_PEER: usize = 64;

/// The Raft instance inbound RPCs may reach: its cluster id and handle.
pub type CurrentRaft = Option<(String, Raft)>;

/// What serving needs.
#[derive(Clone)]
pub struct Inbound {
    pub raft: watch::Receiver<CurrentRaft>,
    pub status: watch::Receiver<Status>,
    pub actor: mpsc::Sender<In>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish()
    }
}

#[derive(Debug, Default)]
struct Live {
    total: usize,
    per_peer: HashMap<String, usize>,
}

/// Accepts streams from `incoming` until it closes, serving each on its own task.
pub async fn run(mut incoming: mpsc::Receiver<(String, BoxStream)>, ctx: Inbound) {
    let live = Arc::new(Mutex::new(Live::default()));
    while let Some((peer, stream)) = incoming.recv().await {
        let admitted = live
            .lock()
            .map(|mut l| {
                let n = l.per_peer.get(&peer).copied().unwrap_or(0);
                if l.total >= MAX_INBOUND || n >= MAX_INBOUND_PER_PEER {
                    return false;
                }
                l.total += 1;
                l.per_peer.insert(peer.clone(), n + 1);
                true
            })
            .unwrap_or(false);
        if !admitted {
            tracing::debug!(%peer, "claims: too many inbound streams; dropping one");
            continue;
        }
        let ctx = ctx.clone();
        let live = live.clone();
        tokio::spawn(async move {
            serve(stream, &peer, &ctx).await;
            if let Ok(mut l) = live.lock() {
                l.total = l.total.saturating_sub(1);
                if let Some(n) = l.per_peer.get_mut(&peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        l.per_peer.remove(&peer);
                    }
                }
            }
        });
    }
}

/// Serves one stream until it closes or carries garbage.
async fn serve(mut stream: BoxStream, peer: &str, ctx: &Inbound) {
    use futures::AsyncWriteExt as _;
    loop {
        let bytes = match crate::mesh::codec::read_chunked(&mut stream, wire::MAX_MESSAGE).await {
            Ok(b) => b,
            Err(_) => return,
        };
        let response = match wire::decode::<Request>(&bytes) {
            Ok(req) => handle(req, &mut stream, ctx).await,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "claims: refused a message");
                Some(Response::Error(e.to_string()))
            }
        };
        // `None`: the peer went away while its request was served; nothing to answer.
        let Some(response) = response else { return };
        let Ok(out) = wire::encode(&response) else { return };
        if crate::mesh::codec::write_chunked(&mut stream, &out).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

async fn handle(req: Request, stream: &mut BoxStream, ctx: &Inbound) -> Option<Response> {
    match req {
        Request::Status => Some(Response::Status(ctx.status.borrow().clone())),
        Request::Raft { cluster, rpc } => {
            let current = ctx.raft.borrow().clone();
            let Some((_, raft)) = current.filter(|(c, _)| *c == cluster) else {
                let mine = ctx.raft.borrow().as_ref().map(|(c, _)| c.clone());
                return Some(Response::WrongCluster { mine });
            };
            Some(match rpc {
                RaftRpc::Append(r) => Response::Append(raft.append_entries(r).await),
                RaftRpc::Vote(r) => Response::Vote(raft.vote(r).await),
                RaftRpc::Snapshot(r) => Response::Snapshot(raft.install_snapshot(r).await),
            })
        }
        Request::Client(op) => {
            let (tx, rx) = oneshot::channel();
            if ctx.actor.send(In::Op { op, reply: tx }).await.is_err() {
                return Some(Response::Error("the node is shutting down".into()));
            }
            // A waiting acquire can take long: if the asker hangs up meanwhile, drop the
            // reply so the leader does not grant to someone who is gone.
            let closed = peer_closed(stream);
            tokio::select! {
                r = rx => Some(match r {
                    Ok(reply) => Response::Client(reply),
                    Err(_) => Response::Error("the node is shutting down".into()),
                }),
                () = closed => None,
            }
        }
    }
}

/// Resolves when the peer closed its side of the stream (or sent more than it should while
/// waiting for an answer, which is the same: it does not wait for this answer).
async fn peer_closed(stream: &mut BoxStream) {
    use futures::AsyncReadExt as _;
    let mut one = [0u8; 1];
    let _ = stream.read(&mut one).await;
}
