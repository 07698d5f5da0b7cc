//! The invite exchange: a short code's words are the password of SPAKE2; the mesh key
//! travels encrypted under the key both sides derive, after the joiner proved it knows the
//! code. One completed exchange with a wrong code voids the invite (one guess, as in
//! magic-wormhole); connections that never get that far (garbage, oversized frames, other
//! versions, silence) are dropped and counted, and the invite stays open.
//!
//! Frames: version (1 byte), kind (1 byte), length (u16 big endian, at most
//! [`MAX_FRAME`]), payload. Every read has a timeout.
//!
//! 1. joiner → inviter `Hello` (SPAKE2 message A); inviter → joiner `Hello` (message B).
//! 2. Both derive (HKDF-SHA256 of the SPAKE2 key, bound to both messages) four keys.
//! 3. joiner → `Confirm`: HMAC(confirm_joiner, transcript).
//! 4. inviter checks it. Wrong: `Fail` and the invite is void. Right: `Key` =
//!    HMAC(confirm_inviter, transcript) ‖ key XOR enc ‖ HMAC(mac, ciphertext).
//! 5. joiner checks both MACs, decrypts, answers `Ack`.

use craftmesh_protocol::joincode::ShortCode;
use futures::stream::{FuturesUnordered, StreamExt as _};
use hmac::{KeyInit as _, Mac as _};
use sha2_next::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

pub const VERSION: u8 = 1;
/// Largest payload of a frame.
pub const MAX_FRAME: usize = 512;
/// At most this many connections are in their handshake at once; more are dropped.
pub const MAX_PENDING: usize = 16;
const SALT: &[u8] = b"craftmesh/invite/v1";
const ID_JOINER: &[u8] = b"craftmesh-joiner";
const ID_INVITER: &[u8] = b"craftmesh-inviter";
/// Length of a SPAKE2 (ed25519) message: a side byte and a point.
const PAKE_MSG: usize = 33;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Hello = 1,
    Confirm = 2,
    Key = 3,
    Fail = 4,
    Ack = 5,
}

/// Timeouts of the exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Each read of a frame.
    pub read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { read: Duration::from_secs(10) }
    }
}

/// Why a frame or an exchange failed on the wire. Nothing is stored.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("timed out waiting for the other side")]
    Timeout,
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the other side speaks invite version {0}, this craftmesh speaks {VERSION}")]
    Version(u8),
    #[error("frame of {0} bytes is larger than {MAX_FRAME}")]
    Oversized(usize),
    #[error("unexpected frame kind {0}")]
    Unexpected(u8),
    #[error("malformed exchange message")]
    Malformed,
}

