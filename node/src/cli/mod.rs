//! Command-line interface: argument parsing and the commands' output (human by default,
//! stable JSON with `--json`).

use crate::api;
use crate::apiclient::{Client, ClientError};
use crate::config_files::{self, Sources};
use crate::datadir::{self, DataDir};
use crate::discovery::Discoverer;
use crate::host::HostMonitor;
use craftmesh_protocol::config::{Config, Diagnostics, Profile};
use craftmesh_protocol::report::{Finding, Report};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod args;
pub mod claim;
mod claim_run;
pub mod deploy;
mod print;

pub use args::*;
use print::{print_report, print_services};

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// Loads the configuration, printing diagnostics to stderr. `None` means errors were printed.
pub fn load_config(g: &Global, quiet_warnings: bool) -> Result<(Config, Sources, Diagnostics), (i32, Diagnostics)> {
    let profile: Profile = match g.profile.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --profile: {e}");
            return Err((exit::CONFIG, Diagnostics::default()));
        }
    };
    let sources = Sources::resolve(g.config_dir.clone(), profile, &env);
    let (cfg, diags) = config_files::load(&sources, &env);
    match cfg {
        Some(c) => {
            if !quiet_warnings {
                for d in diags.warnings() {
                    eprintln!("{d}");
                }
            }
            Ok((c, sources, diags))
        }
        None => Err((exit::CONFIG, diags)),
    }
}

pub(crate) fn print_diags(d: &Diagnostics) {
    for x in &d.0 {
        eprintln!("{x}");
    }
    let e = d.errors().count();
    if e > 0 {
        eprintln!("{e} error(s) in configuration; run `craftmesh config check` for the full list");
    }
}

pub(crate) fn data_dir(g: &Global) -> PathBuf {
    g.data_dir.clone().unwrap_or_else(|| datadir::default_path(&env))
}

/// The API address: --api / CRAFTMESH_API, else what the node wrote in the data dir, else the default.
pub(crate) fn api_addr(g: &Global) -> String {
    if let Some(a) = &g.api {
        return a.clone();
    }
    let f = DataDir::api_addr_file(&data_dir(g));
    std::fs::read_to_string(f).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty() && s.len() < 200).unwrap_or_else(|| api::DEFAULT_API.to_string())
}

