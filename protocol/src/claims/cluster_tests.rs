use super::*;
use proptest::prelude::*;

#[path = "cluster_lead_tests.rs"]
mod lead;

fn server(node: NodeId) -> Status {
    Status {
        node,
        peer: format!("peer-{node}"),
        role: Role::Server,
        cluster: None,
        joining: None,
        leader: None,
        term: 0,
        voters: Vec::new(),
        learners: Vec::new(),
    }
}

fn client(node: NodeId) -> Status {
    Status { role: Role::Client, ..server(node) }
}

/// A server in `cluster` whose view has `leader` in term 1 and this membership.
fn member(node: NodeId, cluster: &str, leader: Option<NodeId>, voters: &[NodeId], learners: &[NodeId]) -> Status {
    Status { cluster: Some(cluster.to_string()), leader, term: 1, voters: voters.to_vec(), learners: learners.to_vec(), ..server(node) }
}

fn joining(node: NodeId, cluster: &str) -> Status {
    Status { joining: Some(cluster.to_string()), ..server(node) }
}

fn alive(status: Status) -> PeerView {
    PeerView { status, alive: true, since_ms: 0, crashed: false }
}

fn dead(status: Status, since_ms: u64) -> PeerView {
    PeerView { status, alive: false, since_ms, crashed: false }
}

fn me(status: Status) -> Me {
    let is_leader = status.leader == Some(status.node);
    Me { status, started_at_ms: 0, is_leader, changing_membership: false }
}

fn formation() -> Formation {
    Formation::new(Config::default())
}

fn leave(for_cluster: &str, reason: &str) -> Action {
    Action::Leave { for_cluster: for_cluster.to_string(), reason: reason.to_string() }
}

fn join(cluster: &str) -> Action {
    Action::Join { cluster: cluster.to_string() }
}

fn add(node: NodeId) -> Action {
    Action::AddLearner { node, peer: format!("peer-{node}") }
}

fn set_voters(voters: &[NodeId]) -> Action {
    Action::SetVoters { voters: voters.to_vec() }
}

/// Nodes that see each other's current status at once and carry out what `decide` returns,
/// with Raft reduced to its effect on the statuses (a created cluster reaches its voters,
/// a membership change reaches every member, the leader never changes).
struct Lan {
    nodes: BTreeMap<NodeId, (Status, Me, Formation, Vec<Action>)>,
}

impl Lan {
    fn new() -> Lan {
        Lan { nodes: BTreeMap::new() }
    }

    fn start(&mut self, status: Status, at_ms: u64) {
        let m = Me { started_at_ms: at_ms, ..me(status.clone()) };
        self.nodes.insert(status.node, (status, m, formation(), Vec::new()));
    }

    /// Every node decides every 250 ms from `from` to `to`.
    fn run(&mut self, from: u64, to: u64) {
        let mut now = from;
        while now <= to {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let peers: Vec<PeerView> = self.nodes.iter().filter(|(n, _)| **n != id).map(|(_, n)| alive(n.0.clone())).collect();
                let (status, m, f, log) = self.nodes.get_mut(&id).expect("node");
                m.status = status.clone();
                m.is_leader = status.leader == Some(id);
                let actions = f.decide(m, &peers, now);
                log.extend(actions.iter().cloned());
                for a in actions {
                    self.apply(id, a);
                }
            }
            now += 250;
        }
    }

    fn apply(&mut self, by: NodeId, action: Action) {
        let cluster = format!("c{by}");
        let (voters, learners) = {
            let s = &self.nodes[&by].0;
            (s.voters.clone(), s.learners.clone())
        };
        match action {
            Action::Initialize { voters } => self.set_membership(&cluster, by, &voters, &[]),
            Action::Join { cluster } => self.status(by).joining = Some(cluster),
            Action::StopJoining => self.status(by).joining = None,
            Action::AddLearner { node, .. } => {
                let c = self.nodes[&by].0.cluster.clone().expect("leader in a cluster");
                self.set_membership(&c, by, &voters, &[learners, vec![node]].concat());
            }
            Action::SetVoters { voters: new } => {
                let c = self.nodes[&by].0.cluster.clone().expect("leader in a cluster");
                let rest: Vec<NodeId> = voters.iter().chain(&learners).copied().filter(|n| !new.contains(n)).collect();
                self.set_membership(&c, by, &new, &rest);
            }
            Action::RemoveLearners { nodes } => {
                let c = self.nodes[&by].0.cluster.clone().expect("leader in a cluster");
                let rest: Vec<NodeId> = learners.into_iter().filter(|n| !nodes.contains(n)).collect();
                self.set_membership(&c, by, &voters, &rest);
            }
            Action::Leave { for_cluster, .. } => *self.status(by) = Status { joining: Some(for_cluster), ..server(by) },
            Action::Follow { .. } => {}
        }
    }

    fn set_membership(&mut self, cluster: &str, leader: NodeId, voters: &[NodeId], learners: &[NodeId]) {
        for n in voters.iter().chain(learners) {
            let s = self.status(*n);
            *s = Status { joining: None, ..member(*n, cluster, Some(leader), voters, learners) };
        }
    }

    fn status(&mut self, node: NodeId) -> &mut Status {
        &mut self.nodes.get_mut(&node).expect("node").0
    }

    fn log(&self, node: NodeId) -> &[Action] {
        &self.nodes[&node].3
    }

    /// (cluster, voters, learners) of every node.
    fn views(&self) -> Vec<(Option<String>, Vec<NodeId>, Vec<NodeId>)> {
        self.nodes.values().map(|(s, ..)| (s.cluster.clone(), s.voters.clone(), s.learners.clone())).collect()
    }

    fn one_cluster(&self, cluster: &str, voters: &[NodeId], learners: &[NodeId]) {
        let want = (Some(cluster.to_string()), voters.to_vec(), learners.to_vec());
        assert_eq!(self.views(), vec![want; self.nodes.len()]);
    }
}

