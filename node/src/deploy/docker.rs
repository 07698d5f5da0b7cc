//! One instance of a shared server as a Docker container, run under the node's claim
//! `svc/NAME` and named by its fencing token.
//!
//! The container carries its claim in labels ([`LABEL_KEY`] and siblings), so after a crash
//! the node finds what it left ([`list_managed`]) and tells its current instance from a
//! stale one by token. Policy stays with the caller; this module:
//!
//! * never pulls: an image missing on this host is [`DeployError::ImageMissing`];
//! * sets no restart policy: craftmesh restarts under its claim, or not at all once the
//!   claim is lost, and an engine restarting the container behind its back would run an
//!   instance nobody holds;
//! * publishes the one container port on 127.0.0.1 only, on a host port the engine picks:
//!   an instance is never an open port on the LAN;
//! * runs every engine call under a deadline, so no call can hang the caller.

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Label holding the claim key (`svc/NAME`); its presence marks a container as craftmesh's.
pub const LABEL_KEY: &str = "craftmesh.key";
/// Label holding the server name the instance runs.
pub const LABEL_SERVER: &str = "craftmesh.server";
/// Label holding the peer id of the node that held the claim when it deployed.
pub const LABEL_HOLDER: &str = "craftmesh.holder";
/// Label holding the claim's fencing token, in decimal.
pub const LABEL_TOKEN: &str = "craftmesh.token";
/// Label set to `1` on every container craftmesh creates.
pub const LABEL_MANAGED: &str = "craftmesh.managed";

/// The deadline of each engine call made by [`connect`], [`list_managed`] and [`inspect`]
/// (those that take no timeout of their own).
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a container gets between SIGTERM and SIGKILL in [`remove`] (less when the
/// caller's timeout is short). Short on purpose: a replaced instance must not linger.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The engine's own floor for a memory limit.
pub const MIN_MEMORY_MB: u64 = 6;

/// Only address a container port is ever published on.
const LOOPBACK: &str = "127.0.0.1";
/// Most characters of the server name kept in a container name.
const NAME_PART_MAX: usize = 48;
/// Budget for removing a container left half-made by a failed [`deploy`].
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run: one instance of `server` under the claim `key` granted to `holder` with
/// fencing token `token`.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSpec {
    /// The server name (config key); sanitised into the container name.
    pub server: String,
    /// The claim key, `svc/NAME`.
    pub key: String,
    /// Peer id of this node, the claim's holder.
    pub holder: String,
    /// Fencing token of the grant; part of the container name, so a new grant never
    /// collides with an older grant's container.
    pub token: u64,
    /// Image reference; must already be on this host.
    pub image: String,
    /// Replaces the image's `CMD` when set (the entrypoint stays).
    pub cmd: Option<Vec<String>>,
    /// Environment, as `(NAME, value)`.
    pub env: Vec<(String, String)>,
    /// The TCP port the server listens on inside the container.
    pub container_port: u16,
    /// Memory limit in MiB, swap included (no swap beyond it). `None`: no limit.
    pub memory_mb: Option<u64>,
    /// CPU limit in cores (0.5 = half a core). `None`: no limit.
    pub cpu_cores: Option<f64>,
}

/// A container craftmesh made, as the engine reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerInstance {
    /// Full container id.
    pub id: String,
    /// Container name, without the engine's leading `/`.
    pub name: String,
    /// From [`LABEL_SERVER`].
    pub server: String,
    /// From [`LABEL_KEY`].
    pub key: String,
    /// From [`LABEL_HOLDER`].
    pub holder: String,
    /// From [`LABEL_TOKEN`]; 0 when the label is missing or not a number. Granted tokens
    /// start at 1, so such a container always reads as older than any grant.
    pub token: u64,
    /// The host port on 127.0.0.1 that reaches the container port; `None` while the
    /// container is not running (the engine only binds ports of running containers).
    pub host_port: Option<u16>,
    /// Whether the container is running (a crashed or exited one is kept until removed).
    pub running: bool,
    /// Creation time as the engine reports it (RFC 3339).
    pub created: Option<String>,
    /// The image reference the container was created from (as given to the engine).
    pub image: Option<String>,
}

