//! Plain services over the mesh: every node serves the LAN's one instance of a plain
//! service (a database, see [`craftmesh_protocol::deploy::service`]) on a TCP port of its
//! own loopback, its *front*, and carries each connection to the holder on a libp2p stream
//! (`/craftmesh/tcp/1`, on the mesh's keyed, encrypted connections: the instance is never
//! an open port on the LAN).
//!
//! The front listens on the service's own port (`127.0.0.1:6333` for Qdrant) when that port
//! is free here, so the address clients already use works on every machine; when another
//! program holds it the front takes a free port instead (with a warning) and `resolve`
//! prints that one. On the holder, a service run as a process listens on that port itself:
//! the front steps aside while it starts and stays passive while it runs, and takes the
//! port again when the instance goes.
//!
//! Each accepted connection ensures the service (the first client on the LAN starts it, and
//! the first after a failover starts the next instance), then pipes bytes to the local
//! instance or through the holder. The opener writes one header line `{"server": NAME}`;
//! the holder answers `{"ok": true}` once it has a connection to its instance, or
//! `{"ok": false, "error": ...}`. A tunnel whose claim moves on (holder cut off) is closed,
//! so its client reconnects to the next instance.

use super::manager::{Deployer, svc_key};
use crate::share::link::lock;
use crate::share::mesh::{READY_WAIT, accept_stream, answer, open_stream};
use craftmesh_protocol::deploy::service::{Health, PlainService, plain_service};
use futures::StreamExt as _;
use libp2p::StreamProtocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

/// The loopback ports this process's fronts listen on: discovery does not probe them (a
/// probe would be carried to the instance, or start one).
static FRONT_PORTS: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `port` on this host's loopback is one of this node's fronts.
pub fn is_front_port(port: u16) -> bool {
    lock(&FRONT_PORTS).contains(&port)
}

/// Marks `port` as a front's while it lives.
struct FrontPort(u16);

impl FrontPort {
    fn new(port: u16) -> FrontPort {
        lock(&FRONT_PORTS).insert(port);
        FrontPort(port)
    }
}

impl Drop for FrontPort {
    fn drop(&mut self) {
        lock(&FRONT_PORTS).remove(&self.0);
    }
}

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/craftmesh/tcp/1");
/// Tunnels a holder serves at once, over all services; more are refused.
pub const MAX_TUNNELS: usize = 4096;
/// Connections one front carries at once; more are closed at once.
pub const MAX_FRONT_CONNECTIONS: usize = 1024;
/// How long a connection waits for the service to run somewhere (a cold deploy included).
const ENSURE_WAIT: Duration = Duration::from_secs(60);
/// How long a holder named by the claims is used for new connections without asking again.
const HOLDER_FRESH: Duration = Duration::from_secs(2);
/// Longest TCP connect to an instance on this host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries at binding the service's own port, 500 ms apart, before the front settles on
/// another port (the port may be held for a moment by an instance starting here).
const BIND_TRIES: u32 = 6;

/// One service's front on this node.
#[derive(Debug)]
pub struct Front {
    name: String,
    svc: PlainService,
    /// The port clients use here, once known.
    port: watch::Sender<Option<u16>>,
    /// Set while an instance of the service starts here as a process on the service's port.
    paused: watch::Sender<bool>,
    conns: Arc<Semaphore>,
    /// The holder (node, token) the claims named, and when: for [`HOLDER_FRESH`] new
    /// connections go there without asking the claims again (a pool opening connections in
    /// a burst). A holder that no longer runs the instance refuses the tunnel, and the
    /// connection then asks the claims.
    last: std::sync::Mutex<Option<(String, u64, tokio::time::Instant)>>,
}

impl Front {
    /// Gives the service's port up (an instance is about to start on it here); waits up to
    /// 2 s until the front no longer listens on it.
    pub async fn pause(&self) {
        self.paused.send_replace(true);
        let mut rx = self.port.subscribe();
        let want = self.svc.port;
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|p| *p != Some(want) || !self.holds_port())).await;
    }

    fn holds_port(&self) -> bool {
        // Passive (the local instance holds the port) also reports `Some(want)`; only a
        // listening front must be waited for, and it clears the port when it stops.
        *self.port.borrow() == Some(self.svc.port)
    }

    /// The port clients use here, once known.
    pub fn port(&self) -> Option<u16> {
        *self.port.borrow()
    }

    /// The service's own port, when this front listens on it (and would give it up).
    pub fn own_port(&self) -> Option<u16> {
        self.holds_port().then_some(self.svc.port)
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// The address clients use, as a URL for HTTP services.
    pub fn url(&self, port: u16) -> String {
        match self.svc.health {
            Health::Http { .. } => format!("http://127.0.0.1:{port}"),
            Health::Tcp => format!("tcp://127.0.0.1:{port}"),
        }
    }
}

