//! The mesh's view of node records and the merge rule: newest valid version wins;
//! bad signatures, other meshes, stale versions and replays after a leave are rejected.
//!
//! Merging is order-independent and idempotent (see the property tests), so records may
//! arrive by gossip, by full sync, twice, or out of order.

use crate::wire::{self, NodeRecord, SignedLeave, SignedRecord, VerifyError};
use std::collections::BTreeMap;

/// A verified record and the signed bytes it came in (kept for relaying in syncs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub record: NodeRecord,
    pub signed: SignedRecord,
}

/// What a merge did, and for which peer (look the record up with [`Records::get`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// First record seen from this peer.
    New { peer: String },
    /// A newer version replaced `previous`.
    Updated { peer: String, previous: u64 },
}

impl Merged {
    pub fn peer(&self) -> &str {
        match self {
            Merged::New { peer } | Merged::Updated { peer, .. } => peer,
        }
    }
}

/// Why a record was not merged. State is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    #[error("version {got} is not newer than known version {have}")]
    Stale { have: u64, got: u64 },
    #[error("peer left at version {left}; version {got} is a replay")]
    AfterLeave { left: u64, got: u64 },
    #[error("a record about ourselves from elsewhere")]
    Own,
}

/// Records of every known peer of one mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    mesh_id: String,
    self_id: String,
    entries: BTreeMap<String, Entry>,
    /// Peer → (version at which it left, when we learned it); older or equal records are
    /// replays. Capped and aged by [`Records::prune_leaves`].
    left: BTreeMap<String, (u64, u64)>,
}

impl Records {
    pub fn new(mesh_id: impl Into<String>, self_id: impl Into<String>) -> Self {
        Records { mesh_id: mesh_id.into(), self_id: self_id.into(), entries: BTreeMap::new(), left: BTreeMap::new() }
    }

    pub fn mesh_id(&self) -> &str {
        &self.mesh_id
    }

    /// Verifies and merges a signed record.
    pub fn merge(&mut self, signed: &SignedRecord) -> Result<Merged, Rejected> {
        let record = wire::verify_record(signed, &self.mesh_id)?;
        if record.peer_id == self.self_id {
            return Err(Rejected::Own);
        }
        if let Some(&(l, _)) = self.left.get(&record.peer_id)
            && record.version <= l
        {
            return Err(Rejected::AfterLeave { left: l, got: record.version });
        }
        match self.entries.get(&record.peer_id) {
            Some(e) if e.record.version >= record.version => Err(Rejected::Stale { have: e.record.version, got: record.version }),
            Some(e) => {
                let previous = e.record.version;
                let peer = record.peer_id.clone();
                self.left.remove(&peer);
                self.entries.insert(peer.clone(), Entry { record, signed: signed.clone() });
                Ok(Merged::Updated { peer, previous })
            }
            None => {
                let peer = record.peer_id.clone();
                self.left.remove(&peer);
                self.entries.insert(peer.clone(), Entry { record, signed: signed.clone() });
                Ok(Merged::New { peer })
            }
        }
    }

    /// Applies a verified leave: the peer's record is dropped and older records become replays.
    pub fn leave(&mut self, l: &SignedLeave, now: u64) -> Result<bool, Rejected> {
        wire::verify_leave(l, &self.mesh_id)?;
        if l.peer_id == self.self_id {
            return Err(Rejected::Own);
        }
        if let Some(e) = self.entries.get(&l.peer_id)
            && e.record.version > l.version
        {
            return Err(Rejected::Stale { have: e.record.version, got: l.version });
        }
        let prev = self.left.get(&l.peer_id).map(|x| x.0).unwrap_or(0);
        self.left.insert(l.peer_id.clone(), (prev.max(l.version), now));
        Ok(self.entries.remove(&l.peer_id).is_some())
    }

    /// Bounds what leaves remember: those older than `max_age_ms` are forgotten, and of the
    /// rest at most `max` (the newest) are kept. A peer chooses its own id, so a stream of
    /// signed leaves from fresh ids must not grow this without end.
    pub fn prune_leaves(&mut self, now: u64, max_age_ms: u64, max: usize) {
        self.left.retain(|_, (_, at)| now.saturating_sub(*at) < max_age_ms);
        if self.left.len() > max {
            let mut by_age: Vec<(u64, String)> = self.left.iter().map(|(p, (_, at))| (*at, p.clone())).collect();
            by_age.sort();
            for (_, p) in by_age.into_iter().take(self.left.len() - max) {
                self.left.remove(&p);
            }
        }
    }

    /// How many leaves are remembered.
    pub fn leaves(&self) -> usize {
        self.left.len()
    }

