//! Fast-scan kernels: sums of `u8` lookup-table entries over one block of 32 vectors.
//!
//! [`block_sums`] returns, for each of the 32 vectors of a block, `Σ_g lut[g][code_g]` as an
//! exact `u32`, for the [`Layout::Nibble`] and [`Layout::Pair`] layouts. The scalar reference
//! is [`portable_sums`]; the SIMD versions compute the same integers:
//!
//! - nibble, AVX2 / AVX-512: 2 / 4 groups per register, `pshufb` (`_mm256_shuffle_epi8` /
//!   `_mm512_shuffle_epi8`) looks up 16-entry tables held in-register, one per 128-bit lane;
//! - pair (3-bit), AVX-512 VBMI: the 64 6-bit codes of a step are cut out of their bit stream
//!   with `vpermb` + `vpmultishiftqb`, then `vpermt2b` looks them up in two 64-entry tables;
//!   without VBMI the portable body runs (compiled per level).
//!
//! Accumulation is in `u16` lanes: a lane holds the entries of two vectors (even and odd byte);
//! adding the raw lanes and, separately, the odd bytes (`>> 8`) gives both sums exactly
//! (`even = raw − (odd << 8)` modulo 2^16) as long as each stays below 2^16. Flushing to `u32`
//! every [`CHUNK`] steps (≤ 256 entries of ≤ 255 per lane) guarantees that.

use super::layout::{stream_bits, Layout, BLOCK};
use crate::simd::{multiversion, SimdLevel};

/// Steps accumulated in `u16` before flushing to `u32` (each adds at most 255 per lane).
const CHUNK: usize = 256;

multiversion! {
    /// Scalar reference: `out[v] = Σ_g lut[g][code(v, g)]` for a nibble or pair block.
    pub fn portable_sums(layout: &Layout, block: &[u8], lut: &[u8], out: &mut [u32; BLOCK]) {
        *out = [0; BLOCK];
        match *layout {
            Layout::Nibble { groups, .. } => {
                for (codes, table) in block.chunks_exact(16).zip(lut.chunks_exact(16)).take(groups) {
                    for (i, &c) in codes.iter().enumerate() {
                        out[i] += table[(c & 15) as usize] as u32;
                        out[16 + i] += table[(c >> 4) as usize] as u32;
                    }
                }
            }
            Layout::Pair { groups } => {
                for (step, tables) in block.chunks_exact(48).zip(lut.chunks_exact(128)).take(groups / 2) {
                    for p in 0..64 {
                        let code = stream_bits(step, 6 * p, 6);
                        out[p % 32] += tables[64 * (p / 32) + code] as u32;
                    }
                }
            }
            Layout::Rows { .. } => {}
        }
    }
}

/// `Σ_g lut[g][code(v, g)]` for the 32 vectors of `block`, at `level` (bit-exact at every level).
pub fn block_sums(
    level: SimdLevel,
    layout: &Layout,
    block: &[u8],
    lut: &[u8],
    out: &mut [u32; BLOCK],
) {
    let block = &block[..layout.block_bytes()];
    let lut = &lut[..layout.lut_bytes()];
    #[cfg(target_arch = "x86_64")]
    match (*layout, level.supported()) {
        (Layout::Nibble { groups, .. }, SimdLevel::Avx512) => {
            // SAFETY: AVX-512 F/BW were detected (`supported`); the slices hold `groups` groups.
            return unsafe { x86::nibble_avx512(block, lut, groups, out) };
        }
        (Layout::Nibble { groups, .. }, SimdLevel::Avx2) => {
            // SAFETY: AVX2 was detected (`supported`); the slices hold `groups` groups.
            return unsafe { x86::nibble_avx2(block, lut, groups, out) };
        }
        (Layout::Pair { groups }, SimdLevel::Avx512) if x86::has_vbmi() => {
            // SAFETY: AVX-512 F/BW and VBMI were detected; the slices hold `groups` groups.
            return unsafe { x86::pair_vbmi(block, lut, groups, out) };
        }
        _ => {}
    }
    portable_sums(level, layout, block, lut, out)
}

