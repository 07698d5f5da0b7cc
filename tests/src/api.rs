//! Raw HTTP to a node's local API from the test process: every request carries the node's
//! API token (`api.token` in its data dir) unless a test asks for something else.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// An answer: status, head (status line and headers) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().filter_map(|l| l.split_once(':')).find(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }

    /// The body as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// The API token of the node with data dir `data_dir`; panics when it is missing.
pub fn token(data_dir: &Path) -> String {
    let p = data_dir.join("api.token");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).trim().to_string()
}

/// `GET path` with exactly `headers` (no `Host` is added unless given), `Connection: close`,
/// over a raw socket with deadlines.
pub fn request(addr: &str, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.take(16 << 20).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer { status, head: head.to_string(), body: body.to_string() })
}

/// `GET path` as a well-behaved client: `Host: addr` and the data dir's token.
pub fn get(data_dir: &Path, addr: &str, path: &str) -> Option<Answer> {
    let auth = format!("Bearer {}", token(data_dir));
    request(addr, path, &[("Host", addr), ("Authorization", &auth)])
}
