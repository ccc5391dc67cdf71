//! Every SIMD level must give bit-identical results to the scalar path.
mod common;

use common::gaussian;
use turboquant::simd::{kernels, SimdLevel};
use turboquant::{Mode, Quantizer, Rotation, ScaleMode};

#[test]
fn kernels_are_bit_exact_across_levels() {
    let levels = SimdLevel::available();
    println!("levels on this CPU: {levels:?}");
    for d in [7usize, 64, 96, 128, 384, 1000, 1536] {
        let x = gaussian(1, d, d as u64);
        let rot = Rotation::new(d, 3, 0).unwrap();
        let mut reference = x.clone();
        rot.apply_at(SimdLevel::Scalar, &mut reference);
        let codes: Vec<u8> = (0..d).map(|i| (i % 16) as u8).collect();
        let table: Vec<f32> = gaussian(1, d * 16, 5);
        let ref_lut = kernels::lut_sum(SimdLevel::Scalar, &table, 16, &codes);
        let ref_dot = kernels::dot(SimdLevel::Scalar, &x, &reference);
        for &level in &levels {
            let mut y = x.clone();
            rot.apply_at(level, &mut y);
            assert_eq!(bits(&y), bits(&reference), "rotation d={d} {level:?}");
            rot.apply_inverse_at(level, &mut y);
            let mut z = reference.clone();
            rot.apply_inverse_at(SimdLevel::Scalar, &mut z);
            assert_eq!(bits(&y), bits(&z), "inverse d={d} {level:?}");
            assert_eq!(
                kernels::lut_sum(level, &table, 16, &codes).to_bits(),
                ref_lut.to_bits()
            );
            assert_eq!(
                kernels::dot(level, &x, &reference).to_bits(),
                ref_dot.to_bits()
            );
        }
    }
}

#[test]
fn quantizer_output_is_bit_exact_across_levels() {
    let every_width = (1..=8u8).flat_map(|b| [(96usize, b, Mode::Mse), (128, b, Mode::Mse)]);
    let others = [
        (384, 3, Mode::Prod),
        (100, 6, Mode::Mse),
        (1536, 2, Mode::Mse),
    ];
    for (d, bits, mode) in every_width.chain(others) {
        let q = Quantizer::new(d, bits, mode, ScaleMode::Lsq, 1).unwrap();
        let mut x = gaussian(200, d, 8);
        // a one-hot row and a constant row: coordinates land exactly on few values
        x[..d].fill(0.0);
        x[3] = 1.0;
        x[d..2 * d].fill(0.5);
        let reference = q.quantize_at(SimdLevel::Scalar, &x).unwrap();
        for level in SimdLevel::available() {
            let got = q.quantize_at(level, &x).unwrap();
            assert_eq!(got, reference, "d={d} b={bits} {mode:?} at {level:?}");
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn block_rotation_equals_one_vector_rotation() {
    use turboquant::simd::kernels::LANES;
    for d in [64usize, 96, 384, 1000, 1100, 1536] {
        let rot = Rotation::new(d, 2, 1).unwrap();
        let x = gaussian(LANES, d, 3);
        let mut block = vec![[0.0f32; LANES]; d];
        for j in 0..d {
            for l in 0..LANES {
                block[j][l] = x[l * d + j];
            }
        }
        for level in SimdLevel::available() {
            let mut b = block.clone();
            rot.apply_lanes_at(level, &mut b, &mut Vec::new());
            for l in 0..LANES {
                let mut row = x[l * d..(l + 1) * d].to_vec();
                rot.apply_at(SimdLevel::Scalar, &mut row);
                let lane: Vec<f32> = b.iter().map(|r| r[l]).collect();
                assert_eq!(bits(&lane), bits(&row), "d={d} lane {l} {level:?}");
            }
        }
    }
}
