//! `craftmesh claim …` and `craftmesh cluster`.

use super::{Global, client, client_error, exit};
use crate::api_claims::{ClaimList, ClaimResponse, HolderOut};
use crate::apiclient::ClientError;
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum ClaimCommand {
    /// Acquire KEY: prints the grant and its fencing token, or the holders (exit 1).
    Acquire(AcquireArgs),
    /// Extend the lease of the grant with the fencing token N.
    Renew {
        key: String,
        /// The grant's fencing token (`--token` is the API token of every command).
        #[arg(long, value_name = "N")]
        fencing_token: u64,
        /// New lease length in seconds (default: the grant's).
        #[arg(long, value_name = "SECS")]
        ttl: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Give up the grant with the fencing token N.
    Release {
        key: String,
        /// The grant's fencing token (`--token` is the API token of every command).
        #[arg(long, value_name = "N")]
        fencing_token: u64,
        #[arg(long)]
        json: bool,
    },
    /// List every key with its live holders.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Wait for KEY, run CMD with CRAFTMESH_FENCING_TOKEN set, renew, and kill CMD's whole
    /// process group at once when the claim is lost, its local deadline passes, or the node
    /// stops answering. Exits with CMD's exit code.
    Run(RunArgs),
}

/// Options of an acquire.
#[derive(Debug, Args, Clone)]
pub struct ClaimOpts {
    pub key: String,
    /// Lease length in seconds (default 10).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub ttl: f64,
    /// Holders the key may have at once (a counted key; default 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub limit: u32,
    /// After a holder vanished, no grant for this long (default: the node's claims.lock_delay).
    #[arg(long, value_name = "SECS")]
    pub lock_delay: Option<f64>,
    /// Session id (default: a new random one); the same session gets its grant back.
    #[arg(long)]
    pub session: Option<String>,
    /// URL of the instance the claim protects.
    #[arg(long, value_name = "URL")]
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    #[command(flatten)]
    pub opts: ClaimOpts,
    /// Wait up to this long for a slot (default: answer at once).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
    /// What the claim protects stops with this node (lets the cluster hand it on at once
    /// when the node is proven crashed).
    #[arg(long)]
    pub bound_to_node: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub opts: ClaimOpts,
    /// Wait at most this long for the claim (default: a day).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<f64>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Seconds from the command line to milliseconds, with a clear error.
pub fn secs_to_ms(what: &str, s: f64) -> Result<u64, String> {
    if !s.is_finite() || !(0.0..=1e7).contains(&s) {
        return Err(format!("{what} {s}: expected seconds between 0 and 10000000"));
    }
    Ok((s * 1000.0).round() as u64)
}

/// The body of an acquire.
pub fn acquire_body(o: &ClaimOpts, wait: Option<f64>, bound_to_node: bool, session: &str) -> Result<serde_json::Value, String> {
    let mut v = serde_json::json!({
        "op": "acquire",
        "key": o.key,
        "ttl_ms": secs_to_ms("--ttl", o.ttl)?,
        "limit": o.limit,
        "wait_ms": match wait { Some(w) => secs_to_ms("--wait", w)?, None => 0 },
        "session": session,
        "bound_to_node": bound_to_node,
    });
    if let Some(d) = o.lock_delay {
        v["lock_delay_ms"] = secs_to_ms("--lock-delay", d)?.into();
    }
    if let Some(i) = &o.instance {
        v["instance"] = i.clone().into();
    }
    Ok(v)
}

fn holders_line(hs: &[HolderOut]) -> String {
    hs.iter()
        .map(|h| format!("{} (session {}, token {}, expires in {:.1} s)", short(&h.node), short(&h.session), h.token, h.expires_in_ms as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join("; ")
}

fn short(s: &str) -> String {
    if s.len() > 12 { format!("…{}", &s[s.len() - 8..]) } else { s.to_string() }
}

fn print_response(r: &ClaimResponse, json: bool) -> anyhow::Result<i32> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    }
    let ok = r.granted.or(r.renewed).or(r.released).unwrap_or(false);
    if !json {
        match (r.op.as_str(), ok) {
            ("acquire", true) => println!(
                "granted {} token {}, expires in {:.1} s (session {})",
                r.key,
                r.token.unwrap_or(0),
                r.expires_in_ms.unwrap_or(0) as f64 / 1000.0,
                r.session.as_deref().unwrap_or("?")
            ),
            ("acquire", false) => {
                let why = match r.reason.as_deref() {
                    Some("lock_delay") => format!("in its lock-delay for {:.1} s more", r.retry_in_ms.unwrap_or(0) as f64 / 1000.0),
                    Some("limit_mismatch") => format!("held with limit {}", r.limit.unwrap_or(0)),
                    Some("too_many_keys") => "the cluster holds too many keys".into(),
                    _ => "held".into(),
                };
                println!("refused: {} is {why}; holders: {}", r.key, holders_line(&r.holders));
            }
            ("renew", true) => println!("renewed {} token {}, expires in {:.1} s", r.key, r.token.unwrap_or(0), r.expires_in_ms.unwrap_or(0) as f64 / 1000.0),
            ("release", true) => println!("released {} token {}", r.key, r.token.unwrap_or(0)),
            (op, false) => println!("not {op}ed: {} token {} is not held (released, expired or never granted)", r.key, r.token.unwrap_or(0)),
            _ => {}
        }
    }
    Ok(if ok { exit::OK } else { exit::NOT_FOUND })
}

/// Runs a `claim` subcommand.
pub async fn run(g: &Global, c: &ClaimCommand) -> anyhow::Result<i32> {
    let body = match c {
        ClaimCommand::Acquire(a) => {
            let session = a.opts.session.clone().unwrap_or_else(crate::api_claims::new_session);
            acquire_body(&a.opts, a.wait, a.bound_to_node, &session)
        }
        ClaimCommand::Renew { key, fencing_token, ttl, .. } => {
            let mut v = serde_json::json!({"op": "renew", "key": key, "token": fencing_token});
            match ttl.map(|t| secs_to_ms("--ttl", t)) {
                Some(Ok(ms)) => {
                    v["ttl_ms"] = ms.into();
                    Ok(v)
                }
                Some(Err(e)) => Err(e),
                None => Ok(v),
            }
        }
        ClaimCommand::Release { key, fencing_token, .. } => Ok(serde_json::json!({"op": "release", "key": key, "token": fencing_token})),
        ClaimCommand::List { json } => return list(g, *json).await,
        ClaimCommand::Run(r) => return super::claim_run::run(g, r).await,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let json = match c {
        ClaimCommand::Acquire(a) => a.json,
        ClaimCommand::Renew { json, .. } | ClaimCommand::Release { json, .. } => *json,
        _ => false,
    };
    let wait_ms = body["wait_ms"].as_u64().unwrap_or(0);
    if wait_ms > 2000 && !json {
        eprintln!("waiting up to {:.0} s for {}…", wait_ms as f64 / 1000.0, body["key"].as_str().unwrap_or(""));
    }
    let cl = client(g, Duration::from_millis(15_000 + wait_ms));
    match cl.post::<ClaimResponse>("/v1/claims", &body).await {
        Ok(r) => print_response(&r, json),
        Err(e) => Ok(claim_error(e)),
    }
}

/// Like [`client_error`], but an answer of the node (no leader, bad request) exits 1 or 2.
pub fn claim_error(e: ClientError) -> i32 {
    if let ClientError::Api(msg) = &e {
        eprintln!("error: {msg}");
        return if msg.starts_with("claims unavailable") { exit::NOT_FOUND } else { exit::CONFIG };
    }
    client_error(e)
}

async fn list(g: &Global, json: bool) -> anyhow::Result<i32> {
    match client(g, Duration::from_secs(15)).get::<ClaimList>("/v1/claims").await {
        Ok(l) if json => {
            println!("{}", serde_json::to_string_pretty(&l)?);
            Ok(exit::OK)
        }
        Ok(l) => {
            if l.keys.is_empty() {
                println!("no claims (cluster {})", l.cluster);
            }
            for k in &l.keys {
                let slots = if k.limit > 1 { format!(" [{}/{}]", k.holders.len(), k.limit) } else { String::new() };
                let delay = if k.blocked_for_ms > 0 { format!(" (lock-delay {:.1} s)", k.blocked_for_ms as f64 / 1000.0) } else { String::new() };
                println!("{}{slots}{delay}", k.key);
                for h in &k.holders {
                    println!(
                        "  token {:<8} node {}  session {}  expires in {:.1} s",
                        h.holder.token,
                        short(&h.holder.node),
                        short(&h.holder.session),
                        h.expires_in_ms as f64 / 1000.0
                    );
                }
            }
            Ok(exit::OK)
        }
        Err(e) => Ok(claim_error(e)),
    }
}

/// `craftmesh cluster`.
pub async fn cluster(g: &Global, json: bool) -> anyhow::Result<i32> {
    match client(g, Duration::from_secs(10)).get::<crate::claims::ClusterView>("/v1/cluster").await {
        Ok(v) if json => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(exit::OK)
        }
        Ok(v) => {
            println!("cluster {} ({}), this node: {} {}", v.cluster.as_deref().unwrap_or("-"), v.state, v.role, v.node);
            if let Some(j) = &v.joining {
                println!("joining {j}");
            }
            println!("leader {}, term {}", v.leader.as_ref().map(|l| l.peer.as_str()).unwrap_or("none"), v.term);
            let list = |ns: &[crate::claims::service::NodeRef]| ns.iter().map(|n| short(&n.peer)).collect::<Vec<_>>().join(", ");
            println!("voters ({}): {}", v.voters.len(), list(&v.voters));
            println!("learners ({}): {}", v.learners.len(), list(&v.learners));
            println!(
                "last applied {}, last log {}, {} keys",
                v.last_applied.map_or("-".into(), |i| i.to_string()),
                v.last_log.map_or("-".into(), |i| i.to_string()),
                v.keys
            );
            Ok(exit::OK)
        }
        Err(e) => Ok(client_error(e)),
    }
}
