//! Rate limiting with GCRA (the generic cell rate algorithm, a token bucket in one number).
//!
//! State per key is one `AtomicU64`: the theoretical arrival time (TAT) of the next request, in
//! nanoseconds on the [`crate::clock`] timeline. With `T = 1s / per_second` and
//! `tau = T × (burst − 1)`, a request at `now` is allowed iff `now ≥ TAT − tau`, and then
//! `TAT = max(TAT, now) + T` (compare-exchange). There is no refill task and no lock on the check;
//! a rejection knows the exact wait, which becomes `Retry-After`.
//!
//! `per_second` is a rate (LLMProxy read it as seconds per request and answered 500 to
//! everything).

use crate::clock::NANOS_PER_SEC;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gcra {
    /// Emission interval T: nanoseconds per request at the sustained rate.
    interval: u64,
    /// Burst tolerance tau: how far ahead of `now` the TAT may run.
    tolerance: u64,
}

impl Gcra {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = NANOS_PER_SEC / u64::from(per_second.max(1));
        Gcra { interval, tolerance: interval * u64::from(burst.max(1) - 1) }
    }

    /// Admits one request at `now` against `tat`, or returns the nanoseconds to wait.
    pub fn check(&self, tat: &AtomicU64, now: u64) -> Result<(), u64> {
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let allow_at = current.saturating_sub(self.tolerance);
            if now < allow_at {
                return Err(allow_at - now);
            }
            let next = current.max(now) + self.interval;
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Read-only: would a request at `now` be admitted? (Used to filter candidates without
    /// spending a token on one that is not picked.)
    pub fn ready(&self, tat: &AtomicU64, now: u64) -> Result<(), u64> {
        let allow_at = tat.load(Ordering::Relaxed).saturating_sub(self.tolerance);
        if now < allow_at {
            Err(allow_at - now)
        } else {
            Ok(())
        }
    }

    /// Whole seconds for `Retry-After`, rounded up (never 0: "retry now" would be a lie).
    pub fn retry_after_secs(wait_nanos: u64) -> u64 {
        wait_nanos.div_ceil(NANOS_PER_SEC).max(1)
    }
}

/// Shards of the keyed table: lookups of different keys rarely share a lock.
const SHARDS: usize = 16;

/// GCRA per key (client IP, client key) in a bounded table.
///
/// A key whose TAT is in the past is indistinguishable from a key never seen, so such entries
/// are swept whenever a shard is full; if a spray of live keys still fills it, the entry closest
/// to expiry is evicted (it loses at most its remaining debt). Memory is bounded by `capacity`
/// whatever the traffic.
pub struct KeyedLimiter<K> {
    gcra: Gcra,
    shard_capacity: usize,
    shards: Vec<RwLock<HashMap<K, AtomicU64>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    pub fn new(gcra: Gcra, capacity: usize) -> Self {
        KeyedLimiter {
            gcra,
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    pub fn check(&self, key: &K, now: u64) -> Result<(), u64> {
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        {
            let map = shard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(tat) = map.get(key) {
                return self.gcra.check(tat, now);
            }
        }
        let mut map = shard.write().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.shard_capacity {
            map.retain(|_, tat| tat.load(Ordering::Relaxed) > now);
            if map.len() >= self.shard_capacity {
                let oldest = map.iter().min_by_key(|(_, tat)| tat.load(Ordering::Relaxed)).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        let tat = map.entry(key.clone()).or_insert_with(|| AtomicU64::new(0));
        self.gcra.check(tat, now)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().map(|m| m.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = NANOS_PER_SEC;

    #[test]
    fn burst_then_sustained_rate() {
        let g = Gcra::new(10, 5); // one request per 100 ms, 5 at once
        let tat = AtomicU64::new(0);
        let t0 = 1000 * S;
        for i in 0..5 {
            assert!(g.check(&tat, t0).is_ok(), "burst request {i}");
        }
        let wait = g.check(&tat, t0).unwrap_err();
        assert_eq!(wait, 100 * MS, "the 6th waits exactly one interval");
        assert!(g.check(&tat, t0 + 99 * MS).is_err());
        assert!(g.check(&tat, t0 + 100 * MS).is_ok());
        // Sustained: one every 100 ms is always allowed, faster is not.
        let mut t = t0 + 100 * MS;
        for _ in 0..50 {
            t += 100 * MS;
            assert!(g.check(&tat, t).is_ok());
            assert!(g.check(&tat, t).is_err());
        }
        // After a long pause the full burst is back.
        let later = t + 10 * S;
        for _ in 0..5 {
            assert!(g.check(&tat, later).is_ok());
        }
        assert!(g.check(&tat, later).is_err());
    }

    #[test]
    fn per_second_is_a_rate_not_a_period() {
        let g = Gcra::new(100, 1);
        let tat = AtomicU64::new(0);
        let t0 = 5 * S;
        let allowed = (0..1000).filter(|i| g.check(&tat, t0 + i * MS).is_ok()).count();
        assert_eq!(allowed, 100, "100 per second over one second");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(Gcra::retry_after_secs(1), 1);
        assert_eq!(Gcra::retry_after_secs(S), 1);
        assert_eq!(Gcra::retry_after_secs(S + 1), 2);
        let g = Gcra::new(1, 1);
        let tat = AtomicU64::new(0);
        g.check(&tat, 10 * S).unwrap();
        assert_eq!(Gcra::retry_after_secs(g.check(&tat, 10 * S + 300 * MS).unwrap_err()), 1);
    }

    #[test]
    fn keys_are_independent_and_the_table_is_bounded() {
        let l: KeyedLimiter<u32> = KeyedLimiter::new(Gcra::new(1, 1), 64);
        let now = 100 * S;
        assert!(l.check(&1, now).is_ok());
        assert!(l.check(&1, now).is_err());
        assert!(l.check(&2, now).is_ok());
        for k in 0..10_000 {
            let _ = l.check(&k, now + u64::from(k));
        }
        assert!(l.len() <= 64, "table grew to {}", l.len());
        // Expired entries are swept rather than evicting live ones.
        let later = now + 100 * S;
        for k in 20_000..20_100 {
            assert!(l.check(&k, later).is_ok());
        }
        assert!(l.len() <= 64);
    }
}
