//! What a deploy starts: a stdio child ([`crate::share::child::Child`]) or a container
//! ([`super::container::ContainerInstance`]), behind one interface the manager watches and
//! stops.

use super::container::DockerLaunch;
use crate::share::child::{Child, Command};
use crate::share::link::Link;
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;

/// A running instance of a shared server.
pub trait Instance: Send + Sync + std::fmt::Debug {
    /// The MCP connection to it (`None` for a plain service such as a database).
    fn link(&self) -> Option<Arc<Link>>;
    /// Where it listens on this host's loopback (a plain service, a container's published
    /// port); `None` for a stdio child.
    fn address(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// `Some(why)` once the instance has stopped on its own.
    fn exited(&self) -> watch::Receiver<Option<String>>;
    /// Stops it with a short grace.
    fn stop(&self) -> BoxFuture<'_, ()>;
    /// Stops it at once (its claim is lost).
    fn kill_now(&self);
    /// The process id, for a child.
    fn pid(&self) -> Option<u32>;
    /// One line for logs and `deploy status` (`pid 123`, `container craftmesh-x-7`).
    fn describe(&self) -> String;
    /// Whether it keeps running when the node stops (a container; a child dies with the
    /// node). Such an instance is left running, its claim unreleased, when the node stops,
    /// for the restarted node to adopt.
    fn outlives_node(&self) -> bool {
        false
    }
}

impl Instance for Child {
    fn link(&self) -> Option<Arc<Link>> {
        Some(self.link.clone())
    }
    fn exited(&self) -> watch::Receiver<Option<String>> {
        self.exited.clone()
    }
    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(Child::stop(self))
    }
    fn kill_now(&self) {
        Child::kill_now(self);
    }
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }
    fn describe(&self) -> String {
        format!("pid {}", self.pid)
    }
}

/// How one tier of the fallback chain starts an instance.
#[derive(Debug, Clone)]
pub enum Launch {
    /// A stdio MCP server run as the node's child (user installation, NPX).
    Process(Command),
    /// A container on the local Docker engine (the Docker tier).
    Docker(DockerLaunch),
    /// An instance someone already runs, found by the external strategies when the tier's
    /// turn comes ([`super::external`]).
    External,
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Process(c) => write!(f, "{c}"),
            Launch::Docker(d) => write!(f, "{d}"),
            Launch::External => write!(f, "an external instance"),
        }
    }
}

/// The claim an instance runs under (containers carry it as labels).
#[derive(Debug, Clone)]
pub struct Under {
    pub server: String,
    pub key: String,
    pub holder: String,
    pub token: u64,
}