/// Why a Docker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No engine answered on the local socket. Nothing changed.
    #[error("cannot reach the local Docker engine: {reason}")]
    Unreachable { reason: String },
    /// The engine did not answer `op` in time. The operation may or may not have taken
    /// effect on the engine; [`deploy`] removes (best effort) a container it created.
    #[error("the Docker engine did not answer `{op}` within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The image is not on this host. Nothing was created.
    #[error("image `{image}` is not on this host, and craftmesh does not pull images: pull or build it on this host first")]
    ImageMissing { image: String },
    /// A container of the instance's name exists and is not an earlier instance of this
    /// claim. It was left alone and nothing was created.
    #[error("a container named `{name}` already exists and is not craftmesh's instance of `{key}` ({why}); remove or rename it")]
    NameTaken { name: String, key: String, why: String },
    /// The spec cannot be deployed as given. Nothing was sent to the engine.
    #[error("cannot deploy `{key}` in Docker: {reason}")]
    InvalidSpec { key: String, reason: String },
    /// The engine published the port beyond 127.0.0.1. The container was removed.
    #[error("the Docker engine published `{name}` on {bindings} instead of 127.0.0.1 only; the container was removed")]
    NotLoopbackOnly { name: String, bindings: String },
    /// The engine's account of the new container `name` cannot be used. The container was
    /// removed (best effort).
    #[error("the Docker engine's account of `{name}` is not usable: {reason}; the container was removed")]
    Unexpected { name: String, reason: String },
    /// The engine refused `op`. On `deploy`, a container created before the failure was
    /// removed (best effort).
    #[error("the Docker engine refused `{op}`: {source}")]
    Engine {
        op: &'static str,
        #[source]
        source: EngineError,
    },
}

/// Connects to the local engine (`DOCKER_HOST` when it is a `unix://` socket, else
/// `/var/run/docker.sock`) and settles on the newest API version both sides speak, which
/// also proves the engine answers.
///
/// A remote `DOCKER_HOST` is refused rather than silently replaced by the default socket:
/// a container there would publish on that host's loopback, which this node cannot reach.
pub async fn connect() -> Result<Docker, DeployError> {
    if let Ok(h) = std::env::var("DOCKER_HOST")
        && !h.is_empty()
        && !h.starts_with("unix://")
    {
        return Err(DeployError::Unreachable { reason: format!("DOCKER_HOST={h} is not a local socket; craftmesh deploys to the local engine only") });
    }
    let d = Docker::connect_with_local_defaults().map_err(|e| DeployError::Unreachable { reason: e.to_string() })?;
    match tokio::time::timeout(ENGINE_CALL_TIMEOUT, d.negotiate_version()).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(DeployError::Unreachable { reason: e.to_string() }),
        Err(_) => Err(DeployError::Timeout { op: "version", after: ENGINE_CALL_TIMEOUT }),
    }
}

