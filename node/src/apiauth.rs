//! Who may use the local API: a bearer token kept in the data dir, a loopback `Host`, no
//! browser `Origin`; and `/v1/hello`, where the node proves its identity to the CLI before
//! the CLI sends it the token.
//!
//! * `api.token` (mode 0600) holds `cmtok_` + 43 base64url characters (256 bits from the OS
//!   RNG). It is created on the first `up` and kept across restarts.
//! * Every request must carry `Authorization: Bearer <token>` (401 otherwise), except
//!   `GET /v1/hello`, which is still subject to the Host and Origin checks.
//! * `GET /v1/hello?nonce=HEX` answers `{peer_id, public_key, signature, api}`: the node's
//!   ed25519 signature over [`hello_message`]`(nonce, local address of the connection)`.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the token inside the data dir.
pub const TOKEN_FILE: &str = "api.token";
/// Every token starts with this, so it is recognisable in configs and secret scanners.
pub const TOKEN_PREFIX: &str = "cmtok_";
/// Domain separation of the hello signature.
pub const HELLO_DOMAIN: &[u8] = b"craftmesh/api-hello/v1\0";
/// Path of the unauthenticated identity check.
pub const HELLO_PATH: &str = "/v1/hello";

/// Errors reading or creating the token. A present but malformed token is never replaced.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read API token {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(
        "API token {path} is malformed (expected `{TOKEN_PREFIX}` and 43 base64url characters); move it away to create a new one (clients must then be given the new token)"
    )]
    Malformed { path: PathBuf },
    #[error("cannot write API token {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),
}

/// A new random token.
pub fn generate_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| TokenError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// Whether `t` has the shape of a token (prefix, 43 base64url characters).
pub fn is_well_formed(t: &str) -> bool {
    t.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// `data_dir/api.token`.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

/// Reads the token of `data_dir` (no creation).
pub fn read_token(data_dir: &Path) -> Result<String, TokenError> {
    let path = token_path(data_dir);
    let bytes = std::fs::read(&path).map_err(|source| TokenError::Read { path: path.clone(), source })?;
    if bytes.len() > 1024 {
        return Err(TokenError::Malformed { path });
    }
    let t = String::from_utf8_lossy(&bytes).trim().to_string();
    if is_well_formed(&t) { Ok(t) } else { Err(TokenError::Malformed { path }) }
}

/// Reads `data_dir/api.token`, creating it (mode 0600) when missing. Returns the token and
/// whether it was new.
pub fn load_or_create_token(data_dir: &Path) -> Result<(String, bool), TokenError> {
    match read_token(data_dir) {
        Ok(t) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let path = token_path(data_dir);
                if let Ok(m) = std::fs::metadata(&path)
                    && m.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(file = %path.display(), "API token is readable by other users; restricting it to mode 0600");
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
                }
            }
            Ok((t, false))
        }
        Err(TokenError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let t = generate_token()?;
            let path = token_path(data_dir);
            crate::identity::write_private(&path, format!("{t}\n").as_bytes()).map_err(|source| TokenError::Write { path, source })?;
            Ok((t, true))
        }
        Err(e) => Err(e),
    }
}

/// What the API accepts, and the identity it proves in `/v1/hello`.
#[derive(Debug)]
pub struct ApiAuth {
    pub token: String,
    /// `--api-allow-remote`: the bound address (any IP literal when bound to 0.0.0.0 / ::)
    /// is accepted as `Host` too.
    pub allow_remote: bool,
    pub bound: SocketAddr,
    pub keypair: libp2p_identity::Keypair,
}