fn lan_of(servers: &[NodeId]) -> Lan {
    let mut lan = Lan::new();
    for n in servers {
        lan.start(server(*n), 0);
    }
    lan
}

#[test]
fn three_servers_started_together_form_one_cluster_initialised_by_the_lowest() {
    let mut lan = lan_of(&[7, 3, 5]);
    lan.run(0, 20_000);
    lan.one_cluster("c3", &[3, 5, 7], &[]);
    assert_eq!(lan.log(3), [Action::Initialize { voters: vec![3, 5, 7] }]);
    assert_eq!(lan.log(5), []);
    assert_eq!(lan.log(7), []);
}

#[test]
fn nothing_is_created_before_the_window_ends() {
    let mut lan = lan_of(&[1, 2]);
    lan.run(0, 1750);
    assert!(lan.views().iter().all(|v| v.0.is_none()));
    lan.run(2000, 2000);
    assert_eq!(lan.log(1), [Action::Initialize { voters: vec![1] }]);
}

#[test]
fn a_late_fourth_server_joins_and_becomes_a_learner_while_three_stay_voters() {
    let mut lan = lan_of(&[1, 2, 3]);
    lan.run(0, 10_000);
    lan.start(server(4), 10_000);
    lan.run(10_250, 60_000);
    lan.one_cluster("c1", &[1, 2, 3], &[4]);
    assert_eq!(lan.log(4), [join("c1")]);
    assert_eq!(lan.log(1), [Action::Initialize { voters: vec![1, 2, 3] }, add(4)]);
}

#[test]
fn five_servers_make_five_voters() {
    let mut lan = lan_of(&[1, 2, 3, 4, 5]);
    lan.run(0, 20_000);
    lan.one_cluster("c1", &[1, 2, 3, 4, 5], &[]);
}

#[test]
fn seven_servers_make_five_voters_and_two_learners() {
    let mut lan = lan_of(&[1, 2, 3, 4, 5, 6, 7]);
    lan.run(0, 20_000);
    lan.one_cluster("c1", &[1, 2, 3, 4, 5], &[6, 7]);
    assert_eq!(lan.log(6), [join("c1")]);
    assert_eq!(lan.log(1), [Action::Initialize { voters: vec![1, 2, 3, 4, 5] }, add(6), add(7)]);
}

#[test]
fn two_servers_make_one_voter_and_the_other_joins_as_a_learner() {
    let mut lan = lan_of(&[9, 4]);
    lan.run(0, 20_000);
    lan.one_cluster("c4", &[4], &[9]);
    assert_eq!(lan.log(4), [Action::Initialize { voters: vec![4] }, add(9)]);
    assert_eq!(lan.log(9), [join("c4")]);
}

