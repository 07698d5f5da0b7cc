//! Command-line interface: argument parsing and the commands' output (human by default,
//! stable JSON with `--json`).

use crate::api;
use crate::apiclient::{Client, ClientError};
use crate::config_files::{self, Sources};
use crate::datadir::{self, DataDir};
use crate::discovery::Discoverer;
use crate::host::HostMonitor;
use clap::{Args, Parser, Subcommand};
use craftmesh_protocol::config::{Config, Diagnostics, Profile};
use craftmesh_protocol::report::{Finding, Report};
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Exit codes: 0 ok, 1 not found / unhealthy, 2 bad configuration or usage, 3 node unreachable
/// or not authenticated (not the node of this data dir, no or wrong API token).
pub mod exit {
    pub const OK: i32 = 0;
    pub const NOT_FOUND: i32 = 1;
    pub const CONFIG: i32 = 2;
    pub const UNREACHABLE: i32 = 3;
}

#[derive(Debug, Parser)]
#[command(name = "craftmesh", version, about = "LAN mesh for MCP servers, shared services and agent capacity")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command understands, so `craftmesh services` finds the node `up` started.
#[derive(Debug, Args)]
pub struct Global {
    /// Project directory holding .mcp/ and .agents/ (default: the current directory if it has them).
    #[arg(long, global = true, env = "CRAFTMESH_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Data directory (default: $XDG_DATA_HOME/craftmesh or ~/.local/share/craftmesh).
    #[arg(long, global = true, env = "CRAFTMESH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the local API (default: the running node's, else 127.0.0.1:7410).
    #[arg(long, global = true, env = "CRAFTMESH_API", value_name = "ADDR")]
    pub api: Option<String>,
    /// Configuration profile: default or production.
    #[arg(long, global = true, env = "CRAFTMESH_PROFILE", value_name = "NAME", default_value = "default")]
    pub profile: String,
    /// API token to send (default: the `api.token` file in the data dir).
    #[arg(long, global = true, env = "CRAFTMESH_API_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Peer id the node at --api must prove (default: the data dir's node.key); for a node whose data dir this user cannot read.
    #[arg(long, global = true, env = "CRAFTMESH_NODE_ID", value_name = "PEER_ID")]
    pub node_id: Option<String>,
    /// Log filter: a level, or comma-separated `target=level` pairs, e.g. `debug` or `info,craftmesh=trace`.
    #[arg(long, global = true, env = "CRAFTMESH_LOG", value_name = "FILTER")]
    pub log: Option<String>,
}

/// Mesh options of `up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Pre-shared mesh key file (from `craftmesh keygen`); nodes without the same key cannot connect
    /// (default: `mesh.key_file`, else `mesh.key` in the data dir, created on first run).
    #[arg(long, env = "CRAFTMESH_MESH_KEY_FILE", value_name = "FILE")]
    pub mesh_key: Option<PathBuf>,
    /// Join the open mesh: no key, so any machine on the LAN can join. Not with --mesh-key.
    #[arg(long, env = "CRAFTMESH_OPEN", value_parser = clap::builder::BoolishValueParser::new())]
    pub open: bool,
    /// TCP port of the mesh (0: any free port; default 7411 or `mesh.listen_port`).
    #[arg(long, env = "CRAFTMESH_LISTEN_PORT", value_name = "PORT")]
    pub listen: Option<u16>,
    /// Static peer to dial (multiaddr such as /ip4/10.0.0.2/tcp/7411), for networks without multicast; repeatable.
    #[arg(long = "peer", env = "CRAFTMESH_PEERS", value_delimiter = ',', value_name = "MULTIADDR")]
    pub peers: Vec<String>,
    /// Only use these interfaces (prefix match, e.g. `eth0` or `veth*`); repeatable.
    #[arg(long = "interface", env = "CRAFTMESH_INTERFACES", value_delimiter = ',', value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Never use these interfaces; repeatable.
    #[arg(long = "deny-interface", env = "CRAFTMESH_DENY_INTERFACES", value_delimiter = ',', value_name = "NAME")]
    pub deny_interfaces: Vec<String>,
    /// Do not advertise or browse DNS-SD (static peers only).
    #[arg(long, env = "CRAFTMESH_NO_MDNS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mdns: bool,
    /// Run without the mesh: local discovery and API only.
    #[arg(long, env = "CRAFTMESH_NO_MESH", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_mesh: bool,
    /// Let the API listen on a non-loopback --api address (clients still need the API token).
    #[arg(long, env = "CRAFTMESH_API_ALLOW_REMOTE", value_parser = clap::builder::BoolishValueParser::new())]
    pub api_allow_remote: bool,
    /// Tags published in this node's record; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node: periodic discovery, the mesh, the local API.
    Up(UpArgs),
    /// Write a new random mesh key (256-bit pre-shared key) to FILE.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a join code for this node's mesh and wait (once, for minutes) for `craftmesh join` on another machine.
    Invite(crate::invite::InviteArgs),
    /// Join the mesh of a code from `craftmesh invite`: stores its key in the data dir.
    Join(crate::invite::JoinArgs),
    /// Show the running node: identity, mesh, counters, host resources.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the mesh members the running node knows.
    Members {
        #[arg(long)]
        json: bool,
    },
    /// List the services the running node knows.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// Print the URL of a healthy instance of NAME (verified just now).
    Resolve {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the API token of the data dir (created if missing) and its `Authorization` header, for API and MCP clients.
    ApiToken {
        #[arg(long)]
        json: bool,
    },
    /// Run discovery without a node and print what it finds.
    Discover {
        /// Run one round and exit (without it, repeat every discovery_interval).
        #[arg(long)]
        once: bool,
        #[arg(long)]
        json: bool,
        /// Only these servers (name or alias); repeatable.
        #[arg(long = "server", value_name = "NAME")]
        servers: Vec<String>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate every configuration file; errors name file, line, column and field.
    Check {
        #[arg(long)]
        json: bool,
    },
}

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
            interfaces: crate::mesh::interfaces::InterfacePolicy {
                allow: or_cfg(&a.interfaces, &mc.interfaces.allow),
                deny: or_cfg(&a.deny_interfaces, &mc.interfaces.deny),
            },
            mdns: !a.no_mdns && mc.mdns.unwrap_or(true),
            tags: or_cfg(&a.tags, &mc.tags),
            membership: craftmesh_protocol::membership::Config::default(),
            state_dir: Some(data.path().to_path_buf()),
        })
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e} (another node? choose another with --api)");
            return Ok(exit::CONFIG);
        }
    };
    let base_dir = sources.project_dir.clone().unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let setup = crate::node::Setup { config: Arc::new(cfg), base_dir, data_dir: data, keypair: kp, mesh, api_token, api_allow_remote: a.api_allow_remote };
    crate::node::run(setup, listener, crate::node::shutdown_signal()).await?;
    Ok(exit::OK)
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

