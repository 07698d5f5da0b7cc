//! Gossip, requests and probes: what the core does with messages from other nodes.

use super::{Action, Event};
use super::{MeshCore, Pending, Verdict, book};
use crate::membership::RumorRejected;
use crate::state::Rejected;
use crate::wire::{self, Message, SignedRecord, VerifyError};

impl MeshCore {
    // -----------------------------------------------------------------------------------
    // Gossip, requests, probes
    // -----------------------------------------------------------------------------------

    /// A gossip message from `source` (gossipsub's verified originator).
    pub fn handle_gossip(&mut self, source: Option<&str>, data: &[u8], now: u64) -> Verdict {
        self.now = self.now.max(now);
        self.stats.gossip_received += 1;
        let verdict = self.gossip(source, data, now);
        self.flush();
        verdict
    }

    fn gossip(&mut self, source: Option<&str>, data: &[u8], now: u64) -> Verdict {
        let msg = match wire::decode(data) {
            Ok(m) => m,
            Err(_) => {
                self.stats.reject("frame");
                return Verdict::Reject;
            }
        };
        let Some(source) = source else {
            self.stats.reject("unsigned");
            return Verdict::Reject;
        };
        self.membership.handle_heard_from(source, now);
        match msg {
            Message::Record(s) => self.merge_record(&s, now),
            Message::Leave(l) => match self.records.leave(&l, now) {
                Ok(_) => {
                    self.membership.handle_leave(&l.peer_id, now);
                    Verdict::Accept
                }
                Err(Rejected::Own) => Verdict::Ignore,
                Err(_) => {
                    self.stats.reject("leave");
                    Verdict::Reject
                }
            },
            Message::Member(r) => {
                if wire::verify_rumor(&r, &self.mesh_id).is_err() || r.raiser != source {
                    self.stats.reject("rumor_signature");
                    return Verdict::Reject;
                }
                match self.membership.handle_rumor(&r.raiser, &r.peer, r.incarnation, r.rumor, now) {
                    Ok(()) => Verdict::Accept,
                    Err(RumorRejected::NotALiveMember) => {
                        self.stats.reject("rumor_not_live_member");
                        Verdict::Ignore
                    }
                    Err(RumorRejected::Incarnation(_)) => {
                        self.stats.reject("rumor_incarnation");
                        Verdict::Reject
                    }
                }
            }
            _ => {
                self.stats.reject("unexpected_gossip");
                Verdict::Reject
            }
        }
    }

    fn merge_record(&mut self, s: &SignedRecord, now: u64) -> Verdict {
        match self.records.merge(s) {
            Ok(m) => {
                self.stats.records_merged += 1;
                let peer = m.peer().to_string();
                let Some(rec) = self.records.get(&peer).map(|e| e.record.clone()) else { return Verdict::Accept };
                self.events.push_back(Event::Record { peer: peer.clone(), name: rec.name.clone(), version: rec.version, services: rec.services.len() });
                // Newer than any leave (Records checked that): a new run of the node.
                self.membership.handle_rejoined(&peer, now);
                self.book.learn(&peer, rec.addrs.iter().take(book::MAX_ADDRS).cloned(), now);
                if self.membership.get(&peer).is_none() && !self.connected.contains(&peer) {
                    self.remember_unmet(&peer, now);
                }
                self.discovery_dial(&peer, now);
                Verdict::Accept
            }
            Err(Rejected::Stale { .. }) | Err(Rejected::Own) => Verdict::Ignore,
            Err(e) => {
                self.stats.reject(match e {
                    Rejected::Invalid(VerifyError::OtherMesh(_)) => "record_other_mesh",
                    Rejected::Invalid(VerifyError::BadSignature) => "record_signature",
                    Rejected::AfterLeave { .. } => "record_replay",
                    _ => "record_invalid",
                });
                Verdict::Reject
            }
        }
    }

