//! One run: boot the nodes, wait for the cluster to form, start the holders, play the
//! schedule, heal everything, let it settle, stop the holders, check the history.

use super::check;
use super::history::{Ev, History};
use super::members::MembersSim;
use super::net::Net;
use super::node::{SimClock, SimNode};
use super::plan::{Fault, Plan, Target};
use super::{Report, SimConfig, Stats};
use craftmesh::claims::wire::{ClientOp, ClientReply};
use craftmesh_protocol::claims::ChangeKind;
use craftmesh_protocol::claims::cluster::{Role, target_voters};
use libp2p_identity::Keypair;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};

/// What every part of a run shares.
#[derive(Debug, Clone)]
pub struct World {
    pub seed: u64,
    pub cfg: SimConfig,
    pub net: Arc<Net>,
    pub members: Arc<MembersSim>,
    pub hist: History,
}

/// Longest wait for the cluster to form before the faults start anyway.
const FORM_TIMEOUT: Duration = Duration::from_secs(20);
/// Events kept in a failure's trace (`CRAFTMESH_SIM_TRACE` overrides).
fn trace_len() -> usize {
    std::env::var("CRAFTMESH_SIM_TRACE").ok().and_then(|s| s.parse().ok()).unwrap_or(400)
}

fn host_key(seed: u64, i: usize) -> Keypair {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    b[16] = 0xc1;
    Keypair::ed25519_from_bytes(b).expect("32 bytes make an ed25519 key")
}

/// What a started fault resolved to, so its end undoes exactly that.
#[derive(Debug, Clone)]
enum Undo {
    Nothing,
    Cuts(Vec<(usize, usize)>),
    Loss(usize, usize),
    Resume(usize),
    Restart(usize),
}

