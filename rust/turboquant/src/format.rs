//! Versioned files for a quantizer's parameters and for packed batches.
//!
//! All integers little-endian. Every file ends with the CRC-32 of the bytes before it.
//!
//! ```text
//! header    "TQRS" | kind u8 | version u8 (=2) | dim u32 | bits u8 | mode u8 (0 mse, 1 prod)
//!           | scale u8 (0 norm, 1 lsq, 2 proj) | seed u64                       (20 bytes)
//! quantizer header(kind 1) | crc32
//! batch     header(kind 2) | n u64 | codes encoding u8 (0 raw, 1 rANS)
//!           | raw:  codes, n · ⌈d·b/8⌉ bytes in the packing layout
//!           | rANS: 2^b frequencies u16 | byte length u64 | stream (n·d codes, row-major)
//!           | scales f32 × n | prod mode: signs n · ⌈d/8⌉ bytes | residual norms f32 × n
//!           | crc32
//! ```
//! Version 2 changed the rotation for dimensions of the tiled layout ([`crate::rotation`]):
//! version-1 files are refused rather than decoded with the wrong rotation.
//!
//! Loading checks the magic, kind, version, every parameter and every length against the
//! file size before allocating, so a damaged or hostile file gives [`Error::Corrupt`].

use crate::bytes::{ByteReader, ByteWriter};
use crate::entropy::{self, FrequencyModel};
use crate::error::{Error, Result};
use crate::packing;
use crate::quantizer::{BatchView, Mode, QuantizedBatch, Quantizer, ScaleMode, MAX_DIM};

const MAGIC: &[u8; 4] = b"TQRS";
/// Format version written by this build.
pub const VERSION: u8 = 2;

/// File kinds sharing the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Quantizer parameters only.
    Quantizer = 1,
    /// A packed batch with its quantizer.
    Batch = 2,
    /// A search index with its quantizer.
    Index = 3,
}

/// Writes the common header for `q`.
pub fn write_header(w: &mut ByteWriter, kind: Kind, q: &Quantizer) {
    w.bytes(MAGIC).u8(kind as u8).u8(VERSION);
    w.u32(q.dim() as u32).u8(q.bits());
    w.u8(match q.mode() {
        Mode::Mse => 0,
        Mode::Prod => 1,
    });
    w.u8(match q.scale_mode() {
        ScaleMode::Norm => 0,
        ScaleMode::Lsq => 1,
        ScaleMode::Proj => 2,
    });
    w.u64(q.seed());
}

/// The parameters a header declares, validated but not built yet: sizes can be checked
/// against the file before the (for a large `dim`, costly) codebook and rotation are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Vector dimension, `2..=MAX_DIM`.
    pub dim: usize,
    /// Total bits per coordinate, `1..=8` (`2..=8` in prod mode).
    pub bits: u8,
    /// MSE or prod.
    pub mode: Mode,
    /// The stored-scale rule.
    pub scale: ScaleMode,
    /// Rotation seed.
    pub seed: u64,
}

impl Header {
    /// Bits of the Lloyd-Max codes.
    pub fn mse_bits(&self) -> u8 {
        match self.mode {
            Mode::Mse => self.bits,
            Mode::Prod => self.bits - 1,
        }
    }
    /// Packed code bytes per vector (as [`Quantizer::code_bytes`]).
    pub fn code_bytes(&self) -> usize {
        packing::row_bytes(self.dim, self.mse_bits())
    }
    /// Packed sign bytes per vector (as [`Quantizer::sign_bytes`]).
    pub fn sign_bytes(&self) -> usize {
        match self.mode {
            Mode::Mse => 0,
            Mode::Prod => packing::row_bytes(self.dim, 1),
        }
    }
    /// Builds the quantizer the header describes.
    pub fn build(&self) -> Result<Quantizer> {
        Quantizer::new(self.dim, self.bits, self.mode, self.scale, self.seed)
            .map_err(|e| Error::Corrupt(format!("bad parameters: {e}")))
    }
}

