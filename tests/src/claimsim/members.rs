//! What each node's mesh tells its claims service about the others (`Members`), driven by
//! the simulation's ground truth with the mesh's detection delays: a crashed process is
//! seen dead and `crashed` after 30–80 ms (its connection resets and a redial is refused),
//! a host cut off or paused is seen dead after 1.1–1.4 s of failed probes (not `crashed`:
//! a partition looks the same), and a peer reachable again is alive after 20–100 ms (the
//! mesh marks a member alive when its connection is up, which is also when claims traffic
//! can flow again). A restarted process is seen alive when the mesh connects to it again
//! (a few ms after [`super::net`] says so, as the mesh's `handle_connected` does): an
//! observer whose connection comes late (a lost mDNS announcement) still sees the old
//! process `crashed` meanwhile, while others already talk to the new one. A restarted
//! observer starts with an empty list, as a fresh mesh does: it lists a peer when it
//! connects to it, or when its own dial is refused (`crashed`) or unanswered (dead).
//! A truth that changes back before its delay ran out is never shown.

use super::Rng;
use super::net::{Net, Proc};
use craftmesh::claims::Liveness;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The members watch of every node, and what each currently shows.
#[derive(Debug)]
pub struct MembersSim {
    ids: Vec<String>,
    txs: Vec<watch::Sender<craftmesh::claims::Members>>,
    /// `[observer][peer]`.
    views: Mutex<Vec<Vec<View>>>,
    rng: Mutex<Rng>,
    /// `SimConfig::stale_crash_views`.
    stale: bool,
}

/// (shown, target, generation of the target); `None`: not listed.
type View = (Option<Liveness>, Option<Liveness>, u64);

const ALIVE: Liveness = Liveness { alive: true, crashed: false };

impl MembersSim {
    /// Everyone sees everyone alive (the mesh found them before the run).
    pub fn new(ids: Vec<String>, seed: u64, stale: bool) -> Arc<MembersSim> {
        let n = ids.len();
        let txs = (0..n)
            .map(|i| {
                let map: BTreeMap<String, Liveness> = ids.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, id)| (id.clone(), ALIVE)).collect();
                watch::channel(Arc::new(map)).0
            })
            .collect();
        Arc::new(MembersSim {
            ids,
            txs,
            views: Mutex::new(vec![vec![(Some(ALIVE), Some(ALIVE), 0); n]; n]),
            rng: Mutex::new(Rng::new(seed ^ 0x6d65_6d62)),
            stale,
        })
    }

    /// The watch a new incarnation of node `i` takes.
    pub fn subscribe(&self, i: usize) -> watch::Receiver<craftmesh::claims::Members> {
        self.txs[i].subscribe()
    }

    /// Observer `i` restarted: its mesh lists nobody until it finds them again.
    pub fn restarted(self: &Arc<Self>, i: usize, net: &Net) {
        {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            for v in views[i].iter_mut() {
                *v = (None, None, v.2 + 1);
            }
            self.txs[i].send_replace(Arc::new(BTreeMap::new()));
        }
        self.update(net);
    }

    /// What observer `i` should come to see about `j` now.
    fn truth(net: &Net, i: usize, j: usize) -> Liveness {
        let reachable = net.dir_up(i, j) && net.dir_up(j, i);
        match net.proc(j) {
            Proc::Crashed if reachable => Liveness { alive: false, crashed: true },
            Proc::Running(_) if reachable => ALIVE,
            _ => Liveness { alive: false, crashed: false },
        }
    }

    /// Re-reads the ground truth after a change and schedules what observers will see.
    pub fn update(self: &Arc<Self>, net: &Net) {
        let n = self.ids.len();
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..n {
            for j in (0..n).filter(|j| *j != i) {
                let truth = Self::truth(net, i, j);
                let v = &mut views[i][j];
                if v.1 == Some(truth) {
                    continue;
                }
                v.1 = Some(truth);
                v.2 += 1;
                if v.0 == Some(truth) {
                    continue;
                }
                if truth.alive && !net.connected(i, j) && !self.stale {
                    // Shown when the mesh connects (`connected`).
                    continue;
                }
                let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
                let delay = match (truth.alive, truth.crashed) {
                    (true, _) if self.stale && v.0.is_some_and(|l| l.crashed) && rng.unit() < 0.2 => 1000 + rng.below(2001),
                    (true, _) => 20 + rng.below(81),
                    (false, true) => 30 + rng.below(51),
                    (false, false) => 1100 + rng.below(301),
                };
                let (me, generation) = (self.clone(), v.2);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    me.show(i, j, generation);
                });
            }
        }
    }

    /// The mesh connected `a` and `b`: each sees the other alive within a few
    /// milliseconds (the driver passing the news on) when it is reachable.
    pub fn connected(self: &Arc<Self>, net: &Net, a: usize, b: usize) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        if self.stale {
            return;
        }
        for (i, j) in [(a, b), (b, a)] {
            let truth = Self::truth(net, i, j);
            let v = &mut views[i][j];
            if !truth.alive || v.0 == Some(truth) {
                continue;
            }
            v.1 = Some(truth);
            v.2 += 1;
            let delay = 1 + self.rng.lock().unwrap_or_else(|p| p.into_inner()).below(5);
            let (me, generation) = (self.clone(), v.2);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                me.show(i, j, generation);
            });
        }
    }

    fn show(&self, i: usize, j: usize, generation: u64) {
        let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
        let v = &mut views[i][j];
        if v.2 != generation || v.0 == v.1 {
            return;
        }
        v.0 = v.1;
        let map: BTreeMap<String, Liveness> = (0..self.ids.len()).filter(|k| *k != i).filter_map(|k| views[i][k].0.map(|l| (self.ids[k].clone(), l))).collect();
        self.txs[i].send_replace(Arc::new(map));
    }

    /// What observer `i` shows about `j` now (`None`: not listed).
    pub fn shown(&self, i: usize, j: usize) -> Option<Liveness> {
        self.views.lock().unwrap_or_else(|p| p.into_inner())[i][j].0
    }
}
