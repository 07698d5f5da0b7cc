//! `/v1/claims` and `/v1/cluster`: claims through the local API (the same token and host
//! checks as every route). Requests go to the cluster's leader through
//! [`ClaimsHandle::request`]; answers give lease times as "expires in" on the leader's
//! clock at the moment it answered.

use crate::claims::ClaimsHandle;
use crate::claims::wire::{ClientOp, ClientReply};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use craftmesh_protocol::claims::state::KeyView;
use craftmesh_protocol::claims::{Holder, Meta, Outcome, Refusal};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Default lease when an acquire names none.
pub const DEFAULT_TTL_MS: u64 = 10_000;
/// How long a request may look for a leader, unless it says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait an acquire may ask for.
pub const MAX_WAIT_MS: u64 = 24 * 3_600_000;

/// The body of `POST /v1/claims`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// `acquire`, `renew` or `release`.
    pub op: String,
    pub key: String,
    pub ttl_ms: Option<u64>,
    pub limit: Option<u32>,
    /// Acquire: wait this long for a slot (default 0: answer at once).
    pub wait_ms: Option<u64>,
    /// Acquire: the holder's session (default: a new random one; pass your own so a retry
    /// after a lost answer gets the same grant back).
    pub session: Option<String>,
    pub lock_delay_ms: Option<u64>,
    /// Renew, release: the grant's fencing token.
    pub token: Option<u64>,
    /// Renew, release: the cluster that granted the token (an acquire's answer says). A
    /// leader of another cluster answers `not_held` even when it holds the key with the
    /// same number (tokens are log indices; two clusters that merged may share them).
    pub cluster: Option<String>,
    pub instance: Option<String>,
    pub config_hash: Option<String>,
    /// What the claim protects stops with this node (see the README): lets the cluster hand
    /// the key on at once when this node is proven crashed.
    pub bound_to_node: Option<bool>,
    /// How long to look for a leader (default 5 s; waits add their own time).
    pub timeout_ms: Option<u64>,
}

/// A holder with its remaining lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderOut {
    pub node: String,
    pub session: String,
    pub token: u64,
    pub ttl_ms: u64,
    pub expires_in_ms: u64,
    pub meta: Meta,
}

fn holder_out(h: &Holder, now_ms: u64) -> HolderOut {
    HolderOut {
        node: h.node.clone(),
        session: h.session.clone(),
        token: h.token,
        ttl_ms: h.ttl_ms,
        expires_in_ms: h.deadline_ms.saturating_sub(now_ms),
        meta: h.meta.clone(),
    }
}

/// The answer of `POST /v1/claims` (fields that do not apply are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub op: String,
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<HolderOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// Refused: `held`, `lock_delay`, `limit_mismatch`, `too_many_keys`; renew/release of a
    /// token that is not held: `not_held`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Refused for a lock-delay: grants resume in this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Refused for another limit: the key's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The key's holders (after a grant, or those that made the refusal).
    pub holders: Vec<HolderOut>,
    pub session: Option<String>,
    pub cluster: String,
}

/// The answer of `GET /v1/claims`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimList {
    pub cluster: String,
    pub leader: u64,
    pub keys: Vec<KeyView>,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ErrorBody { error: msg.into() })).into_response()
}

/// A random session id (128 bits, hex).
pub fn new_session() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// Turns a request into the op the leader executes; `Err` is a message for a 400.
pub fn to_op(r: &ClaimRequest, node: &str, lock_delay_default_ms: u64) -> Result<(ClientOp, Option<String>), String> {
    let token = || r.token.ok_or_else(|| format!("`{}` needs `token` (the fencing token of the grant)", r.op));
    match r.op.as_str() {
        "acquire" => {
            let session = r.session.clone().unwrap_or_else(new_session);
            let wait_ms = r.wait_ms.unwrap_or(0);
            if wait_ms > MAX_WAIT_MS {
                return Err(format!("wait_ms {wait_ms} is over the limit of {MAX_WAIT_MS}"));
            }
            let op = ClientOp::Acquire {
                key: r.key.clone(),
                node: node.to_string(),
                session: session.clone(),
                ttl_ms: r.ttl_ms.unwrap_or(DEFAULT_TTL_MS),
                limit: r.limit.unwrap_or(1),
                lock_delay_ms: r.lock_delay_ms.unwrap_or(lock_delay_default_ms),
                meta: Meta { instance: r.instance.clone(), config_hash: r.config_hash.clone(), bound_to_node: r.bound_to_node.unwrap_or(false) },
                wait_ms,
            };
            Ok((op, Some(session)))
        }
        "renew" => Ok((ClientOp::Renew { key: r.key.clone(), token: token()?, ttl_ms: r.ttl_ms, cluster: r.cluster.clone() }, None)),
        "release" => Ok((ClientOp::Release { key: r.key.clone(), token: token()?, cluster: r.cluster.clone() }, None)),
        other => Err(format!("unknown op `{other}`: expected acquire, renew or release")),
    }
}

