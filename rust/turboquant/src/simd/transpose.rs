//! 16×16 byte-tile transpose (SSE2 on x86-64, which every x86-64 CPU has; portable elsewhere).

/// `out[c][r] = tile[r][c]`.
pub fn transpose16_u8(tile: &[[u8; 16]; 16]) -> [[u8; 16]; 16] {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::transpose(tile)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::array::from_fn(|c| std::array::from_fn(|r| tile[r][c]))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod sse2 {
    use std::arch::x86_64::*;

    /// One interleave stage at element width `W` bits: out[i] = lo(a[2i], a[2i+1]),
    /// out[i+8] = hi(a[2i], a[2i+1]). Four stages (8, 16, 32, 64) transpose the tile, with
    /// column `c` landing in register `bitreverse4(c)`.
    #[inline(always)]
    fn stage<const W: u32>(a: [__m128i; 16]) -> [__m128i; 16] {
        // SAFETY: SSE2 is part of the x86-64 baseline; these are register-only operations.
        unsafe {
            let mut o = [_mm_setzero_si128(); 16];
            for i in 0..8 {
                let (x, y) = (a[2 * i], a[2 * i + 1]);
                let (lo, hi) = match W {
                    8 => (_mm_unpacklo_epi8(x, y), _mm_unpackhi_epi8(x, y)),
                    16 => (_mm_unpacklo_epi16(x, y), _mm_unpackhi_epi16(x, y)),
                    32 => (_mm_unpacklo_epi32(x, y), _mm_unpackhi_epi32(x, y)),
                    _ => (_mm_unpacklo_epi64(x, y), _mm_unpackhi_epi64(x, y)),
                };
                o[i] = lo;
                o[i + 8] = hi;
            }
            o
        }
    }

    /// Transposes 16 rows of 16 bytes held in registers, leaving the columns in bit-reversed
    /// order: `out[i]` is column [`REV4`]`[i]` (byte `REV4[i]` of every row, row `l` in byte
    /// `l`). Callers store each register where its column belongs, so no register is moved.
    #[inline(always)]
    pub(crate) fn transpose_regs_bitrev(regs: [__m128i; 16]) -> [__m128i; 16] {
        stage::<64>(stage::<32>(stage::<16>(stage::<8>(regs))))
    }

    /// `REV4[i]`: the 4-bit reversal of `i` (the column held by register `i` of
    /// [`transpose_regs_bitrev`]).
    pub(crate) const REV4: [usize; 16] = [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15];

    pub(super) fn transpose(tile: &[[u8; 16]; 16]) -> [[u8; 16]; 16] {
        let mut regs = [[0u8; 16]; 16].map(|_| {
            // SAFETY: SSE2 is part of the x86-64 baseline.
            unsafe { _mm_setzero_si128() }
        });
        for (reg, row) in regs.iter_mut().zip(tile) {
            // SAFETY: `row` is 16 readable bytes; unaligned load.
            *reg = unsafe { _mm_loadu_si128(row.as_ptr().cast()) };
        }
        let t = stage::<64>(stage::<32>(stage::<16>(stage::<8>(regs))));
        let mut out = [[0u8; 16]; 16];
        for (c, row) in out.iter_mut().enumerate() {
            let src = (c as u8).reverse_bits() >> 4;
            // SAFETY: `row` is 16 writable bytes; unaligned store.
            unsafe { _mm_storeu_si128(row.as_mut_ptr().cast(), t[src as usize]) };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transposes() {
        let tile: [[u8; 16]; 16] =
            std::array::from_fn(|r| std::array::from_fn(|c| (r * 16 + c) as u8));
        let t = super::transpose16_u8(&tile);
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(t[c][r], tile[r][c]);
            }
        }
    }
}