#[test]
fn a_third_server_makes_the_leader_promote_both_learners_to_three_voters() {
    let mut lan = lan_of(&[1, 2]);
    lan.run(0, 10_000);
    lan.start(server(3), 10_000);
    lan.run(10_250, 30_000);
    lan.one_cluster("c1", &[1, 2, 3], &[]);
    assert_eq!(lan.log(1), [Action::Initialize { voters: vec![1] }, add(2), add(3), set_voters(&[1, 2, 3])]);
}

#[test]
fn two_clusters_that_meet_become_one() {
    let mut lan = lan_of(&[1, 2, 3, 4, 5]);
    lan.set_membership("c4", 4, &[4, 5], &[]);
    lan.set_membership("c1", 1, &[1, 2, 3], &[]);
    lan.run(60_000, 120_000);
    lan.one_cluster("c1", &[1, 2, 3, 4, 5], &[]);
    let reason = "merge: cluster c1 has more voters (3 against 2 in c4)";
    assert_eq!(lan.log(4), [leave("c1", reason)]);
    assert_eq!(lan.log(5), [leave("c1", reason)]);
    assert_eq!(lan.log(1), [add(4), add(5), set_voters(&[1, 2, 3, 4, 5])]);
}

#[test]
fn a_lone_server_forms_alone_after_the_window() {
    let mut f = formation();
    let m = me(server(4));
    assert_eq!(f.decide(&m, &[], 0), []);
    assert_eq!(f.decide(&m, &[], 1999), []);
    assert_eq!(f.decide(&m, &[], 2000), [Action::Initialize { voters: vec![4] }]);
    assert_eq!(f.decide(&m, &[], 2500), [], "the node is creating it: no second cluster");
    assert_eq!(f.decide(&m, &[], 8000), [Action::Initialize { voters: vec![4] }], "an Initialize that did not happen is retried");
}

#[test]
fn the_window_is_extended_when_the_first_peer_appears_inside_it() {
    let mut f = formation();
    let m = me(server(1));
    assert_eq!(f.decide(&m, &[], 1000), []);
    let peers = [alive(server(2))];
    assert_eq!(f.decide(&m, &peers, 1500), []);
    assert_eq!(f.decide(&m, &peers, 3499), [], "first peer at 1.5 s: the window ends at 3.5 s");
    assert_eq!(f.decide(&m, &peers, 3500), [Action::Initialize { voters: vec![1] }], "two servers make one voter");
}

#[test]
fn a_server_that_sees_a_cluster_joins_it_instead_of_initialising_even_inside_its_window() {
    let mut f = formation();
    let m = me(server(1));
    let peers = [alive(member(5, "zz", Some(5), &[5], &[])), alive(server(2))];
    assert_eq!(f.decide(&m, &peers, 100), [join("zz")]);
    let none_led = [alive(member(5, "zz", None, &[5], &[]))];
    assert_eq!(formation().decide(&m, &none_led, 100), [], "a cluster without a leader is not in sight");
}

#[test]
fn a_server_joins_the_winner_among_the_clusters_it_sees() {
    let peers = [
        alive(member(5, "a", Some(5), &[5], &[])),
        alive(member(6, "b", Some(6), &[6, 7, 8], &[])),
        dead(member(9, "c", Some(9), &[9, 10, 11, 12, 13], &[]), 0),
        alive(Status { cluster: Some("d".into()), leader: Some(20), voters: vec![20, 21, 22, 23, 24], ..client(20) }),
    ];
    assert_eq!(formation().decide(&me(server(1)), &peers, 100), [join("b")], "dead peers and clients are no evidence of a cluster");
}

#[test]
fn servers_that_are_not_the_lowest_wait_for_it() {
    let mut f = formation();
    let m = me(server(2));
    let peers = [alive(server(1)), alive(server(3)), alive(client(0)), alive(joining(10, "gone"))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 2000), []);
    assert_eq!(f.decide(&m, &peers, 7999), []);
}

