//! The SIMD kernels: each is one body, compiled per [`SimdLevel`] by `multiversion!`.
//!
//! Reductions keep [`LANES`] independent accumulators and combine them in a fixed tree, so
//! the summation order (and hence every rounding) is the same at every level.

use super::{multiversion, SimdLevel};

/// Independent accumulators in reductions: one AVX-512 register of `f32`.
pub const LANES: usize = 16;

#[inline(always)]
fn tree_sum(acc: [f32; LANES]) -> f32 {
    let mut a = acc;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            a[i] += a[i + width];
        }
        width /= 2;
    }
    a[0]
}

#[inline(always)]
fn fwht8(c: &mut [f32]) {
    let (a0, a1, a2, a3) = (c[0] + c[1], c[0] - c[1], c[2] + c[3], c[2] - c[3]);
    let (a4, a5, a6, a7) = (c[4] + c[5], c[4] - c[5], c[6] + c[7], c[6] - c[7]);
    let (b0, b1, b2, b3) = (a0 + a2, a1 + a3, a0 - a2, a1 - a3);
    let (b4, b5, b6, b7) = (a4 + a6, a5 + a7, a4 - a6, a5 - a7);
    c[0] = b0 + b4;
    c[1] = b1 + b5;
    c[2] = b2 + b6;
    c[3] = b3 + b7;
    c[4] = b0 - b4;
    c[5] = b1 - b5;
    c[6] = b2 - b6;
    c[7] = b3 - b7;
}

multiversion! {
    /// In-place unnormalized Walsh-Hadamard transform, natural (Sylvester) order, scaled by `scale`
    /// at the end. `x.len()` must be a power of two (the caller guarantees it).
    pub fn fwht_scaled(x: &mut [f32], scale: f32) {
        let n = x.len();
        let mut h = 1;
        if n >= 8 {
            for c in x.chunks_exact_mut(8) {
                fwht8(c);
            }
            h = 8;
        }
        while h < n {
            for blk in x.chunks_exact_mut(2 * h) {
                let (a, b) = blk.split_at_mut(h);
                for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                    let (p, q) = (*u, *v);
                    *u = p + q;
                    *v = p - q;
                }
            }
            h *= 2;
        }
        if scale != 1.0 {
            for v in x.iter_mut() {
                *v *= scale;
            }
        }
    }
}

multiversion! {
    /// `x[i] *= s[i]` (the random sign flips of the rotation).
    pub fn mul_assign(x: &mut [f32], s: &[f32]) {
        for (v, m) in x.iter_mut().zip(s) {
            *v *= *m;
        }
    }
}

multiversion! {
    /// `Σ a[i]·b[i]` with a fixed summation order.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let n = a.len().min(b.len());
        let full = n / LANES * LANES;
        for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
            for l in 0..LANES {
                acc[l] += ca[l] * cb[l];
            }
        }
        for i in full..n {
            acc[i - full] += a[i] * b[i];
        }
        tree_sum(acc)
    }
}

/// `Σ x[i]²` with a fixed summation order.
pub fn sum_squares(level: SimdLevel, x: &[f32]) -> f32 {
    dot(level, x, x)
}

multiversion! {
    /// `Σ_i table[i·k + codes[i]]`: a score from per-coordinate lookup tables of `k` entries.
    pub fn lut_sum(table: &[f32], k: usize, codes: &[u8]) -> f32 {
        let mut acc = [0.0f32; LANES];
        for (i, &c) in codes.iter().enumerate() {
            acc[i % LANES] += table[i * k + c as usize];
        }
        tree_sum(acc)
    }
}
