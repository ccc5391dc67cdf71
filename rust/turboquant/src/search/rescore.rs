//! Exact re-scoring of scan candidates: from the codes with `f32` tables (undoing the `u8`
//! table rounding) and, opt-in, from the fp16 originals.

use super::index::{Index, Metric};
use super::layout::{QueryTables, BLOCK};
use super::topk::{Hit, TopK};
use crate::simd::{kernels, SimdLevel};
use half::f16;

impl Index {
    /// The best `k` of `hits` re-scored from the codes with the query's `f32` tables (the same
    /// keys as the scan, without the `u8` rounding).
    pub(super) fn refine_hits(&self, t: &QueryTables, hits: Vec<Hit>, k: usize) -> Vec<Hit> {
        let bb = self.layout.block_bytes();
        let codes = self.codes.as_slice();
        let centroids = self.quantizer.codebook().centroids();
        let mut top = TopK::new(k);
        for h in hits {
            let b = h.slot / BLOCK;
            let block = &codes[b * bb..(b + 1) * bb];
            let est = t.exact_score(&self.layout, block, h.slot % BLOCK, centroids);
            let bias = self.biases.get(h.slot).copied().unwrap_or(0.0);
            let score = self.scales[h.slot] * est + bias;
            top.push(Hit {
                score,
                slot: h.slot,
            });
        }
        top.into_sorted()
    }

    /// The best `k` of `hits` re-scored exactly from the fp16 originals. Keys: `⟨q, x⟩` (ip,
    /// cosine on normalized rows) or `−‖q − x‖²` (L2).
    pub(super) fn rerank_hits(
        &self,
        level: SimdLevel,
        q: &[f32],
        hits: Vec<Hit>,
        k: usize,
    ) -> Vec<Hit> {
        let d = self.dim();
        let orig = self.originals.as_slice();
        let mut row = vec![0.0f32; d];
        let mut top = TopK::new(k);
        for h in hits {
            let bytes = &orig[2 * d * h.slot..2 * d * (h.slot + 1)];
            for (r, c) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *r = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
            let score = if self.metric == Metric::L2 {
                for (r, &x) in row.iter_mut().zip(q) {
                    *r -= x;
                }
                -kernels::sum_squares(level, &row)
            } else {
                kernels::dot(level, q, &row)
            };
            top.push(Hit {
                score,
                slot: h.slot,
            });
        }
        top.into_sorted()
    }
}
