//! The holder's own deadline: when a process holding a claim must stop, whatever it hears.
//!
//! Pure: the caller passes `now_ms` read from CLOCK_BOOTTIME, which keeps counting while the
//! machine sleeps. (CLOCK_MONOTONIC stops during a suspend, so a laptop waking after its
//! lease ended would go on believing it holds.)
//!
//! The local deadline is the send time of the acquire or renewal that succeeded, plus the
//! TTL, minus a margin. Renewals go out every third of the TTL after the last successful
//! send; after a failure they are retried every max(ttl/10, 50 ms) until the deadline.
//!
//! # Why stopping at the local deadline is safe
//!
//! Say the request that succeeded left the holder at `s` (holder's clock). The leader stamps
//! the entry with its clock when it proposes it, after it received the request, so after `s`
//! in real time; the state machine's deadline for the lease is that stamp + ttl on the
//! leader's clock. Nothing moves that deadline earlier: a new leader re-bases every lease to
//! its own first stamp + ttl, later still, and a lock-delay only adds. So no other grant of
//! the slot is applied before real time `s` + ttl, give or take how much the two clocks'
//! rates differ over one ttl. The holder stops at `s` + ttl − margin on its own clock: safe
//! while that rate difference (plus the time to stop what the claim protects) stays under
//! the margin. The default margin, max(100 ms, ttl/20), allows a 5% rate error, far more
//! than quartz drift. Only two things end a lease sooner, and neither hurts: the holder's
//! own release, and [`super::Op::NodeGone`], which is proposed only for claims whose
//! protected process stops with their node.
//!
//! A reply that comes late (an old renewal answered after a newer one) is harmless for the
//! same reason: it extends to its own send time + ttl − margin at most, and the deadline
//! never moves back.

/// The default safety margin for a lease of `ttl_ms`: a twentieth of it (5% clock rate
/// error), at least 100 ms (stopping takes time), but never more than half the lease.
pub fn default_margin_ms(ttl_ms: u64) -> u64 {
    (ttl_ms / 20).max(100).min(ttl_ms / 2)
}

/// What the holder should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Not held: never granted, or released.
    Idle,
    /// Held; nothing to do before `until_ms` (the next time to poll).
    Hold { until_ms: u64 },
    /// Held; send a renewal now (then call [`LocalLease::renew_sent`]).
    Renew,
    /// The local deadline has passed: stop what the claim protects at once, then call
    /// [`LocalLease::lost`].
    Expired,
    /// The cluster said the claim is gone (or the holder gave up on it).
    Lost,
}

/// One holder's view of one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLease {
    ttl_ms: u64,
    margin_ms: u64,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Held(Held),
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    deadline_ms: u64,
    /// Send time of the newest request that succeeded: renewals are scheduled from it.
    last_ok_sent_ms: u64,
    /// Send time of the renewal awaiting an answer.
    in_flight_since_ms: Option<u64>,
    /// When the last renewal failed, if none succeeded since.
    failed_at_ms: Option<u64>,
}

impl LocalLease {
    /// A lease not yet held. `margin_ms` is usually [`default_margin_ms`] of `ttl_ms`.
    pub fn new(ttl_ms: u64, margin_ms: u64) -> Self {
        LocalLease { ttl_ms, margin_ms, phase: Phase::Idle }
    }

    /// The acquire sent at `sent_at_ms` was granted (also after a loss: a fresh lease).
    pub fn granted(&mut self, sent_at_ms: u64) {
        self.phase =
            Phase::Held(Held { deadline_ms: self.deadline_from(sent_at_ms), last_ok_sent_ms: sent_at_ms, in_flight_since_ms: None, failed_at_ms: None });
    }

    /// A renewal left now; its answer is awaited before another goes out.
    pub fn renew_sent(&mut self, now_ms: u64) {
        if let Phase::Held(h) = &mut self.phase {
            h.in_flight_since_ms = Some(now_ms);
            h.failed_at_ms = None;
        }
    }

    /// The renewal sent at `sent_at_ms` (that request's own send time, not the latest one)
    /// succeeded with `ttl_ms`. The deadline only ever moves forward, and never beyond what
    /// this request's send time allows, so a late answer to an old renewal cannot stretch it.
    pub fn renewed(&mut self, sent_at_ms: u64, ttl_ms: u64) {
        let margin = self.margin_ms;
        let Phase::Held(h) = &mut self.phase else { return };
        h.deadline_ms = h.deadline_ms.max(sent_at_ms.saturating_add(ttl_ms).saturating_sub(margin));
        if sent_at_ms >= h.last_ok_sent_ms {
            h.last_ok_sent_ms = sent_at_ms;
            self.ttl_ms = ttl_ms;
        }
        if h.in_flight_since_ms.is_some_and(|s| s <= sent_at_ms) {
            h.in_flight_since_ms = None;
        }
        h.failed_at_ms = None;
    }

