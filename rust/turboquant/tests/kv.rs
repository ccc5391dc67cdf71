//! The KV store: attention from the codes equals attention over the dequantized cache (f64),
//! appends never re-quantize, masks and GQA, every SIMD level bit-identical.

use turboquant::kv::{AttendParams, ExactSegment, KvConfig, KvStore, SideSpec};
use turboquant::rng::SplitMix64;

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed, 7);
    (0..n)
        .map(|_| {
            // Box-Muller from two uniforms
            let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let u2 = ((rng.next_u64() >> 11) as f64) / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect()
}

fn side(bits: u8, outliers: usize) -> SideSpec {
    SideSpec {
        bits,
        outliers,
        outlier_bits: bits + 1,
        center: true,
    }
}

/// Reference attention in f64 over dequantized K/V (`b × h × s × d`) for queries
/// (`b × hq × q × d`) with per-(b, query) ranges; returns outputs and log-sum-exps.
#[allow(clippy::too_many_arguments)]
fn reference(
    k: &[f32],
    v: &[f32],
    q: &[f32],
    (b, h, s, d): (usize, usize, usize, usize),
    hq: usize,
    ql: usize,
    lo: &[i64],
    hi: &[i64],
    scaling: f64,
    cap: Option<f64>,
) -> (Vec<f64>, Vec<f64>) {
    let g = hq / h;
    let mut out = vec![0.0; b * hq * ql * d];
    let mut lse = vec![f64::NEG_INFINITY; b * hq * ql];
    for bi in 0..b {
        for head in 0..hq {
            let kh = head / g;
            for i in 0..ql {
                let (l0, l1) = (
                    lo[bi * ql + i].max(0) as usize,
                    hi[bi * ql + i].min(s as i64),
                );
                let l1 = (l1.max(0) as usize).max(l0);
                if l0 == l1 {
                    continue;
                }
                let qrow = &q[((bi * hq + head) * ql + i) * d..][..d];
                let logits: Vec<f64> = (l0..l1)
                    .map(|t| {
                        let krow = &k[((bi * h + kh) * s + t) * d..][..d];
                        let dot: f64 = qrow
                            .iter()
                            .zip(krow)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        let z = scaling * dot;
                        match cap {
                            Some(c) => c * (z / c).tanh(),
                            None => z,
                        }
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|z| (z - m).exp()).collect();
                let sum: f64 = w.iter().sum();
                let o = &mut out[((bi * hq + head) * ql + i) * d..][..d];
                for (t, wt) in (l0..l1).zip(&w) {
                    let vrow = &v[((bi * h + kh) * s + t) * d..][..d];
                    for (oj, &vj) in o.iter_mut().zip(vrow) {
                        *oj += wt / sum * vj as f64;
                    }
                }
                lse[(bi * hq + head) * ql + i] = m + sum.ln();
            }
        }
    }
    (out, lse)
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

#[allow(clippy::too_many_arguments)]
fn check_case(
    d: usize,
    h: usize,
    hq: usize,
    b: usize,
    s: usize,
    ql: usize,
    key: SideSpec,
    value: SideSpec,
    cap: Option<f32>,
    window: Option<usize>,
) {
    let cfg = KvConfig {
        head_dim: d,
        kv_heads: h,
        key,
        value,
        seed: 3,
    };
    let mut store = KvStore::new(cfg).unwrap();
    // keys with per-channel offsets, as real keys have
    let mut k = gaussian(b * h * s * d, 1);
    for (i, x) in k.iter_mut().enumerate() {
        *x += (i % d) as f32 * 0.05;
    }
    let v = gaussian(b * h * s * d, 2);
    // two appends: a prefill, then the rest in small steps
    let first = s / 2;
    let split = |x: &[f32], t0: usize, t1: usize| -> Vec<f32> {
        let mut o = Vec::new();
        for st in 0..b * h {
            o.extend_from_slice(&x[(st * s + t0) * d..(st * s + t1) * d]);
        }
        o
    };
    store
        .append(&split(&k, 0, first), &split(&v, 0, first), b, first)
        .unwrap();
    let mut t = first;
    while t < s {
        let e = (t + 7).min(s);
        store
            .append(&split(&k, t, e), &split(&v, t, e), b, e - t)
            .unwrap();
        t = e;
    }
    assert_eq!(store.len(), s);
    let q = gaussian(b * hq * ql * d, 5);
    // causal: query i sits at position s - ql + i; optional sliding window; batch row 1 padded
    let mut lo = vec![0i64; b * ql];
    let mut hi = vec![0i64; b * ql];
    for bi in 0..b {
        for i in 0..ql {
            let pos = (s - ql + i) as i64;
            hi[bi * ql + i] = pos + 1;
            lo[bi * ql + i] =
                window.map_or(0, |w| pos + 1 - w as i64) + if bi == 1 { 5 } else { 0 };
        }
    }
    let scaling = 1.0 / (d as f32).sqrt();
    let params = AttendParams {
        query_heads: hq,
        q_len: ql,
        lo: &lo,
        hi: &hi,
        scaling,
        softcap: cap,
        exact: None,
    };
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; b * hq * ql];
    store.attend(&q, &params, &mut out, &mut lse).unwrap();
    let mut kd = vec![0.0; b * h * s * d];
    let mut vd = vec![0.0; b * h * s * d];
    store.decompress(&mut kd, &mut vd).unwrap();
    let (want, want_lse) = reference(
        &kd,
        &vd,
        &q,
        (b, h, s, d),
        hq,
        ql,
        &lo,
        &hi,
        scaling as f64,
        cap.map(|c| c as f64),
    );
    let err = rel_err(&out, &want);
    assert!(err < 1e-5, "relative error {err} (d {d}, q {ql}, {key:?})");
    for (g, w) in lse.iter().zip(&want_lse) {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
            "lse {g} vs {w}"
        );
    }
}

#[test]
fn attention_from_codes_equals_dequantized_reference() {
    // decode, GQA 4:1, 4 bits
    check_case(128, 2, 8, 2, 300, 1, side(4, 0), side(4, 0), None, None);
    // chunked prefill / speculative rows, asymmetric K4/V3, sliding window
    check_case(64, 2, 6, 2, 200, 9, side(4, 0), side(3, 0), None, Some(50));
    // outlier split (2.5 bits), soft-capping, MQA
    check_case(
        64,
        1,
        4,
        2,
        150,
        3,
        side(2, 32),
        side(2, 16),
        Some(5.0),
        None,
    );
    // d not a power of two, 2 bits
    check_case(80, 1, 2, 2, 100, 1, side(2, 0), side(2, 0), None, None);
    // 2 bits at d = 128 with 8 rows per stream (two groups of 4 in the value sums)
    check_case(128, 2, 16, 1, 200, 1, side(2, 0), side(2, 0), None, None);
    // 3 bits at d = 128, GQA 4 (key periods of three words, value runs in 64-slot tiles)
    check_case(128, 2, 8, 1, 200, 1, side(3, 0), side(3, 0), None, None);
    // 1-bit parts, 3-bit rows that end inside a 32-bit word, parts of 8 and 24 coordinates
    // (a 16-coordinate group and a tail of 8 in the value sums)
    check_case(72, 1, 3, 1, 90, 2, side(1, 8), side(2, 24), None, None);
    // 1-bit values of 136 coordinates (one whole 16-byte chunk of 128 and a 2-bit part of 8)
    check_case(136, 1, 2, 1, 60, 1, side(2, 0), side(1, 8), None, None);
}

/// Stored codes (`s` tokens) then `e` full-precision tokens in one softmax, against the f64
/// reference over the dequantized tokens followed by the exact ones (causal queries last).
fn check_exact_join(s: usize, e: usize, ql: usize, cap: Option<f32>) {
    let (b, h, hq, d) = (2, 2, 4, 64);
    let cfg = KvConfig {
        head_dim: d,
        kv_heads: h,
        key: side(3, 0),
        value: side(4, 0),
        seed: 1,
    };
    let mut store = KvStore::new(cfg).unwrap();
    if s > 0 {
        store
            .append(
                &gaussian(b * h * s * d, 21),
                &gaussian(b * h * s * d, 22),
                b,
                s,
            )
            .unwrap();
    }
    let (ek, ev) = (gaussian(b * h * e * d, 23), gaussian(b * h * e * d, 24));
    let total = s + e;
    let mut allowed = vec![0u8; b * ql * e];
    let (mut lo, mut hi) = (vec![0i64; b * ql], vec![0i64; b * ql]);
    for bi in 0..b {
        for i in 0..ql {
            let pos = total - ql + i;
            lo[bi * ql + i] = if bi == 1 { 3 } else { 0 };
            hi[bi * ql + i] = (pos + 1) as i64;
            for t in 0..e {
                allowed[(bi * ql + i) * e + t] = u8::from(s + t <= pos && s + t >= 3 * bi);
            }
        }
    }
    let q = gaussian(b * hq * ql * d, 25);
    let p = AttendParams {
        query_heads: hq,
        q_len: ql,
        lo: &lo,
        hi: &hi,
        scaling: 0.125,
        softcap: cap,
        exact: Some(ExactSegment {
            tokens: e,
            keys: &ek,
            values: &ev,
            allowed: &allowed,
        }),
    };
    let (mut out, mut lse) = (vec![0.0; q.len()], vec![0.0; b * hq * ql]);
    store.attend(&q, &p, &mut out, &mut lse).unwrap();
    // reference over [dequantized codes ++ exact tokens]
    let (mut kd, mut vd) = (vec![0.0; b * h * s * d], vec![0.0; b * h * s * d]);
    store.decompress(&mut kd, &mut vd).unwrap();
    let join = |a: &[f32], x: &[f32]| -> Vec<f32> {
        let mut o = Vec::new();
        for st in 0..b * h {
            o.extend_from_slice(&a[st * s * d..(st + 1) * s * d]);
            o.extend_from_slice(&x[st * e * d..(st + 1) * e * d]);
        }
        o
    };
    let (want, want_lse) = reference(
        &join(&kd, &ek),
        &join(&vd, &ev),
        &q,
        (b, h, total, d),
        hq,
        ql,
        &lo,
        &hi,
        0.125,
        cap.map(|c| c as f64),
    );
    let err = rel_err(&out, &want);
    assert!(err < 1e-5, "relative error {err} (s {s}, e {e}, q {ql})");
    for (g, w) in lse.iter().zip(&want_lse) {
        assert!(
            (*g as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
            "lse {g} vs {w}"
        );
    }
}

#[test]
fn exact_segment_joins_the_codes_softmax() {
    check_exact_join(200, 9, 1, None); // decode: a residual window and the new token
    check_exact_join(150, 40, 12, Some(20.0)); // chunked prefill rows, soft-capping
    check_exact_join(0, 17, 5, None); // nothing stored yet: the exact part alone
}

#[test]
fn exact_segment_shapes_and_values_are_checked() {
    let cfg = KvConfig {
        head_dim: 64,
        kv_heads: 1,
        key: side(4, 0),
        value: side(4, 0),
        seed: 0,
    };
    let store = KvStore::new(cfg).unwrap();
    let q = gaussian(64, 1);
    let mut k = gaussian(3 * 64, 2);
    let (mut out, mut lse) = (vec![0.0; 64], vec![0.0; 1]);
    let attend = |k: &[f32], allowed: &[u8], out: &mut [f32], lse: &mut [f32]| {
        let p = AttendParams {
            query_heads: 1,
            q_len: 1,
            lo: &[0],
            hi: &[3],
            scaling: 0.125,
            softcap: None,
            exact: Some(ExactSegment {
                tokens: 3,
                keys: k,
                values: k,
                allowed,
            }),
        };
        store.attend(&q, &p, out, lse)
    };
    assert!(attend(&k, &[1, 1], &mut out, &mut lse).is_err());
    assert!(attend(&k[..128], &[1, 1, 1], &mut out, &mut lse).is_err());
    k[5] = f32::NAN;
    assert!(attend(&k, &[1, 1, 1], &mut out, &mut lse).is_err());
}

#[test]
fn appends_do_not_requantize_and_select_reorders() {
    let cfg = KvConfig {
        head_dim: 64,
        kv_heads: 2,
        key: side(3, 0),
        value: side(3, 0),
        seed: 0,
    };
    let x = gaussian(2 * 2 * 40 * 64, 9);
    let mut a = KvStore::new(cfg).unwrap();
    a.append(&x, &x, 2, 40).unwrap();
    let mut before = (vec![0.0; x.len()], vec![0.0; x.len()]);
    a.decompress(&mut before.0, &mut before.1).unwrap();
    let y = gaussian(2 * 2 * 64, 10);
    a.append(&y, &y, 2, 1).unwrap();
    let mut after = (vec![0.0; 2 * 2 * 41 * 64], vec![0.0; 2 * 2 * 41 * 64]);
    a.decompress(&mut after.0, &mut after.1).unwrap();
    for st in 0..4 {
        assert_eq!(
            &after.0[st * 41 * 64..st * 41 * 64 + 40 * 64],
            &before.0[st * 40 * 64..(st + 1) * 40 * 64]
        );
    }
    // select [1, 0] swaps the batch rows
    let mut sw = a.clone();
    sw.select(&[1, 0]).unwrap();
    let mut s = (vec![0.0; after.0.len()], vec![0.0; after.0.len()]);
    sw.decompress(&mut s.0, &mut s.1).unwrap();
    let half = after.0.len() / 2;
    assert_eq!(&s.0[..half], &after.0[half..]);
    sw.truncate(10);
    assert_eq!(sw.len(), 10);
    assert!(sw.select(&[2]).is_err());
    // a failed append (NaN) loses nothing
    let mut bad = y.clone();
    bad[3] = f32::NAN;
    assert!(a.append(&bad, &y, 2, 1).is_err());
    assert_eq!(a.len(), 41);
    assert!(a.append(&y, &y, 3, 1).is_err());
}

#[test]
fn bytes_are_codes_plus_scales() {
    let cfg = KvConfig {
        head_dim: 128,
        kv_heads: 8,
        key: side(4, 0),
        value: side(4, 0),
        seed: 0,
    };
    let mut st = KvStore::new(cfg).unwrap();
    let t = 1024;
    let x = gaussian(8 * t * 128, 4);
    st.append(&x, &x, 1, t).unwrap();
    // 64 code bytes + 4 scale bytes per token and side, + the centres
    let want = 8 * t * 2 * (64 + 4) + 2 * 8 * 128 * 4;
    assert_eq!(st.nbytes(), want);
}

#[test]
fn every_simd_level_gives_identical_attention() {
    // 3-bit key rows of 30 bytes (a part word cut short), a 4-bit part of 16; 4-bit values;
    // then 1/2-bit keys and 2/3-bit values with parts of 8 and 24 coordinates
    identical_at_every_level(96, side(3, 16), side(4, 0), 6, 2);
    identical_at_every_level(72, side(1, 8), side(2, 24), 6, 2);
    identical_at_every_level(256, side(4, 0), side(3, 0), 6, 2);
    identical_at_every_level(136, side(2, 0), side(1, 8), 6, 2);
    // the common shapes' own kernels (whole words of keys; value rows in groups of 4 over
    // 64-coordinate tiles of whole chunks): GQA 4 decode at 4 bits, 8 rows per stream at 2
    identical_at_every_level(128, side(4, 0), side(4, 0), 8, 1);
    identical_at_every_level(128, side(2, 0), side(2, 0), 4, 4);
    // 3 bits: key periods of three words (codes across words), value runs of 16 codes
    identical_at_every_level(128, side(3, 0), side(3, 0), 8, 1);
    identical_at_every_level(96, side(3, 0), side(4, 0), 4, 2);
}

fn identical_at_every_level(d: usize, key: SideSpec, value: SideSpec, hq: usize, ql: usize) {
    use turboquant::simd::SimdLevel;
    let cfg = KvConfig {
        head_dim: d,
        kv_heads: 2,
        key,
        value,
        seed: 1,
    };
    let (b, s) = (1, 333);
    let mut st = KvStore::new(cfg).unwrap();
    let k = gaussian(b * 2 * s * d, 11);
    let v = gaussian(b * 2 * s * d, 12);
    st.append(&k, &v, b, s).unwrap();
    let q = gaussian(b * hq * ql * d, 13);
    let lo: Vec<i64> = (0..ql as i64).map(|i| 10 * i).collect();
    let hi: Vec<i64> = (0..ql as i64).map(|i| 333 - ql as i64 + 1 + i).collect();
    let p = AttendParams {
        query_heads: hq,
        q_len: ql,
        lo: &lo,
        hi: &hi,
        scaling: 0.1,
        softcap: Some(30.0),
        exact: None,
    };
    let run = |level: SimdLevel| {
        let mut out = vec![0.0; q.len()];
        let mut lse = vec![0.0; b * hq * ql];
        st.attend_at(level, &q, &p, &mut out, &mut lse).unwrap();
        (out, lse)
    };
    let base = run(SimdLevel::Scalar);
    for level in SimdLevel::available() {
        assert_eq!(run(level), base, "{level:?} d {d}");
    }
}