/// `craftmesh up`.
pub async fn up(g: &Global, a: &UpArgs) -> anyhow::Result<i32> {
    let (cfg, sources, _) = match load_config(g, false) {
        Ok(x) => x,
        Err((code, d)) => {
            print_diags(&d);
            return Ok(code);
        }
    };
    let addr = g.api.clone().unwrap_or_else(|| api::DEFAULT_API.to_string());
    if !a.api_allow_remote
        && let Some(code) = refuse_remote_api(&addr).await
    {
        return Ok(code);
    }
    if a.open
        && let Some(k) = &a.mesh_key
    {
        eprintln!("error: --open asks for an open mesh but --mesh-key {} gives a key; use one or the other", k.display());
        return Ok(exit::CONFIG);
    }
    let dd = data_dir(g);
    let data = match DataDir::open(&dd) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let api_token = match crate::apiauth::load_or_create_token(data.path()) {
        Ok((t, created)) => {
            if created {
                tracing::info!(file = %crate::apiauth::token_path(data.path()).display(), "created API token");
            }
            t
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let (kp, created) = crate::identity::load_or_create(data.path())?;
    let peer_id = crate::identity::peer_id(&kp).to_string();
    if created {
        tracing::info!(%peer_id, dir = %data.path().display(), "created node identity");
    }
    let mesh = if a.no_mesh {
        None
    } else {
        let mc = &cfg.mesh;
        let key = match crate::invite::up_key(a, mc, &sources, data.path()) {
            Ok(k) => k,
            Err(code) => return Ok(code),
        };
        let mut static_peers = Vec::new();
        let peers: Vec<String> = if a.peers.is_empty() { mc.static_peers.clone().unwrap_or_default() } else { a.peers.clone() };
        for p in peers.iter().filter(|p| !p.trim().is_empty()) {
            match p.trim().parse::<libp2p::Multiaddr>() {
                Ok(m) => static_peers.push(m),
                Err(e) => {
                    eprintln!("error: --peer `{p}` is not a multiaddr ({e}); write it like /ip4/10.0.0.2/tcp/7411");
                    return Ok(exit::CONFIG);
                }
            }
        }
        let or_cfg = |cli: &Vec<String>, cfg: &Option<Vec<String>>| if cli.is_empty() { cfg.clone().unwrap_or_default() } else { cli.clone() };
        Some(crate::mesh::MeshOptions {
            listen_port: a.listen.or(mc.listen_port).unwrap_or(7411),
            key,
            static_peers,
            interfaces: a.ifaces.policy(&cfg),
            mdns: !a.no_mdns && mc.mdns.unwrap_or(true),
            tags: or_cfg(&a.tags, &mc.tags),
            membership: craftmesh_protocol::membership::Config::default(),
            state_dir: Some(data.path().to_path_buf()),
        })
    };
    let claims = if a.no_mesh || a.no_claims {
        None
    } else {
        match claims_options(a, &cfg, data.path()) {
            Ok(o) => Some(o),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(exit::CONFIG);
            }
        }
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e} (another node? choose another with --api)");
            return Ok(exit::CONFIG);
        }
    };
    let base_dir = sources.project_dir.clone().unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let setup =
        crate::node::Setup { config: Arc::new(cfg), base_dir, data_dir: data, keypair: kp, mesh, api_token, api_allow_remote: a.api_allow_remote, claims };
    crate::node::run(setup, listener, crate::node::shutdown_signal()).await?;
    Ok(exit::OK)
}

/// The claims options of `up`: `--role` or `claims.role` (auto: a machine with a battery is
/// a client), `claims.lock_delay`, `claims.promote_after`.
fn claims_options(a: &UpArgs, cfg: &Config, data: &std::path::Path) -> Result<crate::claims::ClaimsOptions, String> {
    use craftmesh_protocol::config::mcp::RoleSetting;
    let setting = match a.role.as_deref().map(str::trim) {
        None => cfg.claims.role.unwrap_or_default(),
        Some("auto") => RoleSetting::Auto,
        Some("server") => RoleSetting::Server,
        Some("client") => RoleSetting::Client,
        Some(other) => return Err(format!("--role / CRAFTMESH_ROLE `{other}`: expected server, client or auto")),
    };
    let role = craftmesh_protocol::claims::cluster::role_for(setting, crate::host::has_battery());
    let mut o = crate::claims::ClaimsOptions::new(data, role);
    o.lock_delay_ms = cfg.claims.lock_delay.unwrap_or(0).saturating_mul(1000).min(craftmesh_protocol::claims::MAX_LOCK_DELAY_MS);
    if let Some(p) = cfg.claims.promote_after {
        o.formation.promote_after_ms = p.saturating_mul(1000);
    }
    Ok(o)
}

/// Refuses (exit 2) an API address that is not loopback; `None` when it is.
async fn refuse_remote_api(addr: &str) -> Option<i32> {
    let resolved: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(addr).await {
        Ok(a) => a.collect(),
        Err(e) => {
            eprintln!("error: --api `{addr}` is not an address to listen on ({e}); write it like 127.0.0.1:7410");
            return Some(exit::CONFIG);
        }
    };
    if !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()) {
        return None;
    }
    eprintln!(
        "error: --api {addr} is not a loopback address, so other hosts could reach the node's API. Listen on 127.0.0.1 (the default), or pass --api-allow-remote (CRAFTMESH_API_ALLOW_REMOTE=1) to allow it; clients still need the API token"
    );
    Some(exit::CONFIG)
}