/// Why `join` got no key. Nothing is stored for any of them.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the inviter rejected the code: it is wrong, and the invite is now void; run `craftmesh invite` again on the other machine")]
    WrongCode,
    #[error("the inviter refused: {0}")]
    Refused(String),
    #[error("the inviter's answer does not verify (a wrong code, or someone else answered); no key was stored")]
    BadInviter,
    #[error(transparent)]
    Wire(#[from] WireError),
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limits: Limits) -> Result<(u8, Vec<u8>), WireError> {
    let go = async {
        let mut h = [0u8; 4];
        r.read_exact(&mut h).await?;
        if h[0] != VERSION {
            return Err(WireError::Version(h[0]));
        }
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        if len > MAX_FRAME {
            return Err(WireError::Oversized(len));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        Ok((h[1], body))
    };
    tokio::time::timeout(limits.read, go).await.map_err(|_| WireError::Timeout)?
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: Kind, payload: &[u8], limits: Limits) -> Result<(), WireError> {
    let len = u16::try_from(payload.len()).map_err(|_| WireError::Oversized(payload.len()))?;
    let mut buf = vec![VERSION, kind as u8];
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    let go = async {
        w.write_all(&buf).await?;
        w.flush().await
    };
    tokio::time::timeout(limits.read, go).await.map_err(|_| WireError::Timeout)?.map_err(WireError::Io)
}

/// Keys derived from the SPAKE2 key and the transcript (both messages).
struct Keys {
    confirm_joiner: [u8; 32],
    confirm_inviter: [u8; 32],
    enc: [u8; 32],
    mac: [u8; 32],
    transcript: Vec<u8>,
}

fn derive(pake_key: &[u8], msg_joiner: &[u8], msg_inviter: &[u8]) -> Keys {
    let mut transcript = Vec::with_capacity(msg_joiner.len() + msg_inviter.len());
    transcript.extend_from_slice(msg_joiner);
    transcript.extend_from_slice(msg_inviter);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(SALT), pake_key);
    let expand = |label: &str| {
        let mut info = label.as_bytes().to_vec();
        info.extend_from_slice(&transcript);
        let mut out = [0u8; 32];
        // 32 bytes are always a valid HKDF-SHA256 length.
        let _ = hk.expand(&info, &mut out);
        out
    };
    Keys { confirm_joiner: expand("confirm joiner"), confirm_inviter: expand("confirm inviter"), enc: expand("encrypt"), mac: expand("mac"), transcript }
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> hmac::Hmac<Sha256> {
    let mut m = <hmac::Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m
}

fn tag(key: &[u8; 32], parts: &[&[u8]]) -> Vec<u8> {
    hmac(key, parts).finalize().into_bytes().to_vec()
}

fn verify(key: &[u8; 32], parts: &[&[u8]], t: &[u8]) -> bool {
    hmac(key, parts).verify_slice(t).is_ok()
}

fn start(code: &ShortCode, joiner: bool) -> (Spake2<Ed25519Group>, Vec<u8>) {
    let pw = Password::new(code.text().as_bytes());
    let (a, b) = (Identity::new(ID_JOINER), Identity::new(ID_INVITER));
    if joiner { Spake2::<Ed25519Group>::start_a(&pw, &a, &b) } else { Spake2::<Ed25519Group>::start_b(&pw, &a, &b) }
}

/// The joiner's side: returns the mesh key.
pub async fn join<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, code: &ShortCode, limits: Limits) -> Result<[u8; 32], JoinError> {
    let (pake, msg_a) = start(code, true);
    write_frame(s, Kind::Hello, &msg_a, limits).await?;
    let msg_b = match read_frame(s, limits).await? {
        (k, b) if k == Kind::Hello as u8 && b.len() == PAKE_MSG => b,
        (k, b) if k == Kind::Fail as u8 => return Err(JoinError::Refused(String::from_utf8_lossy(&b).chars().take(200).collect())),
        _ => return Err(WireError::Malformed.into()),
    };
    let k = pake.finish(&msg_b).map_err(|_| WireError::Malformed)?;
    let keys = derive(&k, &msg_a, &msg_b);
    write_frame(s, Kind::Confirm, &tag(&keys.confirm_joiner, &[b"joiner", &keys.transcript]), limits).await?;
    let body = match read_frame(s, limits).await? {
        (k, b) if k == Kind::Key as u8 && b.len() == 96 => b,
        (k, _) if k == Kind::Fail as u8 => return Err(JoinError::WrongCode),
        _ => return Err(WireError::Malformed.into()),
    };
    let (confirm, rest) = body.split_at(32);
    let (ct, mac) = rest.split_at(32);
    if !verify(&keys.confirm_inviter, &[b"inviter", &keys.transcript], confirm) || !verify(&keys.mac, &[ct], mac) {
        return Err(JoinError::BadInviter);
    }
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = ct[i] ^ keys.enc[i];
    }
    let _ = write_frame(s, Kind::Ack, b"", limits).await;
    Ok(key)
}

