//! Lloyd-Max codebooks for one coordinate of a uniformly random unit vector in R^d.
//!
//! After a random rotation, each coordinate `x` of a unit vector follows
//! `f(x) = Γ(d/2) / (√π Γ((d−1)/2)) · (1 − x²)^((d−3)/2)` on `[−1, 1]` (→ N(0, 1/d)).
//! We tabulate this law in the angle `θ = asin(x)`, where it becomes `cos^(d−2) θ`: bounded for
//! every `d ≥ 2` (the `d = 2` arcsine law included), so one trapezoid table serves all `d`.
//! The table only spans the `±12σ` band that carries the mass. Lloyd-Max iterations then run
//! on the cumulative mass and first moment, starting from the high-resolution optimum
//! (point density ∝ f^(1/3)), so even `b = 8` converges in milliseconds.
//! Codebooks are cached per `(d, b)`.

use crate::cells::CellTable;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

/// Largest supported bit width.
pub const MAX_BITS: u8 = 8;
/// Points of the angle grid (trapezoid rule; interpolation error ≈ 1e-8 relative).
const GRID: usize = 1 << 15;
/// Half-width of the tabulated band, in standard deviations (1/√d).
const BAND_SIGMAS: f64 = 12.0;
/// Lloyd iterations stop once no centroid moves more than this, in units of 1/√d.
const TOLERANCE: f64 = 1e-9;
/// Iterations without a new smallest residual after which the table's resolution is reached.
const STALL_LIMIT: usize = 4;
/// Safety cap on Lloyd iterations.
const MAX_ITERATIONS: usize = 20_000;

/// A scalar quantizer for the rotated coordinates: sorted centroids and the midpoints between them.
#[derive(Debug, Clone)]
pub struct Codebook {
    dim: usize,
    bits: u8,
    centroids: Vec<f32>,
    boundaries: Vec<f32>,
    probabilities: Vec<f64>,
    distortion: f64,
    iterations: usize,
    cells: Option<CellTable>,
}

impl Codebook {
    /// Vector dimension the codebook was built for.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Bits per coordinate (`2^bits` centroids).
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// The `2^bits` reconstruction values, ascending, in unit-vector coordinates (≈ N(0,1/d) scale).
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// The `2^bits − 1` decision thresholds, ascending: code `i` is the count of thresholds `< x`.
    pub fn boundaries(&self) -> &[f32] {
        &self.boundaries
    }
    /// The O(1) encoding tables over the boundaries (codebooks of up to 16 entries).
    pub fn cells(&self) -> Option<&CellTable> {
        self.cells.as_ref()
    }
    /// Probability of each code for a coordinate of a random unit vector (the entropy coder's model).
    pub fn probabilities(&self) -> &[f64] {
        &self.probabilities
    }
    /// `D_mse = E‖x − x̂‖²` for a random unit vector of dimension `d` (= `d` × per-coordinate MSE).
    pub fn distortion(&self) -> f64 {
        self.distortion
    }
    /// Lloyd iterations it took to converge.
    pub fn iterations(&self) -> usize {
        self.iterations
    }
    /// Shannon entropy of the codes in bits per coordinate.
    pub fn entropy_bits(&self) -> f64 {
        self.probabilities
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -p * p.log2())
            .sum()
    }

    /// The code of one rotated, unit-scaled coordinate: the number of boundaries strictly below `x`.
    #[inline]
    pub fn encode(&self, x: f32) -> u8 {
        self.boundaries.partition_point(|&t| t < x) as u8
    }

    /// Builds (uncached) the Lloyd-Max codebook for dimension `dim` and `bits` bits per coordinate.
    pub fn build(dim: usize, bits: u8) -> Result<Codebook> {
        validate(dim, bits)?;
        let law = CoordinateLaw::new(dim);
        let k = 1usize << bits;
        let sqrt_d = (dim as f64).sqrt();
        let mut c: Vec<f64> = (0..k)
            .map(|i| law.companding_quantile((i as f64 + 0.5) / k as f64))
            .collect();
        let mut iterations = 0;
        let (mut best, mut stalled) = (f64::INFINITY, 0);
        let mut cuts = vec![0.0f64; k + 1];
        while iterations < MAX_ITERATIONS {
            iterations += 1;
            cell_edges(&c, &mut cuts);
            let (mass, first) = (law.cumulative_at(&cuts, 0), law.cumulative_at(&cuts, 1));
            let means: Vec<f64> = (0..k)
                .map(|i| {
                    let p = mass[i + 1] - mass[i];
                    if p > 1e-300 {
                        (first[i + 1] - first[i]) / p
                    } else {
                        c[i]
                    }
                })
                .collect();
            let moved = c
                .iter()
                .zip(&means)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs() * sqrt_d));
            if moved < best {
                (best, stalled) = (moved, 0);
            } else {
                stalled += 1;
            }
            if moved < TOLERANCE || stalled >= STALL_LIMIT {
                break;
            }
            match newton_step(&law, &c, &cuts, &mass, &means) {
                Some(next) => c = next,
                None => c.copy_from_slice(&means),
            }
            symmetrize(&mut c);
        }
        cell_edges(&c, &mut cuts);
        let mass = law.cumulative_at(&cuts, 0);
        let first = law.cumulative_at(&cuts, 1);
        let second = law.cumulative_at(&cuts, 2);
        let mut per_coord = 0.0;
        let mut probabilities = Vec::with_capacity(k);
        for i in 0..k {
            let p = mass[i + 1] - mass[i];
            let m1 = first[i + 1] - first[i];
            let m2 = second[i + 1] - second[i];
            per_coord += m2 - 2.0 * c[i] * m1 + c[i] * c[i] * p;
            probabilities.push(p.max(0.0));
        }
        let centroids: Vec<f32> = c.iter().map(|&v| v as f32).collect();
        let boundaries: Vec<f32> = c.windows(2).map(|w| (0.5 * (w[0] + w[1])) as f32).collect();
        Ok(Codebook {
            dim,
            bits,
            cells: CellTable::new(&boundaries),
            centroids,
            boundaries,
            probabilities,
            distortion: per_coord * dim as f64,
            iterations,
        })
    }
}