    /// The renewal in flight failed (no leader, timeout, transport error): retry soon.
    /// A `NotHeld` answer is not a failure but a loss: call [`LocalLease::lost`].
    pub fn renew_failed(&mut self, now_ms: u64) {
        if let Phase::Held(h) = &mut self.phase {
            h.in_flight_since_ms = None;
            h.failed_at_ms = Some(now_ms);
        }
    }

    /// The claim is gone (refused renewal, or stopped after [`LeaseDecision::Expired`]);
    /// nothing revives it but a new grant.
    pub fn lost(&mut self) {
        self.phase = Phase::Lost;
    }

    /// The holder released the claim itself.
    pub fn released(&mut self) {
        self.phase = Phase::Idle;
    }

    /// The local deadline (holder's clock), while held.
    pub fn deadline_ms(&self) -> Option<u64> {
        match &self.phase {
            Phase::Held(h) => Some(h.deadline_ms),
            Phase::Idle | Phase::Lost => None,
        }
    }

    /// What to do at `now_ms`. Expiry wins over everything, a renewal in flight included:
    /// after a suspend past the deadline the holder stops before anything else.
    pub fn poll(&self, now_ms: u64) -> LeaseDecision {
        let h = match &self.phase {
            Phase::Idle => return LeaseDecision::Idle,
            Phase::Lost => return LeaseDecision::Lost,
            Phase::Held(h) => h,
        };
        if now_ms >= h.deadline_ms {
            return LeaseDecision::Expired;
        }
        let regular = h.last_ok_sent_ms.saturating_add(self.ttl_ms / 3);
        // A renewal in flight is given the retry interval to answer before another goes
        // out; a failed one is retried after it.
        let due = match (h.in_flight_since_ms, h.failed_at_ms) {
            (Some(at), _) | (None, Some(at)) => regular.max(at.saturating_add(self.retry_ms())),
            (None, None) => regular,
        };
        if now_ms >= due { LeaseDecision::Renew } else { LeaseDecision::Hold { until_ms: due.min(h.deadline_ms) } }
    }

    /// When to poll next: at once for a renewal, the hold's end while held, and `None` when
    /// time alone changes nothing (idle, lost, or already expired).
    pub fn poll_timeout(&self, now_ms: u64) -> Option<u64> {
        match self.poll(now_ms) {
            LeaseDecision::Hold { until_ms } => Some(until_ms),
            LeaseDecision::Renew => Some(now_ms),
            LeaseDecision::Idle | LeaseDecision::Expired | LeaseDecision::Lost => None,
        }
    }

    /// Retry interval after a failed or unanswered renewal. The 50 ms floor keeps short
    /// leases from flooding a leader that is merely slow.
    fn retry_ms(&self) -> u64 {
        (self.ttl_ms / 10).max(50)
    }

