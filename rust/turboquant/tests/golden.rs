//! Golden vectors: `tests/golden/quantize_v1.json` (written by `scripts/make_golden.py`) holds
//! inputs defined by an integer formula and the sha256 of the exact bytes they quantize to.
//! This test recomputes every hash at every SIMD level this CPU runs, so a change of the
//! rotation streams, the codebooks, the bit layout or the file formats cannot pass unnoticed
//! (Python checks the same file in `tests/test_golden.py`; GPU kernels will be held to it too).

use turboquant::format;
use turboquant::search::{Index, IndexOptions, Metric};
use turboquant::simd::{self, SimdLevel};
use turboquant::{Mode, Quantizer, ScaleMode};

const GOLDEN: &str = include_str!("../../../tests/golden/quantize_v1.json");

/// The golden inputs: exactly representable float32 values (see the file's "formula").
fn golden_input(case: u64, n: usize, dim: usize) -> Vec<f32> {
    (0..(n * dim) as u64)
        .map(|k| {
            let mut z = (case * 1_000_003 + k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z ^= z >> 31;
            (((z >> 40) % 2001) as f32 - 1000.0) / 256.0
        })
        .collect()
}

/// The raw text of `"key": value` on a one-line JSON object of the golden file.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": ");
    let start = line.find(&pat).unwrap_or_else(|| panic!("{key} missing")) + pat.len();
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().trim_matches('"')
}

fn num(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Records of one section (`"quantizers"` or `"indexes"`): one JSON object per line.
fn records(section: &str) -> Vec<&'static str> {
    let start = GOLDEN.find(&format!("\"{section}\": [")).unwrap();
    GOLDEN[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('{'))
        .collect()
}

fn levels() -> Vec<SimdLevel> {
    let mut v = vec![SimdLevel::Scalar];
    if simd::active_level() != SimdLevel::Scalar {
        v.push(simd::active_level());
    }
    v
}

#[test]
fn quantizer_bytes_match_the_golden_hashes() {
    let recs = records("quantizers");
    assert!(recs.len() >= 8);
    for r in recs {
        let (dim, n) = (num(r, "dim") as usize, num(r, "n") as usize);
        let mode = if field(r, "unbiased") == "true" {
            Mode::Prod
        } else {
            Mode::Mse
        };
        let scale = ScaleMode::parse(field(r, "scale")).unwrap();
        let q = Quantizer::new(dim, num(r, "bits") as u8, mode, scale, num(r, "seed")).unwrap();
        let x = golden_input(num(r, "case"), n, dim);
        assert_eq!(
            sha256(&f32_bytes(&x)),
            field(r, "input"),
            "input formula: {r}"
        );
        for level in levels() {
            let b = q.quantize_at(level, &x).unwrap();
            let at = format!("{level:?}: {r}");
            assert_eq!(sha256(&b.codes), field(r, "codes"), "codes at {at}");
            assert_eq!(
                sha256(&f32_bytes(&b.scales)),
                field(r, "scales"),
                "scales at {at}"
            );
            assert_eq!(sha256(&b.qjl_signs), field(r, "signs"), "signs at {at}");
            assert_eq!(
                sha256(&f32_bytes(&b.residual_norms)),
                field(r, "residual_norms"),
                "residual norms at {at}"
            );
            let mut rotated = x.clone();
            for row in rotated.chunks_exact_mut(dim) {
                q.rotation().apply_at(level, row);
            }
            assert_eq!(
                sha256(&f32_bytes(&rotated)),
                field(r, "rotation"),
                "rotation at {at}"
            );
            let raw = format::batch_to_bytes(&q, &b.view(), false).unwrap();
            assert_eq!(sha256(&raw), field(r, "file_raw"), "raw file at {at}");
            let rans = format::batch_to_bytes(&q, &b.view(), true).unwrap();
            assert_eq!(sha256(&rans), field(r, "file_rans"), "rANS file at {at}");
        }
    }
}

#[test]
fn index_files_match_the_golden_hashes() {
    let recs = records("indexes");
    assert!(recs.len() >= 3);
    for r in recs {
        let (dim, n) = (num(r, "dim") as usize, num(r, "n") as usize);
        let mut ix = Index::new(
            dim,
            IndexOptions {
                bits: num(r, "bits") as u8,
                metric: Metric::parse(field(r, "metric")).unwrap(),
                seed: num(r, "seed"),
                rerank: field(r, "rerank") == "true",
                center: true,
            },
        )
        .unwrap();
        ix.add(&golden_input(num(r, "case"), n, dim)).unwrap();
        ix.remove(&[1, 4]);
        assert_eq!(sha256(&ix.to_bytes()), field(r, "file"), "index file: {r}");
    }
}

#[test]
fn sha256_of_known_messages() {
    assert_eq!(
        sha256(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let long = vec![b'a'; 1000];
    assert_eq!(
        sha256(&long),
        "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
    );
}

/// SHA-256 (FIPS 180-4), written out here so the test needs no dependency.
fn sha256(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7]
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [
                t1.wrapping_add(t2),
                v[0],
                v[1],
                v[2],
                v[3].wrapping_add(t1),
                v[4],
                v[5],
                v[6],
            ];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}
