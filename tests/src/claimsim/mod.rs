//! Deterministic simulation of the claims service: the real code (openraft, the claims
//! state machine and its Raft adapter, the log store, the network adapter, the claims
//! actor with its leader duties and cluster formation, and the holders' `LocalLease`) on
//! several nodes in one process, on virtual time, under a seeded schedule of partitions,
//! one-way cuts, asymmetric loss, pauses, crash-restarts with storage kept, clock drift
//! and leader changes. A history checker ([`check`]) then asserts what the claims promise.
//!
//! # How a run is determined by its seed
//!
//! Everything runs on one current-thread tokio runtime with a paused clock (time jumps to
//! the next timer when every task waits) and `rng_seed` from the seed, so `select!` picks
//! branches in a seeded order; openraft's randomness (election timeouts) and the cluster
//! id come from `craftmesh::claims::types::seed_thread_rng(seed)`; the log store and the
//! snapshots write inline (`Io::Inline`, `Durability::Buffered`); the network, the
//! members view, the schedule and the holders draw from SplitMix64 streams of the seed.
//! [`Report::digest`] hashes the whole history; `the_same_seed_replays_the_same_history`
//! (tests/tests/claims_sim.rs) runs seeds twice, on two threads, and compares. Nothing
//! was found to stay nondeterministic: a seed replays bit for bit (same digest) in
//! another run, thread or process. Temp dir names differ, and no path reaches the
//! history. A run that stops virtual time (a task that never waits) is aborted by a
//! wall-clock watchdog that prints the seed and the last events.
//!
//! # What a run does
//!
//! Boot the nodes (servers, then clients) with the mesh already formed, wait for one
//! cluster with a leader (about 3.5 s of virtual time with the default formation window),
//! start the holders ([`holder`]), play the seeded schedule ([`plan`]), heal everything
//! and restart whoever is down, let it settle, tell the holders to stop, and check the
//! history ([`check`]). In half the runs snapshots are taken every 10–80 entries instead
//! of 1000 (`ClaimsOptions::snapshot_logs`), so that they are built, sent and installed.
//!
//! # What the model leaves out
//!
//! - tokio's own timers are undrifted virtual time: Raft heartbeats and elections, the
//!   service's intervals and request deadlines all run at the true rate; only the lease
//!   clock ([`node::SimClock`]) drifts (up to ±0.5% by default, ±2% in a quarter of the
//!   slow runs; the default margin max(100 ms, ttl/20) covers two clocks up to ±2.5%
//!   apart for the leases used, 1–10 s).
//! - A pause (SIGSTOP) cuts the host off and freezes its holders, but the node's own tasks
//!   (its Raft timers among them) keep running: a paused leader keeps stamping and
//!   proposing into a log nobody receives; what a real stopped process would do (nothing,
//!   then act on stale state when it resumes) is only covered for the holders. A frozen
//!   holder's belief interval ends at the pause (a stopped process acts on nothing) and
//!   starts again at the resume only if its first act, polling its lease on the clock
//!   that kept running, says it still holds.
//! - The mesh is not simulated: each node's members view follows the ground truth with the
//!   mesh's detection delays ([`members`]). Processes start with the mesh already formed.
//! - File I/O is real (a temp dir per run, in memory where `/dev/shm` exists), so a disk
//!   that fails or a torn write (a power cut, not a process crash) is not modelled.
//! - Holders are simulated processes, not `craftmesh claim run`: they use the same
//!   `ClaimsHandle::request` the API calls and the same `LocalLease`, but no HTTP.

pub mod check;
mod driver;
pub mod history;
pub mod holder;
pub mod members;
pub mod net;
pub mod node;
pub mod plan;

pub use crate::sim::Rng;
pub use driver::World;

use std::time::Duration;

/// The shape of the runs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Servers (the first `target_voters(servers, 5)` to form vote, the rest learn).
    pub servers: usize,
    /// Client nodes (never in Raft: they forward to the leader); they come after the servers.
    pub clients: usize,
    pub holders_per_node: usize,
    /// How long faults are injected, after the cluster formed (virtual ms).
    pub fault_ms: u64,
    /// After healing everything: how long to let it settle before the holders stop.
    pub settle_ms: u64,
    /// Largest clock rate error of a node, parts per million.
    pub max_drift_ppm: i64,
    /// Longest a crashed node stays down (past `promote_after`, 30 s, a learner replaces
    /// a dead voter).
    pub max_down_ms: u64,
    /// How often a restarted node's first announcement is lost for a peer (that peer then
    /// connects to it 1–3 s late, and sees the old process crashed meanwhile).
    pub lost_announcement: f64,
    /// A harsher members view than the mesh's: a restarted node may still be shown
    /// `crashed` for 1–3 s by a peer that already exchanges claims with it (the mesh lists
    /// a connected peer alive at once). It reaches the early hand-off's race with a
    /// restarted node's new claims, which a new leader's stale view reaches in rare cases.
    pub stale_crash_views: bool,
    /// Lease lengths the holders pick from.
    pub ttl_choices: Vec<u64>,
    /// The checker's own test: holders ignore their local deadline (believe until they
    /// release), which the checker must catch.
    pub broken_holders: bool,
}

