//! The command line: arguments, commands and exit codes.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

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
    #[command(flatten)]
    pub ifaces: InterfaceArgs,
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
    /// Claims role: `server` (may vote), `client` (never votes, forwards to the leader) or
    /// `auto` (client on a machine with a battery; default, or `claims.role`).
    #[arg(long, env = "CRAFTMESH_ROLE", value_name = "ROLE")]
    pub role: Option<String>,
    /// Run without claims (no Raft, no claims API).
    #[arg(long, env = "CRAFTMESH_NO_CLAIMS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_claims: bool,
}

/// Which interfaces the mesh (and `invite`/`join`) use; they override `mesh.interfaces`.
#[derive(Debug, Args)]
pub struct InterfaceArgs {
    /// Only use these interfaces (an exact name such as `eth0`, or a prefix such as `veth*`); repeatable.
    #[arg(long = "interface", env = "CRAFTMESH_INTERFACES", value_delimiter = ',', value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Never use these interfaces; repeatable.
    #[arg(long = "deny-interface", env = "CRAFTMESH_DENY_INTERFACES", value_delimiter = ',', value_name = "NAME")]
    pub deny_interfaces: Vec<String>,
}

impl InterfaceArgs {
    /// The policy: these flags where given, else the configuration's `mesh.interfaces`.
    pub fn policy(&self, cfg: &craftmesh_protocol::config::Config) -> craftmesh_protocol::interfaces::InterfacePolicy {
        let or_cfg = |cli: &[String], c: &Option<Vec<String>>| if cli.is_empty() { c.clone().unwrap_or_default() } else { cli.to_vec() };
        craftmesh_protocol::interfaces::InterfacePolicy {
            allow: or_cfg(&self.interfaces, &cfg.mesh.interfaces.allow),
            deny: or_cfg(&self.deny_interfaces, &cfg.mesh.interfaces.deny),
        }
    }
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
        /// For a shared server: make sure it runs on the LAN (deploy it here by claim when no
        /// node does) and print this node's `/mcp/NAME` URL for it (for a plain service such
        /// as a database: its address on this host's loopback).
        #[arg(long)]
        ensure: bool,
    },
    /// Shared servers: what runs where (`status`), `stop NAME`.
    Deploy {
        #[command(subcommand)]
        command: crate::cli::deploy::DeployCommand,
    },
    /// Serve shared server NAME as MCP over stdio (for `.mcp.json`: `{"command": "craftmesh",
    /// "args": ["mcp-proxy", "zen"]}`); the first client on the LAN starts it.
    McpProxy { name: String },
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
    /// Claims: leases with fencing tokens, one holder (or N) per key on the whole LAN.
    Claim {
        #[command(subcommand)]
        command: crate::cli::claim::ClaimCommand,
    },
    /// Show the claims cluster: id, leader, voters, learners, term, last applied.
    Cluster {
        #[arg(long)]
        json: bool,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_renewal_takes_its_fencing_token_apart_from_the_api_token() {
        let cli = Cli::try_parse_from(["craftmesh", "claim", "renew", "svc/a", "--fencing-token", "7", "--token", "secret"]).expect("parses");
        assert_eq!(cli.global.token.as_deref(), Some("secret"));
        let Command::Claim { command: crate::cli::claim::ClaimCommand::Renew { fencing_token, .. } } = cli.command else {
            panic!("a renewal: {:?}", cli.command)
        };
        assert_eq!(fencing_token, 7);
    }
}
