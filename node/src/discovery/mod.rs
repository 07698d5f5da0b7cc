//! Local discovery driven by the configuration: every strategy of every server runs
//! concurrently, each probe with the configured timeout, and results are ranked by the
//! server's priority order (the ranking itself is pure, in `craftmesh_protocol::select`).

pub mod probe;
mod strategies;

use craftmesh_protocol::config::mcp::{HealthCheckType, StrategyKind, Tier};
use craftmesh_protocol::config::{Config, ServerSpec};
use craftmesh_protocol::report::{Evidence, Finding, HostResources, Report, ServerReport, Status};
use craftmesh_protocol::select;
use probe::{Expect, Target};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Runs discovery rounds for one configuration. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Discoverer {
    config: Arc<Config>,
    /// Base for relative `path_check` paths (the project dir).
    base_dir: PathBuf,
    /// Environment lookup, injectable for tests.
    env: fn(&str) -> Option<String>,
    /// The probes' HTTP client, built once: building one loads the TLS root store from
    /// disk, which need not happen every round.
    client: std::sync::OnceLock<reqwest::Client>,
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Discoverer {
    pub fn new(config: Arc<Config>, base_dir: PathBuf) -> Self {
        Discoverer { config, base_dir, env: process_env, client: std::sync::OnceLock::new() }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The probes' HTTP client (cheap to clone: it is shared).
    pub(crate) fn client(&self) -> reqwest::Client {
        self.client.get_or_init(|| probe::http_client(self.timeout())).clone()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.settings.health_check_timeout_ms)
    }

    /// One full round over every configured server.
    pub async fn discover_all(&self, host: HostResources) -> Report {
        let specs: Vec<&ServerSpec> = self.config.servers.values().collect();
        let start = Instant::now();
        let (servers, probes) = self.discover(&specs).await;
        let timed_out = servers.iter().any(|s| s.timed_out);
        Report { host, servers, probes, elapsed_ms: start.elapsed().as_secs_f64() * 1000.0, finished_at_ms: now_ms(), timed_out }
    }

    /// A round over some servers; returns their reports and the number of probes run.
    ///
    /// Every strategy runs concurrently. When `discovery_timeout` passes, the strategies
    /// that finished keep their findings; those still running are dropped and named in
    /// their server's notes, and that server is marked `timed_out`.
    pub async fn discover(&self, specs: &[&ServerSpec]) -> (Vec<ServerReport>, usize) {
        use futures::StreamExt as _;
        let ctx = strategies::Ctx::new(self, specs);
        let overall = Duration::from_millis(self.config.settings.discovery_timeout_ms);
        // (server, what ran) of each job, by job index.
        let mut labels: Vec<(&str, String)> = Vec::new();
        let mut jobs = Vec::new();
        for spec in specs {
            for (tier, strategy) in &spec.strategies {
                if *tier == Tier::EmbeddedSubmodule && self.config.settings.disable_embedded {
                    continue;
                }
                labels.push((spec.name.as_str(), format!("{} ({})", strategy.kind().as_str(), tier.as_str())));
                jobs.push(ctx.run(spec, *tier, strategy));
            }
            if let Some(url) = spec.launch.as_ref().and_then(|l| l.url.as_deref()) {
                labels.push((spec.name.as_str(), format!("{} ({})", StrategyKind::LaunchUrl.as_str(), Tier::ExternalDeployment.as_str())));
                jobs.push(ctx.run_launch_url(spec, url));
            }
        }
        let probes = jobs.len();
        let mut finished = vec![false; probes];
        let mut results = Vec::with_capacity(probes);
        let mut pending: futures::stream::FuturesUnordered<_> = jobs.into_iter().enumerate().map(|(i, job)| async move { (i, job.await) }).collect();
        let deadline = tokio::time::sleep(overall);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = pending.next() => match next {
                    Some((i, outcome)) => {
                        finished[i] = true;
                        results.push(outcome);
                    }
                    None => break,
                },
                () = &mut deadline => {
                    let late: Vec<&str> = labels.iter().zip(&finished).filter(|(_, f)| !**f).map(|((s, _), _)| *s).collect();
                    tracing::warn!(timeout_ms = overall.as_millis() as u64, unfinished = late.len(), servers = ?late, "discovery round timed out; keeping what finished");
                    break;
                }
            }
        }
        drop(pending);
        let mut by_server: std::collections::BTreeMap<&str, (Vec<Finding>, Vec<String>, bool)> =
            specs.iter().map(|s| (s.name.as_str(), (Vec::new(), Vec::new(), false))).collect();
        for (name, findings, notes) in results {
            if let Some(e) = by_server.get_mut(name.as_str()) {
                e.0.extend(findings);
                e.1.extend(notes);
            }
        }
        for ((name, what), _) in labels.iter().zip(&finished).filter(|(_, f)| !**f) {
            if let Some(e) = by_server.get_mut(name) {
                e.1.push(format!("{what} did not finish within discovery_timeout ({} ms); its result is unknown this round", overall.as_millis()));
                e.2 = true;
            }
        }
        let mut out = Vec::new();
        for spec in specs {
            let (mut findings, mut notes, timed_out) = by_server.remove(spec.name.as_str()).unwrap_or_default();
            if !spec.enabled {
                notes.insert(0, "disabled in configuration".to_string());
            }
            for var in &spec.missing_env {
                notes.push(format!("needs environment variable {var}, which is not set"));
            }
            if spec.strategies.is_empty() && spec.launch.as_ref().is_none_or(|l| l.url.is_none()) {
                notes.push("no discovery strategies configured".to_string());
            }
            dedupe(&mut findings);
            select::rank(&mut findings, &select::tier_order(spec, self.config.settings.prefer_external));
            let resolved = select::best(&findings).and_then(|f| f.url.clone());
            out.push(ServerReport { name: spec.name.clone(), aliases: spec.aliases.clone(), enabled: spec.enabled, resolved, findings, notes, timed_out });
        }
        (out, probes)
    }

    /// Checks a previously healthy finding again before it is handed out.
    pub async fn reverify(&self, spec: &ServerSpec, f: &Finding) -> Finding {
        let mut f = f.clone();
        let Some(url) = f.url.clone() else { return f };
        let expect = expect_for(spec);
        let target = match Target::from_url(&url, "/mcp", None) {
            Ok(mut t) => {
                if expect != Expect::Mcp {
                    t.health_url = f.health_url.clone();
                }
                t
            }
            Err(e) => {
                f.healthy = false;
                f.status = Status::Unreachable;
                f.detail = Some(e);
                return f;
            }
        };
        let client = self.client();
        let r = probe::probe(&client, &target, expect, self.timeout()).await;
        apply_verdict(&mut f, &r, expect);
        f
    }
}

