//! Pure translation between [`DockerSpec`] / [`DockerInstance`] and the engine's create request and inspect response.

use super::{DeployError, DockerInstance, DockerSpec, LABEL_HOLDER, LABEL_KEY, LABEL_MANAGED, LABEL_SERVER, LABEL_TOKEN, LOOPBACK, MIN_MEMORY_MB};
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use std::collections::HashMap;

/// The engine's create request for `spec`, after checking what the engine would only
/// refuse later or, worse, accept with a different meaning.
pub(super) fn create_body(spec: &DockerSpec) -> Result<ContainerCreateBody, DeployError> {
    let invalid = |reason: String| DeployError::InvalidSpec { key: spec.key.clone(), reason };
    if spec.image.trim().is_empty() {
        return Err(invalid("no image given".to_string()));
    }
    if spec.container_port == 0 {
        return Err(invalid("the container port is 0".to_string()));
    }
    let memory = match spec.memory_mb {
        None => None,
        Some(mb) if mb < MIN_MEMORY_MB => return Err(invalid(format!("memory {mb} MB is below Docker's minimum of {MIN_MEMORY_MB} MB"))),
        Some(mb) => Some(mb.checked_mul(1024 * 1024).and_then(|b| i64::try_from(b).ok()).ok_or_else(|| invalid(format!("memory {mb} MB is too large")))?),
    };
    let nano_cpus = match spec.cpu_cores {
        None => None,
        Some(c) if !(c.is_finite() && c > 0.0 && c <= 4096.0) => return Err(invalid(format!("cpu {c} is not a number of cores above 0"))),
        // At least one nano-CPU: 0 would mean "no limit" to the engine.
        Some(c) => Some(((c * 1e9).round() as i64).max(1)),
    };
    let mut env = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!("environment variable name {k:?} is empty or holds `=` or NUL")));
        }
        env.push(format!("{k}={v}"));
    }
    let port_key = format!("{}/tcp", spec.container_port);
    let labels = HashMap::from([
        (LABEL_KEY.to_string(), spec.key.clone()),
        (LABEL_SERVER.to_string(), spec.server.clone()),
        (LABEL_HOLDER.to_string(), spec.holder.clone()),
        (LABEL_TOKEN.to_string(), spec.token.to_string()),
        (LABEL_MANAGED.to_string(), "1".to_string()),
    ]);
    // An empty host port asks the engine to choose one.
    let binding = PortBinding { host_ip: Some(LOOPBACK.to_string()), host_port: Some(String::new()) };
    let host_config = HostConfig {
        memory,
        // Equal to the memory limit: no swap beyond it.
        memory_swap: memory,
        nano_cpus,
        port_bindings: Some(HashMap::from([(port_key.clone(), Some(vec![binding]))])),
        publish_all_ports: Some(false),
        restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::NO), maximum_retry_count: None }),
        auto_remove: Some(false),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: Some(env),
        labels: Some(labels),
        exposed_ports: Some(vec![port_key]),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// The instance `info` describes, reading the host port bound for `container_port`;
/// `None` when the container does not carry [`LABEL_KEY`].
pub(super) fn instance_from(info: &ContainerInspectResponse, container_port: u16) -> Option<DockerInstance> {
    let labels = info.config.as_ref().and_then(|c| c.labels.as_ref())?;
    let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let key = labels.get(LABEL_KEY)?.clone();
    let host_port = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .and_then(|p| p.get(&format!("{container_port}/tcp")))
        .and_then(|b| b.as_ref())
        .and_then(|b| b.iter().find(|b| b.host_ip.as_deref() == Some(LOOPBACK)))
        .and_then(|b| b.host_port.as_deref()?.parse().ok());
    Some(DockerInstance {
        id: info.id.clone().unwrap_or_default(),
        name: info.name.as_deref().unwrap_or_default().trim_start_matches('/').to_string(),
        server: label(LABEL_SERVER),
        key,
        holder: label(LABEL_HOLDER),
        token: label(LABEL_TOKEN).parse().unwrap_or(0),
        host_port,
        running: info.state.as_ref().and_then(|s| s.running).unwrap_or(false),
        created: info.created.clone(),
        image: info.config.as_ref().and_then(|c| c.image.clone()),
    })
}

/// The TCP container port of the container's port bindings (craftmesh binds exactly one).
pub(super) fn published_container_port(info: &ContainerInspectResponse) -> Option<u16> {
    let bindings = info.host_config.as_ref()?.port_bindings.as_ref()?;
    bindings.keys().filter_map(|k| k.strip_suffix("/tcp")?.parse().ok()).min()
}

/// Every published binding that is not on 127.0.0.1, as `ADDRESS:PORT`.
pub(super) fn bindings_beyond_loopback(info: &ContainerInspectResponse) -> Vec<String> {
    let Some(ports) = info.network_settings.as_ref().and_then(|n| n.ports.as_ref()) else { return Vec::new() };
    ports
        .values()
        .flatten()
        .flatten()
        .filter(|b| b.host_ip.as_deref() != Some(LOOPBACK))
        .map(|b| format!("{}:{}", b.host_ip.as_deref().unwrap_or(""), b.host_port.as_deref().unwrap_or("")))
        .collect()
}
