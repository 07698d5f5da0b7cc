//! `craftmesh invite` and `craftmesh join`: adding a machine to a keyed mesh with one
//! command on each side. The long code is the key itself (checked, see
//! [`craftmesh_protocol::joincode`]); the short code is exchanged over the LAN with SPAKE2
//! ([`exchange`]), found by DNS-SD ([`advert`]), good once and for minutes.

pub mod advert;
pub mod exchange;

use crate::cli::{Global, exit};
use crate::mesh::interfaces::usable;
use crate::mesh::keys::{self, KeyChoice, Stored};
use clap::Args;
use craftmesh_protocol::config::Config;
use craftmesh_protocol::joincode::{self, JoinCode, ShortCode};
use libp2p::pnet::PreSharedKey;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Options of `craftmesh invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// Print only the long code (the key, checked) and exit; no waiting.
    #[arg(long)]
    pub long: bool,
    /// How long the short code is valid, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub ttl: u64,
    /// TCP port to wait on (0: any free port).
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub port: u16,
    /// The key to share, as for `up` (default: `mesh.key_file`, else the data dir's key).
    #[arg(long, env = "CRAFTMESH_MESH_KEY_FILE", value_name = "FILE")]
    pub mesh_key: Option<PathBuf>,
    #[command(flatten)]
    pub ifaces: crate::cli::InterfaceArgs,
    /// JSON lines on stdout: the codes first, the result last.
    #[arg(long)]
    pub json: bool,
}

/// Options of `craftmesh join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A short code (`42-apple-river-stone`) or a long code (`CM1-…`) from `craftmesh invite`.
    #[arg(value_name = "CODE", num_args = 1.., required = true)]
    pub code: Vec<String>,
    /// The inviter's address, for networks without multicast (printed by `invite`).
    #[arg(long, value_name = "HOST:PORT")]
    pub from: Option<String>,
    /// How long to look for the inviter on the LAN, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub wait: u64,
    #[command(flatten)]
    pub ifaces: crate::cli::InterfaceArgs,
    #[arg(long)]
    pub json: bool,
}

/// The mesh key of `up` (see [`crate::mesh::keys::resolve`]), logged; `None`: the open mesh.
pub(crate) fn up_key(
    a: &crate::cli::UpArgs,
    mc: &craftmesh_protocol::config::mcp::MeshPatch,
    sources: &crate::config_files::Sources,
    dd: &std::path::Path,
) -> Result<Option<libp2p::pnet::PreSharedKey>, i32> {
    use crate::mesh::keys::KeyChoice;
    match crate::mesh::keys::resolve(a.mesh_key.as_deref(), a.open, mc, sources.project_dir.as_deref(), dd) {
        Ok(KeyChoice::Open) => {
            tracing::warn!(
                "OPEN MESH: no mesh key, so any machine on this LAN can join this mesh and use its services; run without --open / mesh.open to use a key"
            );
            Ok(None)
        }
        Ok(KeyChoice::File { path, key, created, default }) => {
            let mesh_id = crate::mesh::keys::mesh_id(Some(&key));
            if created {
                tracing::info!(path = %path.display(), %mesh_id, "created a new mesh key; add machines with `craftmesh invite` here and `craftmesh join CODE` there");
            } else if default {
                tracing::info!(path = %path.display(), %mesh_id, "using the mesh key of the data dir; add machines with `craftmesh invite`");
            }
            Ok(Some(key))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::CONFIG)
        }
    }
}

fn json_line(v: serde_json::Value) {
    println!("{v}");
    let _ = std::io::stdout().flush();
}

