#![allow(clippy::unwrap_used)]

use super::*;

const ALL: Caps = Caps { sampling: true, elicitation: true, roots: true };

#[test]
fn sampling_goes_to_the_session_whose_request_is_in_flight() {
    let mut t = Table::new();
    let a = t.open(ALL).unwrap();
    let b = t.open(ALL).unwrap();
    assert_eq!(t.route("sampling/createMessage"), Err(RouteError::NoneInFlight("sampling/createMessage".into())));
    let sa = t.begin(a).unwrap();
    assert_eq!(t.route("sampling/createMessage"), Ok(a));
    let sb = t.begin(b).unwrap();
    // Both busy: the most recently started request wins.
    assert_eq!(t.route("sampling/createMessage"), Ok(b));
    t.end(b, sb);
    assert_eq!(t.route("sampling/createMessage"), Ok(a));
    t.end(a, sa);
    assert!(t.route("roots/list").is_err());
}

#[test]
fn a_session_without_the_capability_is_never_asked() {
    let mut t = Table::new();
    let plain = t.open(Caps::default()).unwrap();
    let sampler = t.open(Caps { sampling: true, ..Caps::default() }).unwrap();
    let _ = t.begin(plain).unwrap();
    assert_eq!(t.route("sampling/createMessage"), Err(RouteError::NotCapable { method: "sampling/createMessage".into(), capability: "sampling" }));
    let _ = t.begin(sampler).unwrap();
    let _ = t.begin(plain).unwrap();
    // plain's request is newer, but only sampler can sample.
    assert_eq!(t.route("sampling/createMessage"), Ok(sampler));
    assert!(matches!(t.route("elicitation/create"), Err(RouteError::NotCapable { capability: "elicitation", .. })));
    // A request of another kind goes to the newest request in flight.
    assert_eq!(t.route("x/custom"), Ok(plain));
}

#[test]
fn log_levels_filter_per_session_and_the_child_runs_at_the_most_verbose() {
    let mut t = Table::new();
    let a = t.open(ALL).unwrap();
    let b = t.open(ALL).unwrap();
    let c = t.open(ALL).unwrap();
    assert_eq!(t.child_level(), None);
    assert_eq!(t.set_level(a, LogLevel::Warning), Some(LogLevel::Warning));
    assert_eq!(t.set_level(b, LogLevel::Debug), Some(LogLevel::Debug));
    assert_eq!(t.set_level(a, LogLevel::Error), None, "b still wants debug");
    assert_eq!(t.log_targets(LogLevel::Info), vec![b]);
    assert_eq!(t.log_targets(LogLevel::Critical), vec![a, b]);
    // c set no level: it hears messages only while its request runs.
    let s = t.begin(c).unwrap();
    assert_eq!(t.log_targets(LogLevel::Info), vec![b, c]);
    t.end(c, s);
    assert_eq!(t.log_targets(LogLevel::Info), vec![b]);
    let closed = t.close(b);
    assert_eq!(closed.level, Some(Some(LogLevel::Error)));
    let closed = t.close(a);
    assert_eq!(closed.level, Some(None));
}

#[test]
fn subscriptions_are_counted() {
    let mut t = Table::new();
    let a = t.open(ALL).unwrap();
    let b = t.open(ALL).unwrap();
    assert!(t.subscribe(a, "file:///x"));
    assert!(!t.subscribe(b, "file:///x"));
    assert_eq!(t.subscribers("file:///x"), vec![a, b]);
    assert!(!t.unsubscribe(a, "file:///x"));
    assert!(!t.unsubscribe(a, "file:///x"), "not subscribed any more");
    assert!(t.subscribe(a, "file:///y"));
    let closed = t.close(b);
    assert_eq!(closed.unsubscribe, vec!["file:///x".to_string()]);
    let closed = t.close(a);
    assert_eq!(closed.unsubscribe, vec!["file:///y".to_string()]);
    assert!(t.is_empty());
}

#[test]
fn bounds_hold() {
    let mut t = Table::new();
    let a = t.open(ALL).unwrap();
    for _ in 0..MAX_IN_FLIGHT {
        t.begin(a).unwrap();
    }
    assert_eq!(t.begin(a), Err(Full::InFlight));
    assert_eq!(t.begin(999), Err(Full::NoSession));
    for _ in 1..MAX_SESSIONS {
        t.open(Caps::default()).unwrap();
    }
    assert_eq!(t.open(Caps::default()), Err(Full::Sessions));
    // Session ids are never reused.
    t.close(a);
    let n = t.open(Caps::default()).unwrap();
    assert!(n > a);
}

#[test]
fn levels_parse_and_order() {
    for l in LogLevel::ALL {
        assert_eq!(LogLevel::parse(l.as_str()), Some(l));
    }
    assert!(LogLevel::Debug < LogLevel::Emergency);
    assert_eq!(LogLevel::parse("loud"), None);
}
