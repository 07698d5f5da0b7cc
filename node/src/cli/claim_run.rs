//! `craftmesh claim run KEY -- CMD ARGS...`: hold a claim for as long as CMD runs, and
//! never let CMD run without it.
//!
//! The claim is acquired through this machine's node (bound to it: CMD stops with the
//! node). CMD runs in a process group of its own with `CRAFTMESH_FENCING_TOKEN`,
//! `CRAFTMESH_FENCING_TOKEN_FILE` (the token, then the cluster id, on two lines, kept up
//! to date), `CRAFTMESH_CLAIM_CLUSTER`, `CRAFTMESH_CLAIM_KEY` and
//! `CRAFTMESH_CLAIM_SESSION`. The lease is renewed every TTL/3 on one kept-alive,
//! authenticated connection to the node. CMD's whole process group gets SIGKILL at once when
//! - the cluster says the claim is not held any more (and re-acquiring it after a cluster
//!   merge fails),
//! - the local deadline passes: the send time of the last successful renewal, on
//!   CLOCK_BOOTTIME (which counts a suspend), plus TTL minus the drift margin,
//! - the node stops answering: its connection closes and a new one is refused, or a renewal
//!   gets no answer at all.
//!
//! SIGINT/SIGTERM/SIGHUP are passed to CMD's group; the claim is released when CMD exits.
//! The exit code is CMD's (128 + signal when it was killed).

use super::claim::{RunArgs, acquire_body, secs_to_ms};
use super::{Global, client, client_error, exit};
use crate::api_claims::ClaimResponse;
use crate::apiclient::{ClientError, Session};
use crate::claims::clock::boottime_ms;
use craftmesh_protocol::claims::lease::{LeaseDecision, LocalLease, default_margin_ms};
use std::time::Duration;

/// Longest sleep between lease checks: tokio's timers run on CLOCK_MONOTONIC, which stops
/// during a suspend, so the boot clock is looked at often.
const CHECK_EVERY: Duration = Duration::from_millis(50);

