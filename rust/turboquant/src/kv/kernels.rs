//! The softmax arithmetic of attention over a block of [`LANES`] tokens: the online-softmax
//! step on the rows' scores and the rescaling of their value sums (the scores and the weighted
//! value sums are the register kernels `dot_rows_lanes` and `accumulate_rows_lanes` of
//! [`crate::simd::lanes`]). Each kernel is one body compiled per SIMD level; fused multiply-adds
//! are `f32::mul_add` on every level (a hardware FMA where there is one), so every level
//! computes bit-identical results.

use crate::simd::kernels::LANES;
use crate::simd::lanes::Lanes;
use crate::simd::multiversion;

multiversion! {
    /// `acc[r·dim + j] *= f[r]` for the `n = f.len()` rows of `dim = acc.len() / n` sums (a
    /// factor of 1 leaves its row exactly as it was).
    pub fn scale_rows(acc: &mut [f32], f: &[f32]) {
        let dim = acc.len() / f.len().max(1);
        for (row, &fr) in acc.chunks_exact_mut(dim.max(1)).zip(f) {
            for v in row.iter_mut() {
                *v *= fr;
            }
        }
    }
}

multiversion! {
    /// `out[r][l] = p[r][l] · scale[l]`: the rows' softmax weights times each token's value scale.
    pub fn weigh(p: &[Lanes], scale: &Lanes, out: &mut [Lanes]) {
        for (o, pr) in out.iter_mut().zip(p) {
            for l in 0..LANES {
                o[l] = pr[l] * scale[l];
            }
        }
    }
}

/// `e^x` in f32 (relative error below 2e-7; 0 below −87.3, +∞ above 88.7): a degree-6
/// polynomial on `x − n ln 2` scaled by `2^n`, written so that it vectorizes lane-wise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + 0.5).floor();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let e = (p * r).mul_add(r, r) + 1.0;
    // 2^n from the float itself: n + 127 (0..=254 after the clamp) lands in the low mantissa
    // bits of 1.5·2^23 + n + 127, and the shift moves it into the exponent field. (A saturating
    // `n as i32` cast does not vectorize.)
    let pow = f32::from_bits((n + (127.0 + 12_582_912.0)).to_bits() << 23);
    let v = e * pow;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        v
    }
}

/// Soft-cap of one logit: `cap · tanh(z / cap)`.
#[inline(always)]
pub(super) fn soft_cap(z: f32, cap: f32) -> f32 {
    let y = z / cap;
    let e = exp(-2.0 * y.abs());
    let t = (1.0 - e) / (1.0 + e);
    cap * if y < 0.0 { -t } else { t }
}

/// One query row's state of the online softmax.
#[derive(Debug, Clone, Copy)]
pub struct RowState {
    /// Running maximum logit (−∞ before any token).
    pub max: f32,
    /// Running sums of `e^{z − max}` per block lane (added up once, by [`RowState::sum`]).
    lane_sums: Lanes,
}

impl Default for RowState {
    fn default() -> Self {
        RowState {
            max: f32::NEG_INFINITY,
            lane_sums: [0.0; LANES],
        }
    }
}

impl RowState {
    /// The running sum of `e^{z − max}` over every token seen.
    pub fn sum(&self) -> f32 {
        halving_tree(self.lane_sums, |a, b| a + b)
    }
}

/// Reduces the lanes by a fixed halving tree (`v[l] ∘ v[l + n/2]`, then again): the same
/// order on every SIMD level, and vertical operations the compiler vectorizes (a left-to-right
/// fold is a chain of `LANES` dependent operations).
#[inline(always)]
fn halving_tree(mut v: Lanes, op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            v[l] = op(v[l], v[l + n]);
        }
    }
    v[0]
}

/// Per-row inputs of [`softmax_step`].
#[derive(Debug, Clone, Copy)]
pub struct RowBounds {
    /// `⟨q, μ_k⟩`, added to every score of the row.
    pub bias: f32,
    /// First token (block-relative lane) the row may attend, may be negative.
    pub lo: i64,
    /// One past the last.
    pub hi: i64,
}

multiversion! {
    /// Turns the rows' scores of one block (`scores[r]`, lanes = tokens `0..m` of the block)
    /// into softmax weights in place, updating each row's state; returns, per row, the factor
    /// its value accumulator must be multiplied by first (1 when the maximum did not move).
    pub fn softmax_step(
        scores: &mut [Lanes],
        rows: &[RowBounds],
        states: &mut [RowState],
        m: usize,
        scaling: f32,
        cap: f32,
        factors: &mut [f32],
    ) {
        for (((s, b), st), f) in scores.iter_mut().zip(rows).zip(states.iter_mut()).zip(factors.iter_mut()) {
            // z = scaling · (bias + score), soft-capped when cap > 0, −∞ outside the row's
            // lanes [lo, hi) (the branches are uniform over the lanes; the lane loops vectorize).
            let mut z = [0.0f32; LANES];
            for l in 0..LANES {
                z[l] = scaling * (b.bias + s[l]);
            }
            if cap > 0.0 {
                for v in z.iter_mut() {
                    *v = soft_cap(*v, cap);
                }
            }
            let lo = b.lo.clamp(0, LANES as i64) as i32;
            let hi = b.hi.clamp(0, m.min(LANES) as i64) as i32;
            if lo > 0 || hi < LANES as i32 {
                for (l, v) in z.iter_mut().enumerate() {
                    let li = l as i32;
                    *v = if li >= lo && li < hi { *v } else { f32::NEG_INFINITY };
                }
            }
            // the block's maximum only when a lane passes the running one (rarely, once the
            // largest logits have been seen)
            let passes = z.iter().fold(false, |any, &v| any | (v > st.max));
            let new_max = if passes {
                halving_tree(z, |a, b| if a > b { a } else { b })
            } else {
                st.max
            };
            *f = 1.0;
            if new_max == f32::NEG_INFINITY {
                *s = [0.0; LANES];
                continue;
            }
            if new_max > st.max {
                *f = exp(st.max - new_max);
                for v in st.lane_sums.iter_mut() {
                    *v *= *f;
                }
                st.max = new_max;
            }
            let mut p = [0.0f32; LANES];
            for l in 0..LANES {
                p[l] = exp(z[l] - new_max);
            }
            for (acc, &v) in st.lane_sums.iter_mut().zip(&p) {
                *acc += v;
            }
            *s = p;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }
}
