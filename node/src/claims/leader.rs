//! The leader's work: it stamps each op with its clock and writes it to the log, keeps
//! the queues of waiting acquires (woken by the release or expiry that frees a slot, not
//! by a poll timer), proposes a tick when a lease is due, and hands on the bound claims of
//! a node proven crashed.
//!
//! A new leader first writes a tick: the first entry of its term re-bases every lease to a
//! full TTL on its own clock, so lease times are never compared across two clocks.

use super::actor::{Actor, In};
use super::sm::AppliedEntry;
use super::types::Raft;
use super::wire::{ClientOp, ClientReply};
use craftmesh_protocol::claims::{ChangeKind, Command, Op, Outcome, Refusal};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::sync::oneshot;

/// Waiting acquires in all, and per key.
const MAX_WAITERS: usize = 10_000;
const MAX_WAITERS_PER_KEY: usize = 1_000;
/// How long after a node is proven crashed its bound claims are handed on.
pub const HANDOFF_GRACE_MS: u64 = 300;
/// Longest a write may take before the asker hears "unavailable".
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A waiting acquire.
#[derive(Debug)]
pub struct Waiter {
    id: u64,
    op: ClientOp,
    reply: oneshot::Sender<ClientReply>,
    deadline: tokio::time::Instant,
    in_flight: bool,
    last: Outcome,
}

/// The leader's queues of waiting acquires, by key (first come, first served).
#[derive(Debug, Default)]
pub struct Waiters {
    queues: BTreeMap<String, VecDeque<Waiter>>,
    next_id: u64,
    len: usize,
}

impl Waiters {
    /// Tells every waiter to ask again (the leader changed or left).
    pub fn fail_all(&mut self, reason: &str) {
        for (_, q) in std::mem::take(&mut self.queues) {
            for w in q {
                let _ = w.reply.send(ClientReply::Unavailable { reason: reason.to_string() });
            }
        }
        self.len = 0;
    }

    /// The earliest deadline of a waiter whose wait can end now. One with an attempt in
    /// flight is answered when the attempt finishes (its deadline counts again after), so
    /// it is left out: a passed deadline that `expire_waiters` cannot act on would wake the
    /// actor at once, again and again, until the attempt is done (up to the write timeout).
    pub fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.queues.values().flat_map(|q| q.iter().filter(|w| !w.in_flight).map(|w| w.deadline)).min()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn key_of(op: &ClientOp) -> &str {
    match op {
        ClientOp::Acquire { key, .. } | ClientOp::Renew { key, .. } | ClientOp::Release { key, .. } => key,
        ClientOp::List => "",
    }
}

/// The log op of a client op.
fn log_op(op: &ClientOp) -> Op {
    match op.clone() {
        ClientOp::Acquire { key, node, session, ttl_ms, limit, lock_delay_ms, meta, .. } => {
            Op::Acquire { key, node, session, ttl_ms, limit, lock_delay_ms, meta }
        }
        ClientOp::Renew { key, token, ttl_ms, .. } => Op::Renew { key, token, ttl_ms },
        ClientOp::Release { key, token, .. } => Op::Release { key, token },
        ClientOp::List => Op::Tick,
    }
}

/// A renewal or release of a token granted by another cluster than `mine` (the client
/// said which): not held here, whatever holds the key with the same number. Tokens are
/// log indices, so after a merge the winner may hold the key with the loser's token.
fn foreign_token(op: &ClientOp, mine: &str) -> Option<Outcome> {
    match op {
        ClientOp::Renew { key, token, cluster: Some(c), .. } | ClientOp::Release { key, token, cluster: Some(c) } if c != mine => {
            Some(Outcome::NotHeld { key: key.clone(), token: *token })
        }
        _ => None,
    }
}

/// Writes one command and returns what applying it gave.
pub async fn write(raft: &Raft, cmd: Command) -> Result<Outcome, String> {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(cmd)).await {
        Ok(Ok(r)) => Ok(r.data),
        Ok(Err(e)) => Err(match e.forward_to_leader() {
            Some(_) => "leadership moved".to_string(),
            None => e.to_string(),
        }),
        Err(_) => Err(format!("the write was not committed within {} s", WRITE_TIMEOUT.as_secs())),
    }
}

impl Actor {
    /// Whether this node leads its cluster now.
    pub fn is_leader(&self) -> bool {
        self.file.cluster.is_some()
            && self.metrics.as_ref().is_some_and(|m| {
                let m = m.borrow();
                m.state == openraft::ServerState::Leader && m.current_leader == Some(self.me_id)
            })
    }

