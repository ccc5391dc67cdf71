//! A fuzz harness that runs on stable Rust: every decoder of untrusted bytes is fed valid
//! encodings mutated by a small deterministic PRNG (bit flips, byte overwrites, truncation,
//! extension, splices, length fields set to extremes), most with the CRC-32 trailer re-sealed
//! so that the mutations reach the parsers behind the checksum. A decoder must return `Ok` or
//! `Err` — never panic, never take long — and what it accepts must be usable (searched,
//! dequantized, re-encoded).
//!
//! `cargo test` runs a short pass (1,500 inputs per decoder, about a second). `scripts/fuzz.sh` runs it
//! for longer: `FUZZ_SECONDS` (per decoder) and `FUZZ_SEED` (default: a fixed seed, so a
//! failure reproduces; the seed and case number are printed with the failing input).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use turboquant::entropy::{self, FrequencyModel};
use turboquant::format;
use turboquant::packing;
use turboquant::rng::SplitMix64;
use turboquant::search::{Filter, Index, IndexOptions, Metric};
use turboquant::{Mode, Quantizer, ScaleMode};

/// The run's budget per decoder: `FUZZ_SECONDS`, else `CASES` inputs.
const CASES: usize = 1500;
/// No decoder may take this long on one input (a hostile size must be refused, not built).
const SLOW: Duration = Duration::from_secs(5);

fn budget() -> (Option<Duration>, usize) {
    match std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        Some(s) => (Some(Duration::from_secs_f64(s)), usize::MAX),
        None => (None, CASES),
    }
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f022)
}

struct Rng(SplitMix64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.0.next_u64() as u8
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Values whose bit patterns stress length fields.
const EXTREMES: [u64; 8] = [
    0,
    1,
    31,
    u32::MAX as u64,
    1 << 24,
    (1 << 24) - 1,
    u64::MAX,
    i64::MAX as u64,
];

/// One mutation of `seed_input`; the CRC trailer is re-sealed with probability `seal`%.
fn mutate(rng: &mut Rng, input: &[u8], seal: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    let body_len = v.len().saturating_sub(4);
    v.truncate(body_len);
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.byte();
            }
            2 => v.truncate(rng.below(len + 1)),
            3 => {
                let extra = rng.below(64);
                for _ in 0..extra {
                    v.push(rng.byte());
                }
            }
            4 if len >= 8 => {
                // a little-endian u64 or u32 length field set to an extreme value
                let x = EXTREMES[rng.below(EXTREMES.len())];
                let i = rng.below(len - 7);
                if rng.chance(50) {
                    v[i..i + 8].copy_from_slice(&x.to_le_bytes());
                } else {
                    v[i..i + 4].copy_from_slice(&(x as u32).to_le_bytes());
                }
            }
            5 if len > 1 => {
                // duplicate or drop a span
                let a = rng.below(len);
                let b = (a + rng.below(32)).min(len);
                if rng.chance(50) {
                    let span = v[a..b].to_vec();
                    v.splice(a..a, span);
                } else {
                    v.drain(a..b);
                }
            }
            _ if len > 0 => {
                let i = rng.below(len);
                v[i] = v[i].wrapping_add(1);
            }
            _ => {}
        }
    }
    if rng.chance(seal) {
        let crc = crc32(&v);
        v.extend_from_slice(&crc.to_le_bytes());
    } else if input.len() >= 4 {
        v.extend_from_slice(&input[input.len() - 4..]);
    }
    v
}

fn crc32(data: &[u8]) -> u32 {
    // bitwise CRC-32 (IEEE), independent of the crate's implementation
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Feeds mutations of `seeds` to `decode` within the budget; panics (with a reproducer) if
/// `decode` panics or is slow.
fn fuzz(name: &str, seeds: &[Vec<u8>], seal: usize, decode: impl Fn(&[u8])) {
    let (time, cases) = budget();
    let start = Instant::now();
    let mut rng = Rng(SplitMix64::new(seed(), name.len() as u64));
    let mut case = 0usize;
    // the seeds themselves first: they must decode
    for s in seeds {
        decode(s);
    }
    while case < cases && time.is_none_or(|t| start.elapsed() < t) {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, seal);
        if declares_a_large_dim(&input) {
            continue;
        }
        let t = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| decode(&input)));
        let took = t.elapsed();
        if outcome.is_err() || took > SLOW {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!(
                "{name}: case {case} (FUZZ_SEED={}) {} after {took:?}; input ({} bytes): {hex}",
                seed(),
                if outcome.is_err() {
                    "panicked"
                } else {
                    "was slow"
                },
                input.len()
            );
        }
        case += 1;
    }
    eprintln!("{name}: {case} mutated inputs in {:.1?}", start.elapsed());
}

