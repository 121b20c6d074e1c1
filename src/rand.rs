//! A small, fast, non-cryptographic random source (xorshift64*), for mock failures, the random
//! strategy and retry jitter. Nothing secret depends on it.

use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0);

/// A uniformly distributed `u64`. Lock-free: a relaxed load/store race between threads only
/// means two callers may see the same value, which is harmless for load spreading.
pub fn next_u64() -> u64 {
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = seed();
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A float in [0, 1).
pub fn next_f64() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// A value in `0..n` (n > 0).
pub fn below(n: u64) -> u64 {
    ((next_u64() as u128 * n as u128) >> 64) as u64
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
}
