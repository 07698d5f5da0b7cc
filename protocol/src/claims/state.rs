//! The replicated claims state machine: every replica applies the same committed commands in
//! log order and reaches the same state, byte for byte.
//!
//! Time. Each command carries the proposing leader's clock ([`Command::at_ms`]). The state
//! keeps the Raft term whose leader's clock its times are in (`epoch`) and the latest time
//! seen in that epoch (`now`, never going back). Clocks of two nodes are unrelated, so when
//! the first entry of a new term is applied the state *re-bases*: every lease gets a full
//! TTL from the new leader's clock and every pending lock-delay starts over, like etcd's
//! lease promotion. A lease may so last longer than its TTL across a leader change, never
//! shorter, which is the side a holder's own deadline ([`super::lease`]) relies on.
//!
//! Tokens. The fencing token of a grant is the index of the log entry that granted it, so
//! the tokens of a key strictly increase across releases, expiries, leader changes and
//! restarts without any counter to persist.
//!
//! Expiry. Before executing any op, every holder whose deadline is at or before `now` is
//! expired, through an index ordered by deadline (O(log n) per expiry, nothing scanned).
//! Expiries are reported first in [`Applied::changes`], then what the op did.

use super::{
    Applied, Change, ChangeKind, Command, Holder, MAX_ID, MAX_KEY, MAX_KEYS, MAX_LIMIT, MAX_LOCK_DELAY_MS, MAX_META, MAX_TTL_MS, MIN_TTL_MS, Meta, Op, Outcome,
    Refusal,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Snapshot format version; snapshots starting with another byte are rejected.
pub const SNAPSHOT_VERSION: u8 = 1;
/// Largest snapshot accepted, checked before decoding (bincode also caps what a claimed
/// length may allocate at this).
pub const MAX_SNAPSHOT: usize = 64 * 1024 * 1024;

/// The claims of the whole cluster, as of `last_index`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsState {
    /// Raft term whose leader's clock the times below are in.
    epoch: u64,
    /// Latest leader time applied in this epoch.
    now_ms: u64,
    /// Index of the last entry applied; an entry at or below it is not applied again.
    last_index: u64,
    keys: BTreeMap<String, KeyState>,
    /// (deadline, key, token) of every holder: expiry takes from the front.
    #[serde(skip)]
    deadlines: BTreeSet<(u64, String, u64)>,
    /// (blocked until, key) of every lock-delay still pending, so a key left with neither
    /// holders nor a pending delay is dropped without a scan.
    #[serde(skip)]
    blocks: BTreeSet<(u64, String)>,
}

/// One key with state: it has live holders or a lock-delay still pending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    /// Holders the key may have at once, fixed while it has any.
    pub limit: u32,
    /// Set by the grant that found the key free; applies when a holder vanishes.
    pub lock_delay_ms: u64,
    /// No grant before this (SM time); 0 or in the past when there is no delay.
    pub blocked_until_ms: u64,
    /// Live holders, in grant order.
    pub holders: Vec<Holder>,
}

/// One key as shown to clients: only what is still live at the time asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub key: String,
    pub limit: u32,
    pub holders: Vec<HolderView>,
    /// How long grants of the key are still held back by a lock-delay.
    pub blocked_for_ms: u64,
}

/// A holder with the time left on its lease. (Not flattened: it travels in bincode, which
/// cannot decode flattened structs.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderView {
    pub holder: Holder,
    pub expires_in_ms: u64,
}

/// Why snapshot bytes were not accepted; the state they were meant to replace is untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("empty snapshot")]
    Empty,
    #[error("snapshot of {0} bytes is over the limit of {MAX_SNAPSHOT}")]
    TooLarge(usize),
    #[error("unknown snapshot version {0}")]
    UnknownVersion(u8),
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the snapshot")]
    Trailing(usize),
}

/// An acquire's fields, borrowed from the op.
struct Request<'a> {
    key: &'a str,
    node: &'a str,
    session: &'a str,
    ttl_ms: u64,
    limit: u32,
    lock_delay_ms: u64,
    meta: &'a Meta,
}

impl ClaimsState {
    /// Applies the committed entry `index` of `term`. Deterministic: it reads nothing but
    /// its arguments and the state.
    pub fn apply(&mut self, index: u64, term: u64, cmd: &Command) -> Applied {
        if index <= self.last_index {
            // The adapter never does this; if it did, applying twice would grant twice.
            let reason = format!("entry {index} already applied (last applied {})", self.last_index);
            return Applied { outcome: Outcome::Invalid { reason }, changes: Vec::new() };
        }
        self.last_index = index;
        if term != self.epoch {
            self.rebase(term, cmd.at_ms);
        } else {
            self.now_ms = self.now_ms.max(cmd.at_ms);
        }
        let mut changes = self.expire_due();
        let outcome = match validate(&cmd.op) {
            Err(reason) => Outcome::Invalid { reason },
            Ok(()) => self.execute(index, &cmd.op, &mut changes),
        };
        Applied { outcome, changes }
    }

