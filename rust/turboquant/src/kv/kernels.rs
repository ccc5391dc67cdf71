//! The arithmetic of attention over a block of [`LANES`] decoded tokens (coordinate-major,
//! `block[j][l]` = coordinate `j` of token `l`): scores of up to [`MAX_ROWS`] query rows, the
//! online-softmax step and the weighted value sums. Each kernel is one body compiled per SIMD
//! level; fused multiply-adds are `f32::mul_add` on every level (a hardware FMA where there is
//! one), so every level computes bit-identical results.

use crate::simd::kernels::LANES;
use crate::simd::lanes::Lanes;
use crate::simd::multiversion;

/// Query rows scored per pass (their accumulators stay in registers).
pub const MAX_ROWS: usize = 8;

/// `out[r] = Σ_j q[r][j] · block[j]` for `N` rows of `q` (row-major, `block.len()` each).
#[inline(always)]
fn dot_rows_n<const N: usize>(block: &[Lanes], q: &[f32], out: &mut [Lanes]) {
    let d = block.len();
    let mut acc = [[0.0f32; LANES]; N];
    for (j, col) in block.iter().enumerate() {
        for (r, a) in acc.iter_mut().enumerate() {
            let w = q[r * d + j];
            for l in 0..LANES {
                a[l] = w.mul_add(col[l], a[l]);
            }
        }
    }
    out[..N].copy_from_slice(&acc);
}

multiversion! {
    /// Adds `Σ_j q[r][j] · block[j]` to `out[r]` for the `out.len() ≤ MAX_ROWS` rows of `q`.
    pub fn dot_rows(block: &[Lanes], q: &[f32], out: &mut [Lanes]) {
        let mut part = [[0.0f32; LANES]; MAX_ROWS];
        match out.len() {
            1 => dot_rows_n::<1>(block, q, &mut part),
            2 => dot_rows_n::<2>(block, q, &mut part),
            3 => dot_rows_n::<3>(block, q, &mut part),
            4 => dot_rows_n::<4>(block, q, &mut part),
            5 => dot_rows_n::<5>(block, q, &mut part),
            6 => dot_rows_n::<6>(block, q, &mut part),
            7 => dot_rows_n::<7>(block, q, &mut part),
            _ => dot_rows_n::<8>(block, q, &mut part),
        }
        for (o, p) in out.iter_mut().zip(&part) {
            for l in 0..LANES {
                o[l] += p[l];
            }
        }
    }
}

/// Output coordinates of one row accumulated per pass (four AVX-512 registers).
const ACC_CHUNK: usize = 64;

/// `out[k] += Σ_l w[l] · rows[l·dim + c0 + k]` for `k < W`, the `W` sums held in registers
/// across the block's tokens.
#[inline(always)]
fn accumulate_chunk<const W: usize>(
    rows: &[f32],
    dim: usize,
    c0: usize,
    w: &Lanes,
    out: &mut [f32],
) {
    let mut a = [0.0f32; W];
    a.copy_from_slice(&out[c0..c0 + W]);
    for (l, &wl) in w.iter().enumerate() {
        let row = &rows[l * dim + c0..l * dim + c0 + W];
        for k in 0..W {
            a[k] = wl.mul_add(row[k], a[k]);
        }
    }
    out[c0..c0 + W].copy_from_slice(&a);
}

multiversion! {
    /// Weighted value sums of one block: `acc[r·dim + j] += Σ_l w[r][l] · rows[l·dim + j]` for
    /// the `w.len()` rows, where `rows` holds the block's [`LANES`] decoded value rows
    /// (token-major, `dim = rows.len() / LANES`) and `acc` the rows' sums (`w.len() × dim`).
    pub fn accumulate_rows(rows: &[f32], w: &[Lanes], acc: &mut [f32]) {
        let dim = rows.len() / LANES;
        for (wr, out) in w.iter().zip(acc.chunks_exact_mut(dim)) {
            let mut c0 = 0;
            while c0 + ACC_CHUNK <= dim {
                accumulate_chunk::<ACC_CHUNK>(rows, dim, c0, wr, out);
                c0 += ACC_CHUNK;
            }
            while c0 + LANES <= dim {
                accumulate_chunk::<LANES>(rows, dim, c0, wr, out);
                c0 += LANES;
            }
            for k in c0..dim {
                let mut a = out[k];
                for (l, &wl) in wr.iter().enumerate() {
                    a = wl.mul_add(rows[l * dim + k], a);
                }
                out[k] = a;
            }
        }
    }
}

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
    let pow = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let v = e * pow;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        v
    }
}

/// Logit transform of one lane: `z = scaling · (bias + score)`, soft-capped when `cap > 0`
/// (`cap · tanh(z / cap)`), and `−∞` outside the row's token range.
#[inline(always)]
fn logit(score: f32, bias: f32, scaling: f32, cap: f32, inside: bool) -> f32 {
    let mut z = scaling * (bias + score);
    if cap > 0.0 {
        let y = z / cap;
        let e = exp(-2.0 * y.abs());
        let t = (1.0 - e) / (1.0 + e);
        z = cap * if y < 0.0 { -t } else { t };
    }
    if inside {
        z
    } else {
        f32::NEG_INFINITY
    }
}

/// One query row's state of the online softmax.
#[derive(Debug, Clone, Copy)]
pub struct RowState {
    /// Running maximum logit (−∞ before any token).
    pub max: f32,
    /// Running sum of `e^{z − max}`.
    pub sum: f32,
}

impl Default for RowState {
    fn default() -> Self {
        RowState {
            max: f32::NEG_INFINITY,
            sum: 0.0,
        }
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
            let mut z = [0.0f32; LANES];
            for l in 0..LANES {
                let t = l as i64;
                let inside = l < m && t >= b.lo && t < b.hi;
                z[l] = logit(s[l], b.bias, scaling, cap, inside);
            }
            let bmax = halving_tree(z, f32::max);
            let new_max = st.max.max(bmax);
            *f = 1.0;
            if new_max == f32::NEG_INFINITY {
                *s = [0.0; LANES];
                continue;
            }
            if new_max > st.max {
                *f = exp(st.max - new_max);
                st.sum *= *f;
                st.max = new_max;
            }
            let mut p = [0.0f32; LANES];
            for l in 0..LANES {
                p[l] = exp(z[l] - new_max);
            }
            st.sum += halving_tree(p, |a, b| a + b);
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
