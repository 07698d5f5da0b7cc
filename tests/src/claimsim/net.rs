//! The simulated network between the nodes of a claims simulation: the real claims code's
//! [`Transport`] and its inbound stream channel, over in-memory byte pipes whose pumps
//! apply the state of each link, per direction, at the moment each chunk is sent.
//!
//! A connection is two `tokio::io::duplex` pipes (one per end) joined by one pump task per
//! direction. A pump reads what its end wrote and delivers it to the other end, in order:
//! - after a base latency of 0.1–1 ms (tokio's timers round it up to whole milliseconds);
//! - a chunk lost (the direction's loss probability) or sent while the direction is down
//!   (a partition, or either host paused) is sent again after a retransmission timeout,
//!   200 ms doubling up to 3.2 s, and everything behind it waits (TCP's head-of-line);
//! - a chunk that could not be delivered for 10 s gives the connection up: both ends see
//!   it close.
//!
//! Streams ride on the mesh's connections: a restarted process has none until the mesh
//! finds its peers again, peer by peer, 20–100 ms after the start, or 1–3 s for a peer
//! whose first mDNS announcement was lost (`SimConfig::lost_announcement`, one in five); until then opening a stream to
//! that peer fails (not connected), and its members view has not seen the process alive.
//! (A connection is otherwise kept: a partition only holds its bytes.)
//!
//! Opening a stream sends a SYN the same way (a partitioned host: no answer, so the open
//! gives up after [`CONNECT_TIMEOUT`]); a host whose process crashed answers with a reset
//! (refused at once); otherwise the new stream reaches the peer's inbound channel and the
//! opener gets its end one round trip later. A crash resets every connection of the node:
//! what it sent before still arrives, then the reset, and nothing reaches it any more.

use super::Rng;
use craftmesh::claims::network::{BoxStream, Transport};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::compat::TokioAsyncReadCompatExt as _;

/// First retransmission timeout; it doubles up to [`MAX_RTO`].
const RTO: Duration = Duration::from_millis(200);
const MAX_RTO: Duration = Duration::from_millis(3200);
/// A chunk undeliverable this long gives its connection up.
const GIVE_UP: Duration = Duration::from_secs(10);
/// How long an open waits for an answer from a host it cannot reach.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a pipe buffers before the writer waits (a snapshot chunk is 1 MiB).
const PIPE: usize = 256 * 1024;

/// What a node's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// Running incarnation `n` (it counts restarts).
    Running(u32),
    /// Crashed; the host is up and refuses connections.
    Crashed,
}

/// Told of every stream opened between two nodes (their connection is up).
pub type OnConnect = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// The ground truth of the simulated LAN.
pub struct Net {
    state: Mutex<State>,
    seed: u64,
    lost_announcement: f64,
    /// Streams open without a mesh connection (`SimConfig::stale_crash_views`).
    ungated: bool,
    on_connect: Mutex<Option<OnConnect>>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("state", &self.state).field("seed", &self.seed).finish()
    }
}

#[derive(Debug)]
struct State {
    ids: Vec<String>,
    index: BTreeMap<String, usize>,
    /// `cuts[from][to]`: how many faults cut that direction now.
    cuts: Vec<Vec<u32>>,
    loss: Vec<Vec<f64>>,
    paused: Vec<bool>,
    procs: Vec<Proc>,
    incoming: Vec<Option<mpsc::Sender<(String, BoxStream)>>>,
    /// `connected[a][b]`: the mesh has a connection between a and b (symmetric).
    connected: Vec<Vec<bool>>,
    conns: BTreeMap<u64, ConnCtl>,
    next_conn: u64,
    opens: u64,
    /// Bytes and chunks delivered (for the bench's curiosity).
    pub chunks: u64,
}

/// A connection's control: which side crashed, or given up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Ctl {
    /// The process at end `a` (or `b`) crashed: it sends nothing more, and gets nothing.
    crashed: [bool; 2],
    aborted: bool,
}

#[derive(Debug)]
struct ConnCtl {
    ends: [usize; 2],
    tx: watch::Sender<Ctl>,
}