/// Addresses of one API connection, for `/v1/hello`.
#[derive(Debug, Clone, Copy)]
pub struct ConnAddrs {
    pub local: Option<SocketAddr>,
    pub remote: SocketAddr,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NoDelay>> for ConnAddrs {
    fn connect_info(stream: axum::serve::IncomingStream<'_, NoDelay>) -> Self {
        ConnAddrs { local: stream.io().local_addr().ok(), remote: *stream.remote_addr() }
    }
}

/// The API's listener, with `TCP_NODELAY` on every connection: answers written in several
/// pieces (server-sent events, MCP over `/mcp/NAME`) must not wait for the client's
/// delayed ACK (40 ms on Linux).
#[derive(Debug)]
pub struct NoDelay(pub tokio::net::TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((s, a)) => {
                    let _ = s.set_nodelay(true);
                    return (s, a);
                }
                // Out of descriptors and the like: back off briefly, as axum does.
                Err(e) => {
                    tracing::debug!(error = %e, "API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// The same address whether the socket saw it as IPv4 or IPv4-mapped IPv6.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The bytes the node signs: domain, nonce, NUL, the API address the client connected to.
pub fn hello_message(nonce: &str, api: SocketAddr) -> Vec<u8> {
    let mut m = HELLO_DOMAIN.to_vec();
    m.extend_from_slice(nonce.as_bytes());
    m.push(0);
    m.extend_from_slice(canonical(api).to_string().as_bytes());
    m
}

/// A nonce is 32 to 128 lowercase or uppercase hex digits.
pub fn valid_nonce(n: &str) -> bool {
    (32..=128).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The answer of `/v1/hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub peer_id: String,
    /// The node's public key, libp2p protobuf encoding, hex.
    pub public_key: String,
    /// ed25519 signature over [`hello_message`], hex.
    pub signature: String,
    /// The address that was signed (the connection's local address on the node).
    pub api: String,
}

/// Why a hello does not prove the expected node.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("its public key does not decode")]
    BadKey,
    #[error("it claims peer id {0}, which does not match its public key")]
    KeyMismatch(String),
    #[error("it is peer {0}")]
    WrongPeer(String),
    #[error("its signature does not verify for this nonce and address {0}")]
    BadSignature(SocketAddr),
}

/// Checks a hello against the expected peer id, our nonce and the address we connected to.
pub fn verify_hello(h: &Hello, expected: &libp2p_identity::PeerId, nonce: &str, connected_to: SocketAddr) -> Result<(), HelloError> {
    let key_bytes = hex::decode(&h.public_key).map_err(|_| HelloError::BadKey)?;
    let key = libp2p_identity::PublicKey::try_decode_protobuf(&key_bytes).map_err(|_| HelloError::BadKey)?;
    let from_key = key.to_peer_id();
    if from_key.to_base58() != h.peer_id {
        return Err(HelloError::KeyMismatch(h.peer_id.clone()));
    }
    if &from_key != expected {
        return Err(HelloError::WrongPeer(h.peer_id.clone()));
    }
    let sig = hex::decode(&h.signature).map_err(|_| HelloError::BadSignature(connected_to))?;
    if !key.verify(&hello_message(nonce, connected_to), &sig) {
        return Err(HelloError::BadSignature(connected_to));
    }
    Ok(())
}

fn refuse(code: StatusCode, msg: String) -> Response {
    let mut r = (code, axum::Json(crate::api::ApiError { error: msg, name: None })).into_response();
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    r
}

/// Splits a `Host` value into the host part (brackets removed, lowercase, no trailing dot).
fn host_part(v: &str) -> Option<String> {
    let v = v.trim();
    let host = if let Some(rest) = v.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        h
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() && !h.contains(':') => h,
            Some(_) => return None,
            None => v,
        }
    };
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    (!h.is_empty()).then_some(h)
}

/// Whether `Host: value` names this node: a loopback name or address, or (allowed remote)
/// the bound address.
pub fn host_allowed(value: &str, allow_remote: bool, bound: SocketAddr) -> bool {
    let Some(h) = host_part(value) else { return false };
    if h == "localhost" || h.ends_with(".localhost") {
        return true;
    }
    match h.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => true,
        Ok(ip) if allow_remote => bound.ip().is_unspecified() || canonical(SocketAddr::new(ip, 0)).ip() == canonical(bound).ip(),
        _ => false,
    }
}

/// Whether `Authorization` carries `Bearer <expected>` (constant-time comparison).
pub fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Some((scheme, token)) = v.trim().split_once(' ') else { return false };
    scheme.eq_ignore_ascii_case("bearer") && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

/// Middleware in front of every route: Host, Origin, then the token (not for `/v1/hello`).
pub async fn guard(State(auth): State<Arc<ApiAuth>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !host_allowed(host, auth.allow_remote, auth.bound) {
        let shown: String = host.chars().take(100).collect();
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!("Host `{shown}` is not this node's API: use a loopback address such as 127.0.0.1 or localhost"),
        );
    }
    if headers.contains_key(header::ORIGIN) {
        return refuse(StatusCode::FORBIDDEN, "requests from web pages (with an Origin header) are refused".into());
    }
    if req.uri().path() != HELLO_PATH && !bearer_matches(headers, &auth.token) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!(
                "missing or wrong API token: send `Authorization: Bearer <token>` with the token from {TOKEN_FILE} in the node's data dir (`craftmesh api-token`)"
            ),
        );
    }
    next.run(req).await
}

/// `GET /v1/hello?nonce=HEX`.
pub async fn hello(State(auth): State<Arc<ApiAuth>>, req: Request) -> Response {
    let nonce = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("nonce=")).filter(|n| valid_nonce(n)).map(str::to_string);
    let Some(nonce) = nonce else {
        return refuse(StatusCode::BAD_REQUEST, "hello needs ?nonce= with 32 to 128 hex digits".into());
    };
    let local = req.extensions().get::<ConnectInfo<ConnAddrs>>().and_then(|c| c.0.local).unwrap_or(auth.bound);
    let local = canonical(local);
    let signature = match auth.keypair.sign(&hello_message(&nonce, local)) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot sign: {e}")),
    };
    let public = auth.keypair.public();
    axum::Json(Hello {
        peer_id: public.to_peer_id().to_base58(),
        public_key: hex::encode(public.encode_protobuf()),
        signature: hex::encode(signature),
        api: local.to_string(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> SocketAddr {
        "127.0.0.1:7410".parse().expect("addr")
    }

    #[test]
    fn loopback_hosts_are_accepted_and_others_refused() {
        for ok in ["localhost", "localhost:7410", "api.localhost:1", "127.0.0.1:7410", "127.1.2.3", "[::1]:7410", "[::1]", "LOCALHOST."] {
            assert!(host_allowed(ok, false, bound()), "{ok}");
        }
        for bad in ["", "evil.example", "evil.example:7410", "localhost.evil.example", "10.0.0.2:7410", "[::2]:1", "127.0.0.1:x", "[::1]x", "::1"] {
            assert!(!host_allowed(bad, false, bound()), "{bad}");
        }
    }

    #[test]
    fn allowed_remote_accepts_the_bound_address_but_never_other_names() {
        let b: SocketAddr = "10.0.0.2:7410".parse().expect("addr");
        assert!(host_allowed("10.0.0.2:7410", true, b));
        assert!(!host_allowed("10.0.0.3:7410", true, b));
        assert!(!host_allowed("10.0.0.2:7410", false, b));
        let any: SocketAddr = "0.0.0.0:7410".parse().expect("addr");
        assert!(host_allowed("192.168.1.5:7410", true, any));
        assert!(!host_allowed("rebind.example:7410", true, any));
    }

    #[test]
    fn tokens_are_recognisable_random_and_kept() {
        let a = generate_token().expect("token");
        let b = generate_token().expect("token");
        assert!(is_well_formed(&a) && a != b, "{a} {b}");
        let tmp = tempfile::tempdir().expect("tempdir");
        let (t1, new1) = load_or_create_token(tmp.path()).expect("create");
        let (t2, new2) = load_or_create_token(tmp.path()).expect("load");
        assert!(new1 && !new2 && t1 == t2);
        std::fs::write(token_path(tmp.path()), "cmtok_short").expect("write");
        assert!(matches!(load_or_create_token(tmp.path()), Err(TokenError::Malformed { .. })));
    }

    #[test]
    fn a_hello_verifies_only_for_its_peer_nonce_and_address() {
        let kp = libp2p_identity::Keypair::generate_ed25519();
        let addr = bound();
        let nonce = "00112233445566778899aabbccddeeff";
        let h = Hello {
            peer_id: kp.public().to_peer_id().to_base58(),
            public_key: hex::encode(kp.public().encode_protobuf()),
            signature: hex::encode(kp.sign(&hello_message(nonce, addr)).expect("sign")),
            api: addr.to_string(),
        };
        let me = kp.public().to_peer_id();
        assert!(verify_hello(&h, &me, nonce, addr).is_ok());
        assert!(matches!(verify_hello(&h, &me, nonce, "127.0.0.1:7411".parse().expect("addr")), Err(HelloError::BadSignature(_))));
        assert!(matches!(verify_hello(&h, &me, "ffeeddccbbaa99887766554433221100", addr), Err(HelloError::BadSignature(_))));
        let other = libp2p_identity::Keypair::generate_ed25519().public().to_peer_id();
        assert!(matches!(verify_hello(&h, &other, nonce, addr), Err(HelloError::WrongPeer(_))));
    }
}
