//! In-process TCP servers for tests, friendly and hostile: plain HTTP, silent, flooding, garbage.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A TCP server on 127.0.0.1 run by threads of this process; stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    pub port: u16,
    pub kind: &'static str,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn spawn_server(kind: &'static str, handler: fn(TcpStream, &AtomicBool)) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let accept = std::thread::Builder::new()
        .name(format!("{kind}-accept"))
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = conn else { continue };
                let stop3 = stop2.clone();
                let _ = std::thread::Builder::new().name(format!("{kind}-conn")).spawn(move || handler(s, &stop3));
            }
        })
        .expect("spawn accept thread");
    TestServer { port, kind, stop, accept: Some(accept) }
}

/// Reads an HTTP request head and, if it has `Content-Length`, up to 1 MiB of body.
/// Returns the head, or `None` when the peer sent nothing useful before `timeout`.
fn read_request(s: &mut TcpStream, timeout: Duration) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 || Instant::now() >= deadline {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut have = buf.len() - head_end;
    while have < len && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    Some(head)
}

fn plain_http_conn(mut s: TcpStream, _stop: &AtomicBool) {
    if read_request(&mut s, Duration::from_secs(5)).is_none() {
        return;
    }
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
    // Let the peer read the answer before the socket closes.
    let mut sink = [0u8; 1024];
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

fn silent_conn(mut s: TcpStream, stop: &AtomicBool) {
    // Accept, read and discard whatever comes, never answer; hold the connection until the
    // peer closes it or the server is dropped.
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 8192];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// Bytes a [`flood_server`] sends after its header.
pub const FLOOD_BYTES: usize = 64 << 20;

/// Bytes a [`garbage_server`] sends on accept.
pub const GARBAGE_BYTES: usize = 16 << 20;

fn flood_conn(mut s: TcpStream, stop: &AtomicBool) {
    // Answer whatever arrives (or nothing, after a second) with a valid header and a
    // never-ending JSON body.
    let _ = read_request(&mut s, Duration::from_secs(1));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {FLOOD_BYTES}\r\n\r\n");
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    let prefix = br#"{"jsonrpc":"2.0","id":1,"result":{"padding":""#;
    let mut chunk = vec![b'a'; 64 * 1024];
    chunk[..prefix.len()].copy_from_slice(prefix);
    let mut sent = 0;
    while sent < FLOOD_BYTES && !stop.load(Ordering::SeqCst) {
        let n = chunk.len().min(FLOOD_BYTES - sent);
        if s.write_all(&chunk[..n]).is_err() {
            return;
        }
        if sent == 0 {
            chunk[..prefix.len()].fill(b'a');
        }
        sent += n;
    }
}

fn garbage_conn(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut x: u64 = RandomState::new().build_hasher().finish() | 1;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < GARBAGE_BYTES && !stop.load(Ordering::SeqCst) {
        for b in chunk.chunks_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        if sent == 0 {
            chunk[0] = 0xff; // never looks like "HTTP/"
        }
        if s.write_all(&chunk).is_err() {
            return;
        }
        sent += chunk.len();
    }
}

/// Answers `200 ok` (text/plain) to any HTTP request, e.g. `GET /health`, and closes.
pub fn plain_http_server() -> TestServer {
    spawn_server("plain-http", plain_http_conn)
}

/// Accepts connections and never answers.
pub fn silent_server() -> TestServer {
    spawn_server("silent", silent_conn)
}

/// Answers every connection with a valid `HTTP/1.1 200` header (`Content-Type:
/// application/json`) and then [`FLOOD_BYTES`] of body that never closes its JSON.
pub fn flood_server() -> TestServer {
    spawn_server("flood", flood_conn)
}

/// Writes [`GARBAGE_BYTES`] of random non-HTTP bytes on accept, without reading.
pub fn garbage_server() -> TestServer {
    spawn_server("garbage", garbage_conn)
}