    fn deadline_from(&self, sent_at_ms: u64) -> u64 {
        sent_at_ms.saturating_add(self.ttl_ms).saturating_sub(self.margin_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ttl 3 s, margin 150 ms: renew every 1 s, retry every 300 ms, deadline sent + 2850.
    fn lease() -> LocalLease {
        LocalLease::new(3000, default_margin_ms(3000))
    }

    #[test]
    fn the_default_margin_is_a_twentieth_of_the_ttl_at_least_100_ms_and_at_most_half() {
        let m: Vec<u64> = [0, 100, 150, 1000, 3000, 10_000, 60_000, 3_600_000].into_iter().map(default_margin_ms).collect();
        assert_eq!(m, vec![0, 50, 75, 100, 150, 500, 3000, 180_000]);
    }

    #[test]
    fn a_new_lease_is_idle_and_a_grant_counts_from_the_send_time() {
        let mut l = lease();
        assert_eq!((l.poll(0), l.deadline_ms(), l.poll_timeout(0)), (LeaseDecision::Idle, None, None));
        l.granted(1000);
        assert_eq!(l.deadline_ms(), Some(3850));
        assert_eq!(l.poll(1200), LeaseDecision::Hold { until_ms: 2000 });
    }

    #[test]
    fn renewals_go_out_every_third_of_the_ttl_after_the_last_successful_send() {
        let mut l = lease();
        l.granted(0);
        let mut sends = Vec::new();
        let mut now = 0;
        while now < 5000 {
            match l.poll(now) {
                LeaseDecision::Renew => {
                    sends.push(now);
                    l.renew_sent(now);
                    // answered (an answer counts from its request's send time)
                    l.renewed(now, 3000);
                }
                LeaseDecision::Hold { until_ms } => assert!(until_ms > now),
                other => panic!("at {now}: {other:?}"),
            }
            now += 10;
        }
        assert_eq!(sends, vec![1000, 2000, 3000, 4000]);
        assert_eq!(l.deadline_ms(), Some(6850));
    }

    #[test]
    fn an_unanswered_renewal_is_not_repeated_before_the_retry_interval() {
        let mut l = lease();
        l.granted(0);
        assert_eq!(l.poll(1000), LeaseDecision::Renew);
        l.renew_sent(1000);
        assert_eq!(l.poll(1000), LeaseDecision::Hold { until_ms: 1300 });
        assert_eq!(l.poll_timeout(1000), Some(1300));
        assert_eq!(l.poll(1299), LeaseDecision::Hold { until_ms: 1300 });
        assert_eq!(l.poll(1300), LeaseDecision::Renew);
        assert_eq!(l.poll_timeout(1300), Some(1300));
    }

    #[test]
    fn a_failed_renewal_is_retried_every_tenth_of_the_ttl_until_the_deadline() {
        let mut l = lease();
        l.granted(0);
        let mut sends = Vec::new();
        let mut now = 0;
        let decision = loop {
            match l.poll(now) {
                LeaseDecision::Renew => {
                    sends.push(now);
                    l.renew_sent(now);
                    l.renew_failed(now + 20);
                }
                LeaseDecision::Hold { until_ms } => now = until_ms,
                other => break other,
            }
        };
        assert_eq!(decision, LeaseDecision::Expired);
        assert_eq!(now, 2850, "stopped exactly at the deadline");
        assert_eq!(sends, vec![1000, 1320, 1640, 1960, 2280, 2600]);
    }

    #[test]
    fn a_success_after_failures_returns_to_the_regular_schedule() {
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        l.renew_failed(1010);
        assert_eq!(l.poll(1200), LeaseDecision::Hold { until_ms: 1310 });
        l.renew_sent(1310);
        l.renewed(1310, 3000);
        assert_eq!((l.deadline_ms(), l.poll(1400)), (Some(4160), LeaseDecision::Hold { until_ms: 2310 }));
    }

    #[test]
    fn the_retry_interval_has_a_floor_of_50_ms() {
        let mut l = LocalLease::new(400, 20);
        l.granted(0);
        l.renew_sent(133);
        l.renew_failed(140);
        assert_eq!(l.poll(150), LeaseDecision::Hold { until_ms: 190 }, "not 180: a tenth of 400 ms is under the floor");
    }

    #[test]
    fn a_lease_expires_exactly_at_its_deadline() {
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        l.renew_failed(1001);
        assert!(matches!(l.poll(2849), LeaseDecision::Hold { .. } | LeaseDecision::Renew));
        assert_eq!(l.poll(2850), LeaseDecision::Expired);
        assert_eq!(l.poll_timeout(2850), None);
    }

    #[test]
    fn a_late_reply_never_moves_the_deadline_beyond_its_own_send_time_allows() {
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        // no answer; sent again, and the second is answered first
        l.renew_sent(1300);
        l.renewed(1300, 3000);
        assert_eq!(l.deadline_ms(), Some(4150));
        l.renewed(1000, 3000);
        assert_eq!(l.deadline_ms(), Some(4150), "the old answer does not move it back");
        assert_eq!(l.poll(1400), LeaseDecision::Hold { until_ms: 2300 }, "nor does it reschedule");
        // a reply long after it was sent counts from its send time, not from its arrival
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        l.renewed(1000, 60_000);
        assert_eq!(l.deadline_ms(), Some(1000 + 60_000 - 150));
    }

    #[test]
    fn a_longer_ttl_from_a_renewal_moves_the_schedule() {
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        l.renewed(1000, 9000);
        assert_eq!((l.deadline_ms(), l.poll(1100)), (Some(9850), LeaseDecision::Hold { until_ms: 4000 }));
    }

    #[test]
    fn a_suspend_past_the_deadline_is_expired_at_once_even_with_a_renewal_in_flight() {
        let mut l = lease();
        l.granted(0);
        l.renew_sent(1000);
        // the laptop sleeps for an hour; CLOCK_BOOTTIME counted it
        assert_eq!(l.poll(3_601_000), LeaseDecision::Expired);
        assert_eq!(l.deadline_ms(), Some(2850));
    }

    #[test]
    fn lost_is_terminal_until_granted_again() {
        let mut l = lease();
        l.granted(0);
        l.lost();
        l.renew_sent(1000);
        l.renewed(1000, 3000);
        l.renew_failed(1100);
        assert_eq!((l.poll(1200), l.deadline_ms(), l.poll_timeout(1200)), (LeaseDecision::Lost, None, None));
        l.granted(5000);
        assert_eq!((l.poll(5000), l.deadline_ms()), (LeaseDecision::Hold { until_ms: 6000 }, Some(7850)));
    }

    #[test]
    fn a_released_lease_is_idle_and_ignores_answers() {
        let mut l = lease();
        l.granted(0);
        l.released();
        l.renewed(500, 3000);
        assert_eq!((l.poll(600), l.deadline_ms()), (LeaseDecision::Idle, None));
    }
}