    fn not_leader(&self) -> ClientReply {
        let lv = self.leader_view();
        match lv.leader {
            Some(l) if !lv.me => ClientReply::NotLeader { leader: Some(l.node), leader_peer: Some(l.peer) },
            _ => ClientReply::Unavailable { reason: "no leader yet (an election or the cluster forming)".into() },
        }
    }

    fn applied_reply(&self, outcome: Outcome) -> ClientReply {
        ClientReply::Applied {
            outcome,
            now_ms: self.clock.now_ms(),
            cluster: self.instance.as_ref().map(|i| i.cluster.clone()).unwrap_or_default(),
            leader: self.me_id,
        }
    }

    /// An op from this node's API or another node.
    pub fn on_op(&mut self, op: ClientOp, reply: oneshot::Sender<ClientReply>) {
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let Some(inst) = &self.instance else { return };
        if let Some(outcome) = foreign_token(&op, &inst.cluster) {
            let _ = reply.send(self.applied_reply(outcome));
            return;
        }
        let raft = inst.raft.clone();
        let state = inst.state.clone();
        let clock = self.clock.clone();
        let cluster = inst.cluster.clone();
        let me = self.me_id;
        let tx = self.tx.clone();
        // Fair queues: a waiting acquire goes behind those already waiting for its key.
        if let ClientOp::Acquire { wait_ms, key, .. } = &op
            && *wait_ms > 0
            && self.waiters.queues.get(key).is_some_and(|q| !q.is_empty())
        {
            let last = Outcome::Refused { key: key.clone(), refusal: Refusal::Held, holders: Vec::new() };
            self.enqueue(op, reply, last);
            return;
        }
        let cmd = Command { at_ms: clock.now_ms(), op: log_op(&op) };
        tokio::spawn(async move {
            let result = write(&raft, cmd).await;
            let r = match result {
                Ok(outcome) if matches!(op, ClientOp::List) => {
                    let _ = outcome;
                    let now_ms = clock.now_ms();
                    let keys = state.lock().map(|s| s.view(now_ms)).unwrap_or_default();
                    ClientReply::List { keys, now_ms, cluster, leader: me }
                }
                Ok(outcome @ Outcome::Refused { refusal: Refusal::Held | Refusal::LockDelay { .. }, .. }) if matches!(op, ClientOp::Acquire { wait_ms, .. } if wait_ms > 0) =>
                {
                    let _ = tx.send(In::Wait { op, reply, last: outcome }).await;
                    return;
                }
                Ok(outcome) => ClientReply::Applied { outcome, now_ms: clock.now_ms(), cluster, leader: me },
                Err(reason) => ClientReply::Unavailable { reason },
            };
            let _ = reply.send(r);
        });
    }

    /// Queues a refused waiting acquire until a slot frees or its wait ends.
    pub fn enqueue(&mut self, op: ClientOp, reply: oneshot::Sender<ClientReply>, last: Outcome) {
        let ClientOp::Acquire { wait_ms, .. } = &op else { return };
        if !self.is_leader() {
            let _ = reply.send(self.not_leader());
            return;
        }
        let key = key_of(&op).to_string();
        let q_len = self.waiters.queues.get(&key).map_or(0, |q| q.len());
        if self.waiters.len >= MAX_WAITERS || q_len >= MAX_WAITERS_PER_KEY {
            let _ = reply.send(self.applied_reply(last));
            return;
        }
        self.waiters.next_id += 1;
        let w = Waiter { id: self.waiters.next_id, deadline: tokio::time::Instant::now() + Duration::from_millis(*wait_ms), op, reply, in_flight: false, last };
        self.waiters.queues.entry(key.clone()).or_default().push_back(w);
        self.waiters.len += 1;
        self.serve(&key);
    }

