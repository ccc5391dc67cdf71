//! Issue 12 from Rust: robust norms, the checked mapping, atomic saves, fork safety.

mod common;

use common::gaussian;
use turboquant::search::{Filter, Index, IndexOptions, Metric};
use turboquant::{Error, Mode, Quantizer, ScaleMode};

#[test]
fn tiny_and_huge_norms_quantize_like_the_unit_vector() {
    let d = 96;
    let x = common::unit_rows(gaussian(20, d, 3), d);
    for mode in [Mode::Mse, Mode::Prod] {
        for scale in [ScaleMode::Lsq, ScaleMode::Norm, ScaleMode::Proj] {
            let q = Quantizer::new(d, 4, mode, scale, 1).unwrap();
            let unit = q.quantize(&x).unwrap();
            for factor in [1e-25f64, 1e-40, 1e20, 1e36] {
                let scaled: Vec<f32> = x.iter().map(|&v| (v as f64 * factor) as f32).collect();
                let b = q.quantize(&scaled).unwrap();
                // below 1e-38 the inputs are subnormal floats with fewer significant bits:
                // a coordinate next to a boundary may land in the neighbouring cell
                let subnormal = factor < 1e-37;
                let differ = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
                let allowed = if subnormal { b.codes.len() / 50 } else { 0 };
                assert!(
                    differ(&b.codes, &unit.codes) <= allowed,
                    "codes at {factor} {mode:?} {scale:?}"
                );
                assert!(differ(&b.qjl_signs, &unit.qjl_signs) <= allowed + allowed / 2);
                let tol = if subnormal { 1e-2 } else { 1e-5 };
                for (s, u) in b.scales.iter().zip(&unit.scales) {
                    let rel = (*s as f64 / factor - *u as f64).abs() / (*u as f64);
                    assert!(rel < tol, "{factor}: {s} vs {u}");
                }
            }
        }
    }
    let q = Quantizer::new(d, 4, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
    assert!(matches!(
        q.quantize(&vec![3e38; d]),
        Err(Error::NonFinite(_))
    ));
    assert!(matches!(
        q.quantize(&vec![f32::NAN; d]),
        Err(Error::NonFinite(_))
    ));
    let zero = q.quantize(&vec![0.0; d]).unwrap();
    assert_eq!(zero.scales, vec![0.0]);
}

#[test]
fn cosine_index_of_tiny_vectors_scores_like_unit_ones() {
    let d = 32;
    let x = gaussian(100, d, 5);
    let tiny: Vec<f32> = x.iter().map(|&v| (v as f64 * 1e-25) as f32).collect();
    let opts = IndexOptions {
        metric: Metric::Cosine,
        center: false,
        ..Default::default()
    };
    let mut ix = Index::new(d, opts).unwrap();
    ix.add(&tiny).unwrap();
    let r = ix.search(&tiny[..d], 1, &Filter::All).unwrap();
    assert_eq!(r.ids, vec![0]);
    assert!((r.scores[0] - 1.0).abs() < 0.05, "{}", r.scores[0]);
}

#[test]
fn a_mapped_index_whose_file_changes_is_an_error() {
    let dir = std::env::temp_dir().join(format!("tq_rel_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ix.tqi");
    let d = 32;
    let x = gaussian(3000, d, 1);
    let mut ix = Index::new(d, IndexOptions::default()).unwrap();
    ix.add(&x).unwrap();
    ix.save(&path).unwrap();
    let want = ix.search(&x[..d], 5, &Filter::All).unwrap();
    let mut mapped = Index::load(&path, true).unwrap();
    assert!(mapped.is_mapped());
    assert_eq!(mapped.search(&x[..d], 5, &Filter::All).unwrap(), want);
    // replaced by a save (rename): the mapping keeps its file
    Index::new(d, IndexOptions::default())
        .unwrap()
        .save(&path)
        .unwrap();
    assert_eq!(mapped.search(&x[..d], 5, &Filter::All).unwrap(), want);
    ix.save(&path).unwrap();
    let reloaded = Index::load(&path, true).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let err = reloaded.search(&x[..d], 5, &Filter::All).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert!(matches!(
        reloaded.save(dir.join("b")),
        Err(Error::Corrupt(_))
    ));
    let mut copy = reloaded.clone();
    assert!(matches!(copy.add(&x[..d]), Err(Error::Corrupt(_))));
    // an index added to before the change owns its codes and is unaffected
    mapped.add(&x[..d]).unwrap();
    assert!(!mapped.is_mapped());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn concurrent_saves_to_one_path_all_succeed_and_leave_no_temp() {
    let dir = std::env::temp_dir().join(format!("tq_save_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ix.tqi");
    let d = 16;
    let indexes: Vec<Index> = (0..4)
        .map(|i| {
            let mut ix = Index::new(d, IndexOptions::default()).unwrap();
            ix.add(&gaussian(100 + i, d, i as u64)).unwrap();
            ix
        })
        .collect();
    std::thread::scope(|s| {
        for ix in &indexes {
            let path = &path;
            s.spawn(move || {
                for _ in 0..10 {
                    ix.save(path).unwrap();
                }
            });
        }
    });
    let back = Index::load(&path, false).unwrap();
    assert!((100..104).contains(&back.len()));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ix.tqi")]);
    // a save that cannot rename removes its temporary file
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("keep"), b"x").unwrap();
    assert!(matches!(indexes[0].save(&sub), Err(Error::Io(_))));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    std::fs::remove_dir_all(&dir).ok();
}
