//! Running tasks so that none dies silently: a panic or an error is caught, logged at
//! error, counted in a [`SharedHealth`] (shown as `tasks` in `/v1/node`), and the task is
//! restarted after the backoff that `craftmesh_protocol::supervise` decides.
//!
//! Two shapes:
//! - [`run_caught`]: one unit of work (a discovery round) whose panic becomes an `Err`;
//!   the owner records it and decides when to try again.
//! - [`spawn_supervised`]: a long-lived task restarted from `factory` whenever it ends
//!   with an error or a panic.
//!
//! Catching needs unwinding: the release profile builds with `panic = "unwind"`.

use craftmesh_protocol::supervise::{Backoff, TaskHealth, TaskRecord};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Restart counters shared between the supervisors and the driver (which shows them).
#[derive(Debug, Clone, Default)]
pub struct SharedHealth(Arc<Mutex<TaskHealth>>);

/// A task that ran this long before failing counts as having been healthy: its backoff
/// starts over.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

impl SharedHealth {
    pub fn new(backoff: Backoff) -> Self {
        SharedHealth(Arc::new(Mutex::new(TaskHealth::new(backoff))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut TaskHealth) -> T) -> T {
        // A panic while holding this lock cannot leave the counters half-updated in a way
        // that matters; keep using them.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Logs the failure at error, counts it and returns the delay before the restart.
    pub fn record_failure(&self, name: &str, error: &str) -> Duration {
        let delay = self.with(|h| h.record_failure(name, error, crate::discovery::now_ms()));
        let restarts = self.with(|h| h.get(name).map_or(0, |t| t.restarts));
        tracing::error!(task = name, error, restarts, retry_in_ms = delay.as_millis() as u64, "task failed; restarting after backoff");
        delay
    }

    pub fn record_ok(&self, name: &str) {
        self.with(|h| h.record_ok(name));
    }

    /// Tasks that ever failed (what `/v1/node` shows as `tasks`).
    pub fn failed(&self) -> BTreeMap<String, TaskRecord> {
        self.with(|h| h.failed())
    }
}

/// The message of a task that did not finish: a panic's payload, or "cancelled".
pub fn join_error_message(e: tokio::task::JoinError) -> String {
    if e.is_cancelled() {
        return "task was cancelled".to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}

/// Runs `fut` as its own task; a panic in it comes back as `Err(message)`.
pub async fn run_caught<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
    tokio::spawn(fut).await.map_err(join_error_message)
}

/// Spawns a long-lived task named `name`, started from `factory` and started again after
/// each failure (an `Err` or a panic) once the backoff has passed. `Ok(())` ends it for
/// good. A run that lasted [`HEALTHY_AFTER`] resets the backoff before counting its failure.
pub fn spawn_supervised<F, Fut>(name: &'static str, health: SharedHealth, mut factory: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let error = match run_caught(factory()).await {
                Ok(Ok(())) => {
                    tracing::debug!(task = name, "supervised task finished");
                    return;
                }
                Ok(Err(e)) => e,
                Err(e) => e,
            };
            if started.elapsed() >= HEALTHY_AFTER {
                health.record_ok(name);
            }
            let delay = health.record_failure(name, &error);
            tokio::time::sleep(delay).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> SharedHealth {
        SharedHealth::new(Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(40) })
    }

    #[tokio::test]
    async fn a_panicking_supervised_task_is_restarted_and_counted() {
        let health = fast();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let task = spawn_supervised("flaky", health.clone(), move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => panic!("first run breaks"),
                    1 => Err("second run fails".to_string()),
                    _ => Ok(()),
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the task settles").expect("the supervisor itself does not die");
        assert_eq!(runs.load(Ordering::SeqCst), 3, "restarted after the panic and after the error");
        let t = health.failed().remove("flaky").expect("the failures are recorded");
        assert_eq!(t.restarts, 2);
        assert_eq!(t.last_error.as_deref(), Some("second run fails"));
        assert!(t.last_failure_at_ms.is_some());
    }

    #[tokio::test]
    async fn run_caught_turns_a_panic_into_its_message() {
        let r: Result<u8, String> = run_caught(async { panic!("round exploded") }).await;
        assert_eq!(r, Err("panicked: round exploded".to_string()));
        assert_eq!(run_caught(async { 7u8 }).await, Ok(7));
    }
}
