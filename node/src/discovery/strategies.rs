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
        Ctx { d, client: probe::http_client(timeout), timeout, processes: processes.shared(), containers: containers.shared() }
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
                    for var in variables {
                        let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else { continue };
                        match Target::from_url(&value, mcp_path, health) {
                            Ok(target) => {
                                let r = probe::probe(&client, &target, expect, timeout).await;
                                let mut f = finding(
                                    spec,
                                    tier,
                                    StrategyKind::EnvVariable,
                                    Status::Unreachable,
                                    Evidence { env_var: Some(var.clone()), port: port_of(&target), ..Default::default() },
                                );
                                checked(&mut f, &target, &r, expect);
                                findings.push(f);
                            }
                            Err(e) => notes.push(format!("{var}: {e}")),
                        }
                    }
                }
                Strategy::LockFile { patterns, mcp_path, health_endpoint } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    for path in patterns.iter().flat_map(|p| expand_glob(&resolve(&base, p))) {
                        let shown = path.display().to_string();
                        match read_small(&path) {
                            Err(e) => notes.push(format!("lock file {shown}: {e}")),
                            Ok(content) => {
                                let lock = craftmesh_protocol::lockfile::parse(&content);
                                match (lock.url, lock.pid) {
                                    (Some(url), pid) => match Target::from_url(&url, mcp_path, health) {
                                        Ok(target) => {
                                            let r = probe::probe(&client, &target, expect, timeout).await;
                                            let mut f = finding(
                                                spec,
                                                tier,
                                                StrategyKind::LockFile,
                                                Status::Unreachable,
                                                Evidence { lock_path: Some(shown), port: port_of(&target), pid, ..Default::default() },
                                            );
                                            checked(&mut f, &target, &r, expect);
                                            findings.push(f);
                                        }
                                        Err(e) => notes.push(format!("lock file {shown}: {e}")),
                                    },
                                    (None, Some(pid)) if crate::host::pid_alive(pid) => {
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
                                    (None, Some(pid)) => notes.push(format!("lock file {shown} is stale: pid {pid} is not running")),
                                    (None, None) => notes.push(format!("lock file {shown} holds neither a URL nor a pid")),
                                }
                            }
                        }
                    }
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
                    for p in paths {
                        let path = resolve(&base, p);
                        if path.exists() {
                            findings.push(finding(
                                spec,
                                tier,
                                StrategyKind::PathCheck,
                                Status::Installed,
                                Evidence { path: Some(path.display().to_string()), ..Default::default() },
                            ));
                        }
                    }
                }
                Strategy::NpxAvailable { package } => match which("npx", env) {
                    None => notes.push(format!("npx is not on PATH, so {package} cannot be launched")),
                    Some(npx) => {
                        let mut f = finding(
                            spec,
                            tier,
                            StrategyKind::NpxAvailable,
                            Status::Available,
                            Evidence { package: Some(package.clone()), path: Some(npx.display().to_string()), ..Default::default() },
                        );
                        let cached = npx_cached(package, env);
                        let mut detail = if cached { format!("{package} is in the npx cache") } else { format!("{package} will be downloaded on first use") };
                        if !spec.missing_env.is_empty() {
                            detail.push_str(&format!("; needs {}", spec.missing_env.join(", ")));
                        }
                        f.detail = Some(detail);
                        findings.push(f);
                    }
                },
                Strategy::Docker { names, images, labels, mcp_path, health_endpoint } => {
                    let health = health_endpoint.as_deref().or_else(|| launch_health(spec));
                    match &*containers.await {
                        Err(e) => notes.push(format!("docker: {e}")),
                        Ok(list) => {
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
                                    let r = probe::probe(&client, &target, expect, timeout).await;
                                    let mut f = finding(spec, tier, StrategyKind::Docker, Status::Unreachable, Evidence { port: Some(port), ..ev.clone() });
                                    checked(&mut f, &target, &r, expect);
                                    findings.push(f);
                                }
                            }
                        }
                    }
                }
            }
            (spec.name.clone(), findings, notes)
        }
        .boxed()
    }
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
