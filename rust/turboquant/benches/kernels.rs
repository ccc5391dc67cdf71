//! Criterion benchmarks of the core kernels: rotation, quantize, dequantize, bit packing and
//! lookup-table scoring. `cargo bench -p turboquant --bench kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use turboquant::packing::{pack, unpack};
use turboquant::simd::kernels::{self, LANES};
use turboquant::simd::{active_level, SimdLevel};
use turboquant::{Mode, Quantizer, Rotation, ScaleMode};

fn data(n: usize, d: usize) -> Vec<f32> {
    (0..n * d)
        .map(|i| (((i as u64).wrapping_mul(2654435761) % 2001) as f32 - 1000.0) / 577.0)
        .collect()
}

fn rotation(c: &mut Criterion) {
    let mut g = c.benchmark_group("rotation");
    for d in [128usize, 384, 1536] {
        let rot = Rotation::new(d, 0, 0).unwrap();
        g.throughput(Throughput::Elements(LANES as u64));
        for level in SimdLevel::available() {
            let mut block = vec![[0.5f32; LANES]; d];
            let mut spare = Vec::new();
            g.bench_with_input(
                BenchmarkId::new(format!("block16/{}", level.name()), d),
                &d,
                |b, _| b.iter(|| rot.apply_lanes_at(level, black_box(&mut block), &mut spare)),
            );
        }
        let mut one = data(1, d);
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("one-vector", d), &d, |b, _| {
            b.iter(|| rot.apply_at(active_level(), black_box(&mut one)))
        });
    }
    g.finish();
}

fn quantize(c: &mut Criterion) {
    turboquant::parallel::set_num_threads(1).unwrap();
    let mut g = c.benchmark_group("quantize-1-thread");
    g.sample_size(20);
    for d in [128usize, 384, 1536] {
        let n = 4096;
        let x = data(n, d);
        for bits in [2u8, 4] {
            let q = Quantizer::new(d, bits, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(format!("b{bits}"), d), &d, |b, _| {
                b.iter(|| q.quantize(black_box(&x)).unwrap())
            });
            let batch = q.quantize(&x).unwrap();
            let mut out = vec![0.0f32; n * d];
            g.bench_with_input(
                BenchmarkId::new(format!("dequantize-b{bits}"), d),
                &d,
                |b, _| b.iter(|| q.dequantize(&batch.view(), black_box(&mut out)).unwrap()),
            );
        }
    }
    g.finish();
}

fn packing(c: &mut Criterion) {
    let mut g = c.benchmark_group("packing");
    let (n, d) = (1024usize, 384usize);
    for bits in [1u8, 3, 4] {
        let codes: Vec<u8> = (0..n * d).map(|i| (i % (1 << bits)) as u8).collect();
        let packed = pack(&codes, d, bits).unwrap();
        g.throughput(Throughput::Elements((n * d) as u64));
        g.bench_with_input(BenchmarkId::new("pack", bits), &bits, |b, &bits| {
            b.iter(|| pack(black_box(&codes), d, bits).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("unpack", bits), &bits, |b, &bits| {
            b.iter(|| unpack(black_box(&packed), d, bits).unwrap())
        });
    }
    g.finish();
}

fn lut_scoring(c: &mut Criterion) {
    let mut g = c.benchmark_group("lut-score");
    let d = 384;
    let table = data(1, d * 16);
    let codes: Vec<u8> = (0..d).map(|i| (i * 7 % 16) as u8).collect();
    g.throughput(Throughput::Elements(d as u64));
    for level in SimdLevel::available() {
        g.bench_function(BenchmarkId::new("float-lut-4bit", level.name()), |b| {
            b.iter(|| kernels::lut_sum(level, black_box(&table), 16, black_box(&codes)))
        });
    }
    let q = Quantizer::new(d, 4, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
    let batch = q.quantize(&data(2048, d)).unwrap();
    let queries = data(8, d);
    let mut out = vec![0.0f32; 8 * 2048];
    g.throughput(Throughput::Elements(8 * 2048));
    g.bench_function("inner_products 8q x 2048", |b| {
        b.iter(|| {
            q.inner_products(black_box(&queries), &batch.view(), &mut out)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, rotation, quantize, packing, lut_scoring);
criterion_main!(benches);
