//! Keeping things in step with the claims: links of local sessions to other nodes'
//! instances are closed when the claim moves on, and servers marked to run with the node
//! are deployed when no node runs them.

use super::manager::{Deployer, Remote};
use crate::claims::wire::{ClientOp, ClientReply};
use crate::share::link::{Link, lock};
use std::sync::Arc;
use std::time::Duration;

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
                r.retain(|x| x.link.upgrade().is_some_and(|l| !l.is_closed()));
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
                        if let Some(l) = x.link.upgrade() {
                            tracing::info!(key, holder = %node, token, "the instance's claim moved on; closing the session's link to it");
                            l.close();
                        }
                    }
                }
            }
        }
    }

    pub(super) fn watch_remote(self: &Arc<Self>, key: String, node: String, token: u64, link: &Arc<Link>) {
        let start = {
            let mut r = lock(&self.remotes);
            let start = r.is_empty();
            r.push(Remote { key, node, token, link: Arc::downgrade(link) });
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