#[test]
fn when_the_lowest_never_forms_the_next_one_does_without_it() {
    let m2 = me(server(2));
    let m3 = me(server(3));
    let peers2 = [alive(server(1)), alive(server(3))];
    let peers3 = [alive(server(1)), alive(server(2))];
    let (mut f2, mut f3) = (formation(), formation());
    assert_eq!(f2.decide(&m2, &peers2, 0), []);
    assert_eq!(f3.decide(&m3, &peers3, 0), []);
    assert_eq!(f2.decide(&m2, &peers2, 7999), []);
    assert_eq!(f2.decide(&m2, &peers2, 8000), [Action::Initialize { voters: vec![2] }]);
    assert_eq!(f3.decide(&m3, &peers3, 8000), [], "the third waits twice as long");
    let peers3 = [alive(server(1)), alive(member(2, "c2", Some(2), &[2], &[]))];
    assert_eq!(f3.decide(&m3, &peers3, 9000), [join("c2")]);
}

#[test]
fn a_cluster_being_created_holds_back_the_others() {
    let mut f = formation();
    let m = me(server(2));
    // 2 is not named among c1's voters (a named one joins at once, see below).
    let peers = [alive(member(1, "c1", None, &[1, 3], &[])), alive(server(3))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 7999), [], "1 created c1 and its leader is being elected");
    assert_eq!(f.decide(&m, &peers, 8000), [Action::Initialize { voters: vec![2] }], "a cluster that never gets a leader is not waited for forever");
}

#[test]
fn a_joining_server_waits_while_its_cluster_is_in_sight() {
    let mut f = formation();
    let m = me(joining(2, "a"));
    let peers = [alive(member(1, "a", Some(1), &[1], &[])), alive(server(3))];
    for t in [0, 5000, 60_000] {
        assert_eq!(f.decide(&m, &peers, t), []);
    }
}

#[test]
fn a_server_joining_a_vanished_cluster_switches_to_the_winner_or_stops() {
    let mut f = formation();
    let m = me(joining(2, "a"));
    let other = [alive(member(5, "b", Some(5), &[5], &[]))];
    assert_eq!(f.decide(&m, &other, 1000), []);
    assert_eq!(f.decide(&m, &other, 2499), []);
    assert_eq!(f.decide(&m, &other, 2500), [join("b")]);
    assert_eq!(f.decide(&m, &other, 3000), [], "given up once");

    let mut f = formation();
    assert_eq!(f.decide(&m, &[dead(member(1, "a", Some(1), &[1], &[]), 0)], 1000), []);
    assert_eq!(f.decide(&m, &[], 2500), [Action::StopJoining]);
    let done = me(server(2));
    assert_eq!(f.decide(&done, &[], 2600), [Action::Initialize { voters: vec![2] }], "then rule 1 applies (the window is long over)");
}

#[test]
fn a_member_ignores_a_stale_join_request() {
    let m = me(Status { joining: Some("x".into()), ..member(2, "a", Some(1), &[1, 2, 3], &[]) });
    assert_eq!(formation().decide(&m, &[], 60_000), []);
}

#[test]
fn clients_never_initialise_and_follow_the_winner() {
    let mut f = formation();
    let m = me(client(1));
    assert_eq!(f.decide(&m, &[alive(server(2))], 0), []);
    assert_eq!(f.decide(&m, &[alive(server(2))], 600_000), [], "no cluster from a client, ever");
    let both = [alive(member(2, "b", Some(2), &[2, 3, 4], &[])), alive(member(5, "a", Some(5), &[5], &[]))];
    assert_eq!(f.decide(&m, &both, 600_100), [Action::Follow { cluster: "b".into() }]);
    assert_eq!(f.decide(&m, &both, 600_200), [], "only changes are reported");
    assert_eq!(f.decide(&m, &[], 600_300), [], "nothing in sight: keep following");
    assert_eq!(f.decide(&m, &both[1..], 600_400), [Action::Follow { cluster: "a".into() }]);
    assert_eq!(f.decide(&Me { status: joining(1, "a"), ..m.clone() }, &[alive(server(2))], 700_000), [], "a client does not join");
}

#[test]
fn two_one_voter_clusters_merge_into_the_lower_id() {
    let mut hi = formation();
    let mut lo = formation();
    let m_hi = me(member(1, "c-b", Some(1), &[1], &[]));
    let m_lo = me(member(9, "c-a", Some(9), &[9], &[]));
    let sees_lo = [alive(m_lo.status.clone())];
    let sees_hi = [alive(m_hi.status.clone())];
    for t in [0, 1000] {
        assert_eq!(hi.decide(&m_hi, &sees_lo, t), []);
        assert_eq!(lo.decide(&m_lo, &sees_hi, t), []);
    }
    assert_eq!(hi.decide(&m_hi, &sees_lo, 1500), [leave("c-a", "merge: cluster c-a has as many voters (1) as c-b and a lower id")]);
    assert_eq!(hi.decide(&m_hi, &sees_lo, 2000), [], "one Leave per merge");
    for t in [1500, 60_000] {
        assert_eq!(lo.decide(&m_lo, &sees_hi, t), [], "the winner never leaves");
    }
}

