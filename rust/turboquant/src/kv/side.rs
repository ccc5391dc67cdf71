//! One side (keys or values) of the KV store: its quantizers, and each stream's centre, channel
//! order and packed rows (the layout of the [module doc](super)).

use crate::error::{Error, Result};
use crate::quantizer::{BatchView, Mode, QuantizedBatch, Quantizer, ScaleMode};

/// How one side (keys or values) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideSpec {
    /// Bits per coordinate of the regular channels, `1..=8`.
    pub bits: u8,
    /// Number of outlier channels stored at `outlier_bits` (0, or `2..=head_dim − 2`).
    pub outliers: usize,
    /// Bits per coordinate of the outlier channels, `1..=8` (unused without outliers).
    pub outlier_bits: u8,
    /// Subtract the stream's mean of its first chunk before quantizing.
    pub center: bool,
}

impl SideSpec {
    /// Average stored bits per coordinate (codes only).
    pub fn average_bits(&self, head_dim: usize) -> f64 {
        let o = self.outliers as f64;
        (o * self.outlier_bits as f64 + (head_dim as f64 - o) * self.bits as f64) / head_dim as f64
    }
}

/// The quantizers of one side: part 0 (regular channels) and, with outliers, part 1.
#[derive(Debug, Clone)]
pub(super) struct SideCodec {
    pub head_dim: usize,
    pub spec: SideSpec,
    pub parts: Vec<Quantizer>,
}

/// One part's packed rows of one stream: token-major codes and scales.
#[derive(Debug, Clone, Default)]
pub(super) struct PartRows {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
}

/// Quantized new tokens of one side, not yet appended ([`SideCodec::quantize`]).
#[derive(Debug)]
pub(super) struct Pending {
    /// The first-chunk state of streams that had none.
    fresh: Vec<Option<SideStream>>,
    /// Per part, the codes of every stream's new tokens (stream-major).
    parts: Vec<QuantizedBatch>,
    /// New tokens per stream.
    t: usize,
}

/// One stream's state on one side.
#[derive(Debug, Clone, Default)]
pub(super) struct SideStream {
    /// Per-channel centre (`head_dim` values, zeros without centring); empty before the first chunk.
    pub mean: Vec<f32>,
    /// Channel order (regular channels, then outliers); empty without outliers.
    pub order: Vec<u16>,
    /// Packed rows per part.
    pub parts: Vec<PartRows>,
}

/// Tokens by which row buffers grow at least: a stream's buffers exceed its rows by less than
/// this many tokens plus [`GROWTH_DIVISOR`]⁻¹ of them.
const GROWTH_TOKENS: usize = 64;
/// Buffers grow by at least `1/GROWTH_DIVISOR` of their capacity (amortized appends).
const GROWTH_DIVISOR: usize = 64;

/// Reserves room for `extra` more elements of `per_token` each, growing geometrically by a
/// small factor so that appends are amortized O(1) while capacity stays close to the length.
fn reserve_rows<T>(v: &mut Vec<T>, extra: usize, per_token: usize) {
    let need = v.len() + extra;
    if need <= v.capacity() {
        return;
    }
    let grown = v.capacity() + v.capacity() / GROWTH_DIVISOR;
    let step = GROWTH_TOKENS * per_token;
    let target = need.max(grown).div_ceil(step) * step;
    v.reserve_exact(target - v.len());
}

impl SideCodec {
    /// The quantizers for `spec` at `head_dim`.
    pub fn new(head_dim: usize, spec: SideSpec, seed: u64) -> Result<SideCodec> {
        for (name, b) in [("bits", spec.bits), ("outlier bits", spec.outlier_bits)] {
            if !(1..=8).contains(&b) {
                return Err(Error::InvalidParameter(format!(
                    "{name} must be in 1..=8, got {b}"
                )));
            }
        }
        if head_dim < 2 {
            return Err(Error::InvalidParameter(format!(
                "head_dim must be at least 2, got {head_dim}"
            )));
        }
        let o = spec.outliers;
        if o != 0 && !(2..=head_dim.saturating_sub(2)).contains(&o) {
            return Err(Error::InvalidParameter(format!(
                "outlier channels must be 0 or in 2..={} for head_dim {head_dim}, got {o}",
                head_dim.saturating_sub(2)
            )));
        }
        let mut parts = vec![Quantizer::new(
            head_dim - o,
            spec.bits,
            Mode::Mse,
            ScaleMode::Lsq,
            seed,
        )?];
        if o > 0 {
            parts.push(Quantizer::new(
                o,
                spec.outlier_bits,
                Mode::Mse,
                ScaleMode::Lsq,
                seed,
            )?);
        }
        Ok(SideCodec {
            head_dim,
            spec,
            parts,
        })
    }

