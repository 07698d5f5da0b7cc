//! Instances this node runs, once started: recorded, watched (killed on a lost claim, restarted after a crash), stopped.

use super::{Deployer, Running};
use crate::deploy::chain::chain;
use crate::deploy::holder::{self, Held};
use crate::deploy::instance::{Instance, Under};
use crate::share::link::lock;
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::config::mcp::Tier;
use std::sync::Arc;
use std::time::Duration;

impl Deployer {
    /// Records a started instance and watches it: claim lost → kill at once; child exit →
    /// restart under the same claim (`auto_restart`) or give the claim up.
    pub(super) fn adopt(self: &Arc<Self>, spec: ServerSpec, child: Arc<dyn Instance>, held: Arc<Held>, tier: Tier, command: String, restarts: u32) {
        let name = spec.name.clone();
        self.emit(&name, if restarts == 0 { "deployed" } else { "restarted" }, held.token, format!("{} via {}: {command}", child.describe(), tier.as_str()));
        lock(&self.running).insert(
            name.clone(),
            Running {
                child: child.clone(),
                held: held.clone(),
                via: tier.as_str().to_string(),
                command: command.clone(),
                since_ms: crate::discovery::now_ms(),
                restarts,
            },
        );
        self.changed.send_modify(|v| *v += 1);
        let me = self.clone();
        tokio::spawn(async move {
            let mut exited = child.exited();
            let lost = tokio::select! {
                biased;
                () = held.lost() => true,
                _ = exited.wait_for(|e| e.is_some()) => false,
            };
            if child.outlives_node() && me.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if lost {
                // A deliberate stop is carried out (with its grace) and released by whoever
                // stopped it, once the instance is gone; a lost claim kills at once.
                if !held.stopped() {
                    child.kill_now();
                }
                me.forget(&name, &child);
                me.emit(&name, if held.stopped() { "stopped" } else { "lost" }, held.token, held.why());
                return;
            }
            let why = exited.borrow().clone().unwrap_or_default();
            me.forget(&name, &child);
            me.emit(&name, "crashed", held.token, format!("{} exited: {why}", child.describe()));
            let auto = spec.deployment.as_ref().and_then(|d| d.auto_restart).unwrap_or(false);
            if auto && !held.is_lost() {
                me.restart(spec, held, restarts + 1).await;
            } else {
                held.give_up();
                // Nothing of it may outlive the claim (a container whose link broke still runs).
                child.stop().await;
                holder::release(&me.claims, &held).await;
            }
        });
    }

    async fn restart(self: &Arc<Self>, spec: ServerSpec, held: Arc<Held>, restarts: u32) {
        let backoff = Duration::from_millis((500u64 << restarts.min(6)).min(30_000));
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = held.lost() => return,
        }
        let under = Under { server: spec.name.clone(), key: held.key.clone(), holder: self.me.clone(), token: held.token };
        for (tier, launch) in chain(&spec, &self.base_dir) {
            if let Ok(child) = self.start_one(&spec, &launch, &under).await {
                if held.is_lost() {
                    child.kill_now();
                    return;
                }
                self.adopt(spec, child, held, tier, launch.to_string(), restarts);
                return;
            }
        }
        let me = self.clone();
        Box::pin(me.restart(spec, held, restarts + 1)).await;
    }

    fn forget(&self, name: &str, child: &Arc<dyn Instance>) {
        let mut r = lock(&self.running);
        if r.get(name).is_some_and(|x| Arc::ptr_eq(&x.child, child)) {
            r.remove(name);
        }
        drop(r);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Stops the local instance of `name` and, once it is gone, releases its claim.
    pub async fn stop(&self, name: &str) -> Result<u64, String> {
        let canonical = self.config.server(name).map(|s| s.name.clone()).unwrap_or_else(|| name.to_string());
        let r = lock(&self.running).get(&canonical).map(|r| (r.child.clone(), r.held.clone()));
        let Some((child, held)) = r else { return Err(format!("{canonical} does not run on this node")) };
        held.stop("stopped by `deploy stop`");
        child.stop().await;
        holder::release(&self.claims, &held).await;
        Ok(held.token)
    }

    /// Stops every local child (the node is stopping) and releases its claim. Containers
    /// are left running under their claims, for this node to adopt when it comes back.
    pub async fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<(Arc<dyn Instance>, Arc<Held>)> = lock(&self.running).values().map(|r| (r.child.clone(), r.held.clone())).collect();
        for (c, h) in all {
            if c.outlives_node() {
                tracing::info!(key = %h.key, token = h.token, instance = %c.describe(), "left running for the restarted node to adopt");
                if let Some(l) = c.link() {
                    l.close();
                }
                continue;
            }
            h.stop("the node is stopping");
            c.stop().await;
            holder::release(&self.claims, &h).await;
        }
    }
}