    pub fn get(&self, peer: &str) -> Option<&Entry> {
        self.entries.get(peer)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (peer, version) of everything known, for a sync request.
    pub fn summary(&self) -> Vec<(String, u64)> {
        self.entries.values().map(|e| (e.record.peer_id.clone(), e.record.version)).collect()
    }

    /// Of the `connected` peers, those with no record here, in the given order. They are asked
    /// for a sync again (anti-entropy): a peer that answered the first sync before it had a
    /// record of its own, and published it by gossip before it knew who subscribed, leaves
    /// such a gap; so does a record that was dropped by a leave if the node then runs again.
    pub fn lacking<'a>(&self, connected: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        connected.into_iter().filter(|p| *p != self.self_id && !self.entries.contains_key(*p)).collect()
    }

    /// One page of what the asker lacks or has older versions of, given its summary (the
    /// asker's own record excluded): `first` (our own record, if the asker lacks it) and then
    /// known records, until `budget` bytes on the wire. Returns the page and whether more is
    /// left. A page holds at least one record when any is due, so paging always progresses.
    pub fn page(&self, have: &[(String, u64)], asker: &str, first: Option<(&SignedRecord, u64)>, budget: usize) -> (Vec<SignedRecord>, bool) {
        let have: BTreeMap<&str, u64> = have.iter().map(|(p, v)| (p.as_str(), *v)).collect();
        let own = first.filter(|(_, version)| have.get(self.self_id.as_str()).is_none_or(|v| version > v)).map(|(s, _)| s);
        let due = own.into_iter().chain(
            self.entries
                .values()
                .filter(|e| e.record.peer_id != asker)
                .filter(|e| have.get(e.record.peer_id.as_str()).is_none_or(|v| *v < e.record.version))
                .map(|e| &e.signed),
        );
        let mut out = Vec::new();
        let mut used = 0usize;
        for s in due {
            let size = wire::record_wire_size(s);
            if !out.is_empty() && used + size > budget {
                return (out, true);
            }
            used += size;
            out.push(s.clone());
        }
        (out, false)
    }

    /// Drops a peer's record (e.g. declared dead long ago).
    pub fn forget(&mut self, peer: &str) -> bool {
        self.entries.remove(peer).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Capacity, sign_leave, sign_record};
    use libp2p_identity::Keypair;
    use proptest::prelude::*;

    fn rec(k: &Keypair, version: u64, mesh: &str) -> SignedRecord {
        let r = NodeRecord {
            peer_id: k.public().to_peer_id().to_base58(),
            mesh_id: mesh.into(),
            version,
            issued_at_ms: version,
            name: format!("n{version}"),
            addrs: vec![],
            api_port: 1,
            services: vec![],
            capacity: Capacity::default(),
            tags: vec![],
            software_version: "t".into(),
        };
        sign_record(&r, k).expect("sign")
    }

    #[test]
    fn newest_version_wins_and_stale_is_rejected() {
        let k = Keypair::generate_ed25519();
        let mut r = Records::new("m", "self");
        let pid = k.public().to_peer_id().to_base58();
        assert_eq!(r.merge(&rec(&k, 2, "m")), Ok(Merged::New { peer: pid.clone() }));
        assert_eq!(r.merge(&rec(&k, 1, "m")), Err(Rejected::Stale { have: 2, got: 1 }));
        assert_eq!(r.merge(&rec(&k, 2, "m")), Err(Rejected::Stale { have: 2, got: 2 }));
        assert_eq!(r.merge(&rec(&k, 5, "m")), Ok(Merged::Updated { peer: pid, previous: 2 }));
        assert!(matches!(r.merge(&rec(&k, 9, "other")), Err(Rejected::Invalid(VerifyError::OtherMesh(_)))));
    }

    #[test]
    fn records_after_a_leave_are_replays_until_a_newer_version() {
        let k = Keypair::generate_ed25519();
        let pid = k.public().to_peer_id().to_base58();
        let mut r = Records::new("m", "self");
        r.merge(&rec(&k, 3, "m")).expect("merge");
        assert_eq!(r.leave(&sign_leave(&pid, "m", 3, &k).expect("sign"), 0), Ok(true));
        assert_eq!(r.merge(&rec(&k, 3, "m")), Err(Rejected::AfterLeave { left: 3, got: 3 }));
        assert_eq!(r.merge(&rec(&k, 4, "m")), Ok(Merged::New { peer: pid }), "a restarted node rejoins with a newer version");
    }

