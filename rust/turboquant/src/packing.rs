//! THE bit layout of packed codes (every engine and kernel follows this one definition).
//!
//! A vector of `d` codes of `b` bits (`1 ≤ b ≤ 8`) occupies `row_bytes(d, b) = ⌈d·b/8⌉` bytes.
//! The row is a little-endian bit stream: code `j` occupies stream bits `[j·b, (j+1)·b)`,
//! least significant bit first, where stream bit `k` is bit `k mod 8` of byte `⌊k/8⌋`.
//! So 8 consecutive codes fill exactly `b` bytes; a row starts on a byte boundary and its
//! unused high bits of the last byte are zero. Batches are rows back to back (row-major).
//!
//! QJL sign bits are 1-bit codes in this layout (bit set ⇔ the projection was `≥ 0`).

use crate::error::{Error, Result};
use crate::simd::multiversion;
use crate::simd::transpose::transpose16_u8;

/// Bytes of one packed row of `dim` codes at `bits` bits each.
pub const fn row_bytes(dim: usize, bits: u8) -> usize {
    (dim * bits as usize).div_ceil(8)
}

/// Packs `codes` (each `< 2^bits`) into `out` (`row_bytes(codes.len(), bits)` bytes).
pub fn pack_row(codes: &[u8], bits: u8, out: &mut [u8]) {
    pack_from(codes.len(), bits, out, |j| codes[j]);
}

multiversion! {
    /// Packs the first `m` columns of a coordinate-major code block (`block[j][l]` is code `j`
    /// of vector `l`) into `m` consecutive rows of `out`: the `b` bytes of each group of 8 codes
    /// are assembled for all 16 vectors at once (the layout of `pack_from`, lane-parallel), and
    /// 16×16 byte tiles are transposed into the rows.
    pub fn pack_block(block: &[[u8; 16]], m: usize, bits: u8, out: &mut [u8]) {
        match bits {
            1 => pack_block_const::<1>(block, m, out),
            2 => pack_block_const::<2>(block, m, out),
            3 => pack_block_const::<3>(block, m, out),
            4 => pack_block_const::<4>(block, m, out),
            5 => pack_block_const::<5>(block, m, out),
            6 => pack_block_const::<6>(block, m, out),
            7 => pack_block_const::<7>(block, m, out),
            _ => pack_block_const::<8>(block, m, out),
        }
    }
}

/// Codes per chunk of the block packers: 128 codes of `B` bits are `16·B` bytes, exactly `B`
/// byte tiles, so chunks never share a tile and their bytes fit on the stack.
const CHUNK_CODES: usize = 128;

/// [`pack_block`] for a constant width (constant shifts vectorize, even at the SSE2 baseline).
#[inline(always)]
fn pack_block_const<const B: usize>(block: &[[u8; 16]], m: usize, out: &mut [u8]) {
    let rb = row_bytes(block.len(), B as u8);
    debug_assert_eq!(out.len(), m * rb);
    // bytes[k][l]: byte 16·B·c + k of row l, for the chunk c at hand
    let mut bytes = [[0u8; 16]; 16 * 8];
    for (c, codes) in block.chunks(CHUNK_CODES).enumerate() {
        let nb = row_bytes(codes.len(), B as u8);
        // Code i of a group of 8 starts at bit i·B: its low bits go to byte ⌊i·B/8⌋ at shift
        // i·B mod 8, and what does not fit spills into the next byte (16 byte lanes per
        // operation). A code at shift 0 and a spill are the first bits of their byte, so they
        // assign (clearing what the previous chunk left); later codes OR into it.
        for (g, group) in codes.chunks(8).enumerate() {
            for (i, code) in group.iter().enumerate() {
                let (j, shift) = (g * B + i * B / 8, i * B % 8);
                for l in 0..16 {
                    let v = code[l] << shift;
                    bytes[j][l] = if shift == 0 { v } else { bytes[j][l] | v };
                }
                if shift + B > 8 {
                    for l in 0..16 {
                        bytes[j + 1][l] = code[l] >> (8 - shift);
                    }
                }
            }
        }
        for (t, tile) in bytes[..nb.div_ceil(16) * 16].chunks_exact(16).enumerate() {
            let rows = transpose16_u8(tile.try_into().expect("16 rows"));
            let at = 16 * B * c + 16 * t;
            let width = (nb - 16 * t).min(16);
            for (l, row) in rows.iter().enumerate().take(m) {
                let dst = &mut out[l * rb + at..l * rb + at + width];
                if width == 16 {
                    // a constant-length copy: one 16-byte store, no memcpy call
                    dst.copy_from_slice(row);
                } else {
                    dst.copy_from_slice(&row[..width]);
                }
            }
        }
    }
}

