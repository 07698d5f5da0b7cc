//! Messages of the claims protocol (`/craftmesh/claims/1`) on the mesh's encrypted libp2p
//! connections: Raft RPCs tagged with the sender's cluster id, requests forwarded to the
//! leader, and the status nodes exchange to form one cluster. A version byte, then bincode;
//! a message travels in the mesh's frames ([`crate::mesh::codec`]), at most
//! [`MAX_MESSAGE`] bytes in all, checked before anything is buffered.

use super::types::{Cm, CmNode, NodeId};
use craftmesh_protocol::claims::cluster::Status;
use craftmesh_protocol::claims::state::KeyView;
use craftmesh_protocol::claims::{Meta, Outcome};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};

/// Version byte of every claims message; others are refused.
pub const VERSION: u8 = 1;
/// Largest claims message (a snapshot chunk with its envelope stays far below it).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Snapshot chunks openraft sends (well below [`MAX_MESSAGE`]).
pub const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

/// A Raft RPC.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRpc {
    Append(AppendEntriesRequest<Cm>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<Cm>),
}

/// An operation a node forwards to the leader for a client of its API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientOp {
    Acquire {
        key: String,
        /// Peer id of the node the client talks to (the holder node).
        node: String,
        session: String,
        ttl_ms: u64,
        limit: u32,
        lock_delay_ms: u64,
        meta: Meta,
        /// Wait up to this long for a slot (0: answer at once).
        wait_ms: u64,
    },
    Renew {
        key: String,
        token: u64,
        ttl_ms: Option<u64>,
        /// The cluster that granted `token`, when the client knows it: tokens are log
        /// indices, so another cluster (after a merge) may hold the key with the same one.
        cluster: Option<String>,
    },
    Release {
        key: String,
        token: u64,
        /// As for [`ClientOp::Renew`].
        cluster: Option<String>,
    },
    /// Every key with its live holders (linearizable: read after a write of the leader's term).
    List,
}

/// The leader's answer to a [`ClientOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The op was applied; `now_ms` is the leader's clock (SM time) when it answered, so
    /// deadlines in the outcome convert to "expires in".
    Applied {
        outcome: Outcome,
        now_ms: u64,
        cluster: String,
        leader: NodeId,
    },
    List {
        keys: Vec<KeyView>,
        now_ms: u64,
        cluster: String,
        leader: NodeId,
    },
    /// Not the leader; ask `leader` (when known).
    NotLeader {
        leader: Option<NodeId>,
        leader_peer: Option<String>,
    },
    /// Could not be done now (no leader, a leader change, a timeout); nothing was granted
    /// unless an earlier attempt of the same session was (acquire is idempotent per session).
    Unavailable {
        reason: String,
    },
}

/// Every request of the protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// A Raft RPC from a node of `cluster`.
    Raft { cluster: String, rpc: RaftRpc },
    /// A client op forwarded to (what the sender believes is) the leader.
    Client(ClientOp),
    /// What is your cluster status?
    Status,
}

/// Every response of the protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The Raft RPC was for another cluster than the one this node is in (or joins).
    WrongCluster {
        mine: Option<String>,
    },
    Client(ClientReply),
    Status(Status),
    /// The request could not be decoded or served.
    Error(String),
}

/// Why bytes were not a claims message. Nothing changes on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unknown claims wire version {0}")]
    UnknownVersion(u8),
    #[error("malformed claims message: {0}")]
    Malformed(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE>()
}

/// Encodes a message: the version byte, then bincode.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let mut out = vec![VERSION];
    let body = bincode::serde::encode_to_vec(msg, config()).map_err(|e| WireError::Malformed(e.to_string()))?;
    out.extend(body);
    if out.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Decodes a message, checking size, version and trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    let (&v, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    if v != VERSION {
        return Err(WireError::UnknownVersion(v));
    }
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(body, config()).map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(msg)
}

/// The membership entry of a node.
pub fn cm_node(peer: &str) -> CmNode {
    CmNode { peer: peer.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_client_op_round_trips_and_bad_versions_or_trailing_bytes_are_refused() {
        let op = Request::Client(ClientOp::Release { key: "svc/zen".into(), token: 42, cluster: Some("c".into()) });
        let bytes = encode(&op).expect("encode");
        let back: Request = decode(&bytes).expect("decode");
        assert!(matches!(back, Request::Client(ClientOp::Release { token: 42, .. })));
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(decode::<Request>(&bad).err(), Some(WireError::UnknownVersion(9)));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(decode::<Request>(&long), Err(WireError::Malformed(_))));
        assert_eq!(decode::<Request>(&[]).err(), Some(WireError::Empty));
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let mut framed = vec![VERSION];
            framed.extend(&bytes);
            let _ = decode::<Request>(&framed);
            let _ = decode::<Response>(&framed);
        }
    }
}
