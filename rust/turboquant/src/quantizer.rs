//! TurboQuant_mse and TurboQuant_prod over batches of vectors, with packed storage.
//!
//! **MSE mode** (`b` bits): store a scale `s` (f32) and the `b`-bit Lloyd-Max codes `c` of the
//! rotated unit vector `y = R x / ‖x‖`; reconstruct `x̂ = Rᵀ (s · centroids[c])`.
//!
//! **Prod mode** (`b` bits, `b ≥ 2`): MSE mode with `b − 1` bits, then the residual
//! `r = x − x̂` is sketched by one bit per coordinate, `sign(S R r)`, plus `‖r‖` (f32), where
//! `S` is a second, independent structured rotation (so the projection `S R` is orthogonal and
//! `O(d log d)`). With unit rows, `E[⟨s_i, y⟩ sign⟨s_i, r⟩] = κ_d ⟨y, r⟩/‖r‖` where
//! `κ_d = E|⟨s, e_1⟩| = Γ(d/2)/(√π Γ((d+1)/2))`, so
//! `⟨y, x⟩ ≈ ⟨y, x̂⟩ + ‖r‖/(d κ_d) · Σ_i (S R y)_i · sign_i` is unbiased.
//!
//! **Scale** (what is stored instead of `‖x‖`), see [`ScaleMode`]. Let `a = ⟨y, ĉ⟩` and
//! `n = ‖ĉ‖²` for the unit reconstruction `ĉ = centroids[c]`:
//! `Norm` (the paper): `s = ‖x‖`; `Lsq`: `s = ‖x‖·a/n`, the least-squares scale, never a larger
//! error than `Norm`; `Proj`: `s = ‖x‖/a`, which makes the projection of `x̂` on `x` exact
//! (`⟨x̂, x⟩ = ‖x‖²`, as RaBitQ/EDEN-style length correction does): inner products with `x` itself
//! and with queries near `x` lose the `⟨x, x̂⟩` shrinkage bias, at a higher MSE.

use crate::codebook::{self, Codebook};
use crate::error::{Error, Result};
use crate::packing::{pack_block, row_bytes, unpack_block, unpack_row};
use crate::parallel;
use crate::rotation::Rotation;
use crate::simd::kernels::{self, LANES};
use crate::simd::lanes::{self, Lanes};
use crate::simd::SimdLevel;
use rayon::prelude::*;
use std::sync::Arc;

/// Largest supported dimension (2^24): bounds the rotation tables a file or caller can request.
pub const MAX_DIM: usize = 1 << 24;

/// Which TurboQuant variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// TurboQuant_mse: all bits to the Lloyd-Max codes.
    Mse,
    /// TurboQuant_prod: `b − 1` bits of codes + a 1-bit QJL sketch of the residual (unbiased ⟨q, x⟩).
    Prod,
}

/// What scale is stored per vector (see the module doc for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleMode {
    /// The paper's exact mode: `‖x‖`.
    Norm,
    /// Least-squares scale `‖x‖·⟨y,ĉ⟩/‖ĉ‖²`: minimum reconstruction error (the default).
    Lsq,
    /// Projection-exact scale `‖x‖/⟨y,ĉ⟩`: unbiased self inner product, used by the search index.
    Proj,
}

impl ScaleMode {
    /// Name used in Python and in files.
    pub fn name(self) -> &'static str {
        match self {
            ScaleMode::Norm => "norm",
            ScaleMode::Lsq => "lsq",
            ScaleMode::Proj => "proj",
        }
    }
    /// Parses a [`ScaleMode::name`].
    pub fn parse(s: &str) -> Result<ScaleMode> {
        match s {
            "norm" => Ok(ScaleMode::Norm),
            "lsq" => Ok(ScaleMode::Lsq),
            "proj" => Ok(ScaleMode::Proj),
            _ => Err(Error::InvalidParameter(format!(
                "scale must be 'norm', 'lsq' or 'proj', got {s:?}"
            ))),
        }
    }
}