/// Creates and starts the instance `spec` describes and reads back its published port,
/// all within `timeout`.
///
/// A container already holding the name (same server and token: left by a crash) is
/// removed first when its labels show it is an instance of the same claim; otherwise
/// [`DeployError::NameTaken`]. On any failure after creation the new container is removed
/// (best effort), so a failed deploy leaves nothing running. The returned instance may
/// show `running: false` when the server exited at once; the caller decides what follows.
pub async fn deploy(d: &Docker, spec: &DockerSpec, timeout: Duration) -> Result<DockerInstance, DeployError> {
    let body = create_body(spec)?;
    let name = container_name(&spec.server, spec.token);
    let budget = Budget::new(timeout);

    match budget.call("inspect image", d.inspect_image(&spec.image)).await {
        Err(e) if e.status() == Some(404) => return Err(DeployError::ImageMissing { image: spec.image.clone() }),
        r => r?,
    };
    let id = match create(d, &name, &body, &budget).await {
        Err(e) if e.status() == Some(409) => {
            remove_leftover(d, &name, spec, &budget).await?;
            create(d, &name, &body, &budget).await?
        }
        Err(e) if e.status() == Some(404) => return Err(DeployError::ImageMissing { image: spec.image.clone() }),
        r => r?,
    };
    let started = async {
        budget.call("start container", d.start_container(&id, None)).await?;
        let info = budget.call("inspect container", d.inspect_container(&id, None)).await?;
        let bindings = bindings_beyond_loopback(&info);
        if !bindings.is_empty() {
            return Err(DeployError::NotLoopbackOnly { name: name.clone(), bindings: bindings.join(", ") });
        }
        instance_from(&info, spec.container_port)
            .ok_or_else(|| DeployError::Unexpected { name: name.clone(), reason: "the engine did not keep its labels".to_string() })
    }
    .await;
    match started {
        Ok(instance) => {
            tracing::info!(container = %name, key = %spec.key, token = spec.token, host_port = ?instance.host_port, running = instance.running, "deployed");
            Ok(instance)
        }
        Err(e) => {
            if let Err(cleanup) = remove(d, &id, CLEANUP_TIMEOUT).await {
                tracing::warn!(container = %name, error = %cleanup, "could not remove the container of a failed deploy");
            }
            Err(e)
        }
    }
}

/// Every container carrying [`LABEL_KEY`], running or not, as the engine reports it now.
/// Each engine call has [`ENGINE_CALL_TIMEOUT`].
pub async fn list_managed(d: &Docker) -> Result<Vec<DockerInstance>, DeployError> {
    let filters = HashMap::from([("label".to_string(), vec![LABEL_KEY.to_string()])]);
    let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let summaries = Budget::new(ENGINE_CALL_TIMEOUT).call("list containers", d.list_containers(Some(opts))).await?;
    let mut out = Vec::with_capacity(summaries.len());
    for id in summaries.into_iter().filter_map(|s| s.id) {
        // Gone between the list and the inspect: not listed.
        if let Some(i) = inspect(d, &id).await? {
            out.push(i);
        }
    }
    out.sort_by(|a, b| (&a.key, a.token).cmp(&(&b.key, b.token)));
    Ok(out)
}

