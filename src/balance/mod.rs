//! Choosing the upstream for one attempt: filter what may be picked, let the group's strategy
//! choose, then acquire (in-flight slot, rate token, breaker admission).
//!
//! Filtering is read-only, so no breaker probe or rate token is spent on an upstream that is not
//! chosen; acquiring can still fail under a race, in which case the next choice is tried.
//! Upstreams are addressed by their index in the group and a request's tried set is a `u64`
//! bitmask (groups hold at most 64 upstreams), so a pick allocates nothing.

mod smooth_weighted;

use crate::config::Strategy;
use crate::ratelimit::Gcra;
use crate::runtime::{Group, Member};
use crate::upstream::breaker::Admission;
use crate::upstream::load::InflightGuard;
use smooth_weighted::SmoothWeighted;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The strategy state of one group.
pub struct Balancer {
    strategy: Strategy,
    cursor: AtomicUsize,
    smooth: SmoothWeighted,
}

impl Balancer {
    pub fn new(strategy: Strategy, weights: &[u32]) -> Self {
        Balancer { strategy, cursor: AtomicUsize::new(0), smooth: SmoothWeighted::new(weights) }
    }

    /// Chooses one member among `eligible` (bit `i` set = member `i` may be chosen).
    pub fn choose(&self, members: &[Member], eligible: u64, now: u64) -> Option<usize> {
        if eligible == 0 {
            return None;
        }
        let n = members.len();
        let has = |i: usize| eligible & (1 << i) != 0;
        match self.strategy {
            Strategy::Roundrobin => {
                // Strict rotation over the whole list, skipping what is not eligible, so healthy
                // upstreams keep their turn order when another one drops out.
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                (0..n).map(|k| (start + k) % n).find(|&i| has(i))
            }
            Strategy::WeightedRoundrobin => self.smooth.next(eligible),
            Strategy::Random => {
                let k = crate::rand::below(u64::from(eligible.count_ones())) as usize;
                (0..n).filter(|&i| has(i)).nth(k)
            }
            Strategy::ResponseAware => (0..n)
                .filter(|&i| has(i))
                .map(|i| (i, members[i].upstream.load.score(now)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i),
            Strategy::Failover => (0..n).find(|&i| has(i)),
        }
    }
}

/// An acquired upstream for one attempt.
pub struct Picked {
    pub index: usize,
    pub admission: Admission,
    /// Held until the response body ends or is dropped.
    pub guard: InflightGuard,
}

/// Why nothing could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every candidate is over its request-rate cap; the soonest frees up after this many ns.
    RateLimited { wait: u64 },
    /// Every candidate is at `max_concurrency`.
    Full,
    /// Breakers open or health checks failing; the soonest open breaker lets a request through
    /// after this many ns (none is open: health checks keep them all out).
    Down { reopens_in: Option<u64> },
}

/// Whether an attempt may go back to an upstream the request already tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    Never,
    /// When every available upstream was tried; except those in the mask (still inside the
    /// `Retry-After` they asked for).
    Except(u64),
}

/// Picks and acquires an upstream of `group` for an attempt at `now`. Upstreams in `tried` are
/// avoided; when every available one was tried, `reuse` says which may be chosen again.
pub fn pick(group: &Group, tried: u64, reuse: Reuse, now: u64) -> Result<Picked, Unavailable> {
    let members = &group.members;
    let mut available = 0u64;
    let (mut rate_limited, mut full) = (0u32, 0u32);
    let mut min_wait = u64::MAX;
    let mut reopens_in = u64::MAX;
    for (i, m) in members.iter().enumerate() {
        let u = &m.upstream;
        if !u.healthy.load(Ordering::Acquire) {
            continue;
        }
        if let Some(b) = u.breaker.as_ref().filter(|b| !b.available(now)) {
            // A pick its breaker kept from the upstream: LLMProxy counted the call it refused.
            m.metrics.breaker_calls[crate::metrics::families::CALL_REJECTED].inc();
            reopens_in = reopens_in.min(b.reopens_in(now).unwrap_or(0));
            continue;
        }
        if u.max_concurrency.is_some_and(|max| u.load.inflight() >= max) {
            full += 1;
            continue;
        }
        if let Some((gcra, tat)) = &u.rate {
            if let Err(wait) = gcra.ready(tat, now) {
                rate_limited += 1;
                min_wait = min_wait.min(wait);
                continue;
            }
        }
        available |= 1 << i;
    }
    let fresh = available & !tried;
    let mut pool = match reuse {
        _ if fresh != 0 => fresh,
        Reuse::Never => 0,
        Reuse::Except(held) => available & !held,
    };
    while let Some(i) = group.balancer.choose(members, pool, now) {
        pool &= !(1 << i);
        let u = &members[i].upstream;
        let Some(guard) = u.load.try_begin(u.max_concurrency) else {
            full += 1;
            continue;
        };
        if let Some((gcra, tat)) = &u.rate {
            if let Err(wait) = gcra.check(tat, now) {
                rate_limited += 1;
                min_wait = min_wait.min(wait);
                continue;
            }
        }
        let admission = match &u.breaker {
            None => Admission::Allowed { period: 0 },
            Some(b) => {
                let (admission, transition) = b.admit(now);
                let metrics = &members[i].metrics;
                crate::upstream::note_transition(&u.name, metrics, transition);
                if admission == Admission::Rejected {
                    metrics.breaker_calls[crate::metrics::families::CALL_REJECTED].inc();
                    if let Some((gcra, tat)) = &u.rate {
                        gcra.refund(tat);
                    }
                    continue;
                }
                admission
            }
        };
        return Ok(Picked { index: i, admission, guard });
    }
    // A capped upstream frees up soonest and can say when: prefer that answer.
    Err(if rate_limited > 0 {
        Unavailable::RateLimited { wait: min_wait }
    } else if full > 0 {
        Unavailable::Full
    } else {
        Unavailable::Down { reopens_in: (reopens_in != u64::MAX).then_some(reopens_in) }
    })
}

/// Seconds for `Retry-After` from a rate-limit wait.
pub fn retry_after(wait: u64) -> u64 {
    Gcra::retry_after_secs(wait)
}
