//! What `response_aware` balancing reads: in-flight requests and lock-free EWMAs of response
//! time (sampled at the response head — time to first byte, which is what matters for streams)
//! and of success.
//!
//! Penalties fade with the age of the last sample, so an upstream that failed or was slow and
//! then stopped getting traffic is sampled again later: nothing is exiled forever. The in-flight
//! count is held by [`InflightGuard`] from pick to end of body; a guard cannot leak or
//! double-decrement, whatever way the request ends (LLMProxy leaked the count on errors and
//! exiled the upstream).

use crate::clock::NANOS_PER_SEC;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Weight of a new sample: recent behaviour dominates within a handful of requests.
const ALPHA: f64 = 0.3;
/// Response time assumed for an upstream never sampled: low, so new upstreams get tried.
pub const DEFAULT_RESPONSE_SECS: f64 = 0.001;
/// Half-life of a penalty once an upstream stops being sampled.
const PENALTY_HALF_LIFE_SECS: f64 = 10.0;
/// Floor for the success ratio in the score, so a failing upstream is heavily penalised but
/// its score stays finite and comparable.
const MIN_SUCCESS: f64 = 0.02;
/// What a failure adds to its own time in the response-time average. Without it an upstream
/// that fails in a millisecond (refused connections, instant 5xx) would look faster than a
/// healthy one taking a second to its first token, and win the picks its failures lose.
const FAILURE_PENALTY_SECS: f64 = 5.0;

pub struct Load {
    inflight: AtomicU32,
    response_secs: AtomicU64,
    success: AtomicU64,
    last_sample: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            inflight: AtomicU32::new(0),
            response_secs: AtomicU64::new(DEFAULT_RESPONSE_SECS.to_bits()),
            success: AtomicU64::new(1.0f64.to_bits()),
            last_sample: AtomicU64::new(0),
        }
    }
}

impl Load {
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Takes an in-flight slot unless `limit` slots are taken.
    pub fn try_begin(self: &Arc<Self>, limit: Option<u32>) -> Option<InflightGuard> {
        let max = limit.unwrap_or(u32::MAX);
        self.inflight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(InflightGuard { load: self.clone() })
    }

    fn decay(&self, now: u64) -> f64 {
        let age = now.saturating_sub(self.last_sample.load(Ordering::Acquire)) as f64 / NANOS_PER_SEC as f64;
        (-age / PENALTY_HALF_LIFE_SECS).exp2()
    }

    /// Response time and success with their penalties faded by the time since the last sample.
    pub fn effective(&self, now: u64) -> (f64, f64) {
        let keep = self.decay(now);
        let rt = f64::from_bits(self.response_secs.load(Ordering::Acquire));
        let ok = f64::from_bits(self.success.load(Ordering::Acquire));
        let rt = DEFAULT_RESPONSE_SECS + (rt - DEFAULT_RESPONSE_SECS).max(0.0) * keep;
        let ok = 1.0 - (1.0 - ok) * keep;
        (rt, ok)
    }

    /// Lower is better: `response_time × (in_flight + 1) / success_rate`.
    pub fn score(&self, now: u64) -> f64 {
        let (rt, ok) = self.effective(now);
        rt * f64::from(self.inflight() + 1) / ok.max(MIN_SUCCESS)
    }

    /// Folds one outcome in: `response_secs` is the time to the response head (or to the
    /// failure, which then counts [`FAILURE_PENALTY_SECS`] longer).
    pub fn observe(&self, response_secs: f64, success: bool, now: u64) {
        let (rt, ok) = self.effective(now);
        let sample = if success { response_secs } else { response_secs + FAILURE_PENALTY_SECS };
        let new_rt = rt + ALPHA * (sample - rt);
        let new_ok = ok + ALPHA * (if success { 1.0 } else { 0.0 } - ok);
        self.response_secs.store(new_rt.to_bits(), Ordering::Release);
        self.success.store(new_ok.to_bits(), Ordering::Release);
        self.last_sample.store(now, Ordering::Release);
    }
}

/// Holds one in-flight slot; released exactly once, on drop.
pub struct InflightGuard {
    load: Arc<Load>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.load.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn guards_count_in_flight_and_respect_the_limit() {
        let l = Arc::new(Load::default());
        let a = l.try_begin(Some(2)).unwrap();
        let b = l.try_begin(Some(2)).unwrap();
        assert!(l.try_begin(Some(2)).is_none());
        assert_eq!(l.inflight(), 2);
        drop(a);
        assert_eq!(l.inflight(), 1);
        let c = l.try_begin(Some(2)).unwrap();
        drop((b, c));
        assert_eq!(l.inflight(), 0);
    }

    #[test]
    fn slow_and_failing_upstreams_score_worse_and_recover() {
        let fast = Load::default();
        let slow = Load::default();
        let t = 100 * S;
        for _ in 0..10 {
            fast.observe(0.1, true, t);
            slow.observe(2.0, true, t);
        }
        assert!(fast.score(t) < slow.score(t));
        let failing = Load::default();
        for _ in 0..10 {
            failing.observe(0.1, false, t);
        }
        assert!(failing.score(t) > 10.0 * fast.score(t));
        // Unsampled for a minute while the healthy one keeps answering, its penalties have
        // faded: it will be tried again.
        let later = t + 60 * S;
        for second in 1..=60 {
            fast.observe(0.1, true, t + second * S);
        }
        assert!(failing.score(later) < fast.score(later));
        // And good answers after recovery keep it beside the others.
        for _ in 0..10 {
            failing.observe(0.1, true, later);
        }
        assert!(failing.score(later) < 2.0 * fast.score(later));
    }

    #[test]
    fn an_upstream_that_fails_fast_does_not_look_fast() {
        // One answers in 0.8 s; the other refuses in a millisecond.
        let (healthy, refusing) = (Arc::new(Load::default()), Load::default());
        let t = 100 * S;
        for _ in 0..5 {
            healthy.observe(0.8, true, t);
        }
        refusing.observe(0.001, false, t);
        assert!(refusing.score(t) > healthy.score(t), "one failure is enough to lose to an idle healthy upstream");
        for _ in 0..3 {
            refusing.observe(0.001, false, t);
        }
        let busy: Vec<_> = (0..8).map(|_| healthy.try_begin(None).unwrap()).collect();
        assert!(refusing.score(t) > healthy.score(t), "after a few, even to one with {} in flight", busy.len());
    }
}