/// What a server's checks must prove, from its launch entry's `health_check.type`.
pub fn expect_for(spec: &ServerSpec) -> Expect {
    match spec.launch.as_ref().and_then(|l| l.health_check.as_ref()).and_then(|h| h.kind) {
        Some(HealthCheckType::Http) => Expect::Http,
        Some(HealthCheckType::Tcp) => Expect::Tcp,
        _ => Expect::Mcp,
    }
}

/// A finding for `spec` found by `source` in `tier`, not yet checked.
fn finding(spec: &ServerSpec, tier: Tier, source: StrategyKind, status: Status, evidence: Evidence) -> Finding {
    Finding {
        name: spec.name.clone(),
        url: None,
        protocol: None,
        healthy: false,
        status,
        source,
        tier,
        evidence,
        server_info: None,
        tools: None,
        process: None,
        latency_ms: None,
        health_url: None,
        detail: None,
        checked_at_ms: now_ms(),
    }
}

/// Applies a probe's verdict to a finding.
fn apply_verdict(f: &mut Finding, r: &probe::ProbeResult, expect: Expect) {
    let v = select::classify(&r.observation, expect == Expect::Mcp);
    // A TCP-only service is healthy on connect.
    let (status, healthy) = if expect == Expect::Tcp && r.observation.connect.is_ok() { (Status::Healthy, true) } else { (v.status, v.healthy) };
    f.protocol = v.protocol;
    f.status = status;
    f.healthy = healthy;
    f.server_info = v.server_info;
    f.tools = v.tools;
    f.detail = v.detail;
    f.latency_ms = Some((r.latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0);
    f.checked_at_ms = now_ms();
}

/// Folds findings of the same URL and tier into one, keeping the first (highest ranked
/// strategy) and merging the evidence of the others into it, so a port check and an env
/// variable naming one server show as one service with both pieces of evidence.
fn dedupe(findings: &mut Vec<Finding>) {
    let mut out: Vec<Finding> = Vec::with_capacity(findings.len());
    for f in findings.drain(..) {
        let dup = f.url.as_ref().and_then(|u| out.iter_mut().find(|o| o.url.as_ref() == Some(u) && o.tier == f.tier && o.healthy == f.healthy));
        match dup {
            Some(o) => merge_evidence(&mut o.evidence, f.evidence),
            None => out.push(f),
        }
    }
    *findings = out;
}

fn merge_evidence(into: &mut Evidence, from: Evidence) {
    into.port = into.port.or(from.port);
    into.pid = into.pid.or(from.pid);
    into.container_id = into.container_id.take().or(from.container_id);
    into.container_name = into.container_name.take().or(from.container_name);
    into.image = into.image.take().or(from.image);
    into.env_var = into.env_var.take().or(from.env_var);
    into.lock_path = into.lock_path.take().or(from.lock_path);
    into.path = into.path.take().or(from.path);
    into.package = into.package.take().or(from.package);
    into.pattern = into.pattern.take().or(from.pattern);
}