    /// Tries the first waiters of `key` for as many slots as are free now.
    pub fn serve(&mut self, key: &str) {
        let Some(inst) = &self.instance else { return };
        let now = self.clock.now_ms();
        let Some(q) = self.waiters.queues.get_mut(key) else { return };
        // Waiters whose asker hung up are dropped, never granted.
        let before = q.len();
        q.retain(|w| !w.reply.is_closed());
        self.waiters.len -= before - q.len();
        let Some(first) = q.front() else {
            self.waiters.queues.remove(key);
            return;
        };
        let want_limit = match &first.op {
            ClientOp::Acquire { limit, .. } => *limit as usize,
            _ => 1,
        };
        let free = match inst.state.lock() {
            Ok(s) => match s.key(key) {
                None => want_limit,
                Some(k) if k.blocked_until_ms > now => 0,
                Some(k) => (k.limit as usize).saturating_sub(k.holders.iter().filter(|h| h.deadline_ms > now).count()),
            },
            Err(_) => 0,
        };
        let in_flight = q.iter().filter(|w| w.in_flight).count();
        for w in q.iter_mut().filter(|w| !w.in_flight).take(free.saturating_sub(in_flight)) {
            w.in_flight = true;
            let raft = inst.raft.clone();
            let tx = self.tx.clone();
            let cmd = Command { at_ms: now, op: log_op(&w.op) };
            let (key, id) = (key.to_string(), w.id);
            tokio::spawn(async move {
                let result = write(&raft, cmd).await;
                let _ = tx.send(In::WaiterDone { key, id, result }).await;
            });
        }
    }

    /// A waiter's attempt finished.
    pub fn on_waiter_done(&mut self, key: &str, id: u64, result: Result<Outcome, String>) {
        let leader = self.is_leader();
        let reply_of = |outcome: Result<Outcome, String>| match outcome {
            Ok(outcome) => self.applied_reply(outcome),
            Err(reason) => ClientReply::Unavailable { reason },
        };
        let result = match result {
            Ok(o @ Outcome::Refused { refusal: Refusal::Held | Refusal::LockDelay { .. }, .. }) if leader => Ok(o),
            other => Err(reply_of(other)),
        };
        let Some(q) = self.waiters.queues.get_mut(key) else { return };
        let Some(pos) = q.iter().position(|w| w.id == id) else { return };
        match result {
            // Still refused (someone else took the slot first): it stays first in line.
            Ok(refused) => {
                if let Some(w) = q.get_mut(pos) {
                    w.in_flight = false;
                    w.last = refused;
                }
            }
            Err(reply) => {
                if let Some(w) = q.remove(pos) {
                    self.waiters.len -= 1;
                    let _ = w.reply.send(reply);
                }
            }
        }
        if self.waiters.queues.get(key).is_some_and(|q| q.is_empty()) {
            self.waiters.queues.remove(key);
        }
    }

    /// Answers waiters whose wait is over with their last refusal.
    pub fn expire_waiters(&mut self) {
        let now = tokio::time::Instant::now();
        let mut done = Vec::new();
        for (key, q) in self.waiters.queues.iter_mut() {
            let mut keep = VecDeque::new();
            for w in q.drain(..) {
                if w.deadline <= now && !w.in_flight { done.push(w) } else { keep.push_back(w) }
            }
            *q = keep;
            let _ = key;
        }
        self.waiters.queues.retain(|_, q| !q.is_empty());
        for w in done {
            self.waiters.len -= 1;
            let r = self.applied_reply(w.last);
            let _ = w.reply.send(r);
        }
    }

    /// After an entry was applied: wake waiters of keys with a freed slot, schedule the next tick.
    pub fn after_applied(&mut self, e: &AppliedEntry) {
        if !self.is_leader() {
            return;
        }
        let freed: Vec<String> =
            e.changes.iter().filter(|c| matches!(c.kind, ChangeKind::Released | ChangeKind::Expired | ChangeKind::NodeGone)).map(|c| c.key.clone()).collect();
        for k in freed {
            self.serve(&k);
        }
        if matches!(e.outcome, Outcome::Done) {
            // A tick: lock-delays may have ended without any holder change.
            let keys: Vec<String> = self.waiters.queues.keys().cloned().collect();
            for k in keys {
                self.serve(&k);
            }
        }
    }

    /// When the leader should next write a tick (SM time = this node's clock while it leads).
    pub fn next_tick_ms(&self) -> Option<u64> {
        if !self.is_leader() || self.tick_in_flight {
            return None;
        }
        let inst = self.instance.as_ref()?;
        let term = self.metrics.as_ref()?.borrow().current_term;
        let s = inst.state.lock().ok()?;
        if s.epoch() != term {
            return Some(0);
        }
        s.next_deadline_ms()
    }

    /// Writes a tick (expiries, and the re-base of a new term).
    pub fn write_own(&mut self, op: Op) {
        let Some(inst) = &self.instance else { return };
        let raft = inst.raft.clone();
        let tx = self.tx.clone();
        let cmd = Command { at_ms: self.clock.now_ms(), op };
        if matches!(cmd.op, Op::Tick) {
            self.tick_in_flight = true;
        }
        tokio::spawn(async move {
            if let Err(e) = write(&raft, cmd).await {
                tracing::debug!(error = %e, "claims: leader write failed");
            }
            let _ = tx.send(In::OwnWriteDone).await;
        });
    }

