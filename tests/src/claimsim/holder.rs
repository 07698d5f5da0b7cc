//! Simulated holders: processes on a node that acquire keys through its claims service
//! (`ClaimsHandle::request`, as the API does for `claim acquire` and `claim run`), keep the
//! real `LocalLease` on the node's drifting boot clock, renew when it says so, and stop
//! believing at once when it says `Expired` or the cluster answers `NotHeld`; they release
//! after a random hold. An acquire without an answer is sometimes asked again with the
//! same session (a grant whose answer was lost then comes back with its token).
//!
//! A waiting acquire can be granted after the acquire's send time + TTL − margin (the wait
//! in the leader's queue counts against the lease, since the holder cannot know when the
//! grant was stamped). Such a grant is confirmed by a renewal sent at once, whose send time
//! then starts the lease; `claim run` does not do that yet (it stops at once).
//!
//! A holder whose node is paused is frozen: it takes no action until the node resumes (its
//! belief was ended by the simulation at the pause), and its first act then is to poll its
//! lease with the clock that kept running. A holder whose node crashes is aborted.

use super::Rng;
use super::history::{Belief, Ev, Grant, History};
use super::node::SimClock;
use craftmesh::claims::clock::Clock as _;
use craftmesh::claims::service::ClaimsHandle;
use craftmesh::claims::wire::{ClientOp, ClientReply};
use craftmesh_protocol::claims::lease::{LeaseDecision, LocalLease, default_margin_ms};
use craftmesh_protocol::claims::{Meta, Outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

/// A key the holders use, with its limit.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub name: &'static str,
    pub limit: u32,
}

/// Two locks and a counted key with three slots.
pub const KEYS: &[KeySpec] = &[KeySpec { name: "lock/a", limit: 1 }, KeySpec { name: "lock/b", limit: 1 }, KeySpec { name: "slots/c", limit: 3 }];

/// Everything a holder needs.
#[derive(Debug)]
pub struct HolderCfg {
    pub name: String,
    pub node: usize,
    pub handle: ClaimsHandle,
    pub clock: Arc<SimClock>,
    pub hist: History,
    pub paused: watch::Receiver<bool>,
    pub stop: watch::Receiver<bool>,
    pub seed: u64,
    pub ttl_choices: Vec<u64>,
    /// Ignores `Expired` (the checker's self-test).
    pub broken: bool,
}

type Pending = Pin<Box<dyn Future<Output = (u64, ClientReply)> + Send>>;

