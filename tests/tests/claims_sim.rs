//! Deterministic simulation of the claims service (tests/src/claimsim): the real claims
//! code on several nodes in one process, on virtual time, under seeded partitions, loss,
//! pauses, crash-restarts, clock drift and leader changes; a checker then asserts that no
//! key was ever believed held by more holders than its limit, that tokens of a lock only
//! grow, and that every grant a holder received is in the log.
//!
//! Every failure prints its seed; rerun one with `CRAFTMESH_SIM_SEED=<seed>`.
//! `CRAFTMESH_SIM_SEEDS=<n>` changes how many seeds the CI test runs; `CRAFTMESH_SIM_VERBOSE=1`
//! prints every run's counts and last events.

use craftmesh_tests::claimsim::{self, Report, SimConfig};
use std::time::Instant;

fn replay() -> Option<u64> {
    std::env::var("CRAFTMESH_SIM_SEED").ok().and_then(|s| s.parse().ok())
}

fn count(default: u64) -> u64 {
    std::env::var("CRAFTMESH_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Runs `seeds` (or the replayed one), panicking on the first failure.
fn run_all(name: &str, seeds: impl Iterator<Item = u64>, cfg: &SimConfig) -> Vec<Report> {
    let seeds: Vec<u64> = match replay() {
        Some(s) => vec![s],
        None => seeds.collect(),
    };
    let started = Instant::now();
    let mut reports = Vec::new();
    for seed in seeds {
        let r = claimsim::run(seed, cfg);
        if std::env::var_os("CRAFTMESH_SIM_VERBOSE").is_some() {
            eprintln!("seed {seed}: {:?} in {:?}, digest {:016x}\n{}", r.stats, r.wall, r.digest, r.trace);
        }
        if !r.ok() {
            eprintln!("{name}: seed {seed} FAILED");
        }
        r.assert_ok();
        reports.push(r);
    }
    let grants: usize = reports.iter().map(|r| r.stats.grants).sum();
    let crashes: usize = reports.iter().map(|r| r.stats.crashes).sum();
    let unformed = reports.iter().filter(|r| r.stats.formed_ms.is_none()).count();
    eprintln!(
        "{name}: {} schedules in {:.1} s ({:.1}/s): {grants} grants, {crashes} crashes, {unformed} without a formed cluster before the faults",
        reports.len(),
        started.elapsed().as_secs_f64(),
        reports.len() as f64 / started.elapsed().as_secs_f64()
    );
    reports
}

#[test]
fn five_hundred_schedules_never_let_two_holders_believe_one_lock() {
    let reports = run_all("ci", 1..=count(500), &SimConfig::ci());
    let granted = reports.iter().filter(|r| r.stats.grants > 0).count();
    assert!(replay().is_some() || granted * 10 >= reports.len() * 9, "only {granted} of {} runs granted anything", reports.len());
}

#[test]
fn the_same_seed_replays_the_same_history() {
    let cfg = SimConfig::ci();
    for seed in replay().map(|s| vec![s]).unwrap_or_else(|| vec![3, 17, 4242]) {
        let a = claimsim::run(seed, &cfg);
        let b = claimsim::run(seed, &cfg);
        assert_eq!(a.digest, b.digest, "seed {seed}: two runs differ\n--- first ---\n{}\n--- second ---\n{}", a.trace, b.trace);
        assert!(a.stats.events > 0 && a.stats.grants > 0, "seed {seed}: the run did nothing: {:?}", a.stats);
    }
}

#[test]
#[ignore = "slow: thousands of longer schedules on five servers"]
fn long_schedules_on_five_servers_keep_every_promise() {
    run_all("long", 1_000_001..=1_000_000 + count(2000), &SimConfig::long());
}
