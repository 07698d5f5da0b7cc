//! Restart decisions for supervised tasks: a task that died (panicked or returned an
//! error) is restarted after an exponential backoff, reset by a success. Pure: the caller
//! passes `now` in and acts on the delay that comes out; `node::supervise` runs the tasks.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Backoff between restarts: `initial`, doubled after each failure in a row, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling to 60 s.
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The delay before the restart that follows the `failures_in_a_row`-th failure (1-based).
    pub fn delay(&self, failures_in_a_row: u32) -> Duration {
        let shift = failures_in_a_row.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// What is known about one supervised task (the JSON of `/v1/node`'s `tasks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskRecord {
    /// Times the task died and was (or will be) restarted.
    pub restarts: u64,
    /// Failures since the last success; sets the backoff.
    pub failures_in_a_row: u32,
    /// The last failure's message (a panic's payload or the returned error).
    pub last_error: Option<String>,
    /// Unix time of the last failure, milliseconds.
    pub last_failure_at_ms: Option<u64>,
}

/// Per-task restart counters and backoff state, keyed by task name.
#[derive(Debug, Clone, Default)]
pub struct TaskHealth {
    backoff: Backoff,
    tasks: BTreeMap<String, TaskRecord>,
}

/// Longest failure message kept.
const MAX_ERROR_CHARS: usize = 500;

impl TaskHealth {
    pub fn new(backoff: Backoff) -> Self {
        TaskHealth { backoff, tasks: BTreeMap::new() }
    }

    /// Records that `name` died with `error` at `now_ms`; returns how long to wait before
    /// restarting it.
    pub fn record_failure(&mut self, name: &str, error: &str, now_ms: u64) -> Duration {
        let t = self.tasks.entry(name.to_string()).or_default();
        t.restarts = t.restarts.saturating_add(1);
        t.failures_in_a_row = t.failures_in_a_row.saturating_add(1);
        let mut e: String = error.chars().take(MAX_ERROR_CHARS).collect();
        if e.len() < error.len() {
            e.push('…');
        }
        t.last_error = Some(e);
        t.last_failure_at_ms = Some(now_ms);
        self.backoff.delay(t.failures_in_a_row)
    }

    /// Records that `name` completed a unit of work (a round, a healthy period): the next
    /// failure starts the backoff from `initial` again. Counters are kept.
    pub fn record_ok(&mut self, name: &str) {
        if let Some(t) = self.tasks.get_mut(name) {
            t.failures_in_a_row = 0;
        }
    }

    pub fn get(&self, name: &str) -> Option<&TaskRecord> {
        self.tasks.get(name)
    }

    /// Tasks that ever failed, by name.
    pub fn failed(&self) -> BTreeMap<String, TaskRecord> {
        self.tasks.iter().filter(|(_, t)| t.restarts > 0).map(|(n, t)| (n.clone(), t.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60), "no overflow after many failures");
        assert_eq!(b.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn failures_are_counted_and_a_success_resets_only_the_backoff() {
        let mut h = TaskHealth::new(Backoff::default());
        assert_eq!(h.record_failure("discovery", "boom", 10), Duration::from_secs(1));
        assert_eq!(h.record_failure("discovery", "boom again", 20), Duration::from_secs(2));
        assert_eq!(h.record_failure("discovery", "and again", 30), Duration::from_secs(4));
        h.record_ok("discovery");
        assert_eq!(h.record_failure("discovery", "later", 40), Duration::from_secs(1), "backoff starts over after a success");
        let t = h.get("discovery").expect("recorded");
        assert_eq!((t.restarts, t.failures_in_a_row, t.last_error.as_deref(), t.last_failure_at_ms), (4, 1, Some("later"), Some(40)));
    }

    #[test]
    fn tasks_are_tracked_apart_and_only_failed_ones_are_listed() {
        let mut h = TaskHealth::new(Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(15) });
        h.record_ok("quiet");
        assert_eq!(h.record_failure("a", "x", 1), Duration::from_millis(10));
        assert_eq!(h.record_failure("a", "x", 2), Duration::from_millis(15));
        assert_eq!(h.record_failure("b", "y", 3), Duration::from_millis(10));
        assert_eq!(h.failed().keys().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn a_huge_error_message_is_cut() {
        let mut h = TaskHealth::default();
        h.record_failure("t", &"e".repeat(100_000), 0);
        assert!(h.get("t").and_then(|t| t.last_error.as_ref()).is_some_and(|e| e.chars().count() <= MAX_ERROR_CHARS + 1));
    }
}