/// Turns the leader's answer into the response (and its HTTP status).
pub fn to_response(op: &str, key: &str, session: Option<String>, reply: ClientReply) -> Result<ClaimResponse, (StatusCode, String)> {
    let ClientReply::Applied { outcome, now_ms, cluster, .. } = reply else {
        return Err(match reply {
            ClientReply::Unavailable { reason } => (StatusCode::SERVICE_UNAVAILABLE, format!("claims unavailable: {reason}")),
            ClientReply::NotLeader { .. } => (StatusCode::SERVICE_UNAVAILABLE, "claims unavailable: no leader answered".into()),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer from the leader".into()),
        });
    };
    let mut out = ClaimResponse { op: op.to_string(), key: key.to_string(), session, cluster, ..ClaimResponse::default() };
    let all = |hs: &[Holder]| hs.iter().map(|h| holder_out(h, now_ms)).collect::<Vec<_>>();
    match outcome {
        Outcome::Granted { holder, holders, .. } => {
            out.granted = Some(true);
            out.token = Some(holder.token);
            out.expires_in_ms = Some(holder.deadline_ms.saturating_sub(now_ms));
            out.holder = Some(holder_out(&holder, now_ms));
            out.holders = all(&holders);
        }
        Outcome::Refused { refusal, holders, .. } => {
            out.granted = Some(false);
            out.holders = all(&holders);
            out.reason = Some(
                match refusal {
                    Refusal::Held => "held",
                    Refusal::LockDelay { until_ms } => {
                        out.retry_in_ms = Some(until_ms.saturating_sub(now_ms));
                        "lock_delay"
                    }
                    Refusal::LimitMismatch { limit } => {
                        out.limit = Some(limit);
                        "limit_mismatch"
                    }
                    Refusal::TooManyKeys => "too_many_keys",
                }
                .to_string(),
            );
        }
        Outcome::Renewed { holder, .. } => {
            out.renewed = Some(true);
            out.token = Some(holder.token);
            out.expires_in_ms = Some(holder.deadline_ms.saturating_sub(now_ms));
            out.holder = Some(holder_out(&holder, now_ms));
        }
        Outcome::Released { holder, .. } => {
            out.released = Some(true);
            out.token = Some(holder.token);
        }
        Outcome::NotHeld { token, .. } => {
            match op {
                "renew" => out.renewed = Some(false),
                _ => out.released = Some(false),
            }
            out.token = Some(token);
            out.reason = Some("not_held".into());
        }
        Outcome::Invalid { reason } => return Err((StatusCode::BAD_REQUEST, reason)),
        Outcome::Done => return Err((StatusCode::INTERNAL_SERVER_ERROR, "unexpected answer from the leader".into())),
    }
    Ok(out)
}

/// `POST /v1/claims`.
pub async fn post(State(claims): State<Option<ClaimsHandle>>, body: Result<Json<ClaimRequest>, axum::extract::rejection::JsonRejection>) -> Response {
    let Some(c) = claims else { return err(StatusCode::SERVICE_UNAVAILABLE, "claims are off on this node (it runs without the mesh)") };
    let Json(r) = match body {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad claim request: {e}")),
    };
    let (op, session) = match to_op(&r, c.me(), c.lock_delay_ms()) {
        Ok(x) => x,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    let timeout = Duration::from_millis(r.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).min(60_000) + r.wait_ms.unwrap_or(0));
    let reply = c.request(op, timeout).await;
    match to_response(&r.op, &r.key, session, reply) {
        Ok(out) => Json(out).into_response(),
        Err((code, msg)) => err(code, msg),
    }
}

/// `GET /v1/claims`: every key with its live holders, read from the leader.
pub async fn list(State(claims): State<Option<ClaimsHandle>>) -> Response {
    let Some(c) = claims else { return err(StatusCode::SERVICE_UNAVAILABLE, "claims are off on this node (it runs without the mesh)") };
    match c.request(ClientOp::List, Duration::from_millis(DEFAULT_TIMEOUT_MS)).await {
        ClientReply::List { keys, cluster, leader, .. } => Json(ClaimList { cluster, leader, keys }).into_response(),
        ClientReply::Unavailable { reason } => err(StatusCode::SERVICE_UNAVAILABLE, format!("claims unavailable: {reason}")),
        _ => err(StatusCode::SERVICE_UNAVAILABLE, "claims unavailable: no leader answered"),
    }
}

/// `GET /v1/cluster`.
pub async fn cluster(State(claims): State<Option<ClaimsHandle>>) -> Response {
    match claims {
        Some(c) => Json(c.view()).into_response(),
        None => err(StatusCode::SERVICE_UNAVAILABLE, "claims are off on this node (it runs without the mesh)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acquire_request_becomes_an_acquire_op_with_defaults() {
        let r = ClaimRequest { op: "acquire".into(), key: "svc/zen".into(), ..ClaimRequest::default() };
        let (op, session) = to_op(&r, "node-a", 0).expect("op");
        let ClientOp::Acquire { ttl_ms, limit, wait_ms, session: s, .. } = op else { panic!("acquire") };
        assert_eq!((ttl_ms, limit, wait_ms), (DEFAULT_TTL_MS, 1, 0));
        assert_eq!(session, Some(s));
        let bad = ClaimRequest { op: "renew".into(), key: "k".into(), ..ClaimRequest::default() };
        assert!(to_op(&bad, "n", 0).expect_err("no token").contains("token"));
        let unknown = ClaimRequest { op: "steal".into(), ..ClaimRequest::default() };
        assert!(to_op(&unknown, "n", 0).expect_err("unknown op").contains("acquire, renew or release"));
    }

    #[test]
    fn a_refusal_lists_the_holders_with_their_remaining_lease() {
        let h = Holder { node: "n".into(), session: "s".into(), token: 7, ttl_ms: 1000, deadline_ms: 5000, granted_at_ms: 4000, meta: Meta::default() };
        let reply = ClientReply::Applied {
            outcome: Outcome::Refused { key: "k".into(), refusal: Refusal::Held, holders: vec![h] },
            now_ms: 4600,
            cluster: "c".into(),
            leader: 1,
        };
        let r = to_response("acquire", "k", None, reply).expect("response");
        assert_eq!(r.granted, Some(false));
        assert_eq!(r.reason.as_deref(), Some("held"));
        assert_eq!(r.holders[0].expires_in_ms, 400);
        let unavailable = to_response("acquire", "k", None, ClientReply::Unavailable { reason: "no leader".into() });
        assert_eq!(unavailable.expect_err("503").0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
