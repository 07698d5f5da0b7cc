//! Mesh wire messages: a version byte, then bincode 2, with the size checked before decoding.
//!
//! Records are signed by the node key (ed25519, libp2p encoding) over a domain-separated
//! message, so they can be relayed by anyone (gossip, full sync) and still be checked.

use crate::report::{Protocol, ServerInfo, ToolsSummary};
use libp2p_identity::{PeerId, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Current wire version; frames starting with another byte are rejected.
/// 2: signed rumors, paged sync replies.
pub const WIRE_VERSION: u8 = 2;
/// Largest frame accepted (checked before decoding).
pub const MAX_FRAME: usize = 256 * 1024;
/// Largest message carried in several frames (see [`chunks`]).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Largest encoded record accepted inside a frame.
pub const MAX_RECORD: usize = 64 * 1024;
/// Domain separation for record signatures.
const RECORD_DOMAIN: &[u8] = b"craftmesh/record/v1\0";
/// Domain separation for leave signatures.
const LEAVE_DOMAIN: &[u8] = b"craftmesh/leave/v1\0";
/// Domain separation for rumor signatures.
const RUMOR_DOMAIN: &[u8] = b"craftmesh/rumor/v1\0";

/// A service a node offers to the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAd {
    pub name: String,
    pub url: String,
    pub protocol: Protocol,
    pub healthy: bool,
    pub server_info: Option<ServerInfo>,
    pub tools: Option<ToolsSummary>,
}

/// What a node can take on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpu_count: u32,
    /// 1-minute load average × 1000.
    pub load_milli: u32,
    /// Model → agent slots (from `model_limits`).
    pub agent_slots: BTreeMap<String, u32>,
}

/// The one record each node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Base58 peer id; must match the signing key.
    pub peer_id: String,
    /// Hash of the mesh key (never the key).
    pub mesh_id: String,
    /// Monotonic per node; a record with a version not above the known one is stale.
    pub version: u64,
    pub issued_at_ms: u64,
    pub name: String,
    /// Multiaddrs the node listens on.
    pub addrs: Vec<String>,
    pub api_port: u16,
    pub services: Vec<ServiceAd>,
    pub capacity: Capacity,
    pub tags: Vec<String>,
    pub software_version: String,
}

/// A record with the signer's public key and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    /// bincode of [`NodeRecord`].
    pub record: Vec<u8>,
    /// libp2p protobuf encoding of the public key.
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A signed goodbye: the node leaves at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedLeave {
    pub peer_id: String,
    pub mesh_id: String,
    pub version: u64,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What one node tells another about a third (SWIM-style dissemination).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rumor {
    Alive,
    Suspect,
    Dead,
}

/// A membership rumor signed by the node that raises it, so a confirmation can be
/// attributed to one member whoever relays it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRumor {
    /// Peer id of the node that raises the rumor (must match the signing key).
    pub raiser: String,
    pub mesh_id: String,
    /// The member the rumor is about.
    pub peer: String,
    pub incarnation: u64,
    pub rumor: Rumor,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Every mesh message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A node's record (gossip, or pushed after a change).
    Record(SignedRecord),
    /// A node leaves the mesh.
    Leave(SignedLeave),
    /// Ask for records newer than the versions the asker has.
    SyncRequest {
        mesh_id: String,
        have: Vec<(String, u64)>,
    },
    /// One page of a sync reply, below the frame cap; `more` asks for another request
    /// (with the records of this page added to `have`).
    SyncResponse {
        records: Vec<SignedRecord>,
        more: bool,
    },
    /// Membership rumor, signed by the node that raises it.
    Member(SignedRumor),
    /// Direct probe and its acknowledgement (request-response).
    Probe {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
    /// Indirect probe: please check `target` for me (request id `req`).
    ProbeRequest {
        req: u64,
        target: String,
    },
    ProbeResponse {
        req: u64,
        target: String,
        alive: bool,
    },
}

/// Why bytes were not accepted. Nothing changes on any of these; each is counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message as a frame.
pub fn encode(msg: &Message) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    // Encoding our own types into a Vec cannot fail except over the limit, which our
    // own messages never reach; an empty body then fails the peer's decode, visibly.
    if let Ok(body) = bincode::serde::encode_to_vec(msg, config()) {
        out.extend(body);
    }
    out
}

/// Decodes a frame, checking size and version first.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode_large(bytes, MAX_FRAME)
}

