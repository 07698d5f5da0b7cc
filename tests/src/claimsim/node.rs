//! One simulated node: the real claims service (`craftmesh::claims::start`) on a data dir
//! kept across crash-restarts, a drifting boot clock, the simulated network and members,
//! and the holders that use it.
//!
//! A crash is instant: the process's connections reset, its holders stop believing and
//! die with it (as `claim run` kills its child when its node goes), and the data dir is
//! copied as it is at that instant for the next incarnation (with `Durability::Buffered`
//! every acknowledged write is in the file, as the page cache keeps it when a process
//! dies). The dead incarnation is then told to shut down; it can no longer reach anyone
//! (its transport and streams are dead) and writes only to its own, abandoned copy.

use super::holder::{self, HolderCfg};
use super::{World, net::Proc};
use craftmesh::claims::clock::Clock;
use craftmesh::claims::service::{ClaimsHandle, ClaimsOptions};
use craftmesh::claims::store::{Durability, Io};
use craftmesh_protocol::claims::cluster::Role;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A boot clock that runs `ppm` parts per million fast (or slow) from `offset_ms`:
/// virtual elapsed time × (1 + drift) + offset. tokio's own timers (openraft's, the
/// service's) stay on undrifted virtual time: only lease times read this clock.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    offset_ms: u64,
    ppm: i64,
}

impl SimClock {
    pub fn new(start: Instant, offset_ms: u64, ppm: i64) -> SimClock {
        SimClock { start, offset_ms, ppm }
    }

    pub fn ppm(&self) -> i64 {
        self.ppm
    }

    /// What the clock shows at true instant `t`.
    pub fn at(&self, t: Instant) -> u64 {
        let us = t.saturating_duration_since(self.start).as_micros() as i128;
        let scaled = us * (1_000_000 + self.ppm as i128) / 1_000_000;
        self.offset_ms + (scaled / 1000) as u64
    }

    /// The earliest true instant at which the clock shows `ms` (or later).
    pub fn instant_of(&self, ms: u64) -> Instant {
        let Some(need) = ms.checked_sub(self.offset_ms) else { return self.start };
        let need_us = need as i128 * 1000;
        let rate = 1_000_000 + self.ppm as i128;
        let true_us = (need_us * 1_000_000 + rate - 1) / rate;
        self.start + std::time::Duration::from_micros(true_us as u64)
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.at(Instant::now())
    }
}

/// A running incarnation.
#[derive(Debug)]
struct Live {
    handle: ClaimsHandle,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    holders: Vec<JoinHandle<()>>,
    /// Cleared at the crash: a dead process reports nothing.
    alive: Arc<AtomicBool>,
}

/// One node of the simulation.
#[derive(Debug)]
pub struct SimNode {
    pub idx: usize,
    pub peer: String,
    pub role: Role,
    pub clock: Arc<SimClock>,
    /// Raft entries between snapshots.
    pub snapshot_logs: u64,
    /// Incarnation: restarts so far.
    pub inc: u32,
    dir: PathBuf,
    paused: watch::Sender<bool>,
    live: Option<Live>,
}

impl SimNode {
    pub fn new(idx: usize, peer: String, role: Role, clock: Arc<SimClock>, snapshot_logs: u64, root: &Path) -> SimNode {
        SimNode { idx, peer, role, clock, snapshot_logs, inc: 0, dir: root.join(format!("node{idx}.0")), paused: watch::channel(false).0, live: None }
    }

    pub fn handle(&self) -> Option<&ClaimsHandle> {
        self.live.as_ref().map(|l| &l.handle)
    }

