//! Bounded, aged maps for what the LAN tells a node: addresses of peers it has not met yet,
//! nodes of other meshes, outside MCP adverts, and the budget for dialling strangers.
//!
//! Every key here is chosen by whoever sends an advert or a record, so every map has a cap
//! (the oldest entry goes first) and an age after which an entry is dropped.

use std::collections::BTreeMap;

/// Addresses kept per peer.
pub const MAX_ADDRS: usize = 16;

/// What we know of how to reach one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub addrs: Vec<String>,
    /// Last time an advert, record or connection mentioned it.
    pub seen_ms: u64,
    /// Earliest time a discovery dial may be tried again (backoff after failures).
    pub next_dial_ms: u64,
    pub failures: u32,
    /// Whether it ever was connected (then it is a member, and the membership ages it).
    pub met: bool,
}

/// Peer → addresses. Peers never met are capped at `max_strangers` and aged after
/// `stranger_ttl_ms`; met peers are kept until the membership forgets them.
#[derive(Debug, Clone)]
pub struct AddressBook {
    peers: BTreeMap<String, Reach>,
    max_strangers: usize,
    stranger_ttl_ms: u64,
}

/// Backoff of discovery dials to a peer that does not answer: 2 s doubling to 2 min.
fn backoff_ms(failures: u32) -> u64 {
    2_000u64.saturating_mul(1 << failures.min(6)).min(120_000)
}

impl AddressBook {
    pub fn new(max_strangers: usize, stranger_ttl_ms: u64) -> Self {
        AddressBook { peers: BTreeMap::new(), max_strangers, stranger_ttl_ms }
    }

    pub fn get(&self, peer: &str) -> Option<&Reach> {
        self.peers.get(peer)
    }

    /// Addresses of `peer`, empty when unknown.
    pub fn addrs(&self, peer: &str) -> Vec<String> {
        self.peers.get(peer).map(|r| r.addrs.clone()).unwrap_or_default()
    }

    /// Peers never met.
    pub fn strangers(&self) -> usize {
        self.peers.values().filter(|r| !r.met).count()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Adds addresses (deduplicated, at most [`MAX_ADDRS`]); a new stranger may push out the
    /// stranger seen longest ago.
    pub fn learn(&mut self, peer: &str, addrs: impl IntoIterator<Item = String>, now: u64) {
        if !self.peers.contains_key(peer) {
            if self.strangers() >= self.max_strangers {
                let oldest = self.peers.iter().filter(|(_, r)| !r.met).min_by_key(|(_, r)| r.seen_ms).map(|(p, _)| p.clone());
                if let Some(o) = oldest {
                    self.peers.remove(&o);
                }
            }
            self.peers.insert(peer.to_string(), Reach { addrs: Vec::new(), seen_ms: now, next_dial_ms: 0, failures: 0, met: false });
        }
        let r = self.peers.get_mut(peer).expect("inserted above");
        r.seen_ms = r.seen_ms.max(now);
        for a in addrs {
            if r.addrs.len() < MAX_ADDRS && !r.addrs.contains(&a) {
                r.addrs.push(a);
            }
        }
    }

    /// A connection to `peer` was made: it is met, and its dial backoff is reset.
    pub fn met(&mut self, peer: &str, now: u64) {
        self.learn(peer, [], now);
        if let Some(r) = self.peers.get_mut(peer) {
            r.met = true;
            r.failures = 0;
            r.next_dial_ms = 0;
        }
    }

    /// A discovery dial to `peer` failed: back off before the next one.
    pub fn dial_failed(&mut self, peer: &str, now: u64) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.failures = r.failures.saturating_add(1);
            r.next_dial_ms = now + backoff_ms(r.failures);
        }
    }

    /// A discovery dial is being made now.
    pub fn dialling(&mut self, peer: &str, now: u64) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.next_dial_ms = now + backoff_ms(r.failures);
        }
    }

    pub fn forget(&mut self, peer: &str) {
        self.peers.remove(peer);
    }

    /// Strangers not mentioned for `stranger_ttl_ms` are dropped.
    pub fn age(&mut self, now: u64) {
        let ttl = self.stranger_ttl_ms;
        self.peers.retain(|_, r| r.met || now.saturating_sub(r.seen_ms) < ttl);
    }

    /// Strangers (never met, with addresses) whose backoff has passed, longest waiting first.
    pub fn due(&self, now: u64) -> Vec<String> {
        let mut v: Vec<(&u64, &String)> =
            self.peers.iter().filter(|(_, r)| !r.met && !r.addrs.is_empty() && now >= r.next_dial_ms).map(|(p, r)| (&r.next_dial_ms, p)).collect();
        v.sort();
        v.into_iter().map(|(_, p)| p.clone()).collect()
    }
}

