//! Smooth weighted round robin (nginx's algorithm).
//!
//! Each pick adds every eligible member's weight to its running score, chooses the highest and
//! subtracts the total from it. Over a cycle the counts are exactly proportional to the weights,
//! and picks interleave: weights 8:2 give `a a b a a` repeated, never `weight` copies in a row.
//! State is one integer per member, whatever the weights (a precomputed schedule would grow with
//! them). The update touches every member, so it runs under a mutex held for a few nanoseconds.

use std::sync::Mutex;

pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> Self {
        SmoothWeighted {
            weights: weights.iter().map(|&w| i64::from(w)).collect(),
            current: Mutex::new(vec![0; weights.len()]),
        }
    }

    /// The next member among `eligible` (a bitmask of indexes).
    pub fn next(&self, eligible: u64) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        let mut best: Option<usize> = None;
        for (i, w) in self.weights.iter().enumerate() {
            if eligible & (1 << i) == 0 {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(weights: &[u32], n: usize, eligible: u64) -> Vec<usize> {
        let s = SmoothWeighted::new(weights);
        (0..n).map(|_| s.next(eligible).unwrap()).collect()
    }

    #[test]
    fn exact_proportions_and_interleaving() {
        let picks = run(&[8, 2], 50, 0b11);
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 40);
        let longest = picks.chunk_by(|a, b| a == b).map(<[usize]>::len).max().unwrap();
        assert!(longest <= 4, "run of {longest}: {picks:?}");
        let picks = run(&[5, 3, 2], 100, 0b111);
        assert_eq!([0, 1, 2].map(|k| picks.iter().filter(|&&i| i == k).count()), [50, 30, 20]);
        // Huge weights need no more memory and stay exact.
        let picks = run(&[65_535, 1], 65_536, 0b11);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn ineligible_members_are_skipped() {
        let picks = run(&[8, 2, 5], 10, 0b101);
        assert!(picks.iter().all(|&i| i != 1));
    }
}
