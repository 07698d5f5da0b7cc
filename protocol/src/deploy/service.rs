//! Plain services: shared instances that do not speak MCP, such as a Qdrant vector DB.
//!
//! They go through the same claim-then-deploy chain as MCP servers (one instance on the
//! LAN, under `svc/NAME`), with two differences: health is an HTTP `GET` answered 2xx, or a
//! TCP connect, instead of MCP `initialize` + `tools/list`; and clients reach the instance
//! through a TCP port on 127.0.0.1 of their own node, which the node tunnels over the mesh
//! to the holder. The port clients use is the service's own port when it is free on their
//! host, so `http://127.0.0.1:6333` means the LAN's one Qdrant on every machine.
//!
//! A server is a plain service when `deployment_config.protocol` is `http` or `tcp`, or,
//! without that field, when its launch entry's `health_check.type` is `http` or `tcp`
//! (the PromptCraft files mark services that way). `protocol: mcp` wins over the health
//! check type.
//!
//! Its port is the first of `resource_requirements.ports`, else the first `ports` entry of
//! its Docker strategy, else the port of a `health_check.endpoint` written as a URL. The
//! HTTP health path is `health_check.endpoint` (its path, when it is a URL), else the
//! Docker strategy's `health_endpoint`, else `/`.

use crate::config::catalog::ServerSpec;
use crate::config::mcp::{HealthCheckType, ServiceProtocol, Strategy, Tier};
use serde::Serialize;

/// How a plain service's health is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Health {
    /// `GET http://127.0.0.1:PORT{path}` answers 2xx.
    Http { path: String },
    /// A TCP connection to the port is accepted.
    Tcp,
}

/// A server that is a plain service, with the port its clients use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlainService {
    pub port: u16,
    pub health: Health,
}

/// Why a server meant as a plain service cannot be one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// No port is stated anywhere.
    NoPort,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::NoPort => write!(
                f,
                "a plain service needs a port: set resource_requirements.ports, the docker strategy's ports, or a health_check.endpoint URL with a port"
            ),
        }
    }
}

/// Whether `spec` is a plain service (`None`: it is an MCP server), and its port and health.
pub fn plain_service(spec: &ServerSpec) -> Option<Result<PlainService, ServiceError>> {
    let check = spec.launch.as_ref().and_then(|l| l.health_check.as_ref());
    let stated = spec.deployment.as_ref().and_then(|d| d.protocol);
    let kind = match stated {
        Some(ServiceProtocol::Mcp) => return None,
        Some(ServiceProtocol::Http) => HealthCheckType::Http,
        Some(ServiceProtocol::Tcp) => HealthCheckType::Tcp,
        None => match check.and_then(|c| c.kind) {
            Some(k @ (HealthCheckType::Http | HealthCheckType::Tcp)) => k,
            _ => return None,
        },
    };
    let endpoint = check.and_then(|c| c.endpoint.as_deref()).map(str::trim).filter(|e| !e.is_empty());
    let (url_port, url_path) = endpoint.map(split_endpoint).unwrap_or((None, None));
    let docker = spec.strategies.iter().find_map(|(tier, s)| match s {
        Strategy::Docker { ports, health_endpoint, .. } if *tier == Tier::DockerSidecar => Some((ports.first().copied(), health_endpoint.clone())),
        _ => None,
    });
    let port = spec
        .resource_requirements
        .as_ref()
        .and_then(|r| r.ports.first().copied())
        .or_else(|| docker.as_ref().and_then(|(p, _)| *p))
        .or(url_port)
        .filter(|p| *p != 0);
    let Some(port) = port else { return Some(Err(ServiceError::NoPort)) };
    let health = match kind {
        HealthCheckType::Tcp => Health::Tcp,
        _ => {
            let path = url_path.or_else(|| docker.and_then(|(_, h)| h)).unwrap_or_else(|| "/".to_string());
            Health::Http { path: if path.starts_with('/') { path } else { format!("/{path}") } }
        }
    };
    Some(Ok(PlainService { port, health }))
}

