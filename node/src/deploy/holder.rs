//! Holding a `svc/NAME` claim inside the node: acquire, renew every third of the TTL, and
//! a local deadline (TTL minus a drift margin, counted from when the last successful
//! renewal was *sent*, on CLOCK_BOOTTIME, so a laptop that slept knows at once) after
//! which what the claim protects must stop, before any other node can be granted it.

use crate::claims::ClaimsHandle;
use crate::claims::wire::{ClientOp, ClientReply};
use craftmesh_protocol::claims::{Meta, Outcome};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Drift margin: the holder gives up this much before its lease ends (at least 300 ms).
pub fn margin_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 10).max(300)
}

/// A claim this node holds for an instance.
#[derive(Debug)]
pub struct Held {
    pub key: String,
    pub token: u64,
    pub cluster: String,
    pub ttl_ms: u64,
    /// Local deadline on the boot clock (ms).
    deadline: AtomicU64,
    lost: CancellationToken,
    stopped: std::sync::atomic::AtomicBool,
    why: Mutex<String>,
}

impl Held {
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the claim is lost or given up.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    pub fn why(&self) -> String {
        self.why.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn lose(&self, why: &str) {
        if let Ok(mut w) = self.why.lock()
            && w.is_empty()
        {
            *w = why.to_string();
        }
        self.lost.cancel();
    }

    /// Gives the claim up on purpose (a stop): the instance stops and the claim is released.
    pub fn stop(&self, why: &str) {
        self.stopped.store(true, Ordering::SeqCst);
        self.lose(why);
    }

    /// Whether the loss was a deliberate stop.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Stops renewing (the instance is gone; the claim is released by the caller).
    pub fn give_up(&self) {
        self.lose("given up");
    }
}

#[derive(Debug)]
pub enum AcquireError {
    Taken,
    Failed(String),
}

/// Acquires `key` for this node (no waiting: someone else holding it means they deploy).
pub async fn acquire(claims: &ClaimsHandle, key: &str, ttl_ms: u64, meta: Meta, session: &str) -> Result<Held, AcquireError> {
    let sent = claims.now_ms();
    let op = ClientOp::Acquire {
        key: key.to_string(),
        node: claims.me().to_string(),
        session: format!("{session}-{}", claims.me()),
        ttl_ms,
        limit: 1,
        lock_delay_ms: claims.lock_delay_ms(),
        meta,
        wait_ms: 0,
    };
    match claims.request(op, Duration::from_secs(5)).await {
        ClientReply::Applied { outcome: Outcome::Granted { holder, .. }, cluster, .. } => Ok(Held {
            key: key.to_string(),
            token: holder.token,
            cluster,
            ttl_ms,
            deadline: AtomicU64::new(sent + ttl_ms.saturating_sub(margin_ms(ttl_ms))),
            lost: CancellationToken::new(),
            stopped: false.into(),
            why: Mutex::new(String::new()),
        }),
        ClientReply::Applied { outcome: Outcome::Refused { .. }, .. } => Err(AcquireError::Taken),
        ClientReply::Unavailable { reason } => Err(AcquireError::Failed(format!("claims unavailable: {reason}"))),
        other => Err(AcquireError::Failed(format!("unexpected claims answer: {other:?}"))),
    }
}

/// Renews `held` until it is lost or given up; gives it up locally when the deadline passes.
pub fn keep(claims: ClaimsHandle, held: std::sync::Arc<Held>) {
    tokio::spawn(async move {
        let every = Duration::from_millis(held.ttl_ms / 3);
        let mut next = tokio::time::Instant::now() + every;
        loop {
            // Short sleeps, checked against the boot clock: time asleep counts.
            let now = claims.now_ms();
            let deadline = held.deadline.load(Ordering::SeqCst);
            if now >= deadline {
                held.lose(&format!("no renewal of {} came back before the local deadline", held.key));
                return;
            }
            if held.is_lost() {
                return;
            }
            if tokio::time::Instant::now() < next {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50).min(Duration::from_millis(deadline - now))) => {}
                    () = held.lost.cancelled() => return,
                }
                continue;
            }
            let sent = claims.now_ms();
            let op = ClientOp::Renew { key: held.key.clone(), token: held.token, ttl_ms: None, cluster: Some(held.cluster.clone()) };
            let left = Duration::from_millis(deadline.saturating_sub(sent).max(1));
            let reply = tokio::select! {
                r = claims.request(op, left) => r,
                () = held.lost.cancelled() => return,
            };
            match reply {
                ClientReply::Applied { outcome: Outcome::Renewed { .. }, .. } => {
                    held.deadline.fetch_max(sent + held.ttl_ms.saturating_sub(margin_ms(held.ttl_ms)), Ordering::SeqCst);
                    next = tokio::time::Instant::now() + every;
                }
                ClientReply::Applied { outcome, .. } => {
                    held.lose(&format!("renewal of {} refused: {outcome:?}", held.key));
                    return;
                }
                _ => next = tokio::time::Instant::now() + Duration::from_millis(100),
            }
        }
    });
}

/// Releases the claim (best effort: an unreleased claim expires with its lease).
pub async fn release(claims: &ClaimsHandle, held: &Held) {
    let op = ClientOp::Release { key: held.key.clone(), token: held.token, cluster: Some(held.cluster.clone()) };
    let _ = claims.request(op, Duration::from_secs(2)).await;
}
