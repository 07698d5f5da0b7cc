//! The claims protocol on the mesh: libp2p streams (`/craftmesh/claims/1`) on the
//! connections the mesh keeps to every member, so claims travel keyed and encrypted like
//! everything else and never need a port of their own.

use super::network::{BoxStream, Transport};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use libp2p::StreamProtocol;
use std::io;
use tokio::sync::mpsc;

/// Protocol name of claims streams.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/claims/1");

/// Opens claims streams through the mesh's swarm.
#[derive(Clone)]
pub struct MeshTransport {
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for MeshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshTransport")
    }
}

impl MeshTransport {
    pub fn new(control: libp2p_stream::Control) -> MeshTransport {
        MeshTransport { control }
    }

    /// Accepts inbound claims streams and hands them on with the peer they came from.
    /// Fails only when the protocol is registered twice.
    pub fn incoming(&self) -> Result<mpsc::Receiver<(String, BoxStream)>, String> {
        let mut control = self.control.clone();
        let mut streams = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some((peer, stream)) = streams.next().await {
                if tx.send((peer.to_base58(), Box::new(stream) as BoxStream)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl Transport for MeshTransport {
    fn open(&self, peer: &str) -> BoxFuture<'static, io::Result<BoxStream>> {
        let mut control = self.control.clone();
        let peer = peer.parse::<libp2p::PeerId>();
        Box::pin(async move {
            let peer = peer.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            control.open_stream(peer, PROTOCOL).await.map(|s| Box::new(s) as BoxStream).map_err(|e| io::Error::new(io::ErrorKind::NotConnected, e.to_string()))
        })
    }
}