// The AVX-512 intrinsics are stable since Rust 1.89; so are the `avx512*` target features the
// crate's `multiversion!` already enables, so the crate needs 1.89 whatever `rust-version` says.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::incompatible_msrv)]
mod x86 {
    use super::{BLOCK, CHUNK};
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    /// Whether the CPU has AVX-512 VBMI (`vpermb`, `vpermt2b`, `vpmultishiftqb`).
    pub fn has_vbmi() -> bool {
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| is_x86_feature_detected!("avx512vbmi"))
    }

    /// Adds the `u16` lanes of `raw`/`odd` accumulators into `out`: `u16` lane `j` of 128-bit
    /// lane `l` holds the bytes at positions `2j, 2j + 1` of that lane, vectors `map(l, 2j)` and
    /// `map(l, 2j + 1)`.
    #[inline(always)]
    fn flush(
        raw: &[u16],
        odd: &[u16],
        out: &mut [u32; BLOCK],
        map: impl Fn(usize, usize) -> usize,
    ) {
        for (j, (&r, &o)) in raw.iter().zip(odd).enumerate() {
            let (lane, pos) = (j / 8, 2 * (j % 8));
            out[map(lane, pos)] += r.wrapping_sub(o << 8) as u32;
            out[map(lane, pos + 1)] += o as u32;
        }
    }

    /// AVX-512 nibble kernel: 4 groups (64 bytes of codes and of tables) per step.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BW; `block` and `lut` hold `16 · groups` bytes and
    /// `groups` is a multiple of 4.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn nibble_avx512(block: &[u8], lut: &[u8], groups: usize, out: &mut [u32; BLOCK]) {
        *out = [0; BLOCK];
        let steps = groups / 4;
        let mask = _mm512_set1_epi8(0x0F);
        let mut s0 = 0;
        while s0 < steps {
            let s1 = (s0 + CHUNK).min(steps);
            let z = _mm512_setzero_si512();
            let (mut lr, mut lo, mut hr, mut ho) = (z, z, z, z);
            for s in s0..s1 {
                // SAFETY: `64 s + 64 ≤ 16 · groups` = the slice lengths (caller's contract).
                let (x, t) = unsafe {
                    (
                        _mm512_loadu_si512(block.as_ptr().add(64 * s).cast()),
                        _mm512_loadu_si512(lut.as_ptr().add(64 * s).cast()),
                    )
                };
                let a = _mm512_shuffle_epi8(t, _mm512_and_si512(x, mask));
                let b = _mm512_shuffle_epi8(t, _mm512_and_si512(_mm512_srli_epi16(x, 4), mask));
                lr = _mm512_add_epi16(lr, a);
                lo = _mm512_add_epi16(lo, _mm512_srli_epi16(a, 8));
                hr = _mm512_add_epi16(hr, b);
                ho = _mm512_add_epi16(ho, _mm512_srli_epi16(b, 8));
            }
            let mut buf = [[0u16; 32]; 4];
            for (dst, v) in buf.iter_mut().zip([lr, lo, hr, ho]) {
                // SAFETY: `dst` is 64 writable bytes.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
            }
            flush(&buf[0], &buf[1], out, |_, p| p);
            flush(&buf[2], &buf[3], out, |_, p| 16 + p);
            s0 = s1;
        }
    }

    /// AVX2 nibble kernel: 2 groups (32 bytes of codes and of tables) per step.
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` and `lut` hold `16 · groups` bytes, `groups` even.
    #[target_feature(enable = "avx2")]
    pub unsafe fn nibble_avx2(block: &[u8], lut: &[u8], groups: usize, out: &mut [u32; BLOCK]) {
        *out = [0; BLOCK];
        let steps = groups / 2;
        let mask = _mm256_set1_epi8(0x0F);
        let mut s0 = 0;
        while s0 < steps {
            let s1 = (s0 + CHUNK).min(steps);
            let z = _mm256_setzero_si256();
            let (mut lr, mut lo, mut hr, mut ho) = (z, z, z, z);
            for s in s0..s1 {
                // SAFETY: `32 s + 32 ≤ 16 · groups` = the slice lengths (caller's contract).
                let (x, t) = unsafe {
                    (
                        _mm256_loadu_si256(block.as_ptr().add(32 * s).cast()),
                        _mm256_loadu_si256(lut.as_ptr().add(32 * s).cast()),
                    )
                };
                let a = _mm256_shuffle_epi8(t, _mm256_and_si256(x, mask));
                let b = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(x, 4), mask));
                lr = _mm256_add_epi16(lr, a);
                lo = _mm256_add_epi16(lo, _mm256_srli_epi16(a, 8));
                hr = _mm256_add_epi16(hr, b);
                ho = _mm256_add_epi16(ho, _mm256_srli_epi16(b, 8));
            }
            let mut buf = [[0u16; 16]; 4];
            for (dst, v) in buf.iter_mut().zip([lr, lo, hr, ho]) {
                // SAFETY: `dst` is 32 writable bytes.
                unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), v) };
            }
            flush(&buf[0], &buf[1], out, |_, p| p);
            flush(&buf[2], &buf[3], out, |_, p| 16 + p);
            s0 = s1;
        }
    }

    /// AVX-512 VBMI pair (3-bit) kernel: one 48-byte step (2 groups × 32 vectors) per iteration.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW and VBMI; `block` holds `24 · groups` bytes, `lut`
    /// `64 · groups`, and `groups` is even.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub unsafe fn pair_vbmi(block: &[u8], lut: &[u8], groups: usize, out: &mut [u32; BLOCK]) {
        *out = [0; BLOCK];
        let steps = groups / 2;
        // Byte r of qword q gathers source byte 6q + r: qword q then starts at stream bit 48q,
        // where positions 8q..8q+8 begin, and position 8q + r sits at bit 6r of it.
        let mut perm = [0u8; 64];
        for (i, p) in perm.iter_mut().enumerate() {
            *p = (6 * (i / 8) + i % 8) as u8;
        }
        // SAFETY: `perm` is 64 readable bytes.
        let perm = unsafe { _mm512_loadu_si512(perm.as_ptr().cast()) };
        let shifts = _mm512_set1_epi64(0x2A24_1E18_120C_0600);
        let six = _mm512_set1_epi8(0x3F);
        // Positions 32..64 belong to the step's second group: bit 6 picks the second table.
        let second = _mm512_set_epi64(
            0x4040_4040_4040_4040u64 as i64,
            0x4040_4040_4040_4040u64 as i64,
            0x4040_4040_4040_4040u64 as i64,
            0x4040_4040_4040_4040u64 as i64,
            0,
            0,
            0,
            0,
        );
        let mut s0 = 0;
        while s0 < steps {
            let s1 = (s0 + CHUNK).min(steps);
            let z = _mm512_setzero_si512();
            let (mut raw, mut odd) = (z, z);
            for s in s0..s1 {
                // SAFETY: the masked load reads bytes `48 s .. 48 s + 48` only (masked-out bytes
                // are not accessed), and the tables `128 s .. 128 s + 128`, all in bounds.
                let (x, ta, tb) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(
                            0xFFFF_FFFF_FFFF,
                            block.as_ptr().add(48 * s).cast(),
                        ),
                        _mm512_loadu_si512(lut.as_ptr().add(128 * s).cast()),
                        _mm512_loadu_si512(lut.as_ptr().add(128 * s + 64).cast()),
                    )
                };
                let bits = _mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(perm, x));
                let idx = _mm512_or_si512(_mm512_and_si512(bits, six), second);
                let v = _mm512_permutex2var_epi8(ta, idx, tb);
                raw = _mm512_add_epi16(raw, v);
                odd = _mm512_add_epi16(odd, _mm512_srli_epi16(v, 8));
            }
            let mut buf = [[0u16; 32]; 2];
            for (dst, v) in buf.iter_mut().zip([raw, odd]) {
                // SAFETY: `dst` is 64 writable bytes.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
            }
            flush(&buf[0], &buf[1], out, |lane, p| (16 * lane + p) % 32);
            s0 = s1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_matches_the_scalar_reference() {
        for (dim, bits) in [
            (384usize, 4u8),
            (100, 2),
            (37, 1),
            (384, 3),
            (70, 3),
            (4200, 4),
            (2100, 3),
        ] {
            let layout = Layout::new(dim, bits);
            let mut seed = 0x9E37_79B9u64;
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let block: Vec<u8> = (0..layout.block_bytes()).map(|_| next() as u8).collect();
            let lut: Vec<u8> = (0..layout.lut_bytes())
                .map(|_| next() as u8 | 0xF0)
                .collect();
            let mut want = [0u32; BLOCK];
            portable_sums(SimdLevel::Scalar, &layout, &block, &lut, &mut want);
            for level in SimdLevel::available() {
                let mut got = [0u32; BLOCK];
                block_sums(level, &layout, &block, &lut, &mut got);
                assert_eq!(got, want, "{level:?} dim {dim} bits {bits}");
            }
        }
    }
}
