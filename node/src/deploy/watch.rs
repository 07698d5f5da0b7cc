//! Keeping things in step with the claims: links of local sessions to other nodes'
//! instances are closed when the claim moves on, and servers marked to run with the node
//! are deployed when no node runs them.

use super::manager::{Deployer, Remote};
use crate::claims::wire::{ClientOp, ClientReply};
use crate::share::link::{Link, lock};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a session of this node relies on at another node's instance.
#[derive(Debug)]
pub(super) enum Watched {
    /// An MCP session's link.
    Link(std::sync::Weak<Link>),
    /// A plain service's tunnel; cancelled when it ends.
    Tunnel(CancellationToken),
}

impl Watched {
    fn live(&self) -> bool {
        match self {
            Watched::Link(l) => l.upgrade().is_some_and(|l| !l.is_closed()),
            Watched::Tunnel(t) => !t.is_cancelled(),
        }
    }

    fn close(&self) {
        match self {
            Watched::Link(l) => {
                if let Some(l) = l.upgrade() {
                    l.close();
                }
            }
            Watched::Tunnel(t) => t.cancel(),
        }
    }
}

/// How often remote links are checked against the claims.
const REMOTE_CHECK: Duration = Duration::from_millis(250);

impl Deployer {
    /// Closes remote links whose grant is no longer the key's holder (expired, handed on),
    /// so their sessions fail over instead of waiting on a silent stream.
    async fn check_remotes(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REMOTE_CHECK).await;
            let watched: Vec<(String, String, u64)> = {
                let mut r = lock(&self.remotes);
                r.retain(|x| x.target.live());
                if r.is_empty() {
                    return;
                }
                r.iter().map(|x| (x.key.clone(), x.node.clone(), x.token)).collect()
            };
            let keys = match self.claims.request(ClientOp::List, Duration::from_secs(1)).await {
                ClientReply::List { keys, .. } => keys,
                // No answer (no leader, or this node is cut off): nothing is known, keep.
                _ => continue,
            };
            for (key, node, token) in watched {
                let held = keys.iter().find(|k| k.key == key).and_then(|k| k.holders.first()).is_some_and(|h| h.holder.node == node && h.holder.token == token);
                if !held {
                    for x in lock(&self.remotes).iter().filter(|x| x.key == key && x.node == node && x.token == token) {
                        if x.target.live() {
                            tracing::info!(key, holder = %node, token, "the instance's claim moved on; closing the session's link to it");
                            x.target.close();
                        }
                    }
                }
            }
        }
    }

    pub(super) fn watch_remote(self: &Arc<Self>, key: String, node: String, token: u64, link: &Arc<Link>) {
        self.watch_target(Remote { key, node, token, target: Watched::Link(Arc::downgrade(link)) });
    }

    /// Closes a plain service's tunnel (by cancelling `close`) when its claim moves on.
    pub(super) fn watch_tunnel(self: &Arc<Self>, key: String, node: String, token: u64, close: CancellationToken) {
        self.watch_target(Remote { key, node, token, target: Watched::Tunnel(close) });
    }

    fn watch_target(self: &Arc<Self>, remote: Remote) {
        let start = {
            let mut r = lock(&self.remotes);
            let start = r.is_empty();
            r.push(remote);
            start
        };
        if start {
            tokio::spawn(self.clone().check_remotes());
        }
    }

    /// Keeps the servers marked to run with the node (`prevent_duplicate: true` and
    /// `on_demand: false`) running somewhere on the LAN: checked every 2 s, deployed (by
    /// claim, so once) when no node runs them, which is also their failover.
    pub fn keep_started(self: &Arc<Self>) {
        let names: Vec<String> = self
            .config
            .servers
            .values()
            .filter(|s| s.enabled && s.deployment.as_ref().is_some_and(|d| d.prevent_duplicate == Some(true) && d.on_demand == Some(false)))
            .filter_map(|s| self.canonical(&s.name))
            .collect();
        for name in names {
            let me = self.clone();
            tokio::spawn(async move {
                // A plain service is served on this host's loopback from the start.
                if me.is_plain(&name)
                    && let Err(e) = me.front(&name).await
                {
                    tracing::warn!(server = %name, error = %e, "cannot serve the service on this host");
                }
                let mut pause = Duration::from_secs(2);
                loop {
                    tokio::time::sleep(pause).await;
                    match me.ensure(&name, Duration::from_secs(60)).await {
                        Ok(_) => pause = Duration::from_secs(2),
                        Err(e) => {
                            tracing::warn!(server = %name, error = %e, "cannot keep the server running");
                            pause = (pause * 2).min(Duration::from_secs(60));
                        }
                    }
                }
            });
        }
    }
}
