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
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// A limiter with its one word of state, continuing what was owed to `previous` (the
    /// limiter it replaces on a configuration change, if any): a change forgives no debt, and
    /// holds none against the new limits that they could not have run up. Under changed limits
    /// the requests owed are owed at the new rate, and at most a full burst of them — raising a
    /// limit must not lock the key out for the minutes the old one had queued.
    pub fn with_state(
        per_second: u32,
        burst: u32,
        previous: Option<&(Gcra, AtomicU64)>,
        now: u64,
    ) -> (Gcra, AtomicU64) {
        let gcra = Gcra::new(per_second, burst);
        let tat = match previous {
            None => 0,
            Some((old, tat)) if *old == gcra => tat.load(Ordering::Acquire),
            Some((old, tat)) => {
                let owed_requests = tat.load(Ordering::Acquire).saturating_sub(now) / old.interval.max(1);
                now + owed_requests.saturating_mul(gcra.interval).min(gcra.tolerance + gcra.interval)
            }
        };
        (gcra, AtomicU64::new(tat))
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

    /// Gives back a token [`check`](Self::check) took for a request that was then not sent (the
    /// upstream's breaker refused it in the same pick): a request never sent must not count
    /// against the rate. Moving the TAT back one interval undoes exactly one admission; when the
    /// check had started from a TAT in the past, the result is `now`-ish, which admits the same
    /// as the stale TAT did.
    pub fn refund(&self, tat: &AtomicU64) {
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| Some(t.saturating_sub(self.interval)));
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

/// Neighbouring slots examined for a key before evicting: short enough to stay a few cache
/// lines, long enough that a table at 90% load rarely evicts a live key.
const PROBES: usize = 8;

/// GCRA per key (client IP, client key) in a fixed-size, lock-free table.
///
/// Each slot is two atomic words: a 64-bit fingerprint of the key and its TAT. A key whose TAT
/// is in the past is indistinguishable from a key never seen, so such a slot is simply taken
/// over by the next key that probes it — idle keys are swept as a side effect of lookups, with
/// no sweeper task. When all probed slots hold live keys, the one closest to expiry is evicted
/// (it loses at most its remaining debt). Memory is `capacity × 16` bytes whatever the traffic,
/// so a spray of source addresses cannot grow it, and a check takes no lock and allocates
/// nothing. Two keys with the same 64-bit fingerprint would share a bucket; with a per-process
/// random hash key that is negligible.
pub struct KeyedLimiter<K> {
    gcra: Gcra,
    slots: Box<[Slot]>,
    mask: usize,
    hasher: std::collections::hash_map::RandomState,
    _key: std::marker::PhantomData<fn(&K)>,
}

#[derive(Default)]
struct Slot {
    /// Fingerprint of the key, 0 when the slot was never used.
    key: AtomicU64,
    tat: AtomicU64,
}

impl<K: Hash> KeyedLimiter<K> {
    /// `capacity` is rounded up to a power of two.
    pub fn new(gcra: Gcra, capacity: usize) -> Self {
        let size = capacity.max(PROBES).next_power_of_two();
        KeyedLimiter {
            gcra,
            slots: (0..size).map(|_| Slot::default()).collect(),
            mask: size - 1,
            hasher: Default::default(),
            _key: std::marker::PhantomData,
        }
    }

    pub fn check(&self, key: &K, now: u64) -> Result<(), u64> {
        let hash = self.hasher.hash_one(key);
        let fingerprint = hash | 1; // never 0, which marks an unused slot
        let start = (hash >> 7) as usize;
        let probed = |i: usize| &self.slots[(start + i) & self.mask];
        // The key's own slot first, wherever it is among the probes: claiming an expired slot
        // met earlier would hand a throttled key a fresh bucket.
        if let Some(slot) = (0..PROBES).map(probed).find(|s| s.key.load(Ordering::Acquire) == fingerprint) {
            return self.gcra.check(&slot.tat, now);
        }
        let mut victim: Option<(&Slot, u64, u64)> = None;
        for slot in (0..PROBES).map(probed) {
            let k = slot.key.load(Ordering::Acquire);
            if k == fingerprint {
                // Claimed by a concurrent check of the same key.
                return self.gcra.check(&slot.tat, now);
            }
            let tat = slot.tat.load(Ordering::Acquire);
            if k == 0 || tat <= now {
                // Unused or expired: an expired TAT already reads as "fresh" to GCRA, so taking
                // the slot needs no reset.
                if slot.key.compare_exchange(k, fingerprint, Ordering::AcqRel, Ordering::Acquire).is_ok()
                    || slot.key.load(Ordering::Acquire) == fingerprint
                {
                    return self.gcra.check(&slot.tat, now);
                }
                continue;
            }
            if victim.is_none_or(|(_, _, t)| tat < t) {
                victim = Some((slot, k, tat));
            }
        }
        if let Some((slot, k, _)) = victim {
            if slot.key.compare_exchange(k, fingerprint, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                slot.tat.store(0, Ordering::Release);
                return self.gcra.check(&slot.tat, now);
            }
        }
        // Every probed slot is contested this instant: admit rather than refuse a client we
        // cannot track (failing open under an address spray keeps real clients served).
        Ok(())
    }

    /// Slots holding a key whose TAT is still ahead of `now` (for tests and metrics).
    pub fn live(&self, now: u64) -> usize {
        self.slots.iter().filter(|s| s.key.load(Ordering::Relaxed) != 0 && s.tat.load(Ordering::Relaxed) > now).count()
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

/// The key a client address is limited by: an IPv4 address itself, an IPv6 address by its /64.
/// One IPv6 host usually holds a whole /64 (2^64 addresses, each a fresh bucket if keyed alone),
/// so by address its limit would be no limit; a /64 is what one IPv4 address is, one site.
pub fn client_network(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)).into()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(client_network(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_network(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), ip("2001:db8:1:2::"));
        assert_ne!(client_network(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        for own in ["10.1.2.3", "::ffff:10.1.2.3"] {
            assert_eq!(client_network(ip(own)), ip(own), "IPv4 (mapped or not): the address itself");
        }
    }

    #[test]
    fn a_changed_limit_carries_the_debt_at_its_own_rate_and_at_most_a_burst() {
        let t0 = 1_000 * NANOS_PER_SEC;
        let old = (Gcra::new(1, 200), AtomicU64::new(0));
        for _ in 0..200 {
            assert!(old.0.check(&old.1, t0).is_ok());
        }
        assert!(old.0.check(&old.1, t0).is_err(), "200 s queued at one per second");
        // Raised to 10/s, burst 20: at most a burst is owed, so a request passes 0.1 s later —
        // not 200 s later.
        let (gcra, tat) = Gcra::with_state(10, 20, Some(&old), t0);
        assert!(gcra.check(&tat, t0).is_err());
        assert!(gcra.check(&tat, t0 + NANOS_PER_SEC / 10).is_ok());
        // Unchanged limits carry the state as it is; a debt-free limiter carries none.
        let (same, same_tat) = Gcra::with_state(1, 200, Some(&old), t0);
        assert_eq!(same.check(&same_tat, t0), Err(NANOS_PER_SEC));
        let idle = (Gcra::new(1, 5), AtomicU64::new(0));
        let (lower, lower_tat) = Gcra::with_state(1, 1, Some(&idle), t0);
        assert!(lower.check(&lower_tat, t0).is_ok());
    }

    #[test]
    fn a_refunded_token_can_be_taken_again() {
        let (gcra, tat) = (Gcra::new(1, 2), AtomicU64::new(0));
        let t0 = 1_000 * NANOS_PER_SEC;
        assert!(gcra.check(&tat, t0).is_ok());
        assert!(gcra.check(&tat, t0).is_ok());
        assert!(gcra.check(&tat, t0).is_err(), "the burst of two is spent");
        gcra.refund(&tat);
        assert!(gcra.check(&tat, t0).is_ok(), "the refunded one is there again");
        assert!(gcra.check(&tat, t0).is_err(), "and only that one");
    }

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
        assert_eq!(l.capacity(), 64, "memory is fixed whatever the number of keys");
        assert!(l.live(now) <= 64);
        // Expired entries are reused: after the window every new key starts fresh.
        let later = now + 100 * S;
        assert_eq!(l.live(later), 0);
        for k in 20_000..20_040 {
            assert!(l.check(&k, later).is_ok(), "fresh key {k}");
        }
        // A key seen recently is still limited: a spray of new keys does not reset it while
        // there is room.
        let l: KeyedLimiter<u32> = KeyedLimiter::new(Gcra::new(1, 1), 4096);
        assert!(l.check(&7, now).is_ok());
        for k in 100..1100 {
            let _ = l.check(&k, now);
        }
        assert!(l.check(&7, now).is_err());
    }

    #[test]
    fn a_throttled_key_keeps_its_slot_when_an_earlier_probe_slot_expires() {
        let t0 = 100 * S;
        for key in 100..116u32 {
            // A table of exactly PROBES slots: seven keys seen at t0, then `key` takes the last
            // free slot, which is usually not the first one its probe visits.
            let l: KeyedLimiter<u32> = KeyedLimiter::new(Gcra::new(1, 1), PROBES);
            for other in 0..7u32 {
                assert!(l.check(&other, t0).is_ok());
            }
            assert!(l.check(&key, t0 + 900 * MS).is_ok());
            // The others' slots have expired; `key` is still within its interval.
            assert!(l.check(&key, t0 + 1200 * MS).is_err(), "key {key} got a fresh bucket");
        }
    }
}
