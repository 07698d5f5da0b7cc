//! Property tests of the claims state machine: random op sequences on replicas, and random snapshot bytes.

use super::*;
use proptest::prelude::*;

/// An op drawn from small alphabets, so keys collide, sessions repeat and tokens are hit.
#[derive(Debug, Clone)]
enum Gen {
    Acquire { key: u8, node: u8, session: u8, ttl: u64, limit: u32, delay: u64, bound: bool },
    Renew { key: u8, pick: usize, ttl: Option<u64> },
    Release { key: u8, pick: usize },
    Tick,
    Gone { node: u8 },
}

fn gen_op() -> impl Strategy<Value = Gen> {
    let ttl = prop_oneof![Just(100u64), Just(300), Just(1000), Just(50)];
    prop_oneof![
        4 => (0u8..3, 0u8..3, 0u8..2, ttl.clone(), 1u32..=3, prop_oneof![Just(0u64), Just(200)], any::<bool>())
            .prop_map(|(key, node, session, ttl, limit, delay, bound)| Gen::Acquire { key, node, session, ttl, limit, delay, bound }),
        2 => (0u8..3, any::<usize>(), proptest::option::of(ttl)).prop_map(|(key, pick, ttl)| Gen::Renew { key, pick, ttl }),
        2 => (0u8..3, any::<usize>()).prop_map(|(key, pick)| Gen::Release { key, pick }),
        1 => Just(Gen::Tick),
        1 => (0u8..3).prop_map(|node| Gen::Gone { node }),
    ]
}

/// One step: the op, the gap to the next index, whether the term changes, and the clock.
fn gen_step() -> impl Strategy<Value = (Gen, u64, bool, i64)> {
    (gen_op(), 1u64..4, proptest::bool::weighted(0.08), -100i64..600)
}

fn materialize(g: &Gen, tokens: &[u64]) -> Op {
    let key = |k: u8| format!("k{k}");
    let pick = |p: usize| if tokens.is_empty() || p.is_multiple_of(5) { p as u64 % 50 } else { tokens[p % tokens.len()] };
    match g {
        Gen::Acquire { key: k, node, session, ttl, limit, delay, bound } => {
            let meta = Meta { bound_to_node: *bound, ..Meta::default() };
            acq(&key(*k), &format!("n{node}"), &format!("s{session}")).ttl(*ttl).limit(*limit).delay(*delay).meta(meta).op()
        }
        Gen::Renew { key: k, pick: p, ttl } => renew(&key(*k), pick(*p), *ttl),
        Gen::Release { key: k, pick: p } => release(&key(*k), pick(*p)),
        Gen::Tick => Op::Tick,
        Gen::Gone { node } => gone(&format!("n{node}")),
    }
}

fn check_invariants(s: &ClaimsState, index: u64, prior: &ClaimsState, a: &Applied, last_token: &mut BTreeMap<String, u64>) -> Result<(), TestCaseError> {
    for (key, k) in s.keys() {
        prop_assert!(k.holders.len() <= k.limit as usize, "{key} has {} holders over limit {}", k.holders.len(), k.limit);
        prop_assert!(!k.holders.is_empty() || k.blocked_until_ms > s.now_ms(), "{key} has nothing left but was kept");
        let tokens: BTreeSet<u64> = k.holders.iter().map(|h| h.token).collect();
        prop_assert_eq!(tokens.len(), k.holders.len(), "duplicate tokens on {}", key);
        for h in &k.holders {
            prop_assert!(h.deadline_ms > s.now_ms(), "{key} holder {} is past its deadline", h.token);
        }
    }
    for c in a.changes.iter().filter(|c| c.kind == ChangeKind::Granted) {
        prop_assert_eq!(c.holder.token, index);
        let last = last_token.insert(c.key.clone(), c.holder.token).unwrap_or(0);
        prop_assert!(c.holder.token > last, "token {} of {} not above {}", c.holder.token, c.key, last);
    }
    if let Outcome::Granted { key, holder, .. } = &a.outcome
        && holder.token != index
    {
        // a re-acquire: the session already held the key with this very token
        let held = prior.key(key).is_some_and(|k| k.holders.iter().any(|h| h.token == holder.token && h.session == holder.session && h.node == holder.node));
        prop_assert!(held, "re-grant of {key} with token {} that the session did not hold", holder.token);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replicas_agree_and_the_invariants_hold_whatever_the_ops(steps in proptest::collection::vec(gen_step(), 1..80), snap_at in any::<usize>(), start in 0u64..10_000) {
        let mut a = ClaimsState::default();
        let mut b = ClaimsState::default();
        let mut c = ClaimsState::default();
        let snap_at = snap_at % steps.len();
        let (mut index, mut term, mut at) = (0u64, 1u64, start);
        let mut tokens = Vec::new();
        let mut last_token = BTreeMap::new();
        for (i, (g, gap, new_term, dt)) in steps.iter().enumerate() {
            index += gap;
            if *new_term {
                term += 1;
                at = (at as i64 + dt * 30).max(0) as u64; // an unrelated clock
            } else {
                at = (at as i64 + dt).max(0) as u64; // may step back: now never does
            }
            let op = materialize(g, &tokens);
            let cmd = Command { at_ms: at, op };
            let prior = a.clone();
            let ra = a.apply(index, term, &cmd);
            let rb = b.apply(index, term, &cmd);
            let rc = c.apply(index, term, &cmd);
            prop_assert_eq!(&ra, &rb);
            prop_assert_eq!(&ra, &rc);
            if let Outcome::Granted { holder, .. } = &ra.outcome {
                tokens.push(holder.token);
            }
            check_invariants(&a, index, &prior, &ra, &mut last_token)?;
            // the indices kept step by step equal the ones rebuilt from scratch
            let rebuilt = ClaimsState::from_bytes(&a.to_bytes());
            prop_assert_eq!(rebuilt.as_ref(), Ok(&a));
            if i == snap_at {
                c = ClaimsState::from_bytes(&c.to_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&c, &a);
            }
        }
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &c);
        prop_assert_eq!(ClaimsState::from_bytes(&a.to_bytes()).ok(), Some(a));
    }

    #[test]
    fn snapshot_decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = ClaimsState::from_bytes(&bytes);
        let mut framed = vec![SNAPSHOT_VERSION];
        framed.extend(&bytes);
        let _ = ClaimsState::from_bytes(&framed);
    }
}
