//! Decisions over findings: how a probe's observations classify an endpoint, which
//! finding serves a name, and whether a cached result may still be used.

use crate::config::catalog::ServerSpec;
use crate::config::mcp::Tier;
use crate::report::{Finding, Protocol, ServerInfo, Status, ToolsSummary};
use sha2::{Digest, Sha256};

/// Why a check failed: `silent` when nothing came back before the timeout (a hung or
/// slow server), as opposed to an answer that was not what the check needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub silent: bool,
    pub message: String,
}

impl Failure {
    pub fn silent(message: impl Into<String>) -> Self {
        Failure { silent: true, message: message.into() }
    }
    pub fn answered(message: impl Into<String>) -> Self {
        Failure { silent: false, message: message.into() }
    }
}

/// What a probe of one URL observed, in the order it tried things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// TCP connect result; `Err` holds the reason.
    pub connect: Result<(), String>,
    /// MCP initialize (and tools/list) result, if attempted.
    pub mcp: Option<Result<(ServerInfo, Option<ToolsSummary>), Failure>>,
    /// HTTP health check: status code, or why no status came back.
    pub http: Option<Result<u16, Failure>>,
}

/// The verdict for one observed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub protocol: Option<Protocol>,
    pub status: Status,
    pub healthy: bool,
    pub server_info: Option<ServerInfo>,
    pub tools: Option<ToolsSummary>,
    pub detail: Option<String>,
}

/// Classifies an observation. `expect_mcp` says the configured server is an MCP server,
/// so an endpoint that answers only plain HTTP is `not_mcp` and never healthy MCP.
pub fn classify(obs: &Observation, expect_mcp: bool) -> Verdict {
    if let Err(e) = &obs.connect {
        return Verdict { protocol: None, status: Status::Unreachable, healthy: false, server_info: None, tools: None, detail: Some(e.clone()) };
    }
    if let Some(Ok((info, tools))) = &obs.mcp {
        return Verdict {
            protocol: Some(Protocol::Mcp),
            status: Status::Healthy,
            healthy: true,
            server_info: Some(info.clone()),
            tools: tools.clone(),
            detail: None,
        };
    }
    let mcp_err = match &obs.mcp {
        Some(Err(e)) => Some(e.message.clone()),
        _ => None,
    };
    match &obs.http {
        Some(Ok(code)) => {
            let ok = (200..300).contains(code);
            let (status, healthy) = match (expect_mcp, ok) {
                (true, _) => (Status::NotMcp, false),
                (false, true) => (Status::Healthy, true),
                (false, false) => (Status::Unhealthy, false),
            };
            let mut detail = format!("HTTP health answered {code}");
            if let Some(e) = mcp_err {
                detail.push_str(&format!("; MCP initialize failed: {e}"));
            }
            Verdict { protocol: Some(Protocol::Http), status, healthy, server_info: None, tools: None, detail: Some(detail) }
        }
        other => {
            let mut parts = Vec::new();
            if let Some(e) = mcp_err {
                parts.push(format!("MCP initialize failed: {e}"));
            }
            if let Some(Err(e)) = other {
                parts.push(format!("HTTP failed: {}", e.message));
            }
            // Nothing answered at all: a hung server, not proof that it is not MCP.
            let silent = [obs.mcp.as_ref().map(|r| matches!(r, Err(f) if f.silent)), other.as_ref().map(|r| matches!(r, Err(f) if f.silent))]
                .into_iter()
                .flatten()
                .all(|s| s);
            let status = if expect_mcp && !silent { Status::NotMcp } else { Status::Unhealthy };
            Verdict {
                protocol: Some(Protocol::Tcp),
                status,
                healthy: false,
                server_info: None,
                tools: None,
                detail: (!parts.is_empty()).then(|| parts.join("; ")),
            }
        }
    }
}

/// Order in which tiers are tried for `spec`, honouring `prefer_external`.
pub fn tier_order(spec: &ServerSpec, prefer_external: bool) -> Vec<Tier> {
    let mut order = spec.priority_order.clone();
    if prefer_external && let Some(i) = order.iter().position(|t| *t == Tier::ExternalDeployment) {
        let t = order.remove(i);
        order.insert(0, t);
    }
    order
}

