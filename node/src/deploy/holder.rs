//! Holding a `svc/NAME` claim inside the node: acquire, renew every third of the TTL, and
//! a local deadline (TTL minus a drift margin, counted from when the last successful
//! renewal was *sent*, on CLOCK_BOOTTIME, so a laptop that slept knows at once) after
//! which what the claim protects must stop, before any other node can be granted it.

use crate::claims::ClaimsHandle;
use crate::claims::wire::{ClientOp, ClientReply};
use craftmesh_protocol::claims::lease::{LeaseDecision, LocalLease, default_margin_ms};
use craftmesh_protocol::claims::{Meta, Outcome};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A claim this node holds for an instance.
#[derive(Debug)]
pub struct Held {
    pub key: String,
    pub token: u64,
    pub cluster: String,
    /// When to renew and when the claim must be given up locally (the same pure logic
    /// `claim run` uses).
    lease: Mutex<LocalLease>,
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
        self.lease().lost();
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

    fn lease(&self) -> std::sync::MutexGuard<'_, LocalLease> {
        crate::share::link::lock(&self.lease)
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
        ClientReply::Applied { outcome: Outcome::Granted { holder, .. }, cluster, .. } => {
            let mut lease = LocalLease::new(ttl_ms, default_margin_ms(ttl_ms));
            lease.granted(sent);
            Ok(Held {
                key: key.to_string(),
                token: holder.token,
                cluster,
                lease: Mutex::new(lease),
                lost: CancellationToken::new(),
                stopped: false.into(),
                why: Mutex::new(String::new()),
            })
        }
        ClientReply::Applied { outcome: Outcome::Refused { .. }, .. } => Err(AcquireError::Taken),
        ClientReply::Unavailable { reason } => Err(AcquireError::Failed(format!("claims unavailable: {reason}"))),
        other => Err(AcquireError::Failed(format!("unexpected claims answer: {other:?}"))),
    }
}

/// Renews `held` until it is lost or given up; gives it up locally when the deadline passes.
pub fn keep(claims: ClaimsHandle, held: std::sync::Arc<Held>) {
    tokio::spawn(async move {
        loop {
            let now = claims.now_ms();
            let decision = held.lease().poll(now);
            match decision {
                LeaseDecision::Expired => {
                    held.lose(&format!("no renewal of {} came back before the local deadline", held.key));
                    return;
                }
                LeaseDecision::Idle | LeaseDecision::Lost => return,
                // Short sleeps, checked against the boot clock: time asleep counts.
                LeaseDecision::Hold { until_ms } => {
                    let wait = Duration::from_millis(until_ms.saturating_sub(now).clamp(1, 50));
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = held.lost.cancelled() => return,
                    }
                }
                LeaseDecision::Renew => {
                    let deadline = held.lease().deadline_ms().unwrap_or(now);
                    held.lease().renew_sent(now);
                    let op = ClientOp::Renew { key: held.key.clone(), token: held.token, ttl_ms: None, cluster: Some(held.cluster.clone()) };
                    let left = Duration::from_millis(deadline.saturating_sub(now).max(1));
                    let reply = tokio::select! {
                        r = claims.request(op, left) => r,
                        () = held.lost.cancelled() => return,
                    };
                    match reply {
                        ClientReply::Applied { outcome: Outcome::Renewed { holder, .. }, .. } => held.lease().renewed(now, holder.ttl_ms),
                        ClientReply::Applied { outcome, .. } => {
                            held.lose(&format!("renewal of {} refused: {outcome:?}", held.key));
                            return;
                        }
                        _ => held.lease().renew_failed(claims.now_ms()),
                    }
                }
            }
        }
    });
}

/// Releases the claim (best effort: an unreleased claim expires with its lease).
pub async fn release(claims: &ClaimsHandle, held: &Held) {
    let op = ClientOp::Release { key: held.key.clone(), token: held.token, cluster: Some(held.cluster.clone()) };
    let _ = claims.request(op, Duration::from_secs(2)).await;
}