    /// The Raft term whose leader's clock SM times are in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// SM time: the latest leader time applied in this epoch.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Index of the last entry applied (what the Raft adapter reports as applied).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    pub fn key(&self, key: &str) -> Option<&KeyState> {
        self.keys.get(key)
    }

    /// Every key with state, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &KeyState)> {
        self.keys.iter().map(|(k, s)| (k.as_str(), s))
    }

    /// Keys with state (live holders or a pending lock-delay); at most [`MAX_KEYS`].
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The earliest SM time at which a tick would change something (a lease ends or a
    /// lock-delay lifts): the leader proposes a [`Op::Tick`] then.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let lease = self.deadlines.first().map(|d| d.0);
        let block = self.blocks.first().map(|b| b.0);
        lease.into_iter().chain(block).min()
    }

    /// Every claim held through `node` (what a node shows as its own, or what a node-gone
    /// would consider).
    pub fn holders_of_node(&self, node: &str) -> Vec<(String, Holder)> {
        self.keys.iter().flat_map(|(k, s)| s.holders.iter().filter(|h| h.node == node).map(move |h| (k.clone(), h.clone()))).collect()
    }

    /// The claims as of SM time `now_ms`: a holder whose deadline has passed is never shown,
    /// even before the tick that expires it is applied.
    pub fn view(&self, now_ms: u64) -> Vec<KeyView> {
        self.keys
            .iter()
            .filter_map(|(key, s)| {
                let holders: Vec<HolderView> = s
                    .holders
                    .iter()
                    .filter(|h| h.deadline_ms > now_ms)
                    .map(|h| HolderView { holder: h.clone(), expires_in_ms: h.deadline_ms - now_ms })
                    .collect();
                let blocked_for_ms = s.blocked_until_ms.saturating_sub(now_ms);
                (!holders.is_empty() || blocked_for_ms > 0).then(|| KeyView { key: key.clone(), limit: s.limit, holders, blocked_for_ms })
            })
            .collect()
    }

    /// The snapshot: a version byte, then bincode 2 of the state (the indices are rebuilt on
    /// decode, not stored).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        // Encoding our own types into a Vec has no limit here and cannot fail; were it to,
        // the lone version byte fails the decode visibly instead of passing for a state.
        if let Ok(body) = bincode::serde::encode_to_vec(self, bincode::config::standard()) {
            out.extend(body);
        }
        out
    }

    /// Decodes a snapshot, checking size and version first; never panics on any bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<ClaimsState, SnapshotError> {
        if bytes.len() > MAX_SNAPSHOT {
            return Err(SnapshotError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes.split_first().ok_or(SnapshotError::Empty)?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let config = bincode::config::standard().with_limit::<MAX_SNAPSHOT>();
        let (mut state, used): (ClaimsState, usize) = bincode::serde::decode_from_slice(body, config).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(SnapshotError::Trailing(body.len() - used));
        }
        state.rebuild_index();
        Ok(state)
    }

    /// A new leader's clock takes over: every lease gets a full TTL from `at`, a pending
    /// lock-delay starts over from `at`, and a delay that had already lifted is cleared (its
    /// old-epoch time could otherwise look pending on a clock that is behind).
    fn rebase(&mut self, term: u64, at: u64) {
        let old_now = self.now_ms;
        for s in self.keys.values_mut() {
            for h in &mut s.holders {
                h.deadline_ms = at.saturating_add(h.ttl_ms);
            }
            s.blocked_until_ms = if s.blocked_until_ms > old_now { at.saturating_add(s.lock_delay_ms) } else { 0 };
        }
        self.epoch = term;
        self.now_ms = at;
        self.keys.retain(|_, s| !s.holders.is_empty() || s.blocked_until_ms > at);
        self.rebuild_index();
    }

    fn rebuild_index(&mut self) {
        self.deadlines = self.keys.iter().flat_map(|(k, s)| s.holders.iter().map(move |h| (h.deadline_ms, k.clone(), h.token))).collect();
        self.blocks = self.keys.iter().filter(|(_, s)| s.blocked_until_ms > self.now_ms).map(|(k, s)| (s.blocked_until_ms, k.clone())).collect();
    }

    /// Expires every holder due at `now` and drops keys whose lock-delay has lifted.
    fn expire_due(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        while self.deadlines.first().is_some_and(|d| d.0 <= self.now_ms) {
            let Some((deadline, key, token)) = self.deadlines.pop_first() else { break };
            let Some(holder) = self.take_holder(&key, token) else { continue };
            let delay = self.keys.get(&key).map_or(0, |s| s.lock_delay_ms);
            if delay > 0 {
                self.block(&key, deadline.saturating_add(delay));
            }
            self.drop_if_free(&key);
            changes.push(Change { kind: ChangeKind::Expired, key, holder });
        }
        while self.blocks.first().is_some_and(|b| b.0 <= self.now_ms) {
            if let Some((_, key)) = self.blocks.pop_first() {
                self.drop_if_free(&key);
            }
        }
        changes
    }

    fn execute(&mut self, index: u64, op: &Op, changes: &mut Vec<Change>) -> Outcome {
        match op {
            Op::Acquire { key, node, session, ttl_ms, limit, lock_delay_ms, meta } => {
                let req = Request { key, node, session, ttl_ms: *ttl_ms, limit: *limit, lock_delay_ms: *lock_delay_ms, meta };
                self.acquire(index, req, changes)
            }
            Op::Renew { key, token, ttl_ms } => self.renew(key, *token, *ttl_ms, changes),
            Op::Release { key, token } => match self.take_holder(key, *token) {
                Some(holder) => {
                    self.drop_if_free(key);
                    changes.push(Change { kind: ChangeKind::Released, key: key.clone(), holder: holder.clone() });
                    Outcome::Released { key: key.clone(), holder }
                }
                None => Outcome::NotHeld { key: key.clone(), token: *token },
            },
            Op::Tick => Outcome::Done,
            Op::NodeGone { node, upto } => {
                self.node_gone(node, *upto, changes);
                Outcome::Done
            }
        }
    }

    fn acquire(&mut self, index: u64, req: Request<'_>, changes: &mut Vec<Change>) -> Outcome {
        let now = self.now_ms;
        let key = req.key.to_owned();
        if let Some(s) = self.keys.get_mut(req.key) {
            // The same session asking again (a retry after a lost reply): same grant, renewed.
            if let Some(h) = s.holders.iter_mut().find(|h| h.node == req.node && h.session == req.session) {
                self.deadlines.remove(&(h.deadline_ms, key.clone(), h.token));
                h.deadline_ms = now.saturating_add(req.ttl_ms);
                h.ttl_ms = req.ttl_ms;
                h.meta = req.meta.clone();
                self.deadlines.insert((h.deadline_ms, key.clone(), h.token));
                let holder = h.clone();
                changes.push(Change { kind: ChangeKind::Renewed, key: key.clone(), holder: holder.clone() });
                return Outcome::Granted { key, holder, holders: s.holders.clone() };
            }
            let refusal = if !s.holders.is_empty() && s.limit != req.limit {
                Some(Refusal::LimitMismatch { limit: s.limit })
            } else if now < s.blocked_until_ms {
                Some(Refusal::LockDelay { until_ms: s.blocked_until_ms })
            } else if s.holders.len() >= req.limit as usize {
                Some(Refusal::Held)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                return Outcome::Refused { key, refusal, holders: s.holders.clone() };
            }
        } else if self.keys.len() >= MAX_KEYS {
            return Outcome::Refused { key, refusal: Refusal::TooManyKeys, holders: Vec::new() };
        }
        let holder = Holder {
            node: req.node.to_owned(),
            session: req.session.to_owned(),
            token: index,
            ttl_ms: req.ttl_ms,
            deadline_ms: now.saturating_add(req.ttl_ms),
            granted_at_ms: now,
            meta: req.meta.clone(),
        };
        let s = self.keys.entry(key.clone()).or_insert_with(|| KeyState {
            limit: req.limit,
            lock_delay_ms: req.lock_delay_ms,
            blocked_until_ms: 0,
            holders: Vec::new(),
        });
        // Free (no holders) or same limit: the grant sets the key's terms.
        s.limit = req.limit;
        s.lock_delay_ms = req.lock_delay_ms;
        s.holders.push(holder.clone());
        self.deadlines.insert((holder.deadline_ms, key.clone(), holder.token));
        changes.push(Change { kind: ChangeKind::Granted, key: key.clone(), holder: holder.clone() });
        Outcome::Granted { key, holder, holders: s.holders.clone() }
    }

    fn renew(&mut self, key: &str, token: u64, ttl_ms: Option<u64>, changes: &mut Vec<Change>) -> Outcome {
        let now = self.now_ms;
        let Some(h) = self.keys.get_mut(key).and_then(|s| s.holders.iter_mut().find(|h| h.token == token)) else {
            return Outcome::NotHeld { key: key.to_owned(), token };
        };
        self.deadlines.remove(&(h.deadline_ms, key.to_owned(), token));
        if let Some(ttl) = ttl_ms {
            h.ttl_ms = ttl;
        }
        h.deadline_ms = now.saturating_add(h.ttl_ms);
        self.deadlines.insert((h.deadline_ms, key.to_owned(), token));
        let holder = h.clone();
        changes.push(Change { kind: ChangeKind::Renewed, key: key.to_owned(), holder: holder.clone() });
        Outcome::Renewed { key: key.to_owned(), holder }
    }

    /// Early hand-off: what a bound holder protected stopped with its node, so its slot
    /// frees now (after the key's lock-delay) instead of at the end of its lease. Only
    /// grants up to `upto` (known when the crash was seen) go: a later one may be the
    /// node's next run's.
    fn node_gone(&mut self, node: &str, upto: u64, changes: &mut Vec<Change>) {
        let gone: Vec<(String, u64)> = self
            .keys
            .iter()
            .flat_map(|(k, s)| s.holders.iter().filter(|h| h.node == node && h.meta.bound_to_node && h.token <= upto).map(move |h| (k.clone(), h.token)))
            .collect();
        for (key, token) in gone {
            let Some(holder) = self.take_holder(&key, token) else { continue };
            let delay = self.keys.get(&key).map_or(0, |s| s.lock_delay_ms);
            if delay > 0 {
                self.block(&key, self.now_ms.saturating_add(delay));
            }
            self.drop_if_free(&key);
            changes.push(Change { kind: ChangeKind::NodeGone, key, holder });
        }
    }

    /// Removes the holder with `token` from `key` and from the deadline index.
    fn take_holder(&mut self, key: &str, token: u64) -> Option<Holder> {
        let s = self.keys.get_mut(key)?;
        let at = s.holders.iter().position(|h| h.token == token)?;
        let holder = s.holders.remove(at);
        self.deadlines.remove(&(holder.deadline_ms, key.to_owned(), token));
        Some(holder)
    }

    /// Holds grants of `key` back until `until` (never shortening a delay already set).
    fn block(&mut self, key: &str, until: u64) {
        let Some(s) = self.keys.get_mut(key) else { return };
        if until <= s.blocked_until_ms {
            return;
        }
        self.blocks.remove(&(s.blocked_until_ms, key.to_owned()));
        s.blocked_until_ms = until;
        if until > self.now_ms {
            self.blocks.insert((until, key.to_owned()));
        }
    }

    /// Drops `key` when nothing about it is left: no holders, no pending lock-delay.
    fn drop_if_free(&mut self, key: &str) {
        if let Some(s) = self.keys.get(key)
            && s.holders.is_empty()
            && s.blocked_until_ms <= self.now_ms
        {
            self.blocks.remove(&(s.blocked_until_ms, key.to_owned()));
            self.keys.remove(key);
        }
    }
}

