//! Everything a simulation run records, in true virtual time (microseconds since the run
//! started): what the schedule did, what every node's claims service reported, what every
//! holder received and when it believed it held a key.

use craftmesh::claims::ClaimsEvent;
use craftmesh_protocol::claims::ChangeKind;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// One recorded event.
#[derive(Debug, Clone)]
pub enum Ev {
    /// What the schedule did (a fault, its end, a restart...).
    Sched(String),
    /// A claim event reported by node `node` (incarnation `inc`).
    Claim { node: usize, inc: u32, change: ChangeKind, key: String, token: u64, holder_node: String, session: String, cluster: String },
    /// A cluster event reported by a node.
    Cluster { node: usize, inc: u32, change: String, cluster: Option<String>, term: u64, leader: Option<u64> },
    /// A holder received a grant.
    Granted { holder: String, key: String, token: u64, session: String, cluster: String },
    /// A holder began believing it holds `key` (belief `id`).
    Believes { id: usize, holder: String, key: String, token: u64 },
    /// A holder stopped believing.
    Stops { id: usize, why: &'static str },
    /// A holder's request failed or was refused (kept short).
    Note { holder: String, what: String },
}

/// One interval in which a holder believed it held a key.
#[derive(Debug, Clone)]
pub struct Belief {
    pub node: usize,
    pub holder: String,
    pub key: String,
    pub limit: u32,
    pub token: u64,
    pub session: String,
    pub cluster: String,
    pub start_us: u64,
    /// `None` while it lasts.
    pub end_us: Option<u64>,
    pub why: &'static str,
}

/// A grant a holder received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub key: String,
    pub token: u64,
    pub session: String,
    pub cluster: String,
    pub at_us: u64,
}

/// The record of a run.
#[derive(Debug, Default)]
pub struct Record {
    pub events: Vec<(u64, Ev)>,
    pub beliefs: Vec<Belief>,
    pub grants: Vec<Grant>,
}

/// The shared, append-only history of a run.
#[derive(Debug, Clone)]
pub struct History {
    start: Instant,
    rec: Arc<Mutex<Record>>,
}

impl History {
    pub fn new() -> History {
        History { start: Instant::now(), rec: Arc::new(Mutex::new(Record::default())) }
    }

    /// True virtual time since the start of the run, in µs.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn lock(&self) -> MutexGuard<'_, Record> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, ev: Ev) {
        let t = self.now_us();
        self.lock().events.push((t, ev));
    }

    pub fn sched(&self, what: impl Into<String>) {
        self.push(Ev::Sched(what.into()));
    }

    /// Records what a node's claims service reported.
    pub fn node_event(&self, node: usize, inc: u32, e: ClaimsEvent) {
        match e {
            ClaimsEvent::Claim(c) => {
                self.push(Ev::Claim { node, inc, change: c.change, key: c.key, token: c.token, holder_node: c.node, session: c.session, cluster: c.cluster })
            }
            ClaimsEvent::Cluster(c) => {
                self.push(Ev::Cluster { node, inc, change: c.change, cluster: c.cluster, term: c.term, leader: c.leader.map(|l| l.node) })
            }
        }
    }

    pub fn granted(&self, holder: &str, g: Grant) {
        let t = self.now_us();
        let mut r = self.lock();
        r.events
            .push((t, Ev::Granted { holder: holder.to_string(), key: g.key.clone(), token: g.token, session: g.session.clone(), cluster: g.cluster.clone() }));
        r.grants.push(g);
    }

    /// Opens a belief interval now; returns its id.
    pub fn believe(&self, b: Belief) -> usize {
        let t = self.now_us();
        let mut r = self.lock();
        let id = r.beliefs.len();
        r.events.push((t, Ev::Believes { id, holder: b.holder.clone(), key: b.key.clone(), token: b.token }));
        r.beliefs.push(Belief { start_us: t, end_us: None, ..b });
        id
    }

    /// Closes belief `id` now (if still open).
    pub fn stop(&self, id: usize, why: &'static str) {
        let t = self.now_us();
        let mut r = self.lock();
        if let Some(b) = r.beliefs.get_mut(id)
            && b.end_us.is_none()
        {
            b.end_us = Some(t);
            b.why = why;
            r.events.push((t, Ev::Stops { id, why }));
        }
    }

    /// When the last event was recorded (readable from outside the runtime).
    pub fn last_us(&self) -> u64 {
        self.lock().events.last().map_or(0, |e| e.0)
    }

    pub fn is_open(&self, id: usize) -> bool {
        self.lock().beliefs.get(id).is_some_and(|b| b.end_us.is_none())
    }

    /// Closes every open belief of node `node` (it crashed, or froze).
    pub fn stop_node(&self, node: usize, why: &'static str) {
        let open: Vec<usize> = self.lock().beliefs.iter().enumerate().filter(|(_, b)| b.node == node && b.end_us.is_none()).map(|(i, _)| i).collect();
        for id in open {
            self.stop(id, why);
        }
    }

    /// A digest of the whole history (FNV-1a over its text): equal digests, equal runs.
    pub fn digest(&self) -> u64 {
        let r = self.lock();
        let mut h = Fnv::default();
        for (t, e) in &r.events {
            h.write(format!("{t} {e:?}\n").as_bytes());
        }
        for b in &r.beliefs {
            h.write(format!("{b:?}\n").as_bytes());
        }
        h.0
    }

    /// The last `n` events, one a line.
    pub fn tail(&self, n: usize) -> String {
        let r = self.lock();
        let skip = r.events.len().saturating_sub(n);
        r.events.iter().skip(skip).map(|(t, e)| format!("{:>10.3} ms  {}\n", *t as f64 / 1000.0, Show(e))).collect()
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// FNV-1a, 64 bits: small and stable across builds (unlike `DefaultHasher`).
#[derive(Debug)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Short ids in traces.
fn short(s: &str) -> &str {
    s.get(s.len().saturating_sub(6)..).unwrap_or(s)
}

struct Show<'a>(&'a Ev);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ev::Sched(s) => write!(f, "schedule: {s}"),
            Ev::Claim { node, inc, change, key, token, holder_node, session, cluster } => {
                write!(f, "node {node}.{inc} applied {change:?} {key} token {token} ({}/{session}) in {}", short(holder_node), short(cluster))
            }
            Ev::Cluster { node, inc, change, cluster, term, leader } => {
                write!(f, "node {node}.{inc} cluster {change} {} term {term} leader {leader:?}", cluster.as_deref().map(short).unwrap_or("-"))
            }
            Ev::Granted { holder, key, token, session, cluster } => write!(f, "holder {holder} got {key} token {token} ({session}) in {}", short(cluster)),
            Ev::Believes { id, holder, key, token } => write!(f, "holder {holder} believes {key} token {token} (belief {id})"),
            Ev::Stops { id, why } => write!(f, "belief {id} ends: {why}"),
            Ev::Note { holder, what } => write!(f, "holder {holder}: {what}"),
        }
    }
}
