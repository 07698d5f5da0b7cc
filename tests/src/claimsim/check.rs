//! The history checker.
//!
//! (a) For every key, at no instant do more holders believe they hold it than its limit
//!     (a sweep over the belief intervals' endpoints; intervals are half-open, so one that
//!     ends at the instant another begins does not overlap it).
//! (b) For keys with limit 1, the tokens of successive belief intervals strictly increase
//!     (one grant split by a freeze keeps its token).
//! (c) Every grant a holder received is in the log: some node reported it as `granted`
//!     (or it is in the final state), and no two reports ever give one token of a cluster
//!     two different (key, session): the nodes applied one history.
//! (d) Every grant came from one cluster: the schedule never lets two form, so a merge
//!     would be a surprise worth a look (tokens of two logs are not comparable).
//! (e) The cluster never answers `not held` to a renewal while the holder's local lease
//!     still runs: the state machine must not end a lease before the holder's deadline
//!     (what (a) rests on; this catches it even when nobody else was waiting for the key).

use super::history::{Belief, Ev, Record};
use craftmesh_protocol::claims::ChangeKind;
use craftmesh_protocol::claims::state::KeyView;
use std::collections::{BTreeMap, BTreeSet};

/// (key, session) -> the first node that reported it.
type Reporters<'a> = BTreeMap<(&'a str, &'a str), usize>;

/// Why a belief ended when a renewal was answered `not held`.
pub const NOT_HELD: &str = "the cluster said not held";

/// The checker's findings; empty means the run was fine.
pub fn check(rec: &Record, final_keys: Option<&[KeyView]>, end_us: u64) -> Vec<String> {
    let mut v = Vec::new();
    overlaps(&rec.beliefs, end_us, &mut v);
    tokens(&rec.beliefs, &mut v);
    in_log(rec, final_keys, &mut v);
    for b in rec.beliefs.iter().filter(|b| b.why == NOT_HELD) {
        v.push(format!("(e) the cluster dropped a holder whose local lease still ran: {}", show(b, end_us)));
    }
    let clusters: BTreeSet<&str> = rec.grants.iter().map(|g| g.cluster.as_str()).collect();
    if clusters.len() > 1 {
        v.push(format!("(d) grants came from {} clusters: {clusters:?}", clusters.len()));
    }
    v
}

fn show(b: &Belief, end_us: u64) -> String {
    format!(
        "{} token {} ({}) [{:.3}, {:.3}] ms ({})",
        b.holder,
        b.token,
        b.session,
        b.start_us as f64 / 1000.0,
        b.end_us.unwrap_or(end_us) as f64 / 1000.0,
        if b.end_us.is_some() { b.why } else { "still open" }
    )
}

fn overlaps(beliefs: &[Belief], end_us: u64, v: &mut Vec<String>) {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, b) in beliefs.iter().enumerate() {
        by_key.entry(b.key.as_str()).or_default().push(i);
    }
    for (key, ids) in by_key {
        // (time, +1 start / -1 end, belief); ends sort first at the same instant.
        let mut points: Vec<(u64, i32, usize)> = Vec::new();
        for &i in &ids {
            let b = &beliefs[i];
            let end = b.end_us.unwrap_or(end_us);
            if end > b.start_us {
                points.push((b.start_us, 1, i));
                points.push((end, -1, i));
            }
        }
        points.sort();
        let mut open: BTreeSet<usize> = BTreeSet::new();
        for (t, d, i) in points {
            if d < 0 {
                open.remove(&i);
                continue;
            }
            open.insert(i);
            let limit = beliefs[i].limit as usize;
            if open.len() > limit {
                let who: Vec<String> = open.iter().map(|j| show(&beliefs[*j], end_us)).collect();
                v.push(format!("(a) {key}: {} holders believed at {:.3} ms, limit {limit}:\n    {}", open.len(), t as f64 / 1000.0, who.join("\n    ")));
                return;
            }
        }
    }
}

fn tokens(beliefs: &[Belief], v: &mut Vec<String>) {
    let mut by_key: BTreeMap<&str, Vec<&Belief>> = BTreeMap::new();
    for b in beliefs.iter().filter(|b| b.limit == 1) {
        by_key.entry(b.key.as_str()).or_default().push(b);
    }
    for (key, mut bs) in by_key {
        bs.sort_by_key(|b| (b.start_us, b.token));
        for w in bs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if (a.token, &a.session) == (b.token, &b.session) || a.cluster != b.cluster {
                continue;
            }
            if b.token <= a.token {
                v.push(format!(
                    "(b) {key}: token {} believed after token {}:\n    {}\n    {}",
                    b.token,
                    a.token,
                    show(a, a.end_us.unwrap_or(0)),
                    show(b, b.end_us.unwrap_or(0))
                ));
            }
        }
    }
}

