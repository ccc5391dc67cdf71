//! The flat index: recall on real data, SIMD parity, ids, filters, persistence, corruption.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use turboquant::search::{Filter, Index, IndexOptions, Metric, SearchParams, NO_ID};
use turboquant::simd::SimdLevel;

/// A minimal `.npy` reader for little-endian float16 / float32 / int32 2-D arrays → f32 / i64.
fn read_npy(path: &Path) -> Option<(Vec<f64>, usize, usize)> {
    let data = std::fs::read(path).ok()?;
    if !data.starts_with(b"\x93NUMPY") {
        return None;
    }
    let (hlen, start) = if data[6] == 1 {
        (u16::from_le_bytes([data[8], data[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&data[start..start + hlen]).ok()?;
    let descr = header.split("'descr':").nth(1)?.split('\'').nth(1)?;
    let shape = header
        .split("'shape':")
        .nth(1)?
        .split('(')
        .nth(1)?
        .split(')')
        .next()?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let body = &data[start + hlen..];
    let values: Vec<f64> = match descr {
        "<f2" => body
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        "<f4" => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        "<i4" => body
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        _ => return None,
    };
    Some((values, dims[0], dims[1]))
}

fn wiki_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/wiki_minilm")
}

fn recall_at(found: &[u64], truth: &[Vec<u64>], k: usize) -> f64 {
    let mut hits = 0;
    for (q, t) in truth.iter().enumerate() {
        let want: HashSet<u64> = t[..k].iter().copied().collect();
        hits += found[q * k..(q + 1) * k]
            .iter()
            .filter(|id| want.contains(id))
            .count();
    }
    hits as f64 / (truth.len() * k) as f64
}

#[test]
fn recall_floor_on_wiki_minilm() {
    let dir = wiki_dir();
    let (Some((base, n, d)), Some((queries, nq, _)), Some((gt, _, gk))) = (
        read_npy(&dir.join("base_f16.npy")),
        read_npy(&dir.join("queries_f16.npy")),
        read_npy(&dir.join("gt_ip_top100.npy")),
    ) else {
        println!("skipping: {} is absent", dir.display());
        return;
    };
    let base: Vec<f32> = base.iter().map(|&v| v as f32).collect();
    let queries: Vec<f32> = queries.iter().map(|&v| v as f32).collect();
    let truth: Vec<Vec<u64>> = gt
        .chunks_exact(gk)
        .map(|r| r.iter().map(|&v| v as u64).collect())
        .collect();
    assert_eq!((n, d, nq), (77_573, 384, 1000));
    for (bits, floor) in [(4u8, 0.93), (2, 0.80)] {
        let mut index = Index::new(
            d,
            IndexOptions {
                bits,
                ..Default::default()
            },
        )
        .unwrap();
        index.add(&base).unwrap();
        let fast = index.search(&queries, 10, &Filter::All).unwrap();
        let float = index
            .search_with(
                &queries,
                &SearchParams {
                    k: 10,
                    float_tables: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let (r_fast, r_float) = (
            recall_at(&fast.ids, &truth, 10),
            recall_at(&float.ids, &truth, 10),
        );
        // How much of the exhaustive f32-table answer the u8 scan + f32 refine reproduces.
        let float_top: Vec<Vec<u64>> = float.ids.chunks_exact(10).map(|r| r.to_vec()).collect();
        let agree = recall_at(&fast.ids, &float_top, 10);
        println!(
            "wiki {bits}-bit recall@10: u8 scan + refine {r_fast:.4}, f32 tables {r_float:.4}, \
             agreement with the f32-table top-10 {agree:.4}"
        );
        assert!(
            agree >= 0.99,
            "{bits}-bit: the u8 scan drops {} of the f32 top-10",
            1.0 - agree
        );
        assert!(r_fast >= floor, "{bits}-bit recall {r_fast} < {floor}");
        assert!(
            r_fast >= r_float - 0.01,
            "u8 tables lose {} recall",
            r_float - r_fast
        );
    }
}

fn sample_index(bits: u8, metric: Metric, rerank: bool, n: usize, d: usize) -> (Index, Vec<f32>) {
    let x = common::gaussian(n, d, 3);
    let mut index = Index::new(
        d,
        IndexOptions {
            bits,
            metric,
            seed: 11,
            rerank,
            center: true,
        },
    )
    .unwrap();
    index.add(&x).unwrap();
    (index, x)
}

#[test]
fn every_simd_level_returns_identical_results() {
    let cases = (1..=8u8)
        .map(|b| (b, Metric::InnerProduct))
        .chain([(4, Metric::L2), (3, Metric::Cosine)]);
    for (bits, metric) in cases {
        let (index, x) = sample_index(bits, metric, false, 1000, 72);
        let q = &x[..5 * 72];
        let want = index
            .search_with(
                q,
                &SearchParams {
                    k: 7,
                    level: SimdLevel::Scalar,
                    ..Default::default()
                },
            )
            .unwrap();
        for level in SimdLevel::available() {
            let got = index
                .search_with(
                    q,
                    &SearchParams {
                        k: 7,
                        level,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(got, want, "bits {bits} level {level:?}");
        }
    }
}

/// Exact top-k ids by brute force (ip, cosine or negated L2), for recall checks.
fn exact_top(x: &[f32], q: &[f32], d: usize, k: usize, metric: Metric) -> Vec<Vec<u64>> {
    q.chunks_exact(d)
        .map(|qq| {
            let mut s: Vec<(f32, u64)> = x
                .chunks_exact(d)
                .enumerate()
                .map(|(i, r)| {
                    let dot: f32 = r.iter().zip(qq).map(|(a, b)| a * b).sum();
                    let nr: f32 = r.iter().map(|a| a * a).sum::<f32>();
                    let score = match metric {
                        Metric::InnerProduct => dot,
                        Metric::Cosine => dot / nr.sqrt(),
                        Metric::L2 => 2.0 * dot - nr,
                    };
                    (score, i as u64)
                })
                .collect();
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            s[..k].iter().map(|p| p.1).collect()
        })
        .collect()
}

#[test]
fn metrics_and_reranking_find_the_true_neighbours() {
    let d = 64;
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        let (plain, x) = sample_index(4, metric, false, 3000, d);
        let (reranked, _) = sample_index(4, metric, true, 3000, d);
        let q = common::gaussian(50, d, 8);
        let truth = exact_top(&x, &q, d, 10, metric);
        let r_plain = recall_at(&plain.search(&q, 10, &Filter::All).unwrap().ids, &truth, 10);
        let res = reranked.search(&q, 10, &Filter::All).unwrap();
        let r_rerank = recall_at(&res.ids, &truth, 10);
        println!("{metric:?}: recall@10 {r_plain:.3}, re-ranked {r_rerank:.3}");
        assert!(r_plain > 0.75, "{metric:?} recall {r_plain}");
        assert!(
            r_rerank > 0.97 && r_rerank >= r_plain,
            "{metric:?} re-ranked {r_rerank}"
        );
        assert!(reranked.memory_bytes() >= plain.memory_bytes() + 3000 * d * 2);
        if metric == Metric::L2 {
            let first = res.ids[0] as usize;
            let dist: f32 = x[first * d..(first + 1) * d]
                .iter()
                .zip(&q[..d])
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            assert!(
                (res.scores[0] - dist).abs() < 1e-2 * dist,
                "{} vs {dist}",
                res.scores[0]
            );
            assert!(res.scores[0] <= res.scores[9]);
        }
    }
}

#[test]
fn single_query_equals_its_row_of_a_batch() {
    // 2,000 vectors: single queries run on the calling thread; 12,000: a single query (or a
    // few) splits the blocks between the caller and the pool; batches go to the pool.
    for (n, d) in [(2000, 48), (12_000, 16)] {
        let (index, x) = sample_index(3, Metric::InnerProduct, false, n, d);
        let batch = index.search(&x[..20 * d], 5, &Filter::All).unwrap();
        for i in 0..20 {
            let one = index
                .search(&x[i * d..(i + 1) * d], 5, &Filter::All)
                .unwrap();
            assert_eq!(one.ids, batch.ids[i * 5..(i + 1) * 5], "n={n} query {i}");
            assert_eq!(
                one.scores,
                batch.scores[i * 5..(i + 1) * 5],
                "n={n} query {i}"
            );
        }
        // A few queries (one kernel pass) share the blocks between the caller and the pool.
        for nq in [2, 5, 8] {
            let few = index.search(&x[..nq * d], 5, &Filter::All).unwrap();
            assert_eq!(few.ids, batch.ids[..nq * 5], "n={n}, {nq} queries");
            assert_eq!(few.scores, batch.scores[..nq * 5], "n={n}, {nq} queries");
        }
    }
}

#[test]
fn ids_are_stable_across_append_remove_and_save_load() {
    let d = 32;
    let x = common::gaussian(300, d, 5);
    let mut index = Index::new(
        d,
        IndexOptions {
            bits: 2,
            rerank: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        index.add(&x[..100 * d]).unwrap(),
        (0..100).collect::<Vec<_>>()
    );
    index
        .add_with_ids(&x[100 * d..200 * d], &(1000..1100).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(
        index.add(&x[200 * d..]).unwrap(),
        (1100..1200).collect::<Vec<_>>()
    );
    assert!(
        index.add_with_ids(&x[..d], &[5]).is_err(),
        "duplicate id accepted"
    );
    assert!(
        index.add_with_ids(&x[..d], &[u64::MAX]).is_err(),
        "out-of-range id accepted"
    );
    assert_eq!(index.len(), 300);
    // Every vector finds itself under its id.
    let ids_of = |ix: &Index, rows: std::ops::Range<usize>| {
        ix.search(&x[rows.start * d..rows.end * d], 1, &Filter::All)
            .unwrap()
            .ids
    };
    assert_eq!(ids_of(&index, 150..152), vec![1050, 1051]);
    assert_eq!(index.remove(&[1050, 7, 424242]), 2);
    assert_eq!(index.len(), 298);
    assert!(!index.contains(1050) && index.contains(1051));
    let after = index.search(&x, 300, &Filter::All).unwrap();
    assert!(!after.ids.contains(&1050) && !after.ids.contains(&7));
    let path = std::env::temp_dir().join(format!("tq_search_test_{}.tqi", std::process::id()));
    index.save(&path).unwrap();
    for mmap in [false, true] {
        let mut back = Index::load(&path, mmap).unwrap();
        assert_eq!(back.is_mapped(), mmap);
        assert_eq!(
            back.search(&x, 300, &Filter::All).unwrap(),
            after,
            "mmap {mmap}"
        );
        assert_eq!(ids_of(&back, 150..152), ids_of(&index, 150..152));
        assert_eq!(back.add(&x[..d]).unwrap(), vec![1200]);
        assert_eq!(back.remove(&[1200]), 1);
        assert_eq!(back.search(&x, 300, &Filter::All).unwrap(), after);
    }
    std::fs::remove_file(&path).ok();
}

#[test]
fn filters_apply_inside_the_scan() {
    let d = 40;
    let (mut index, x) = sample_index(4, Metric::InnerProduct, false, 1500, d);
    index.remove(&[3, 4]);
    let q = &x[..3 * d];
    let full = index.search(q, 1500, &Filter::All).unwrap();
    let allow: Vec<u64> = (0..1500).filter(|i| i % 7 == 0 || *i == 4).collect();
    let mut mask = vec![false; 1400];
    for &i in &allow {
        if (i as usize) < mask.len() {
            mask[i as usize] = true;
        }
    }
    for (filter, ok) in [
        (
            Filter::Ids(&allow),
            Box::new(|id: u64| id.is_multiple_of(7)) as Box<dyn Fn(u64) -> bool>,
        ),
        (
            Filter::Mask(&mask),
            Box::new(|id: u64| id.is_multiple_of(7) && id < 1400),
        ),
    ] {
        let got = index.search(q, 10, &filter).unwrap();
        for qi in 0..3 {
            let want: Vec<u64> = full.ids[qi * full.k..(qi + 1) * full.k]
                .iter()
                .copied()
                .filter(|&i| i != NO_ID && ok(i))
                .take(10)
                .collect();
            assert_eq!(got.ids[qi * 10..(qi + 1) * 10], want[..]);
        }
    }
    let none = index.search(q, 4, &Filter::Ids(&[3, 99_999])).unwrap();
    assert!(none.ids.iter().all(|&i| i == NO_ID));
    assert!(none.scores.iter().all(|s| *s == f32::NEG_INFINITY));
}

#[test]
fn corrupt_files_are_errors() {
    for (bits, metric, rerank) in [
        (4u8, Metric::L2, true),
        (3, Metric::Cosine, false),
        (6, Metric::InnerProduct, false),
    ] {
        let (mut index, _) = sample_index(bits, metric, rerank, 40, 12);
        index.remove(&[2]);
        let bytes = index.to_bytes();
        assert!(Index::from_bytes(&bytes).is_ok());
        for cut in 0..bytes.len() {
            assert!(Index::from_bytes(&bytes[..cut]).is_err());
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert!(Index::from_bytes(&bad).is_err(), "flip at {i} accepted");
        }
    }
    let path = std::env::temp_dir().join(format!("tq_corrupt_{}.tqi", std::process::id()));
    std::fs::write(&path, b"TQRS\x03\x01 definitely not an index").unwrap();
    assert!(Index::load(&path, true).is_err() && Index::load(&path, false).is_err());
    std::fs::remove_file(&path).ok();
    assert!(Index::load("/nonexistent/index.tqi", true).is_err());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut index = Index::new(8, IndexOptions::default()).unwrap();
    assert!(index.add(&[1.0; 7]).is_err());
    assert!(index.add(&[f32::NAN; 8]).is_err());
    assert!(index.add_with_ids(&[1.0; 16], &[1]).is_err());
    assert!(index.add_with_ids(&[1.0; 16], &[1, 1]).is_err());
    assert!(index.search(&[1.0; 9], 3, &Filter::All).is_err());
    assert!(index.search(&[f32::INFINITY; 8], 3, &Filter::All).is_err());
    assert!(Index::new(
        8,
        IndexOptions {
            bits: 9,
            ..Default::default()
        }
    )
    .is_err());
    // k is capped by the live vectors: an empty index gives empty rows, a huge k costs nothing
    let empty = index.search(&[1.0; 8], 3, &Filter::All).unwrap();
    assert_eq!((empty.k, empty.ids.len()), (0, 0));
    let mut small = Index::new(8, IndexOptions::default()).unwrap();
    small.add(&[0.5; 24]).unwrap();
    for k in [4, 1 << 40, usize::MAX] {
        let r = small.search(&[1.0; 16], k, &Filter::All).unwrap();
        assert_eq!((r.nq, r.k, r.ids.len()), (2, 3, 6));
    }
    let r = small
        .search(&[1.0; 8], usize::MAX, &Filter::Ids(&[1]))
        .unwrap();
    assert_eq!(r.ids, vec![1, NO_ID, NO_ID]);
    assert!(index
        .search(&[1.0; 8], 0, &Filter::All)
        .unwrap()
        .ids
        .is_empty());
}

/// Gaussian rows shifted by a shared offset of norm `shift` (as real embeddings share a mean).
fn offset_rows(n: usize, d: usize, seed: u64, shift: f32) -> Vec<f32> {
    let dir = common::unit_rows(common::gaussian(1, d, 99), d);
    let mut x = common::gaussian(n, d, seed);
    for row in x.chunks_exact_mut(d) {
        for (v, &m) in row.iter_mut().zip(&dir) {
            *v = *v / (d as f32).sqrt() + shift * m;
        }
    }
    x
}

#[test]
fn centring_improves_recall_and_scores_on_offset_data() {
    let (n, d) = (4000, 64);
    let x = offset_rows(n, d, 3, 1.5);
    let q = offset_rows(60, d, 8, 1.0);
    for metric in [Metric::InnerProduct, Metric::Cosine, Metric::L2] {
        let truth = exact_top(&x, &q, d, 10, metric);
        let mut result = Vec::new();
        for center in [false, true] {
            let mut index = Index::new(
                d,
                IndexOptions {
                    bits: 2,
                    metric,
                    center,
                    ..Default::default()
                },
            )
            .unwrap();
            index.add(&x).unwrap();
            assert_eq!(index.center().is_some(), center);
            let res = index.search(&q, 10, &Filter::All).unwrap();
            // reported scores against the exact ones, over every returned hit
            let mut err = 0.0f64;
            for (qi, qq) in q.chunks_exact(d).enumerate() {
                for j in 0..10 {
                    let slot = res.ids[qi * 10 + j] as usize;
                    let row = &x[slot * d..(slot + 1) * d];
                    let dot: f32 = row.iter().zip(qq).map(|(a, b)| a * b).sum();
                    let nr: f32 = row.iter().map(|a| a * a).sum();
                    let nq: f32 = qq.iter().map(|a| a * a).sum();
                    let exact = match metric {
                        Metric::InnerProduct => dot,
                        Metric::Cosine => dot / (nr * nq).sqrt(),
                        Metric::L2 => nq + nr - 2.0 * dot,
                    };
                    err += f64::from((res.scores[qi * 10 + j] - exact).abs());
                }
            }
            result.push((recall_at(&res.ids, &truth, 10), err / (60.0 * 10.0)));
        }
        let ((r_off, e_off), (r_on, e_on)) = (result[0], result[1]);
        println!(
            "{metric:?} 2-bit: recall@10 {r_off:.3} → {r_on:.3} centred, \
             mean |score error| {e_off:.4} → {e_on:.4}"
        );
        assert!(r_on >= r_off + 0.05, "{metric:?}: {r_off} → {r_on}");
        assert!(e_on < 0.7 * e_off, "{metric:?}: {e_off} → {e_on}");
    }
}

#[test]
fn the_centre_is_fixed_once_and_survives_save_load() {
    let d = 32;
    let x = offset_rows(600, d, 5, 1.0);
    let dir = std::env::temp_dir().join(format!("tq_centre_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // an empty index keeps its undecided centre through a file
    let empty = Index::new(d, IndexOptions::default()).unwrap();
    empty.save(dir.join("empty.tqi")).unwrap();
    let mut back = Index::load(dir.join("empty.tqi"), false).unwrap();
    assert_eq!(back.center(), None);
    back.add(&x).unwrap();
    let mean: Vec<f32> = (0..d)
        .map(|j| x.chunks_exact(d).map(|r| r[j]).sum::<f32>() / 600.0)
        .collect();
    let c = back.center().unwrap().to_vec();
    assert!(c.iter().zip(&mean).all(|(a, b)| (a - b).abs() < 1e-5));
    assert!(back.set_center(&mean).is_err(), "set after add");
    back.add(&offset_rows(10, d, 6, 3.0)).unwrap();
    assert_eq!(back.center().unwrap(), &c[..], "later adds keep the centre");
    for mmap in [false, true] {
        back.save(dir.join("full.tqi")).unwrap();
        let again = Index::load(dir.join("full.tqi"), mmap).unwrap();
        assert_eq!(again.center(), back.center());
        let q = &x[..8 * d];
        assert_eq!(
            again.search(q, 5, &Filter::All).unwrap(),
            back.search(q, 5, &Filter::All).unwrap()
        );
    }
    // an explicit centre, checked; a first batch below the minimum leaves the index uncentred
    let mut explicit = Index::new(d, IndexOptions::default()).unwrap();
    assert!(explicit.set_center(&[0.0; 3]).is_err());
    assert!(explicit.set_center(&vec![f32::NAN; d]).is_err());
    explicit.set_center(&mean).unwrap();
    explicit.add(&x[..5 * d]).unwrap();
    assert_eq!(explicit.center().unwrap(), &mean[..]);
    let mut small = Index::new(d, IndexOptions::default()).unwrap();
    small.add(&x[..5 * d]).unwrap();
    small.add(&x).unwrap();
    assert_eq!(small.center(), None);
    // a failed first add (norms beyond float32) leaves the index, centre included, untouched
    let mut failed = Index::new(d, IndexOptions::default()).unwrap();
    let huge: Vec<f32> = (0..600 * d)
        .map(|i| if (i / d) % 2 == 0 { 3e38 } else { -3e38 })
        .collect();
    assert!(failed.add(&huge).is_err());
    assert_eq!((failed.len(), failed.center()), (0, None));
    failed.add(&x).unwrap();
    assert!(failed.center().is_some());
    std::fs::remove_dir_all(&dir).ok();
}