impl Net {
    /// A LAN of hosts with these peer ids, every link up, every process down.
    pub fn new(ids: Vec<String>, seed: u64, lost_announcement: f64, ungated: bool) -> Arc<Net> {
        let n = ids.len();
        let index = ids.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        Arc::new(Net {
            state: Mutex::new(State {
                ids,
                index,
                cuts: vec![vec![0; n]; n],
                loss: vec![vec![0.0; n]; n],
                paused: vec![false; n],
                procs: vec![Proc::Crashed; n],
                incoming: (0..n).map(|_| None).collect(),
                connected: vec![vec![true; n]; n],
                conns: BTreeMap::new(),
                next_conn: 0,
                opens: 0,
                chunks: 0,
            }),
            seed,
            lost_announcement,
            ungated,
            on_connect: Mutex::new(None),
        })
    }

    /// Sets what is told of every stream opened.
    pub fn set_on_connect(&self, f: OnConnect) {
        *self.on_connect.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether bytes from `from` reach `to` now (no cut, neither host paused).
    pub fn dir_up(&self, from: usize, to: usize) -> bool {
        let s = self.lock();
        s.cuts[from][to] == 0 && !s.paused[from] && !s.paused[to]
    }

    pub fn proc(&self, i: usize) -> Proc {
        self.lock().procs[i]
    }

    pub fn paused(&self, i: usize) -> bool {
        self.lock().paused[i]
    }

    pub fn chunks(&self) -> u64 {
        self.lock().chunks
    }

    /// Cuts (or, `false`, restores one cut of) the direction `from` → `to`. Cuts count, so
    /// overlapping faults compose.
    pub fn cut(&self, from: usize, to: usize, cut: bool) {
        let mut s = self.lock();
        let c = &mut s.cuts[from][to];
        *c = if cut { *c + 1 } else { c.saturating_sub(1) };
    }

    pub fn set_loss(&self, from: usize, to: usize, p: f64) {
        self.lock().loss[from][to] = p;
    }

    pub fn set_paused(&self, i: usize, paused: bool) {
        self.lock().paused[i] = paused;
    }

    /// Heals every cut and loss and thaws every host.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cuts.iter_mut().flatten().for_each(|c| *c = 0);
        s.loss.iter_mut().flatten().for_each(|p| *p = 0.0);
        s.paused.iter_mut().for_each(|p| *p = false);
    }

