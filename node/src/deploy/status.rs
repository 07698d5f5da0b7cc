//! What runs where: `deploy status` rows, and `resolve` of a shared server that runs
//! somewhere on the LAN under its claim.

use super::manager::{Deployer, Running, svc_key};
use crate::claims::wire::{ClientOp, ClientReply};
use crate::share::link::lock;
use craftmesh_protocol::config::mcp::{StrategyKind, Tier};
use craftmesh_protocol::deploy::service::plain_service;
use craftmesh_protocol::report::{Evidence, Finding, Protocol, Status};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

/// What `deploy status` shows for one shared server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentView {
    pub server: String,
    /// Peer id of the node running it (the claim's holder); `None`: not running anywhere.
    pub node: Option<String>,
    pub local: bool,
    pub token: Option<u64>,
    pub expires_in_ms: Option<u64>,
    /// How it was deployed (`user_installation`, `npx_cloud`), when local.
    pub via: Option<String>,
    pub command: Option<String>,
    pub pid: Option<u32>,
    pub since_ms: Option<u64>,
    pub restarts: u32,
    /// Client sessions of this node on it.
    pub sessions: i64,
}

impl Deployer {
    /// What runs where: every `svc/` claim of the cluster, with local details.
    pub async fn status(&self) -> Result<Vec<DeploymentView>, String> {
        let keys = match self.claims.request(ClientOp::List, Duration::from_secs(3)).await {
            ClientReply::List { keys, .. } => keys,
            ClientReply::Unavailable { reason } => return Err(format!("claims unavailable: {reason}")),
            other => return Err(format!("unexpected claims answer: {other:?}")),
        };
        let running = lock(&self.running);
        let sessions = lock(&self.sessions).clone();
        let mut out: BTreeMap<String, DeploymentView> = BTreeMap::new();
        for k in keys {
            let Some(server) = k.key.strip_prefix("svc/") else { continue };
            let h = k.holders.first();
            out.insert(
                server.to_string(),
                view(server, h.map(|h| (h.holder.node.clone(), h.holder.token, h.expires_in_ms)), &self.me, running.get(server), &sessions),
            );
        }
        for (name, r) in running.iter() {
            out.entry(name.clone()).or_insert_with(|| view(name, Some((self.me.clone(), r.held.token, 0)), &self.me, Some(r), &sessions));
        }
        Ok(out.into_values().collect())
    }

    /// `resolve NAME` of a shared server (`prevent_duplicate`) that runs somewhere on the
    /// LAN under its claim: how this node reaches it (`/mcp/NAME` on the API at `api`, or
    /// a plain service's front on this host's loopback). `None` when nobody holds its claim
    /// (nothing is deployed for a plain `resolve`) or it is not a shared server.
    pub async fn claimed_finding(self: &std::sync::Arc<Self>, name: &str, api: SocketAddr) -> Option<Finding> {
        let canonical = self.canonical(name)?;
        let spec = self.spec(&canonical).ok()?;
        if spec.deployment.as_ref().and_then(|d| d.prevent_duplicate) != Some(true) {
            return None;
        }
        let (node, token, expires_in_ms) = self.holder(&svc_key(&canonical)).await.ok()??;
        let plain = matches!(plain_service(&spec), Some(Ok(_)));
        let (url, protocol, port) = if plain {
            let (port, url) = self.front(&canonical).await.ok()?;
            (url, Protocol::Http, Some(port))
        } else {
            (format!("http://{api}/mcp/{canonical}"), Protocol::Mcp, Some(api.port()))
        };
        let at = if node == self.me { "this node".to_string() } else { format!("node {node}") };
        Some(Finding {
            name: canonical.clone(),
            url: Some(url),
            protocol: Some(protocol),
            healthy: true,
            status: Status::Healthy,
            source: StrategyKind::Mesh,
            tier: Tier::ExternalDeployment,
            evidence: Evidence { port, ..Evidence::default() },
            server_info: None,
            tools: None,
            process: None,
            latency_ms: None,
            health_url: None,
            detail: Some(format!("the LAN's instance, on {at} (claim svc/{canonical}, token {token}, lease {expires_in_ms} ms left)")),
            checked_at_ms: crate::discovery::now_ms(),
        })
    }
}

fn view(server: &str, holder: Option<(String, u64, u64)>, me: &str, r: Option<&Running>, sessions: &HashMap<String, i64>) -> DeploymentView {
    DeploymentView {
        server: server.to_string(),
        local: holder.as_ref().is_some_and(|(n, _, _)| n == me),
        node: holder.as_ref().map(|(n, _, _)| n.clone()),
        token: holder.as_ref().map(|(_, t, _)| *t),
        expires_in_ms: holder.as_ref().map(|(_, _, e)| *e),
        via: r.map(|r| r.via.clone()),
        command: r.map(|r| r.command.clone()),
        pid: r.and_then(|r| r.child.pid()),
        since_ms: r.map(|r| r.since_ms),
        restarts: r.map(|r| r.restarts).unwrap_or(0),
        sessions: sessions.get(server).copied().unwrap_or(0),
    }
}
