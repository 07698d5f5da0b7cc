//! Tests of the leader's duties: learners added and removed, voters grown, promoted and replaced.

use super::*;

#[test]
fn the_leader_adds_joining_servers_as_learners_and_keeps_three_voters() {
    let mut f = formation();
    let m = me(member(1, "a", Some(1), &[1, 2, 3], &[]));
    let peers = [
        alive(member(2, "a", Some(1), &[1, 2, 3], &[])),
        alive(member(3, "a", Some(1), &[1, 2, 3], &[])),
        alive(joining(5, "a")),
        alive(joining(4, "a")),
        alive(joining(6, "b")),
        dead(joining(7, "a"), 0),
        alive(Status { joining: Some("a".into()), ..client(8) }),
    ];
    assert_eq!(f.decide(&m, &peers, 0), [add(4), add(5)]);
    let m = me(member(1, "a", Some(1), &[1, 2, 3], &[4]));
    let peers =
        [alive(member(2, "a", Some(1), &[1, 2, 3], &[4])), alive(member(3, "a", Some(1), &[1, 2, 3], &[4])), alive(member(4, "a", Some(1), &[1, 2, 3], &[4]))];
    assert_eq!(f.decide(&m, &peers, 1000), [], "four servers: still three voters");
}

#[test]
fn the_leader_never_holds_more_than_max_learners() {
    let mut f = Formation::new(Config { max_learners: 2, ..Config::default() });
    let m = me(member(1, "a", Some(1), &[1], &[2]));
    let peers = [alive(member(2, "a", Some(1), &[1], &[2])), alive(joining(3, "a")), alive(joining(4, "a"))];
    assert_eq!(f.decide(&m, &peers, 0), [add(3)]);
    let m = me(member(1, "a", Some(1), &[1], &[2, 3]));
    let peers = [alive(member(2, "a", Some(1), &[1], &[2, 3])), alive(member(3, "a", Some(1), &[1], &[2, 3])), alive(joining(4, "a"))];
    assert_eq!(f.decide(&m, &peers, 1000), [set_voters(&[1, 2, 3])], "growing to three voters first");
    let m = me(member(1, "a", Some(1), &[1, 2, 3], &[]));
    let peers = [alive(member(2, "a", Some(1), &[1, 2, 3], &[])), alive(member(3, "a", Some(1), &[1, 2, 3], &[])), alive(joining(4, "a"))];
    assert_eq!(f.decide(&m, &peers, 2000), [add(4)]);
}

fn five_voters_one_dead(dead_since: u64) -> (Me, Vec<PeerView>) {
    let view = member(1, "a", Some(1), &[1, 2, 3, 4, 5], &[6, 7]);
    let peer = |n| member(n, "a", Some(1), &[1, 2, 3, 4, 5], &[6, 7]);
    let peers = vec![alive(peer(2)), alive(peer(3)), alive(peer(4)), dead(peer(5), dead_since), alive(peer(7)), alive(peer(6))];
    (me(view), peers)
}

#[test]
fn the_leader_promotes_a_learner_after_a_voter_is_dead_for_promote_after_but_not_before() {
    let mut f = formation();
    let (m, peers) = five_voters_one_dead(10_000);
    assert_eq!(f.decide(&m, &peers, 10_000), []);
    assert_eq!(f.decide(&m, &peers, 39_999), []);
    assert_eq!(f.decide(&m, &peers, 40_000), [set_voters(&[1, 2, 3, 4, 6])], "the lowest learner replaces the dead voter");
}

#[test]
fn a_learner_that_has_not_caught_up_is_not_promoted() {
    let m = me(member(1, "a", Some(1), &[1, 2, 3], &[4]));
    let peers = [alive(member(2, "a", Some(1), &[1, 2, 3], &[4])), dead(member(3, "a", Some(1), &[1, 2, 3], &[4]), 0), alive(joining(4, "a"))];
    assert_eq!(formation().decide(&m, &peers, 60_000), []);
}

#[test]
fn dead_voters_are_replaced_one_at_a_time_longest_dead_first() {
    let view = member(1, "a", Some(1), &[1, 2, 3, 4, 5], &[6, 7]);
    let peer = |n| member(n, "a", Some(1), &[1, 2, 3, 4, 5], &[6, 7]);
    let peers = [alive(peer(2)), alive(peer(3)), dead(peer(4), 5_000), dead(peer(5), 1_000), alive(peer(6)), alive(peer(7))];
    assert_eq!(formation().decide(&me(view), &peers, 60_000), [set_voters(&[1, 2, 3, 4, 6])]);
}

#[test]
fn a_member_the_mesh_does_not_know_counts_as_dead_from_when_the_leader_noticed() {
    let mut f = formation();
    let view = member(1, "a", Some(1), &[1, 2, 3], &[4]);
    let peers = [alive(member(2, "a", Some(1), &[1, 2, 3], &[4])), alive(member(4, "a", Some(1), &[1, 2, 3], &[4]))];
    assert_eq!(f.decide(&me(view.clone()), &peers, 5_000), []);
    assert_eq!(f.decide(&me(view.clone()), &peers, 34_999), []);
    assert_eq!(f.decide(&me(view), &peers, 35_000), [set_voters(&[1, 2, 4])]);
}

#[test]
fn no_set_voters_while_changing_membership_and_never_more_than_one_per_call() {
    let mut f = formation();
    let (m, mut peers) = five_voters_one_dead(0);
    peers.push(alive(joining(8, "a")));
    let busy = Me { changing_membership: true, ..m.clone() };
    assert_eq!(f.decide(&busy, &peers, 60_000), []);
    assert_eq!(f.decide(&m, &peers, 60_000), [set_voters(&[1, 2, 3, 4, 6])], "the joining server waits for the next call");
    let not_leader = Me { is_leader: false, ..m };
    assert_eq!(f.decide(&not_leader, &peers, 60_000), []);
}

#[test]
fn a_change_that_cannot_commit_is_not_proposed() {
    let view = member(1, "a", Some(1), &[1, 2, 3], &[4]);
    let peer = |n| member(n, "a", Some(1), &[1, 2, 3], &[4]);
    let peers = [dead(peer(2), 0), dead(peer(3), 0), alive(peer(4))];
    assert_eq!(formation().decide(&me(view), &peers, 60_000), [], "one of three voters alive: the old config cannot commit anything");
}

#[test]
fn long_dead_learners_are_removed() {
    let mut f = formation();
    let view = member(1, "a", Some(1), &[1], &[2, 3, 4]);
    let peer = |n| member(n, "a", Some(1), &[1], &[2, 3, 4]);
    let peers = [dead(peer(2), 0), dead(peer(3), 1_000), dead(peer(4), 2_000)];
    assert_eq!(f.decide(&me(view.clone()), &peers, 3_600_000), [Action::RemoveLearners { nodes: vec![2] }]);
    assert_eq!(f.decide(&me(view), &peers, 3_601_000), [Action::RemoveLearners { nodes: vec![2, 3] }]);
}

#[test]
fn decisions_do_not_depend_on_the_order_of_peers() {
    let (m, peers) = five_voters_one_dead(0);
    let mut reversed = peers.clone();
    reversed.reverse();
    assert_eq!(formation().decide(&m, &peers, 60_000), formation().decide(&m, &reversed, 60_000));
}