    /// Node `i` runs incarnation `inc`, taking inbound streams on `incoming`.
    pub fn start(self: &Arc<Self>, i: usize, inc: u32, incoming: mpsc::Sender<(String, BoxStream)>) {
        let n = {
            let mut s = self.lock();
            s.procs[i] = Proc::Running(inc);
            s.incoming[i] = Some(incoming);
            s.ids.len()
        };
        if inc == 0 {
            return;
        }
        // A restart: the mesh connects to each peer again.
        let mut rng = self.rng(3, i as u64, u64::from(inc));
        for j in (0..n).filter(|j| *j != i) {
            let ms = if rng.unit() < self.lost_announcement { 1000 + rng.below(2001) } else { 20 + rng.below(81) };
            let net = self.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                net.reconnect(i, inc, j);
            });
        }
    }

    /// The mesh of `i` (incarnation `inc`) connects to `j`, if both still run; through a
    /// partition or to a paused host the dial fails and is tried again 1–2 s later.
    fn reconnect(self: &Arc<Self>, i: usize, inc: u32, j: usize) {
        if self.proc(i) != Proc::Running(inc) || !matches!(self.proc(j), Proc::Running(_)) || self.connected(i, j) {
            return;
        }
        if !(self.dir_up(i, j) && self.dir_up(j, i)) {
            let ms = 1000 + self.rng(4, i as u64 * 1000 + j as u64, self.chunks()).below(1001);
            let net = self.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(ms)).await;
                net.reconnect(i, inc, j);
            });
            return;
        }
        {
            let mut s = self.lock();
            s.connected[i][j] = true;
            s.connected[j][i] = true;
        }
        let hook = self.on_connect.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(f) = hook {
            f(i, j);
        }
    }

    /// Whether the mesh has a connection between `a` and `b`.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.lock().connected[a][b]
    }

    /// Node `i`'s process dies: every connection of it is reset.
    pub fn crash(&self, i: usize) {
        let mut s = self.lock();
        s.procs[i] = Proc::Crashed;
        s.incoming[i] = None;
        for j in 0..s.ids.len() {
            s.connected[i][j] = false;
            s.connected[j][i] = false;
        }
        s.conns.retain(|_, c| !c.tx.is_closed());
        for c in s.conns.values() {
            for (side, end) in c.ends.iter().enumerate() {
                if *end == i {
                    c.tx.send_modify(|ctl| ctl.crashed[side] = true);
                }
            }
        }
    }

    /// The transport node `i`'s incarnation `inc` opens streams with.
    pub fn transport(self: &Arc<Self>, i: usize, inc: u32) -> Arc<SimTransport> {
        Arc::new(SimTransport { net: self.clone(), me: i, inc })
    }

    fn rng(&self, salt: u64, a: u64, b: u64) -> Rng {
        let mut r = Rng::new(self.seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let x = r.next_u64() ^ a.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ b.wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng::new(x)
    }

    fn lost(&self, from: usize, to: usize, rng: &mut Rng) -> bool {
        let p = self.lock().loss[from][to];
        p > 0.0 && rng.unit() < p
    }

    /// Sends one segment `from` → `to` with retransmissions; `Err` once `give_up` passed.
    async fn transmit(&self, from: usize, to: usize, rng: &mut Rng, give_up: Duration) -> Result<(), ()> {
        let first = Instant::now();
        let mut rto = RTO;
        loop {
            if self.dir_up(from, to) && !self.lost(from, to, rng) {
                sleep(latency(rng)).await;
                return Ok(());
            }
            if first.elapsed() + rto > give_up {
                sleep(give_up.saturating_sub(first.elapsed())).await;
                return Err(());
            }
            sleep(rto).await;
            rto = (rto * 2).min(MAX_RTO);
        }
    }

    /// A new connection between `a` (the opener) and `b`: returns both user ends.
    fn connect(self: &Arc<Self>, a: usize, b: usize) -> (DuplexStream, DuplexStream) {
        let (ua, pa) = tokio::io::duplex(PIPE);
        let (ub, pb) = tokio::io::duplex(PIPE);
        let (ra, wa) = tokio::io::split(pa);
        let (rb, wb) = tokio::io::split(pb);
        let (tx, rx) = watch::channel(Ctl::default());
        let id = {
            let mut s = self.lock();
            s.next_conn += 1;
            let id = s.next_conn;
            s.conns.insert(id, ConnCtl { ends: [a, b], tx });
            id
        };
        let p = Pump { net: self.clone(), conn: id, from: a, to: b, side: 0, rng: self.rng(1, id, 0), ctl: rx.clone() };
        tokio::spawn(p.run(ra, wb));
        let p = Pump { net: self.clone(), conn: id, from: b, to: a, side: 1, rng: self.rng(1, id, 1), ctl: rx };
        tokio::spawn(p.run(rb, wa));
        (ua, ub)
    }

    fn abort(&self, conn: u64) {
        if let Some(c) = self.lock().conns.remove(&conn) {
            c.tx.send_modify(|ctl| ctl.aborted = true);
        }
    }
}

fn latency(rng: &mut Rng) -> Duration {
    Duration::from_micros(100 + rng.below(901))
}

/// The transport of one incarnation of one node.
#[derive(Debug)]
pub struct SimTransport {
    net: Arc<Net>,
    me: usize,
    inc: u32,
}

