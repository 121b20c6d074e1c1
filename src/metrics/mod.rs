//! Prometheus metrics: atomic counters and histograms behind pre-built label handles, and the
//! text-format encoder that renders them at scrape time.
//!
//! Recording a sample is an atomic add on a handle built with the runtime — no lookup, no string
//! formatting, no allocation. Label values (forward, group and upstream *names*, never URLs) are
//! written only when scraping.

pub mod encode;
pub mod families;
pub mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) fitted to LLM latencies: milliseconds for a cached embedding, minutes
/// for a long reasoning stream. Every bound LLMProxy's histograms have is here too, so a
/// dashboard's `le="20"` still finds its bucket.
pub const BUCKETS: [f64; 17] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A histogram of seconds: one atomic count per bucket (not cumulative; summed when scraping),
/// the count, and the sum as f64 bits updated by compare-exchange.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        // Values above the last bound count only in +Inf, which is `count`.
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut old = self.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(old) + seconds).to_bits();
            match self.sum.compare_exchange_weak(old, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    /// Cumulative bucket counts, in `BUCKETS` order.
    pub fn cumulative(&self) -> [u64; BUCKETS.len()] {
        let mut total = 0;
        std::array::from_fn(|i| {
            total += self.buckets[i].load(Ordering::Relaxed);
            total
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_when_read() {
        let h = Histogram::default();
        for s in [0.001, 0.004, 0.2, 3.0, 1000.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c[0], 2); // ≤ 5 ms
        assert_eq!(c[5], 3); // ≤ 250 ms
        assert_eq!(c[9], 4); // ≤ 5 s
        assert_eq!(c[BUCKETS.len() - 1], 4, "1000 s is only in +Inf");
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 1003.205).abs() < 1e-9);
    }
}