/// `κ_d = E|⟨s, e_1⟩|` for `s` uniform on the unit sphere of `R^d`: `Γ(d/2)/(√π Γ((d+1)/2))`.
pub fn sphere_abs_mean(dim: usize) -> f64 {
    // r(d) = Γ(d/2)/Γ((d+1)/2); r(1) = √π, r(2) = 2/√π, r(d+2) = d/(d+1)·r(d).
    let sqrt_pi = std::f64::consts::PI.sqrt();
    let mut r = if dim % 2 == 1 { sqrt_pi } else { 2.0 / sqrt_pi };
    let mut k = if dim % 2 == 1 { 1 } else { 2 };
    while k < dim {
        r *= k as f64 / (k as f64 + 1.0);
        k += 2;
    }
    r / sqrt_pi
}

/// A configured TurboQuant quantizer. Cheap to clone (the codebook is shared).
#[derive(Debug, Clone)]
pub struct Quantizer {
    dim: usize,
    bits: u8,
    mode: Mode,
    scale_mode: ScaleMode,
    seed: u64,
    codebook: Arc<Codebook>,
    rotation: Rotation,
    qjl: Option<Rotation>,
    qjl_factor: f32,
}

/// Packed codes of `n` vectors, owned. Buffers are exactly as large as the format says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizedBatch {
    /// Number of vectors.
    pub n: usize,
    /// `n × row_bytes(dim, mse_bits)` packed Lloyd-Max codes.
    pub codes: Vec<u8>,
    /// `n` scales (f32), see [`ScaleMode`].
    pub scales: Vec<f32>,
    /// Prod mode: `n × ⌈dim/8⌉` packed QJL sign bits; empty in MSE mode.
    pub qjl_signs: Vec<u8>,
    /// Prod mode: `n` residual norms; empty in MSE mode.
    pub residual_norms: Vec<f32>,
}

impl QuantizedBatch {
    /// Borrowed view of the batch.
    pub fn view(&self) -> BatchView<'_> {
        BatchView {
            n: self.n,
            codes: &self.codes,
            scales: &self.scales,
            qjl_signs: &self.qjl_signs,
            residual_norms: &self.residual_norms,
        }
    }
    /// Bytes held by the buffers.
    pub fn nbytes(&self) -> usize {
        self.view().nbytes()
    }
}

/// Borrowed packed codes of `n` vectors (e.g. numpy buffers); checked by [`Quantizer::check`].
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// Number of vectors.
    pub n: usize,
    /// Packed codes.
    pub codes: &'a [u8],
    /// Scales.
    pub scales: &'a [f32],
    /// Packed QJL signs (prod mode).
    pub qjl_signs: &'a [u8],
    /// Residual norms (prod mode).
    pub residual_norms: &'a [f32],
}

/// Mutable output buffers of [`Quantizer::quantize_into`] (the fields of [`QuantizedBatch`]).
#[derive(Debug)]
pub struct BatchMut<'a> {
    /// Packed codes, `n × code_bytes`.
    pub codes: &'a mut [u8],
    /// Scales, `n`.
    pub scales: &'a mut [f32],
    /// Packed QJL signs, `n × sign_bytes` (prod mode, else empty).
    pub qjl_signs: &'a mut [u8],
    /// Residual norms, `n` (prod mode, else empty).
    pub residual_norms: &'a mut [f32],
}

impl BatchView<'_> {
    /// Bytes held by the buffers.
    pub fn nbytes(&self) -> usize {
        self.codes.len()
            + 4 * self.scales.len()
            + self.qjl_signs.len()
            + 4 * self.residual_norms.len()
    }
}