/// Sorts findings best first: healthy with a URL first, then by tier rank, then MCP over
/// HTTP over TCP, then lower latency. Stable for equal keys.
pub fn rank(findings: &mut [Finding], order: &[Tier]) {
    let tier_rank = |t: Tier| order.iter().position(|o| *o == t).unwrap_or(usize::MAX);
    findings.sort_by(|a, b| {
        let ka = (!(a.healthy && a.url.is_some()), tier_rank(a.tier), a.protocol.map_or(3, |p| p as u8));
        let kb = (!(b.healthy && b.url.is_some()), tier_rank(b.tier), b.protocol.map_or(3, |p| p as u8));
        ka.cmp(&kb).then_with(|| a.latency_ms.unwrap_or(f64::MAX).total_cmp(&b.latency_ms.unwrap_or(f64::MAX)))
    });
}

/// The finding that serves a name: the first healthy one with a URL after [`rank`].
pub fn best(findings: &[Finding]) -> Option<&Finding> {
    findings.iter().find(|f| f.healthy && f.url.is_some())
}

/// Whether a result checked at `checked_at_ms` may still be used at `now_ms`.
/// Even a fresh result is re-verified before it is handed out; this only says whether
/// the whole strategy set must run again.
pub fn is_fresh(checked_at_ms: u64, now_ms: u64, ttl_minutes: u64) -> bool {
    now_ms.saturating_sub(checked_at_ms) < ttl_minutes.saturating_mul(60_000)
}

/// What a node offers the mesh after a discovery round: the best healthy finding of each
/// server, with a loopback URL rewritten to `lan` (the node's advertised address). A
/// server bound to loopback only then fails remote verification and is never handed out
/// remotely; one bound to all interfaces becomes reachable from other machines.
///
/// A server with `enabled: false` is never offered, whatever was found for it.
pub fn service_ads(report: &crate::report::Report, lan: Option<&str>) -> Vec<crate::wire::ServiceAd> {
    let mut out = Vec::new();
    for s in report.servers.iter().filter(|s| s.enabled) {
        let Some(f) = s.findings.iter().find(|f| f.healthy && f.url.is_some()) else { continue };
        let Some(url) = f.url.as_deref() else { continue };
        out.push(crate::wire::ServiceAd {
            name: s.name.clone(),
            url: lan.map_or_else(|| url.to_string(), |lan| rewrite_loopback(url, lan)),
            protocol: f.protocol.unwrap_or(Protocol::Tcp),
            healthy: true,
            server_info: f.server_info.clone(),
            tools: f.tools.clone(),
        });
    }
    out
}

/// Carries the last known instance of each server whose probes timed out this round:
/// a server in `servers` that is `timed_out`, enabled, and has no healthy finding now gets
/// the healthy findings it had in `previous` (and their `resolved` URL), with a note.
/// Its record on the mesh ([`service_ads`]) and its `resolved` URL then survive a slow
/// round; a round that finished and found nothing still drops them. Carried findings keep
/// their old `checked_at_ms`, and `resolve` re-verifies them before handing them out.
pub fn keep_last_known(previous: &[crate::report::ServerReport], servers: &mut [crate::report::ServerReport]) {
    for s in servers.iter_mut().filter(|s| s.enabled && s.timed_out && best(&s.findings).is_none()) {
        let Some(p) = previous.iter().find(|p| p.name == s.name) else { continue };
        let kept: Vec<Finding> = p.findings.iter().filter(|f| f.healthy && f.url.is_some()).cloned().collect();
        if kept.is_empty() {
            continue;
        }
        s.notes.push(format!("probes timed out; keeping the last known instance ({} finding(s) from an earlier round)", kept.len()));
        s.resolved = p.resolved.clone().or_else(|| kept[0].url.clone());
        s.findings.splice(0..0, kept);
    }
}