/// Whether a (well-formed) header declares a dimension above 2^16. Such a file is valid when
/// its sizes agree (an empty batch, a quantizer file), and decoding it costs what building a
/// quantizer of that dimension costs (seconds and hundreds of MB at 2^24): proportionate to
/// the request, not a decoder defect, so the harness skips it. Declared sizes that disagree
/// with the file are refused before anything is built (tested in `tests/test_reliability.py`).
fn declares_a_large_dim(input: &[u8]) -> bool {
    input.len() >= 10
        && &input[..4] == b"TQRS"
        && u32::from_le_bytes([input[6], input[7], input[8], input[9]]) > 1 << 16
}

fn data(n: usize, d: usize, seed: u64) -> Vec<f32> {
    let mut g = SplitMix64::new(seed, 7);
    (0..n * d)
        .map(|_| ((g.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
        .collect()
}

fn batch_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (d, bits, mode, n) in [
        (16, 4, Mode::Mse, 5),
        (33, 3, Mode::Prod, 3),
        (8, 1, Mode::Mse, 2),
        (12, 8, Mode::Mse, 1),
        (20, 2, Mode::Prod, 0),
    ] {
        let q = Quantizer::new(d, bits, mode, ScaleMode::Lsq, 3).unwrap();
        let b = q.quantize(&data(n, d, d as u64)).unwrap();
        for entropy in [false, true] {
            seeds.push(format::batch_to_bytes(&q, &b.view(), entropy).unwrap());
        }
    }
    seeds
}

#[test]
fn fuzz_batch_from_bytes() {
    fuzz("batch_from_bytes", &batch_seeds(), 80, |input| {
        if let Ok((q, b)) = format::batch_from_bytes(input) {
            let view = b.view();
            let mut out = vec![0.0; b.n * q.dim()];
            let _ = q.dequantize(&view, &mut out);
            let mut ip = vec![0.0; b.n];
            let _ = q.inner_products(&vec![0.5; q.dim()], &view, &mut ip);
            let again = format::batch_to_bytes(&q, &view, false).unwrap();
            assert_eq!(format::batch_from_bytes(&again).unwrap().1, b);
        }
    });
}

#[test]
fn fuzz_quantizer_from_bytes() {
    let seeds: Vec<Vec<u8>> = [(16, 4, Mode::Mse), (40, 3, Mode::Prod)]
        .iter()
        .map(|&(d, b, m)| {
            format::quantizer_to_bytes(&Quantizer::new(d, b, m, ScaleMode::Proj, 9).unwrap())
        })
        .collect();
    fuzz("quantizer_from_bytes", &seeds, 80, |input| {
        if let Ok(q) = format::quantizer_from_bytes(input) {
            // a dimension declared by hostile bytes must still be a usable quantizer
            if q.dim() <= 4096 {
                let x = data(2, q.dim(), 1);
                q.quantize(&x).unwrap();
            }
        }
    });
}

fn index_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (d, bits, metric, rerank, n) in [
        (16, 4, Metric::InnerProduct, false, 40),
        (12, 3, Metric::Cosine, true, 33),
        (8, 2, Metric::L2, false, 5),
        (10, 1, Metric::InnerProduct, false, 0),
        (9, 6, Metric::L2, true, 3),
    ] {
        let mut ix = Index::new(
            d,
            IndexOptions {
                bits,
                metric,
                rerank,
                ..Default::default()
            },
        )
        .unwrap();
        if n > 0 {
            ix.add(&data(n, d, n as u64)).unwrap();
            ix.remove(&[1, 3]);
        }
        seeds.push(ix.to_bytes());
    }
    // a centred index (centring needs a first batch of at least 256 vectors)
    let mut ix = Index::new(8, IndexOptions::default()).unwrap();
    ix.add(&data(260, 8, 5)).unwrap();
    seeds.push(ix.to_bytes());
    seeds
}

#[test]
fn fuzz_index_from_bytes() {
    fuzz("index_from_bytes", &index_seeds(), 85, |input| {
        if let Ok(mut ix) = Index::from_bytes(input) {
            let d = ix.dim();
            let q = data(2, d, 2);
            let r = ix.search(&q, 7, &Filter::All).unwrap();
            assert_eq!(r.ids.len(), 2 * r.k);
            ix.search(&q, 3, &Filter::Ids(&[0, 2, 99])).unwrap();
            let bytes = ix.to_bytes();
            assert!(Index::from_bytes(&bytes).is_ok());
            let _ = ix.add(&data(3, d, 3));
            ix.search(&q, 4, &Filter::All).unwrap();
        }
    });
}

#[test]
fn fuzz_index_load_mapped() {
    let dir = std::env::temp_dir().join(format!("tq_fuzz_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ix.tqi");
    let seeds = index_seeds();
    let (time, cases) = budget();
    let cases = cases.min(60);
    let start = Instant::now();
    let mut rng = Rng(SplitMix64::new(seed(), 77));
    for case in 0..cases {
        if time.is_some_and(|t| start.elapsed() > t) {
            break;
        }
        let pick = rng.below(seeds.len());
        let input = mutate(&mut rng, &seeds[pick], 85);
        if declares_a_large_dim(&input) {
            continue;
        }
        std::fs::write(&path, &input).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(ix) = Index::load(&path, true) {
                ix.search(&data(1, ix.dim(), 1), 5, &Filter::All).unwrap();
            }
        }));
        assert!(outcome.is_ok(), "mapped load, case {case}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fuzz_entropy_streams() {
    let (time, cases) = budget();
    let start = Instant::now();
    let mut rng = Rng(SplitMix64::new(seed(), 1234));
    let mut case = 0;
    while case < cases * 4 && time.is_none_or(|t| start.elapsed() < t) {
        let k = 2 + rng.below(255);
        // a random frequency model (hostile ones included) and a random or encoded stream
        let freq: Vec<u32> = (0..k)
            .map(|_| {
                if rng.chance(20) {
                    0
                } else {
                    let top = if rng.chance(10) { 70_000 } else { 600 };
                    rng.below(top) as u32
                }
            })
            .collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(model) = FrequencyModel::from_frequencies(&freq) else {
                return;
            };
            let n = rng.below(300);
            let usable: Vec<u8> = (0..k).filter(|&s| freq[s] > 0).map(|s| s as u8).collect();
            let symbols: Vec<u8> = (0..n)
                .map(|_| {
                    if usable.is_empty() || rng.chance(2) {
                        rng.byte()
                    } else {
                        usable[rng.below(usable.len())]
                    }
                })
                .collect();
            let stream = match entropy::encode(&symbols, &model) {
                Ok(s) => {
                    if let Ok(back) = entropy::decode(&s, n, &model) {
                        assert_eq!(back, symbols, "round trip");
                    }
                    s
                }
                Err(_) => (0..rng.below(64)).map(|_| rng.byte()).collect(),
            };
            let mut bad = stream.clone();
            if !bad.is_empty() && rng.chance(70) {
                let i = rng.below(bad.len());
                bad[i] ^= 1 << rng.below(8);
            }
            bad.truncate(bad.len() - rng.below(bad.len().min(4) + 1));
            let count = if rng.chance(10) {
                EXTREMES[rng.below(EXTREMES.len())] as usize
            } else {
                rng.below(2 * n + 2)
            };
            let _ = entropy::decode(&bad, count, &model);
        }));
        assert!(
            outcome.is_ok(),
            "entropy case {case} (FUZZ_SEED={})",
            seed()
        );
        case += 1;
    }
}

#[test]
fn fuzz_unpackers() {
    let (time, cases) = budget();
    let start = Instant::now();
    let mut rng = Rng(SplitMix64::new(seed(), 4321));
    let mut case = 0;
    while case < cases * 4 && time.is_none_or(|t| start.elapsed() < t) {
        let bits = rng.below(10) as u8; // 0 and 9 are invalid
        let dim = if rng.chance(5) {
            EXTREMES[rng.below(EXTREMES.len())] as usize
        } else {
            rng.below(70)
        };
        let len = rng.below(200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(codes) = packing::unpack(&bytes, dim, bits) {
                let again = packing::pack(&codes, dim, bits).unwrap();
                // padding bits may differ; the codes must survive a second round trip
                assert_eq!(packing::unpack(&again, dim, bits).unwrap(), codes);
            }
            let _ = packing::pack(&bytes, dim, bits);
        }));
        assert!(
            outcome.is_ok(),
            "unpack case {case}: dim {dim} bits {bits} len {len}"
        );
        case += 1;
    }
}

#[test]
fn crc_matches_the_crate() {
    let q = Quantizer::new(16, 4, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
    let bytes = format::quantizer_to_bytes(&q);
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    assert_eq!(crc32(body).to_le_bytes(), tail);
}