#[test]
fn three_voters_beat_one_whatever_the_ids() {
    let mut f = formation();
    let m = me(member(1, "a", Some(1), &[1], &[]));
    let peers = [alive(member(7, "z", Some(7), &[7, 8, 9], &[])), alive(member(8, "z", Some(7), &[7, 8, 9], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 1500), [leave("z", "merge: cluster z has more voters (3 against 1 in a)")]);

    let mut f = formation();
    let m = me(member(7, "z", Some(7), &[7, 8, 9], &[]));
    let peers = [alive(member(1, "a", Some(1), &[1], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 60_000), []);
}

#[test]
fn every_member_of_the_losing_cluster_leaves_not_only_its_leader() {
    let mut f = formation();
    let m = me(member(3, "b", Some(2), &[2, 3, 4], &[]));
    let peers = [alive(member(2, "b", Some(2), &[2, 3, 4], &[])), alive(member(9, "a", Some(9), &[9, 10, 11], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 1500), [leave("a", "merge: cluster a has as many voters (3) as b and a lower id")]);
}

#[test]
fn a_member_counts_its_own_cluster_as_the_other_side_does() {
    let mut f = formation();
    let m = me(member(2, "b", Some(1), &[2], &[]));
    let peers = [alive(Status { term: 2, ..member(1, "b", Some(1), &[1, 2, 3], &[]) }), alive(member(9, "a", Some(9), &[9, 10, 11], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 1500), [leave("a", "merge: cluster a has as many voters (3) as b and a lower id")], "the leader's newer report counts");

    let mut f = formation();
    let blind = me(member(2, "b", None, &[], &[]));
    let peers = [alive(member(9, "a", Some(9), &[9], &[]))];
    for t in [0, 1500, 10_000] {
        assert_eq!(f.decide(&blind, &peers, t), [], "no count of my own cluster, no merge");
    }
}

#[test]
fn a_cluster_seen_for_less_than_the_merge_delay_does_not_trigger_a_leave() {
    let mut f = formation();
    let m = me(member(1, "b", Some(1), &[1], &[]));
    let peers = [alive(member(2, "a", Some(2), &[2], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 1000), []);
    assert_eq!(f.decide(&m, &[], 1200), [], "out of sight: the clock starts over");
    assert_eq!(f.decide(&m, &peers, 1400), []);
    assert_eq!(f.decide(&m, &peers, 2800), []);
    assert_eq!(f.decide(&m, &peers, 2900), [leave("a", "merge: cluster a has as many voters (1) as b and a lower id")]);
}

#[test]
fn a_cluster_seen_only_through_dead_peers_does_not_trigger_a_leave() {
    let mut f = formation();
    let m = me(member(1, "b", Some(1), &[1], &[]));
    let peers = [dead(member(2, "a", Some(2), &[2, 3, 4], &[]), 0), alive(member(3, "a", None, &[2, 3, 4], &[]))];
    for t in [0, 1500, 60_000] {
        assert_eq!(f.decide(&m, &peers, t), []);
    }
}

#[test]
fn a_member_whose_cluster_has_no_leader_for_long_leaves_for_the_one_in_sight() {
    let mut f = formation();
    let m = me(member(3, "a", None, &[1, 2, 3, 4, 5], &[]));
    let peers = [dead(member(1, "a", Some(1), &[1, 2, 3, 4, 5], &[]), 0), alive(member(9, "z", Some(9), &[9], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), [], "a wins the merge on voters, but nobody leads it");
    assert_eq!(f.decide(&m, &peers, 29_999), []);
    assert_eq!(f.decide(&m, &peers, 30_000), [leave("z", "cluster a has had no leader for 30000 ms and cluster z is in sight")]);

    let mut f = formation();
    let led = [alive(member(2, "a", Some(2), &[2, 3], &[])), alive(member(9, "z", Some(9), &[9], &[]))];
    assert_eq!(f.decide(&m, &led, 0), []);
    assert_eq!(f.decide(&m, &led, 60_000), [], "a peer of my cluster reports a leader");
}

#[test]
fn a_removed_member_rejoins_after_rejoin_after() {
    let mut f = formation();
    let m = me(member(3, "a", Some(1), &[1, 2, 3], &[]));
    let peers = [alive(member(1, "a", Some(1), &[1, 2], &[4])), alive(member(2, "a", Some(1), &[1, 2, 3], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &peers, 9_999), []);
    assert_eq!(f.decide(&m, &peers, 10_000), [leave("a", "removed from the cluster's membership")]);
    assert_eq!(f.decide(&m, &peers, 10_500), []);

    let mut f = formation();
    let back = [alive(member(1, "a", Some(1), &[1, 2, 3], &[]))];
    assert_eq!(f.decide(&m, &peers, 0), []);
    assert_eq!(f.decide(&m, &back, 5_000), [], "listed again: the clock starts over");
    assert_eq!(f.decide(&m, &peers, 6_000), []);
    assert_eq!(f.decide(&m, &peers, 15_999), []);
    let stale = [alive(Status { term: 0, ..member(1, "a", Some(1), &[1], &[]) })];
    assert_eq!(formation().decide(&m, &stale, 0), []);
    assert_eq!(formation().decide(&m, &stale, 60_000), [], "a leader of an older term is no authority");
}

#[test]
fn the_winner_has_more_voters_or_on_a_tie_the_lower_id() {
    assert_eq!(winner(("b", 3), ("a", 1)), "b");
    assert_eq!(winner(("a", 1), ("b", 3)), "b");
    assert_eq!(winner(("b", 1), ("a", 1)), "a");
    assert_eq!(winner(("a", 5), ("a", 5)), "a");
}

#[test]
fn target_voters_is_the_largest_odd_count_up_to_the_maximum() {
    let got: Vec<usize> = (0..=8).map(|n| target_voters(n, 5)).collect();
    assert_eq!(got, vec![0, 1, 1, 3, 3, 5, 5, 5, 5]);
    assert_eq!(target_voters(4, 0), 1, "a server always makes one voter");
    assert_eq!(target_voters(8, 7), 7);
}

#[test]
fn roles_parse_and_serialise_in_lowercase() {
    assert_eq!("server".parse::<Role>(), Ok(Role::Server));
    assert_eq!("client".parse::<Role>(), Ok(Role::Client));
    let err = "Server".parse::<Role>().expect_err("case matters");
    assert_eq!(err.to_string(), "unknown role \"Server\": expected \"server\" or \"client\"");
    assert_eq!(serde_json::to_string(&Role::Client).expect("json"), "\"client\"");
    assert_eq!(serde_json::from_str::<Role>("\"server\"").expect("json"), Role::Server);
    assert_eq!(Role::Server.to_string(), "server");
}

proptest! {
    #[test]
    fn winner_is_symmetric_and_one_of_the_two(a in "[a-c]{0,3}", na in 0usize..4, b in "[a-c]{0,3}", nb in 0usize..4) {
        let w = winner((a.as_str(), na), (b.as_str(), nb));
        prop_assert_eq!(w, winner((b.as_str(), nb), (a.as_str(), na)));
        prop_assert!(w == a || w == b);
    }
}

#[test]
fn a_server_named_as_a_voter_of_a_new_cluster_joins_it_before_it_has_a_leader() {
    let mut f = formation();
    let peers = vec![alive(member(3, "c3", None, &[3, 5, 7], &[])), alive(server(7))];
    let m = Me { started_at_ms: 0, ..me(server(5)) };
    assert_eq!(f.decide(&m, &peers, 100), vec![join("c3")], "its vote is needed to elect the first leader");
    let m7 = Me { started_at_ms: 0, ..me(server(9)) };
    assert_eq!(formation().decide(&m7, &peers, 100), Vec::<Action>::new(), "a server not named waits for a leader to appear");
}

#[test]
fn auto_makes_a_machine_with_a_battery_a_client() {
    use crate::config::mcp::RoleSetting;
    assert_eq!(super::role_for(RoleSetting::Auto, true), Role::Client);
    assert_eq!(super::role_for(RoleSetting::Auto, false), Role::Server);
    assert_eq!(super::role_for(RoleSetting::Server, true), Role::Server, "an explicit setting wins");
    assert_eq!(super::role_for(RoleSetting::Client, false), Role::Client);
}