/// Decodes a message of at most `max` bytes (reassembled from chunks by the transport).
pub fn decode_large(bytes: &[u8], max: usize) -> Result<Message, DecodeError> {
    let (&v, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if bytes.len() > max {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if v != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion(v));
    }
    // bincode checks claimed lengths against its limit before allocating: keep the limit
    // at one frame unless a larger message was asked for.
    let decoded = if max <= MAX_FRAME {
        bincode::serde::decode_from_slice::<Message, _>(body, config())
    } else {
        bincode::serde::decode_from_slice::<Message, _>(body, bincode::config::standard().with_limit::<MAX_MESSAGE>())
    };
    let (msg, used) = decoded.map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(msg)
}

/// Why a signed record or leave was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("record of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error("bad public key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("peer id {claimed} does not belong to the signing key ({actual})")]
    WrongPeer { claimed: String, actual: String },
    #[error("record is for mesh {0}, not ours")]
    OtherMesh(String),
}

/// Signs a record with a keypair.
pub fn sign_record(record: &NodeRecord, key: &libp2p_identity::Keypair) -> Result<SignedRecord, String> {
    let bytes = bincode::serde::encode_to_vec(record, config()).map_err(|e| e.to_string())?;
    let mut msg = RECORD_DOMAIN.to_vec();
    msg.extend_from_slice(&bytes);
    let signature = key.sign(&msg).map_err(|e| e.to_string())?;
    Ok(SignedRecord { record: bytes, public_key: key.public().encode_protobuf(), signature })
}

/// Checks a signed record: size, decoding, signature, peer id and mesh id.
pub fn verify_record(s: &SignedRecord, mesh_id: &str) -> Result<NodeRecord, VerifyError> {
    if s.record.len() > MAX_RECORD {
        return Err(VerifyError::TooLarge(s.record.len()));
    }
    let key = PublicKey::try_decode_protobuf(&s.public_key).map_err(|_| VerifyError::BadKey)?;
    let mut msg = RECORD_DOMAIN.to_vec();
    msg.extend_from_slice(&s.record);
    if !key.verify(&msg, &s.signature) {
        return Err(VerifyError::BadSignature);
    }
    let (rec, used): (NodeRecord, usize) = bincode::serde::decode_from_slice(&s.record, config()).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if used != s.record.len() {
        return Err(VerifyError::Malformed("trailing bytes".into()));
    }
    let actual = PeerId::from_public_key(&key).to_base58();
    if rec.peer_id != actual {
        return Err(VerifyError::WrongPeer { claimed: rec.peer_id, actual });
    }
    if rec.mesh_id != mesh_id {
        return Err(VerifyError::OtherMesh(rec.mesh_id));
    }
    Ok(rec)
}

fn rumor_message(raiser: &str, mesh_id: &str, peer: &str, incarnation: u64, rumor: Rumor) -> Vec<u8> {
    let mut m = RUMOR_DOMAIN.to_vec();
    for part in [raiser, mesh_id, peer] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(&incarnation.to_le_bytes());
    m.push(match rumor {
        Rumor::Alive => 0,
        Rumor::Suspect => 1,
        Rumor::Dead => 2,
    });
    m
}

/// Signs a rumor about `peer` raised by the keypair's node.
pub fn sign_rumor(mesh_id: &str, peer: &str, incarnation: u64, rumor: Rumor, key: &libp2p_identity::Keypair) -> Result<SignedRumor, String> {
    let raiser = key.public().to_peer_id().to_base58();
    let signature = key.sign(&rumor_message(&raiser, mesh_id, peer, incarnation, rumor)).map_err(|e| e.to_string())?;
    Ok(SignedRumor { raiser, mesh_id: mesh_id.into(), peer: peer.into(), incarnation, rumor, public_key: key.public().encode_protobuf(), signature })
}

/// Checks a rumor's signature, raiser and mesh.
pub fn verify_rumor(r: &SignedRumor, mesh_id: &str) -> Result<(), VerifyError> {
    let key = PublicKey::try_decode_protobuf(&r.public_key).map_err(|_| VerifyError::BadKey)?;
    if !key.verify(&rumor_message(&r.raiser, &r.mesh_id, &r.peer, r.incarnation, r.rumor), &r.signature) {
        return Err(VerifyError::BadSignature);
    }
    let actual = PeerId::from_public_key(&key).to_base58();
    if r.raiser != actual {
        return Err(VerifyError::WrongPeer { claimed: r.raiser.clone(), actual });
    }
    if r.mesh_id != mesh_id {
        return Err(VerifyError::OtherMesh(r.mesh_id.clone()));
    }
    Ok(())
}

/// (peer id, version) of a signed record, decoded without checking the signature: for
/// bookkeeping of what a sync already brought, never for trust.
pub fn record_key(s: &SignedRecord) -> Option<(String, u64)> {
    if s.record.len() > MAX_RECORD {
        return None;
    }
    let (rec, _): (NodeRecord, usize) = bincode::serde::decode_from_slice(&s.record, config()).ok()?;
    Some((rec.peer_id, rec.version))
}

