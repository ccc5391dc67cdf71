//! From per-block table estimates to ranking keys, and the mask of those that can enter a top-k.

use super::layout::BLOCK;
use crate::simd::multiversion;

/// Keys of the block's first `scales.len()` vectors from the estimates `est` of `⟨R q, c⟩`:
/// `s · est` or, with `sq_norms` non-empty (L2), `2 s · est − ‖x‖²`; returns the bit mask of
/// keys `≥ threshold`.
#[inline(always)]
fn keys_mask(
    est: &[f32; BLOCK],
    scales: &[f32],
    sq_norms: &[f32],
    threshold: f32,
    keys: &mut [f32; BLOCK],
) -> u32 {
    let n = scales.len().min(BLOCK);
    if !sq_norms.is_empty() {
        for v in 0..n {
            keys[v] = 2.0 * scales[v] * est[v] - sq_norms[v];
        }
    } else if let Ok(s) = <&[f32; BLOCK]>::try_from(scales) {
        for v in 0..BLOCK {
            keys[v] = s[v] * est[v];
        }
    } else {
        for v in 0..n {
            keys[v] = scales[v] * est[v];
        }
    }
    let mut mask = 0u32;
    for (v, &k) in keys.iter().enumerate().take(n) {
        mask |= ((k >= threshold) as u32) << v;
    }
    mask
}

multiversion! {
    /// [`keys_from_estimates`] for `u8`-table sums: `est = delta · sums + base`.
    pub fn keys_from_sums(
        sums: &[u32; BLOCK],
        delta: f32,
        base: f32,
        scales: &[f32],
        sq_norms: &[f32],
        threshold: f32,
        keys: &mut [f32; BLOCK],
    ) -> u32 {
        let mut est = [0.0f32; BLOCK];
        for (e, &s) in est.iter_mut().zip(sums) {
            *e = delta * s as f32 + base;
        }
        keys_mask(&est, scales, sq_norms, threshold, keys)
    }
}

multiversion! {
    /// Keys `s · est` (or `2 s · est − ‖x‖²` for L2, when `sq_norms` is non-empty) of the block's
    /// first `scales.len()` vectors; returns the bit mask of keys `≥ threshold`.
    pub fn keys_from_estimates(
        est: &[f32; BLOCK],
        scales: &[f32],
        sq_norms: &[f32],
        threshold: f32,
        keys: &mut [f32; BLOCK],
    ) -> u32 {
        keys_mask(est, scales, sq_norms, threshold, keys)
    }
}