/// Built codebooks by `(dim, bits)`.
type Cache = Mutex<HashMap<(usize, u8), Arc<Codebook>>>;

/// The cached codebook for `(dim, bits)`; built on first use.
///
/// The cache is only ever `try_lock`ed: a busy lock (another thread's lookup, or a lock a
/// forked child inherited held) costs a rebuild (milliseconds), never a wait or a deadlock.
pub fn get(dim: usize, bits: u8) -> Result<Arc<Codebook>> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    validate(dim, bits)?;
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let lock = || match cache.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    };
    if let Some(cb) = lock().and_then(|c| c.get(&(dim, bits)).cloned()) {
        return Ok(cb);
    }
    let cb = Arc::new(Codebook::build(dim, bits)?);
    if let Some(mut c) = lock() {
        c.insert((dim, bits), cb.clone());
    }
    Ok(cb)
}

fn validate(dim: usize, bits: u8) -> Result<()> {
    if dim < 2 {
        return Err(Error::InvalidParameter(format!(
            "dim must be at least 2, got {dim}"
        )));
    }
    if bits == 0 || bits > MAX_BITS {
        return Err(Error::InvalidParameter(format!(
            "bit_width must be in 1..=8, got {bits}"
        )));
    }
    Ok(())
}

/// Cell edges for centroids `c`: −1, the midpoints, +1.
fn cell_edges(c: &[f64], cuts: &mut [f64]) {
    let k = c.len();
    cuts[0] = -1.0;
    cuts[k] = 1.0;
    for i in 1..k {
        cuts[i] = 0.5 * (c[i - 1] + c[i]);
    }
}

