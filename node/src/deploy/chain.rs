//! The fallback chain: which tiers of a server's `priority_order` can start an instance
//! here, and starting one.

use super::container::{self, DockerLaunch};
use super::instance::{Instance, Launch, Under};
use crate::share::child::{Child, Command};
use craftmesh_protocol::config::catalog::ServerSpec;
use craftmesh_protocol::config::mcp::{Strategy, Tier};
use craftmesh_protocol::deploy::service::plain_service;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Requests through a shared server time out after this unless its launch entry says.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a child may take to start and answer `initialize` + `tools/list`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn request_timeout(spec: &ServerSpec) -> Duration {
    spec.launch.as_ref().and_then(|l| l.timeout).map(|s| Duration::from_secs(s.max(1))).unwrap_or(DEFAULT_REQUEST_TIMEOUT).max(DEFAULT_REQUEST_TIMEOUT)
}

pub(super) fn npx_package(spec: &ServerSpec) -> Option<String> {
    spec.strategies.iter().find_map(|(_, s)| match s {
        Strategy::NpxAvailable { package } if !package.is_empty() => Some(package.clone()),
        _ => None,
    })
}

/// The commands to try, in the server's priority order.
pub(super) fn chain(spec: &ServerSpec, base: &std::path::Path) -> Vec<(Tier, Launch)> {
    let mut out = Vec::new();
    for tier in &spec.priority_order {
        match tier {
            Tier::ExternalDeployment if spec.strategies.iter().any(|(t, _)| t == tier) => out.push((*tier, Launch::External)),
            Tier::UserInstallation => {
                if let Some(l) = &spec.launch
                    && let Some(program) = &l.command
                {
                    let cwd = l.cwd.as_ref().map(|c| {
                        let p = crate::config_files::expand_home(c);
                        if p.is_relative() { base.join(p) } else { p }
                    });
                    let env = l.env.iter().map(|(k, v)| (k.clone(), expand(v))).collect();
                    out.push((*tier, Launch::Process(Command { program: program.clone(), args: l.args.iter().map(|a| expand(a)).collect(), cwd, env })));
                }
            }
            Tier::DockerSidecar => {
                if let Some(d) = DockerLaunch::from_spec(spec) {
                    out.push((*tier, Launch::Docker(d)));
                }
            }
            Tier::NpxCloud => {
                if let Some(p) = npx_package(spec) {
                    out.push((*tier, Launch::Process(Command { program: "npx".into(), args: vec!["-y".into(), p], cwd: None, env: BTreeMap::new() })));
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn expand(v: &str) -> String {
    craftmesh_protocol::config::source::expand_env(v, &|k| std::env::var(k).ok()).unwrap_or_else(|_| v.to_string())
}

pub(super) fn config_hash(spec: &ServerSpec) -> String {
    use sha2::Digest as _;
    let text = serde_json::to_string(&spec.launch).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

pub(super) fn log_attempt(name: &str, tier: Tier, launch: &Launch, attempt: u32) {
    tracing::info!(server = name, tier = tier.as_str(), attempt, launch = %launch, "starting the instance");
}

/// Starts one tier's instance and checks it: MCP `initialize` + `tools/list`, or for a
/// plain service its HTTP or TCP health check. A Docker tier first adopts a running
/// container of the same grant (`under`).
pub(super) async fn start_instance(spec: &ServerSpec, launch: &Launch, under: &Under) -> Result<Arc<dyn Instance>, String> {
    let (name, request_timeout) = (spec.name.as_str(), request_timeout(spec));
    let plain = match plain_service(spec) {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return Err(e.to_string()),
    };
    match launch {
        Launch::Process(cmd) => match &plain {
            Some(p) => super::service::ServiceProcess::start(name, cmd, p, check_every(spec), START_TIMEOUT).await.map(|c| Arc::new(c) as Arc<dyn Instance>),
            None => Child::start(name, cmd, START_TIMEOUT, request_timeout).await.map(|c| Arc::new(c) as Arc<dyn Instance>),
        },
        Launch::Docker(d) => {
            match container::adopt(d, under, request_timeout).await {
                Ok(Some(c)) => return Ok(Arc::new(c)),
                Ok(None) => {}
                Err(e) => tracing::warn!(server = name, error = %e, "could not adopt the container of this grant; deploying another"),
            }
            container::start(d, under, START_TIMEOUT, request_timeout).await.map(|c| Arc::new(c) as Arc<dyn Instance>)
        }
        Launch::External => Err("an external instance is adopted by the manager".into()),
    }
}

/// How often a running plain service is health-checked: its launch entry's
/// `health_check.interval`, else `deployment_config.health_check_interval` (seconds).
pub(super) fn check_every(spec: &ServerSpec) -> Duration {
    spec.launch
        .as_ref()
        .and_then(|l| l.health_check.as_ref())
        .and_then(|h| h.interval)
        .or_else(|| spec.deployment.as_ref().and_then(|d| d.health_check_interval))
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(super::service::DEFAULT_CHECK_EVERY)
}