    #[test]
    fn sync_returns_what_the_asker_lacks() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let mut r = Records::new("m", "self");
        r.merge(&rec(&a, 2, "m")).expect("merge");
        r.merge(&rec(&b, 7, "m")).expect("merge");
        let have = vec![(a.public().to_peer_id().to_base58(), 2), (b.public().to_peer_id().to_base58(), 3)];
        let (out, more) = r.page(&have, "asker", None, 1 << 20);
        assert_eq!(out.len(), 1);
        assert!(!more);
        assert_eq!(wire::verify_record(&out[0], "m").expect("ok").version, 7);
    }

    /// A record padded to nearly the per-record limit.
    fn big_rec(k: &Keypair, version: u64) -> SignedRecord {
        let mut r = wire::verify_record(&rec(k, version, "m"), "m").expect("valid");
        r.name = "x".repeat(wire::MAX_RECORD - 400);
        sign_record(&r, k).expect("sign")
    }

    #[test]
    fn a_sync_of_three_hundred_maximum_records_is_paged_below_the_frame_cap() {
        let keys: Vec<Keypair> = (0..300).map(|_| Keypair::generate_ed25519()).collect();
        let mut server = Records::new("m", "self");
        for k in &keys {
            server.merge(&big_rec(k, 1)).expect("merge");
        }
        let mut asker = Records::new("m", "asker");
        let budget = wire::MAX_FRAME - 4096;
        let mut pages = 0;
        loop {
            let (page, more) = server.page(&asker.summary(), "asker", None, budget);
            let frame = wire::encode(&wire::Message::SyncResponse { records: page.clone(), more });
            assert!(frame.len() <= wire::MAX_FRAME, "page {pages} is {} bytes", frame.len());
            let Ok(wire::Message::SyncResponse { records, .. }) = wire::decode(&frame) else { panic!("page {pages} does not decode") };
            for s in &records {
                asker.merge(s).expect("merge");
            }
            pages += 1;
            if !more {
                break;
            }
            assert!(pages < 1000, "paging does not progress");
        }
        assert_eq!(asker.len(), 300);
        assert!(pages >= 75, "{pages} pages for 300 records of ~64 KB");
    }

    #[test]
    fn leaves_are_capped_and_aged() {
        let mut r = Records::new("m", "self");
        for i in 0..20u64 {
            let k = Keypair::generate_ed25519();
            r.leave(&sign_leave(&k.public().to_peer_id().to_base58(), "m", 1, &k).expect("sign"), i * 1000).expect("leave");
        }
        r.prune_leaves(20_000, 60_000, 8);
        assert_eq!(r.leaves(), 8, "capped to the newest");
        r.prune_leaves(100_000, 60_000, 8);
        assert_eq!(r.leaves(), 0, "aged out");
    }

    #[test]
    fn connected_peers_without_a_record_are_lacking() {
        let a = Keypair::generate_ed25519();
        let b = Keypair::generate_ed25519();
        let (pa, pb) = (a.public().to_peer_id().to_base58(), b.public().to_peer_id().to_base58());
        let mut r = Records::new("m", "self");
        r.merge(&rec(&a, 2, "m")).expect("merge");
        assert_eq!(r.lacking([pa.as_str(), pb.as_str(), "self"]), vec![pb.as_str()], "own id and known peers are not lacking");
        r.merge(&rec(&b, 2, "m")).expect("merge");
        assert!(r.lacking([pa.as_str(), pb.as_str()]).is_empty());
        r.leave(&sign_leave(&pb, "m", 2, &b).expect("sign"), 0).expect("leave");
        assert_eq!(r.lacking([pa.as_str(), pb.as_str()]), vec![pb.as_str()], "a leave drops the record");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any order and any duplication of the same records gives the same state.
        #[test]
        fn merge_is_order_independent_and_idempotent(versions in proptest::collection::vec((0usize..3, 1u64..20), 1..24), seed in any::<u64>()) {
            let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
            let signed: Vec<SignedRecord> = versions.iter().map(|(k, v)| rec(&keys[*k], *v, "m")).collect();
            let mut a = Records::new("m", "self");
            for s in &signed { let _ = a.merge(s); }
            // a seeded shuffle, applied twice over
            let mut order: Vec<usize> = (0..signed.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut b = Records::new("m", "self");
            for _ in 0..2 { for &i in &order { let _ = b.merge(&signed[i]); } }
            prop_assert_eq!(&a, &b);
            for (k, key) in keys.iter().enumerate() {
                let max = versions.iter().filter(|(kk, _)| *kk == k).map(|(_, v)| *v).max();
                prop_assert_eq!(a.get(&key.public().to_peer_id().to_base58()).map(|e| e.record.version), max);
            }
        }
    }
}