/// Bytes a signed record takes inside a frame (an upper bound, for paging sync replies).
pub fn record_wire_size(s: &SignedRecord) -> usize {
    // bincode's varint length prefixes take at most 9 bytes each.
    s.record.len() + s.public_key.len() + s.signature.len() + 27
}

// ---------------------------------------------------------------------------------------
// Chunked transfers: a logical message larger than one frame travels as several frames.
// ---------------------------------------------------------------------------------------

/// Top bit of a frame header: more frames of the same message follow.
const MORE: u32 = 1 << 31;

/// The 4-byte header of one frame of `len` bytes (`len` ≤ [`MAX_FRAME`]).
pub fn frame_header(len: usize, more: bool) -> [u8; 4] {
    let mut h = (len.min(MAX_FRAME) as u32) & !MORE;
    if more {
        h |= MORE;
    }
    h.to_be_bytes()
}

/// Splits a logical message into frame payloads of at most [`MAX_FRAME`] bytes (an empty
/// message is one empty frame).
pub fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    bytes.chunks(MAX_FRAME).collect()
}

/// Why a chunked message was not accepted. Nothing is kept on any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("frame of {0} bytes is over the limit")]
    FrameTooLarge(usize),
    #[error("message over {0} bytes")]
    MessageTooLarge(usize),
}

/// Reassembles one logical message from frames, with a cap on its total size.
#[derive(Debug)]
pub struct Reassembly {
    max_total: usize,
    buf: Vec<u8>,
}

impl Reassembly {
    pub fn new(max_total: usize) -> Self {
        Reassembly { max_total, buf: Vec::new() }
    }

    /// Reads a frame header: (payload length, more frames follow). Checked before the
    /// payload is read, so nothing over the caps is ever buffered.
    pub fn header(&self, h: [u8; 4]) -> Result<(usize, bool), ChunkError> {
        let h = u32::from_be_bytes(h);
        let len = (h & !MORE) as usize;
        if len > MAX_FRAME {
            return Err(ChunkError::FrameTooLarge(len));
        }
        if self.buf.len() + len > self.max_total {
            return Err(ChunkError::MessageTooLarge(self.max_total));
        }
        Ok((len, h & MORE != 0))
    }

