//! What PromptCraft-style lock files say. They are read, never trusted: a URL found here
//! is verified like any other before it is reported healthy.

/// The useful content of a lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockContent {
    pub url: Option<String>,
    pub pid: Option<u32>,
}

/// Parses a lock file: a URL on the first line (`http...`), a bare pid, or a JSON object
/// with `url` / `endpoint` / `server_url`, `port` and `pid`. Anything else is empty.
pub fn parse(content: &str) -> LockContent {
    let t = content.trim();
    if t.starts_with('{') {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else { return LockContent::default() };
        let url = ["url", "endpoint", "server_url"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|x| x.as_str()).filter(|s| s.starts_with("http")).map(str::to_string))
            .or_else(|| {
                let port = v.get("port").and_then(|p| p.as_u64()).filter(|p| (1..=65535).contains(p))?;
                let host = v.get("host").and_then(|h| h.as_str()).filter(|h| !h.is_empty() && !h.contains('/')).unwrap_or("127.0.0.1");
                Some(format!("http://{host}:{port}"))
            });
        let pid = v.get("pid").and_then(|p| p.as_u64()).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        return LockContent { url, pid };
    }
    let first = t.lines().next().unwrap_or("").trim();
    if first.starts_with("http") {
        return LockContent { url: Some(first.to_string()), pid: None };
    }
    LockContent { url: None, pid: first.parse().ok().filter(|p| *p > 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_files_in_every_shape() {
        assert_eq!(parse("http://127.0.0.1:8000/mcp\n").url.as_deref(), Some("http://127.0.0.1:8000/mcp"));
        assert_eq!(parse(" 4242 \n"), LockContent { url: None, pid: Some(4242) });
        assert_eq!(parse(r#"{"url": "http://h:1/mcp", "pid": 7}"#), LockContent { url: Some("http://h:1/mcp".into()), pid: Some(7) });
        assert_eq!(parse(r#"{"port": 8001, "pid": 9}"#).url.as_deref(), Some("http://127.0.0.1:8001"));
        assert_eq!(parse(r#"{"port": 70000}"#), LockContent::default());
        assert_eq!(parse("garbage"), LockContent::default());
        assert_eq!(parse("{not json"), LockContent::default());
        assert_eq!(parse(""), LockContent::default());
    }
}
