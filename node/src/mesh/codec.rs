//! The request-response codec of the mesh: one message as one or more frames, each a
//! 4-byte header (length, and a bit saying more frames follow) and at most
//! `wire::MAX_FRAME` bytes, checked before anything is read. A message is at most
//! [`MAX_MESSAGE`] bytes in all: large transfers (Raft snapshots) travel in chunks while
//! everything else fits one frame.

use craftmesh_protocol::wire::{self, Message, Reassembly};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use std::io;

/// Protocol name on the wire.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/rpc/2");
/// Largest message in all frames together.
pub use wire::MAX_MESSAGE;

/// Frames `Message`s for libp2p request-response.
#[derive(Debug, Clone, Default)]
pub struct Codec;

/// Reads one logical message (its frames) of at most `max` bytes.
pub async fn read_chunked<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut r = Reassembly::new(max);
    loop {
        let mut h = [0u8; 4];
        io.read_exact(&mut h).await?;
        let (len, more) = r.header(h).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        r.push(&buf);
        if !more {
            return Ok(r.finish());
        }
    }
}

/// Writes one logical message as frames, in one write: every frame of a small message
/// (the usual case) leaves in one stream frame and, on the wire, one segment.
pub async fn write_chunked<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "message too large"));
    }
    let parts = wire::chunks(bytes);
    let mut out = Vec::with_capacity(bytes.len() + 4 * parts.len());
    for (i, p) in parts.iter().enumerate() {
        out.extend_from_slice(&wire::frame_header(p.len(), i + 1 < parts.len()));
        out.extend_from_slice(p);
    }
    io.write_all(&out).await
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Message> {
    let bytes = read_chunked(io, MAX_MESSAGE).await?;
    if bytes.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "empty message"));
    }
    wire::decode_large(&bytes, MAX_MESSAGE).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, msg: &Message) -> io::Result<()> {
    write_chunked(io, &wire::encode(msg)).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn a_message_larger_than_a_frame_round_trips_in_chunks_and_an_oversized_one_is_refused() {
        futures::executor::block_on(async {
            let big: Vec<u8> = (0..(5 * wire::MAX_FRAME + 3)).map(|i| (i % 253) as u8).collect();
            let mut out = Cursor::new(Vec::new());
            write_chunked(&mut out, &big).await.expect("write");
            let written = out.into_inner();
            assert!(written.len() > big.len(), "headers on every frame");
            let back = read_chunked(&mut Cursor::new(written.clone()), MAX_MESSAGE).await.expect("read");
            assert_eq!(back, big);
            let err = read_chunked(&mut Cursor::new(written), 2 * wire::MAX_FRAME).await.expect_err("over the cap");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            // a header claiming more than a frame is refused before anything is read
            let mut lie = ((wire::MAX_FRAME as u32) + 1).to_be_bytes().to_vec();
            lie.extend([0u8; 16]);
            assert!(read_chunked(&mut Cursor::new(lie), MAX_MESSAGE).await.is_err());
        });
    }
}