    /// Keeps at most `max_unmet_records` records of peers never connected (oldest out).
    fn remember_unmet(&mut self, peer: &str, now: u64) {
        self.unmet.insert(peer.to_string(), now);
        while self.unmet.len() > self.cfg.max_unmet_records {
            let Some(oldest) = self.unmet.iter().min_by_key(|(_, t)| **t).map(|(p, _)| p.clone()) else { break };
            self.unmet.remove(&oldest);
            self.records.forget(&oldest);
        }
    }

    /// An inbound request from `peer` on `channel`.
    pub fn handle_request(&mut self, peer: &str, channel: u64, msg: Message, now: u64) {
        self.now = self.now.max(now);
        match msg {
            Message::Probe { seq } => {
                self.actions.push_back(Action::Respond { channel, msg: Message::Ack { seq } });
                self.membership.handle_heard_from(peer, now);
            }
            Message::ProbeRequest { req, target } => {
                let waiting = self.relays.keys().filter(|(o, _)| o == peer).count();
                if waiting >= self.cfg.max_relays_per_origin {
                    self.stats.reject("relay_flood");
                    self.actions.push_back(Action::Release { channel });
                } else {
                    if let Some(old) = self.relays.insert((peer.to_string(), req), channel) {
                        self.actions.push_back(Action::Release { channel: old });
                    }
                    self.membership.handle_probe_request(peer, req, &target, now);
                }
            }
            Message::SyncRequest { mesh_id, have } => {
                if mesh_id != self.mesh_id {
                    self.stats.reject("sync_other_mesh");
                    self.actions.push_back(Action::Respond { channel, msg: Message::SyncResponse { records: Vec::new(), more: false } });
                } else {
                    let own = self.own.as_ref().map(|(s, v)| (s, *v));
                    let (records, more) = self.records.page(&have, peer, own, self.cfg.sync_page_bytes);
                    self.actions.push_back(Action::Respond { channel, msg: Message::SyncResponse { records, more } });
                }
            }
            _ => {
                self.stats.reject("unexpected_request");
                self.actions.push_back(Action::Release { channel });
            }
        }
        self.flush();
    }

    /// The answer from `peer` to our request `id`.
    pub fn handle_response(&mut self, peer: &str, id: u64, msg: Message, now: u64) {
        self.now = self.now.max(now);
        match (self.pending.remove(&id), msg) {
            (Some((Pending::Sync { peer: p, pages, mut got }, _)), Message::SyncResponse { records, more }) if p == peer => {
                self.stats.sync_pages += 1;
                for r in records.iter().take(512) {
                    self.merge_record(r, now);
                    if let Some(k) = wire::record_key(r) {
                        got.push(k);
                    }
                }
                if more && pages + 1 < self.cfg.max_sync_pages {
                    self.sync(peer, got, pages + 1);
                }
            }
            (Some((Pending::Indirect { via, seq, target }, _)), Message::ProbeResponse { req, target: t, alive })
                if via == peer && req == seq && t == target =>
            {
                self.membership.handle_probe_reply(&via, seq, &target, alive, now);
            }
            _ => self.stats.reject("unexpected_response"),
        }
        self.flush();
    }

    /// Our request `id` failed (timeout, closed stream, refused protocol).
    pub fn handle_request_failed(&mut self, id: u64) {
        // A failed sync is asked again at the next tick while the peer stays connected (a
        // restarted peer's newer record may come only this way); indirect probes time out
        // in the membership.
        if let Some((Pending::Sync { peer, .. }, _)) = self.pending.remove(&id) {
            self.retry_sync.insert(peer);
        }
    }

    pub fn handle_probe_ack(&mut self, peer: &str, seq: u64, rtt_ms: f64, now: u64) {
        self.now = self.now.max(now);
        self.membership.handle_ack(peer, seq, rtt_ms, now);
        self.flush();
    }

    pub fn handle_probe_failed(&mut self, peer: &str, seq: u64, now: u64) {
        self.now = self.now.max(now);
        self.membership.handle_probe_failed(peer, seq, now);
        self.flush();
    }
}
