//! Reading the start of a server-sent-events stream (MCP's streamable HTTP answers a POSTed
//! request with one), to decide whether the answer can be sent as plain JSON instead.
//!
//! MCP lets a server answer a POSTed request either with `application/json` (the response
//! alone) or with `text/event-stream` (notifications and requests first, then the response).
//! rmcp's stateful server always streams. Many clients (the official Python SDK among them)
//! handle a JSON answer faster and keep their HTTP connection for the next call, so the node
//! looks at the first event that carries data: when it is already the final response, the
//! answer goes out as JSON; otherwise the stream is passed on untouched, from its first byte.

/// Scans SSE bytes as they arrive, keeping every byte so nothing is lost when the stream is
/// passed on after all.
#[derive(Debug)]
pub struct SseScanner {
    buf: Vec<u8>,
    /// Where the next event starts in `buf`.
    next: usize,
    max: usize,
}

/// What the scanner found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// No event with data yet (only comments, keep-alives or priming events).
    More,
    /// The data of the first event that carries any (multi-line data joined with `\n`).
    Data(String),
    /// More than the bound arrived without an event with data: pass the stream on.
    TooLong,
}

impl SseScanner {
    /// A scanner that holds at most `max` bytes.
    pub fn new(max: usize) -> SseScanner {
        SseScanner { buf: Vec::new(), next: 0, max }
    }

    /// Adds bytes that arrived and scans the complete events among them.
    pub fn push(&mut self, bytes: &[u8]) -> Scan {
        if self.buf.len() + bytes.len() > self.max {
            self.buf.extend_from_slice(bytes);
            return Scan::TooLong;
        }
        self.buf.extend_from_slice(bytes);
        while let Some((end, after)) = event_end(&self.buf[self.next..]) {
            let event = &self.buf[self.next..self.next + end];
            self.next += after;
            if let Some(data) = event_data(event) {
                return Scan::Data(data);
            }
        }
        Scan::More
    }

    /// Every byte pushed so far, to be sent on ahead of the rest of the stream.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// The end of the first complete event in `b` (its length, and where the next one starts):
/// an event ends at an empty line (`\n\n`, `\r\n\r\n` or `\r\r`).
fn event_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    let mut line_start = 0;
    while i < b.len() {
        let nl = match b[i] {
            b'\n' => 1,
            b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
            b'\r' if i + 1 < b.len() => 1,
            b'\r' => return None,
            _ => 0,
        };
        if nl == 0 {
            i += 1;
            continue;
        }
        if i == line_start {
            return Some((line_start, i + nl));
        }
        i += nl;
        line_start = i;
    }
    None
}

/// The data of one event, when it has a non-empty `data` field.
fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    data.filter(|d| !d.is_empty())
}

/// True when `data` is a JSON-RPC response or error (an `id` and a `result` or `error`, no
/// `method`): the last message of a request's stream.
pub fn is_final_response(data: &str) -> bool {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(data) else {
        return false;
    };
    m.contains_key("id") && !m.contains_key("method") && (m.contains_key("result") || m.contains_key("error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priming_event_then_the_response_gives_the_response() {
        let mut s = SseScanner::new(1 << 20);
        assert_eq!(s.push(b"id: 0\nretry: 3000\ndata:\n\n"), Scan::More);
        assert_eq!(s.push(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\nid: 1\n\n"), Scan::Data("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}".into()));
    }

    #[test]
    fn events_split_anywhere_across_chunks_are_joined() {
        let text = b": ping\n\nevent: message\ndata: {\"a\":\ndata: 1}\r\n\r\n";
        for cut in 0..text.len() {
            let mut s = SseScanner::new(1 << 20);
            let first = s.push(&text[..cut]);
            let second = s.push(&text[cut..]);
            let found = if first == Scan::More { second } else { first };
            assert_eq!(found, Scan::Data("{\"a\":\n1}".into()), "cut at {cut}");
        }
    }

    #[test]
    fn an_incomplete_event_is_not_read() {
        let mut s = SseScanner::new(1 << 20);
        assert_eq!(s.push(b"data: {\"id\":1,\"result\":{}}\n"), Scan::More);
        assert_eq!(s.push(b"\n"), Scan::Data("{\"id\":1,\"result\":{}}".into()));
    }

    #[test]
    fn every_byte_is_kept_for_passing_the_stream_on() {
        let mut s = SseScanner::new(1 << 20);
        let _ = s.push(b"data:\n\n");
        let _ = s.push(b"data: {\"method\":\"notifications/progress\"}\n\npartial");
        assert_eq!(s.into_bytes(), b"data:\n\ndata: {\"method\":\"notifications/progress\"}\n\npartial".to_vec());
    }

    #[test]
    fn more_than_the_bound_without_data_is_too_long() {
        let mut s = SseScanner::new(16);
        assert_eq!(s.push(b": keep-alive\n\n"), Scan::More);
        assert_eq!(s.push(b": keep-alive\n\n"), Scan::TooLong);
        assert_eq!(s.into_bytes().len(), 28);
    }

    #[test]
    fn only_responses_and_errors_are_final() {
        assert!(is_final_response(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#));
        assert!(is_final_response(r#"{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}"#));
        assert!(!is_final_response(r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#));
        assert!(!is_final_response(r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#));
        assert!(!is_final_response("[1,2]"));
        assert!(!is_final_response("not json"));
    }
}
