//! The strategies themselves. Each returns findings and notes for one (server, strategy).

use super::probe::{self, Expect, Target};
use super::{Discoverer, apply_verdict, expect_for, finding};
use crate::config_files::expand_home;
use craftmesh_protocol::config::ServerSpec;
use craftmesh_protocol::config::mcp::{Strategy, StrategyKind, Tier};
use craftmesh_protocol::report::{Evidence, Finding, ProcessInfo, Status};
use futures::future::{BoxFuture, FutureExt as _, Shared};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

type Outcome = (String, Vec<Finding>, Vec<String>);
type Processes = Arc<Vec<(String, ProcessInfo)>>;
type Containers = Arc<Result<Vec<bollard::models::ContainerSummary>, String>>;

/// Largest lock file read.
const MAX_LOCK_BYTES: u64 = 4096;
/// At most this many published ports are probed per container.
const MAX_PORTS_PER_CONTAINER: usize = 8;

/// Shared state of one round: one process scan and one container listing serve every
/// strategy that needs them.
pub(super) struct Ctx<'a> {
    d: &'a Discoverer,
    client: reqwest::Client,
    timeout: Duration,
    processes: Shared<BoxFuture<'static, Processes>>,
    containers: Shared<BoxFuture<'static, Containers>>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(d: &'a Discoverer, specs: &[&ServerSpec]) -> Ctx<'a> {
        let timeout = d.timeout();
        let mut patterns: Vec<String> = Vec::new();
        let mut wants_docker = false;
        for s in specs {
            for (_, st) in &s.strategies {
                match st {
                    Strategy::ProcessCheck { patterns: p } => patterns.extend(p.iter().cloned()),
                    Strategy::Docker { .. } => wants_docker = true,
                    _ => {}
                }
            }
        }
        let processes: BoxFuture<'static, Processes> = async move {
            if patterns.is_empty() {
                return Arc::new(Vec::new());
            }
            match tokio::task::spawn_blocking(move || crate::host::match_processes(&patterns)).await {
                Ok(v) => Arc::new(v),
                Err(_) => Arc::new(Vec::new()),
            }
        }
        .boxed();
        let containers: BoxFuture<'static, Containers> = async move {
            if !wants_docker {
                return Arc::new(Ok(Vec::new()));
            }
            Arc::new(list_containers(timeout).await)
        }
        .boxed();
        Ctx { d, client: d.client(), timeout, processes: processes.shared(), containers: containers.shared() }
    }

    pub(super) fn run(&self, spec: &'a ServerSpec, tier: Tier, st: &'a Strategy) -> BoxFuture<'a, Outcome> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let processes = self.processes.clone();
        let containers = self.containers.clone();
        let env = self.d.env;
        let base = self.d.base_dir.clone();
        async move {
            let mut findings = Vec::new();
            let mut notes = Vec::new();
            let expect = expect_for(spec);
            match st {
                Strategy::PortCheck { host, ports, health_endpoint, mcp_path } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    let loopback = matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]");
                    let (fronts, ports): (Vec<u16>, Vec<u16>) = ports.iter().partition(|p| loopback && crate::deploy::tunnel::is_front_port(**p));
                    for p in fronts {
                        notes.push(format!("port {p} is this node's own front of a shared service; not probed"));
                    }
                    let probes = ports.iter().map(|port| {
                        let target = Target::from_port(host, *port, mcp_path, health);
                        let client = client.clone();
                        async move {
                            let r = probe::probe(&client, &target, expect, timeout).await;
                            (*port, target, r)
                        }
                    });
                    for (port, target, r) in futures::future::join_all(probes).await {
                        if r.observation.connect.is_err() {
                            continue; // a closed port is simply absent
                        }
                        let mut f = finding(spec, tier, StrategyKind::PortCheck, Status::Unhealthy, Evidence { port: Some(port), ..Default::default() });
                        checked(&mut f, &target, &r, expect);
                        findings.push(f);
                    }
                }
                Strategy::EnvVariable { variables, mcp_path, health_endpoint } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    let mut probes = Vec::new();
                    for var in variables {
                        let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else { continue };
                        match Target::from_url(&value, mcp_path, health) {
                            Ok(target) => {
                                let ev = Evidence { env_var: Some(var.clone()), port: port_of(&target), ..Default::default() };
                                probes.push(probe_into(&client, spec, tier, StrategyKind::EnvVariable, ev, target, expect, timeout));
                            }
                            Err(e) => notes.push(format!("{var}: {e}")),
                        }
                    }
                    findings.extend(futures::future::join_all(probes).await);
                }
                Strategy::LockFile { patterns, mcp_path, health_endpoint } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    let wanted: Vec<PathBuf> = patterns.iter().map(|p| resolve(&base, p)).collect();
                    // Globbing, reading and the pid check touch the file system: off the async thread.
                    let locks = blocking(move || read_locks(&wanted)).await.unwrap_or_default();
                    let mut probes = Vec::new();
                    for (shown, lock) in locks {
                        match lock {
                            Err(e) => notes.push(format!("lock file {shown}: {e}")),
                            Ok(Lock { url: Some(url), pid, .. }) => match Target::from_url(&url, mcp_path, health) {
                                Ok(target) => {
                                    let ev = Evidence { lock_path: Some(shown), port: port_of(&target), pid, ..Default::default() };
                                    probes.push(probe_into(&client, spec, tier, StrategyKind::LockFile, ev, target, expect, timeout));
                                }
                                Err(e) => notes.push(format!("lock file {shown}: {e}")),
                            },
                            Ok(Lock { url: None, pid: Some(pid), pid_alive: true }) => {
                                let mut f = finding(
                                    spec,
                                    tier,
                                    StrategyKind::LockFile,
                                    Status::Running,
                                    Evidence { lock_path: Some(shown), pid: Some(pid), ..Default::default() },
                                );
                                f.detail = Some(format!("lock file names running pid {pid}; no URL to verify"));
                                findings.push(f);
                            }
                            Ok(Lock { url: None, pid: Some(pid), pid_alive: false }) => {
                                notes.push(format!("lock file {shown} is stale: pid {pid} is not running"))
                            }
                            Ok(Lock { url: None, pid: None, .. }) => notes.push(format!("lock file {shown} holds neither a URL nor a pid")),
                        }
                    }
                    findings.extend(futures::future::join_all(probes).await);
                }
                Strategy::ProcessCheck { patterns } => {
                    let all = processes.await;
                    let mut seen = Vec::new();
                    for (pat, p) in all.iter().filter(|(pat, _)| patterns.contains(pat)) {
                        if seen.contains(&p.pid) {
                            continue;
                        }
                        seen.push(p.pid);
                        let mut f = finding(
                            spec,
                            tier,
                            StrategyKind::ProcessCheck,
                            Status::Running,
                            Evidence { pid: Some(p.pid), pattern: Some(pat.clone()), ..Default::default() },
                        );
                        f.process = Some(p.clone());
                        findings.push(f);
                    }
                }
                Strategy::PathCheck { paths } => {
                    let wanted: Vec<PathBuf> = paths.iter().map(|p| resolve(&base, p)).collect();
                    let present = blocking(move || wanted.into_iter().filter(|p| p.exists()).collect::<Vec<_>>()).await.unwrap_or_default();
                    for path in present {
                        findings.push(finding(
                            spec,
                            tier,
                            StrategyKind::PathCheck,
                            Status::Installed,
                            Evidence { path: Some(path.display().to_string()), ..Default::default() },
                        ));
                    }
                }
                Strategy::NpxAvailable { package } => {
                    let pkg = package.clone();
                    let found = blocking(move || which("npx", env).map(|npx| (npx, npx_cached(&pkg, env)))).await.flatten();
                    match found {
                        None => notes.push(format!("npx is not on PATH, so {package} cannot be launched")),
                        Some((npx, cached)) => {
                            let mut f = finding(
                                spec,
                                tier,
                                StrategyKind::NpxAvailable,
                                Status::Available,
                                Evidence { package: Some(package.clone()), path: Some(npx.display().to_string()), ..Default::default() },
                            );
                            let mut detail =
                                if cached { format!("{package} is in the npx cache") } else { format!("{package} will be downloaded on first use") };
                            if !spec.missing_env.is_empty() {
                                detail.push_str(&format!("; needs {}", spec.missing_env.join(", ")));
                            }
                            f.detail = Some(detail);
                            findings.push(f);
                        }
                    }
                }
                Strategy::Docker { names, images, labels, mcp_path, health_endpoint, .. } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    match &*containers.await {
                        Err(e) => notes.push(format!("docker: {e}")),
                        Ok(list) => {
                            // Every published port of every matching container is probed at once.
                            let mut probes = Vec::new();
                            for c in list.iter().filter(|c| container_matches(c, names, images, labels)) {
                                let id: String = c.id.clone().unwrap_or_default().chars().take(12).collect();
                                let cname = c.names.as_ref().and_then(|n| n.first()).map(|n| n.trim_start_matches('/').to_string());
                                let ev = Evidence { container_id: Some(id.clone()), container_name: cname, image: c.image.clone(), ..Default::default() };
                                let mut ports: Vec<(String, u16)> = c
                                    .ports
                                    .iter()
                                    .flatten()
                                    .filter(|p| !matches!(p.typ, Some(bollard::models::PortSummaryTypeEnum::UDP)))
                                    .filter_map(|p| p.public_port.map(|pp| (host_for(p.ip.as_deref()), pp)))
                                    .collect();
                                ports.sort();
                                ports.dedup_by_key(|p| p.1);
                                ports.truncate(MAX_PORTS_PER_CONTAINER);
                                if ports.is_empty() {
                                    let mut f = finding(spec, tier, StrategyKind::Docker, Status::Running, ev);
                                    f.detail = Some("container runs but publishes no TCP port".into());
                                    findings.push(f);
                                    continue;
                                }
                                for (host, port) in ports {
                                    let target = Target::from_port(&host, port, mcp_path, health);
                                    let ev = Evidence { port: Some(port), ..ev.clone() };
                                    probes.push(probe_into(&client, spec, tier, StrategyKind::Docker, ev, target, expect, timeout));
                                }
                            }
                            findings.extend(futures::future::join_all(probes).await);
                        }
                    }
                }
            }
            (spec.name.clone(), findings, notes)
        }
        .boxed()
    }

    /// Checks the `url` of the server's launch entry (`mcpServers.NAME.url`): it names
    /// where the server runs, so it is an external deployment, reported as `launch_url`.
    pub(super) fn run_launch_url(&self, spec: &'a ServerSpec, url: &'a str) -> BoxFuture<'a, Outcome> {
        let client = self.client.clone();
        let timeout = self.timeout;
        async move {
            let expect = expect_for(spec);
            match Target::from_url(url, "/mcp", launch_health(spec)) {
                Ok(target) => {
                    let ev = Evidence { port: port_of(&target), ..Default::default() };
                    let f = probe_into(&client, spec, Tier::ExternalDeployment, StrategyKind::LaunchUrl, ev, target, expect, timeout).await;
                    (spec.name.clone(), vec![f], Vec::new())
                }
                Err(e) => (spec.name.clone(), Vec::new(), vec![format!("launch entry url: {e}")]),
            }
        }
        .boxed()
    }
}

