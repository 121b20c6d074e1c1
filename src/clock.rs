//! Monotonic time as plain nanoseconds, so algorithms can take `now: u64` as an argument and
//! tests can inject any instant without sleeping.

use std::sync::OnceLock;
use std::time::Instant;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds since the first call in this process (monotonic; fits u64 for 584 years).
pub fn now() -> u64 {
    at(Instant::now())
}

/// `instant` on this clock: lets a caller that already read the time for another purpose (a
/// latency measurement) reuse it instead of reading the clock again.
pub fn at(instant: Instant) -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    instant.saturating_duration_since(origin).as_nanos() as u64
}
