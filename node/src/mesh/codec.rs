//! The request-response codec of the mesh: a u32 length, then a wire frame
//! (`craftmesh_protocol::wire`), with the length checked before anything is read.

use craftmesh_protocol::wire::{self, MAX_FRAME, Message};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use std::io;

/// Protocol name on the wire.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/rpc/1");

/// Frames `Message`s for libp2p request-response.
#[derive(Debug, Clone, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Message> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame length {len} out of range")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    wire::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, msg: &Message) -> io::Result<()> {
    let bytes = wire::encode(msg);
    if bytes.len() > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "message too large"));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Message;
    type Response = Message;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Message> {
        read_frame(io).await
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Message> {
        read_frame(io).await
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, req: Message) -> io::Result<()> {
        write_frame(io, &req).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T, res: Message) -> io::Result<()> {
        write_frame(io, &res).await
    }
}