/// Runs blocking file-system work on tokio's blocking pool: the node's one async thread
/// also answers the mesh's membership probes, and a slow disk must not stall them.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

/// Probes `target` and returns the finding for it.
#[allow(clippy::too_many_arguments)]
async fn probe_into(
    client: &reqwest::Client,
    spec: &ServerSpec,
    tier: Tier,
    source: StrategyKind,
    evidence: Evidence,
    target: Target,
    expect: Expect,
    timeout: Duration,
) -> Finding {
    let r = probe::probe(client, &target, expect, timeout).await;
    let mut f = finding(spec, tier, source, Status::Unreachable, evidence);
    checked(&mut f, &target, &r, expect);
    f
}

/// A lock file's content, with whether the pid it names runs.
struct Lock {
    url: Option<String>,
    pid: Option<u32>,
    pid_alive: bool,
}

/// Expands, reads and parses the lock files matching `patterns`. Blocking.
fn read_locks(patterns: &[PathBuf]) -> Vec<(String, Result<Lock, String>)> {
    patterns
        .iter()
        .flat_map(|p| expand_glob(p))
        .map(|path| {
            let lock = read_small(&path).map(|content| {
                let l = craftmesh_protocol::lockfile::parse(&content);
                let pid_alive = l.pid.is_some_and(crate::host::pid_alive);
                Lock { url: l.url, pid: l.pid, pid_alive }
            });
            (path.display().to_string(), lock)
        })
        .collect()
}

