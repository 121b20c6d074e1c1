//! How many bytes of request bodies a forward holds in memory at once (`max_buffered_bodies`).
//!
//! Bodies are buffered whole, so that a retry can send them again; `max_body_size` bounds one,
//! and this bounds them all together. Without it, a few hundred concurrent uploads near the size
//! limit — one HTTP/2 connection can carry 200 — hold gigabytes. A request whose body would
//! exceed the budget gets 503 with `Retry-After: 1` while the others go on.

use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes held, shared by the runtimes a reload builds (so requests in flight across a
/// reload still count).
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicU64,
}

impl BodyBudget {
    /// Reserves `bytes` more for `reservation` if the total stays within `limit`.
    /// Compared and set, so that a reservation refused never counts, even for a moment, against
    /// others being made.
    pub fn reserve<'a>(&'a self, reservation: &mut Reservation<'a>, bytes: u64, limit: u64) -> bool {
        let fits = |held: u64| held.checked_add(bytes).filter(|&total| total <= limit);
        if self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, fits).is_err() {
            return false;
        }
        reservation.budget = Some(self);
        reservation.bytes += bytes;
        true
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// One request's share of the budget, given back when the request no longer holds its body.
#[derive(Default)]
pub struct Reservation<'a> {
    budget: Option<&'a BodyBudget>,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.held.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_are_given_back() {
        let budget = BodyBudget::default();
        let mut a = Reservation::default();
        assert!(budget.reserve(&mut a, 600, 1000));
        let mut b = Reservation::default();
        assert!(!budget.reserve(&mut b, 500, 1000), "600 + 500 is over 1000");
        assert!(budget.reserve(&mut b, 400, 1000));
        assert!(budget.reserve(&mut a, 0, 1000));
        assert_eq!(budget.held(), 1000);
        drop(a);
        assert_eq!(budget.held(), 400);
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