/// The container `id` (or name) if it exists and carries [`LABEL_KEY`]; `None` otherwise.
/// The host port is read for the TCP port in the container's port bindings (craftmesh
/// binds exactly one).
pub async fn inspect(d: &Docker, id: &str) -> Result<Option<DockerInstance>, DeployError> {
    match Budget::new(ENGINE_CALL_TIMEOUT).call("inspect container", d.inspect_container(id, None)).await {
        Ok(info) => Ok(instance_from(&info, published_container_port(&info).unwrap_or(0))),
        Err(e) if e.status() == Some(404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Stops the container (SIGTERM, then SIGKILL after at most [`STOP_GRACE`]) and removes
/// it with its anonymous volumes, within `timeout`. A container already gone is `Ok`.
pub async fn remove(d: &Docker, id: &str, timeout: Duration) -> Result<(), DeployError> {
    let budget = Budget::new(timeout);
    // Half the budget for the polite stop; whatever it does, the forced remove follows.
    let grace = STOP_GRACE.min(timeout / 4);
    let stop = StopContainerOptions { t: Some(i32::try_from(grace.as_secs()).unwrap_or(0)), signal: None };
    let stop_budget = Budget::new(timeout / 2);
    match stop_budget.call("stop container", d.stop_container(id, Some(stop))).await {
        Err(e) if e.status() == Some(404) => return Ok(()),
        Ok(()) | Err(_) => {}
    }
    let opts = RemoveContainerOptions { force: true, v: true, link: false };
    match budget.call("remove container", d.remove_container(id, Some(opts))).await {
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) if e.status() == Some(409) => wait_gone(d, id, &budget, e).await,
        r => r,
    }
}

/// Kills and removes the container at once (SIGKILL, no grace), within `timeout`: for an
/// instance whose claim is lost. A container already gone is `Ok`.
pub async fn remove_now(d: &Docker, id: &str, timeout: Duration) -> Result<(), DeployError> {
    let opts = RemoveContainerOptions { force: true, v: true, link: false };
    let budget = Budget::new(timeout);
    match budget.call("remove container", d.remove_container(id, Some(opts))).await {
        Err(e) if e.status() == Some(404) => Ok(()),
        Err(e) if e.status() == Some(409) => wait_gone(d, id, &budget, e).await,
        r => r,
    }
}

/// The last `lines` lines the container wrote (stdout and stderr), at most 8 KiB, for
/// error messages; empty when the engine cannot say.
pub async fn logs_tail(d: &Docker, id: &str, lines: usize) -> String {
    use futures::StreamExt as _;
    let opts = bollard::query_parameters::LogsOptions { stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() };
    let mut out = String::new();
    let mut stream = d.logs(id, Some(opts));
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if out.len() > 8192 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ENGINE_CALL_TIMEOUT, read).await;
    let mut cut = out.len().min(8192);
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out.trim_end().to_string()
}

/// `craftmesh-<server>-<token>`: the server name with every character Docker does not
/// allow in a name replaced by `-`, cut to a length that keeps the name readable.
pub fn container_name(server: &str, token: u64) -> String {
    let part: String = server.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' }).take(NAME_PART_MAX).collect();
    let part = if part.is_empty() { "server".to_string() } else { part };
    format!("craftmesh-{part}-{token}")
}

// ---------------------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------------------

impl DeployError {
    /// The HTTP status of an engine refusal.
    fn status(&self) -> Option<u16> {
        match self {
            DeployError::Engine { source: EngineError::DockerResponseServerError { status_code, .. }, .. } => Some(*status_code),
            _ => None,
        }
    }
}

/// One deadline shared by the engine calls of an operation.
struct Budget {
    deadline: Instant,
    total: Duration,
}

impl Budget {
    fn new(total: Duration) -> Budget {
        Budget { deadline: Instant::now() + total, total }
    }

    async fn call<T>(&self, op: &'static str, fut: impl Future<Output = Result<T, EngineError>>) -> Result<T, DeployError> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(DeployError::Engine { op, source }),
            Err(_) => Err(DeployError::Timeout { op, after: self.total }),
        }
    }
}