impl SimConfig {
    /// What CI runs hundreds of: three servers, 20 s of faults.
    pub fn ci() -> SimConfig {
        SimConfig {
            servers: 3,
            clients: 0,
            holders_per_node: 2,
            fault_ms: 20_000,
            settle_ms: 4_000,
            max_drift_ppm: 5_000,
            max_down_ms: 5_000,
            lost_announcement: 0.2,
            stale_crash_views: false,
            ttl_choices: vec![1000, 2000, 3000, 6000, 10_000],
            broken_holders: false,
        }
    }

    /// The slow runs: five servers and a client, a minute of faults, nodes down for up to
    /// 40 s, more holders.
    pub fn long() -> SimConfig {
        SimConfig { servers: 5, clients: 1, holders_per_node: 3, fault_ms: 60_000, settle_ms: 6_000, max_down_ms: 40_000, ..SimConfig::ci() }
    }

    /// The long shape with 3, 4 or 5 servers (4: a learner that replaces a voter down too
    /// long), 0 or 1 client, and in one run of four clocks drifting up to ±2% (the default
    /// margin of a 3 s lease, 150 ms, covers rates up to ±2.56% apart), by seed.
    pub fn long_for(seed: u64) -> SimConfig {
        let max_drift_ppm = if (seed / 6).is_multiple_of(4) { 20_000 } else { 5_000 };
        SimConfig { servers: 3 + (seed % 3) as usize, clients: ((seed / 3) % 2) as usize, max_drift_ppm, ..SimConfig::long() }
    }

    /// Every node: servers, then clients.
    pub fn nodes(&self) -> usize {
        self.servers + self.clients
    }
}

/// Counts that say how much a run exercised.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Raft log entries between snapshots in this run (`ClaimsOptions::snapshot_logs`).
    pub snapshot_logs: u64,
    pub node_gone: usize,
    /// When the cluster had formed (virtual ms), if it did before the faults began.
    pub formed_ms: Option<u64>,
    pub virtual_ms: u64,
    pub faults: usize,
    pub crashes: usize,
    pub grants: usize,
    pub beliefs: usize,
    pub expiries: usize,
    pub not_held: usize,
    /// Leader changes from one node to another.
    pub leaders: usize,
    pub events: usize,
    pub chunks: u64,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub config: SimConfig,
    /// A hash of the whole history: equal for two runs of one seed.
    pub digest: u64,
    pub violations: Vec<String>,
    /// The last events, for a failure message.
    pub trace: String,
    pub stats: Stats,
    pub wall: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with the seed, what was violated and the trace.
    pub fn assert_ok(&self) {
        if !self.ok() {
            panic!(
                "claims simulation seed {} violated the claims' promises (replay: CRAFTMESH_SIM_SEED={} cargo test -p craftmesh-tests --test claims_sim):\n{}\n--- last events ---\n{}",
                self.seed,
                self.seed,
                self.violations.join("\n"),
                self.trace
            );
        }
    }
}

/// Runs the schedule of `seed` on a fresh runtime (see the module docs).
pub fn run(seed: u64, cfg: &SimConfig) -> Report {
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()))
        .build()
        .expect("a current-thread runtime");
    craftmesh::claims::types::seed_thread_rng(seed);
    let tmp = data_dir();
    let hist = {
        let _in_runtime = rt.enter();
        history::History::new()
    };
    let watchdog = Watchdog::start(seed, hist.clone());
    let mut report = rt.block_on(driver::simulate(seed, cfg.clone(), tmp.path().to_path_buf(), hist));
    drop(watchdog);
    drop(rt);
    report.wall = started.elapsed();
    report
}

/// Aborts the process, with the seed and the last events, when a run takes longer than
/// `CRAFTMESH_SIM_WATCHDOG_SECS` (120) of wall time: on the paused clock a task that
/// never waits (a busy loop in the code under test) stops virtual time, so the run would
/// otherwise hang without a word.
#[derive(Debug)]
struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
}

impl Watchdog {
    fn start(seed: u64, hist: history::History) -> Watchdog {
        let secs = std::env::var("CRAFTMESH_SIM_WATCHDOG_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
                eprintln!(
                    "claims simulation seed {seed}: no end after {secs} s of wall time; virtual time stopped at {} ms (a task that never waits?). Last events:\n{}",
                    hist.last_us() / 1000,
                    hist.tail(80)
                );
                std::process::abort();
            }
        });
        Watchdog { done: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

/// A temp dir for the nodes' files: in memory (`/dev/shm`) where there is one, since a
/// disk's writeback on every atomic rename would make the runs I/O-bound.
fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let b = tempfile::Builder::new().prefix("craftmesh-claimsim-").tempdir_in(shm);
    b.or_else(|_| tempfile::Builder::new().prefix("craftmesh-claimsim-").tempdir()).expect("a temp dir for the nodes' data")
}