/// The layout, once: groups of 8 codes → `b` little-endian bytes; a partial last group
/// fills the remaining bytes.
#[inline(always)]
fn pack_from(dim: usize, bits: u8, out: &mut [u8], code: impl Fn(usize) -> u8) {
    let b = bits as usize;
    debug_assert_eq!(out.len(), row_bytes(dim, bits));
    let mask = (1u64 << b) - 1;
    for (g, dst) in out.chunks_mut(b).enumerate() {
        let start = g * 8;
        let mut acc = 0u64;
        for i in 0..(dim - start).min(8) {
            acc |= (code(start + i) as u64 & mask) << (i * b);
        }
        dst.copy_from_slice(&acc.to_le_bytes()[..dst.len()]);
    }
}

/// Unpacks one row of `out.len()` codes of `bits` bits from `packed`.
pub fn unpack_row(packed: &[u8], bits: u8, out: &mut [u8]) {
    unpack_into(packed, out.len(), bits, |j, c| out[j] = c);
}

multiversion! {
    /// The inverse of [`pack_block`]: unpacks `m` consecutive packed rows of `packed` into the
    /// first `m` columns of a coordinate-major code block (16×16 byte tiles are transposed, then
    /// the codes of all 16 rows are extracted at once). Columns `m..` are set to code 0.
    pub fn unpack_block(packed: &[u8], m: usize, bits: u8, block: &mut [[u8; 16]]) {
        match bits {
            1 => unpack_block_const::<1>(packed, m, block),
            2 => unpack_block_const::<2>(packed, m, block),
            3 => unpack_block_const::<3>(packed, m, block),
            #[cfg(target_arch = "x86_64")]
            4 if m == 16 && block.len().is_multiple_of(32) => unpack_full_block_4bit(packed, block),
            4 => unpack_block_const::<4>(packed, m, block),
            5 => unpack_block_const::<5>(packed, m, block),
            6 => unpack_block_const::<6>(packed, m, block),
            7 => unpack_block_const::<7>(packed, m, block),
            _ => unpack_block_const::<8>(packed, m, block),
        }

    }
}

/// [`unpack_block`] of a full 4-bit block whose rows are whole 16-byte tiles (`dim % 32 == 0`,
/// the usual head dims): each tile of the 16 rows is loaded into registers and transposed
/// there, and byte `k` of a row splits into codes `2k` (low nibble) and `2k + 1` (high nibble),
/// the [`pack_from`] layout at 4 bits. SSE2 only (the x86-64 baseline), so it serves every level.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn unpack_full_block_4bit(packed: &[u8], block: &mut [[u8; 16]]) {
    use crate::simd::transpose::sse2::{transpose_regs_bitrev, REV4};
    use std::arch::x86_64::*;
    let rb = block.len() / 2;
    debug_assert_eq!(packed.len(), 16 * rb);
    for (tile, codes) in block.chunks_exact_mut(32).enumerate() {
        let at = 16 * tile;
        // SAFETY: SSE2 is part of the x86-64 baseline; each load reads the 16 bytes of a
        // bounds-checked 16-byte slice, unaligned.
        let mut rows = [unsafe { _mm_setzero_si128() }; 16];
        for (l, row) in rows.iter_mut().enumerate() {
            let src = &packed[l * rb + at..l * rb + at + 16];
            // SAFETY: as above.
            *row = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
        }
        let cols = transpose_regs_bitrev(rows);
        // SAFETY: SSE2 baseline; register-only arithmetic, then unaligned 16-byte stores into
        // `codes[2k]` and `codes[2k + 1]`, each a `[u8; 16]`.
        unsafe {
            let low = _mm_set1_epi8(0x0F);
            for (col, &k) in cols.iter().zip(&REV4) {
                let lo = _mm_and_si128(*col, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(*col), low);
                _mm_storeu_si128(codes[2 * k].as_mut_ptr().cast(), lo);
                _mm_storeu_si128(codes[2 * k + 1].as_mut_ptr().cast(), hi);
            }
        }
    }
}