/// After a removal refused with 409 (another removal of `id` under way): `Ok` once the
/// container is gone within the budget, else the refusal.
async fn wait_gone(d: &Docker, id: &str, budget: &Budget, refused: DeployError) -> Result<(), DeployError> {
    while Instant::now() < budget.deadline {
        match budget.call("inspect container", d.inspect_container(id, None)).await {
            Err(e) if e.status() == Some(404) => return Ok(()),
            Err(DeployError::Timeout { .. }) => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Err(refused)
}

async fn create(d: &Docker, name: &str, body: &ContainerCreateBody, budget: &Budget) -> Result<String, DeployError> {
    let opts = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
    Ok(budget.call("create container", d.create_container(Some(opts), body.clone())).await?.id)
}

/// Removes the container holding `name` if its labels make it an earlier instance of
/// `spec.key`; otherwise [`DeployError::NameTaken`].
async fn remove_leftover(d: &Docker, name: &str, spec: &DockerSpec, budget: &Budget) -> Result<(), DeployError> {
    let taken = |why: String| DeployError::NameTaken { name: name.to_string(), key: spec.key.clone(), why };
    let info = match budget.call("inspect container", d.inspect_container(name, None)).await {
        // Removed since the conflict: the retried create decides.
        Err(e) if e.status() == Some(404) => return Ok(()),
        r => r?,
    };
    let labels = info.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
    if labels.get(LABEL_MANAGED).map(String::as_str) != Some("1") {
        return Err(taken(format!("no {LABEL_MANAGED}=1 label")));
    }
    match labels.get(LABEL_KEY) {
        Some(k) if *k == spec.key => {}
        other => return Err(taken(format!("its {LABEL_KEY} is {other:?}"))),
    }
    let id = info.id.unwrap_or_else(|| name.to_string());
    tracing::info!(container = %name, key = %spec.key, "removing a container left by an earlier run of this claim");
    remove(d, &id, budget.deadline.saturating_duration_since(Instant::now())).await
}

#[path = "docker_convert.rs"]
mod convert;
use convert::{bindings_beyond_loopback, create_body, instance_from, published_container_port};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bollard::models::ContainerInspectResponse;
    use serde_json::json;

    fn spec() -> DockerSpec {
        DockerSpec {
            server: "files".to_string(),
            key: "svc/files".to_string(),
            holder: "12D3KooWpeer".to_string(),
            token: 42,
            image: "stub:1".to_string(),
            cmd: Some(vec!["9000".to_string()]),
            env: vec![("MODE".to_string(), "a=b".to_string())],
            container_port: 9000,
            memory_mb: Some(64),
            cpu_cores: Some(0.5),
        }
    }

    fn inspected(v: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(v).unwrap()
    }

    fn engine_view(labels: serde_json::Value, ports: serde_json::Value) -> ContainerInspectResponse {
        inspected(json!({
            "Id": "abc123",
            "Name": "/craftmesh-files-42",
            "Created": "2026-05-07T21:09:36.123456789Z",
            "State": { "Running": true },
            "Config": { "Labels": labels, "Image": "stub:1" },
            "HostConfig": { "PortBindings": { "9000/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] } },
            "NetworkSettings": { "Ports": ports },
        }))
    }

    #[test]
    fn container_names_keep_only_characters_docker_allows() {
        assert_eq!(container_name("files", 42), "craftmesh-files-42");
        assert_eq!(container_name("my server/é:x", 7), "craftmesh-my-server---x-7");
        assert_eq!(container_name("", 1), "craftmesh-server-1");
        let long = container_name(&"a".repeat(200), 3);
        assert_eq!(long, format!("craftmesh-{}-3", "a".repeat(NAME_PART_MAX)));
    }

    #[test]
    fn the_create_request_publishes_one_port_on_loopback_at_an_engine_chosen_port() {
        let body = serde_json::to_value(create_body(&spec()).unwrap()).unwrap();
        assert_eq!(body["ExposedPorts"], json!({ "9000/tcp": {} }));
        assert_eq!(body["HostConfig"]["PortBindings"], json!({ "9000/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "" }] }));
        assert_eq!(body["HostConfig"]["PublishAllPorts"], json!(false));
    }

    #[test]
    fn the_create_request_carries_the_claim_limits_and_no_restart_policy() {
        let body = serde_json::to_value(create_body(&spec()).unwrap()).unwrap();
        assert_eq!(
            body["Labels"],
            json!({
                "craftmesh.key": "svc/files", "craftmesh.server": "files", "craftmesh.holder": "12D3KooWpeer",
                "craftmesh.token": "42", "craftmesh.managed": "1",
            })
        );
        let hc = &body["HostConfig"];
        assert_eq!(hc["Memory"], json!(64 * 1024 * 1024));
        assert_eq!(hc["MemorySwap"], json!(64 * 1024 * 1024));
        assert_eq!(hc["NanoCpus"], json!(500_000_000));
        assert_eq!(hc["RestartPolicy"], json!({ "Name": "no" }));
        assert_eq!(hc["AutoRemove"], json!(false));
        assert_eq!(body["Image"], json!("stub:1"));
        assert_eq!(body["Cmd"], json!(["9000"]));
        assert_eq!(body["Env"], json!(["MODE=a=b"]));
    }

    #[test]
    fn no_limits_are_sent_when_none_are_asked() {
        let s = DockerSpec { memory_mb: None, cpu_cores: None, cmd: None, ..spec() };
        let body = serde_json::to_value(create_body(&s).unwrap()).unwrap();
        for k in ["Memory", "MemorySwap", "NanoCpus"] {
            assert!(body["HostConfig"].get(k).is_none(), "{k} should be absent: {body}");
        }
        assert!(body.get("Cmd").is_none(), "the image's CMD stays: {body}");
    }

    #[test]
    fn specs_the_engine_would_misread_are_refused_before_any_call() {
        let bad = [
            DockerSpec { container_port: 0, ..spec() },
            DockerSpec { memory_mb: Some(1), ..spec() },
            DockerSpec { memory_mb: Some(u64::MAX), ..spec() },
            DockerSpec { cpu_cores: Some(0.0), ..spec() },
            DockerSpec { cpu_cores: Some(f64::NAN), ..spec() },
            DockerSpec { env: vec![("A=B".to_string(), "c".to_string())], ..spec() },
            DockerSpec { env: vec![(String::new(), "c".to_string())], ..spec() },
            DockerSpec { image: " ".to_string(), ..spec() },
        ];
        for s in bad {
            let e = create_body(&s).unwrap_err();
            assert!(matches!(e, DeployError::InvalidSpec { .. }), "{s:?} gave {e}");
            assert!(e.to_string().contains("svc/files"), "{e}");
        }
        // Tiny but positive CPU shares never round to 0, which the engine reads as unlimited.
        let body = serde_json::to_value(create_body(&DockerSpec { cpu_cores: Some(1e-12), ..spec() }).unwrap()).unwrap();
        assert_eq!(body["HostConfig"]["NanoCpus"], json!(1));
    }

    #[test]
    fn an_instance_is_read_from_its_labels_and_its_loopback_port() {
        let labels =
            json!({ "craftmesh.key": "svc/files", "craftmesh.server": "files", "craftmesh.holder": "p1", "craftmesh.token": "42", "craftmesh.managed": "1" });
        let info = engine_view(labels, json!({ "9000/tcp": [{ "HostIp": "127.0.0.1", "HostPort": "49153" }] }));
        let i = instance_from(&info, 9000).unwrap();
        assert_eq!(
            i,
            DockerInstance {
                id: "abc123".to_string(),
                name: "craftmesh-files-42".to_string(),
                server: "files".to_string(),
                key: "svc/files".to_string(),
                holder: "p1".to_string(),
                token: 42,
                host_port: Some(49153),
                running: true,
                created: Some("2026-05-07T21:09:36.123456789Z".to_string()),
                image: Some("stub:1".to_string()),
            }
        );
        assert_eq!(published_container_port(&info), Some(9000));
        assert!(bindings_beyond_loopback(&info).is_empty());
    }

    #[test]
    fn a_port_bound_beyond_loopback_is_never_reported_as_the_instance_port() {
        let labels = json!({ "craftmesh.key": "svc/files", "craftmesh.token": "x" });
        let info = engine_view(labels, json!({ "9000/tcp": [{ "HostIp": "0.0.0.0", "HostPort": "49153" }], "53/udp": null }));
        let i = instance_from(&info, 9000).unwrap();
        assert_eq!(i.host_port, None);
        assert_eq!(i.token, 0, "a token label that is not a number reads as older than any grant");
        assert_eq!(bindings_beyond_loopback(&info), vec!["0.0.0.0:49153".to_string()]);
    }

    #[test]
    fn containers_without_the_key_label_are_not_instances() {
        let info = engine_view(json!({ "other": "1" }), json!({}));
        assert_eq!(instance_from(&info, 9000), None);
        assert_eq!(instance_from(&inspected(json!({ "Id": "x" })), 9000), None);
    }

    #[test]
    fn errors_name_what_to_do() {
        let e = DeployError::ImageMissing { image: "ghcr.io/x/y:1".to_string() };
        assert!(e.to_string().contains("ghcr.io/x/y:1") && e.to_string().contains("does not pull"), "{e}");
        let e = DeployError::NameTaken { name: "craftmesh-files-42".to_string(), key: "svc/files".to_string(), why: "no label".to_string() };
        assert!(e.to_string().contains("craftmesh-files-42") && e.to_string().contains("remove or rename"), "{e}");
    }
}
