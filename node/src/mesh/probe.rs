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

/// What happened to a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    Ack { peer: PeerId, seq: u64 },
    Failed { peer: PeerId, seq: u64 },
}

/// Sends probes and serves other nodes' probes.
pub struct Prober {
    control: libp2p_stream::Control,
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

impl Prober {
    /// Starts serving inbound probes; fails only if the protocol is registered twice.
    pub fn new(mut control: libp2p_stream::Control) -> Result<Prober, String> {
        let mut incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            while let Some((_peer, stream)) = incoming.next().await {
                if live.load(std::sync::atomic::Ordering::Relaxed) >= MAX_INBOUND {
                    continue; // dropping the stream closes it
                }
                let live = live.clone();
                live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    serve(stream).await;
                    live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                });
            }
        });
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Ok(Prober { control, senders: HashMap::new(), events_tx, events_rx })
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