/// [`unpack_block`] for a constant width.
#[inline(always)]
fn unpack_block_const<const B: usize>(packed: &[u8], m: usize, block: &mut [[u8; 16]]) {
    let rb = row_bytes(block.len(), B as u8);
    debug_assert_eq!(packed.len(), m * rb);
    let mask = ((1u16 << B) - 1) as u8;
    // bytes[k][l]: byte 16·B·c + k of row l, for the chunk c at hand (every tile used is
    // rewritten per chunk)
    let mut bytes = [[0u8; 16]; 16 * 8];
    for (c, codes) in block.chunks_mut(CHUNK_CODES).enumerate() {
        let nb = row_bytes(codes.len(), B as u8);
        for (t, dst) in bytes[..nb.div_ceil(16) * 16]
            .chunks_exact_mut(16)
            .enumerate()
        {
            let at = 16 * B * c + 16 * t;
            let width = (nb - 16 * t).min(16);
            #[cfg(target_arch = "x86_64")]
            if m == 16 && width == 16 {
                transpose_full_tile(packed, rb, at, dst);
                continue;
            }
            let mut tile = [[0u8; 16]; 16];
            for (l, row) in tile.iter_mut().enumerate().take(m) {
                let start = l * rb + at;
                if width == 16 {
                    // a constant length: a 16-byte move, not a call to memcpy
                    row.copy_from_slice(&packed[start..start + 16]);
                } else {
                    row[..width].copy_from_slice(&packed[start..start + width]);
                }
            }
            dst.copy_from_slice(&transpose16_u8(&tile));
        }
        if B <= 4 {
            // A group's B bytes (≤ 32 bits) assembled per lane into one u32, then the 8 codes
            // shifted out at constant offsets (no per-code byte shifts, which x86 lacks).
            for (g, group) in codes.chunks_mut(8).enumerate() {
                let mut word = [0u32; 16];
                for k in 0..B {
                    for l in 0..16 {
                        word[l] |= (bytes[g * B + k][l] as u32) << (8 * k);
                    }
                }
                if group.len() == 8 {
                    // constant shifts: each call is one code of the group
                    extract_code::<B, 0>(&word, &mut group[0]);
                    extract_code::<B, 1>(&word, &mut group[1]);
                    extract_code::<B, 2>(&word, &mut group[2]);
                    extract_code::<B, 3>(&word, &mut group[3]);
                    extract_code::<B, 4>(&word, &mut group[4]);
                    extract_code::<B, 5>(&word, &mut group[5]);
                    extract_code::<B, 6>(&word, &mut group[6]);
                    extract_code::<B, 7>(&word, &mut group[7]);
                } else {
                    for (i, code) in group.iter_mut().enumerate() {
                        for l in 0..16 {
                            code[l] = ((word[l] >> (i * B)) as u8) & mask;
                        }
                    }
                }
            }
            continue;
        }
        for (g, group) in codes.chunks_mut(8).enumerate() {
            for (i, code) in group.iter_mut().enumerate() {
                let (j, shift) = (g * B + i * B / 8, i * B % 8);
                for l in 0..16 {
                    code[l] = bytes[j][l] >> shift;
                }
                if shift + B > 8 {
                    for l in 0..16 {
                        code[l] |= bytes[j + 1][l] << (8 - shift);
                    }
                }
                for c in code.iter_mut() {
                    *c &= mask;
                }
            }
        }
    }
}

