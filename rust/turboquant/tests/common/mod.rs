//! Shared helpers of the integration tests: seeded Gaussian data and error statistics.
#![allow(dead_code)]

use turboquant::rng::SplitMix64;

/// `n × d` standard normal values (Box-Muller over SplitMix64).
pub fn gaussian(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut g = SplitMix64::new(seed, 99);
    let mut out = Vec::with_capacity(n * d);
    while out.len() < n * d {
        let u1 = ((g.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((g.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        out.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
        out.push((r * (2.0 * std::f64::consts::PI * u2).sin()) as f32);
    }
    out.truncate(n * d);
    out
}

/// Rows scaled to unit norm.
pub fn unit_rows(mut x: Vec<f32>, d: usize) -> Vec<f32> {
    for row in x.chunks_exact_mut(d) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= n);
    }
    x
}

/// Mean over rows of ‖x − x̂‖² / ‖x‖².
pub fn relative_mse(x: &[f32], xh: &[f32], d: usize) -> f64 {
    let mut total = 0.0;
    let rows = x.len() / d;
    for (a, b) in x.chunks_exact(d).zip(xh.chunks_exact(d)) {
        let e: f64 = a
            .iter()
            .zip(b)
            .map(|(&u, &v)| ((u - v) as f64).powi(2))
            .sum();
        let n: f64 = a.iter().map(|&u| (u as f64).powi(2)).sum();
        total += e / n;
    }
    total / rows as f64
}
