//! Per-upstream circuit breaker: a lock-free state machine over atomics.
//!
//! - **Closed**: traffic flows. Outcomes are counted in a sliding window of one-second buckets;
//!   when the window holds at least [`MIN_REQUESTS`] and the failure ratio reaches `threshold`,
//!   the breaker opens.
//! - **Open**: admits nothing for `cooldown`.
//! - **HalfOpen**: after the cooldown, the *next pick* that asks moves it here and wins the one
//!   probe (compare-exchange, so exactly one). The time check happens in the pick — no timer task
//!   — so an open upstream can never be starved of its probe (LLMProxy's breaker never recovered).
//!   Probe success closes it with a fresh window; failure opens it for another cooldown; a probe
//!   abandoned without an outcome (the client left) reopens it with the cooldown already spent,
//!   so the next pick probes again.
//!
//! Only the probe decides whether a recovered upstream is back. Requests admitted before the
//! breaker opened may still be failing when the probe closes it — those waiting on a hung
//! upstream take up to `timeout.request` — and counted in the fresh window they would open it
//! again, over and over, long after the upstream recovered. So an admission carries the number
//! of the closed period it was made in, and outcomes from an earlier one are not counted.
//!
//! Failures are connect errors, timeouts, 5xx and 429.

use crate::clock::NANOS_PER_SEC;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Requests the window must hold before a ratio means anything: few enough that an outage is
/// caught within seconds, enough that one unlucky request does not open the circuit.
pub const MIN_REQUESTS: u32 = 5;
/// Window length in one-second buckets.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What a pick may do with this upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: send. The number of the closed period, counted from 0 at the breaker's creation.
    Allowed {
        period: u32,
    },
    /// This request is the single half-open probe; its outcome decides the state.
    Probe,
    Rejected,
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

struct Bucket {
    /// The second (on the clock timeline) this bucket currently counts.
    second: AtomicU64,
    total: AtomicU32,
    failures: AtomicU32,
}

pub struct Breaker {
    threshold: f64,
    cooldown: u64,
    state: AtomicU8,
    /// When it last opened; [`PROBE_DUE`] when the next pick may probe whatever the time.
    opened_at: AtomicU64,
    /// The closed periods begun since the breaker was created: each probe that closes it starts
    /// one (see the module's doc).
    period: AtomicU32,
    buckets: [Bucket; BUCKETS],
}

/// `opened_at` of a breaker whose cooldown is over however recently it opened: a probe was
/// abandoned, or settings changed during one. A time `cooldown` in the past would do only once
/// the process has run for longer than the cooldown.
const PROBE_DUE: u64 = u64::MAX;

impl Breaker {
    pub fn new(threshold: f64, cooldown_secs: u64) -> Self {
        Breaker {
            threshold,
            cooldown: cooldown_secs * NANOS_PER_SEC,
            state: AtomicU8::new(State::Closed as u8),
            opened_at: AtomicU64::new(0),
            period: AtomicU32::new(0),
            buckets: std::array::from_fn(|_| Bucket {
                second: AtomicU64::new(u64::MAX),
                total: AtomicU32::new(0),
                failures: AtomicU32::new(0),
            }),
        }
    }