/// Code `I` of a group of 8 `B`-bit codes, per lane, from the group's bytes as one `u32`.
#[inline(always)]
fn extract_code<const B: usize, const I: usize>(word: &[u32; 16], code: &mut [u8; 16]) {
    let mask = ((1u16 << B) - 1) as u8;
    for l in 0..16 {
        code[l] = ((word[l] >> (I * B)) as u8) & mask;
    }
}

/// `dst[k][l]` = byte `at + k` of row `l` for 16 rows of `rb` bytes (a full 16-byte tile),
/// loaded into registers and transposed there (SSE2, the x86-64 baseline).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose_full_tile(packed: &[u8], rb: usize, at: usize, dst: &mut [[u8; 16]]) {
    use crate::simd::transpose::sse2::{transpose_regs_bitrev, REV4};
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86-64 baseline; each load reads a bounds-checked 16-byte
    // slice, unaligned.
    let mut rows = [unsafe { _mm_setzero_si128() }; 16];
    for (l, row) in rows.iter_mut().enumerate() {
        let src = &packed[l * rb + at..l * rb + at + 16];
        // SAFETY: as above.
        *row = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
    }
    for (col, &k) in transpose_regs_bitrev(rows).iter().zip(&REV4) {
        // SAFETY: SSE2 baseline; an unaligned 16-byte store into the `[u8; 16]` `dst[k]`.
        unsafe { _mm_storeu_si128(dst[k].as_mut_ptr().cast(), *col) };
    }
}

/// The inverse of [`pack_from`]: `b` bytes → 8 codes, a partial last group from what remains.
#[inline(always)]
fn unpack_into(packed: &[u8], dim: usize, bits: u8, mut put: impl FnMut(usize, u8)) {
    let b = bits as usize;
    debug_assert_eq!(packed.len(), row_bytes(dim, bits));
    let mask = (1u64 << b) - 1;
    for (g, src) in packed.chunks(b).enumerate() {
        let mut word = [0u8; 8];
        word[..src.len()].copy_from_slice(src);
        let acc = u64::from_le_bytes(word);
        let start = g * 8;
        for i in 0..(dim - start).min(8) {
            put(start + i, ((acc >> (i * b)) & mask) as u8);
        }
    }
}

/// Packs a row-major `n × dim` matrix of codes into `n · row_bytes(dim, bits)` bytes.
pub fn pack(codes: &[u8], dim: usize, bits: u8) -> Result<Vec<u8>> {
    check_bits(bits)?;
    if dim == 0 || !codes.len().is_multiple_of(dim) {
        return Err(Error::ShapeMismatch(format!(
            "{} codes are not a whole number of rows of {dim}",
            codes.len()
        )));
    }
    if let Some(&c) = codes.iter().find(|&&c| (c as u32) >> bits != 0) {
        return Err(Error::InvalidParameter(format!(
            "code {c} does not fit in {bits} bits"
        )));
    }
    let rb = row_bytes(dim, bits);
    let mut out = vec![0u8; codes.len() / dim * rb];
    for (row, dst) in codes.chunks_exact(dim).zip(out.chunks_exact_mut(rb)) {
        pack_row(row, bits, dst);
    }
    Ok(out)
}

/// Unpacks `n · row_bytes(dim, bits)` bytes into a row-major `n × dim` matrix of codes.
pub fn unpack(packed: &[u8], dim: usize, bits: u8) -> Result<Vec<u8>> {
    check_bits(bits)?;
    let rb = row_bytes(dim, bits);
    if dim == 0 || !packed.len().is_multiple_of(rb) {
        return Err(Error::ShapeMismatch(format!(
            "{} bytes are not a whole number of packed rows of {rb} bytes",
            packed.len()
        )));
    }
    let mut out = vec![0u8; packed.len() / rb * dim];
    for (src, row) in packed.chunks_exact(rb).zip(out.chunks_exact_mut(dim)) {
        unpack_row(src, bits, row);
    }
    Ok(out)
}

