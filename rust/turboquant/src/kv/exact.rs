//! Full-precision tokens joined into the codes' softmax: the exact sink tokens, a residual
//! window and the current step's tokens that a cache keeps unquantized.
//!
//! Each query row's exact part is one softmax over its allowed tokens (normalised output and
//! log-sum-exp), then merged with the codes' part through their log-sum-exps, the same merge
//! as the split-KV partials.

use super::kernels;
use crate::error::{Error, Result};
use crate::simd::kernels::LANES;
use crate::simd::{multiversion, SimdLevel};

/// Full-precision tokens attended together with the stored codes ([`super::AttendParams`]).
#[derive(Debug, Clone, Copy)]
pub struct ExactSegment<'a> {
    /// Tokens `E` per stream.
    pub tokens: usize,
    /// Keys `B × H_kv × E × D`, f32, as the model produced them (not centred, not rotated).
    pub keys: &'a [f32],
    /// Values, the same shape.
    pub values: &'a [f32],
    /// `B × Q × E`: non-zero where query `i` of batch row `b` attends token `e` (causality,
    /// sliding window and padding already applied by the caller).
    pub allowed: &'a [u8],
}

impl ExactSegment<'_> {
    /// Checks the shapes against `b` batch rows, `h` KV heads, `ql` queries and head dim `d`,
    /// and that keys and values are finite.
    pub(super) fn check(&self, b: usize, h: usize, ql: usize, d: usize) -> Result<()> {
        let kv = b
            .checked_mul(h)
            .and_then(|v| v.checked_mul(self.tokens))
            .and_then(|v| v.checked_mul(d))
            .ok_or_else(|| Error::InvalidParameter("exact segment too large".into()))?;
        if self.keys.len() != kv || self.values.len() != kv {
            return Err(Error::ShapeMismatch(format!(
                "exact keys and values must hold {b}×{h}×{}×{d} = {kv} values, got {} and {}",
                self.tokens,
                self.keys.len(),
                self.values.len()
            )));
        }
        if self.allowed.len() != b * ql * self.tokens {
            return Err(Error::ShapeMismatch(format!(
                "the exact mask must hold {b}×{ql}×{} values, got {}",
                self.tokens,
                self.allowed.len()
            )));
        }
        // branch-free (vectorizes): any value with an all-ones exponent is NaN or ±Inf
        let exp_ones = |x: &[f32]| {
            x.iter().fold(0u32, |a, v| {
                a | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
            })
        };
        if exp_ones(self.keys) | exp_ones(self.values) != 0 {
            return Err(Error::NonFinite(
                "exact keys or values hold NaN or Inf".into(),
            ));
        }
        Ok(())
    }
}

multiversion! {
    /// One query row's softmax over the allowed exact tokens: the logits go to `z` (−∞ where
    /// not allowed), `acc` gets `Σ_t e^{z_t − max} v_t`; returns `(max, Σ_t e^{z_t − max})`
    /// (`max = −∞` when nothing is allowed).
    pub fn exact_row(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        allowed: &[u8],
        scaling: f32,
        cap: f32,
        z: &mut [f32],
        acc: &mut [f32],
    ) -> (f32, f32) {
        let d = q.len();
        let mut max = f32::NEG_INFINITY;
        for ((zt, &ok), k) in z.iter_mut().zip(allowed).zip(keys.chunks_exact(d)) {
            *zt = f32::NEG_INFINITY;
            if ok != 0 {
                let mut lanes = [0.0f32; LANES];
                for (cq, ck) in q.chunks(LANES).zip(k.chunks(LANES)) {
                    for l in 0..cq.len() {
                        lanes[l] = cq[l].mul_add(ck[l], lanes[l]);
                    }
                }
                let s = lanes.iter().sum::<f32>() * scaling;
                let s = if cap > 0.0 { kernels::soft_cap(s, cap) } else { s };
                max = max.max(s);
                *zt = s;
            }
        }
        acc.fill(0.0);
        if max == f32::NEG_INFINITY {
            return (max, 0.0);
        }
        let mut sum = 0.0f32;
        for (&zt, v) in z.iter().zip(values.chunks_exact(d)) {
            if zt != f32::NEG_INFINITY {
                let w = kernels::exp(zt - max);
                sum += w;
                for (a, &x) in acc.iter_mut().zip(v) {
                    *a = w.mul_add(x, *a);
                }
            }
        }
        (max, sum)
    }
}

/// Joins `seg` into `out` / `lse` (`B × Hq × Q × D` and `B × Hq × Q`, already holding the
/// codes' normalised part, `lse = −∞` where it attended nothing). `cap` is the soft-cap (0: none).
#[allow(clippy::too_many_arguments)]
pub(super) fn join(
    level: SimdLevel,
    queries: &[f32],
    seg: &ExactSegment<'_>,
    (h, g, ql, d): (usize, usize, usize, usize),
    scaling: f32,
    cap: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let e = seg.tokens;
    if e == 0 {
        return;
    }
    let hq = h * g;
    let b = queries.len() / (hq * ql * d);
    let mut z = vec![0.0f32; e];
    let mut acc = vec![0.0f32; d];
    for bi in 0..b {
        for head in 0..hq {
            let kh = head / g;
            let base = (bi * h + kh) * e * d;
            let (keys, values) = (
                &seg.keys[base..base + e * d],
                &seg.values[base..base + e * d],
            );
            for qi in 0..ql {
                let row = (bi * hq + head) * ql + qi;
                let q = &queries[row * d..(row + 1) * d];
                let allowed = &seg.allowed[(bi * ql + qi) * e..(bi * ql + qi + 1) * e];
                let (max, sum) = exact_row(
                    level, q, keys, values, allowed, scaling, cap, &mut z, &mut acc,
                );
                if max == f32::NEG_INFINITY {
                    continue;
                }
                let lse_e = max + sum.ln();
                let dst = &mut out[row * d..(row + 1) * d];
                let lse_c = lse[row];
                if lse_c == f32::NEG_INFINITY {
                    for (o, &a) in dst.iter_mut().zip(&acc) {
                        *o = a / sum;
                    }
                    lse[row] = lse_e;
                    continue;
                }
                let top = lse_c.max(lse_e);
                let (wc, we) = (kernels::exp(lse_c - top), kernels::exp(lse_e - top));
                let den = wc + we;
                let we_sum = we / sum;
                for (o, &a) in dst.iter_mut().zip(&acc) {
                    *o = (wc * *o + we_sum * a) / den;
                }
                lse[row] = top + den.ln();
            }
        }
    }
}