/// Reads and validates the common header's parameters (cheap: builds nothing).
pub fn read_header_params(r: &mut ByteReader<'_>, kind: Kind) -> Result<Header> {
    if r.bytes(4)? != MAGIC {
        return Err(Error::Corrupt("not a turboquant file (bad magic)".into()));
    }
    let k = r.u8()?;
    if k != kind as u8 {
        return Err(Error::Corrupt(format!(
            "file kind {k}, expected {}",
            kind as u8
        )));
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(Error::Corrupt(format!(
            "format version {v}, this build reads {VERSION}"
        )));
    }
    let dim = r.u32()? as usize;
    let bits = r.u8()?;
    let mode = match r.u8()? {
        0 => Mode::Mse,
        1 => Mode::Prod,
        m => return Err(Error::Corrupt(format!("unknown mode {m}"))),
    };
    let scale = match r.u8()? {
        0 => ScaleMode::Norm,
        1 => ScaleMode::Lsq,
        2 => ScaleMode::Proj,
        s => return Err(Error::Corrupt(format!("unknown scale {s}"))),
    };
    let seed = r.u64()?;
    let min_bits = if mode == Mode::Prod { 2 } else { 1 };
    if !(min_bits..=8).contains(&bits) {
        return Err(Error::Corrupt(format!("bad parameters: bit width {bits}")));
    }
    if !(2..=MAX_DIM).contains(&dim) {
        return Err(Error::Corrupt(format!("bad parameters: dim {dim}")));
    }
    Ok(Header {
        dim,
        bits,
        mode,
        scale,
        seed,
    })
}

/// Reads and validates the common header; rebuilds the quantizer it describes.
pub fn read_header(r: &mut ByteReader<'_>, kind: Kind) -> Result<Quantizer> {
    read_header_params(r, kind)?.build()
}

/// Serializes a quantizer's parameters.
pub fn quantizer_to_bytes(q: &Quantizer) -> Vec<u8> {
    let mut w = ByteWriter::new();
    write_header(&mut w, Kind::Quantizer, q);
    w.finish_with_crc()
}

/// Rebuilds a quantizer from [`quantizer_to_bytes`].
pub fn quantizer_from_bytes(data: &[u8]) -> Result<Quantizer> {
    let mut r = ByteReader::with_crc(data)?;
    let q = read_header(&mut r, Kind::Quantizer)?;
    r.finish()?;
    Ok(q)
}

/// The entropy model of `q`'s codes (from its codebook's cell probabilities).
pub fn code_model(q: &Quantizer) -> Result<FrequencyModel> {
    FrequencyModel::from_probabilities(q.codebook().probabilities())
}

/// Serializes a batch; `entropy` rANS-codes the codes (≈ 5 % smaller at 4 bits, slower).
pub fn batch_to_bytes(q: &Quantizer, b: &BatchView<'_>, entropy: bool) -> Result<Vec<u8>> {
    q.check(b)?;
    let mut w = ByteWriter::new();
    write_header(&mut w, Kind::Batch, q);
    w.u64(b.n as u64);
    if entropy && q.mse_bits() > 0 {
        let model = code_model(q)?;
        let symbols = packing::unpack(b.codes, q.dim(), q.mse_bits())?;
        let stream = entropy::encode(&symbols, &model)?;
        w.u8(1);
        for &f in model.frequencies() {
            w.u16(f as u16);
        }
        w.u64(stream.len() as u64).bytes(&stream);
    } else {
        w.u8(0).bytes(b.codes);
    }
    w.f32s(b.scales).bytes(b.qjl_signs).f32s(b.residual_norms);
    Ok(w.finish_with_crc())
}