fn check_bits(bits: u8) -> Result<()> {
    if bits == 0 || bits > 8 {
        return Err(Error::InvalidParameter(format!(
            "bit_width must be in 1..=8, got {bits}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_width_and_length() {
        for bits in 1..=8u8 {
            for dim in [1usize, 3, 7, 8, 9, 15, 64, 100, 129] {
                let codes: Vec<u8> = (0..dim * 3)
                    .map(|i| ((i * 37 + 11) % (1 << bits)) as u8)
                    .collect();
                let packed = pack(&codes, dim, bits).unwrap();
                assert_eq!(packed.len(), 3 * row_bytes(dim, bits));
                assert_eq!(unpack(&packed, dim, bits).unwrap(), codes);
            }
        }
    }

    #[test]
    fn block_packing_equals_row_packing() {
        for bits in 1..=8u8 {
            for dim in [1usize, 7, 8, 9, 100, 129, 255, 256, 384, 1000] {
                for m in [16usize, 5] {
                    let block: Vec<[u8; 16]> = (0..dim)
                        .map(|j| {
                            std::array::from_fn(|l| ((j * 31 + l * 7 + 3) % (1 << bits)) as u8)
                        })
                        .collect();
                    let rb = row_bytes(dim, bits);
                    let mut out = vec![0xAAu8; m * rb];
                    pack_block(crate::simd::active_level(), &block, m, bits, &mut out);
                    for l in 0..m {
                        let row: Vec<u8> = block.iter().map(|c| c[l]).collect();
                        let mut want = vec![0u8; rb];
                        pack_row(&row, bits, &mut want);
                        assert_eq!(
                            &out[l * rb..(l + 1) * rb],
                            &want[..],
                            "b={bits} d={dim} m={m} l={l}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn block_unpacking_inverts_block_packing() {
        for bits in 1..=8u8 {
            for dim in [1usize, 7, 8, 9, 100, 129, 255, 256, 384, 1000] {
                let m = 16;
                let block: Vec<[u8; 16]> = (0..dim)
                    .map(|j| std::array::from_fn(|l| ((j * 13 + l * 5 + 1) % (1 << bits)) as u8))
                    .collect();
                let mut packed = vec![0u8; m * row_bytes(dim, bits)];
                pack_block(crate::simd::active_level(), &block, m, bits, &mut packed);
                let mut back = vec![[0u8; 16]; dim];
                unpack_block(crate::simd::active_level(), &packed, m, bits, &mut back);
                assert_eq!(back, block, "b={bits} d={dim}");
            }
        }
    }

    #[test]
    fn block_unpacking_equals_rows_at_every_level_and_zeroes_unused_columns() {
        use crate::simd::SimdLevel;
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            for bits in 1..=8u8 {
                for dim in [1usize, 3, 16, 33, 64, 128, 130] {
                    for m in [1usize, 7, 15, 16] {
                        let rb = row_bytes(dim, bits);
                        let packed: Vec<u8> = (0..m * rb).map(|i| (i * 37 + 11) as u8).collect();
                        let mut back = vec![[0xEEu8; 16]; dim];
                        unpack_block(level, &packed, m, bits, &mut back);
                        for l in 0..16 {
                            let mut row = vec![0u8; dim];
                            if l < m {
                                unpack_row(&packed[l * rb..(l + 1) * rb], bits, &mut row);
                            }
                            let got: Vec<u8> = back.iter().map(|c| c[l]).collect();
                            assert_eq!(got, row, "{level:?} b={bits} d={dim} m={m} lane {l}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn layout_is_lsb_first() {
        // codes 1,2,3 at 3 bits: 001 | 010<<3 | 011<<6 = 0b11_010_001 , then the high bit of 3
        let p = pack(&[1, 2, 3], 3, 3).unwrap();
        assert_eq!(p, vec![0b1101_0001, 0b0000_0000]);
        let p = pack(&[1, 2, 7], 3, 3).unwrap();
        assert_eq!(p, vec![0b1101_0001, 0b0000_0001]);
        assert_eq!(pack(&[0xA, 0x5], 2, 4).unwrap(), vec![0x5A]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(pack(&[4], 1, 2).is_err());
        assert!(pack(&[1, 2, 3], 2, 2).is_err());
        assert!(unpack(&[1, 2, 3, 4], 8, 3).is_err());
        assert!(pack(&[0], 1, 9).is_err());
    }
}
