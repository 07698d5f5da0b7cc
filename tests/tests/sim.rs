//! Seeded simulation of the mesh across many nodes: the real mesh core (membership,
//! records, sync, adverts, dial budget, signed rumors) on virtual time, with loss of every
//! message kind, crashes, restarts, cut-offs, partitions and pauses.
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
        let view: Vec<State> = sim.core(1).membership().members().map(|(_, m)| m.state).collect();
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
fn nodes_find_each_other_by_adverts_and_every_record_reaches_everyone_at_ten_percent_loss() {
    for seed in seeds(&[51, 52, 53]) {
        eprintln!("seed {seed}");
        let net = NetConfig { loss: 0.10, ..NetConfig::default() };
        let mut sim = Sim::new(5, seed, Config::default(), net);
        sim.run_until(30_000);
        assert!(sim.all_alive_now(), "seed {seed}: not everyone sees everyone alive");
        for i in 0..5 {
            assert_eq!(sim.core(i).records().len(), 4, "seed {seed}: node {i} lacks records");
        }
        assert_eq!(sim.false_deaths(), 0, "seed {seed}");
    }
}

#[test]
fn a_restarted_node_publishes_a_newer_record_that_replaces_its_old_one_everywhere() {
    for seed in seeds(&[61, 62, 63]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(4, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        let before: Vec<u64> = (1..4).map(|i| sim.core(i).records().get(&sim.ids[0]).map(|e| e.record.version).unwrap_or(0)).collect();
        sim.crash(0);
        sim.run_until(sim.now + 2_000);
        sim.restart(0);
        sim.run_until(sim.now + 10_000);
        assert!(sim.all_alive_now(), "seed {seed}");
        for (k, i) in (1..4).enumerate() {
            let after = sim.core(i).records().get(&sim.ids[0]).map(|e| e.record.version).unwrap_or(0);
            assert!(after > before[k], "seed {seed}: node {i} has version {after}, had {}", before[k]);
        }
    }
}

#[test]
fn a_partition_kills_the_other_side_and_healing_brings_everyone_back() {
    for seed in seeds(&[71, 72, 73]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(5, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        sim.partition(&[0, 1]);
        let t0 = sim.now;
        sim.run_until(t0 + 10_000);
        for (a, b) in [(0usize, 3usize), (3, 0), (4, 1)] {
            assert_eq!(sim.core(a).membership().get(&sim.ids[b]).map(|m| m.state), Some(State::Dead), "seed {seed}: {a} should see {b} dead");
        }
        assert_eq!(sim.core(0).membership().get(&sim.ids[1]).map(|m| m.state), Some(State::Alive), "seed {seed}: same side stays alive");
        sim.heal();
        sim.run_until(sim.now + 10_000);
        assert!(sim.all_alive_now(), "seed {seed}: not everyone alive after healing");
    }
}

#[test]
fn a_paused_node_is_dead_and_alive_again_when_it_resumes() {
    for seed in seeds(&[81, 82, 83]) {
        eprintln!("seed {seed}");
        let mut sim = Sim::new(4, seed, Config::default(), NetConfig::default());
        sim.run_until(5_000);
        sim.pause(2, true);
        let t0 = sim.now;
        sim.run_until(t0 + 5_000);
        sim.all_saw(2, State::Dead, t0).unwrap_or_else(|| panic!("seed {seed}: the paused node is not dead everywhere"));
        sim.pause(2, false);
        sim.run_until(sim.now + 10_000);
        assert!(sim.all_alive_now(), "seed {seed}: not alive again after resuming");
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