pub(super) async fn simulate(seed: u64, cfg: SimConfig, root: PathBuf, hist: History) -> Report {
    let n = cfg.nodes();
    let ids: Vec<String> = (0..n).map(|i| host_key(seed, i).public().to_peer_id().to_base58()).collect();
    let net = Net::new(ids.clone(), seed, cfg.lost_announcement, cfg.stale_crash_views);
    let members = MembersSim::new(ids.clone(), seed, cfg.stale_crash_views);
    {
        let (m, weak) = (members.clone(), Arc::downgrade(&net));
        net.set_on_connect(Arc::new(move |a, b| {
            if let Some(net) = weak.upgrade() {
                m.connected(&net, a, b);
            }
        }));
    }
    let plan = Plan::generate(seed, n, cfg.servers, cfg.fault_ms, cfg.max_drift_ppm, cfg.max_down_ms);
    let w = World { seed, cfg: cfg.clone(), net, members, hist: hist.clone() };
    let mut nodes: Vec<SimNode> = (0..n)
        .map(|i| {
            let clock = Arc::new(SimClock::new(hist.start(), plan.offsets_ms[i], plan.drift_ppm[i]));
            let role = if i < cfg.servers { Role::Server } else { Role::Client };
            SimNode::new(i, ids[i].clone(), role, clock, plan.snapshot_logs, &root)
        })
        .collect();
    hist.sched(format!(
        "seed {seed}: {} servers, {} clients, drift {:?} ppm, snapshot every {} entries, {} faults planned",
        cfg.servers,
        cfg.clients,
        plan.drift_ppm,
        plan.snapshot_logs,
        plan.steps.len()
    ));
    for node in nodes.iter_mut() {
        node.boot(&w).await;
    }
    let formed_ms = formed(&nodes, cfg.servers).await.then(|| hist.now_us() / 1000);
    hist.sched(match formed_ms {
        Some(ms) => format!("cluster formed at {ms} ms"),
        None => "no single cluster with a leader after the formation timeout; faults start anyway".to_string(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    for node in nodes.iter_mut() {
        node.spawn_holders(&w, cfg.holders_per_node, &stop_rx);
    }

    // The agenda: (time, order, step, start?) for every step's start and end.
    let t0 = Instant::now();
    let mut agenda: Vec<(u64, usize, usize, bool)> = Vec::new();
    for (i, s) in plan.steps.iter().enumerate() {
        agenda.push((s.at_ms, 2 * i + 1, i, true));
        agenda.push((s.at_ms + s.dur_ms, 2 * i, i, false));
    }
    agenda.sort();
    let mut undo: Vec<Undo> = vec![Undo::Nothing; plan.steps.len()];
    let mut stats = Stats { formed_ms, faults: plan.steps.len(), snapshot_logs: plan.snapshot_logs, ..Stats::default() };
    for (at, _, i, start) in agenda {
        sleep_until(t0 + Duration::from_millis(at)).await;
        if start {
            undo[i] = apply(&w, &mut nodes, &plan.steps[i].fault, &mut stats).await;
        } else {
            let u = std::mem::replace(&mut undo[i], Undo::Nothing);
            revert(&w, &mut nodes, u, &stop_rx).await;
        }
        debug_assert!(nodes.iter().all(|x| x.net_proc_matches(&w)));
    }

    // Heal everything, restart whoever is down, let it settle.
    w.net.heal();
    for node in nodes.iter_mut() {
        node.pause(&w, false);
        if !node.is_running() {
            node.boot(&w).await;
            node.spawn_holders(&w, cfg.holders_per_node, &stop_rx);
        }
    }
    w.members.update(&w.net);
    hist.sched("healed everything");
    sleep(Duration::from_millis(cfg.settle_ms)).await;
    let _ = stop_tx.send(true);
    hist.sched("holders told to stop");
    sleep(Duration::from_secs(2)).await;
    let final_keys = final_state(&nodes).await;
    let end_us = hist.now_us();
    let violations = {
        let rec = hist.lock();
        check::check(&rec, final_keys.as_deref(), end_us)
    };
    {
        let rec = hist.lock();
        stats.grants = rec.grants.len();
        stats.beliefs = rec.beliefs.len();
        stats.expiries = rec.beliefs.iter().filter(|b| b.why == "local deadline passed").count();
        stats.not_held = rec.beliefs.iter().filter(|b| b.why == check::NOT_HELD).count();
        stats.events = rec.events.len();
        let gone: std::collections::BTreeSet<u64> = rec
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::Claim { change: ChangeKind::NodeGone, token, .. } => Some(*token),
                _ => None,
            })
            .collect();
        stats.node_gone = gone.len();
        // Terms whose leader differs from the previous term's (with a leader).
        let by_term: std::collections::BTreeMap<u64, u64> = rec
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Ev::Cluster { change, term, leader: Some(l), .. } if change == "leader" => Some((*term, *l)),
                _ => None,
            })
            .collect();
        stats.leaders = by_term.values().zip(by_term.values().skip(1)).filter(|(a, b)| a != b).count();
    }
    stats.virtual_ms = end_us / 1000;
    stats.chunks = w.net.chunks();
    Report { seed, config: cfg, digest: hist.digest(), violations, trace: hist.tail(trace_len()), stats, wall: Duration::ZERO }
}