/// `craftmesh api-token`: the token of the data dir, created (with the data dir) if missing.
pub fn api_token(g: &Global, json: bool) -> anyhow::Result<i32> {
    let dd = data_dir(g);
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    if let Err(e) = b.create(&dd) {
        eprintln!("error: cannot create data dir {}: {e}", dd.display());
        return Ok(exit::UNREACHABLE);
    }
    let token = match crate::apiauth::load_or_create_token(&dd) {
        Ok((t, _)) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::UNREACHABLE);
        }
    };
    let header = format!("Authorization: Bearer {token}");
    if json {
        let v = serde_json::json!({
            "token": token,
            "header": header,
            "file": crate::apiauth::token_path(&dd).display().to_string(),
            "api": api_addr(g),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{token}");
        println!("{header}");
    }
    Ok(exit::OK)
}

/// The API client for this invocation: address, data dir, --token, --node-id.
pub(crate) fn client(g: &Global, timeout: Duration) -> Client {
    let mut c = Client::new(&api_addr(g), data_dir(g), timeout);
    c.token = g.token.clone();
    c.node_id = g.node_id.clone().filter(|s| !s.trim().is_empty());
    c
}

/// `craftmesh discover [--once]`.
pub async fn discover(g: &Global, once: bool, json: bool, only: &[String]) -> anyhow::Result<i32> {
    let (cfg, sources, _) = match load_config(g, json) {
        Ok(x) => x,
        Err((code, d)) => {
            print_diags(&d);
            return Ok(code);
        }
    };
    for n in only {
        if cfg.server(n).is_none() {
            eprintln!("error: no server named `{n}` is configured");
            return Ok(exit::CONFIG);
        }
    }
    let cfg = Arc::new(cfg);
    let base_dir = sources.project_dir.clone().unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let d = Discoverer::new(cfg.clone(), base_dir);
    let mut host = HostMonitor::new();
    loop {
        let progress = std::io::stderr().is_terminal() && !json;
        let specs: Vec<_> = cfg.servers.values().filter(|s| only.is_empty() || only.iter().any(|n| s.answers_to(n))).collect();
        if progress {
            eprint!("discovering {} servers…\r", specs.len());
        }
        let start = std::time::Instant::now();
        let h = host.snapshot();
        let (servers, probes) = d.discover(&specs).await;
        let timed_out = servers.iter().any(|s| s.timed_out);
        let report =
            Report { host: h, servers, probes, elapsed_ms: start.elapsed().as_secs_f64() * 1000.0, finished_at_ms: crate::discovery::now_ms(), timed_out };
        if progress {
            eprint!("\x1b[2K");
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_report(&report);
        }
        if once {
            return Ok(exit::OK);
        }
        tokio::time::sleep(Duration::from_millis(cfg.settings.discovery_interval_ms)).await;
    }
}

/// `craftmesh services`.
pub async fn services(g: &Global, json: bool) -> anyhow::Result<i32> {
    show(g, "/v1/services", json, |v| {
        let list: Vec<api::ServiceView> = serde_json::from_value(v).unwrap_or_default();
        print_services(&list);
    })
    .await
}

/// GETs `path` from the node and prints it: as JSON with `--json`, else with `human`.
async fn show(g: &Global, path: &str, json: bool, human: impl FnOnce(serde_json::Value)) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(10));
    match c.get::<serde_json::Value>(path).await {
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(exit::OK)
        }
        Ok(v) => {
            human(v);
            Ok(exit::OK)
        }
        Err(e) => Ok(client_error(e)),
    }
}

/// `craftmesh members`.
pub async fn members(g: &Global, json: bool) -> anyhow::Result<i32> {
    let code = show(g, "/v1/members", json, |v| {
        let list = v.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("no other members");
        }
        for m in list {
            let id = m["id"].as_str().unwrap_or("");
            let short = id.get(id.len().saturating_sub(8)..).unwrap_or(id);
            let cap = &m["capacity"];
            let mem = cap["memory_available_bytes"].as_u64().map(|b| format!("{:.1} GB free", b as f64 / 1e9)).unwrap_or_default();
            println!(
                "{:<20} …{short}  {:<7} rtt {:>7}  seen {:>6} ms ago  {}  {}",
                m["name"].as_str().unwrap_or("?"),
                m["state"].as_str().unwrap_or("?"),
                m["rtt_ms"].as_f64().map(|r| format!("{r:.1} ms")).unwrap_or_else(|| "-".into()),
                m["last_seen_ms_ago"].as_u64().unwrap_or(0),
                m["addresses"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default(),
                mem
            );
        }
    })
    .await?;
    if !json && code == exit::OK {
        print_other_meshes(g).await;
    }
    Ok(code)
}

