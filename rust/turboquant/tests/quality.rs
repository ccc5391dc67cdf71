//! Distortion, worst-case inputs and inner-product statistics against the paper's numbers.
mod common;

use common::{gaussian, relative_mse, unit_rows};
use turboquant::{Mode, Quantizer, ScaleMode};

fn d_mse(d: usize, bits: u8, scale: ScaleMode, x: &[f32]) -> f64 {
    let q = Quantizer::new(d, bits, Mode::Mse, scale, 3).unwrap();
    let b = q.quantize(x).unwrap();
    let mut back = vec![0.0; x.len()];
    q.dequantize(&b.view(), &mut back).unwrap();
    relative_mse(x, &back, d)
}

#[test]
fn distortion_matches_paper_at_d1536_and_d128() {
    let table = [
        (1536usize, [0.3634, 0.1175, 0.03455, 0.009501]),
        (128, [0.36089, 0.11600, 0.033966, 0.009315]),
    ];
    for (d, want) in table {
        let x = unit_rows(gaussian(10_000, d, 11), d);
        for (i, &w) in want.iter().enumerate() {
            let bits = i as u8 + 1;
            let exact = d_mse(d, bits, ScaleMode::Norm, &x);
            let lsq = d_mse(d, bits, ScaleMode::Lsq, &x);
            println!("d={d} b={bits}: norm {exact:.5} lsq {lsq:.5} paper {w}");
            assert!(
                (exact - w).abs() / w < 0.03,
                "d={d} b={bits}: {exact} vs {w}"
            );
            assert!(
                lsq <= exact * 1.0001,
                "default scale worse: {lsq} > {exact}"
            );
        }
    }
}

/// Adversarial inputs: one-hot, sparse, constant, repeated values.
fn adversarial(d: usize) -> Vec<f32> {
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for i in (0..d).step_by((d / 64).max(1)) {
        let mut v = vec![0.0; d];
        v[i] = 1.0;
        rows.push(v);
    }
    for s in 0..64 {
        let mut v = vec![0.0; d];
        for k in 0..4 {
            v[(s * 13 + k * 37) % d] = if k % 2 == 0 { 1.0 } else { -1.0 };
        }
        rows.push(v);
    }
    rows.push(vec![1.0; d]);
    rows.push(
        (0..d)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
    );
    rows.push((0..d).map(|i| (i % 4) as f32).collect());
    rows.push((0..d).map(|i| if i < d / 2 { 1.0 } else { 0.0 }).collect());
    rows.push((0..d).map(|i| if i % 8 == 0 { 1.0 } else { 0.0 }).collect());
    rows.concat()
}

#[test]
fn worst_case_inputs_are_no_worse_than_random() {
    // 128 vs 256 straddles the two-round threshold (Hadamard blocks of 256 and more); 384, 768,
    // 1280 and 1536 are tiled, 96 is overlapping
    for d in [64usize, 96, 128, 256, 384, 512, 768, 1024, 1280, 1536] {
        let adv = adversarial(d);
        let rnd = unit_rows(gaussian(4000, d, 5), d);
        for bits in 1..=4u8 {
            let a = d_mse(d, bits, ScaleMode::Norm, &adv);
            let r = d_mse(d, bits, ScaleMode::Norm, &rnd);
            println!(
                "d={d} b={bits}: adversarial {a:.5} random {r:.5} ratio {:.3}",
                a / r
            );
            assert!(
                a <= 1.10 * r,
                "d={d} b={bits}: adversarial {a} vs random {r}"
            );
        }
    }
}

/// (mean error, d·Var of error, standard error of the mean) of ⟨y, x⟩ estimates over unit pairs.
fn ip_stats(
    d: usize,
    bits: u8,
    mode: Mode,
    scale: ScaleMode,
    pairs: usize,
    correlated: bool,
) -> (f64, f64, f64) {
    let q = Quantizer::new(d, bits, mode, scale, 9).unwrap();
    let x = unit_rows(gaussian(pairs, d, 21), d);
    let noise = unit_rows(gaussian(pairs, d, 22), d);
    let y: Vec<f32> = if correlated {
        unit_rows(
            x.iter()
                .zip(&noise)
                .map(|(&a, &b)| 0.8 * a + 0.6 * b)
                .collect(),
            d,
        )
    } else {
        noise
    };
    let b = q.quantize(&x).unwrap();
    let mut errs = Vec::with_capacity(pairs);
    let chunk = 500;
    for start in (0..pairs).step_by(chunk) {
        let end = (start + chunk).min(pairs);
        let view = turboquant::BatchView {
            n: end - start,
            codes: &b.codes[start * q.code_bytes()..end * q.code_bytes()],
            scales: &b.scales[start..end],
            qjl_signs: &b.qjl_signs[start * q.sign_bytes()..end * q.sign_bytes()],
            residual_norms: if mode == Mode::Prod {
                &b.residual_norms[start..end]
            } else {
                &[]
            },
        };
        let mut est = vec![0.0; (end - start) * (end - start)];
        q.inner_products(&y[start * d..end * d], &view, &mut est)
            .unwrap();
        for i in 0..end - start {
            let truth: f64 = (0..d)
                .map(|j| (x[(start + i) * d + j] * y[(start + i) * d + j]) as f64)
                .sum();
            errs.push(est[i * (end - start) + i] as f64 - truth);
        }
    }
    let n = errs.len() as f64;
    let mean = errs.iter().sum::<f64>() / n;
    let var = errs.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, d as f64 * var, (var / n).sqrt())
}

#[test]
fn qjl_inner_products_are_unbiased_with_low_variance() {
    // DESIGN.md: orthogonal S gives d·Var ≈ 0.570, 0.208, 0.067, 0.020 for b = 1..4 (Gaussian S: π/2·D(b−1)).
    let d = 128;
    for (bits, limit) in [(2u8, 0.208), (3, 0.067), (4, 0.020)] {
        for correlated in [false, true] {
            let (mean, dvar, se) =
                ip_stats(d, bits, Mode::Prod, ScaleMode::Lsq, 100_000, correlated);
            println!("prod b={bits} corr={correlated}: mean {mean:.2e} (se {se:.1e}) d·Var {dvar:.4} (limit {limit})");
            assert!(
                mean.abs() < 3.0 * se,
                "b={bits}: biased mean {mean} se {se}"
            );
            assert!(dvar <= limit * 1.05, "b={bits}: d·Var {dvar} above {limit}");
        }
    }
}

#[test]
fn scale_modes_report() {
    // Prints the bias/variance of MSE-mode inner products under each scale rule (RESULTS.md).
    let d = 128;
    for bits in 1..=4u8 {
        for scale in [ScaleMode::Norm, ScaleMode::Lsq, ScaleMode::Proj] {
            let (m_ind, v_ind, _) = ip_stats(d, bits, Mode::Mse, scale, 20_000, false);
            let (m_cor, v_cor, _) = ip_stats(d, bits, Mode::Mse, scale, 20_000, true);
            println!(
                "mse b={bits} scale={:<4}: independent mean {m_ind:+.2e} d·Var {v_ind:.4} | correlated(ρ=.8) mean {m_cor:+.2e} d·Var {v_cor:.4}",
                scale.name()
            );
        }
    }
}
