//! The seeded schedule of a run: faults at chosen times, each undone after its duration,
//! overlapping at random. Nodes named `Leader` are resolved when the fault starts (the
//! node that reports itself leader with the highest term).

use super::Rng;

/// Who a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Node(usize),
    /// Whoever leads when the fault starts.
    Leader,
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `side` and the rest cannot reach each other (both directions).
    Partition { side: Vec<usize> },
    /// Cut off from everyone (both directions).
    Isolate(Target),
    /// Bytes from `from` never reach `to`; the other direction works.
    OneWay { from: usize, to: usize },
    /// Chunks `from` → `to` are lost with probability `p` (then retransmitted).
    Loss { from: usize, to: usize, p: f64 },
    /// SIGSTOP (host cut off, holders frozen), then SIGCONT.
    Pause(Target),
    /// The process dies; it restarts with its storage after the duration.
    Crash(Target),
}

/// A fault, when it starts (ms after the fault phase began) and how long it lasts.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at_ms: u64,
    pub dur_ms: u64,
    pub fault: Fault,
}

/// Per-node clocks and the faults of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Boot clock at the start, ms.
    pub offsets_ms: Vec<u64>,
    /// Rate error, parts per million.
    pub drift_ppm: Vec<i64>,
    /// Raft entries between snapshots: the default (1000) in half the runs, 10–80 in the
    /// others, so that snapshots are built, sent and installed.
    pub snapshot_logs: u64,
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan of `seed` for `n` nodes (the first `servers` of them servers), faults
    /// spread over `fault_ms`; a crashed node stays down up to `max_down_ms`.
    pub fn generate(seed: u64, n: usize, servers: usize, fault_ms: u64, max_drift_ppm: i64, max_down_ms: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0x706c_616e);
        let offsets_ms = (0..n).map(|_| 10_000 + rng.below(100_000_000)).collect();
        let span = 2 * max_drift_ppm.max(0) as u64 + 1;
        let drift_ppm = (0..n).map(|_| rng.below(span) as i64 - max_drift_ppm.max(0)).collect();
        let snapshot_logs = if rng.unit() < 0.5 { 1000 } else { between(&mut rng, 10, 80) };
        let mut steps = Vec::new();
        let mut t = rng.below(1000);
        while t < fault_ms {
            let (fault, mut dur_ms) = fault(&mut rng, n, servers);
            if matches!(fault, Fault::Crash(_)) && rng.unit() < 0.2 {
                // Now and then down long: past `promote_after` when the config allows.
                dur_ms = between(&mut rng, 100, max_down_ms.max(100));
            }
            steps.push(Step { at_ms: t, dur_ms: dur_ms.min(fault_ms - t + 2000), fault });
            t += 200 + rng.below(4000);
        }
        Plan { offsets_ms, drift_ppm, snapshot_logs, steps }
    }
}

fn between(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.below(hi - lo + 1)
}

fn node_or_leader(rng: &mut Rng, n: usize, servers: usize, leader_p: f64) -> Target {
    if rng.unit() < leader_p {
        Target::Leader
    } else if rng.unit() < 0.8 {
        Target::Node(rng.below(servers as u64) as usize)
    } else {
        Target::Node(rng.below(n as u64) as usize)
    }
}

/// One fault. Partitions and cuts are among every node; pauses and crashes hit servers
/// more often than clients (Raft lives on servers).
fn fault(rng: &mut Rng, n: usize, servers: usize) -> (Fault, u64) {
    let roll = rng.below(100);
    match roll {
        0..25 => {
            // A random non-empty proper subset: a minority or a majority on its own.
            let mut side: Vec<usize> = Vec::new();
            while side.is_empty() || side.len() == n {
                side = (0..n).filter(|_| rng.unit() < 0.5).collect();
            }
            (Fault::Partition { side }, between(rng, 1000, 8000))
        }
        25..40 => (Fault::Isolate(node_or_leader(rng, n, servers, 0.7)), between(rng, 1000, 6000)),
        40..50 => {
            let from = rng.below(n as u64) as usize;
            let to = (from + 1 + rng.below(n as u64 - 1) as usize) % n;
            (Fault::OneWay { from, to }, between(rng, 1000, 6000))
        }
        50..65 => {
            let from = rng.below(n as u64) as usize;
            let to = (from + 1 + rng.below(n as u64 - 1) as usize) % n;
            let p = 0.05 + rng.unit() * 0.45;
            (Fault::Loss { from, to, p }, between(rng, 2000, 10_000))
        }
        65..80 => (Fault::Pause(node_or_leader(rng, n, servers, 0.5)), between(rng, 500, 6000)),
        _ => (Fault::Crash(node_or_leader(rng, n, servers, 0.4)), between(rng, 100, 5000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_a_function_of_its_seed() {
        assert_eq!(Plan::generate(7, 3, 3, 20_000, 5000, 5000), Plan::generate(7, 3, 3, 20_000, 5000, 5000));
        assert_ne!(Plan::generate(7, 3, 3, 20_000, 5000, 5000), Plan::generate(8, 3, 3, 20_000, 5000, 5000));
    }

    #[test]
    fn drift_stays_within_its_bound_and_faults_within_the_phase() {
        for seed in 0..50 {
            let p = Plan::generate(seed, 5, 4, 30_000, 5000, 40_000);
            assert!(p.drift_ppm.iter().all(|d| d.abs() <= 5000));
            assert!(p.steps.iter().all(|s| s.at_ms < 30_000 && s.dur_ms > 0));
            for s in &p.steps {
                if let Fault::Partition { side } = &s.fault {
                    assert!(!side.is_empty() && side.len() < 5);
                }
            }
        }
    }
}