/// A token bucket: at most `burst` dials at once, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct DialBudget {
    tokens_milli: u64,
    burst: u64,
    per_sec: u64,
    last_ms: u64,
}

impl DialBudget {
    pub fn new(per_sec: u64, burst: u64) -> Self {
        DialBudget { tokens_milli: burst * 1000, burst, per_sec, last_ms: 0 }
    }

    /// Takes one dial if the budget allows it at `now`.
    pub fn take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now);
        self.tokens_milli = (self.tokens_milli + elapsed.saturating_mul(self.per_sec)).min(self.burst * 1000);
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// Keys last seen at a time, capped (oldest out) and aged: nodes of other meshes, say.
#[derive(Debug, Clone)]
pub struct Seen {
    at: BTreeMap<String, u64>,
    max: usize,
    ttl_ms: u64,
}

impl Seen {
    pub fn new(max: usize, ttl_ms: u64) -> Self {
        Seen { at: BTreeMap::new(), max, ttl_ms }
    }

    pub fn saw(&mut self, key: &str, now: u64) {
        if !self.at.contains_key(key)
            && self.at.len() >= self.max
            && let Some(oldest) = self.at.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            self.at.remove(&oldest);
        }
        self.at.insert(key.to_string(), now);
    }

    pub fn age(&mut self, now: u64) {
        let ttl = self.ttl_ms;
        self.at.retain(|_, t| now.saturating_sub(*t) < ttl);
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_are_capped_oldest_first_and_aged_but_met_peers_stay() {
        let mut b = AddressBook::new(3, 1000);
        b.learn("member", ["/ip4/10.0.0.1/tcp/1".to_string()], 0);
        b.met("member", 0);
        for (i, p) in ["a", "b", "c", "d"].iter().enumerate() {
            b.learn(p, [format!("/ip4/10.0.0.9/tcp/{i}")], 10 + i as u64);
        }
        assert_eq!(b.strangers(), 3);
        assert!(b.get("a").is_none(), "the oldest stranger went first");
        assert!(b.get("member").is_some());
        b.age(5000);
        assert_eq!(b.strangers(), 0);
        assert!(b.get("member").is_some(), "members are aged by the membership, not here");
    }

    #[test]
    fn addresses_are_deduplicated_and_capped() {
        let mut b = AddressBook::new(8, 1000);
        b.learn("p", (0..40).map(|i| format!("/ip4/10.0.0.3/tcp/{}", i % 20)), 0);
        assert_eq!(b.addrs("p").len(), MAX_ADDRS);
    }

    #[test]
    fn failed_discovery_dials_back_off() {
        let mut b = AddressBook::new(8, 1_000_000);
        b.learn("p", ["x".to_string()], 0);
        assert_eq!(b.due(0), vec!["p".to_string()]);
        b.dialling("p", 0);
        b.dial_failed("p", 10);
        assert!(b.due(1000).is_empty());
        assert_eq!(b.due(10 + 4000), vec!["p".to_string()]);
    }

    #[test]
    fn the_dial_budget_refills_at_its_rate() {
        let mut d = DialBudget::new(10, 20);
        let first = (0..100).filter(|_| d.take(0)).count();
        assert_eq!(first, 20, "the burst");
        assert!(!d.take(50), "half a token");
        assert!(d.take(100), "one token after 100 ms at 10/s");
        let later = (0..100).filter(|_| d.take(1100)).count();
        assert_eq!(later, 10, "one second of refill");
    }

    #[test]
    fn seen_keys_are_capped_and_aged() {
        let mut s = Seen::new(2, 100);
        s.saw("a", 0);
        s.saw("b", 1);
        s.saw("c", 2);
        assert_eq!(s.len(), 2);
        s.age(150);
        assert!(s.is_empty());
    }
}