impl Deployer {
    /// Where the local instance of `name` listens, unless its claim is lost.
    pub(super) fn local_address(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.running).get(name).filter(|r| !r.held.is_lost()).and_then(|r| r.child.address())
    }

    /// This node's front for the plain service `name` (started on first use): the port and
    /// URL clients use here.
    pub async fn front(self: &Arc<Self>, name: &str) -> Result<(u16, String), String> {
        let spec = self.spec(name)?;
        let svc = match plain_service(&spec) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(format!("{}: {e}", spec.name)),
            None => return Err(format!("{} is an MCP server, reached at /mcp/{}", spec.name, spec.name)),
        };
        let f = {
            let mut fronts = lock(&self.fronts);
            match fronts.get(&spec.name) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(Front {
                        name: spec.name.clone(),
                        svc,
                        port: watch::channel(None).0,
                        paused: watch::channel(false).0,
                        conns: Arc::new(Semaphore::new(MAX_FRONT_CONNECTIONS)),
                        last: std::sync::Mutex::new(None),
                    });
                    fronts.insert(spec.name.clone(), f.clone());
                    tokio::spawn(self.clone().run_front(f.clone()));
                    f
                }
            }
        };
        let mut rx = f.port.subscribe();
        let port = match tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.is_some())).await {
            Ok(Ok(p)) => p.unwrap_or_default(),
            _ => return Err(format!("the front of {} has no port yet (its instance is starting here)", spec.name)),
        };
        Ok((port, f.url(port)))
    }

    /// The front of `name`, if this node has one (paused by a deploy on its port).
    pub(super) fn front_of(&self, name: &str) -> Option<Arc<Front>> {
        lock(&self.fronts).get(name).cloned()
    }

    async fn run_front(self: Arc<Self>, f: Arc<Front>) {
        let want = f.svc.port;
        let mut paused = f.paused.subscribe();
        let mut changed = self.changed.subscribe();
        let mut misses = 0;
        loop {
            if self.is_stopping() {
                return;
            }
            if *paused.borrow_and_update() {
                f.port.send_replace(None);
                let _ = paused.wait_for(|p| !*p).await;
                continue;
            }
            match TcpListener::bind(("127.0.0.1", want)).await {
                Ok(l) => {
                    misses = 0;
                    let _marked = FrontPort::new(want);
                    f.port.send_replace(Some(want));
                    tracing::info!(server = %f.name, port = want, "serving the LAN's instance on this host's loopback");
                    tokio::select! {
                        () = self.accept(&f, l) => return,
                        _ = paused.wait_for(|p| *p) => {}
                    }
                    f.port.send_replace(None);
                }
                Err(_) if self.local_address(&f.name).is_some_and(|a| a.port() == want) => {
                    // The instance runs here on the port itself: clients reach it directly.
                    misses = 0;
                    f.port.send_replace(Some(want));
                    let _ = tokio::time::timeout(Duration::from_secs(1), changed.changed()).await;
                }
                Err(e) if misses + 1 < BIND_TRIES => {
                    misses += 1;
                    tracing::debug!(server = %f.name, port = want, error = %e, "the service's port is taken here; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => match TcpListener::bind(("127.0.0.1", 0)).await {
                    Ok(l) => {
                        let port = l.local_addr().map(|a| a.port()).unwrap_or_default();
                        let _marked = FrontPort::new(port);
                        tracing::warn!(server = %f.name, wanted = want, port, error = %e, "the service's port is taken on this host by another program; serving the LAN's instance on another port");
                        f.port.send_replace(Some(port));
                        self.accept(&f, l).await;
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(server = %f.name, error = %e, "cannot open a loopback port for the service");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    }

    /// Accepts connections until the node stops.
    async fn accept(self: &Arc<Self>, f: &Arc<Front>, l: TcpListener) {
        loop {
            let (tcp, from) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(server = %f.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if self.is_stopping() {
                return;
            }
            let Ok(permit) = f.conns.clone().try_acquire_owned() else {
                tracing::warn!(server = %f.name, %from, limit = MAX_FRONT_CONNECTIONS, "too many connections to the service here; closing a new one");
                continue;
            };
            let (me, f) = (self.clone(), f.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tcp.set_nodelay(true);
                if let Err(e) = me.pipe(&f, tcp).await {
                    tracing::info!(server = %f.name, %from, error = %e, "a connection to the service ended");
                }
            });
        }
    }

    /// Carries one client connection to the instance of `f`'s service, wherever it runs.
    async fn pipe(self: &Arc<Self>, f: &Front, mut tcp: TcpStream) -> Result<(), String> {
        let name = f.name.as_str();
        let deadline = tokio::time::Instant::now() + ENSURE_WAIT;
        let mut cached = lock(&f.last).clone().filter(|(_, _, at)| at.elapsed() < HOLDER_FRESH);
        loop {
            if let Some(addr) = self.local_address(name) {
                let mut up = connect(addr).await?;
                return tokio::io::copy_bidirectional(&mut tcp, &mut up).await.map(drop).map_err(|e| e.to_string());
            }
            let from_cache = cached.is_some();
            let e = match cached.take() {
                Some((node, token, _)) => super::manager::Ensured { server: name.to_string(), node, local: false, token, deployed: false },
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let e = self.ensure(name, left).await?;
                    *lock(&f.last) = (!e.local).then(|| (e.node.clone(), e.token, tokio::time::Instant::now()));
                    e
                }
            };
            if !e.local {
                // A server that speaks first (a greeting) may already have sent bytes: they wait
                // in `up`'s buffer and are copied first.
                match open_stream(&self.control, &e.node, PROTOCOL, name).await {
                    Ok(mut up) => {
                        let close = CancellationToken::new();
                        let _closed_when_done = close.clone().drop_guard();
                        self.watch_tunnel(svc_key(name), e.node.clone(), e.token, close.clone());
                        return tokio::select! {
                            r = tokio::io::copy_bidirectional(&mut tcp, &mut up) => r.map(drop).map_err(|e| e.to_string()),
                            () = close.cancelled() => Err(format!("the claim moved on from {}; closed", e.node)),
                        };
                    }
                    Err(err) => {
                        *lock(&f.last) = None;
                        tracing::debug!(server = name, holder = %e.node, error = %err, "cannot reach the holder's instance yet");
                        if from_cache {
                            continue;
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no reachable instance of {name}"));
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// The local instance's address for a member's tunnel, waiting while it deploys here.
    async fn address_for_member(self: &Arc<Self>, name: &str) -> Result<SocketAddr, String> {
        self.wait_local(name, READY_WAIT, |d, n| d.local_address(n)).await
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection to {addr} within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Serves inbound tunnels until the node stops. Fails only when the protocol is registered
/// twice.
pub fn serve(control: &libp2p_stream::Control, d: Arc<Deployer>) -> Result<(), String> {
    let mut control = control.clone();
    let mut incoming = control.accept(PROTOCOL).map_err(|e| e.to_string())?;
    let slots = Arc::new(Semaphore::new(MAX_TUNNELS));
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let (d, slots) = (d.clone(), slots.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_one(&d, stream, slots).await {
                    tracing::debug!(%peer, error = %e, "a tunnel from a member ended");
                }
            });
        }
    });
    Ok(())
}

async fn serve_one(d: &Arc<Deployer>, stream: libp2p::Stream, slots: Arc<Semaphore>) -> Result<(), String> {
    let (mut io, server) = accept_stream(stream).await?;
    let Ok(_slot) = slots.try_acquire_owned() else {
        let e = format!("this node already carries {MAX_TUNNELS} tunnels");
        let _ = answer(&mut io, Some(e.clone())).await;
        return Err(e);
    };
    // Only a plain service this node runs may be reached: never an arbitrary local port.
    let up = match d.canonical(&server) {
        Some(name) if d.is_plain(&name) => match d.address_for_member(&name).await {
            Ok(addr) => connect(addr).await,
            Err(e) => Err(e),
        },
        _ => Err(format!("no plain service `{server}` here")),
    };
    let mut up = match up {
        Ok(s) => s,
        Err(e) => {
            let _ = answer(&mut io, Some(e.clone())).await;
            return Err(e);
        }
    };
    answer(&mut io, None).await?;
    // Bytes the opener sent after its header wait in `io`'s buffer and are copied first.
    tokio::io::copy_bidirectional(&mut io, &mut up).await.map(drop).map_err(|e| e.to_string())
}
