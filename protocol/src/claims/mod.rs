//! Claims: leases with fencing tokens, decided by a replicated log (openraft in the node).
//!
//! Everything here is pure: the node's Raft adapter feeds committed [`Command`]s to
//! [`state::ClaimsState::apply`] in log order, and every replica reaches the same state.
//! Times are milliseconds on the *leader's* CLOCK_BOOTTIME, stamped into each command by
//! the leader that proposed it ([`Command::at_ms`]); see `state` for how a new leader's
//! clock takes over (every lease gets a full TTL again).
//!
//! - [`state`]: the replicated state machine (keys, holders, tokens, counted keys,
//!   lock-delay, expiry).
//! - [`lease`]: the holder's own deadline, which stops it before anyone else can be granted.
//! - [`cluster`]: zero-configuration cluster formation, voters and merges.
//! - [`failover`]: when a follower stands for election because its leader is proven crashed.

pub mod cluster;
pub mod failover;
pub mod lease;
pub mod state;

use serde::{Deserialize, Serialize};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest node id or session id, in bytes.
pub const MAX_ID: usize = 128;
/// Longest metadata string, in bytes.
pub const MAX_META: usize = 1024;
/// Largest `limit` of a counted key.
pub const MAX_LIMIT: u32 = 1024;
/// Shortest and longest lease.
pub const MIN_TTL_MS: u64 = 100;
pub const MAX_TTL_MS: u64 = 3_600_000;
/// Longest lock-delay.
pub const MAX_LOCK_DELAY_MS: u64 = 600_000;
/// Most keys with state at once.
pub const MAX_KEYS: usize = 10_000;

/// What a claim protects, carried with the grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Where the protected instance answers (a URL), when there is one.
    pub instance: Option<String>,
    /// Hash of the configuration the instance runs with.
    pub config_hash: Option<String>,
    /// What the claim protects stops when the holder node stops (a child that dies with the
    /// node, or the child of `claim run`, which kills it as soon as its node stops
    /// answering). Only such claims are handed on at once when the holder node is proven
    /// crashed ([`Op::NodeGone`]); the others wait for their lease.
    pub bound_to_node: bool,
}

/// One holder of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Peer id of the node the holder acquired through.
    pub node: String,
    /// The holder's session (chosen by the client; one process, one session).
    pub session: String,
    /// Fencing token: the log index of the grant. Strictly greater than every earlier
    /// token of the key.
    pub token: u64,
    pub ttl_ms: u64,
    /// Lease deadline, in the SM's time (the leader's clock of the current epoch).
    pub deadline_ms: u64,
    /// When it was granted (SM time of the epoch it was granted in).
    pub granted_at_ms: u64,
    pub meta: Meta,
}

/// One operation; each log entry carries exactly one (so tokens are log indices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Grant `key` to (node, session) if a slot is free: refused otherwise.
    Acquire {
        key: String,
        node: String,
        session: String,
        ttl_ms: u64,
        /// Holders the key may have at once (1: a lock).
        limit: u32,
        /// After a holder of this key vanishes (expiry, crashed node), no grant for this long.
        lock_delay_ms: u64,
        meta: Meta,
    },
    /// Extend the lease of the holder with `token`; `ttl_ms` replaces its TTL when given.
    Renew { key: String, token: u64, ttl_ms: Option<u64> },
    /// Give up the grant with `token` (no lock-delay follows an explicit release).
    Release { key: String, token: u64 },
    /// Expire what is due. A new leader proposes one first, which re-bases the leases.
    Tick,
    /// `node` was proven crashed (connection reset, then a refused redial): release its
    /// holders whose [`Meta::bound_to_node`] is set and whose token is at most `upto`, the
    /// last entry the proposer had applied when it saw the crash. A later grant may belong
    /// to the node's next run, restarted meanwhile without the proposer's view showing it
    /// yet (a leader elected before it reconnected to the node): it is left to its lease.
    NodeGone { node: String, upto: u64 },
}

/// A log entry's payload: an op and the leader's clock when it proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The proposing leader's CLOCK_BOOTTIME, milliseconds.
    pub at_ms: u64,
    pub op: Op,
}

/// Why an acquire was refused.
/// (Externally tagged: it travels in bincode, which cannot decode internally tagged enums.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Every slot is taken (the holders are in [`Outcome::Refused`]).
    Held,
    /// A holder vanished recently; grants resume at `until_ms` (SM time).
    LockDelay { until_ms: u64 },
    /// The key is held with another limit.
    LimitMismatch { limit: u32 },
    /// The state holds [`MAX_KEYS`] keys already.
    TooManyKeys,
}

/// The result of applying one command (what the proposer gets back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Granted (or re-granted to the same session, with its token). `holders` are all
    /// holders after the grant, this one included.
    Granted {
        key: String,
        holder: Holder,
        holders: Vec<Holder>,
    },
    Refused {
        key: String,
        refusal: Refusal,
        holders: Vec<Holder>,
    },
    Renewed {
        key: String,
        holder: Holder,
    },
    Released {
        key: String,
        holder: Holder,
    },
    /// Renew or release of a token that is not a live holder of the key (expired, released,
    /// or never granted).
    NotHeld {
        key: String,
        token: u64,
    },
    /// A tick or node-gone was applied (what it removed is in [`Applied::changes`]).
    Done,
    /// The op broke a bound (key too long, TTL out of range...); nothing changed.
    Invalid {
        reason: String,
    },
}

/// What happened to a holder while applying a command; the node turns these into events
/// and wakes waiters when a slot frees up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Granted,
    Renewed,
    Released,
    Expired,
    /// Released because its node was proven crashed (early hand-off).
    NodeGone,
}

/// One change of one holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    pub key: String,
    pub holder: Holder,
}

/// Everything one `apply` produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// In order: expiries found due first, then what the op itself did.
    pub changes: Vec<Change>,
}