/// Waits until every node reports one cluster with a leader, the servers with the voters
/// and learners the formation rules give them.
async fn formed(nodes: &[SimNode], servers: usize) -> bool {
    let deadline = Instant::now() + FORM_TIMEOUT;
    let voters = target_voters(servers, 5);
    while Instant::now() < deadline {
        let views: Vec<_> = nodes.iter().filter_map(|x| x.handle().map(|h| (x.role, h.view()))).collect();
        let one = views.first().and_then(|v| v.1.cluster.clone());
        let ok = views.iter().all(|(role, v)| {
            v.cluster == one && v.leader.is_some() && (*role == Role::Client || (v.voters.len() == voters && v.learners.len() == servers - voters))
        });
        if views.len() == nodes.len() && one.is_some() && ok {
            return true;
        }
        sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The node that says it leads, in the highest term.
fn leader(nodes: &[SimNode]) -> Option<usize> {
    nodes
        .iter()
        .filter(|x| !x.is_paused() && x.role == Role::Server)
        .filter_map(|x| x.handle().map(|h| (x.idx, h.view())))
        .filter(|(_, v)| v.state == "leader")
        .max_by_key(|(i, v)| (v.term, *i))
        .map(|(i, _)| i)
}

fn resolve(nodes: &[SimNode], t: Target, seed: u64) -> usize {
    match t {
        Target::Node(i) => i,
        Target::Leader => leader(nodes).unwrap_or((seed % nodes.len() as u64) as usize),
    }
}

async fn apply(w: &World, nodes: &mut [SimNode], f: &Fault, stats: &mut Stats) -> Undo {
    let n = nodes.len();
    let undo = match f {
        Fault::Partition { side } => {
            let cuts: Vec<(usize, usize)> = (0..n).flat_map(|a| (0..n).map(move |b| (a, b))).filter(|(a, b)| side.contains(a) != side.contains(b)).collect();
            w.hist.sched(format!("partition {side:?} | rest"));
            cut(w, cuts)
        }
        Fault::Isolate(t) => {
            let x = resolve(nodes, *t, w.seed);
            w.hist.sched(format!("isolate node {x} ({t:?})"));
            cut(w, (0..n).filter(|b| *b != x).flat_map(|b| [(x, b), (b, x)]).collect())
        }
        Fault::OneWay { from, to } => {
            w.hist.sched(format!("cut {from} -> {to}"));
            cut(w, vec![(*from, *to)])
        }
        Fault::Loss { from, to, p } => {
            w.hist.sched(format!("loss {from} -> {to}: {p:.2}"));
            w.net.set_loss(*from, *to, *p);
            Undo::Loss(*from, *to)
        }
        Fault::Pause(t) => {
            let x = resolve(nodes, *t, w.seed);
            if !nodes[x].is_running() || nodes[x].is_paused() {
                return Undo::Nothing;
            }
            w.hist.sched(format!("pause node {x} ({t:?})"));
            nodes[x].pause(w, true);
            Undo::Resume(x)
        }
        Fault::Crash(t) => {
            let x = resolve(nodes, *t, w.seed);
            if !nodes[x].is_running() || nodes[x].is_paused() {
                return Undo::Nothing;
            }
            w.hist.sched(format!("crash node {x} ({t:?})"));
            stats.crashes += 1;
            nodes[x].crash(w);
            Undo::Restart(x)
        }
    };
    w.members.update(&w.net);
    undo
}

fn cut(w: &World, cuts: Vec<(usize, usize)>) -> Undo {
    for (a, b) in &cuts {
        w.net.cut(*a, *b, true);
    }
    Undo::Cuts(cuts)
}

async fn revert(w: &World, nodes: &mut [SimNode], u: Undo, stop: &watch::Receiver<bool>) {
    match u {
        Undo::Nothing => return,
        Undo::Cuts(cuts) => {
            for (a, b) in &cuts {
                w.net.cut(*a, *b, false);
            }
            w.hist.sched(format!("restored {} cut direction(s)", cuts.len()));
        }
        Undo::Loss(a, b) => {
            w.net.set_loss(a, b, 0.0);
            w.hist.sched(format!("no more loss {a} -> {b}"));
        }
        Undo::Resume(x) => nodes[x].pause(w, false),
        Undo::Restart(x) => {
            nodes[x].boot(w).await;
            nodes[x].spawn_holders(w, w.cfg.holders_per_node, stop);
        }
    }
    w.members.update(&w.net);
}

/// The live claims as the leader lists them at the end (a fallback for the log check).
async fn final_state(nodes: &[SimNode]) -> Option<Vec<craftmesh_protocol::claims::state::KeyView>> {
    let h = nodes.iter().find_map(|x| x.handle())?;
    match h.request(ClientOp::List, Duration::from_secs(5)).await {
        ClientReply::List { keys, .. } => Some(keys),
        _ => None,
    }
}
