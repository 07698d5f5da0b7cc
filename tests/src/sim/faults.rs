//! Faults injected into a [`Sim`]: crashes, restarts, leaves, cuts, partitions and pauses.

use super::{Msg, Sim};
use craftmesh_protocol::mesh::MeshCore;
use craftmesh_protocol::wire;

impl Sim {
    /// Crashes node `x`: the host stays up, the process is gone. Its connections are reset
    /// (each peer hears it, maybe after retransmissions) and dials to it are refused.
    pub fn crash(&mut self, x: usize) {
        let h = &mut self.hosts[x];
        h.crashed = true;
        h.paused = false;
        h.held.clear();
        h.deadline = None;
        h.open.clear();
        let conns: Vec<usize> = std::mem::take(&mut h.conns).into_iter().collect();
        for j in conns {
            self.send(x, j, Msg::Closed { attempt: 0 });
        }
    }

    /// Starts node `x` again with what it keeps on disk (its key and record version) and
    /// fresh state otherwise; it finds the others by adverts.
    pub fn restart(&mut self, x: usize) {
        let last = self.hosts[x].core.own_version();
        let key = self.hosts[x].key.clone();
        let h = &mut self.hosts[x];
        h.core = MeshCore::new(key, "sim", self.cfg.clone(), last);
        h.crashed = false;
        h.paused = false;
        h.conns.clear();
        h.open.clear();
        self.boot(x);
    }

    /// Node `x` leaves on SIGTERM: its signed leave goes out; while it winds down, `late`
    /// (which heard a late advert) dials it and lands on the stopping process; then the
    /// process is gone.
    pub fn leave(&mut self, x: usize, late: usize) {
        if let Some(l) = self.hosts[x].core.leave() {
            let bytes = wire::encode(&l);
            let conns: Vec<usize> = self.hosts[x].conns.iter().copied().collect();
            for j in conns {
                self.send(x, j, Msg::Gossip(bytes.clone()));
            }
        }
        let at = self.now + self.net.max_latency_ms + 1;
        self.run_until(at);
        // the late advert: `late` closes its connection and dials again
        if self.hosts[late].conns.remove(&x) {
            self.hosts[x].conns.remove(&late);
            let now = self.now;
            self.hosts[late].core.handle_disconnected(&self.ids[x].clone(), now);
            self.hosts[x].core.handle_disconnected(&self.ids[late].clone(), now);
            self.apply(late);
            self.apply(x);
        }
        self.send(x, late, Msg::Advert);
        let at = self.now + 20;
        self.run_until(at);
        self.crash(x);
    }

    /// Cuts node `x` off the network (or plugs it back in, into the main group).
    pub fn set_cut_off(&mut self, x: usize, cut: bool) {
        self.group[x] = if cut { None } else { Some(0) };
    }

    /// Splits the network: the nodes in `side` can reach each other but not the rest.
    pub fn partition(&mut self, side: &[usize]) {
        for (i, g) in self.group.iter_mut().enumerate() {
            *g = Some(if side.contains(&i) { 1 } else { 0 });
        }
    }

    /// Heals every partition and cut.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = Some(0));
    }

    /// Freezes node `x` (SIGSTOP): it handles nothing and its timers stop, but what is sent
    /// to it waits in its socket buffers.
    pub fn pause(&mut self, x: usize, paused: bool) {
        self.hosts[x].paused = paused;
        if !paused {
            let held = std::mem::take(&mut self.hosts[x].held);
            for d in held {
                self.deliver(d);
            }
        }
        self.rearm(x);
    }
}