    pub fn push(&mut self, payload: &[u8]) {
        self.buf.extend_from_slice(payload);
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn leave_message(peer_id: &str, mesh_id: &str, version: u64) -> Vec<u8> {
    let mut m = LEAVE_DOMAIN.to_vec();
    m.extend_from_slice(peer_id.as_bytes());
    m.push(0);
    m.extend_from_slice(mesh_id.as_bytes());
    m.push(0);
    m.extend_from_slice(&version.to_le_bytes());
    m
}

/// Signs a leave.
pub fn sign_leave(peer_id: &str, mesh_id: &str, version: u64, key: &libp2p_identity::Keypair) -> Result<SignedLeave, String> {
    let signature = key.sign(&leave_message(peer_id, mesh_id, version)).map_err(|e| e.to_string())?;
    Ok(SignedLeave { peer_id: peer_id.into(), mesh_id: mesh_id.into(), version, public_key: key.public().encode_protobuf(), signature })
}

/// Checks a leave's signature, peer and mesh.
pub fn verify_leave(l: &SignedLeave, mesh_id: &str) -> Result<(), VerifyError> {
    let key = PublicKey::try_decode_protobuf(&l.public_key).map_err(|_| VerifyError::BadKey)?;
    if !key.verify(&leave_message(&l.peer_id, &l.mesh_id, l.version), &l.signature) {
        return Err(VerifyError::BadSignature);
    }
    let actual = PeerId::from_public_key(&key).to_base58();
    if l.peer_id != actual {
        return Err(VerifyError::WrongPeer { claimed: l.peer_id.clone(), actual });
    }
    if l.mesh_id != mesh_id {
        return Err(VerifyError::OtherMesh(l.mesh_id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn record(key: &libp2p_identity::Keypair, version: u64) -> NodeRecord {
        NodeRecord {
            peer_id: key.public().to_peer_id().to_base58(),
            mesh_id: "mesh-a".into(),
            version,
            issued_at_ms: 1,
            name: "host".into(),
            addrs: vec!["/ip4/10.0.0.1/tcp/7411".into()],
            api_port: 7410,
            services: vec![],
            capacity: Capacity::default(),
            tags: vec![],
            software_version: "0.1.0".into(),
        }
    }

    #[test]
    fn signed_record_round_trips_and_verifies() {
        let k = libp2p_identity::Keypair::generate_ed25519();
        let s = sign_record(&record(&k, 3), &k).expect("sign");
        let frame = encode(&Message::Record(s.clone()));
        let Ok(Message::Record(back)) = decode(&frame) else { panic!("decode") };
        assert_eq!(verify_record(&back, "mesh-a").expect("verify").version, 3);
    }

    #[test]
    fn tampered_or_foreign_records_are_rejected() {
        let k = libp2p_identity::Keypair::generate_ed25519();
        let other = libp2p_identity::Keypair::generate_ed25519();
        let mut s = sign_record(&record(&k, 3), &k).expect("sign");
        assert!(matches!(verify_record(&s, "mesh-b"), Err(VerifyError::OtherMesh(_))));
        let last = s.record.len() - 1;
        s.record[last] ^= 1;
        assert_eq!(verify_record(&s, "mesh-a"), Err(VerifyError::BadSignature));
        // a record claiming k's peer id, signed by another key
        let forged = sign_record(&record(&k, 4), &other).expect("sign");
        assert!(matches!(verify_record(&forged, "mesh-a"), Err(VerifyError::WrongPeer { .. })));
    }

    #[test]
    fn frames_with_bad_version_size_or_trailing_bytes_are_rejected() {
        let f = encode(&Message::ProbeRequest { req: 1, target: "x".into() });
        let mut bad = f.clone();
        bad[0] = 9;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownVersion(9)));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        let mut long = f.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::Trailing(1)));
        assert!(matches!(decode(&vec![WIRE_VERSION; MAX_FRAME + 1]), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn leave_is_signed_by_the_leaver() {
        let k = libp2p_identity::Keypair::generate_ed25519();
        let pid = k.public().to_peer_id().to_base58();
        let l = sign_leave(&pid, "mesh-a", 5, &k).expect("sign");
        assert_eq!(verify_leave(&l, "mesh-a"), Ok(()));
        let mut l2 = l.clone();
        l2.version = 6;
        assert_eq!(verify_leave(&l2, "mesh-a"), Err(VerifyError::BadSignature));
    }

    #[test]
    fn rumors_are_signed_by_their_raiser() {
        let k = libp2p_identity::Keypair::generate_ed25519();
        let r = sign_rumor("mesh-a", "someone", 4, Rumor::Suspect, &k).expect("sign");
        assert_eq!(verify_rumor(&r, "mesh-a"), Ok(()));
        assert!(matches!(verify_rumor(&r, "mesh-b"), Err(VerifyError::OtherMesh(_))));
        let mut forged = r.clone();
        forged.rumor = Rumor::Dead;
        assert_eq!(verify_rumor(&forged, "mesh-a"), Err(VerifyError::BadSignature));
        let mut other = r.clone();
        other.raiser = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id().to_base58();
        assert_eq!(verify_rumor(&other, "mesh-a"), Err(VerifyError::BadSignature));
        let frame = encode(&Message::Member(r.clone()));
        assert_eq!(decode(&frame), Ok(Message::Member(r)));
    }

    #[test]
    fn a_large_message_travels_in_frames_and_reassembles_within_its_cap() {
        let big: Vec<u8> = (0..(3 * MAX_FRAME + 17)).map(|i| (i % 251) as u8).collect();
        let parts = chunks(&big);
        assert_eq!(parts.len(), 4);
        let mut r = Reassembly::new(4 * MAX_FRAME);
        for (i, p) in parts.iter().enumerate() {
            let (len, more) = r.header(frame_header(p.len(), i + 1 < parts.len())).expect("header");
            assert_eq!((len, more), (p.len(), i + 1 < parts.len()));
            r.push(p);
        }
        assert_eq!(r.finish(), big);
        let mut small = Reassembly::new(MAX_FRAME);
        small.push(&big[..MAX_FRAME]);
        assert_eq!(small.header(frame_header(1, false)), Err(ChunkError::MessageTooLarge(MAX_FRAME)));
        assert!(matches!(small.header(((MAX_FRAME as u32) + 1).to_be_bytes()), Err(ChunkError::FrameTooLarge(_))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
            let mut framed = vec![WIRE_VERSION];
            framed.extend(&bytes);
            let _ = decode(&framed);
        }

        #[test]
        fn verify_never_panics_on_random_records(rec in proptest::collection::vec(any::<u8>(), 0..512), key in proptest::collection::vec(any::<u8>(), 0..64), sig in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = verify_record(&SignedRecord { record: rec, public_key: key, signature: sig }, "m");
        }

        #[test]
        fn messages_round_trip(target in ".{0,64}", alive in any::<bool>(), inc in any::<u64>()) {
            for m in [Message::ProbeResponse { req: inc, target: target.clone(), alive }, Message::SyncRequest { mesh_id: target.clone(), have: vec![(target.clone(), inc)] }] {
                prop_assert_eq!(decode(&encode(&m)), Ok(m));
            }
        }
    }
}