    /// A breaker with new settings that goes on from `previous`: an open breaker stays open
    /// (an API change to its cooldown must not send traffic back to a failing upstream), and
    /// the failures counted so far still count. A half-open one becomes open with its cooldown
    /// over: its probe's outcome goes to `previous`, and waiting for it here would never end.
    pub fn continuing(threshold: f64, cooldown_secs: u64, previous: &Breaker) -> Self {
        let next = Breaker::new(threshold, cooldown_secs);
        next.period.store(previous.period.load(Ordering::Acquire), Ordering::Release);
        match previous.state() {
            State::HalfOpen => {
                next.state.store(State::Open as u8, Ordering::Release);
                next.opened_at.store(PROBE_DUE, Ordering::Release);
            }
            state => {
                next.state.store(state as u8, Ordering::Release);
                next.opened_at.store(previous.opened_at.load(Ordering::Acquire), Ordering::Release);
            }
        }
        for (to, from) in next.buckets.iter().zip(&previous.buckets) {
            to.second.store(from.second.load(Ordering::Acquire), Ordering::Release);
            to.total.store(from.total.load(Ordering::Acquire), Ordering::Release);
            to.failures.store(from.failures.load(Ordering::Acquire), Ordering::Release);
        }
        next
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Read-only: could a pick at `now` get through (Closed, or Open with the cooldown over)?
    /// Used to filter candidates without consuming the probe.
    pub fn available(&self, now: u64) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => self.cooled_down(now),
            State::HalfOpen => false,
        }
    }

    /// How long, in ns from `now`, until a pick may get through an open or half-open breaker;
    /// the time left of the cooldown, or 0 when a probe is due or under way (its outcome comes
    /// within the request's timeout). `None` while closed.
    pub fn reopens_in(&self, now: u64) -> Option<u64> {
        match self.state() {
            State::Closed => None,
            State::HalfOpen => Some(0),
            State::Open => match self.opened_at.load(Ordering::Acquire) {
                PROBE_DUE => Some(0),
                at => Some(self.cooldown.saturating_sub(now.saturating_sub(at))),
            },
        }
    }

    fn cooled_down(&self, now: u64) -> bool {
        match self.opened_at.load(Ordering::Acquire) {
            PROBE_DUE => true,
            at => now.saturating_sub(at) >= self.cooldown,
        }
    }

    /// Asks to send one request at `now`.
    pub fn admit(&self, now: u64) -> (Admission, Option<Transition>) {
        match self.state() {
            State::Closed => (Admission::Allowed { period: self.period.load(Ordering::Acquire) }, None),
            State::HalfOpen => (Admission::Rejected, None),
            State::Open => {
                if !self.cooled_down(now) {
                    return (Admission::Rejected, None);
                }
                match self.cas(State::Open, State::HalfOpen) {
                    Some(t) => (Admission::Probe, Some(t)),
                    None => (Admission::Rejected, None),
                }
            }
        }
    }

    /// Records the outcome of a request that was `Allowed` (or the `Probe`).
    pub fn record(&self, admission: Admission, success: bool, now: u64) -> Option<Transition> {
        match admission {
            Admission::Probe => {
                if success {
                    // The new period first: an old request recording now is then (nearly
                    // always) seen as old, instead of counting into the fresh window.
                    self.period.fetch_add(1, Ordering::AcqRel);
                    self.reset_window();
                    self.cas(State::HalfOpen, State::Closed)
                } else {
                    self.opened_at.store(now, Ordering::Release);
                    self.cas(State::HalfOpen, State::Open)
                }
            }
            // Sent before the probe that closed the breaker last: not the upstream as it is now.
            Admission::Allowed { period } if period != self.period.load(Ordering::Acquire) => None,
            Admission::Allowed { .. } => {
                self.count(success, now);
                if !success && self.state() == State::Closed && self.tripped(now) {
                    self.opened_at.store(now, Ordering::Release);
                    return self.cas(State::Closed, State::Open);
                }
                None
            }
            Admission::Rejected => None,
        }
    }

    /// The probe ended without an outcome: reopen with the cooldown already over, so the next
    /// pick probes again instead of waiting another cooldown.
    pub fn abandon_probe(&self) -> Option<Transition> {
        self.opened_at.store(PROBE_DUE, Ordering::Release);
        self.cas(State::HalfOpen, State::Open)
    }

    fn cas(&self, from: State, to: State) -> Option<Transition> {
        self.state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Transition { from, to })
    }

    fn count(&self, success: bool, now: u64) {
        let second = now / NANOS_PER_SEC;
        let b = &self.buckets[(second % BUCKETS as u64) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second && b.second.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // This bucket last counted a second that has left the window: start it afresh. A
            // concurrent increment between the swap and the reset may be lost; the window is a
            // statistic, not a ledger.
            b.total.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
        }
        b.total.fetch_add(1, Ordering::AcqRel);
        if !success {
            b.failures.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn tripped(&self, now: u64) -> bool {
        let second = now / NANOS_PER_SEC;
        let (mut total, mut failures) = (0u32, 0u32);
        for b in &self.buckets {
            let s = b.second.load(Ordering::Acquire);
            if s != u64::MAX && s <= second && second - s < BUCKETS as u64 {
                total += b.total.load(Ordering::Acquire);
                failures += b.failures.load(Ordering::Acquire);
            }
        }
        total >= MIN_REQUESTS && f64::from(failures) >= self.threshold * f64::from(total)
    }

    fn reset_window(&self) {
        for b in &self.buckets {
            b.second.store(u64::MAX, Ordering::Release);
            b.total.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;
    const MS: u64 = S / 1000;

    fn fail(b: &Breaker, now: u64) -> Option<Transition> {
        let (a, _) = b.admit(now);
        b.record(a, false, now)
    }

    #[test]
    fn new_settings_keep_an_open_breaker_open_and_never_wait_on_a_probe_elsewhere() {
        let old = Breaker::new(0.5, 30);
        let t = 100 * NANOS_PER_SEC;
        for _ in 0..5 {
            let (a, _) = old.admit(t);
            old.record(a, false, t);
        }
        assert_eq!(old.state(), State::Open);
        let next = Breaker::continuing(0.9, 60, &old);
        assert_eq!(next.state(), State::Open, "still open under the new cooldown");
        assert!(!next.available(t + 31 * NANOS_PER_SEC) && next.available(t + 60 * NANOS_PER_SEC));
        // The old one sent its probe; the new one probes at once rather than wait for it.
        let (probe, _) = old.admit(t + 31 * NANOS_PER_SEC);
        assert_eq!(probe, Admission::Probe);
        let next = Breaker::continuing(0.9, 60, &old);
        assert_eq!(next.admit(t + 31 * NANOS_PER_SEC).0, Admission::Probe);
        // Even under a cooldown longer than the process has run.
        let next = Breaker::continuing(0.9, 3600, &old);
        assert_eq!(next.reopens_in(t + 31 * NANOS_PER_SEC), Some(0));
        assert_eq!(next.admit(t + 31 * NANOS_PER_SEC).0, Admission::Probe);
        // A closed one keeps the failures it counted.
        let closed = Breaker::new(0.5, 30);
        for _ in 0..4 {
            let (a, _) = closed.admit(t);
            closed.record(a, false, t);
        }
        let next = Breaker::continuing(0.5, 10, &closed);
        let (a, _) = next.admit(t);
        next.record(a, false, t);
        assert_eq!(next.state(), State::Open, "the fifth failure trips it");
    }

    #[test]
    fn trips_only_with_enough_requests_and_ratio() {
        let b = Breaker::new(0.5, 30);
        let t = 100 * S;
        for i in 0..4 {
            assert_eq!(fail(&b, t + i * MS), None, "fewer than {MIN_REQUESTS} requests never trip");
        }
        assert_eq!(fail(&b, t + 5 * MS), Some(Transition { from: State::Closed, to: State::Open }));
        assert_eq!(b.state(), State::Open);

        let b = Breaker::new(0.5, 30);
        for i in 0..10 {
            let (a, _) = b.admit(t);
            b.record(a, i % 3 != 0, t); // 4 failures of 10: below 50%
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = Breaker::new(0.5, 30);
        for i in 0..4 {
            fail(&b, i * S);
        }
        // 11 s later the first four have left the 10 s window: one more failure is not enough.
        assert_eq!(fail(&b, 15 * S), None);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn open_rejects_then_admits_exactly_one_probe_after_cooldown() {
        let b = Breaker::new(0.5, 30);
        let t = 50 * S;
        for _ in 0..5 {
            fail(&b, t);
        }
        assert!(!b.available(t + 29 * S));
        assert_eq!(b.admit(t + 29 * S).0, Admission::Rejected, "no traffic while open");
        assert!(b.available(t + 30 * S));
        let (probe, tr) = b.admit(t + 30 * S);
        assert_eq!(probe, Admission::Probe);
        assert_eq!(tr, Some(Transition { from: State::Open, to: State::HalfOpen }));
        assert_eq!(b.admit(t + 30 * S).0, Admission::Rejected, "only one probe");
        assert!(!b.available(t + 31 * S));
        // Probe succeeds: closed with a fresh window (one failure does not re-trip).
        assert_eq!(b.record(probe, true, t + 31 * S), Some(Transition { from: State::HalfOpen, to: State::Closed }));
        assert_eq!(fail(&b, t + 31 * S), None);
        assert_eq!(b.admit(t + 31 * S).0, Admission::Allowed { period: 1 });
    }

    #[test]
    fn failed_probe_reopens_for_a_new_cooldown() {
        let b = Breaker::new(1.0, 10);
        for _ in 0..5 {
            fail(&b, 0);
        }
        let (probe, _) = b.admit(10 * S);
        assert_eq!(b.record(probe, false, 10 * S), Some(Transition { from: State::HalfOpen, to: State::Open }));
        assert_eq!(b.admit(19 * S).0, Admission::Rejected);
        assert_eq!(b.admit(20 * S).0, Admission::Probe);
    }

    #[test]
    fn abandoned_probe_lets_the_next_pick_probe_at_once() {
        let b = Breaker::new(0.5, 10);
        for _ in 0..5 {
            fail(&b, 0);
        }
        assert_eq!(b.admit(10 * S).0, Admission::Probe);
        b.abandon_probe();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(11 * S).0, Admission::Probe);
    }

    #[test]
    fn outcomes_of_requests_sent_before_the_last_close_do_not_reopen_it() {
        let b = Breaker::new(0.5, 30);
        let t = 100 * S;
        // Ten requests to an upstream that hangs: five fail first and open the breaker.
        let hung: Vec<Admission> = (0..10).map(|_| b.admit(t).0).collect();
        for a in &hung[..5] {
            b.record(*a, false, t + 5 * S);
        }
        assert_eq!(b.state(), State::Open);
        // It recovers; the probe closes the breaker.
        let (probe, _) = b.admit(t + 35 * S);
        b.record(probe, true, t + 36 * S);
        // The other five time out only now, among the first requests of the new period.
        for a in &hung[5..] {
            assert_eq!(b.record(*a, false, t + 37 * S), None, "sent before the probe: not counted");
        }
        for _ in 0..4 {
            let (a, _) = b.admit(t + 37 * S);
            b.record(a, true, t + 37 * S);
        }
        assert_eq!(b.state(), State::Closed);
        // New failures still count.
        for _ in 0..4 {
            fail(&b, t + 38 * S);
        }
        assert_eq!(b.state(), State::Open, "4 failures of 8 in the new period");
    }

    #[test]
    fn reopens_in_tells_the_rest_of_the_cooldown() {
        let b = Breaker::new(0.5, 30);
        assert_eq!(b.reopens_in(0), None, "closed");
        for _ in 0..5 {
            fail(&b, 10 * S);
        }
        assert_eq!(b.reopens_in(10 * S), Some(30 * S));
        assert_eq!(b.reopens_in(25 * S), Some(15 * S));
        assert_eq!(b.reopens_in(50 * S), Some(0), "a probe is due");
        let (probe, _) = b.admit(50 * S);
        assert_eq!(b.reopens_in(50 * S), Some(0), "a probe is under way");
        b.abandon_probe();
        assert_eq!(b.reopens_in(50 * S), Some(0));
        assert_eq!(probe, Admission::Probe);
    }
}