    /// Leadership changed: a new leader re-bases leases and hands on crashed nodes' claims;
    /// a former leader sends its waiters to the new one.
    pub fn on_leadership(&mut self) {
        let term = self.metrics.as_ref().map(|m| m.borrow().current_term);
        if self.is_leader() {
            if self.led_term != term {
                self.led_term = term;
                self.gone_sent.clear();
                self.write_own(Op::Tick);
                self.hand_off_crashed();
            }
        } else {
            if self.led_term.is_some() {
                self.led_term = None;
            }
            if !self.waiters.is_empty() {
                self.waiters.fail_all("leadership moved; ask the new leader");
            }
        }
    }

    /// Early hand-off: for every peer proven crashed that holds claims bound to it, granted
    /// before this node saw the crash, write `NodeGone` (once per term). Peers merely
    /// unreachable wait for their leases, and so do grants after the crash was seen: this
    /// node's view may be stale (a new leader not yet reconnected to the restarted peer),
    /// and they may belong to the peer's next run.
    pub fn hand_off_crashed(&mut self) {
        if !self.is_leader() {
            return;
        }
        let Some(state) = self.instance.as_ref().map(|i| i.state.clone()) else { return };
        // A grace after the proof: what the claim protects stops when its node's connection
        // closes (`claim run` kills its child then), which takes a scheduling round on that
        // host; the proof can arrive here within tens of milliseconds of the crash.
        let now = self.clock.now_ms();
        let crashed: Vec<(String, u64)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.live.alive && p.live.crashed && now.saturating_sub(p.since_ms) >= HANDOFF_GRACE_MS)
            .filter_map(|(k, p)| p.crashed_upto.map(|u| (k.clone(), u)))
            .collect();
        for (peer, upto) in crashed {
            if self.gone_sent.contains(&peer) {
                continue;
            }
            let bound = state.lock().map(|s| s.holders_of_node(&peer).iter().any(|(_, h)| h.meta.bound_to_node && h.token <= upto)).unwrap_or(false);
            if bound {
                tracing::info!(%peer, upto, "claims: holder node proven crashed; handing its bound claims on");
                self.gone_sent.insert(peer.clone());
                self.write_own(Op::NodeGone { node: peer, upto });
            }
        }
        // A peer alive again may crash again later.
        self.gone_sent.retain(|p| self.peers.get(p).is_some_and(|x| !x.live.alive));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_another_cluster_is_not_held_here_whatever_its_number() {
        let renew = |cluster: Option<&str>| ClientOp::Renew { key: "k".into(), token: 4, ttl_ms: None, cluster: cluster.map(str::to_string) };
        assert_eq!(foreign_token(&renew(Some("b")), "a"), Some(Outcome::NotHeld { key: "k".into(), token: 4 }));
        assert_eq!(foreign_token(&renew(Some("a")), "a"), None);
        assert_eq!(foreign_token(&renew(None), "a"), None, "a client that does not say is asked about this cluster");
        let release = ClientOp::Release { key: "k".into(), token: 4, cluster: Some("b".into()) };
        assert_eq!(foreign_token(&release, "a"), Some(Outcome::NotHeld { key: "k".into(), token: 4 }));
    }

    fn waiter(id: u64, deadline: tokio::time::Instant, in_flight: bool) -> (Waiter, oneshot::Receiver<ClientReply>) {
        let (reply, rx) = oneshot::channel();
        let op = ClientOp::Release { key: "k".into(), token: 1, cluster: None };
        (Waiter { id, op, reply, deadline, in_flight, last: Outcome::Done }, rx)
    }

    #[test]
    fn a_waiter_whose_attempt_is_in_flight_sets_no_deadline_until_the_attempt_is_done() {
        let now = tokio::time::Instant::now();
        let (past, _a) = waiter(1, now - Duration::from_secs(1), true);
        let (later, _b) = waiter(2, now + Duration::from_secs(5), false);
        let mut w = Waiters::default();
        w.queues.entry("k".into()).or_default().extend([past, later]);
        assert_eq!(w.next_deadline(), Some(now + Duration::from_secs(5)), "the passed deadline of the attempt in flight does not count");
        w.queues.get_mut("k").and_then(|q| q.front_mut()).expect("first").in_flight = false;
        assert_eq!(w.next_deadline(), Some(now - Duration::from_secs(1)), "once the attempt is done it does");
    }
}