/// The health endpoint named in the server's launch entry, if any.
fn launch_health(spec: &ServerSpec) -> Option<&str> {
    spec.launch.as_ref().and_then(|l| l.health_check.as_ref()).and_then(|h| h.endpoint.as_deref())
}

/// Fills a finding from a probe of `target`.
fn checked(f: &mut Finding, target: &Target, r: &probe::ProbeResult, expect: Expect) {
    apply_verdict(f, r, expect);
    let is_mcp = f.protocol == Some(craftmesh_protocol::report::Protocol::Mcp);
    f.url = Some(target.report_url(is_mcp || (expect == Expect::Mcp && f.protocol.is_none())));
    if !is_mcp {
        f.health_url = target.health_url.clone();
    }
}

fn port_of(t: &Target) -> Option<u16> {
    t.authority.rsplit(':').next().and_then(|p| p.parse().ok())
}

/// `~/x` → home; relative → under the project dir.
fn resolve(base: &Path, p: &str) -> PathBuf {
    let e = expand_home(p);
    if e.is_absolute() { e } else { base.join(e) }
}

/// Expands a `*` in the last path component; other paths are returned as they are if they exist.
fn expand_glob(p: &Path) -> Vec<PathBuf> {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if !name.contains('*') {
        return if p.exists() { vec![p.to_path_buf()] } else { Vec::new() };
    }
    let dir = p.parent().unwrap_or(Path::new("."));
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let (pre, post) = name.split_once('*').unwrap_or((name, ""));
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)))
        .map(|e| e.path())
        .take(64)
        .collect();
    v.sort();
    v
}