/// Rebuilds a quantizer and its batch from [`batch_to_bytes`]. Every size the file declares
/// is checked against its length before the quantizer is built or anything is allocated.
pub fn batch_from_bytes(data: &[u8]) -> Result<(Quantizer, QuantizedBatch)> {
    let mut r = ByteReader::with_crc(data)?;
    let h = read_header_params(&mut r, Kind::Batch)?;
    let prod = h.mode == Mode::Prod;
    let (cb, sb) = (h.code_bytes(), h.sign_bytes());
    // every vector holds at least its scale, signs and residual norm outside the codes
    let n = r.len(4 + sb + if prod { 4 } else { 0 })?;
    let overflow = || Error::Corrupt("size overflows".into());
    enum Codes<'a> {
        Raw(&'a [u8]),
        Rans(Box<FrequencyModel>, &'a [u8]),
    }
    let codes = match r.u8()? {
        0 => Codes::Raw(r.bytes(n.checked_mul(cb).ok_or_else(overflow)?)?),
        1 => {
            let k = 1usize << h.mse_bits();
            let freq: Vec<u32> = (0..k)
                .map(|_| r.u16().map(u32::from))
                .collect::<Result<_>>()?;
            let model = FrequencyModel::from_frequencies(&freq)?;
            let len = r.len(1)?;
            Codes::Rans(Box::new(model), r.bytes(len)?)
        }
        e => return Err(Error::Corrupt(format!("unknown code encoding {e}"))),
    };
    let scales = r.f32s(n)?;
    let qjl_signs = r.bytes(n.checked_mul(sb).ok_or_else(overflow)?)?.to_vec();
    let residual_norms = r.f32s(if prod { n } else { 0 })?;
    r.finish()?;
    if scales.iter().chain(&residual_norms).any(|v| !v.is_finite()) {
        // quantize never stores these: a NaN or Inf here would poison every decoded value
        return Err(Error::Corrupt("non-finite scale or residual norm".into()));
    }
    let q = h.build()?;
    let codes = match codes {
        Codes::Raw(c) => c.to_vec(),
        Codes::Rans(model, stream) => {
            let count = n.checked_mul(q.dim()).ok_or_else(overflow)?;
            let symbols = entropy::decode(stream, count, &model)?;
            packing::pack(&symbols, q.dim(), q.mse_bits())?
        }
    };
    let batch = QuantizedBatch {
        n,
        codes,
        scales,
        qjl_signs,
        residual_norms,
    };
    q.check(&batch.view())?;
    Ok((q, batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(q: &Quantizer, n: usize) -> QuantizedBatch {
        let x: Vec<f32> = (0..n * q.dim())
            .map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        q.quantize(&x).unwrap()
    }

    #[test]
    fn round_trips_raw_and_entropy_coded() {
        for (mode, bits) in [
            (Mode::Mse, 4u8),
            (Mode::Mse, 3),
            (Mode::Prod, 3),
            (Mode::Mse, 8),
        ] {
            let q = Quantizer::new(96, bits, mode, ScaleMode::Lsq, 5).unwrap();
            let b = sample(&q, 50);
            for entropy in [false, true] {
                let bytes = batch_to_bytes(&q, &b.view(), entropy).unwrap();
                let (q2, b2) = batch_from_bytes(&bytes).unwrap();
                assert_eq!(b2, b);
                assert_eq!(
                    (q2.dim(), q2.bits(), q2.mode(), q2.seed()),
                    (96, bits, mode, 5)
                );
            }
        }
        let q = Quantizer::new(64, 2, Mode::Prod, ScaleMode::Proj, 1).unwrap();
        let q2 = quantizer_from_bytes(&quantizer_to_bytes(&q)).unwrap();
        assert_eq!((q2.bits(), q2.scale_mode()), (2, ScaleMode::Proj));
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let q = Quantizer::new(32, 4, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
        let b = sample(&q, 10);
        for entropy in [false, true] {
            let bytes = batch_to_bytes(&q, &b.view(), entropy).unwrap();
            for cut in 0..bytes.len() {
                assert!(batch_from_bytes(&bytes[..cut]).is_err());
            }
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x10;
                assert!(batch_from_bytes(&bad).is_err(), "flip at {i} accepted");
            }
        }
        assert!(quantizer_from_bytes(b"TQRS").is_err());
        assert!(batch_from_bytes(&[0u8; 64]).is_err());
    }
}
