//! Seeded simulation of membership across many nodes (virtual time, simulated loss).
//! Each test prints its seed; rerun one with `CRAFTMESH_SIM_SEED=<seed>`.

use craftmesh_protocol::membership::{Config, State};
use craftmesh_tests::sim::{NetConfig, Sim, gossip_rounds};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("CRAFTMESH_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => default.to_vec(),
    }
}

#[test]
fn crashed_node_is_dead_everywhere_within_100ms() {
    for seed in seeds(&[1, 2, 3, 4, 5]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(5, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        sim.crash(2);
        let t0 = sim.now;
        sim.run_until(t0 + 2_000);
        let at = sim.all_saw(2, State::Dead, t0).unwrap_or_else(|| panic!("seed {seed}: not everyone saw the crash"));
        assert!(at - t0 <= 100, "seed {seed}: crash took {} ms of virtual time", at - t0);
        assert_eq!(sim.false_deaths(), 0, "seed {seed}");
    }
}

#[test]
fn cut_off_node_is_dead_within_1500ms_and_alive_after_the_link_returns() {
    for seed in seeds(&[11, 12, 13, 14, 15]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(5, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        sim.set_cut_off(3, true);
        let t0 = sim.now;
        sim.run_until(t0 + 5_000);
        let at = sim.all_saw(3, State::Dead, t0).unwrap_or_else(|| panic!("seed {seed}: not everyone saw the cut-off host die"));
        assert!(at - t0 <= 1_500, "seed {seed}: cut-off took {} ms of virtual time", at - t0);
        sim.set_cut_off(3, false);
        let t1 = sim.now;
        sim.run_until(t1 + 5_000);
        sim.all_saw(3, State::Alive, t1).unwrap_or_else(|| panic!("seed {seed}: host not alive again after the link returned"));
    }
}

#[test]
fn a_node_that_left_stays_left_until_it_runs_again() {
    for seed in seeds(&[41, 42, 43]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(5, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        let t0 = sim.now;
        sim.leave(1, 3);
        sim.run_until(t0 + 10_000);
        sim.all_saw(1, State::Left, t0).unwrap_or_else(|| panic!("seed {seed}: not everyone saw the leave"));
        let after_leave: Vec<_> = sim.changes.iter().filter(|(t, o, p, _)| *t >= t0 && *o != 1 && *p == 1).map(|c| c.3).collect();
        assert!(after_leave.iter().all(|s| *s == State::Left), "seed {seed}: a goodbye turned into {after_leave:?}");
        let t1 = sim.now;
        sim.restart(1);
        sim.run_until(t1 + 5_000);
        sim.all_saw(1, State::Alive, t1).unwrap_or_else(|| panic!("seed {seed}: the restarted node is not alive everywhere"));
        let view: Vec<State> = sim.nodes[1].members().map(|(_, m)| m.state).collect();
        assert_eq!(view, vec![State::Alive; 4], "seed {seed}: the restarted node's own view");
        assert_eq!(sim.false_deaths(), 0, "seed {seed}");
    }
}

#[test]
fn no_false_deaths_in_five_minutes_at_ten_percent_loss() {
    for seed in seeds(&[21, 22, 23]) {
        eprintln!("seed {seed}");
        let net = NetConfig { loss: 0.10, ..NetConfig::default() };
        let mut sim = Sim::new(5, seed, Config::default(), net);
        sim.run_until(5 * 60_000);
        assert_eq!(sim.false_deaths(), 0, "seed {seed}: false deaths at 10% loss");
    }
}

#[test]
fn gossip_reaches_everyone_in_logarithmic_rounds() {
    for (n, max_rounds) in [(100usize, 12usize), (1000, 16)] {
        let r = gossip_rounds(n, 6, 0.1, 7);
        assert!(r <= max_rounds, "{n} nodes took {r} rounds");
    }
}

#[test]
#[ignore = "slow: 100 simulated nodes"]
fn hundred_nodes_detect_a_crash_and_keep_the_rest_alive_at_five_percent_loss() {
    for seed in seeds(&[31]) {
        let net = NetConfig { loss: 0.05, ..NetConfig::default() };
        let mut sim = Sim::new(100, seed, Config::default(), net);
        sim.run_until(10_000);
        sim.crash(42);
        let t0 = sim.now;
        sim.run_until(t0 + 5_000);
        let at = sim.all_saw(42, State::Dead, t0).unwrap_or_else(|| panic!("seed {seed}: not everyone saw the crash"));
        eprintln!("seed {seed}: 100 nodes saw the crash after {} ms; {} messages", at - t0, sim.messages);
        assert_eq!(sim.false_deaths(), 0, "seed {seed}");
    }
}
