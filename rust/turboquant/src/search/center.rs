//! Centring: the index quantizes `x − c` for a fixed centre `c` and scores exactly what that
//! leaves out.
//!
//! `⟨q, x⟩ = ⟨q, c⟩ + ⟨c, x − c⟩ + ⟨q − c, x − c⟩`. The first term is one number per query, the
//! second one number per vector (stored exactly as the slot's bias), and only the third is
//! estimated from the codes. Real embeddings share a large mean direction (wiki-MiniLM:
//! `‖mean‖ = 0.32` for unit vectors), so both `x − c` and `q − c` are shorter than `x` and `q`,
//! and the estimate's error, which scales with `‖q − c‖·‖x − c‖`, shrinks: recall@10 on
//! wiki-MiniLM goes 0.6785 → 0.7040 at 1 bit and 0.8321 → 0.8502 at 2 bits (see
//! `benches/RESULTS.md`). It costs one `f32` per vector (L2 already stores one) and `d` floats.
//! Every term is exact but the third, so a centre never makes a score wrong, only its error
//! smaller or (for a centre far from the data) larger.

use crate::error::{Error, Result};
use crate::parallel;
use rayon::prelude::*;

/// The automatic centre is the mean of the first batch added if it holds at least this many
/// vectors (a smaller batch gives too noisy a mean); otherwise the index stays uncentred.
pub const MIN_CENTER_ROWS: usize = 256;

/// Values from which [`subtract_into`] runs in parallel.
const PARALLEL_VALUES: usize = 1 << 16;
/// Rows per partial sum of the automatic centre.
const MEAN_CHUNK_ROWS: usize = 4096;

/// The centring state of an index.
#[derive(Debug, Clone, PartialEq)]
pub enum Center {
    /// No centring.
    Off,
    /// Not decided yet: the first batch added fixes it (see [`MIN_CENTER_ROWS`]).
    Auto,
    /// Centred on this vector.
    Fixed(Vec<f32>),
}

impl Center {
    /// The centre, if there is one.
    pub fn vector(&self) -> Option<&[f32]> {
        match self {
            Center::Fixed(c) => Some(c),
            _ => None,
        }
    }

    /// Decides an automatic centre from the first batch `x` (rows of `d`).
    pub fn settle(&mut self, x: &[f32], d: usize) {
        if *self != Center::Auto {
            return;
        }
        let n = x.len() / d;
        *self = if n < MIN_CENTER_ROWS {
            Center::Off
        } else {
            // fixed chunks summed in order: the same centre whatever the thread count
            let partial = |rows: &[f32]| {
                let mut sum = vec![0.0f64; d];
                for row in rows.chunks_exact(d) {
                    for (s, &v) in sum.iter_mut().zip(row) {
                        *s += f64::from(v);
                    }
                }
                sum
            };
            let parts: Vec<Vec<f64>> =
                parallel::install(|| x.par_chunks(d * MEAN_CHUNK_ROWS).map(partial).collect());
            let mut sum = vec![0.0f64; d];
            for part in parts {
                sum.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
            }
            Center::Fixed(sum.iter().map(|&s| (s / n as f64) as f32).collect())
        };
    }

    /// A fixed centre of `d` finite values.
    pub fn fixed(c: &[f32], d: usize) -> Result<Center> {
        if c.len() != d {
            return Err(Error::ShapeMismatch(format!(
                "the centre has {} values, the index dimension is {d}",
                c.len()
            )));
        }
        if let Some(bad) = c.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("the centre holds {bad}")));
        }
        Ok(Center::Fixed(c.to_vec()))
    }
}

/// `out ← x − c` row by row; in parallel on the crate's threads from `PARALLEL_VALUES`
/// values (below that, a hand-off to the pool costs more than the subtraction: queries).
pub fn subtract_into(x: &[f32], c: &[f32], out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let rows = |o: &mut [f32], x: &[f32]| {
        for (o, x) in o.chunks_exact_mut(c.len()).zip(x.chunks_exact(c.len())) {
            for ((o, &v), &m) in o.iter_mut().zip(x).zip(c) {
                *o = v - m;
            }
        }
    };
    if x.len() < PARALLEL_VALUES {
        return rows(out, x);
    }
    let chunk = c.len() * parallel::rows_per_task(x.len() / c.len());
    parallel::install(|| {
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, x)| rows(o, x))
    });
}

/// `x − c` for every row of `x`.
pub fn subtract(x: &[f32], c: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    subtract_into(x, c, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_settles_on_the_mean_of_a_large_first_batch_only() {
        let d = 3;
        let big: Vec<f32> = (0..MIN_CENTER_ROWS * d).map(|i| (i % d) as f32).collect();
        let mut c = Center::Auto;
        c.settle(&big, d);
        assert_eq!(c.vector(), Some(&[0.0, 1.0, 2.0][..]));
        c.settle(&[9.0; 3], d); // later batches change nothing
        assert_eq!(c.vector(), Some(&[0.0, 1.0, 2.0][..]));
        let mut small = Center::Auto;
        small.settle(&big[..d * (MIN_CENTER_ROWS - 1)], d);
        assert_eq!(small, Center::Off);
    }

    #[test]
    fn fixed_checks_its_input() {
        assert!(Center::fixed(&[1.0, 2.0], 3).is_err());
        assert!(Center::fixed(&[1.0, f32::NAN, 0.0], 3).is_err());
        assert_eq!(
            subtract(&[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0]),
            vec![0.0, 1.0, 2.0, 3.0]
        );
    }
}