fn print_report(r: &Report) {
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "host {}: {} CPUs, load {:.2}, memory {:.1}/{:.1} GB available",
        r.host.hostname,
        r.host.cpu_count,
        r.host.load_average_1m,
        gb(r.host.memory_available_bytes),
        gb(r.host.memory_total_bytes)
    );
    for s in &r.servers {
        let aliases = if s.aliases.is_empty() { String::new() } else { format!(" (also {})", s.aliases.join(", ")) };
        let state = match &s.resolved {
            Some(u) => format!("→ {u}"),
            None => "not found".to_string(),
        };
        println!("\n{}{aliases}: {state}{}", s.name, if s.enabled { "" } else { " [disabled]" });
        for f in &s.findings {
            println!("  {}", finding_line(f));
        }
        for n in &s.notes {
            println!("  note: {n}");
        }
    }
    println!("\n{} probes in {:.0} ms", r.probes, r.elapsed_ms);
}

fn print_services(list: &[api::ServiceView]) {
    if list.is_empty() {
        println!("no services found");
        return;
    }
    for v in list {
        let place = if v.local {
            "local".to_string()
        } else if v.node_name.is_empty() {
            "lan".to_string()
        } else {
            v.node_name.clone()
        };
        println!("{:<16} {:<12} {}", v.finding.name, place, finding_line(&v.finding));
    }
}

fn finding_line(f: &Finding) -> String {
    let status = serde_json::to_value(f.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let proto = f.protocol.map(|p| format!("{p:?}").to_lowercase()).unwrap_or_else(|| "-".into());
    let mut s = format!("{:<11} {:<4} {:<32} via {}", status, proto, f.url.as_deref().unwrap_or("-"), f.source.as_str());
    let e = &f.evidence;
    let mut ev = Vec::new();
    if let Some(p) = e.port {
        ev.push(format!("port {p}"));
    }
    if let Some(p) = e.pid {
        ev.push(format!("pid {p}"));
    }
    if let Some(c) = &e.container_id {
        ev.push(format!("container {c}"));
    }
    if let Some(v) = &e.env_var {
        ev.push(format!("${v}"));
    }
    if let Some(l) = &e.lock_path {
        ev.push(format!("lock {l}"));
    }
    if let Some(p) = &e.path {
        ev.push(p.clone());
    }
    if !ev.is_empty() {
        s.push_str(&format!(" [{}]", ev.join(", ")));
    }
    if let Some(i) = &f.server_info {
        s.push_str(&format!(" {} {} (MCP {})", i.name, i.version, i.protocol_version));
    }
    if let Some(t) = &f.tools {
        s.push_str(&format!(", {} tools #{}", t.count, t.hash));
    }
    if let Some(p) = &f.process {
        s.push_str(&format!(" {} {:.0} MB {:.1}% CPU", p.name, p.memory_bytes as f64 / 1e6, p.cpu_percent));
    }
    if let Some(l) = f.latency_ms {
        s.push_str(&format!(" {l:.1} ms"));
    }
    if let Some(d) = &f.detail {
        s.push_str(&format!(" — {d}"));
    }
    s
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
        Command::Resolve { name, json } => resolve(&cli.global, name, *json).await,
        Command::ApiToken { json } => api_token(&cli.global, *json),
        Command::Discover { once, json, servers } => discover(&cli.global, *once, *json, servers).await,
        Command::Config { command: ConfigCommand::Check { json } } => config_check(&cli.global, *json),
    }
}