/// Replaces a loopback host in `scheme://host:port/...` with `lan`.
pub fn rewrite_loopback(url: &str, lan: &str) -> String {
    for lo in ["127.0.0.1", "localhost", "[::1]"] {
        for scheme in ["http://", "https://"] {
            let prefix = format!("{scheme}{lo}");
            if let Some(rest) = url.strip_prefix(&prefix)
                && (rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
            {
                return format!("{scheme}{lan}{rest}");
            }
        }
    }
    url.to_string()
}

/// Hash of a tool list, independent of the order the server listed them in.
/// Each tool is given as (name, canonical JSON of its input schema).
pub fn tools_hash(tools: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = tools.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for (name, schema) in sorted {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((schema.len() as u64).to_le_bytes());
        h.update(schema.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ServerInfo {
        ServerInfo { name: "s".into(), version: "1".into(), protocol_version: "2025-06-18".into() }
    }

    #[test]
    fn plain_http_is_never_healthy_mcp() {
        let obs = Observation { connect: Ok(()), mcp: Some(Err(Failure::answered("404"))), http: Some(Ok(200)) };
        let v = classify(&obs, true);
        assert_eq!(v.status, Status::NotMcp);
        assert!(!v.healthy);
        assert_eq!(v.protocol, Some(Protocol::Http));
        let v = classify(&obs, false);
        assert!(v.healthy);
    }

    #[test]
    fn mcp_answer_is_healthy_mcp() {
        let obs = Observation { connect: Ok(()), mcp: Some(Ok((info(), None))), http: None };
        let v = classify(&obs, true);
        assert_eq!((v.status, v.healthy, v.protocol), (Status::Healthy, true, Some(Protocol::Mcp)));
    }

    #[test]
    fn refused_connection_is_unreachable() {
        let obs = Observation { connect: Err("refused".into()), mcp: None, http: None };
        assert_eq!(classify(&obs, true).status, Status::Unreachable);
    }

    #[test]
    fn silent_port_is_unhealthy_not_declared_non_mcp() {
        let obs = Observation { connect: Ok(()), mcp: Some(Err(Failure::silent("timeout"))), http: None };
        let v = classify(&obs, true);
        assert_eq!((v.protocol, v.status, v.healthy), (Some(Protocol::Tcp), Status::Unhealthy, false));
    }

    #[test]
    fn garbage_answer_is_not_mcp() {
        let obs = Observation { connect: Ok(()), mcp: Some(Err(Failure::answered("invalid HTTP"))), http: Some(Err(Failure::answered("invalid HTTP"))) };
        let v = classify(&obs, true);
        assert_eq!((v.status, v.healthy), (Status::NotMcp, false));
    }

    #[test]
    fn tools_hash_ignores_order() {
        let a = vec![("a".to_string(), "{}".to_string()), ("b".to_string(), "{\"x\":1}".to_string())];
        let b = vec![a[1].clone(), a[0].clone()];
        assert_eq!(tools_hash(&a), tools_hash(&b));
        assert_ne!(tools_hash(&a), tools_hash(&a[..1]));
    }

    #[test]
    fn loopback_urls_are_rewritten_to_the_lan_address_only() {
        assert_eq!(rewrite_loopback("http://127.0.0.1:8000/mcp", "10.0.0.5"), "http://10.0.0.5:8000/mcp");
        assert_eq!(rewrite_loopback("http://localhost/mcp", "10.0.0.5"), "http://10.0.0.5/mcp");
        assert_eq!(rewrite_loopback("http://[::1]:9/x", "10.0.0.5"), "http://10.0.0.5:9/x");
        assert_eq!(rewrite_loopback("http://10.1.1.1:8000/mcp", "10.0.0.5"), "http://10.1.1.1:8000/mcp");
        assert_eq!(rewrite_loopback("http://127.0.0.10:8000/", "10.0.0.5"), "http://127.0.0.10:8000/", "only exact loopback hosts");
        assert_eq!(rewrite_loopback("http://localhost.example:1/", "10.0.0.5"), "http://localhost.example:1/");
    }

    fn server(name: &str, enabled: bool, timed_out: bool, healthy_url: Option<&str>) -> crate::report::ServerReport {
        use crate::config::mcp::StrategyKind;
        use crate::report::Evidence;
        let findings = healthy_url
            .map(|u| Finding {
                name: name.into(),
                url: Some(u.into()),
                protocol: Some(Protocol::Mcp),
                healthy: true,
                status: Status::Healthy,
                source: StrategyKind::PortCheck,
                tier: Tier::ExternalDeployment,
                evidence: Evidence::default(),
                server_info: Some(info()),
                tools: None,
                process: None,
                latency_ms: Some(1.0),
                health_url: None,
                detail: None,
                checked_at_ms: 0,
            })
            .into_iter()
            .collect();
        crate::report::ServerReport { name: name.into(), aliases: vec![], enabled, resolved: healthy_url.map(Into::into), findings, notes: vec![], timed_out }
    }

    fn report(servers: Vec<crate::report::ServerReport>) -> crate::report::Report {
        let timed_out = servers.iter().any(|s| s.timed_out);
        crate::report::Report { host: Default::default(), servers, probes: 0, elapsed_ms: 0.0, finished_at_ms: 0, timed_out }
    }

    fn names(ads: &[crate::wire::ServiceAd]) -> Vec<(&str, &str)> {
        ads.iter().map(|a| (a.name.as_str(), a.url.as_str())).collect()
    }

    #[test]
    fn a_disabled_server_is_never_offered_to_the_mesh() {
        let r = report(vec![server("on", true, false, Some("http://127.0.0.1:1/mcp")), server("off", false, false, Some("http://127.0.0.1:2/mcp"))]);
        assert_eq!(names(&service_ads(&r, None)), vec![("on", "http://127.0.0.1:1/mcp")]);
        let previous = vec![server("off", true, false, Some("http://127.0.0.1:2/mcp"))];
        let mut now = vec![server("off", false, true, None)];
        keep_last_known(&previous, &mut now);
        assert!(now[0].findings.is_empty(), "a disabled server is not carried either");
    }

    #[test]
    fn a_server_whose_probes_timed_out_keeps_its_last_known_instance() {
        let first = vec![server("slow", true, false, Some("http://127.0.0.1:1/mcp")), server("fast", true, false, Some("http://127.0.0.1:2/mcp"))];
        let mut second = vec![server("slow", true, true, None), server("fast", true, false, Some("http://127.0.0.1:3/mcp"))];
        keep_last_known(&first, &mut second);
        assert_eq!(second[0].resolved.as_deref(), Some("http://127.0.0.1:1/mcp"));
        assert!(second[0].notes.iter().any(|n| n.contains("timed out")), "{:?}", second[0].notes);
        let ads = service_ads(&report(second.clone()), Some("10.0.0.5"));
        assert_eq!(names(&ads), vec![("slow", "http://10.0.0.5:1/mcp"), ("fast", "http://10.0.0.5:3/mcp")]);
        // And again on the next slow round: carried from the carried report.
        let mut third = vec![server("slow", true, true, None), server("fast", true, false, Some("http://127.0.0.1:3/mcp"))];
        keep_last_known(&second, &mut third);
        assert_eq!(names(&service_ads(&report(third), Some("10.0.0.5"))), names(&ads));
    }

    #[test]
    fn a_finished_round_that_finds_nothing_drops_the_instance() {
        let previous = vec![server("gone", true, false, Some("http://127.0.0.1:1/mcp"))];
        let mut now = vec![server("gone", true, false, None)];
        keep_last_known(&previous, &mut now);
        assert!(service_ads(&report(now), None).is_empty());
        // A timed-out server that found a healthy instance anyway keeps only the new one.
        let mut now = vec![server("gone", true, true, Some("http://127.0.0.1:9/mcp"))];
        keep_last_known(&previous, &mut now);
        assert_eq!(names(&service_ads(&report(now), None)), vec![("gone", "http://127.0.0.1:9/mcp")]);
    }

    #[test]
    fn freshness_follows_ttl() {
        assert!(is_fresh(0, 59_999, 1));
        assert!(!is_fresh(0, 60_000, 1));
        assert!(is_fresh(100, 50, 1), "clock going back keeps the result");
    }
}