    /// Channels of part `p` of a stream (its order, or all channels for a single part).
    pub fn part_channels<'a>(&self, stream: &'a SideStream, p: usize) -> PartChannels<'a> {
        if stream.order.is_empty() {
            PartChannels::All
        } else {
            let split = self.head_dim - self.spec.outliers;
            let range = if p == 0 {
                0..split
            } else {
                split..self.head_dim
            };
            PartChannels::Listed(&stream.order[range])
        }
    }

    /// The centre and channel order of a stream from its first chunk (`t` rows of `D`).
    fn first_chunk_state(&self, rows: &[f32]) -> SideStream {
        let d = self.head_dim;
        let t = rows.len() / d;
        let mut mean = vec![0.0f64; d];
        if self.spec.center {
            for row in rows.chunks_exact(d) {
                for (m, &v) in mean.iter_mut().zip(row) {
                    *m += v as f64;
                }
            }
            for m in &mut mean {
                *m /= t as f64;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let mut order = Vec::new();
        if self.spec.outliers > 0 {
            let mut power = vec![0.0f64; d];
            for row in rows.chunks_exact(d) {
                for ((p, &v), &m) in power.iter_mut().zip(row).zip(&mean) {
                    let c = (v - m) as f64;
                    *p += c * c;
                }
            }
            let mut by_power: Vec<usize> = (0..d).collect();
            // largest power first; ties to the lower channel
            by_power.sort_by(|&a, &b| power[b].total_cmp(&power[a]).then(a.cmp(&b)));
            let mut outlier = vec![false; d];
            for &c in &by_power[..self.spec.outliers] {
                outlier[c] = true;
            }
            let regular = (0..d).filter(|&c| !outlier[c]);
            let outliers = (0..d).filter(|&c| outlier[c]);
            order = regular.chain(outliers).map(|c| c as u16).collect();
        }
        SideStream {
            mean,
            order,
            parts: vec![PartRows::default(); self.parts.len()],
        }
    }

    /// Quantizes `t` new tokens of every stream (`x`: `streams.len() × t × D`) without
    /// changing the streams: [`SideCodec::commit`] appends the result (so a failure loses
    /// nothing, and only the new tokens are ever quantized).
    pub fn quantize(&self, streams: &[SideStream], x: &[f32], t: usize) -> Result<Pending> {
        let d = self.head_dim;
        let per_stream = t * d;
        let fresh: Vec<Option<SideStream>> = streams
            .iter()
            .zip(x.chunks_exact(per_stream))
            .map(|(s, rows)| s.mean.is_empty().then(|| self.first_chunk_state(rows)))
            .collect();
        let mut parts = Vec::with_capacity(self.parts.len());
        for (p, q) in self.parts.iter().enumerate() {
            let dp = q.dim();
            let mut gathered = vec![0.0f32; streams.len() * t * dp];
            for (((s, f), rows), out) in streams
                .iter()
                .zip(&fresh)
                .zip(x.chunks_exact(per_stream))
                .zip(gathered.chunks_exact_mut(t * dp))
            {
                let s = f.as_ref().unwrap_or(s);
                let channels = self.part_channels(s, p);
                for (row, o) in rows.chunks_exact(d).zip(out.chunks_exact_mut(dp)) {
                    for (k, slot) in o.iter_mut().enumerate() {
                        let c = channels.get(k);
                        *slot = row[c] - s.mean[c];
                    }
                }
            }
            parts.push(q.quantize(&gathered)?);
        }
        Ok(Pending { fresh, parts, t })
    }

    /// Appends what [`SideCodec::quantize`] made for these streams.
    pub fn commit(&self, streams: &mut [SideStream], pending: Pending) {
        let t = pending.t;
        for (s, f) in streams.iter_mut().zip(pending.fresh) {
            if let Some(f) = f {
                *s = f;
            }
        }
        for (p, (q, batch)) in self.parts.iter().zip(&pending.parts).enumerate() {
            let cb = q.code_bytes();
            for (i, s) in streams.iter_mut().enumerate() {
                let rows = &mut s.parts[p];
                reserve_rows(&mut rows.codes, t * cb, cb);
                reserve_rows(&mut rows.scales, t, 1);
                rows.codes
                    .extend_from_slice(&batch.codes[i * t * cb..(i + 1) * t * cb]);
                rows.scales
                    .extend_from_slice(&batch.scales[i * t..(i + 1) * t]);
            }
        }
    }

    /// Reconstructs a stream's `len` tokens into `out` (`len × D`).
    pub fn decode(&self, s: &SideStream, len: usize, out: &mut [f32]) -> Result<()> {
        let d = self.head_dim;
        if len == 0 {
            return Ok(());
        }
        for (p, q) in self.parts.iter().enumerate() {
            let rows = &s.parts[p];
            let view = BatchView {
                n: len,
                codes: &rows.codes[..len * q.code_bytes()],
                scales: &rows.scales[..len],
                qjl_signs: &[],
                residual_norms: &[],
            };
            let mut part = vec![0.0f32; len * q.dim()];
            q.dequantize(&view, &mut part)?;
            let channels = self.part_channels(s, p);
            for (src, dst) in part.chunks_exact(q.dim()).zip(out.chunks_exact_mut(d)) {
                for (k, &v) in src.iter().enumerate() {
                    let c = channels.get(k);
                    dst[c] = v + s.mean[c];
                }
            }
        }
        Ok(())
    }

    /// Bytes a stream holds: row buffers (capacity), centre and channel order.
    pub fn stream_bytes(&self, s: &SideStream) -> usize {
        let rows: usize = s
            .parts
            .iter()
            .map(|r| r.codes.capacity() + 4 * r.scales.capacity())
            .sum();
        let mean = if self.spec.center {
            4 * s.mean.len()
        } else {
            0
        };
        rows + mean + 2 * s.order.len()
    }

    /// Keeps a stream's first `len` tokens.
    pub fn truncate(&self, s: &mut SideStream, len: usize) {
        for (rows, q) in s.parts.iter_mut().zip(&self.parts) {
            rows.codes.truncate(len * q.code_bytes());
            rows.scales.truncate(len);
        }
    }
}

/// The channels of one part of a stream.
#[derive(Debug, Clone, Copy)]
pub(super) enum PartChannels<'a> {
    /// Every channel, in order.
    All,
    /// The listed channels.
    Listed(&'a [u16]),
}

impl PartChannels<'_> {
    /// The channel of part coordinate `k`.
    #[inline]
    pub fn get(&self, k: usize) -> usize {
        match self {
            PartChannels::All => k,
            PartChannels::Listed(c) => c[k] as usize,
        }
    }
}
