//! From per-block table estimates to ranking keys, and the mask of those that can enter a top-k.

use super::layout::BLOCK;
use crate::simd::multiversion;

multiversion! {
    /// `est[v] = delta · sums[v] + base`: the `u8`-table sums back on the `f32` scale.
    pub fn dequantize_sums(sums: &[u32; BLOCK], delta: f32, base: f32, est: &mut [f32; BLOCK]) {
        for (e, &s) in est.iter_mut().zip(sums) {
            *e = delta * s as f32 + base;
        }
    }
}

multiversion! {
    /// Keys of the block's first `scales.len()` vectors: `s · est` (inner product) or, with
    /// `sq_norms` non-empty (L2), `2 s · est − ‖x‖²`. Returns the bit mask of keys `≥ threshold`.
    pub fn keys_at_least(
        est: &[f32; BLOCK],
        scales: &[f32],
        sq_norms: &[f32],
        threshold: f32,
        keys: &mut [f32; BLOCK],
    ) -> u32 {
        let n = scales.len().min(BLOCK);
        if sq_norms.is_empty() {
            for v in 0..n {
                keys[v] = scales[v] * est[v];
            }
        } else {
            for v in 0..n {
                keys[v] = 2.0 * scales[v] * est[v] - sq_norms[v];
            }
        }
        let mut mask = 0u32;
        for (v, &k) in keys.iter().enumerate().take(n) {
            mask |= ((k >= threshold) as u32) << v;
        }
        mask
    }
}