/// Runs `claim run`.
pub async fn run(g: &Global, r: &RunArgs) -> anyhow::Result<i32> {
    let ttl_ms = match secs_to_ms("--ttl", r.opts.ttl) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(exit::CONFIG);
        }
    };
    let session_id = r.opts.session.clone().unwrap_or_else(crate::api_claims::new_session);
    let cl = client(g, Duration::from_secs(30));
    let mut session = match cl.session().await {
        Ok(s) => s,
        Err(e) => return Ok(client_error(e)),
    };
    let key = r.opts.key.clone();
    // First without waiting, to say who holds it; then wait in the leader's queue.
    let (mut grant, mut sent_at) = match acquire(&mut session, r, &session_id, None).await {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    if grant.granted != Some(true) {
        let wait = r.wait.unwrap_or(86_400.0);
        let holders = grant.holders.iter().map(|h| format!("{} (token {})", h.node, h.token)).collect::<Vec<_>>().join(", ");
        eprintln!("claim run: {key} is held by {holders}; waiting up to {wait:.0} s");
        (grant, _) = match acquire(&mut session, r, &session_id, Some(wait)).await {
            Ok(x) => x,
            Err(code) => return Ok(code),
        };
        if grant.granted != Some(true) {
            eprintln!("claim run: {key} was not granted within {wait:.0} s (reason: {})", grant.reason.as_deref().unwrap_or("held"));
            return Ok(exit::NOT_FOUND);
        }
        // The grant came while the request waited: its send time says nothing about when
        // the lease began. Renew at once, and count the lease from that renewal's sending.
        let body = serde_json::json!({"op": "renew", "key": key, "token": grant.token, "cluster": grant.cluster, "ttl_ms": ttl_ms});
        sent_at = boottime_ms();
        match tokio::time::timeout(Duration::from_secs(15), session.call::<ClaimResponse>(hyper::Method::POST, "/v1/claims", Some(&body))).await {
            Ok(Ok(r)) if r.renewed == Some(true) => {}
            other => {
                eprintln!("claim run: {key} was granted but could not be confirmed ({other:?}); not starting the command");
                if let Some(t) = grant.token {
                    release(&mut session, &key, t, &grant.cluster).await;
                }
                return Ok(exit::NOT_FOUND);
            }
        }
    }
    let mut token = grant.token.unwrap_or(0);
    let mut cluster = grant.cluster.clone();
    let margin = default_margin_ms(ttl_ms);
    let mut lease = LocalLease::new(ttl_ms, margin);
    lease.granted(sent_at);
    eprintln!("claim run: holding {key} with token {token} (ttl {ttl_ms} ms, stops {margin} ms early)");
    let token_dir = tempfile_dir()?;
    let token_file = token_dir.join("token");
    std::fs::write(&token_file, format!("{token}\n{cluster}\n"))?;

    let mut cmd = tokio::process::Command::new(&r.cmd[0]);
    cmd.args(&r.cmd[1..])
        .env("CRAFTMESH_FENCING_TOKEN", token.to_string())
        .env("CRAFTMESH_FENCING_TOKEN_FILE", &token_file)
        .env("CRAFTMESH_CLAIM_KEY", &key)
        .env("CRAFTMESH_CLAIM_CLUSTER", &cluster)
        .env("CRAFTMESH_CLAIM_SESSION", &session_id)
        .process_group(0)
        .kill_on_drop(true);
    crate::sys::die_with_parent(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("claim run: cannot start {}: {e}", r.cmd[0]);
            release(&mut session, &key, token, &cluster).await;
            let _ = std::fs::remove_dir_all(&token_dir);
            return Ok(127);
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);

    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let renew_wait = Duration::from_millis((ttl_ms / 4).max(500) + 1000);
    let mut closed = session.closed_watch();
    let mut conn: Option<Session> = Some(session);
    type Renewal = std::pin::Pin<Box<dyn std::future::Future<Output = (Session, u64, Result<ClaimResponse, ClientError>)>>>;
    let mut in_flight: Option<Renewal> = None;
    let mut stop_reason: Option<String> = None;
    let status = loop {
        let now = boottime_ms();
        match lease.poll(now) {
            LeaseDecision::Expired => stop_reason = Some(format!("its local deadline passed without a renewal (lease {ttl_ms} ms)")),
            LeaseDecision::Renew if in_flight.is_none() => {
                if let Some(mut s) = conn.take() {
                    lease.renew_sent(now);
                    let body = serde_json::json!({"op": "renew", "key": key, "token": token, "cluster": cluster, "ttl_ms": ttl_ms, "timeout_ms": ttl_ms / 4});
                    in_flight = Some(Box::pin(async move {
                        let r = match tokio::time::timeout(renew_wait, s.call::<ClaimResponse>(hyper::Method::POST, "/v1/claims", Some(&body))).await {
                            Ok(r) => r,
                            Err(_) => Err(ClientError::Unreachable { addr: String::new(), reason: "the node did not answer the renewal".into() }),
                        };
                        (s, now, r)
                    }));
                }
            }
            _ => {}
        }
        if let Some(why) = stop_reason.take() {
            eprintln!("claim run: claim {key} lost: {why}; killing the command's process group");
            kill_group(pgid);
            break child.wait().await;
        }
        let renewal = async {
            match in_flight.as_mut() {
                Some(f) => f.await,
                None => futures::future::pending().await,
            }
        };
        let conn_closed = async {
            if conn.is_none() || closed.changed().await.is_err() {
                futures::future::pending::<()>().await
            }
        };
        tokio::select! {
            st = child.wait() => {
                break st;
            }
            (s, sent, result) = renewal => {
                in_flight = None;
                match result {
                    Ok(resp) if resp.renewed == Some(true) => {
                        lease.renewed(sent, ttl_ms);
                        conn = Some(s);
                    }
                    Ok(resp) if resp.reason.as_deref() == Some("not_held") && resp.cluster == cluster => {
                        conn = Some(s);
                        stop_reason = Some("the cluster no longer lists it as the holder".into());
                    }
                    Ok(resp) if resp.reason.as_deref() == Some("not_held") => {
                        // The node's cluster lost a merge: the claim is unknown in the
                        // winner. Take it there once (without waiting), or stop.
                        conn = Some(s);
                        match reacquire(conn.as_mut(), r, &session_id).await {
                            Some((t, at, c)) => {
                                token = t;
                                cluster = c;
                                lease.granted(at);
                                let _ = std::fs::write(&token_file, format!("{token}\n{cluster}\n"));
                                eprintln!("claim run: {key} re-acquired in cluster {cluster} after a merge, token {token} ({})", token_file.display());
                            }
                            None => stop_reason = Some(format!("after a merge into cluster {}, another holder has it there", resp.cluster)),
                        }
                    }
                    Ok(_) => {
                        lease.renew_failed(boottime_ms());
                        conn = Some(s);
                    }
                    Err(ClientError::Api(msg)) => {
                        tracing::debug!(error = %msg, "renewal failed");
                        lease.renew_failed(boottime_ms());
                        conn = Some(s);
                    }
                    Err(e) => stop_reason = Some(format!("the node stopped answering ({e})")),
                }
                if let Some(c) = &conn {
                    closed = c.closed_watch();
                }
            }
            () = conn_closed => {
                // The node closed the connection: a restart, or the node is gone. A new
                // connection decides; a refused one means nothing renews the claim now.
                match cl.session().await {
                    Ok(s) => {
                        closed = s.closed_watch();
                        conn = Some(s);
                    }
                    Err(e) => stop_reason = Some(format!("the node stopped answering ({e})")),
                }
            }
            () = tokio::time::sleep(CHECK_EVERY) => {}
            _ = sigint.recv() => forward(pgid),
            _ = sigterm.recv() => forward(pgid),
            _ = sighup.recv() => forward(pgid),
        }
    };
    // Whatever ended it, nothing of CMD's group may outlive the claim.
    kill_group(pgid);
    if lease.poll(boottime_ms()) != LeaseDecision::Expired && lease.deadline_ms().is_some() {
        if in_flight.is_none()
            && let Some(mut s) = conn.take()
        {
            release(&mut s, &key, token, &cluster).await;
        } else if let Ok(mut s) = cl.session().await {
            release(&mut s, &key, token, &cluster).await;
        }
    }
    let _ = std::fs::remove_dir_all(&token_dir);
    Ok(exit_code(status))
}