/// One Newton step on `T(c) − c = 0`, where `T` maps centroids to the conditional means of
/// their cells. Its Jacobian is tridiagonal (a centroid only sees its two cell edges), so a
/// step costs `O(K)`. Returns `None` when the step would break the ordering of the centroids
/// (then the caller takes a plain Lloyd step).
fn newton_step(
    law: &CoordinateLaw,
    c: &[f64],
    cuts: &[f64],
    mass: &[f64],
    means: &[f64],
) -> Option<Vec<f64>> {
    let k = c.len();
    let (mut lower, mut diag, mut upper, mut rhs) =
        (vec![0.0; k], vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    for i in 0..k {
        let p = mass[i + 1] - mass[i];
        if p <= 1e-300 {
            return None;
        }
        // ∂T_i/∂(lower edge) and ∂T_i/∂(upper edge); each interior edge is the mean of two centroids.
        let a = if i > 0 {
            law.density(cuts[i]) * (means[i] - cuts[i]) / p
        } else {
            0.0
        };
        let u = if i + 1 < k {
            law.density(cuts[i + 1]) * (cuts[i + 1] - means[i]) / p
        } else {
            0.0
        };
        lower[i] = 0.5 * a;
        upper[i] = 0.5 * u;
        diag[i] = 0.5 * (a + u) - 1.0;
        rhs[i] = c[i] - means[i];
    }
    // Thomas algorithm for J·δ = −(T(c) − c).
    for i in 1..k {
        let w = lower[i] / diag[i - 1];
        diag[i] -= w * upper[i - 1];
        rhs[i] -= w * rhs[i - 1];
    }
    let mut delta = vec![0.0; k];
    delta[k - 1] = rhs[k - 1] / diag[k - 1];
    for i in (0..k - 1).rev() {
        delta[i] = (rhs[i] - upper[i] * delta[i + 1]) / diag[i];
    }
    let next: Vec<f64> = c.iter().zip(&delta).map(|(a, b)| a + b).collect();
    let ordered =
        next.iter().all(|v| v.is_finite() && v.abs() < 1.0) && next.windows(2).all(|w| w[0] < w[1]);
    ordered.then_some(next)
}

/// Makes the centroids exactly antisymmetric (the law is symmetric).
fn symmetrize(c: &mut [f64]) {
    let k = c.len();
    for i in 0..k / 2 {
        let v = 0.5 * (c[k - 1 - i] - c[i]);
        c[i] = -v;
        c[k - 1 - i] = v;
    }
}

/// Tabulated cumulative moments of the coordinate law on a uniform grid in `θ = asin(x)`.
struct CoordinateLaw {
    dim: usize,
    /// ∫ cos^(d−2) θ dθ over the table before normalization (normalizes [`Self::density`]).
    density_total: f64,
    theta_max: f64,
    step: f64,
    /// `moments[j][g]`: ∫ x^j f over [−θmax, θ_g], normalized so that the total mass is 1.
    moments: [Vec<f64>; 3],
    /// Cumulative of f^(1/3) (high-resolution point density), normalized to 1.
    companding: Vec<f64>,
}

impl CoordinateLaw {
    fn new(dim: usize) -> Self {
        let d = dim as f64;
        let band = (BAND_SIGMAS / d.sqrt()).min(1.0);
        let theta_max = band.asin();
        let step = 2.0 * theta_max / (GRID - 1) as f64;
        let exponent = d - 2.0;
        let weight = |theta: f64| -> [f64; 4] {
            let (s, c) = theta.sin_cos();
            // density in θ: cos^(d−2) θ (max 1 at θ = 0); density in x: cos^(d−3) θ.
            let g = if exponent == 0.0 {
                1.0
            } else {
                (exponent * c.max(0.0).ln()).exp()
            };
            let fx = if c > 0.0 { g / c } else { 0.0 };
            [g, g * s, g * s * s, fx.cbrt() * c]
        };
        let mut moments = [vec![0.0; GRID], vec![0.0; GRID], vec![0.0; GRID]];
        let mut companding = vec![0.0; GRID];
        let mut prev = weight(-theta_max);
        for gidx in 1..GRID {
            let w = weight(-theta_max + gidx as f64 * step);
            for j in 0..3 {
                moments[j][gidx] = moments[j][gidx - 1] + 0.5 * step * (prev[j] + w[j]);
            }
            companding[gidx] = companding[gidx - 1] + 0.5 * step * (prev[3] + w[3]);
            prev = w;
        }
        let total = moments[0][GRID - 1];
        for m in moments.iter_mut() {
            m.iter_mut().for_each(|v| *v /= total);
        }
        let ctotal = companding[GRID - 1];
        companding.iter_mut().for_each(|v| *v /= ctotal);
        CoordinateLaw {
            dim,
            density_total: total,
            theta_max,
            step,
            moments,
            companding,
        }
    }

    /// The normalized density `f(x)` of the coordinate law.
    fn density(&self, x: f64) -> f64 {
        let one_minus = (1.0 - x * x).max(0.0);
        if one_minus == 0.0 {
            return 0.0;
        }
        (0.5 * (self.dim as f64 - 3.0) * one_minus.ln()).exp() / self.density_total
    }

    /// Fractional grid position of coordinate `x`, clamped to the table.
    fn position(&self, x: f64) -> f64 {
        let theta = x.clamp(-1.0, 1.0).asin();
        ((theta + self.theta_max) / self.step).clamp(0.0, (GRID - 1) as f64)
    }

    fn interpolate(table: &[f64], pos: f64) -> f64 {
        let i = (pos.floor() as usize).min(GRID - 2);
        let t = pos - i as f64;
        table[i] + t * (table[i + 1] - table[i])
    }

    /// The cumulative moment `j` at each of `xs`.
    fn cumulative_at(&self, xs: &[f64], j: usize) -> Vec<f64> {
        xs.iter()
            .map(|&x| Self::interpolate(&self.moments[j], self.position(x)))
            .collect()
    }

    /// The `x` where the f^(1/3) cumulative reaches `q`.
    fn companding_quantile(&self, q: f64) -> f64 {
        let table = &self.companding;
        let i = table.partition_point(|&v| v < q).clamp(1, GRID - 1);
        let (a, b) = (table[i - 1], table[i]);
        let t = if b > a { (q - a) / (b - a) } else { 0.0 };
        let theta = -self.theta_max + (i as f64 - 1.0 + t) * self.step;
        theta.sin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAUSS: [&[f64]; 4] = [
        &[0.797885],
        &[0.452780, 1.510418],
        &[0.245094, 0.756005, 1.343909, 2.151946],
        &[
            0.128395, 0.388048, 0.656759, 0.942340, 1.256231, 1.618046, 2.069017, 2.732590,
        ],
    ];

    #[test]
    fn large_d_matches_gaussian_lloyd_max_to_four_digits() {
        let d = 1_000_000usize;
        for (b, want) in GAUSS.iter().enumerate() {
            let cb = Codebook::build(d, b as u8 + 1).unwrap();
            let k = cb.centroids().len();
            for (i, &w) in want.iter().enumerate() {
                let got = cb.centroids()[k / 2 + i] as f64 * (d as f64).sqrt();
                assert!((got - w).abs() < 5e-5, "b={} i={i}: {got} vs {w}", b + 1);
            }
        }
    }

    #[test]
    fn finite_d_distortion_matches_beta_optimum() {
        let want = [
            (128usize, [0.36089, 0.11600, 0.033966, 0.009315]),
            (1536, [0.36317, 0.11736, 0.034499, 0.009485]),
        ];
        for (d, ds) in want {
            for (b, &w) in ds.iter().enumerate() {
                let cb = Codebook::build(d, b as u8 + 1).unwrap();
                let rel = (cb.distortion() - w).abs() / w;
                assert!(rel < 2e-3, "d={d} b={}: {} vs {w}", b + 1, cb.distortion());
            }
        }
    }

    #[test]
    fn entropy_of_four_bit_codes_is_about_3_77() {
        let cb = Codebook::build(100_000, 4).unwrap();
        assert!(
            (cb.entropy_bits() - 3.77).abs() < 0.01,
            "{}",
            cb.entropy_bits()
        );
    }

    #[test]
    fn small_dimensions_and_all_widths_build() {
        for d in [2usize, 3, 4, 7, 64] {
            for b in 1..=8u8 {
                let cb = Codebook::build(d, b).unwrap();
                assert_eq!(cb.centroids().len(), 1 << b);
                assert!(
                    cb.centroids().windows(2).all(|w| w[0] < w[1]),
                    "d={d} b={b}"
                );
                assert!(cb.distortion() > 0.0 && cb.distortion() < 1.0);
                let p: f64 = cb.probabilities().iter().sum();
                assert!((p - 1.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Codebook::build(1, 2).is_err());
        assert!(Codebook::build(16, 0).is_err());
        assert!(Codebook::build(16, 9).is_err());
    }

    #[test]
    fn encode_is_nearest_centroid() {
        let cb = Codebook::build(64, 3).unwrap();
        for i in -200..200 {
            let x = i as f32 * 0.003;
            let code = cb.encode(x) as usize;
            let best = cb
                .centroids()
                .iter()
                .map(|&c| (c - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert!(((cb.centroids()[code] - x).abs() - best).abs() < 1e-6);
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    fn every_width_builds_well_under_50ms() {
        for d in [64usize, 128, 1536, 100_000] {
            for b in 1..=MAX_BITS {
                let t = std::time::Instant::now();
                let cb = Codebook::build(d, b).unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                println!("d={d} b={b}: {ms:.1} ms, {} iterations", cb.iterations());
                // debug builds are ~20x slower; the bound is for optimized code
                let limit = if cfg!(debug_assertions) { 1000.0 } else { 50.0 };
                assert!(ms < limit, "d={d} b={b} took {ms} ms");
            }
        }
    }
}