fn read_small(p: &Path) -> Result<String, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(MAX_LOCK_BYTES).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn which(bin: &str, env: fn(&str) -> Option<String>) -> Option<PathBuf> {
    let path = env("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(bin)).find(|p| p.is_file())
}

/// Whether npx has the package in its cache (`~/.npm/_npx/*/node_modules/PKG`).
fn npx_cached(package: &str, env: fn(&str) -> Option<String>) -> bool {
    let cache = env("npm_config_cache").map(PathBuf::from).or_else(|| crate::config_files::home_dir().map(|h| h.join(".npm")));
    let Some(cache) = cache else { return false };
    let Ok(rd) = std::fs::read_dir(cache.join("_npx")) else { return false };
    rd.filter_map(|e| e.ok()).take(1000).any(|e| e.path().join("node_modules").join(package).join("package.json").is_file())
}

fn host_for(ip: Option<&str>) -> String {
    match ip {
        None | Some("") | Some("0.0.0.0") | Some("::") => "127.0.0.1".to_string(),
        Some(ip) => ip.to_string(),
    }
}

fn container_matches(c: &bollard::models::ContainerSummary, names: &[String], images: &[String], labels: &[String]) -> bool {
    let cnames: Vec<&str> = c.names.iter().flatten().map(|n| n.trim_start_matches('/')).collect();
    let by_name = names.iter().any(|n| cnames.iter().any(|c| c == n));
    let image = c.image.as_deref().unwrap_or("");
    let by_image = images.iter().any(|i| image == i || image.strip_prefix(i.as_str()).is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@')));
    let by_label = labels.iter().any(|l| {
        let (k, v) = match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l.as_str(), None),
        };
        c.labels.as_ref().and_then(|m| m.get(k)).is_some_and(|have| v.is_none_or(|v| have == v))
    });
    by_name || by_image || by_label
}

/// Lists running containers through the Docker Engine API (honours DOCKER_HOST).
async fn list_containers(timeout: Duration) -> Result<Vec<bollard::models::ContainerSummary>, String> {
    let docker = bollard::Docker::connect_with_local_defaults().map_err(|e| format!("cannot reach the Docker engine: {e}"))?;
    let opts = bollard::query_parameters::ListContainersOptions { all: false, ..Default::default() };
    match tokio::time::timeout(timeout, docker.list_containers(Some(opts))).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("cannot list containers: {e}")),
        Err(_) => Err(format!("Docker engine did not answer within {timeout:?}")),
    }
}