/// One quantize task's slices, in the nesting of rayon's zips: input rows, codes, scales,
/// QJL signs and residual norms of a run of vectors.
type QuantizeTask<'a, 'b> = (
    (
        ((&'a [f32], &'a mut [u8]), &'a mut [f32]),
        &'b mut &'a mut [u8],
    ),
    &'b mut &'a mut [f32],
);

/// Per-thread scratch of [`Quantizer::encode_block`].
struct BlockScratch {
    x: Vec<Lanes>,
    values: Vec<Lanes>,
    resid: Vec<Lanes>,
    perm: Vec<Lanes>,
    codes: Vec<[u8; LANES]>,
}

impl BlockScratch {
    /// Buffers for `dim`-vectors; the QJL buffers (`values`, `resid`) only when `qjl`.
    fn new(dim: usize, qjl: bool) -> Self {
        let qjl_rows = if qjl { dim } else { 0 };
        BlockScratch {
            x: vec![[0.0; LANES]; dim],
            values: vec![[0.0; LANES]; qjl_rows],
            resid: vec![[0.0; LANES]; qjl_rows],
            perm: Vec::with_capacity(dim),
            codes: vec![[0; LANES]; dim],
        }
    }
}

const SIGN_VALUES: [f32; 2] = [-1.0, 1.0];

/// Squared norms the f32 encoding path takes as they are; others are rescaled first.
const SAFE_NSQ_MIN: f32 = 1e-30;
/// See [`SAFE_NSQ_MIN`].
const SAFE_NSQ_MAX: f32 = 1e30;

/// The Euclidean norm of `row`, exact for every finite f32 input: the f32 sum of squares
/// where it cannot under- or overflow, else an f64 sum (NaN or ∞ for non-finite input).
pub fn robust_norm(level: SimdLevel, row: &[f32]) -> f64 {
    let nsq = crate::simd::kernels::sum_squares(level, row);
    if (SAFE_NSQ_MIN..=SAFE_NSQ_MAX).contains(&nsq) {
        return f64::from(nsq).sqrt();
    }
    row.iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt()
}

impl Quantizer {
    /// A quantizer for `dim`-vectors at `bits` bits per coordinate (total, QJL bit included).
    pub fn new(
        dim: usize,
        bits: u8,
        mode: Mode,
        scale_mode: ScaleMode,
        seed: u64,
    ) -> Result<Quantizer> {
        if !(1..=8).contains(&bits) {
            return Err(Error::InvalidParameter(format!(
                "bit_width must be in 1..=8, got {bits}"
            )));
        }
        if mode == Mode::Prod && bits < 2 {
            return Err(Error::InvalidParameter(
                "the unbiased (QJL) quantizer needs bit_width >= 2: one bit goes to the residual sketch".into(),
            ));
        }
        if !(2..=MAX_DIM).contains(&dim) {
            return Err(Error::InvalidParameter(format!(
                "dim must be in 2..={MAX_DIM}, got {dim}"
            )));
        }
        let mse_bits = if mode == Mode::Prod { bits - 1 } else { bits };
        let qjl = match mode {
            Mode::Prod => Some(Rotation::new(dim, seed, 1)?),
            Mode::Mse => None,
        };
        Ok(Quantizer {
            dim,
            bits,
            mode,
            scale_mode,
            seed,
            codebook: codebook::get(dim, mse_bits)?,
            rotation: Rotation::new(dim, seed, 0)?,
            qjl,
            qjl_factor: (1.0 / (dim as f64 * sphere_abs_mean(dim))) as f32,
        })
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Total bits per coordinate.
    pub fn bits(&self) -> u8 {
        self.bits
    }
    /// Bits of the Lloyd-Max codes (`bits − 1` in prod mode).
    pub fn mse_bits(&self) -> u8 {
        self.codebook.bits()
    }
    /// MSE or prod.
    pub fn mode(&self) -> Mode {
        self.mode
    }
    /// The stored-scale rule.
    pub fn scale_mode(&self) -> ScaleMode {
        self.scale_mode
    }
    /// The seed of the rotations.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// The Lloyd-Max codebook of the codes.
    pub fn codebook(&self) -> &Codebook {
        &self.codebook
    }
    /// The rotation `R`.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }
    /// Packed code bytes per vector.
    pub fn code_bytes(&self) -> usize {
        row_bytes(self.dim, self.mse_bits())
    }
    /// Packed QJL sign bytes per vector (0 in MSE mode).
    pub fn sign_bytes(&self) -> usize {
        if self.qjl.is_some() {
            row_bytes(self.dim, 1)
        } else {
            0
        }
    }
    /// Bytes stored per vector: codes + scale (+ signs + residual norm).
    pub fn bytes_per_vector(&self) -> usize {
        self.code_bytes()
            + 4
            + if self.qjl.is_some() {
                self.sign_bytes() + 4
            } else {
                0
            }
    }

    fn rows(&self, len: usize, what: &str) -> Result<usize> {
        if !len.is_multiple_of(self.dim) {
            return Err(Error::ShapeMismatch(format!(
                "{what} has {len} values, not a whole number of vectors of dim {}",
                self.dim
            )));
        }
        Ok(len / self.dim)
    }

    /// Checks that `view` holds `view.n` vectors of this quantizer's format.
    pub fn check(&self, view: &BatchView<'_>) -> Result<()> {
        let n = view.n;
        let prod = self.qjl.is_some();
        let expect = [
            ("codes", view.codes.len(), n * self.code_bytes()),
            ("scales", view.scales.len(), n),
            (
                "qjl_signs",
                view.qjl_signs.len(),
                if prod { n * self.sign_bytes() } else { 0 },
            ),
            (
                "residual_norms",
                view.residual_norms.len(),
                if prod { n } else { 0 },
            ),
        ];
        for (name, got, want) in expect {
            if got != want {
                return Err(Error::ShapeMismatch(format!(
                    "{name} holds {got} elements, expected {want} for {n} vectors"
                )));
            }
        }
        Ok(())
    }

    /// Quantizes a row-major batch (`x.len()` a multiple of `dim`) at the active SIMD level.
    pub fn quantize(&self, x: &[f32]) -> Result<QuantizedBatch> {
        self.quantize_at(crate::simd::active_level(), x)
    }

    /// Quantizes at an explicit SIMD level (parity tests and benchmarks).
    pub fn quantize_at(&self, level: SimdLevel, x: &[f32]) -> Result<QuantizedBatch> {
        let n = self.rows(x.len(), "input")?;
        let (cb, sb) = (self.code_bytes(), self.sign_bytes());
        let mut out = QuantizedBatch {
            n,
            codes: vec![0; n * cb],
            scales: vec![0.0; n],
            qjl_signs: vec![0; n * sb],
            residual_norms: vec![0.0; if self.qjl.is_some() { n } else { 0 }],
        };
        self.quantize_into_at(
            level,
            x,
            BatchMut {
                codes: &mut out.codes,
                scales: &mut out.scales,
                qjl_signs: &mut out.qjl_signs,
                residual_norms: &mut out.residual_norms,
            },
        )?;
        Ok(out)
    }

    /// Quantizes into caller-owned buffers, sized as [`QuantizedBatch`]'s for `x`'s rows
    /// (e.g. arrays allocated by the caller's runtime, which may map huge pages).
    pub fn quantize_into(&self, x: &[f32], out: BatchMut<'_>) -> Result<()> {
        self.quantize_into_at(crate::simd::active_level(), x, out)
    }

    /// [`Quantizer::quantize_into`] at an explicit SIMD level.
    pub fn quantize_into_at(&self, level: SimdLevel, x: &[f32], out: BatchMut<'_>) -> Result<()> {
        let n = self.rows(x.len(), "input")?;
        let (d, cb, sb) = (self.dim, self.code_bytes(), self.sign_bytes());
        let prod = self.qjl.is_some();
        self.check(&BatchView {
            n,
            codes: out.codes,
            scales: out.scales,
            qjl_signs: out.qjl_signs,
            residual_norms: out.residual_norms,
        })?;
        // Tasks hold whole blocks of LANES vectors.
        let chunk = parallel::rows_per_task(n).div_ceil(LANES) * LANES;
        let tasks = n.div_ceil(chunk);
        let mut sign_chunks: Vec<&mut [u8]> = out.qjl_signs.chunks_mut(chunk * sb.max(1)).collect();
        let mut rnorm_chunks: Vec<&mut [f32]> = out.residual_norms.chunks_mut(chunk).collect();
        sign_chunks.resize_with(tasks, Default::default);
        rnorm_chunks.resize_with(tasks, Default::default);
        let task =
            |scratch: &mut BlockScratch,
             ((((xs, codes), scales), signs), rnorms): QuantizeTask<'_, '_>| {
                for (b, rows) in xs.chunks(LANES * d).enumerate() {
                    let m = rows.len() / d;
                    let r = b * LANES..b * LANES + m;
                    let block_signs = if prod {
                        &mut signs[r.start * sb..r.end * sb]
                    } else {
                        &mut [][..]
                    };
                    let block_rnorms = if prod {
                        &mut rnorms[r.clone()]
                    } else {
                        &mut [][..]
                    };
                    self.encode_block(
                        level,
                        rows,
                        scratch,
                        &mut codes[r.start * cb..r.end * cb],
                        &mut scales[r],
                        block_signs,
                        block_rnorms,
                    )?;
                }
                Ok::<(), Error>(())
            };
        if tasks == 1 {
            // one task (a decode step's few tokens): on the caller, no hand-off to the pool
            let mut scratch = BlockScratch::new(d, self.qjl.is_some());
            return task(
                &mut scratch,
                (
                    (
                        ((x, &mut out.codes[..]), &mut out.scales[..]),
                        &mut sign_chunks[0],
                    ),
                    &mut rnorm_chunks[0],
                ),
            );
        }
        parallel::install(|| {
            x.par_chunks(chunk * d)
                .zip(out.codes.par_chunks_mut(chunk * cb))
                .zip(out.scales.par_chunks_mut(chunk))
                .zip(sign_chunks.par_iter_mut())
                .zip(rnorm_chunks.par_iter_mut())
                .try_for_each_init(|| BlockScratch::new(d, self.qjl.is_some()), task)
        })
    }

    /// Encodes up to [`LANES`] vectors at once in the coordinate-major layout of
    /// [`crate::simd::lanes`]: writes packed codes, scales (and signs, residual norms).
    #[allow(clippy::too_many_arguments)]
    fn encode_block(
        &self,
        level: SimdLevel,
        rows: &[f32],
        s: &mut BlockScratch,
        codes_out: &mut [u8],
        scales_out: &mut [f32],
        signs_out: &mut [u8],
        rnorms_out: &mut [f32],
    ) -> Result<()> {
        let (d, cb) = (self.dim, &self.codebook);
        let m = rows.len() / d;
        lanes::load_rows(level, rows, d, &mut s.x);
        let mut nsq = lanes::dot_lanes(level, &s.x, &s.x);
        // Vectors whose squared norm leaves the safe f32 range (norms below ~1e-15 or above
        // ~1e15 would under/overflow in the steps below) are scaled by an exact power of two
        // to norm ≈ 1 first; everything after is linear in x, so the stored scale (and
        // residual norm) is scaled back exactly and the codes are those of the unit vector.
        let mut unscale = [1.0f64; LANES];
        if nsq[..m]
            .iter()
            .any(|&v| !(SAFE_NSQ_MIN..=SAFE_NSQ_MAX).contains(&v))
        {
            for l in 0..m {
                if (SAFE_NSQ_MIN..=SAFE_NSQ_MAX).contains(&nsq[l]) {
                    continue;
                }
                let norm64 =
                    s.x.iter()
                        .map(|c| f64::from(c[l]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                if !norm64.is_finite() {
                    return Err(Error::NonFinite("input holds NaN or Inf".into()));
                }
                if norm64 == 0.0 {
                    continue;
                }
                let e = norm64.log2().round() as i32;
                let up = 2f64.powi(-e);
                for c in s.x.iter_mut() {
                    c[l] = (f64::from(c[l]) * up) as f32;
                }
                unscale[l] = 2f64.powi(e);
            }
            nsq = lanes::dot_lanes(level, &s.x, &s.x);
        }
        let norm = nsq.map(f32::sqrt);
        if norm[..m].iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite("input holds NaN or Inf".into()));
        }
        self.rotation.apply_lanes_at(level, &mut s.x, &mut s.perm);
        let inv = norm.map(|v| if v > 0.0 { 1.0 / v } else { 0.0 });
        // dot = ‖x‖·⟨y, ĉ⟩, sq = ‖ĉ‖²; the centroid values are kept only for the QJL residual
        let values: &mut [Lanes] = if self.qjl.is_some() {
            &mut s.values
        } else {
            &mut []
        };
        let (dot, sq) = lanes::encode_lanes(
            level,
            &s.x,
            &inv,
            cb.boundaries(),
            cb.centroids(),
            cb.cells(),
            &mut s.codes,
            values,
        );
        let mut scale = [0.0f32; LANES];
        for l in 0..LANES {
            scale[l] = if norm[l] == 0.0 || dot[l] <= 0.0 || sq[l] <= 0.0 {
                norm[l]
            } else {
                match self.scale_mode {
                    ScaleMode::Norm => norm[l],
                    ScaleMode::Lsq => dot[l] / sq[l],
                    ScaleMode::Proj => nsq[l] / dot[l],
                }
            };
        }
        let back = |v: f32, l: usize| (f64::from(v) * unscale[l]) as f32;
        for l in 0..m {
            scales_out[l] = back(scale[l], l);
        }
        if scales_out.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "a vector's norm exceeds the float32 range of the stored scale".into(),
            ));
        }
        pack_block(level, &s.codes, m, cb.bits(), codes_out);
        let Some(qjl) = &self.qjl else {
            return Ok(());
        };
        lanes::residual_lanes(level, &s.x, &s.values, &scale, &mut s.resid);
        let rsq = lanes::dot_lanes(level, &s.resid, &s.resid);
        for l in 0..m {
            rnorms_out[l] = back(rsq[l].sqrt(), l);
        }
        qjl.apply_lanes_at(level, &mut s.resid, &mut s.perm);
        for (c, r) in s.codes.iter_mut().zip(&s.resid) {
            for l in 0..LANES {
                c[l] = (r[l] >= 0.0) as u8;
            }
        }
        pack_block(level, &s.codes, m, 1, signs_out);
        Ok(())
    }

    /// Reconstructs `view.n` vectors into `out` (`n × dim`).
    pub fn dequantize(&self, view: &BatchView<'_>, out: &mut [f32]) -> Result<()> {
        self.check(view)?;
        if out.len() != view.n * self.dim {
            return Err(Error::ShapeMismatch(format!(
                "output holds {} values, expected {}",
                out.len(),
                view.n * self.dim
            )));
        }
        let level = crate::simd::active_level();
        let d = self.dim;
        let chunk = parallel::rows_per_task(view.n).div_ceil(LANES) * LANES;
        parallel::install(|| {
            out.par_chunks_mut(chunk * d).enumerate().for_each_init(
                || BlockScratch::new(d, self.qjl.is_some()),
                |s, (c, rows)| {
                    for (b, block) in rows.chunks_mut(LANES * d).enumerate() {
                        self.decode_block(level, view, c * chunk + b * LANES, block, s);
                    }
                },
            )
        });
        Ok(())
    }

    /// Decodes the up to [`LANES`] vectors starting at `first` into row-major `rows`.
    fn decode_block(
        &self,
        level: SimdLevel,
        view: &BatchView<'_>,
        first: usize,
        rows: &mut [f32],
        s: &mut BlockScratch,
    ) {
        let (d, cb, sb) = (self.dim, self.code_bytes(), self.sign_bytes());
        let m = rows.len() / d;
        let mut scale = [0.0f32; LANES];
        scale[..m].copy_from_slice(&view.scales[first..first + m]);
        let rows_of = |i: usize| i * cb..(i + m) * cb;
        unpack_block(
            level,
            &view.codes[rows_of(first)],
            m,
            self.mse_bits(),
            &mut s.codes,
        );
        lanes::decode_lanes(level, &s.codes, self.codebook.centroids(), &scale, &mut s.x);
        if let Some(qjl) = &self.qjl {
            let mut f = [0.0f32; LANES];
            for (slot, &r) in f.iter_mut().zip(&view.residual_norms[first..first + m]) {
                *slot = r * self.qjl_factor;
            }
            unpack_block(
                level,
                &view.qjl_signs[first * sb..(first + m) * sb],
                m,
                1,
                &mut s.codes,
            );
            lanes::decode_lanes(level, &s.codes, &SIGN_VALUES, &f, &mut s.resid);
            qjl.apply_inverse_lanes_at(level, &mut s.resid, &mut s.perm);
            for (o, r) in s.x.iter_mut().zip(&s.resid) {
                for l in 0..LANES {
                    o[l] += r[l];
                }
            }
        }
        self.rotation
            .apply_inverse_lanes_at(level, &mut s.x, &mut s.perm);
        lanes::store_rows(level, &s.x, d, rows);
    }

    /// Lookup tables for a batch of queries (`nq × dim`); see [`QueryTables`].
    pub fn query_tables(&self, queries: &[f32]) -> Result<QueryTables> {
        let nq = self.rows(queries.len(), "queries")?;
        if let Some(bad) = queries.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("query holds {bad}")));
        }
        let level = crate::simd::active_level();
        let d = self.dim;
        let k = self.codebook.centroids().len();
        let mut codes = vec![0.0f32; nq * d * k];
        let mut signs = vec![0.0f32; if self.qjl.is_some() { nq * d * 2 } else { 0 }];
        let mut rq = vec![0.0f32; d];
        for q in 0..nq {
            rq.copy_from_slice(&queries[q * d..(q + 1) * d]);
            self.rotation.apply_at(level, &mut rq);
            let t = &mut codes[q * d * k..(q + 1) * d * k];
            for (j, &v) in rq.iter().enumerate() {
                for (c, &cv) in self.codebook.centroids().iter().enumerate() {
                    t[j * k + c] = v * cv;
                }
            }
            if let Some(qjl) = &self.qjl {
                qjl.apply_at(level, &mut rq);
                let t = &mut signs[q * d * 2..(q + 1) * d * 2];
                for (j, &v) in rq.iter().enumerate() {
                    t[2 * j] = -v;
                    t[2 * j + 1] = v;
                }
            }
        }
        Ok(QueryTables {
            nq,
            k,
            codes,
            signs,
        })
    }

    /// Estimates `⟨q, x⟩` for every query (`nq × dim`) and stored vector, from the codes:
    /// `out[q·n + i]`. The database is never decoded: each query is rotated once and scores
    /// are sums of per-coordinate table entries.
    pub fn inner_products(
        &self,
        queries: &[f32],
        view: &BatchView<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        self.check(view)?;
        let tables = self.query_tables(queries)?;
        let (nq, n) = (tables.nq, view.n);
        if out.len() != nq * n {
            return Err(Error::ShapeMismatch(format!(
                "output holds {} values, expected {}",
                out.len(),
                nq * n
            )));
        }
        let level = crate::simd::active_level();
        let (d, cb, sb) = (self.dim, self.code_bytes(), self.sign_bytes());
        let mut by_row = vec![0.0f32; n * nq];
        parallel::install(|| {
            by_row.par_chunks_mut(nq.max(1)).enumerate().for_each_init(
                || (vec![0u8; d], vec![0u8; d]),
                |(codes, signs), (i, scores)| {
                    unpack_row(&view.codes[i * cb..(i + 1) * cb], self.mse_bits(), codes);
                    if sb > 0 {
                        unpack_row(&view.qjl_signs[i * sb..(i + 1) * sb], 1, signs);
                    }
                    for (q, slot) in scores.iter_mut().enumerate() {
                        let t = &tables.codes[q * d * tables.k..(q + 1) * d * tables.k];
                        let mut v = view.scales[i] * kernels::lut_sum(level, t, tables.k, codes);
                        if sb > 0 {
                            let ts = &tables.signs[q * d * 2..(q + 1) * d * 2];
                            v += view.residual_norms[i]
                                * self.qjl_factor
                                * kernels::lut_sum(level, ts, 2, signs);
                        }
                        *slot = v;
                    }
                },
            )
        });
        for i in 0..n {
            for q in 0..nq {
                out[q * n + i] = by_row[i * nq + q];
            }
        }
        Ok(())
    }
}

/// Per-query lookup tables: `codes[q][j][c] = (R q)_j · centroid_c` and, in prod mode,
/// `signs[q][j][s] = ±(S R q)_j`.
#[derive(Debug, Clone)]
pub struct QueryTables {
    /// Number of queries.
    pub nq: usize,
    /// Entries per coordinate in `codes` (`2^mse_bits`).
    pub k: usize,
    /// `nq × dim × k` code tables.
    pub codes: Vec<f32>,
    /// `nq × dim × 2` sign tables (prod mode), else empty.
    pub signs: Vec<f32>,
}
