//! The openraft type configuration of the claims log, node ids derived from peer ids, and
//! the async runtime openraft runs on (tokio, with randomness a simulation can seed).

use craftmesh_protocol::claims::{Command, Outcome};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

/// A Raft node id: the first 8 bytes (big-endian) of SHA-256 over the peer id's bytes, so
/// every node derives every other node's id from the peer id alone.
pub type NodeId = u64;

/// Derives the Raft node id of a peer id.
pub fn node_id(peer: &libp2p_identity::PeerId) -> NodeId {
    let digest = sha2::Sha256::digest(peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Derives the node id of a base58 peer id; `None` when it is not one.
pub fn node_id_of(peer: &str) -> Option<NodeId> {
    peer.parse::<libp2p_identity::PeerId>().ok().map(|p| node_id(&p))
}

/// What the Raft membership keeps about a node: its peer id, to reach it on the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmNode {
    /// Base58 libp2p peer id.
    pub peer: String,
}

impl std::fmt::Display for CmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.peer)
    }
}

openraft::declare_raft_types!(
    /// The claims log: entries carry [`Command`]s, applying one yields an [`Outcome`].
    pub Cm:
        D = Command,
        R = Outcome,
        NodeId = NodeId,
        Node = CmNode,
        Entry = openraft::Entry<Cm>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = CmRuntime,
);

pub type Raft = openraft::Raft<Cm>;
pub type Entry = openraft::Entry<Cm>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, CmNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, CmNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, CmNode>;
pub type Snapshot = openraft::Snapshot<Cm>;

thread_local! {
    /// The randomness openraft draws (election timeouts) on this thread.
    static RNG: RefCell<rand08::rngs::StdRng> = RefCell::new(<rand08::rngs::StdRng as rand08::SeedableRng>::from_entropy());
}

/// Makes openraft's randomness on this thread a function of `seed` (the simulation runs
/// every node on one thread, so one seed fixes every election timeout).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = <rand08::rngs::StdRng as rand08::SeedableRng>::seed_from_u64(seed));
}

/// openraft's randomness: the thread's [`RNG`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CmRng;

impl rand08::RngCore for CmRng {
    fn next_u32(&mut self) -> u32 {
        RNG.with(|r| r.borrow_mut().next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        RNG.with(|r| r.borrow_mut().next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RNG.with(|r| r.borrow_mut().fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        RNG.with(|r| r.borrow_mut().try_fill_bytes(dest))
    }
}

/// tokio, as openraft's `TokioRuntime`, except that randomness comes from [`CmRng`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CmRuntime;

impl openraft::AsyncRuntime for CmRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = tokio::time::Instant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + openraft::OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = CmRng;
    type OneshotSender<T: openraft::OptionalSend> = openraft::async_runtime::TokioOneShotSender<T>;
    type OneshotReceiver<T: openraft::OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + openraft::OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + openraft::OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        CmRng
    }

    fn oneshot<T: openraft::OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (openraft::async_runtime::TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand08::Rng as _;

    #[test]
    fn node_ids_are_a_function_of_the_peer_id() {
        let a = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id();
        let b = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id();
        assert_eq!(node_id(&a), node_id(&a));
        assert_ne!(node_id(&a), node_id(&b));
        assert_eq!(node_id_of(&a.to_base58()), Some(node_id(&a)));
        assert_eq!(node_id_of("not a peer id"), None);
    }

    #[test]
    fn a_seeded_thread_draws_the_same_numbers_again() {
        seed_thread_rng(7);
        let first: Vec<u32> = (0..4).map(|_| CmRng.gen_range(0..1000)).collect();
        seed_thread_rng(7);
        let again: Vec<u32> = (0..4).map(|_| CmRng.gen_range(0..1000)).collect();
        assert_eq!(first, again);
    }
}