    pub fn is_running(&self) -> bool {
        self.live.is_some()
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Starts the current incarnation on its data dir.
    pub async fn boot(&mut self, w: &World) {
        let (inc, idx) = (self.inc, self.idx);
        let mut opts = ClaimsOptions::new(&self.dir, self.role);
        opts.durability = Durability::Buffered;
        opts.io = Io::Inline;
        opts.snapshot_logs = self.snapshot_logs;
        let (in_tx, in_rx) = tokio::sync::mpsc::channel(64);
        w.net.start(idx, inc, in_tx);
        if inc > 0 {
            w.members.restarted(idx, &w.net);
        }
        let alive = Arc::new(AtomicBool::new(true));
        let (hist, flag) = (w.hist.clone(), alive.clone());
        let wiring = craftmesh::claims::Wiring {
            opts,
            me: self.peer.clone(),
            clock: self.clock.clone(),
            transport: w.net.transport(idx, inc),
            incoming: in_rx,
            members: w.members.subscribe(idx),
            events: Arc::new(move |e| {
                if flag.load(Ordering::Relaxed) {
                    hist.node_event(idx, inc, e);
                }
            }),
        };
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (handle, task) = craftmesh::claims::start(wiring, async move {
            let _ = stop_rx.await;
        })
        .await
        .expect("the claims service starts");
        w.members.update(&w.net);
        w.hist.sched(format!("node {idx}.{inc} up"));
        self.live = Some(Live { handle, stop: Some(stop_tx), task, holders: Vec::new(), alive });
    }

    /// Starts this node's holders (on the current incarnation).
    pub fn spawn_holders(&mut self, w: &World, count: usize, stop: &watch::Receiver<bool>) {
        let Some(live) = self.live.as_mut() else { return };
        for slot in 0..count {
            let cfg = HolderCfg {
                name: format!("{}.{}.h{slot}", self.idx, self.inc),
                node: self.idx,
                handle: live.handle.clone(),
                clock: self.clock.clone(),
                hist: w.hist.clone(),
                paused: self.paused.subscribe(),
                stop: stop.clone(),
                seed: w.seed ^ ((self.idx as u64) << 40) ^ ((self.inc as u64) << 20) ^ slot as u64,
                ttl_choices: w.cfg.ttl_choices.clone(),
                broken: w.cfg.broken_holders,
            };
            live.holders.push(tokio::spawn(holder::run(cfg)));
        }
    }

    /// The process dies now (see the module docs).
    pub fn crash(&mut self, w: &World) {
        let Some(mut live) = self.live.take() else { return };
        live.alive.store(false, Ordering::Relaxed);
        w.net.crash(self.idx);
        for h in live.holders.drain(..) {
            h.abort();
        }
        w.hist.stop_node(self.idx, "crash");
        let next = self.dir.with_file_name(format!("node{}.{}", self.idx, self.inc + 1));
        copy_dir(&self.dir, &next).expect("copy the data dir of a crashed node");
        self.dir = next;
        self.inc += 1;
        if let Some(stop) = live.stop.take() {
            let _ = stop.send(());
        }
        // The zombie winds down on its own; nothing waits for it.
        drop(live.task);
        w.members.update(&w.net);
        w.hist.sched(format!("node {} crashed", self.idx));
        self.set_paused(false);
    }

    /// SIGSTOP (`true`) or SIGCONT: the host is cut off and its holders freeze.
    pub fn pause(&mut self, w: &World, on: bool) {
        if on == self.is_paused() {
            return;
        }
        w.net.set_paused(self.idx, on);
        if on {
            w.hist.stop_node(self.idx, "frozen");
        }
        self.set_paused(on);
        w.members.update(&w.net);
        w.hist.sched(format!("node {} {}", self.idx, if on { "paused" } else { "resumed" }));
    }

    fn set_paused(&self, on: bool) {
        self.paused.send_if_modified(|p| std::mem::replace(p, on) != on);
    }

    /// Asks a running incarnation to stop (end of run).
    pub async fn shutdown(&mut self) {
        if let Some(mut live) = self.live.take() {
            for h in live.holders.drain(..) {
                h.abort();
            }
            if let Some(stop) = live.stop.take() {
                let _ = stop.send(());
            }
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), live.task).await;
        }
    }

    /// Whether the net believes this incarnation runs (a consistency check).
    pub fn net_proc_matches(&self, w: &World) -> bool {
        match w.net.proc(self.idx) {
            Proc::Running(i) => self.live.is_some() && i == self.inc,
            Proc::Crashed => self.live.is_none(),
        }
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    if !from.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}