/// The hint under `members`: nodes of other meshes seen on the LAN (a count, never who).
async fn print_other_meshes(g: &Global) {
    let n = client(g, Duration::from_secs(10)).get::<serde_json::Value>("/v1/node").await.ok().and_then(|v| v["mesh"]["other_meshes"].as_u64()).unwrap_or(0);
    if n > 0 {
        println!(
            "{n} node{} of other meshes {} seen on this LAN; to join one, run `craftmesh invite` on one of its machines and `craftmesh join CODE` here",
            if n == 1 { "" } else { "s" },
            if n == 1 { "was" } else { "were" }
        );
    }
}

/// `craftmesh status`.
pub async fn status(g: &Global, json: bool) -> anyhow::Result<i32> {
    show(g, "/v1/node", json, |v| {
        let n = &v["node"];
        println!(
            "node {} ({}) version {}, up {} s",
            n["hostname"].as_str().unwrap_or("?"),
            n["peer_id"].as_str().unwrap_or("?"),
            n["version"].as_str().unwrap_or("?"),
            v["uptime_s"]
        );
        println!("api {}, data {}", n["api"].as_str().unwrap_or("?"), n["data_dir"].as_str().unwrap_or("?"));
        if v["mesh"]["mesh_id"].as_str() == Some(crate::mesh::keys::OPEN_MESH) {
            println!("WARNING: OPEN MESH: this node has no mesh key, so any machine on this LAN can join and use its services; restart it without --open / mesh.open to use a key");
        }
        match v["mesh"].as_object() {
            Some(m) => println!(
                "mesh {} on port {} at {}, {} members; rejected: {}",
                m["mesh_id"].as_str().unwrap_or("?"),
                m["listen_port"],
                m["addresses"],
                m["members"],
                m["stats"]["rejected"]
            ),
            None => println!("mesh off"),
        }
        println!("discovery: {} rounds, last {:.0} ms", v["stats"]["discovery_rounds"], v["stats"]["last_round_ms"].as_f64().unwrap_or(0.0));
        let c = &v["cluster"];
        if c.is_object() {
            println!(
                "claims: {} {} in cluster {}, leader {}, term {}, {} voters, {} learners, last applied {}",
                c["role"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?"),
                c["cluster"].as_str().or(c["joining"].as_str()).unwrap_or("-"),
                c["leader"]["peer"].as_str().unwrap_or("none"),
                c["term"],
                c["voters"].as_array().map_or(0, Vec::len),
                c["learners"].as_array().map_or(0, Vec::len),
                c["last_applied"].as_u64().map_or("-".to_string(), |i| i.to_string())
            );
        } else {
            println!("claims: off");
        }
        // Only tasks that ever failed are listed; a healthy node prints nothing here.
        for (name, t) in v["tasks"].as_object().into_iter().flatten() {
            let ago = t["last_failure_at_ms"].as_u64().map(|at| crate::discovery::now_ms().saturating_sub(at) / 1000);
            println!(
                "task {name}: {} restarts, last error {} s ago: {}",
                t["restarts"],
                ago.map_or_else(|| "?".to_string(), |s| s.to_string()),
                t["last_error"].as_str().unwrap_or("?")
            );
        }
    })
    .await
}

/// `craftmesh keygen`.
pub fn keygen(out: &std::path::Path) -> anyhow::Result<i32> {
    match crate::mesh::keys::generate(out) {
        Ok(k) => {
            println!(
                "wrote mesh key to {} (mesh id {}); copy it to every node and start them with --mesh-key {}",
                out.display(),
                crate::mesh::keys::mesh_id(Some(&k)),
                out.display()
            );
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(exit::CONFIG)
        }
    }
}

/// `craftmesh resolve NAME`.
pub async fn resolve(g: &Global, name: &str, json: bool) -> anyhow::Result<i32> {
    let c = client(g, Duration::from_secs(60));
    match c.get::<Finding>(&format!("/v1/resolve/{}", urlencode(name))).await {
        Ok(f) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                println!("{}", f.url.unwrap_or_default());
            }
            Ok(exit::OK)
        }
        Err(e) => Ok(client_error(e)),
    }
}