impl HolderCfg {
    /// Waits while the node is paused.
    async fn thaw(&mut self) {
        while *self.paused.borrow_and_update() {
            if self.paused.changed().await.is_err() {
                return;
            }
        }
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn note(&self, what: String) {
        self.hist.push(Ev::Note { holder: self.name.clone(), what });
    }
}

/// Runs one holder until the run ends (or its node crashes and aborts it).
pub async fn run(mut c: HolderCfg) {
    let mut rng = Rng::new(c.seed);
    let mut seq = 0u64;
    loop {
        c.thaw().await;
        let think = Instant::now() + Duration::from_millis(50 + rng.below(1500));
        let mut stop = c.stop.clone();
        tokio::select! {
            () = sleep_until(think) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        c.thaw().await;
        if c.stopped() {
            return;
        }
        let spec = KEYS[rng.below(KEYS.len() as u64) as usize];
        let ttl = c.ttl_choices[rng.below(c.ttl_choices.len() as u64) as usize];
        let wait_ms = if rng.unit() < 0.5 { 0 } else { rng.below(2 * ttl) };
        let session = format!("{}.{seq}", c.name);
        seq += 1;
        let op = ClientOp::Acquire {
            key: spec.name.to_string(),
            node: c.handle.me().to_string(),
            session: session.clone(),
            ttl_ms: ttl,
            limit: spec.limit,
            lock_delay_ms: if rng.unit() < 0.3 { 300 } else { 0 },
            meta: Meta { bound_to_node: rng.unit() < 0.5, ..Meta::default() },
            wait_ms,
        };
        // An acquire that got no answer is asked again with the same session half the
        // time (idempotent: a grant whose answer was lost comes back with its token).
        let (mut sent, mut reply);
        let mut tries = 0;
        loop {
            sent = c.clock.now_ms();
            reply = tokio::select! {
                r = c.handle.request(op.clone(), Duration::from_millis(3000 + wait_ms)) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            c.thaw().await;
            tries += 1;
            if !matches!(reply, ClientReply::Unavailable { .. }) || tries > 2 || rng.unit() < 0.5 || c.stopped() {
                break;
            }
            c.note(format!("acquire {} again with session {session}: {}", spec.name, brief(&reply)));
        }
        match reply {
            ClientReply::Applied { outcome: Outcome::Granted { holder, .. }, cluster, .. } => {
                let g = Grant { key: spec.name.to_string(), token: holder.token, session, cluster, at_us: c.hist.now_us() };
                c.hist.granted(&c.name, g.clone());
                hold(&mut c, &mut rng, spec, ttl, g, sent, wait_ms > 0).await;
                if c.stopped() {
                    return;
                }
            }
            ClientReply::Applied { outcome: Outcome::Refused { refusal, .. }, .. } => c.note(format!("acquire {}: refused {refusal:?}", spec.name)),
            other => c.note(format!("acquire {}: {}", spec.name, brief(&other))),
        }
    }
}

/// Holds a grant until it is released, lost or expired.
async fn hold(c: &mut HolderCfg, rng: &mut Rng, spec: KeySpec, ttl: u64, g: Grant, sent: u64, waited: bool) {
    let mut lease = LocalLease::new(ttl, default_margin_ms(ttl));
    lease.granted(sent);
    if waited && lease.poll(c.clock.now_ms()) == LeaseDecision::Expired {
        // Granted after the lease the acquire's send time allows: confirm with a renewal.
        let at = c.clock.now_ms();
        let reply = c.handle.request(renew_op(&g, ttl), renew_timeout(ttl)).await;
        c.thaw().await;
        match reply {
            ClientReply::Applied { outcome: Outcome::Renewed { .. }, .. } => lease.granted(at),
            other => {
                c.note(format!("confirming {} token {} after a long wait: {}", g.key, g.token, brief(&other)));
                return;
            }
        }
    }
    let release_at = Instant::now() + Duration::from_millis(200 + rng.below(6000));
    let mut belief: Option<usize> = None;
    let mut inflight: Option<Pending> = None;
    let mut answer: Option<(u64, ClientReply)> = None;
    loop {
        c.thaw().await;
        if belief.is_some_and(|id| !c.hist.is_open(id)) {
            // Ended by a freeze: believing starts again only if the lease still says so.
            belief = None;
        }
        if let Some((at, reply)) = answer.take() {
            match reply {
                ClientReply::Applied { outcome: Outcome::Renewed { .. }, .. } => lease.renewed(at, ttl),
                ClientReply::Applied { outcome: Outcome::NotHeld { .. }, .. } => {
                    end(c, belief, super::check::NOT_HELD);
                    lease.lost();
                    return;
                }
                other => {
                    c.note(format!("renew {} token {}: {}", g.key, g.token, brief(&other)));
                    lease.renew_failed(c.clock.now_ms());
                }
            }
        }
        let now = c.clock.now_ms();
        match lease.poll(now) {
            LeaseDecision::Expired if c.broken => {}
            LeaseDecision::Expired => {
                end(c, belief, "local deadline passed");
                lease.lost();
                return;
            }
            LeaseDecision::Lost | LeaseDecision::Idle => {
                end(c, belief, "lost");
                return;
            }
            LeaseDecision::Renew if inflight.is_none() => {
                lease.renew_sent(now);
                let (h, op, t) = (c.handle.clone(), renew_op(&g, ttl), renew_timeout(ttl));
                inflight = Some(Box::pin(async move { (now, h.request(op, t).await) }));
            }
            LeaseDecision::Renew | LeaseDecision::Hold { .. } => {}
        }
        if belief.is_none() {
            let b = Belief {
                node: c.node,
                holder: c.name.clone(),
                key: g.key.clone(),
                limit: spec.limit,
                token: g.token,
                session: g.session.clone(),
                cluster: g.cluster.clone(),
                start_us: 0,
                end_us: None,
                why: "",
            };
            belief = Some(c.hist.believe(b));
        }
        if c.stopped() || Instant::now() >= release_at {
            end(c, belief, if c.stopped() { "end of run" } else { "released" });
            let op = ClientOp::Release { key: g.key.clone(), token: g.token, cluster: Some(g.cluster.clone()) };
            let _ = c.handle.request(op, Duration::from_secs(1)).await;
            return;
        }
        let next = lease.poll_timeout(now).map(|ms| c.clock.instant_of(ms)).unwrap_or(release_at);
        let wake = next.min(release_at).max(Instant::now() + Duration::from_millis(1));
        let mut paused = c.paused.clone();
        let mut stop = c.stop.clone();
        tokio::select! {
            r = async { match inflight.as_mut() { Some(f) => f.await, None => futures::future::pending().await } } => {
                inflight = None;
                answer = Some(r);
            }
            () = sleep_until(wake) => {}
            _ = paused.wait_for(|p| *p) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

fn end(c: &HolderCfg, belief: Option<usize>, why: &'static str) {
    if let Some(id) = belief {
        c.hist.stop(id, why);
    }
}

fn renew_op(g: &Grant, ttl: u64) -> ClientOp {
    ClientOp::Renew { key: g.key.clone(), token: g.token, ttl_ms: Some(ttl), cluster: Some(g.cluster.clone()) }
}

/// What `claim run` gives a renewal: a quarter of the lease.
fn renew_timeout(ttl: u64) -> Duration {
    Duration::from_millis((ttl / 4).max(200))
}

fn brief(r: &ClientReply) -> String {
    match r {
        ClientReply::Applied { outcome, .. } => format!("{outcome:?}").chars().take(80).collect(),
        ClientReply::Unavailable { reason } => format!("unavailable: {}", reason.chars().take(80).collect::<String>()),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}