/// `http://host:port/path` → (port, path); `/path` → (None, path).
fn split_endpoint(e: &str) -> (Option<u16>, Option<String>) {
    let Some(rest) = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")) else {
        return (None, Some(e.to_string()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let port = authority.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    (port, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::mcp::{DeploymentConfig, HealthCheck, ResourceRequirements, ServerLaunch};

    fn spec(check: Option<(HealthCheckType, Option<&str>)>, protocol: Option<ServiceProtocol>, ports: &[u16]) -> ServerSpec {
        let mut s = ServerSpec::unconfigured("qdrant");
        s.launch = Some(ServerLaunch {
            command: Some("qdrant".into()),
            health_check: check.map(|(k, e)| HealthCheck { kind: Some(k), endpoint: e.map(str::to_string), ..Default::default() }),
            ..Default::default()
        });
        s.deployment = protocol.map(|p| DeploymentConfig { protocol: Some(p), ..Default::default() });
        s.resource_requirements = Some(ResourceRequirements { ports: ports.to_vec(), ..Default::default() });
        s
    }

    #[test]
    fn an_mcp_health_check_or_none_is_an_mcp_server() {
        assert_eq!(plain_service(&spec(None, None, &[6333])), None);
        assert_eq!(plain_service(&spec(Some((HealthCheckType::Mcp, None)), None, &[6333])), None);
        assert_eq!(plain_service(&spec(Some((HealthCheckType::ApiKeyRequired, None)), None, &[6333])), None);
    }

    #[test]
    fn an_http_health_check_makes_a_plain_service_on_the_first_required_port() {
        let got = plain_service(&spec(Some((HealthCheckType::Http, Some("/healthz"))), None, &[6333, 6334]));
        assert_eq!(got, Some(Ok(PlainService { port: 6333, health: Health::Http { path: "/healthz".into() } })));
    }

    #[test]
    fn the_stated_protocol_wins_over_the_health_check_type() {
        let tcp = plain_service(&spec(Some((HealthCheckType::Http, Some("/healthz"))), Some(ServiceProtocol::Tcp), &[5432]));
        assert_eq!(tcp, Some(Ok(PlainService { port: 5432, health: Health::Tcp })));
        assert_eq!(plain_service(&spec(Some((HealthCheckType::Http, None)), Some(ServiceProtocol::Mcp), &[8000])), None);
        let http = plain_service(&spec(None, Some(ServiceProtocol::Http), &[6333]));
        assert_eq!(http, Some(Ok(PlainService { port: 6333, health: Health::Http { path: "/".into() } })));
    }

    #[test]
    fn a_url_endpoint_gives_the_port_and_the_path() {
        let got = plain_service(&spec(Some((HealthCheckType::Http, Some("http://127.0.0.1:6333/readyz"))), None, &[]));
        assert_eq!(got, Some(Ok(PlainService { port: 6333, health: Health::Http { path: "/readyz".into() } })));
        let bare = plain_service(&spec(Some((HealthCheckType::Http, Some("http://localhost:9000"))), None, &[]));
        assert_eq!(bare, Some(Ok(PlainService { port: 9000, health: Health::Http { path: "/".into() } })));
        let rel = plain_service(&spec(Some((HealthCheckType::Http, Some("health"))), None, &[80]));
        assert_eq!(rel, Some(Ok(PlainService { port: 80, health: Health::Http { path: "/health".into() } })));
    }

    #[test]
    fn the_docker_strategy_gives_the_port_and_health_path_when_nothing_else_does() {
        let mut s = spec(None, Some(ServiceProtocol::Http), &[]);
        s.strategies.push((
            Tier::DockerSidecar,
            Strategy::Docker {
                names: vec![],
                images: vec!["qdrant/qdrant".into()],
                labels: vec![],
                ports: vec![6333],
                mcp_path: "/mcp".into(),
                health_endpoint: Some("/healthz".into()),
            },
        ));
        assert_eq!(plain_service(&s), Some(Ok(PlainService { port: 6333, health: Health::Http { path: "/healthz".into() } })));
    }

    #[test]
    fn a_plain_service_without_any_port_is_an_error_that_says_where_to_put_one() {
        let got = plain_service(&spec(Some((HealthCheckType::Tcp, None)), None, &[]));
        assert_eq!(got, Some(Err(ServiceError::NoPort)));
        assert!(ServiceError::NoPort.to_string().contains("resource_requirements.ports"));
        assert_eq!(plain_service(&spec(Some((HealthCheckType::Tcp, None)), None, &[0])), Some(Err(ServiceError::NoPort)), "port 0 is no port");
    }
}
