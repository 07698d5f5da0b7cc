//! `bench claims-sim`: how many simulated claims schedules (tests/src/claimsim) run per
//! second, the figure that says how many CI can afford.
//!
//!     cargo run --release -p craftmesh-tests --bin bench -- claims-sim [--runs N] [--first SEED] [--threads T] [--long]
//!         [--servers S] [--lost PERCENT] [--stale-crash-views]
//!
//! `--long` plays the shapes of the slow test (3–5 servers, 0–1 client, a minute of faults).

use super::{Row, percentile, print_table};
use craftmesh_tests::claimsim::{self, Report, SimConfig};
use std::time::Instant;

pub fn run(args: &[String]) {
    let arg =
        |name: &str, default: u64| -> u64 { args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default) };
    let runs = arg("--runs", 200);
    let threads = arg("--threads", 1).max(1);
    let first = arg("--first", 1);
    // Percent of restarted nodes' first announcements lost, per peer (default 20).
    let lost = arg("--lost", 20) as f64 / 100.0;
    let servers = arg("--servers", 0) as usize;
    let stale = args.iter().any(|a| a == "--stale-crash-views");
    let long = args.iter().any(|a| a == "--long");
    let (cfg, shape): (fn(u64) -> SimConfig, &str) = if long {
        (SimConfig::long_for, "3–5 servers and 0–1 client, 60 s of faults, as the slow test")
    } else {
        (|_| SimConfig::ci(), "3 servers, 20 s of faults, as CI")
    };
    let shape = format!(
        "{shape}{}{}{}",
        if servers > 0 { format!("; {servers} servers") } else { String::new() },
        if lost != 0.2 { format!("; {:.0}% of announcements lost", lost * 100.0) } else { String::new() },
        if stale { "; stale crash views" } else { "" }
    );
    eprintln!("running {runs} claims schedules ({shape}) on {threads} thread(s)…");
    let started = Instant::now();
    let reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let shape = |seed| {
                        let c = cfg(seed);
                        SimConfig { lost_announcement: lost, stale_crash_views: stale, servers: if servers > 0 { servers } else { c.servers }, ..c }
                    };
                    (first..first + runs).filter(|seed| seed % threads == t).map(|seed| claimsim::run(seed, &shape(seed))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a bench thread")).collect()
    });
    let total = started.elapsed().as_secs_f64();
    let mut wall: Vec<f64> = reports.iter().map(|r| r.wall.as_secs_f64() * 1000.0).collect();
    wall.sort_by(f64::total_cmp);
    let per_sec = reports.len() as f64 / total;
    let virtual_s: f64 = reports.iter().map(|r| r.stats.virtual_ms as f64 / 1000.0).sum::<f64>() / reports.len().max(1) as f64;
    let failed: Vec<u64> = reports.iter().filter(|r| !r.ok()).map(|r| r.seed).collect();
    let grants: usize = reports.iter().map(|r| r.stats.grants).sum();
    let mut rows = vec![Row {
        figure: format!(
            "claims simulation: {per_sec:.1} schedules/s on {threads} thread(s) ({shape}, {virtual_s:.0} s virtual each); columns: wall per schedule"
        ),
        n: reports.len(),
        median: format!("{:.0} ms", percentile(&wall, 50.0)),
        p99: format!("{:.0} ms", percentile(&wall, 99.0)),
        target: "≥ 20 schedules/s".into(),
        verdict: if per_sec >= 20.0 { "met" } else { "MISSED" },
    }];
    rows.push(Row {
        figure: format!(
            "schedules whose history broke a promise ({grants} grants checked){}",
            if failed.is_empty() { String::new() } else { format!(": seeds {failed:?}") }
        ),
        n: reports.len(),
        median: failed.len().to_string(),
        p99: "-".into(),
        target: "0".into(),
        verdict: if failed.is_empty() { "met" } else { "MISSED" },
    });
    print_table(&rows);
}