/// A connection whose joiner sent its confirmation: the invite's one attempt.
struct Attempt<S> {
    stream: S,
    peer: String,
    keys: Keys,
    confirm: Vec<u8>,
}

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: String,
    code: &ShortCode,
    limits: Limits,
) -> Result<Attempt<S>, (String, WireError)> {
    let r: Result<(Keys, Vec<u8>), WireError> = async {
        let msg_a = match read_frame(&mut stream, limits).await? {
            (k, b) if k == Kind::Hello as u8 && b.len() == PAKE_MSG => b,
            (k, _) if k == Kind::Hello as u8 => return Err(WireError::Malformed),
            (k, _) => return Err(WireError::Unexpected(k)),
        };
        let (pake, msg_b) = start(code, false);
        let k = pake.finish(&msg_a).map_err(|_| WireError::Malformed)?;
        write_frame(&mut stream, Kind::Hello, &msg_b, limits).await?;
        let keys = derive(&k, &msg_a, &msg_b);
        match read_frame(&mut stream, limits).await? {
            (k, b) if k == Kind::Confirm as u8 && b.len() == 32 => Ok((keys, b)),
            (k, _) => Err(WireError::Unexpected(k)),
        }
    }
    .await;
    match r {
        Ok((keys, confirm)) => Ok(Attempt { stream, peer, keys, confirm }),
        Err(e) => Err((peer, e)),
    }
}

/// What the inviter reports while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection that never completed the exchange (the invite stays open).
    Dropped { peer: String, reason: String },
}

/// How an invite ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key went to `peer`; `acked`: it said it got it.
    Joined { peer: String, acked: bool },
    /// `peer` completed the exchange with a wrong code: the invite is void.
    WrongCode { peer: String },
    /// `peer` proved the code but the key could not be sent; the invite is used up.
    Lost { peer: String, reason: String },
    /// Nobody joined before the deadline.
    Expired,
}

/// Serves one join: takes connections from `conns` until one exchange completes or
/// `deadline` passes. `dropped` counts connections that never completed the exchange.
pub async fn serve<S>(
    mut conns: mpsc::Receiver<(S, String)>,
    code: &ShortCode,
    key: &[u8; 32],
    deadline: tokio::time::Instant,
    limits: Limits,
    mut on_event: impl FnMut(Event),
) -> (Outcome, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut pending = FuturesUnordered::new();
    let mut dropped = 0u64;
    let mut open = true;
    let attempt = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return (Outcome::Expired, dropped),
            c = conns.recv(), if open => match c {
                Some((s, peer)) if pending.len() < MAX_PENDING => pending.push(handshake(s, peer, code, limits)),
                Some((_, peer)) => {
                    dropped += 1;
                    on_event(Event::Dropped { peer, reason: "too many connections at once".into() });
                }
                None => open = false,
            },
            Some(r) = pending.next(), if !pending.is_empty() => match r {
                Ok(a) => break a,
                Err((peer, e)) => {
                    dropped += 1;
                    on_event(Event::Dropped { peer, reason: e.to_string() });
                }
            },
        }
    };
    drop(pending);
    let Attempt { mut stream, peer, keys, confirm } = attempt;
    if !verify(&keys.confirm_joiner, &[b"joiner", &keys.transcript], &confirm) {
        let _ = write_frame(&mut stream, Kind::Fail, b"wrong code; this invite is now void", limits).await;
        return (Outcome::WrongCode { peer }, dropped);
    }
    let mut body = tag(&keys.confirm_inviter, &[b"inviter", &keys.transcript]);
    let ct: Vec<u8> = key.iter().zip(keys.enc.iter()).map(|(k, e)| k ^ e).collect();
    body.extend_from_slice(&ct);
    body.extend_from_slice(&tag(&keys.mac, &[&ct]));
    if let Err(e) = write_frame(&mut stream, Kind::Key, &body, limits).await {
        return (Outcome::Lost { peer, reason: e.to_string() }, dropped);
    }
    let acked = matches!(read_frame(&mut stream, limits).await, Ok((k, _)) if k == Kind::Ack as u8);
    (Outcome::Joined { peer, acked }, dropped)
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
