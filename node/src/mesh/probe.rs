//! Direct probes on one long-lived stream per peer (`/craftmesh/probe/1`): a 9-byte ping
//! (`0`, seq) answered by a 9-byte pong (`1`, seq). Opening a request-response stream per
//! probe costs a multistream negotiation and several frames each time; a standing stream
//! costs one small frame each way, which is what keeps idle traffic low.

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/probe/1");
const PING: u8 = 0;
const PONG: u8 = 1;
/// How long opening the stream may take before the probe counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Inbound probe streams served at once (one per connection is normal).
const MAX_INBOUND: usize = 256;
/// Inbound probe streams one peer may hold open, so one peer cannot starve the others.
const MAX_INBOUND_PER_PEER: usize = 4;

/// What happened to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    Ack { peer: PeerId, seq: u64 },
    Failed { peer: PeerId, seq: u64 },
}

/// Sends probes and serves other nodes' probes.
pub struct Prober {
    control: libp2p_stream::Control,
    /// The task accepting inbound probe streams.
    accept: tokio::task::JoinHandle<()>,
    senders: HashMap<PeerId, mpsc::UnboundedSender<u64>>,
    events_tx: mpsc::UnboundedSender<ProbeEvent>,
    pub events_rx: mpsc::UnboundedReceiver<ProbeEvent>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").field("peers", &self.senders.len()).finish()
    }
}

fn frame(kind: u8, seq: u64) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = kind;
    b[1..].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Live inbound streams, in total and per peer.
#[derive(Debug, Default)]
struct Inbound {
    total: usize,
    per_peer: HashMap<PeerId, usize>,
}

impl Inbound {
    /// Admits one more stream from `peer` if both caps allow it.
    fn admit(&mut self, peer: PeerId) -> bool {
        let n = self.per_peer.get(&peer).copied().unwrap_or(0);
        if self.total >= MAX_INBOUND || n >= MAX_INBOUND_PER_PEER {
            return false;
        }
        self.total += 1;
        self.per_peer.insert(peer, n + 1);
        true
    }

    fn done(&mut self, peer: PeerId) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

/// Accepts inbound probe streams (within the caps) and serves each on its own task.
fn start_accepting(control: &mut libp2p_stream::Control) -> Result<tokio::task::JoinHandle<()>, String> {
    let mut incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        let live = std::sync::Arc::new(std::sync::Mutex::new(Inbound::default()));
        while let Some((peer, stream)) = incoming.next().await {
            let admitted = live.lock().map(|mut l| l.admit(peer)).unwrap_or(false);
            if !admitted {
                continue; // dropping the stream closes it
            }
            let live = live.clone();
            tokio::spawn(async move {
                serve(stream).await;
                if let Ok(mut l) = live.lock() {
                    l.done(peer);
                }
            });
        }
    }))
}

impl Prober {
    /// Starts serving inbound probes; fails only if the protocol is registered twice.
    pub fn new(mut control: libp2p_stream::Control) -> Result<Prober, String> {
        let accept = start_accepting(&mut control)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Ok(Prober { control, accept, senders: HashMap::new(), events_tx, events_rx })
    }

    /// Whether the accept task ended (it should not: a node that stops answering probes
    /// looks dead to everyone).
    pub fn accept_ended(&self) -> bool {
        self.accept.is_finished()
    }

    /// Starts accepting inbound probe streams again.
    pub fn restart_accept(&mut self) {
        match start_accepting(&mut self.control) {
            Ok(h) => self.accept = h,
            Err(e) => tracing::error!(error = %e, "cannot accept probe streams"),
        }
    }

    /// Sends probe `seq` to `peer`, opening the peer's stream if needed.
    pub fn probe(&mut self, peer: PeerId, seq: u64) {
        if let Some(tx) = self.senders.get(&peer)
            && tx.send(seq).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(seq);
        self.senders.insert(peer, tx);
        tokio::spawn(outbound(self.control.clone(), peer, rx, self.events_tx.clone()));
    }

    /// Drops the peer's stream (its connection closed).
    pub fn forget(&mut self, peer: &PeerId) {
        self.senders.remove(peer);
    }
}

/// Answers pings on an inbound stream until it closes or misbehaves.
async fn serve(stream: libp2p::Stream) {
    let (mut r, mut w) = stream.split();
    let mut buf = [0u8; 9];
    while r.read_exact(&mut buf).await.is_ok() {
        if buf[0] != PING {
            return;
        }
        let seq = u64::from_be_bytes(buf[1..].try_into().unwrap_or([0; 8]));
        if w.write_all(&frame(PONG, seq)).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// One peer's outbound probe stream: writes pings from `rx`, reports pongs.
async fn outbound(mut control: libp2p_stream::Control, peer: PeerId, mut rx: mpsc::UnboundedReceiver<u64>, ev: mpsc::UnboundedSender<ProbeEvent>) {
    let stream = match tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL)).await {
        Ok(Ok(s)) => s,
        _ => {
            // Fail what is queued; the next probe opens a new stream.
            while let Ok(seq) = rx.try_recv() {
                let _ = ev.send(ProbeEvent::Failed { peer, seq });
            }
            return;
        }
    };
    let (mut r, mut w) = stream.split();
    let ev2 = ev.clone();
    let reader = async move {
        let mut buf = [0u8; 9];
        while r.read_exact(&mut buf).await.is_ok() {
            if buf[0] != PONG {
                return;
            }
            let seq = u64::from_be_bytes(buf[1..].try_into().unwrap_or([0; 8]));
            if ev2.send(ProbeEvent::Ack { peer, seq }).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some(seq) = rx.recv().await {
            if w.write_all(&frame(PING, seq)).await.is_err() || w.flush().await.is_err() {
                let _ = ev.send(ProbeEvent::Failed { peer, seq });
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_cannot_take_every_inbound_probe_stream() {
        let mut live = Inbound::default();
        let greedy = PeerId::random();
        let admitted = (0..100).filter(|_| live.admit(greedy)).count();
        assert_eq!(admitted, MAX_INBOUND_PER_PEER);
        let other = PeerId::random();
        assert!(live.admit(other), "another peer still gets a stream");
        live.done(greedy);
        assert!(live.admit(greedy));
        for _ in 0..MAX_INBOUND_PER_PEER + 1 {
            live.done(greedy);
        }
        assert!(!live.per_peer.contains_key(&greedy), "no entry is left for a peer without streams");
    }
}