/// `craftmesh invite [--long]`.
pub async fn invite(g: &Global, a: &InviteArgs) -> anyhow::Result<i32> {
    let (cfg, sources, _) = match crate::cli::load_config(g, a.json) {
        Ok(x) => x,
        Err((code, d)) => {
            crate::cli::print_diags(&d);
            return Ok(code);
        }
    };
    // The running node (if any) may run another mesh than the files say (`up --open`,
    // another `--mesh-key`): refuse to share for an open mesh, warn for another key.
    let running = crate::cli::client(g, Duration::from_secs(3)).get::<serde_json::Value>("/v1/node").await.ok();
    let running_mesh = running.as_ref().and_then(|v| v["mesh"]["mesh_id"].as_str().map(str::to_string));
    if running_mesh.as_deref() == Some(keys::OPEN_MESH) {
        eprintln!("error: the running node is in the open mesh (started with --open): there is no key to share; restart it without --open to use a key");
        return Ok(exit::CONFIG);
    }
    let dd = crate::cli::data_dir(g);
    if let Err(e) = std::fs::create_dir_all(&dd) {
        eprintln!("error: cannot create the data dir {}: {e}", dd.display());
        return Ok(exit::CONFIG);
    }
    let (key, path) = match keys::resolve(a.mesh_key.as_deref(), false, &cfg.mesh, sources.project_dir.as_deref(), &dd) {
        Ok(KeyChoice::File { key, path, created, .. }) => {
            if created {
                eprintln!("created a new mesh key in {}; `craftmesh up` uses it", path.display());
            }
            (key, path)
        }
        Ok(KeyChoice::Open) => {
            eprintln!(
                "error: this node is configured for an open mesh (mesh.open: true): there is no key to share; remove mesh.open and restart `craftmesh up` to get one"
            );
            return Ok(exit::CONFIG);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let bytes = keys::key_bytes(&key);
    let long = joincode::encode_long(&bytes);
    let mesh_id = keys::mesh_id(Some(&key));
    if let Some(id) = running_mesh.filter(|id| *id != mesh_id) {
        eprintln!("warning: the running node is in mesh {id}, but this invite shares the key of mesh {mesh_id} ({})", path.display());
    }
    if a.long {
        if a.json {
            json_line(serde_json::json!({ "long_code": long, "mesh_id": mesh_id, "key_file": path.display().to_string() }));
        } else {
            println!("{long}");
            eprintln!("on the machine to add, run `craftmesh join {long}` (this code is the mesh key: keep it secret)");
        }
        return Ok(exit::OK);
    }
    let r = keys::random_bytes("craftmesh/invite-code/v1");
    let code = ShortCode::from_random([r[0], r[1], r[2], r[3], r[4]]);
    let ifaces = usable(&a.ifaces.policy(&cfg));
    let targets = craftmesh_protocol::interfaces::listen_targets(&ifaces);
    let mut listeners = Vec::new();
    let mut port = a.port;
    for ip in targets {
        match TcpListener::bind(SocketAddr::new(ip, port)).await {
            Ok(l) => {
                port = l.local_addr().map(|a| a.port()).unwrap_or(port);
                listeners.push(l);
            }
            Err(e) => tracing::debug!(%ip, port, error = %e, "cannot listen for the invite here"),
        }
    }
    if listeners.is_empty() {
        eprintln!("error: cannot listen on any usable interface (port {port}); choose another with --port or an interface with --interface");
        return Ok(exit::CONFIG);
    }
    let bound: Vec<SocketAddr> = listeners.iter().filter_map(|l| l.local_addr().ok()).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<(TcpStream, String)>(exchange::MAX_PENDING);
    let mut accepts = Vec::new();
    for l in listeners {
        let tx = tx.clone();
        accepts.push(tokio::spawn(async move {
            while let Ok((s, p)) = l.accept().await {
                if tx.send((s, p.to_string())).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let bound_ips: Vec<IpAddr> = bound.iter().map(SocketAddr::ip).collect();
    let mdns_ifaces: Vec<(String, IpAddr)> = ifaces.into_iter().filter(|(_, ip)| bound_ips.contains(ip) && !ip.is_loopback()).collect();
    let suffix = hex::encode(&r[5..9]);
    let ad = if mdns_ifaces.is_empty() {
        None
    } else {
        match advert::Advert::start(&mdns_ifaces, code.nameplate, port, &suffix) {
            Ok(ad) => Some(ad),
            Err(e) => {
                eprintln!("warning: cannot advertise the invite over DNS-SD ({e}); the joiner needs --from");
                None
            }
        }
    };
    let from = bound.first().map(ToString::to_string).unwrap_or_default();
    let text = code.text();
    if a.json {
        json_line(serde_json::json!({
            "code": text, "long_code": long, "mesh_id": mesh_id, "addresses": bound.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "nameplate": code.nameplate, "expires_in_s": a.ttl,
        }));
    } else {
        println!("On the machine to add, run:\n\n    craftmesh join {text}\n");
        println!("The code works once, for {}. Where the LAN blocks multicast: craftmesh join {text} --from {from}", human_secs(a.ttl));
        println!("Long code (no waiting; it is the mesh key, keep it secret): {long}");
        let _ = std::io::stdout().flush();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.ttl);
    let ticker = tokio::spawn(progress(deadline, a.json));
    let on_event = |e: exchange::Event| match e {
        exchange::Event::Dropped { peer, reason } => eprintln!("\x1b[2K\rdropped a connection from {peer}: {reason} (the invite stays open)"),
    };
    let served = tokio::select! {
        r = exchange::serve(rx, &code, &bytes, deadline, exchange::Limits::default(), on_event) => Some(r),
        _ = crate::node::shutdown_signal() => None,
    };
    ticker.abort();
    for t in accepts {
        t.abort();
    }
    if let Some(ad) = ad {
        let _ = tokio::task::spawn_blocking(move || ad.stop()).await;
    }
    if std::io::stderr().is_terminal() && !a.json {
        eprint!("\x1b[2K\r");
    }
    let Some((outcome, dropped)) = served else {
        eprintln!("invite cancelled");
        return Ok(exit::NOT_FOUND);
    };
    let (result, peer, code_out) = match &outcome {
        exchange::Outcome::Joined { peer, acked } => {
            eprintln!("sent the mesh key (mesh id {mesh_id}) to {peer}{}", if *acked { "" } else { " (it did not confirm receipt)" });
            ("joined", Some(peer.clone()), exit::OK)
        }
        exchange::Outcome::WrongCode { peer } => {
            eprintln!("error: {peer} tried a wrong code; the invite is void and no key was sent. Run `craftmesh invite` again for a new code");
            ("wrong_code", Some(peer.clone()), exit::NOT_FOUND)
        }
        exchange::Outcome::Lost { peer, reason } => {
            eprintln!("error: {peer} knew the code but the key could not be sent ({reason}); run `craftmesh invite` again");
            ("lost", Some(peer.clone()), exit::NOT_FOUND)
        }
        exchange::Outcome::Expired => {
            eprintln!("error: the invite expired after {} without a join; run `craftmesh invite` again", human_secs(a.ttl));
            ("expired", None, exit::NOT_FOUND)
        }
    };
    if a.json {
        json_line(serde_json::json!({ "result": result, "peer": peer, "dropped": dropped }));
    }
    Ok(code_out)
}

fn human_secs(s: u64) -> String {
    if s >= 60 && s.is_multiple_of(60) { format!("{} min", s / 60) } else { format!("{s} s") }
}

/// Shows the time left on stderr: a line rewritten every second on a terminal, else a
/// line every 30 s.
async fn progress(deadline: tokio::time::Instant, json: bool) {
    let tty = std::io::stderr().is_terminal() && !json;
    let mut n = 0u64;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
        if tty {
            eprint!("\x1b[2K\rwaiting for `craftmesh join` on the other machine… {}:{:02} left", left / 60, left % 60);
        } else if n.is_multiple_of(30) {
            eprintln!("waiting for `craftmesh join` on the other machine ({left} s left)");
        }
        n += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `craftmesh join CODE`.
pub async fn join(g: &Global, a: &JoinArgs) -> anyhow::Result<i32> {
    let (cfg, _, _) = match crate::cli::load_config(g, a.json) {
        Ok(x) => x,
        Err((code, d)) => {
            crate::cli::print_diags(&d);
            return Ok(code);
        }
    };
    let text = a.code.join(" ");
    let bytes = match joincode::parse(&text) {
        Ok(JoinCode::Long(k)) => k,
        Ok(JoinCode::Short(code)) => match fetch(&cfg, a, &code).await {
            Ok(k) => k,
            Err((code, msg)) => {
                eprintln!("error: {msg}");
                return Ok(code);
            }
        },
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let key = PreSharedKey::new(bytes);
    let dd = crate::cli::data_dir(g);
    if let Err(e) = std::fs::create_dir_all(&dd) {
        eprintln!("error: cannot create the data dir {}: {e}", dd.display());
        return Ok(exit::CONFIG);
    }
    let path = dd.join(keys::DATA_DIR_KEY);
    let stored = match keys::store(&path, &key) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let mesh_id = keys::mesh_id(Some(&key));
    let backup = match &stored {
        Stored::Replaced { backup } => Some(backup.clone()),
        _ => None,
    };
    if a.json {
        let result = match stored {
            Stored::New => "stored",
            Stored::Same => "same",
            Stored::Replaced { .. } => "replaced",
        };
        json_line(serde_json::json!({ "result": result, "mesh_id": mesh_id, "key_file": path.display().to_string(), "backup": backup }));
    } else {
        match &stored {
            Stored::Same => println!("this machine already has the key of mesh {mesh_id} ({})", path.display()),
            _ => println!("stored the key of mesh {mesh_id} in {}", path.display()),
        }
        if let Some(b) = &backup {
            println!("the previous key (another mesh) is kept as {b}");
        }
        if !matches!(stored, Stored::Same) {
            println!("restart the node (`craftmesh up`, or `systemctl restart craftmesh`) to use it");
        }
    }
    if cfg.mesh.key_file.is_some() || cfg.mesh.open == Some(true) {
        eprintln!("warning: the configuration sets mesh.key_file or mesh.open, which `up` uses instead of {}", path.display());
    }
    Ok(exit::OK)
}

/// Finds the inviter and runs the exchange; the error carries the exit code.
async fn fetch(cfg: &Config, a: &JoinArgs, code: &ShortCode) -> Result<[u8; 32], (i32, String)> {
    let addrs: Vec<SocketAddr> = match &a.from {
        Some(from) => match tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(from.as_str())).await {
            Ok(Ok(it)) => it.take(16).collect(),
            Ok(Err(e)) => return Err((exit::CONFIG, format!("--from `{from}`: {e} (write it as HOST:PORT)"))),
            Err(_) => return Err((exit::UNREACHABLE, format!("--from `{from}`: name lookup timed out"))),
        },
        None => {
            let ifaces: Vec<(String, IpAddr)> = usable(&a.ifaces.policy(cfg)).into_iter().filter(|(_, ip)| !ip.is_loopback()).collect();
            if !a.json {
                eprintln!("looking for invite {} on the LAN…", code.nameplate);
            }
            let (np, wait) = (code.nameplate, Duration::from_secs(a.wait));
            match tokio::task::spawn_blocking(move || advert::find(&ifaces, np, wait)).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err((exit::UNREACHABLE, format!("cannot browse DNS-SD ({e}); use --from HOST:PORT as printed by `craftmesh invite`"))),
                Err(e) => return Err((exit::UNREACHABLE, format!("DNS-SD browse failed: {e}"))),
            }
        }
    };
    if addrs.is_empty() {
        return Err((
            exit::UNREACHABLE,
            format!(
                "no invite {} found on the LAN within {} s; is `craftmesh invite` still waiting on the other machine? Without multicast, add --from HOST:PORT as it prints",
                code.nameplate, a.wait
            ),
        ));
    }
    let mut last = String::new();
    for addr in addrs {
        let mut s = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                last = format!("cannot connect to the inviter at {addr}: {e}");
                continue;
            }
            Err(_) => {
                last = format!("connecting to the inviter at {addr} timed out");
                continue;
            }
        };
        return match exchange::join(&mut s, code, exchange::Limits::default()).await {
            Ok(k) => Ok(k),
            Err(e @ (exchange::JoinError::WrongCode | exchange::JoinError::BadInviter)) => Err((exit::NOT_FOUND, e.to_string())),
            Err(e) => Err((exit::UNREACHABLE, format!("the exchange with {addr} failed: {e}"))),
        };
    }
    Err((exit::UNREACHABLE, last))
}