fn in_log(rec: &Record, final_keys: Option<&[KeyView]>, v: &mut Vec<String>) {
    // (cluster, token) -> every (key, session) any node reported for it, with the reporter.
    let mut reported: BTreeMap<(&str, u64), Reporters> = BTreeMap::new();
    let mut granted: BTreeSet<(&str, u64, &str, &str)> = BTreeSet::new();
    for (_, e) in &rec.events {
        if let Ev::Claim { node, change, key, token, session, cluster, .. } = e {
            reported.entry((cluster.as_str(), *token)).or_default().entry((key.as_str(), session.as_str())).or_insert(*node);
            if *change == ChangeKind::Granted {
                granted.insert((cluster.as_str(), *token, key.as_str(), session.as_str()));
            }
        }
    }
    for ((cluster, token), what) in &reported {
        if what.len() > 1 {
            v.push(format!("(c) token {token} of cluster {cluster} was reported for different grants: {what:?}"));
        }
    }
    let in_final = |key: &str, token: u64, session: &str| {
        final_keys.is_some_and(|ks| ks.iter().any(|k| k.key == key && k.holders.iter().any(|h| h.holder.token == token && h.holder.session == session)))
    };
    for g in &rec.grants {
        if !granted.contains(&(g.cluster.as_str(), g.token, g.key.as_str(), g.session.as_str())) && !in_final(&g.key, g.token, &g.session) {
            v.push(format!(
                "(c) {} token {} ({}) was received at {:.3} ms but no node reported it granted",
                g.key,
                g.token,
                g.session,
                g.at_us as f64 / 1000.0
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claimsim::history::Grant;

    fn belief(key: &str, limit: u32, token: u64, session: &str, start: u64, end: u64) -> Belief {
        Belief {
            node: 0,
            holder: session.into(),
            key: key.into(),
            limit,
            token,
            session: session.into(),
            cluster: "c".into(),
            start_us: start,
            end_us: Some(end),
            why: "released",
        }
    }

    #[test]
    fn overlapping_beliefs_beyond_the_limit_are_found_and_touching_ones_are_not() {
        let mut rec = Record { beliefs: vec![belief("k", 1, 5, "a", 0, 100), belief("k", 1, 7, "b", 100, 200)], ..Record::default() };
        assert!(check(&rec, None, 300).is_empty());
        rec.beliefs.push(belief("k", 1, 9, "c", 150, 250));
        let v = check(&rec, None, 300);
        assert!(v.len() == 1 && v[0].starts_with("(a) k: 2 holders"), "{v:?}");
        let rec = Record { beliefs: (0..3).map(|i| belief("s", 3, 10 + i, &format!("s{i}"), 0, 100)).collect(), ..Record::default() };
        assert!(check(&rec, None, 300).is_empty(), "three slots of three");
    }

    #[test]
    fn a_token_that_goes_back_is_found_but_a_frozen_grant_keeps_its_token() {
        let rec =
            Record { beliefs: vec![belief("k", 1, 5, "a", 0, 100), belief("k", 1, 5, "a", 150, 160), belief("k", 1, 4, "b", 200, 300)], ..Record::default() };
        let v = check(&rec, None, 300);
        assert!(v.len() == 1 && v[0].starts_with("(b) k: token 4"), "{v:?}");
    }

    #[test]
    fn a_grant_nobody_applied_or_a_token_with_two_grants_is_found() {
        let mut rec = Record::default();
        rec.grants.push(Grant { key: "k".into(), token: 3, session: "a".into(), cluster: "c".into(), at_us: 10 });
        assert_eq!(check(&rec, None, 100).len(), 1);
        let claim = |node, session: &str| Ev::Claim {
            node,
            inc: 0,
            change: ChangeKind::Granted,
            key: "k".into(),
            token: 3,
            holder_node: "n".into(),
            session: session.into(),
            cluster: "c".into(),
        };
        rec.events.push((5, claim(0, "a")));
        assert!(check(&rec, None, 100).is_empty());
        rec.events.push((6, claim(1, "b")));
        let v = check(&rec, None, 100);
        assert!(v.len() == 1 && v[0].contains("different grants"), "{v:?}");
    }
}