fn client_error(e: ClientError) -> i32 {
    eprintln!("error: {e}");
    match e {
        ClientError::Api(_) => exit::NOT_FOUND,
        ClientError::Unreachable { .. }
        | ClientError::Bad(_)
        | ClientError::NotTheNode { .. }
        | ClientError::NoNode { .. }
        | ClientError::Credentials(_)
        | ClientError::Unauthorized(_) => exit::UNREACHABLE,
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// `craftmesh config check`.
pub fn config_check(g: &Global, json: bool) -> anyhow::Result<i32> {
    let profile: Profile = match g.profile.parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --profile: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let sources = Sources::resolve(g.config_dir.clone(), profile, &env);
    let (cfg, diags) = config_files::load(&sources, &env);
    let errors: Vec<_> = diags.errors().collect();
    let warnings: Vec<_> = diags.warnings().collect();
    if json {
        let v = serde_json::json!({
            "ok": cfg.is_some(),
            "errors": errors,
            "warnings": warnings,
            "files": cfg.as_ref().map(|c| c.files.clone()).unwrap_or_default(),
            "servers": cfg.as_ref().map(|c| c.servers.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
            "agents": cfg.as_ref().map(|c| c.agents.agents.keys().cloned().collect::<Vec<_>>()).unwrap_or_default(),
            "profile": profile,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for d in &diags.0 {
            println!("{d}");
        }
        match &cfg {
            Some(c) => println!(
                "ok: {} files, {} servers ({}), {} agents ({}); {} warning(s)",
                c.files.len(),
                c.servers.len(),
                c.servers.keys().cloned().collect::<Vec<_>>().join(", "),
                c.agents.agents.len(),
                c.agents.agents.keys().cloned().collect::<Vec<_>>().join(", "),
                warnings.len()
            ),
            None => println!("{} error(s), {} warning(s)", errors.len(), warnings.len()),
        }
    }
    Ok(if cfg.is_some() { exit::OK } else { exit::CONFIG })
}

/// Runs the parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let _ = std::io::stdout().flush();
    match &cli.command {
        Command::Up(a) => up(&cli.global, a).await,
        Command::Keygen { out } => keygen(out),
        Command::Invite(a) => crate::invite::invite(&cli.global, a).await,
        Command::Join(a) => crate::invite::join(&cli.global, a).await,
        Command::Members { json } => members(&cli.global, *json).await,
        Command::Status { json } => status(&cli.global, *json).await,
        Command::Services { json } => services(&cli.global, *json).await,
        Command::Resolve { name, json, ensure: false } => resolve(&cli.global, name, *json).await,
        Command::Resolve { name, json, ensure: true } => deploy::resolve_ensure(&cli.global, name, *json).await,
        Command::Deploy { command } => deploy::run(&cli.global, command).await,
        Command::McpProxy { name } => deploy::mcp_proxy(&cli.global, name).await,
        Command::ApiToken { json } => api_token(&cli.global, *json),
        Command::Discover { once, json, servers } => discover(&cli.global, *once, *json, servers).await,
        Command::Config { command: ConfigCommand::Check { json } } => config_check(&cli.global, *json),
        Command::Claim { command } => claim::run(&cli.global, command).await,
        Command::Cluster { json } => claim::cluster(&cli.global, *json).await,
    }
}
