//! From per-block table estimates to ranking keys, and the mask of those that can enter a top-k.

use super::layout::BLOCK;
use crate::simd::{multiversion, SimdLevel};

/// One query's key parameters for a block of integer sums: `est = delta · sum + base`, and
/// the threshold a key must reach to be offered to the query's top-k.
#[derive(Debug, Clone, Copy)]
pub struct KeyQuery {
    /// Scale of the integer sums.
    pub delta: f32,
    /// Offset of the estimates.
    pub base: f32,
    /// The query's current top-k threshold.
    pub threshold: f32,
}

/// Keys of the block's first `scales.len()` vectors from the estimates `est` of `⟨R q, c⟩`:
/// `s · est`, plus the slot's bias when `biases` is non-empty; returns the bit mask of keys
/// `≥ threshold`.
#[inline(always)]
fn keys_mask(
    est: &[f32; BLOCK],
    scales: &[f32],
    biases: &[f32],
    threshold: f32,
    keys: &mut [f32; BLOCK],
) -> u32 {
    let n = scales.len().min(BLOCK);
    if !biases.is_empty() {
        for v in 0..n {
            keys[v] = scales[v] * est[v] + biases[v];
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
    /// Portable [`keys_from_sums`].
    pub fn keys_from_sums_portable(
        sums: &[i32; BLOCK],
        delta: f32,
        base: f32,
        scales: &[f32],
        biases: &[f32],
        threshold: f32,
        keys: &mut [f32; BLOCK],
    ) -> u32 {
        let mut est = [0.0f32; BLOCK];
        for (e, &s) in est.iter_mut().zip(sums) {
            *e = delta * s as f32 + base;
        }
        keys_mask(&est, scales, biases, threshold, keys)
    }
}

/// [`keys_from_estimates`] for integer sums: `est = delta · sums + base` (bit-exact at
/// every level: the same float operations in the same order).
#[allow(clippy::too_many_arguments)]
pub fn keys_from_sums(
    level: SimdLevel,
    sums: &[i32; BLOCK],
    delta: f32,
    base: f32,
    scales: &[f32],
    biases: &[f32],
    threshold: f32,
    keys: &mut [f32; BLOCK],
) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if level.supported() == SimdLevel::Avx512
        && scales.len() == BLOCK
        && (biases.is_empty() || biases.len() == BLOCK)
    {
        // SAFETY: AVX-512 F was detected (`supported`); the slices hold a full block.
        return unsafe { keys_avx512(sums, delta, base, scales, biases, threshold, keys) };
    }
    keys_from_sums_portable(level, sums, delta, base, scales, biases, threshold, keys)
}

/// AVX-512 [`keys_from_sums`] for a full block: two 16-lane halves, mask from `vcmpps`.
///
/// # Safety
/// The CPU must support AVX-512 F; `scales` has [`BLOCK`] entries and `biases` none or [`BLOCK`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn keys_avx512(
    sums: &[i32; BLOCK],
    delta: f32,
    base: f32,
    scales: &[f32],
    biases: &[f32],
    threshold: f32,
    keys: &mut [f32; BLOCK],
) -> u32 {
    use std::arch::x86_64::*;
    let q = KeyQuery {
        delta,
        base,
        threshold,
    };
    let mut mask = 0u32;
    for h in 0..2 {
        // SAFETY: `16 h + 16 ≤ BLOCK` for the sums and keys (caller's contract for the rest).
        unsafe {
            let s = _mm512_loadu_si512(sums.as_ptr().add(16 * h).cast());
            mask |= (x86::key_half(s, &q, scales, biases, h, keys) as u32) << (16 * h);
        }
    }
    mask
}

/// The AVX-512 key formula, shared by [`keys_from_sums`] and the fused scan kernels.
#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{KeyQuery, BLOCK};
    use std::arch::x86_64::*;

    /// Keys of vectors `16 h .. 16 h + 16` from their integer sums `s` (the same float
    /// operations, in the same order, as the portable path: bit-exact), written to `keys`;
    /// returns the mask of keys `≥ q.threshold`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F; `h < 2`, `scales` has [`BLOCK`] entries and `biases`
    /// none or [`BLOCK`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn key_half(
        s: __m512i,
        q: &KeyQuery,
        scales: &[f32],
        biases: &[f32],
        h: usize,
        keys: &mut [f32; BLOCK],
    ) -> u16 {
        let est = _mm512_add_ps(
            _mm512_mul_ps(_mm512_set1_ps(q.delta), _mm512_cvtepi32_ps(s)),
            _mm512_set1_ps(q.base),
        );
        // SAFETY: `16 h + 16 ≤ BLOCK` entries of `scales`, `biases` (when given) and `keys`.
        unsafe {
            let sc = _mm512_loadu_ps(scales.as_ptr().add(16 * h));
            let key = if biases.is_empty() {
                _mm512_mul_ps(sc, est)
            } else {
                let bias = _mm512_loadu_ps(biases.as_ptr().add(16 * h));
                _mm512_add_ps(_mm512_mul_ps(sc, est), bias)
            };
            _mm512_storeu_ps(keys.as_mut_ptr().add(16 * h), key);
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(key, _mm512_set1_ps(q.threshold))
        }
    }
}

multiversion! {
    /// Keys `s · est` (plus the bias, when `biases` is non-empty) of the block's
    /// first `scales.len()` vectors; returns the bit mask of keys `≥ threshold`.
    pub fn keys_from_estimates(
        est: &[f32; BLOCK],
        scales: &[f32],
        biases: &[f32],
        threshold: f32,
        keys: &mut [f32; BLOCK],
    ) -> u32 {
        keys_mask(est, scales, biases, threshold, keys)
    }
}
