//! Exact top-k selection: a bounded heap per (query, worker) and an exact merge.
//!
//! Order: higher score first; equal scores by lower slot first. The order is total, so the
//! result does not depend on how the scan was split across threads.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// A scored slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Ranking key (higher is better).
    pub score: f32,
    /// Storage slot of the vector.
    pub slot: usize,
}

impl Hit {
    /// Total order, best first (`Less` = better).
    fn rank(&self, other: &Hit) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.slot.cmp(&other.slot))
    }
}

/// Heap entry ordered so that the heap's top is the worst kept hit.
#[derive(Debug, Clone, Copy)]
struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.rank(&other.0)
    }
}

/// The best `k` hits seen so far.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
    /// Score a new hit must exceed (or tie with a lower slot) once `k` are kept.
    threshold: f32,
}

impl TopK {
    /// An empty selection of `k` hits.
    pub fn new(k: usize) -> TopK {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
            threshold: f32::NEG_INFINITY,
        }
    }

    /// The score a hit must reach to possibly enter (`−∞` until `k` hits are kept).
    #[inline]
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Offers a hit.
    #[inline]
    pub fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(mut top) = self.heap.peek_mut() {
            if hit.rank(&top.0) == Ordering::Less {
                *top = Worst(hit);
            }
        }
        if self.heap.len() == self.k {
            self.threshold = self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.score);
        }
    }

    /// Adds every hit of `other`.
    pub fn merge(&mut self, other: TopK) {
        for w in other.heap {
            self.push(w.0);
        }
    }

    /// The kept hits, best first.
    pub fn into_sorted(self) -> Vec<Hit> {
        let mut v: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        v.sort_by(Hit::rank);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_and_merges_exactly() {
        let scores: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.5)
            .collect();
        let mut all: Vec<Hit> = scores
            .iter()
            .enumerate()
            .map(|(slot, &score)| Hit { score, slot })
            .collect();
        all.sort_by(Hit::rank);
        let mut merged = TopK::new(10);
        for part in scores.chunks(77).enumerate() {
            let mut t = TopK::new(10);
            for (i, &s) in part.1.iter().enumerate() {
                t.push(Hit {
                    score: s,
                    slot: part.0 * 77 + i,
                });
            }
            merged.merge(t);
        }
        assert_eq!(merged.into_sorted(), all[..10].to_vec());
    }
}