/// Acquires (waiting up to `wait` seconds); returns the answer and when it was sent.
async fn acquire(session: &mut Session, r: &RunArgs, session_id: &str, wait: Option<f64>) -> Result<(ClaimResponse, u64), i32> {
    let body = acquire_body(&r.opts, wait, true, session_id).map_err(|e| {
        eprintln!("error: {e}");
        exit::CONFIG
    })?;
    let sent = boottime_ms();
    let call = session.call::<ClaimResponse>(hyper::Method::POST, "/v1/claims", Some(&body));
    let wait_ms = body["wait_ms"].as_u64().unwrap_or(0);
    let limit = Duration::from_millis(wait_ms + 15_000);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(10), Duration::from_secs(10));
    tokio::pin!(call);
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            res = &mut call => return match res {
                Ok(resp) => Ok((resp, sent)),
                Err(e) => Err(super::claim::claim_error(e)),
            },
            _ = progress.tick() => eprintln!("claim run: still waiting for {} ({} s)", r.opts.key, started.elapsed().as_secs()),
            () = &mut deadline => {
                eprintln!("claim run: no answer from the node within {} s", limit.as_secs());
                return Err(exit::UNREACHABLE);
            }
        }
    }
}

/// After a merge: acquire once more in the node's new cluster (without waiting). Returns
/// the new token, its send time and the cluster.
async fn reacquire(session: Option<&mut Session>, r: &RunArgs, session_id: &str) -> Option<(u64, u64, String)> {
    let s = session?;
    let (resp, sent) = acquire(s, r, session_id, None).await.ok()?;
    if resp.granted != Some(true) {
        return None;
    }
    resp.token.map(|t| (t, sent, resp.cluster))
}

/// Releases `token`, granted by `cluster` (another cluster's holder with the same number
/// is left alone).
async fn release(s: &mut Session, key: &str, token: u64, cluster: &str) {
    let body = serde_json::json!({"op": "release", "key": key, "token": token, "cluster": cluster});
    let _ = tokio::time::timeout(Duration::from_secs(3), s.call::<ClaimResponse>(hyper::Method::POST, "/v1/claims", Some(&body))).await;
}

fn kill_group(pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn forward(pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGTERM);
    }
}

fn exit_code(status: std::io::Result<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
        Err(_) => 1,
    }
}

/// A private directory for the token file.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("craftmesh-claim-{}-{}", std::process::id(), crate::api_claims::new_session()));
    let mut b = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(&dir)?;
    Ok(dir)
}