/// Checks an op against the bounds in [`super`]; the error names the field.
fn validate(op: &Op) -> Result<(), String> {
    match op {
        Op::Acquire { key, node, session, ttl_ms, limit, lock_delay_ms, meta } => {
            check_key(key)?;
            check_id("node", node)?;
            check_id("session", session)?;
            check_ttl(*ttl_ms)?;
            if !(1..=MAX_LIMIT).contains(limit) {
                return Err(format!("limit: {limit} is outside 1..={MAX_LIMIT}"));
            }
            if *lock_delay_ms > MAX_LOCK_DELAY_MS {
                return Err(format!("lock_delay_ms: {lock_delay_ms} is over {MAX_LOCK_DELAY_MS}"));
            }
            for (field, value) in [("meta.instance", &meta.instance), ("meta.config_hash", &meta.config_hash)] {
                if let Some(v) = value
                    && v.len() > MAX_META
                {
                    return Err(format!("{field}: {} bytes, over {MAX_META}", v.len()));
                }
            }
            Ok(())
        }
        Op::Renew { key, ttl_ms, .. } => {
            check_key(key)?;
            ttl_ms.map_or(Ok(()), check_ttl)
        }
        Op::Release { key, .. } => check_key(key),
        Op::Tick => Ok(()),
        Op::NodeGone { node, .. } => check_id("node", node),
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(format!("key: {} bytes, must be 1..={MAX_KEY}", key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err("key: contains a control character".into());
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(format!("{field}: {} bytes, must be 1..={MAX_ID}", id.len()));
    }
    Ok(())
}

fn check_ttl(ttl_ms: u64) -> Result<(), String> {
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(format!("ttl_ms: {ttl_ms} is outside {MIN_TTL_MS}..={MAX_TTL_MS}"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