impl Transport for SimTransport {
    fn open(&self, peer: &str) -> BoxFuture<'static, io::Result<BoxStream>> {
        let net = self.net.clone();
        let (me, inc) = (self.me, self.inc);
        let target = net.lock().index.get(peer).copied();
        Box::pin(async move {
            let Some(to) = target else { return Err(io::Error::new(io::ErrorKind::NotConnected, "not a member")) };
            let mut rng = {
                let mut s = net.lock();
                s.opens += 1;
                net.rng(2, s.opens, 0)
            };
            let current = |net: &Net| net.proc(me) == Proc::Running(inc);
            if !current(&net) {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "this process is gone"));
            }
            if !net.ungated && !net.connected(me, to) {
                return Err(io::Error::new(io::ErrorKind::NotConnected, "no connection to the peer yet"));
            }
            if net.transmit(me, to, &mut rng, CONNECT_TIMEOUT).await.is_err() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the host"));
            }
            let inbound = match net.proc(to) {
                Proc::Running(_) => net.lock().incoming[to].clone(),
                Proc::Crashed => None,
            };
            let Some(inbound) = inbound else {
                let _ = net.transmit(to, me, &mut rng, CONNECT_TIMEOUT).await;
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused: nothing listens"));
            };
            let (mine, theirs) = net.connect(me, to);
            let from_id = net.lock().ids[me].clone();
            if inbound.try_send((from_id, Box::new(theirs.compat()))).is_err() {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused: the peer takes no streams"));
            }
            if net.transmit(to, me, &mut rng, CONNECT_TIMEOUT).await.is_err() || !current(&net) {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the host"));
            }
            Ok(Box::new(mine.compat()) as BoxStream)
        })
    }
}

/// What a pump carries.
#[derive(Debug)]
enum Seg {
    Data(Vec<u8>),
    /// The sender closed its side.
    Fin,
    /// The sender's process died.
    Reset,
}

/// One direction of one connection.
struct Pump {
    net: Arc<Net>,
    conn: u64,
    from: usize,
    to: usize,
    /// Which end `from` is (0: the opener).
    side: usize,
    rng: Rng,
    ctl: watch::Receiver<Ctl>,
}

impl Pump {
    async fn run(mut self, mut src: ReadHalf<DuplexStream>, mut dst: WriteHalf<DuplexStream>) {
        let mut q: VecDeque<(Instant, Seg)> = VecDeque::new();
        let mut reading = true;
        let mut buf = vec![0u8; 64 * 1024];
        // The head segment's next attempt, its current RTO, its first attempt.
        let mut head: Option<(Instant, Duration, Instant)> = None;
        // The previous segment's delivery: nothing overtakes it.
        let mut last_at = Instant::now();
        loop {
            let ctl = *self.ctl.borrow_and_update();
            if ctl.aborted {
                return;
            }
            let receiver_dead = ctl.crashed[1 - self.side];
            if ctl.crashed[self.side] && reading {
                reading = false;
                q.push_back((Instant::now(), Seg::Reset));
            }
            if receiver_dead {
                q.clear();
                head = None;
            }
            if head.is_none()
                && let Some((sent, _)) = q.front()
            {
                head = Some(((*sent).max(last_at), RTO, *sent));
            }
            if !reading && q.is_empty() && !receiver_dead {
                return;
            }
            let wake = head.map(|h| h.0);
            tokio::select! {
                changed = self.ctl.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                n = src.read(&mut buf), if reading => match n {
                    Ok(0) | Err(_) => {
                        reading = false;
                        if !receiver_dead {
                            q.push_back((Instant::now(), Seg::Fin));
                        }
                    }
                    Ok(n) => {
                        if !receiver_dead {
                            q.push_back((Instant::now(), Seg::Data(buf[..n].to_vec())));
                        }
                    }
                },
                () = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    let Some((at, rto, first)) = head else { continue };
                    if self.net.dir_up(self.from, self.to) && !self.net.lost(self.from, self.to, &mut self.rng) {
                        let deliver = (at + latency(&mut self.rng)).max(last_at);
                        sleep_until(deliver).await;
                        last_at = deliver;
                        head = None;
                        if *self.ctl.borrow() != ctl {
                            // A crash or an abort came while the segment was on the wire.
                            continue;
                        }
                        let Some((_, seg)) = q.pop_front() else { continue };
                        self.net.lock().chunks += 1;
                        match seg {
                            Seg::Data(d) => {
                                if dst.write_all(&d).await.is_err() {
                                    // The receiver dropped its end: a reset back.
                                    self.net.abort(self.conn);
                                    return;
                                }
                            }
                            Seg::Fin => {
                                let _ = dst.shutdown().await;
                            }
                            Seg::Reset => {
                                self.net.abort(self.conn);
                                return;
                            }
                        }
                    } else if (at + rto).saturating_duration_since(first) > GIVE_UP {
                        self.net.abort(self.conn);
                        return;
                    } else {
                        head = Some((at + rto, (rto * 2).min(MAX_RTO), first));
                    }
                }
            }
        }
    }
}
