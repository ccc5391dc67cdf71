//! Kernels over blocks of [`LANES`] vectors stored coordinate-major (`block[j][l]` is
//! coordinate `j` of vector `l`): every operation is one vertical SIMD operation on a whole
//! coordinate row, with no shuffles, whatever the dimension. Per vector they perform exactly
//! the arithmetic of the one-vector kernels in [`super::kernels`] (same butterflies, same
//! summation order, no fused multiply-add), so both layouts give bit-identical results. The
//! attention kernels at the end (`dot_rows_lanes`, `dot_words_lanes`, `accumulate_*_lanes`)
//! have no one-vector twin and use `Row::mul_add`, one rounding on every level.
//!
//! Each kernel is written once over the `Row` trait and instantiated three times: plain
//! arrays (portable), two AVX2 registers, one AVX-512 register. (Leaving this to the
//! autovectorizer made it vectorize the wrong loop, with gathers, 8× slower than scalar.)

use super::kernels::LANES;
use super::SimdLevel;
use crate::cells::CellTable;

/// One coordinate of `LANES` vectors.
pub type Lanes = [f32; LANES];

/// A register-held coordinate row of `LANES` values.
trait Row: Copy {
    fn load(p: &Lanes) -> Self;
    fn store(self, p: &mut Lanes);
    fn splat(v: f32) -> Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `self · o + a` per lane, one rounding (the attention kernels' fused multiply-add).
    fn mul_add(self, o: Self, a: Self) -> Self;
    /// Per lane: `if self < than { yes } else { no }`.
    /// `out[j][l] = rows[l·dim + j]` for the `m = rows.len()/dim ≤ LANES` rows, zero beyond.
    #[inline(always)]
    fn load_rows(rows: &[f32], dim: usize, out: &mut [Lanes]) {
        portable_load_rows(rows, dim, out)
    }
    /// The inverse of [`Row::load_rows`]: writes the first `rows.len()/dim` lanes out as rows.
    #[inline(always)]
    fn store_rows(block: &[Lanes], dim: usize, rows: &mut [f32]) {
        portable_store_rows(block, dim, rows)
    }
    /// `table[codes[l]]` per lane.
    #[inline(always)]
    fn lookup(codes: &[u8; LANES], table: &[f32]) -> Self {
        Self::load(&codes.map(|c| table[c as usize]))
    }
    /// `table[codes[l]]` per lane for a table padded to 16 entries (every code < 16): callers
    /// pad once per block, so a loop over coordinates reads the table from one register.
    #[inline(always)]
    fn lookup16(codes: &[u8; LANES], table: &[f32; 16]) -> Self {
        Self::load(&codes.map(|c| table[c as usize]))
    }
    /// `table[(w[l] >> shift) & 15]` per lane (`shift < 32`): the code at bit `shift` of each
    /// lane's 32-bit word of packed codes, read through a table repeated to 16 entries (so that
    /// the bits above a code narrower than 4 bits select the same entry).
    #[inline(always)]
    fn lookup_word(w: &[u32; LANES], shift: u32, table: &[f32; 16]) -> Self {
        Self::load(&w.map(|v| table[((v >> shift) & 15) as usize]))
    }
    /// [`Row::lookup_word`] for a code that straddles two words: its low bits are the top of
    /// `w` (from bit `shift`, `0 < shift < 32`), its high bits the bottom of `next`.
    #[inline(always)]
    fn lookup_word_pair(
        w: &[u32; LANES],
        next: &[u32; LANES],
        shift: u32,
        table: &[f32; 16],
    ) -> Self {
        Self::load(&std::array::from_fn(|l| {
            table[(((w[l] >> shift) | (next[l] << (32 - shift))) & 15) as usize]
        }))
    }
    /// `table[(bytes[k] >> shift) & 15]` in lane `k` (`shift < 8`): one code of each of 16
    /// packed bytes, through a table repeated to 16 entries.
    #[inline(always)]
    fn lookup_bytes(bytes: &[u8; LANES], shift: u32, table: &[f32; 16]) -> Self {
        Self::load(&bytes.map(|b| table[((b as u32 >> shift) & 15) as usize]))
    }
    /// [`Row::lookup_bytes`] at every shift `j·B` (`j < P = 8 / B`): all `P` codes of each of
    /// 16 packed bytes, lookup `j` in element `j`.
    #[inline(always)]
    fn lookup_chunk<const B: u32, const P: usize>(
        bytes: &[u8; LANES],
        table: &[f32; 16],
    ) -> [Self; P] {
        let mut out = [Self::splat(0.0); P];
        for (j, o) in out.iter_mut().enumerate() {
            *o = Self::lookup_bytes(bytes, j as u32 * B, table);
        }
        out
    }
    /// `table[code k]` in lane `k` for the 16 consecutive `B`-bit codes (`B ≤ 4`) that start at
    /// bit 0 of `bytes` (bytes past its end read as zero), through a table repeated to 16
    /// entries.
    #[inline(always)]
    fn lookup_run<const B: u32>(bytes: &[u8], table: &[f32; 16]) -> Self {
        Self::load(&std::array::from_fn(|k| table[run_code::<B>(bytes, k)]))
    }
    /// `out[k][l]` = little-endian 32-bit word `w0 + k` of row `l`, for the `m ≤ 16` rows of
    /// `row_bytes` bytes in `packed` and `k < out.len() ≤ 16`; rows `m..` read as zero, bytes
    /// past a row's end as zero or as the next row's (callers read only the row's codes).
    #[inline(always)]
    fn load_words(packed: &[u8], row_bytes: usize, w0: usize, out: &mut [[u32; LANES]]) {
        portable_load_words(packed, row_bytes, w0, out)
    }
    /// `(code, centroid)` per lane of the scaled coordinates `y` for a codebook of at most 16
    /// entries with its [`CellTable`] (`centroids` padded to 16 entries; code = the number of
    /// boundaries strictly below). The default looks up the cells lane by lane.
    #[inline(always)]
    fn encode_small(y: Self, cells: &CellTable, centroids: &[f32; 16]) -> ([u8; LANES], Self) {
        let mut ys = [0.0f32; LANES];
        y.store(&mut ys);
        let code = ys.map(|v| cells.encode(v));
        (code, Self::load(&code.map(|c| centroids[c as usize])))
    }
}

/// `out[j][l] = rows[l·dim + j]` for the `rows.len()/dim` rows, zero in the other lanes.
#[inline(always)]
fn portable_load_rows(rows: &[f32], dim: usize, out: &mut [Lanes]) {
    let m = rows.len() / dim;
    for (l, row) in rows.chunks_exact(dim).enumerate() {
        for (lane, &v) in out.iter_mut().zip(row) {
            lane[l] = v;
        }
    }
    for lane in out.iter_mut() {
        lane[m..].fill(0.0);
    }
}

/// Code `k` (of `B ≤ 4` bits, plus the bits above it up to 4) of the bit stream `bytes`
/// (bytes past its end read as zero).
#[inline(always)]
fn run_code<const B: u32>(bytes: &[u8], k: usize) -> usize {
    let bit = k * B as usize;
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0) as usize;
    ((byte(bit / 8) | (byte(bit / 8 + 1) << 8)) >> (bit % 8)) & 15
}

/// The portable [`Row::load_words`].
#[inline(always)]
fn portable_load_words(packed: &[u8], row_bytes: usize, w0: usize, out: &mut [[u32; LANES]]) {
    let m = packed.len() / row_bytes.max(1);
    for (k, o) in out.iter_mut().enumerate() {
        for (l, v) in o.iter_mut().enumerate() {
            let mut word = [0u8; 4];
            if l < m {
                let row = &packed[l * row_bytes..(l + 1) * row_bytes];
                let at = 4 * (w0 + k);
                for (i, b) in word.iter_mut().enumerate() {
                    *b = row.get(at + i).copied().unwrap_or(0);
                }
            }
            *v = u32::from_le_bytes(word);
        }
    }
}

/// Per `B ≤ 4` (index `B − 1`), the byte-shuffle control and the shifts that bring code `k` of
/// a 16-code run to the bottom of 32-bit lane `k`: bytes `⌊kB/8⌋` and `⌊kB/8⌋ + 1` of the run
/// into the lane's two low bytes (the others zero), then a right shift by `kB mod 8`.
#[cfg(target_arch = "x86_64")]
static RUN_CONTROL: [([u8; 64], [u32; 16]); 4] = [
    run_control(1),
    run_control(2),
    run_control(3),
    run_control(4),
];

/// One entry of [`RUN_CONTROL`].
#[cfg(target_arch = "x86_64")]
const fn run_control(b: usize) -> ([u8; 64], [u32; 16]) {
    let mut ctrl = [0x80u8; 64];
    let mut shift = [0u32; 16];
    let mut k = 0;
    while k < 16 {
        ctrl[4 * k] = (k * b / 8) as u8;
        ctrl[4 * k + 1] = (k * b / 8 + 1) as u8;
        shift[k] = (k * b % 8) as u32;
        k += 1;
    }
    (ctrl, shift)
}

/// `rows[l·dim + j] = block[j][l]` for the `rows.len()/dim` rows.
#[inline(always)]
fn portable_store_rows(block: &[Lanes], dim: usize, rows: &mut [f32]) {
    for (l, row) in rows.chunks_exact_mut(dim).enumerate() {
        for (v, lane) in row.iter_mut().zip(block) {
            *v = lane[l];
        }
    }
}

#[derive(Clone, Copy)]
struct Portable(Lanes);

impl Row for Portable {
    #[inline(always)]
    fn load(p: &Lanes) -> Self {
        Portable(*p)
    }
    #[inline(always)]
    fn store(self, p: &mut Lanes) {
        *p = self.0;
    }
    #[inline(always)]
    fn splat(v: f32) -> Self {
        Portable([v; LANES])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
    #[inline(always)]
    fn mul_add(self, o: Self, a: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l].mul_add(o.0[l], a.0[l])))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The register types. Their methods are only ever inlined into functions compiled with
    //! the matching `#[target_feature]` (the dispatchers below), never called elsewhere.
    use super::{Lanes, Row};
    use crate::cells::{CellTable, CELLS};
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub(super) struct Avx2(__m256, __m256);

    impl Row for Avx2 {
        #[inline(always)]
        fn load(p: &Lanes) -> Self {
            // SAFETY: `p` is 16 readable f32; AVX is enabled in every caller (avx2 dispatcher).
            unsafe {
                Avx2(
                    _mm256_loadu_ps(p.as_ptr()),
                    _mm256_loadu_ps(p.as_ptr().add(8)),
                )
            }
        }
        #[inline(always)]
        fn store(self, p: &mut Lanes) {
            // SAFETY: `p` is 16 writable f32; AVX is enabled in every caller.
            unsafe {
                _mm256_storeu_ps(p.as_mut_ptr(), self.0);
                _mm256_storeu_ps(p.as_mut_ptr().add(8), self.1);
            }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: AVX is enabled in every caller.
            unsafe { Avx2(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: AVX is enabled in every caller.
            unsafe { Avx2(_mm256_add_ps(self.0, o.0), _mm256_add_ps(self.1, o.1)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: AVX is enabled in every caller.
            unsafe { Avx2(_mm256_sub_ps(self.0, o.0), _mm256_sub_ps(self.1, o.1)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: AVX is enabled in every caller.
            unsafe { Avx2(_mm256_mul_ps(self.0, o.0), _mm256_mul_ps(self.1, o.1)) }
        }
        #[inline(always)]
        fn mul_add(self, o: Self, a: Self) -> Self {
            // SAFETY: AVX and FMA are enabled in every caller.
            unsafe {
                Avx2(
                    _mm256_fmadd_ps(self.0, o.0, a.0),
                    _mm256_fmadd_ps(self.1, o.1, a.1),
                )
            }
        }
        #[inline(always)]
        fn encode_small(y: Self, cells: &CellTable, centroids: &[f32; 16]) -> ([u8; 16], Self) {
            // The two lookups of `CellTable::encode`, 8 lanes at a time (see `encode8`).
            // SAFETY: AVX2 and FMA are enabled in every caller.
            let ((c0, v0), (c1, v1)) = unsafe {
                (
                    encode8(y.0, cells, centroids),
                    encode8(y.1, cells, centroids),
                )
            };
            let mut codes = [0i32; 16];
            // SAFETY: `codes` is 16 writable i32; AVX is enabled in every caller.
            unsafe {
                _mm256_storeu_si256(codes.as_mut_ptr().cast(), c0);
                _mm256_storeu_si256(codes.as_mut_ptr().add(8).cast(), c1);
            }
            (codes.map(|c| c as u8), Avx2(v0, v1))
        }
        #[inline(always)]
        fn lookup16(codes: &[u8; 16], table: &[f32; 16]) -> Self {
            // SAFETY: AVX2 is enabled in every caller; 16 bytes of codes (two 8-byte loads),
            // a 16-entry table as `lookup::<2>` reads it, every code < 16.
            unsafe {
                let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.as_ptr().cast()));
                let i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.as_ptr().add(8).cast()));
                Avx2(
                    lookup::<2>(table.as_ptr(), i0),
                    lookup::<2>(table.as_ptr(), i1),
                )
            }
        }
        #[inline(always)]
        fn lookup_word(w: &[u32; 16], shift: u32, table: &[f32; 16]) -> Self {
            // SAFETY: AVX2 is enabled in every caller; `w` is 16 readable u32 (two 8-lane
            // loads), the table 16 f32 as `lookup::<2>` reads it; only index bits 0-3 matter.
            unsafe {
                let s = _mm_cvtsi32_si128(shift as i32);
                let i0 = _mm256_srl_epi32(_mm256_loadu_si256(w.as_ptr().cast()), s);
                let i1 = _mm256_srl_epi32(_mm256_loadu_si256(w.as_ptr().add(8).cast()), s);
                Avx2(
                    lookup::<2>(table.as_ptr(), i0),
                    lookup::<2>(table.as_ptr(), i1),
                )
            }
        }
        #[inline(always)]
        fn lookup_word_pair(
            w: &[u32; 16],
            next: &[u32; 16],
            shift: u32,
            table: &[f32; 16],
        ) -> Self {
            // SAFETY: as `lookup_word`, with `next` 16 readable u32 as well.
            unsafe {
                let (s, t) = (
                    _mm_cvtsi32_si128(shift as i32),
                    _mm_cvtsi32_si128(32 - shift as i32),
                );
                let half = |i: usize| {
                    _mm256_or_si256(
                        _mm256_srl_epi32(_mm256_loadu_si256(w.as_ptr().add(i).cast()), s),
                        _mm256_sll_epi32(_mm256_loadu_si256(next.as_ptr().add(i).cast()), t),
                    )
                };
                let (i0, i1) = (half(0), half(8));
                Avx2(
                    lookup::<2>(table.as_ptr(), i0),
                    lookup::<2>(table.as_ptr(), i1),
                )
            }
        }
        #[inline(always)]
        fn lookup_bytes(bytes: &[u8; 16], shift: u32, table: &[f32; 16]) -> Self {
            // SAFETY: AVX2 is enabled in every caller; 16 bytes (two 8-byte loads), a 16-entry
            // table as `lookup::<2>` reads it; only index bits 0-3 matter.
            unsafe {
                let s = _mm_cvtsi32_si128(shift as i32);
                let i0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr().cast()));
                let i1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr().add(8).cast()));
                Avx2(
                    lookup::<2>(table.as_ptr(), _mm256_srl_epi32(i0, s)),
                    lookup::<2>(table.as_ptr(), _mm256_srl_epi32(i1, s)),
                )
            }
        }
        #[inline(always)]
        fn lookup_run<const B: u32>(bytes: &[u8], table: &[f32; 16]) -> Self {
            let mut run = [0u8; 16];
            let n = bytes.len().min(16);
            run[..n].copy_from_slice(&bytes[..n]);
            let (ctrl, shift) = &super::RUN_CONTROL[B as usize - 1];
            // SAFETY: AVX2 is enabled in every caller; `run` is 16 bytes, `ctrl` 64 bytes and
            // `shift` 16 u32 (two 32-byte loads each); both 128-bit halves hold the same run,
            // so the in-lane byte shuffle can pick any of its bytes.
            unsafe {
                let y = _mm256_broadcastsi128_si256(_mm_loadu_si128(run.as_ptr().cast()));
                let idx = |i: usize| {
                    _mm256_srlv_epi32(
                        _mm256_shuffle_epi8(y, _mm256_loadu_si256(ctrl.as_ptr().add(4 * i).cast())),
                        _mm256_loadu_si256(shift.as_ptr().add(i).cast()),
                    )
                };
                let (i0, i1) = (idx(0), idx(8));
                Avx2(
                    lookup::<2>(table.as_ptr(), i0),
                    lookup::<2>(table.as_ptr(), i1),
                )
            }
        }
    }

    /// [`CellTable::encode`] and the centroid of 8 lanes, with the 32-entry cell tables and the
    /// 16-entry centroid table read through 8-entry permutes merged by the index bits.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (only inlined into such functions).
    #[inline(always)]
    unsafe fn encode8(y: __m256, cells: &CellTable, centroids: &[f32; 16]) -> (__m256i, __m256) {
        // SAFETY: AVX2 and FMA are enabled in every caller; the tables hold 32 (cells) and 16
        // (centroids) entries, as `lookup` reads them.
        unsafe {
            let u = _mm256_fmadd_ps(
                y,
                _mm256_set1_ps(cells.inv_width),
                _mm256_set1_ps(cells.offset),
            );
            let u = _mm256_min_ps(
                _mm256_max_ps(u, _mm256_setzero_ps()),
                _mm256_set1_ps((CELLS - 1) as f32),
            );
            let g = _mm256_cvttps_epi32(u);
            let below = _mm256_castps_si256(lookup::<4>(cells.below.as_ptr().cast(), g));
            let inside = lookup::<4>(cells.inside.as_ptr(), g);
            // all ones (−1) where the cell's boundary lies below y
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(inside, y));
            let code = _mm256_sub_epi32(below, up);
            (code, lookup::<2>(centroids.as_ptr(), code))
        }
    }

    /// `table[idx]` per lane for a table of `8 · P` f32 (`P` = 2 or 4, every `idx < 8 · P`):
    /// one 8-entry permute per part, merged by index bit 3 (and bit 4).
    ///
    /// # Safety
    /// The CPU must support AVX2; `table` points to `8 · P` readable f32.
    #[inline(always)]
    unsafe fn lookup<const P: usize>(table: *const f32, idx: __m256i) -> __m256 {
        // SAFETY: as the caller guarantees.
        unsafe {
            let p0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx);
            let p1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table.add(8)), idx);
            // blendv picks by the sign bit: move index bit 3 (then 4) there
            let bit3 = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
            let low = _mm256_blendv_ps(p0, p1, bit3);
            if P == 2 {
                return low;
            }
            let p2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table.add(16)), idx);
            let p3 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table.add(24)), idx);
            let high = _mm256_blendv_ps(p2, p3, bit3);
            let bit4 = _mm256_castsi256_ps(_mm256_slli_epi32::<27>(idx));
            _mm256_blendv_ps(low, high, bit4)
        }
    }

    /// Transposes a 16×16 tile of f32 held in 16 registers (row `l` in, column `l` out).
    #[inline(always)]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        // SAFETY: only inlined into AVX-512F functions (see the module doc).
        unsafe {
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for i in 0..4 {
                let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                u[4 * i] =
                    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
                u[4 * i + 1] =
                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(c)));
                u[4 * i + 2] =
                    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
                u[4 * i + 3] =
                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(b), _mm512_castps_pd(d)));
            }
            let mut v = [_mm512_setzero_ps(); 16];
            for h in 0..2 {
                for i in 0..4 {
                    v[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(u[8 * h + i], u[8 * h + 4 + i]);
                    v[8 * h + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(u[8 * h + i], u[8 * h + 4 + i]);
                }
            }
            let mut out = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                out[i] = _mm512_shuffle_f32x4::<0x88>(v[i], v[8 + i]);
                out[8 + i] = _mm512_shuffle_f32x4::<0xdd>(v[i], v[8 + i]);
            }
            out
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Avx512(__m512);

    impl Row for Avx512 {
        #[inline(always)]
        fn load(p: &Lanes) -> Self {
            // SAFETY: `p` is 16 readable f32; AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_loadu_ps(p.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, p: &mut Lanes) {
            // SAFETY: `p` is 16 writable f32; AVX-512F is enabled in every caller.
            unsafe { _mm512_storeu_ps(p.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_add_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_sub_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul(self, o: Self) -> Self {
            // SAFETY: AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_mul_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn mul_add(self, o: Self, a: Self) -> Self {
            // SAFETY: AVX-512F is enabled in every caller.
            unsafe { Avx512(_mm512_fmadd_ps(self.0, o.0, a.0)) }
        }
        #[inline(always)]
        fn load_rows(rows: &[f32], dim: usize, out: &mut [Lanes]) {
            let m = rows.len() / dim;
            if m < 16 {
                return super::portable_load_rows(rows, dim, out);
            }
            // Whole 16×16 tiles are transposed in registers; a dim tail goes the portable way.
            let tiles = dim / 16;
            for t in 0..tiles {
                // SAFETY: AVX-512F is enabled in every caller. Row l of the tile reads
                // rows[l·dim + 16t .. +16] (inside `rows`, as m = 16 and 16t + 16 ≤ dim) and
                // writes out[16t .. 16t + 16] (inside `out`, whose length is dim).
                unsafe {
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (l, reg) in r.iter_mut().enumerate() {
                        *reg = _mm512_loadu_ps(rows.as_ptr().add(l * dim + 16 * t));
                        // The same line two blocks ahead, into L2 (measured: +20-45 % quantize
                        // throughput; the hardware prefetchers miss these 16 strided streams).
                        // A prefetch never faults, so the address may lie past the input.
                        _mm_prefetch::<_MM_HINT_T1>(
                            rows.as_ptr().wrapping_add((32 + l) * dim + 16 * t) as *const i8,
                        );
                    }
                    let r = transpose16(r);
                    for (k, reg) in r.iter().enumerate() {
                        _mm512_storeu_ps(out[16 * t + k].as_mut_ptr(), *reg);
                    }
                }
            }
            for j in tiles * 16..dim {
                for l in 0..16 {
                    out[j][l] = rows[l * dim + j];
                }
            }
        }
        #[inline(always)]
        fn store_rows(block: &[Lanes], dim: usize, rows: &mut [f32]) {
            if rows.len() / dim < 16 {
                return super::portable_store_rows(block, dim, rows);
            }
            let tiles = dim / 16;
            for t in 0..tiles {
                // SAFETY: AVX-512F is enabled in every caller. Reads block[16t .. 16t+16]
                // (16t + 16 ≤ dim = block.len()); writes rows[l·dim + 16t .. +16] for l < 16,
                // inside `rows` (16 rows of dim).
                unsafe {
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (k, reg) in r.iter_mut().enumerate() {
                        *reg = _mm512_loadu_ps(block[16 * t + k].as_ptr());
                    }
                    let r = transpose16(r);
                    for (l, reg) in r.iter().enumerate() {
                        _mm512_storeu_ps(rows.as_mut_ptr().add(l * dim + 16 * t), *reg);
                    }
                }
            }
            for j in tiles * 16..dim {
                for l in 0..16 {
                    rows[l * dim + j] = block[j][l];
                }
            }
        }
        #[inline(always)]
        fn lookup(codes: &[u8; 16], table: &[f32]) -> Self {
            if table.len() > 16 {
                return Self::load(&codes.map(|c| table[c as usize]));
            }
            let mut padded = [0.0f32; 16];
            padded[..table.len()].copy_from_slice(table);
            Self::lookup16(codes, &padded)
        }
        #[inline(always)]
        fn lookup16(codes: &[u8; 16], table: &[f32; 16]) -> Self {
            // SAFETY: AVX-512F is enabled in every caller; 16 bytes of codes and a 16-entry
            // table; the permute reads only the low 4 bits of each index, and codes < 16.
            unsafe {
                let idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.as_ptr().cast()));
                Avx512(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(table.as_ptr())))
            }
        }
        #[inline(always)]
        fn lookup_word(w: &[u32; 16], shift: u32, table: &[f32; 16]) -> Self {
            // SAFETY: AVX-512F is enabled in every caller; `w` is 16 readable u32, the table 16
            // f32; the permute reads only the low 4 bits of each index.
            unsafe {
                let w = _mm512_loadu_si512(w.as_ptr().cast());
                let idx = _mm512_srl_epi32(w, _mm_cvtsi32_si128(shift as i32));
                Avx512(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(table.as_ptr())))
            }
        }
        #[inline(always)]
        fn lookup_word_pair(
            w: &[u32; 16],
            next: &[u32; 16],
            shift: u32,
            table: &[f32; 16],
        ) -> Self {
            // SAFETY: as `lookup_word`, with `next` 16 readable u32 as well.
            unsafe {
                let lo = _mm512_srl_epi32(
                    _mm512_loadu_si512(w.as_ptr().cast()),
                    _mm_cvtsi32_si128(shift as i32),
                );
                let hi = _mm512_sll_epi32(
                    _mm512_loadu_si512(next.as_ptr().cast()),
                    _mm_cvtsi32_si128(32 - shift as i32),
                );
                let idx = _mm512_or_si512(lo, hi);
                Avx512(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(table.as_ptr())))
            }
        }
        #[inline(always)]
        fn lookup_bytes(bytes: &[u8; 16], shift: u32, table: &[f32; 16]) -> Self {
            // SAFETY: AVX-512F is enabled in every caller; 16 readable bytes, a 16-entry table;
            // the permute reads only the low 4 bits of each index.
            unsafe {
                let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.as_ptr().cast()));
                let idx = _mm512_srl_epi32(b, _mm_cvtsi32_si128(shift as i32));
                Avx512(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(table.as_ptr())))
            }
        }
        #[inline(always)]
        fn lookup_chunk<const B: u32, const P: usize>(
            bytes: &[u8; 16],
            table: &[f32; 16],
        ) -> [Self; P] {
            // SAFETY: AVX-512F is enabled in every caller; 16 readable bytes, a 16-entry table;
            // the permute reads only the low 4 bits of each index. The bytes are widened once
            // for all P codes.
            unsafe {
                let t = _mm512_loadu_ps(table.as_ptr());
                let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.as_ptr().cast()));
                let mut out = [Avx512(_mm512_setzero_ps()); P];
                for (j, o) in out.iter_mut().enumerate() {
                    let idx = if j == 0 {
                        b
                    } else {
                        _mm512_srl_epi32(b, _mm_cvtsi32_si128(j as i32 * B as i32))
                    };
                    *o = Avx512(_mm512_permutexvar_ps(idx, t));
                }
                out
            }
        }
        #[inline(always)]
        fn lookup_run<const B: u32>(bytes: &[u8], table: &[f32; 16]) -> Self {
            let (ctrl, shift) = &super::RUN_CONTROL[B as usize - 1];
            // SAFETY: AVX-512F/BW/VL are enabled in every caller; the plain load reads 16 bytes
            // of `bytes`, the masked one only its first `n < 16` (masked-off bytes never
            // fault); `ctrl` is 64 bytes and `shift` 16 u32; every 128-bit lane holds the same
            // run, so the in-lane byte shuffle can pick any of its bytes; the permute reads
            // index bits 0-3 only.
            unsafe {
                let run = if bytes.len() >= 16 {
                    _mm_loadu_si128(bytes.as_ptr().cast())
                } else {
                    let mask = ((1u32 << bytes.len()) - 1) as __mmask16;
                    _mm_maskz_loadu_epi8(mask, bytes.as_ptr().cast())
                };
                let y = _mm512_broadcast_i32x4(run);
                let picked = _mm512_shuffle_epi8(y, _mm512_loadu_si512(ctrl.as_ptr().cast()));
                let idx = _mm512_srlv_epi32(picked, _mm512_loadu_si512(shift.as_ptr().cast()));
                Avx512(_mm512_permutexvar_ps(idx, _mm512_loadu_ps(table.as_ptr())))
            }
        }
        #[inline(always)]
        fn load_words(packed: &[u8], row_bytes: usize, w0: usize, out: &mut [[u32; 16]]) {
            let m = (packed.len() / row_bytes.max(1)).min(16);
            let at = 4 * w0;
            let n = row_bytes.saturating_sub(at).min(64);
            let mask: __mmask64 = if n == 64 { !0 } else { (1u64 << n) - 1 };
            // SAFETY: AVX-512F/BW are enabled in every caller. Row `l < m` lies inside
            // `packed`; the plain load reads 64 bytes inside `packed` (checked), the masked
            // load its bytes `at .. at + n` (inside the row; masked bytes never fault, and with
            // n = 0 nothing is read); the other rows are zero; the transpose is register-only
            // and `out.len() ≤ 16` rows are stored.
            unsafe {
                let mut r = [_mm512_setzero_ps(); 16];
                if n > 0 {
                    for (l, reg) in r.iter_mut().enumerate().take(m) {
                        let p = packed.as_ptr().add(l * row_bytes + at);
                        // a plain load where 64 bytes lie inside `packed` (masked loads that
                        // miss the cache measured slow; bytes of the next row only reach bits
                        // above the row's codes, which the lookups ignore)
                        *reg = if l * row_bytes + at + 64 <= packed.len() {
                            _mm512_loadu_ps(p.cast())
                        } else {
                            _mm512_castsi512_ps(_mm512_maskz_loadu_epi8(mask, p.cast()))
                        };
                    }
                }
                let t = transpose16(r);
                for (o, reg) in out.iter_mut().zip(t.iter()).take(16) {
                    _mm512_storeu_ps(o.as_mut_ptr().cast(), *reg);
                }
            }
        }
        #[inline(always)]
        fn encode_small(y: Self, cells: &CellTable, centroids: &[f32; 16]) -> ([u8; 16], Self) {
            // The two lookups of `CellTable::encode` as 32-entry two-register permutes.
            // SAFETY: AVX-512F is enabled in every caller; the tables hold 16 or 32 entries
            // and the clamped cell index is in 0..32.
            unsafe {
                let u = _mm512_fmadd_ps(
                    y.0,
                    _mm512_set1_ps(cells.inv_width),
                    _mm512_set1_ps(cells.offset),
                );
                let u = _mm512_min_ps(
                    _mm512_max_ps(u, _mm512_setzero_ps()),
                    _mm512_set1_ps((CELLS - 1) as f32),
                );
                let g = _mm512_cvttps_epi32(u);
                let below = _mm512_permutex2var_epi32(
                    _mm512_loadu_si512(cells.below.as_ptr().cast()),
                    g,
                    _mm512_loadu_si512(cells.below.as_ptr().add(16).cast()),
                );
                let inside = _mm512_permutex2var_ps(
                    _mm512_loadu_ps(cells.inside.as_ptr()),
                    g,
                    _mm512_loadu_ps(cells.inside.as_ptr().add(16)),
                );
                let m = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(inside, y.0);
                let idx = _mm512_mask_add_epi32(below, m, below, _mm512_set1_epi32(1));
                let val = _mm512_permutexvar_ps(idx, _mm512_loadu_ps(centroids.as_ptr()));
                let mut code = [0u8; 16];
                _mm_storeu_si128(code.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(idx));
                (code, Avx512(val))
            }
        }
    }
}

/// Defines `pub fn $name(level, args…)` running `$body` with `R` bound to the best [`Row`].
macro_rules! lane_kernel {
    ($(#[$meta:meta])* pub fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        pub fn $name(level: SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<R: Row>($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) $(-> $ret)? { body::<x86::Avx2>($($arg),*) }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            fn avx512($($arg: $ty),*) $(-> $ret)? { body::<x86::Avx512>($($arg),*) }

            match level.supported() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `supported()` never returns a level above what the CPU reported.
                SimdLevel::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above, AVX2 and FMA were detected at run time.
                SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                _ => body::<Portable>($($arg),*),
            }
        }
    };
}

/// Hadamard stages done within cache-resident chunks: at least two radix-8 passes (64 rows)…
const MIN_CHUNK_STAGES: usize = 6;
/// … and at most 8 stages (256 rows, 16 KiB).
const MAX_CHUNK_STAGES: usize = 8;

/// Butterfly stages `h, 2h, …` (`S` of them) over every group of `2^S` rows `h` apart, held in
/// registers. `pre` multiplies rows as they are loaded (the sign flips before the transform),
/// `scale` and then `post` as they are stored (normalization, and the sign flips after an
/// inverse transform). Same per-element operations as one stage at a time, in the same
/// order, with `S`× fewer trips through memory.
#[inline(always)]
fn radix_pass<R: Row, const S: usize>(
    x: &mut [Lanes],
    from: Gather<'_>,
    h: usize,
    pre: &[f32],
    scale: Option<R>,
    post: &[f32],
) {
    let width = 1usize << S;
    for base in (0..x.len()).step_by(width * h) {
        for i in base..base + h {
            let mut r: [R; 8] = [R::splat(0.0); 8];
            for (k, slot) in r.iter_mut().enumerate().take(width) {
                *slot = match from {
                    Some((src, idx)) => R::load(&src[idx[i + k * h] as usize]),
                    None => R::load(&x[i + k * h]),
                };
                if !pre.is_empty() {
                    *slot = slot.mul(R::splat(pre[i + k * h]));
                }
            }
            for stage in 0..S {
                let span = 1usize << stage;
                for k in 0..width {
                    if k & span == 0 {
                        let (p, q) = (r[k], r[k + span]);
                        r[k] = p.add(q);
                        r[k + span] = p.sub(q);
                    }
                }
            }
            for (k, v) in r.iter().enumerate().take(width) {
                let mut v = match scale {
                    Some(s) => v.mul(s),
                    None => *v,
                };
                if !post.is_empty() {
                    v = v.mul(R::splat(post[i + k * h]));
                }
                v.store(&mut x[i + k * h]);
            }
        }
    }
}

/// Rows read by a transform's first pass instead of its own: row `i` is `src[idx[i]]`.
pub type Gather<'a> = Option<(&'a [Lanes], &'a [u32])>;

lane_kernel! {
    /// Unnormalized Walsh-Hadamard transform of each lane over `x.len()` (a power of two)
    /// coordinates, then `× scale`; with non-empty `pre` / `post` (one factor per row, for the
    /// rotation's ±1 signs) the rows are multiplied by them before / after the transform. With
    /// `from`, the input rows are gathered from another buffer (`x` is only written first).
    pub fn fwht_lanes(x: &mut [Lanes], from: Gather<'_>, scale: f32, pre: &[f32], post: &[f32]) {
        let n = x.len();
        let stages = n.trailing_zeros() as usize;
        let (mut h, mut done) = (1, 0);
        // The first stages run chunk by chunk, in chunks of 64 to 256 rows (4-16 KiB stay in
        // L1), so that at most one full pass over the rows is left where possible.
        if stages > MIN_CHUNK_STAGES {
            let cs = stages.saturating_sub(3).clamp(MIN_CHUNK_STAGES, MAX_CHUNK_STAGES);
            for (c, chunk) in x.chunks_exact_mut(1 << cs).enumerate() {
                let pre = if pre.is_empty() { pre } else { &pre[c << cs..(c + 1) << cs] };
                let from = from.map(|(src, idx)| (src, &idx[c << cs..(c + 1) << cs]));
                radix_pass::<R, 3>(chunk, from, 1, pre, None, &[]);
                radix_pass::<R, 3>(chunk, None, 8, &[], None, &[]);
                match cs - 6 {
                    2 => radix_pass::<R, 2>(chunk, None, 64, &[], None, &[]),
                    1 => radix_pass::<R, 1>(chunk, None, 64, &[], None, &[]),
                    _ => {}
                }
            }
            (h, done) = (1 << cs, cs);
        }
        if stages == 0 {
            radix_pass::<R, 0>(x, from, 1, pre, (scale != 1.0).then(|| R::splat(scale)), post);
        }
        while done < stages {
            let take = (stages - done).min(3);
            let last = done + take == stages;
            let s = if last && scale != 1.0 { Some(R::splat(scale)) } else { None };
            let (pre, from) = if done == 0 { (pre, from) } else { (&[][..], None) };
            let post = if last { post } else { &[][..] };
            match take {
                3 => radix_pass::<R, 3>(x, from, h, pre, s, post),
                2 => radix_pass::<R, 2>(x, from, h, pre, s, post),
                _ => radix_pass::<R, 1>(x, from, h, pre, s, post),
            }
            h <<= take;
            done += take;
        }
    }
}

lane_kernel! {
    /// Transposes up to `LANES` row-major vectors of `dim` into the coordinate-major block.
    pub fn load_rows(rows: &[f32], dim: usize, out: &mut [Lanes]) {
        R::load_rows(rows, dim, out)
    }
}

lane_kernel! {
    /// Writes the first `rows.len()/dim` lanes of a coordinate-major block out as rows.
    pub fn store_rows(block: &[Lanes], dim: usize, rows: &mut [f32]) {
        R::store_rows(block, dim, rows)
    }
}

lane_kernel! {
    /// `out[j][l] = scale[l] · table[codes[j][l]]` (decode into the rotated domain).
    pub fn decode_lanes(codes: &[[u8; LANES]], table: &[f32], scale: &Lanes, out: &mut [Lanes]) {
        let s = R::load(scale);
        if table.len() <= 16 {
            let mut padded = [0.0f32; 16];
            padded[..table.len()].copy_from_slice(table);
            for (o, c) in out.iter_mut().zip(codes) {
                s.mul(R::lookup16(c, &padded)).store(o);
            }
            return;
        }
        for (o, c) in out.iter_mut().zip(codes) {
            s.mul(R::lookup(c, table)).store(o);
        }
    }
}

lane_kernel! {
    /// `dst[i][l] = src[idx[i]][l] · f[i]` (a permutation gather with per-row factors).
    pub fn gather_lanes(src: &[Lanes], idx: &[u32], f: &[f32], dst: &mut [Lanes]) {
        for ((d, &i), &m) in dst.iter_mut().zip(idx).zip(f) {
            R::load(&src[i as usize]).mul(R::splat(m)).store(d);
        }
    }
}

lane_kernel! {
    /// `dst[idx[i]][l] = src[i][l] · f[i]` (the inverse of [`gather_lanes`]).
    pub fn scatter_lanes(src: &[Lanes], idx: &[u32], f: &[f32], dst: &mut [Lanes]) {
        for ((r, &i), &m) in src.iter().zip(idx).zip(f) {
            R::load(r).mul(R::splat(m)).store(&mut dst[i as usize]);
        }
    }
}

lane_kernel! {
    /// Per lane `Σ_j a[j][l]·b[j][l]`, summed as [`super::kernels::dot`] sums one vector
    /// (`LANES` partial sums by `j mod LANES`, then a fixed halving tree).
    pub fn dot_lanes(a: &[Lanes], b: &[Lanes]) -> Lanes {
        let mut acc = [R::splat(0.0); LANES];
        for (j, (ra, rb)) in a.iter().zip(b).enumerate() {
            let slot = &mut acc[j % LANES];
            *slot = slot.add(R::load(ra).mul(R::load(rb)));
        }
        tree_sum(acc)
    }
}

lane_kernel! {
    /// Codes of `x[j][l] · inv[l]` (the number of `boundaries` strictly below), the chosen
    /// centroid values (into `values`, unless it is empty), and per lane
    /// `(Σ x·value, Σ value²)` summed as [`dot_lanes`] sums.
    pub fn encode_lanes(x: &[Lanes], inv: &Lanes, boundaries: &[f32], centroids: &[f32], cells: Option<&CellTable>, codes: &mut [[u8; LANES]], values: &mut [Lanes]) -> (Lanes, Lanes) {
        let inv = R::load(inv);
        let mut dot = [R::splat(0.0); LANES];
        let mut sq = [R::splat(0.0); LANES];
        let k = centroids.len();
        let mut cent16 = [0.0f32; 16];
        if k <= 16 {
            cent16[..k].copy_from_slice(centroids);
        }
        let keep = !values.is_empty();
        for (j, (r, c)) in x.iter().zip(codes.iter_mut()).enumerate() {
            let xr = R::load(r);
            let y = xr.mul(inv);
            let (code, val) = match cells {
                Some(cells) if k <= 16 => R::encode_small(y, cells, &cent16),
                _ => binary_search(y, boundaries, centroids),
            };
            if keep {
                val.store(&mut values[j]);
            }
            *c = code;
            dot[j % LANES] = dot[j % LANES].add(xr.mul(val));
            sq[j % LANES] = sq[j % LANES].add(val.mul(val));
        }
        (tree_sum(dot), tree_sum(sq))
    }
}

/// Per-lane branchless binary search for codebooks of 32..256 entries.
#[inline(always)]
fn binary_search<R: Row>(y: R, boundaries: &[f32], centroids: &[f32]) -> ([u8; LANES], R) {
    let k = boundaries.len() + 1;
    let mut ys = [0.0f32; LANES];
    y.store(&mut ys);
    let (mut code, mut val) = ([0u8; LANES], [0.0f32; LANES]);
    for l in 0..LANES {
        let mut idx = 0usize;
        let mut step = k / 2;
        while step > 0 {
            if boundaries[idx + step - 1] < ys[l] {
                idx += step;
            }
            step /= 2;
        }
        code[l] = idx as u8;
        val[l] = centroids[idx];
    }
    (code, R::load(&val))
}

/// Sums `LANES` partial-sum rows in the fixed halving-tree order of the reductions.
#[inline(always)]
fn tree_sum<R: Row>(mut acc: [R; LANES]) -> Lanes {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] = acc[i].add(acc[i + width]);
        }
        width /= 2;
    }
    let mut out = [0.0; LANES];
    acc[0].store(&mut out);
    out
}

lane_kernel! {
    /// `out[j][l] = x[j][l] − s[l]·values[j][l]` (the rotated residual of the MSE stage).
    pub fn residual_lanes(x: &[Lanes], values: &[Lanes], s: &Lanes, out: &mut [Lanes]) {
        let s = R::load(s);
        for ((o, r), v) in out.iter_mut().zip(x).zip(values) {
            R::load(r).sub(s.mul(R::load(v))).store(o);
        }
    }
}

/// Query rows scored per pass of [`dot_rows_lanes`] (their sums stay in registers).
pub const DOT_ROWS: usize = 8;

/// Coordinate rows of a block as the score kernels read them (`col(j)` = coordinate `j` of the
/// block's `LANES` tokens); a trait, not a closure, so that the reads are always inlined into
/// the caller's target features.
trait Columns<R: Row>: Copy {
    /// Coordinates per run (a power of two): the kernels step through whole runs, so that
    /// `col(j)` sees `j mod RUN` as a constant (a packed word of codes read with fixed shifts).
    const RUN: usize = 2;
    /// Coordinate `j` of every token of the block.
    fn col(self, j: usize) -> R;
}

/// A decoded coordinate-major block.
#[derive(Clone, Copy)]
struct FloatColumns<'a>(&'a [Lanes]);

impl<R: Row> Columns<R> for FloatColumns<'_> {
    #[inline(always)]
    fn col(self, j: usize) -> R {
        R::load(&self.0[j])
    }
}

/// A block's packed `B`-bit codes held word-major (see [`load_words`]) and the codebook
/// repeated to 16 entries.
#[derive(Clone, Copy)]
struct WordColumns<'a, const B: u32> {
    words: &'a [[u32; LANES]],
    table: &'a [f32; 16],
}

impl<R: Row, const B: u32> Columns<R> for WordColumns<'_, B> {
    /// A word's codes where `B` divides 32.
    const RUN: usize = if 32 % B == 0 { 32 / B as usize } else { 2 };
    #[inline(always)]
    fn col(self, j: usize) -> R {
        let bit = j as u32 * B;
        let (w, shift) = ((bit / 32) as usize, bit % 32);
        if shift + B <= 32 {
            R::lookup_word(&self.words[w], shift, self.table)
        } else {
            R::lookup_word_pair(&self.words[w], &self.words[w + 1], shift, self.table)
        }
    }
}

/// `out[r] += post ⊙ Σ_j q[r][j] · col(j)` for `N` rows of `q` (row-major, `d` each): even and
/// odd coordinates summed apart (`2N` independent FMA chains) and added at the end.
#[inline(always)]
fn dot_rows_n<R: Row, C: Columns<R>, const N: usize>(
    d: usize,
    cols: C,
    q: &[f32],
    post: R,
    out: &mut [Lanes],
) {
    let qr: [&[f32]; N] = std::array::from_fn(|r| &q[r * d..(r + 1) * d]);
    let mut even = [R::splat(0.0); N];
    let mut odd = [R::splat(0.0); N];
    // (a macro, not a closure: a closure would be compiled outside the target features)
    macro_rules! pair {
        ($j:expr) => {{
            let j = $j;
            let (c0, c1) = (cols.col(j), cols.col(j + 1));
            for r in 0..N {
                even[r] = c0.mul_add(R::splat(qr[r][j]), even[r]);
                odd[r] = c1.mul_add(R::splat(qr[r][j + 1]), odd[r]);
            }
        }};
    }
    let mut j = 0;
    // whole runs of `C::RUN` coordinates first (the same pairs in the same order), so that
    // the position of each coordinate inside a run is a constant
    let run = C::RUN.max(2);
    while j + run <= d {
        for u in (0..run).step_by(2) {
            pair!(j + u);
        }
        j += run;
    }
    while j + 2 <= d {
        pair!(j);
        j += 2;
    }
    if j < d {
        let c = cols.col(j);
        for r in 0..N {
            even[r] = c.mul_add(R::splat(qr[r][j]), even[r]);
        }
    }
    for r in 0..N {
        R::load(&out[r])
            .add(even[r].add(odd[r]).mul(post))
            .store(&mut out[r]);
    }
}

/// Calls the row kernel `$f::<$g.., N>($a..)` with the const `N` equal to the row count `$n`
/// (none for 0, [`DOT_ROWS`] for more): the one dispatch from a runtime row count to the
/// kernels' unrolled row loops.
macro_rules! by_row_count {
    ($n:expr, $f:ident::<$($g:tt),*>($($a:expr),*)) => {
        match $n {
            0 => {}
            1 => $f::<$($g,)* 1>($($a),*),
            2 => $f::<$($g,)* 2>($($a),*),
            3 => $f::<$($g,)* 3>($($a),*),
            4 => $f::<$($g,)* 4>($($a),*),
            5 => $f::<$($g,)* 5>($($a),*),
            6 => $f::<$($g,)* 6>($($a),*),
            7 => $f::<$($g,)* 7>($($a),*),
            _ => $f::<$($g,)* DOT_ROWS>($($a),*),
        }
    };
}

/// [`dot_rows_n`] for `out.len() ≤ DOT_ROWS` rows.
#[inline(always)]
fn dot_rows_any<R: Row>(d: usize, cols: impl Columns<R>, q: &[f32], post: R, out: &mut [Lanes]) {
    by_row_count!(out.len(), dot_rows_n::<R, _>(d, cols, q, post, out));
}

lane_kernel! {
    /// Attention scores of one block (coordinate-major, `block[j][l]` = coordinate `j` of token
    /// `l`): `out[r] += Σ_j q[r][j] · block[j]` for the `out.len() ≤ DOT_ROWS` rows of `q`.
    pub fn dot_rows_lanes(block: &[Lanes], q: &[f32], out: &mut [Lanes]) {
        dot_rows_any::<R>(block.len(), FloatColumns(block), q, R::splat(1.0), out);
    }
}

/// [`dot_rows_any`] over a block of packed `B`-bit codes held as words (see
/// [`dot_words_lanes`]).
#[inline(always)]
fn dot_words<R: Row, const B: u32>(
    words: &[[u32; LANES]],
    table: &[f32; 16],
    scale: &Lanes,
    q: &[f32],
    out: &mut [Lanes],
) {
    let d = q.len() / out.len().max(1);
    let (period_words, period_codes) = word_period(B);
    if d.is_multiple_of(period_codes) && words.len() * period_codes >= d * period_words {
        // the common shape: whole periods of words, no tail
        let post = R::load(scale);
        by_row_count!(
            out.len(),
            dot_whole_words::<R, B>(words, table, d, q, post, out)
        );
        return;
    }
    let cols = WordColumns::<B> { words, table };
    dot_rows_any::<R>(d, cols, q, R::load(scale), out);
}

/// `(words, codes)` of one period of a row of packed `B`-bit codes (`B ≤ 4`): the fewest whole
/// 32-bit words that hold whole codes (one word of `32 / B` codes where `B` divides 32, else
/// `B` words of 32 codes).
const fn word_period(b: u32) -> (usize, usize) {
    let words = if 32 % b == 0 { 1 } else { b as usize };
    (words, 32 * words / b as usize)
}

/// [`dot_rows_n`] over [`WordColumns`] for `d` a multiple of the codes of a [`word_period`],
/// with none of the general path's per-call set-up: period by period, each code at a
/// constant word and shift (a code across two words read from both), the same pairs in the
/// same order (so the same sums).
#[inline(always)]
fn dot_whole_words<R: Row, const B: u32, const N: usize>(
    words: &[[u32; LANES]],
    table: &[f32; 16],
    d: usize,
    q: &[f32],
    post: R,
    out: &mut [Lanes],
) {
    let (period_words, period_codes) = word_period(B);
    assert!(
        q.len() >= N * d && out.len() >= N && words.len() * period_codes >= d * period_words,
        "dot_whole_words: shape"
    );
    let qp = q.as_ptr();
    let mut even = [R::splat(0.0); N];
    let mut odd = [R::splat(0.0); N];
    for (p, ws) in words
        .chunks_exact(period_words)
        .enumerate()
        .take(d / period_codes)
    {
        let j0 = p * period_codes;
        // code `u` of the period: bit `u·B`, inside one word or across two (a macro, not a
        // closure: a closure would be compiled outside the target features)
        macro_rules! code {
            ($u:expr) => {{
                let bit = ($u * B as usize) as u32;
                let (w, shift) = ((bit / 32) as usize, bit % 32);
                if shift + B <= 32 {
                    R::lookup_word(&ws[w], shift, table)
                } else {
                    R::lookup_word_pair(&ws[w], &ws[w + 1], shift, table)
                }
            }};
        }
        for u in (0..period_codes).step_by(2) {
            let (c0, c1) = (code!(u), code!(u + 1));
            for r in 0..N {
                // SAFETY: `r < N` and `j0 + u + 1 < d`, so both indices are below `N·d ≤
                // q.len()` (asserted above).
                let (q0, q1) = unsafe { (*qp.add(r * d + j0 + u), *qp.add(r * d + j0 + u + 1)) };
                even[r] = c0.mul_add(R::splat(q0), even[r]);
                odd[r] = c1.mul_add(R::splat(q1), odd[r]);
            }
        }
    }
    for r in 0..N {
        R::load(&out[r])
            .add(even[r].add(odd[r]).mul(post))
            .store(&mut out[r]);
    }
}

lane_kernel! {
    /// `out[k][l]` = little-endian 32-bit word `w0 + k` of packed row `l` (`m = packed.len() /
    /// row_bytes ≤ 16` rows; rows `m..` read as zero, bytes past a row as zero or the next row's; `out.len() ≤ 16`):
    /// a block's packed codes turned word-major for [`dot_words_lanes`].
    pub fn load_words(packed: &[u8], row_bytes: usize, w0: usize, out: &mut [[u32; LANES]]) {
        R::load_words(packed, row_bytes, w0, out)
    }
}

lane_kernel! {
    /// Attention scores straight from a block's packed codes of `bits ≤ 4` bits (`words[k][l]`
    /// = word `k` of token `l`'s packed row, from [`load_words`]; `table` the codebook repeated
    /// to 16 entries): `out[r] += scale ⊙ Σ_j q[r][j] · table[code_j]` for the `out.len() ≤
    /// DOT_ROWS` rows of `q` (the tokens' scales applied once, to the sums).
    pub fn dot_words_lanes(words: &[[u32; LANES]], bits: u32, table: &[f32; 16], scale: &Lanes, q: &[f32], out: &mut [Lanes]) {
        match bits {
            1 => dot_words::<R, 1>(words, table, scale, q, out),
            2 => dot_words::<R, 2>(words, table, scale, q, out),
            3 => dot_words::<R, 3>(words, table, scale, q, out),
            _ => dot_words::<R, 4>(words, table, scale, q, out),
        }
    }
}

/// Rows accumulated per pass of [`accumulate_rows_lanes`]: they share each load of a value row.
const ACC_ROWS: usize = 4;

/// A block's token-major value rows as the accumulation reads them, in the order of the sums'
/// slots: `group(l, c)` is the values of token `l` for slots `c .. c + 16` (`c` a multiple of
/// 16), `one(l, c)` for slot `c` (in the tail of `dim mod 16` slots, where slot = coordinate).
trait ValueRows<R: Row>: Copy {
    /// Tokens in the block.
    fn tokens(self) -> usize;
    /// Slots `c .. c + LANES` of token `l`.
    fn group(self, l: usize, c: usize) -> R;
    /// Slot `c` of token `l`.
    fn one(self, l: usize, c: usize) -> f32;
}

/// `LANES` decoded rows of `dim` floats.
#[derive(Clone, Copy)]
struct FloatRows<'a> {
    rows: &'a [f32],
    dim: usize,
}

impl<R: Row> ValueRows<R> for FloatRows<'_> {
    #[inline(always)]
    fn tokens(self) -> usize {
        LANES
    }
    #[inline(always)]
    fn group(self, l: usize, c: usize) -> R {
        let i = l * self.dim + c;
        R::load(self.rows[i..i + LANES].try_into().expect("16 values"))
    }
    #[inline(always)]
    fn one(self, l: usize, c: usize) -> f32 {
        self.rows[l * self.dim + c]
    }
}

/// Packed rows of `B`-bit codes (`B ≤ 4`, `row_bytes` each) and the codebook repeated to 16,
/// read in the slot order of [`packed_slot_coordinate`] (`shuffled` = its first slots).
#[derive(Clone, Copy)]
struct PackedRows<'a, const B: u32> {
    packed: &'a [u8],
    row_bytes: usize,
    /// `packed.len() / row_bytes` (divided once per block, not per tile).
    tokens: usize,
    table: &'a [f32; 16],
    shuffled: usize,
}

impl<'a, const B: u32> PackedRows<'a, B> {
    #[inline(always)]
    fn new(packed: &'a [u8], row_bytes: usize, dim: usize, table: &'a [f32; 16]) -> Self {
        PackedRows {
            packed,
            row_bytes,
            tokens: packed.len() / row_bytes.max(1),
            table,
            shuffled: shuffled_slots(B, dim),
        }
    }
}

impl<R: Row, const B: u32> ValueRows<R> for PackedRows<'_, B> {
    #[inline(always)]
    fn tokens(self) -> usize {
        self.tokens
    }
    #[inline(always)]
    fn group(self, l: usize, c: usize) -> R {
        let row = &self.packed[l * self.row_bytes..];
        if c < self.shuffled {
            // slot group c/16 = sub-code j of the 16 bytes of chunk c / (16·P)
            let p = 8 / B as usize;
            let (chunk, j) = (c / (16 * p), (c / 16) % p);
            let bytes: &[u8; 16] = row[16 * chunk..16 * chunk + 16].try_into().expect("16");
            return R::lookup_bytes(bytes, j as u32 * B, self.table);
        }
        // c is a multiple of 16, so the run starts on a byte (16·B bits per group)
        R::lookup_run::<B>(&row[c * B as usize / 8..], self.table)
    }
    #[inline(always)]
    fn one(self, l: usize, c: usize) -> f32 {
        let row = &self.packed[l * self.row_bytes..(l + 1) * self.row_bytes];
        self.table[run_code::<B>(row, c)]
    }
}

/// Slots of a packed part's value sums that are stored shuffled (see
/// [`packed_slot_coordinate`]): whole 16-byte chunks of `B ∈ {1, 2, 4}`-bit rows of `dim`
/// codes, none for other widths.
#[inline(always)]
fn shuffled_slots(bits: u32, dim: usize) -> usize {
    match bits {
        1 | 2 | 4 => {
            let per_chunk = 16 * 8 / bits as usize;
            dim / per_chunk * per_chunk
        }
        _ => 0,
    }
}

/// The coordinate that slot `s` of a packed part's value sums holds
/// ([`accumulate_packed_lanes`] of `bits` bits over rows of `dim` codes). With `P = 8 / bits`
/// codes per byte, each whole 16-byte chunk `c` of a row fills `P` groups of 16 slots: group
/// `j` holds code `j` of each byte, so slot `16·P·c + 16·j + k` is coordinate
/// `P·(16·c + k) + j` (one widening of the bytes serves `P` lookups). Slots past the whole
/// chunks, and every slot at 3 bits, hold their own coordinate.
pub fn packed_slot_coordinate(bits: u32, dim: usize, s: usize) -> usize {
    if s >= shuffled_slots(bits, dim) {
        return s;
    }
    let p = 8 / bits as usize;
    let (chunk, j, k) = (s / (16 * p), (s / 16) % p, s % 16);
    p * (16 * chunk + k) + j
}

/// The `N × K` sums of a tile: `a[r][k]` = `out[r·dim + c0 + 16k ..][..16]`.
#[inline(always)]
fn load_sums<R: Row, const N: usize, const K: usize>(
    out: &[f32],
    dim: usize,
    c0: usize,
) -> [[R; K]; N] {
    let mut a = [[R::splat(0.0); K]; N];
    for (r, ar) in a.iter_mut().enumerate() {
        for (k, v) in ar.iter_mut().enumerate() {
            let i = r * dim + c0 + k * LANES;
            *v = R::load(out[i..i + LANES].try_into().expect("16 values"));
        }
    }
    a
}

/// The inverse of [`load_sums`]: the tile's sums written back to `out`.
#[inline(always)]
fn store_sums<R: Row, const N: usize, const K: usize>(
    a: &[[R; K]; N],
    out: &mut [f32],
    dim: usize,
    c0: usize,
) {
    for (r, ar) in a.iter().enumerate() {
        for (k, v) in ar.iter().enumerate() {
            let i = r * dim + c0 + k * LANES;
            v.store((&mut out[i..i + LANES]).try_into().expect("16 values"));
        }
    }
}

/// `a[r][k] += w[r][l] · v[k]` (one fused multiply-add each): token `l`'s values `v` of a
/// tile weighed into the sums of the `N` rows.
#[inline(always)]
fn weigh_into<R: Row, const N: usize, const K: usize>(
    a: &mut [[R; K]; N],
    v: &[R; K],
    w: &[Lanes; N],
    l: usize,
) {
    for (ar, wr) in a.iter_mut().zip(w) {
        let wl = R::splat(wr[l]);
        for (ak, vk) in ar.iter_mut().zip(v) {
            *ak = vk.mul_add(wl, *ak);
        }
    }
}

/// `out[r·dim + c0 + 16k + i] += Σ_l w[r][l] · row_l[c0 + 16k + i]` for `N` rows and `K`
/// groups of 16 coordinates, the `N·K` sums in registers, summed in token order.
#[inline(always)]
fn accumulate_tile<R: Row, V: ValueRows<R>, const N: usize, const K: usize>(
    rows: V,
    dim: usize,
    c0: usize,
    w: &[Lanes; N],
    out: &mut [f32],
) {
    let mut a = load_sums::<R, N, K>(out, dim, c0);
    for l in 0..rows.tokens().min(LANES) {
        // a plain loop, not `array::from_fn`: its closure would be compiled outside this
        // function's target features, and the lookups with it
        let mut v = [R::splat(0.0); K];
        for (k, vk) in v.iter_mut().enumerate() {
            *vk = rows.group(l, c0 + k * LANES);
        }
        weigh_into(&mut a, &v, w, l);
    }
    store_sums(&a, out, dim, c0);
}

/// The weighted sums for `N` rows: 64-coordinate tiles, then a 32 and a 16-coordinate tile, the last
/// `dim mod 16` coordinates one by one (the same token order).
#[inline(always)]
fn accumulate_group<R: Row, V: ValueRows<R>, const N: usize>(
    rows: V,
    dim: usize,
    w: &[Lanes; N],
    out: &mut [f32],
) {
    let mut c0 = 0;
    while c0 + 4 * LANES <= dim {
        accumulate_tile::<R, V, N, 4>(rows, dim, c0, w, out);
        c0 += 4 * LANES;
    }
    if c0 + 2 * LANES <= dim {
        accumulate_tile::<R, V, N, 2>(rows, dim, c0, w, out);
        c0 += 2 * LANES;
    }
    if c0 + LANES <= dim {
        accumulate_tile::<R, V, N, 1>(rows, dim, c0, w, out);
        c0 += LANES;
    }
    for (r, wr) in w.iter().enumerate() {
        for k in c0..dim {
            let mut a = out[r * dim + k];
            for (l, &wl) in wr.iter().enumerate().take(rows.tokens()) {
                a = rows.one(l, k).mul_add(wl, a);
            }
            out[r * dim + k] = a;
        }
    }
}

/// `acc[r·dim + j] += Σ_l w[r][l] · row_l[j]` for the `w.len()` rows, four at a time.
#[inline(always)]
fn accumulate_any<R: Row, V: ValueRows<R>>(rows: V, dim: usize, w: &[Lanes], acc: &mut [f32]) {
    // (an index loop: zipping `chunks` with `chunks_mut` divides by the chunk length per call)
    let mut r0 = 0;
    while r0 < w.len() {
        let r1 = (r0 + ACC_ROWS).min(w.len());
        let (wg, out) = (&w[r0..r1], &mut acc[r0 * dim..r1 * dim]);
        match wg.len() {
            1 => accumulate_group::<R, V, 1>(rows, dim, wg.try_into().expect("1"), out),
            2 => accumulate_group::<R, V, 2>(rows, dim, wg.try_into().expect("2"), out),
            3 => accumulate_group::<R, V, 3>(rows, dim, wg.try_into().expect("3"), out),
            _ => accumulate_group::<R, V, 4>(rows, dim, wg.try_into().expect("4"), out),
        }
        r0 = r1;
    }
}

/// [`accumulate_packed_lanes`] for its common shape, with none of the general path's per-call
/// set-up: 16 tokens, `dim` a multiple of 64 and rows a multiple of 4, in 64-slot tiles. For
/// `B ∈ {2, 4}` (`P = 8 / B` codes per byte) every slot is shuffled and a tile is whole
/// 16-byte chunks, each widened once for its `P` codes; for `B = 3` (`P = 0`) slots are
/// coordinates and a tile is four runs of 16 codes. The same sums in the same order as
/// [`accumulate_group`].
#[inline(always)]
fn accumulate_whole_tiles<R: Row, const B: u32, const P: usize>(
    packed: &[u8],
    row_bytes: usize,
    dim: usize,
    table: &[f32; 16],
    w: &[Lanes],
    acc: &mut [f32],
) {
    const K: usize = 4;
    assert!(
        packed.len() >= LANES * row_bytes
            && dim.is_multiple_of(K * LANES)
            && dim * B as usize <= 8 * row_bytes
            && acc.len() == w.len() * dim
            && w.len().is_multiple_of(ACC_ROWS),
        "accumulate_whole_tiles: shape"
    );
    let src = packed.as_ptr();
    // (an index loop: `chunks_exact_mut(4·dim)` would divide by `dim` per call)
    for (g, wg) in w.chunks_exact(ACC_ROWS).enumerate() {
        let wg: &[Lanes; ACC_ROWS] = wg.try_into().expect("4 rows");
        let out = &mut acc[g * ACC_ROWS * dim..(g + 1) * ACC_ROWS * dim];
        for c0 in (0..dim).step_by(K * LANES) {
            let mut a = load_sums::<R, ACC_ROWS, K>(out, dim, c0);
            for l in 0..LANES {
                let mut v = [R::splat(0.0); K];
                if P == 0 {
                    // runs of 16 codes start on a byte: `c0` and `16k` are multiples of 8
                    let row = &packed[l * row_bytes..];
                    for (k, vk) in v.iter_mut().enumerate() {
                        *vk = R::lookup_run::<B>(&row[(c0 + k * LANES) * B as usize / 8..], table);
                    }
                } else {
                    let first = c0 / (16 * P);
                    for i in 0..K / P {
                        // SAFETY: chunk `first + i` ends at byte `16·(first + i + 1) ≤ dim·B/8 ≤
                        // row_bytes` of row `l < 16`, inside `packed` (checked above).
                        let bytes = unsafe {
                            &*src.add(l * row_bytes + 16 * (first + i)).cast::<[u8; 16]>()
                        };
                        let codes = R::lookup_chunk::<B, P>(bytes, table);
                        for (j, c) in codes.into_iter().enumerate() {
                            v[i * P + j] = c;
                        }
                    }
                }
                weigh_into(&mut a, &v, wg, l);
            }
            store_sums(&a, out, dim, c0);
        }
    }
}

lane_kernel! {
    /// Weighted value sums of one block: `acc[r·dim + j] += Σ_l w[r][l] · rows[l·dim + j]` for
    /// the `w.len()` rows, where `rows` holds the block's [`LANES`] decoded value rows
    /// (token-major, `dim = rows.len() / LANES`) and `acc` the rows' sums (`w.len() × dim`).
    pub fn accumulate_rows_lanes(rows: &[f32], w: &[Lanes], acc: &mut [f32]) {
        let dim = rows.len() / LANES;
        accumulate_any::<R, _>(FloatRows { rows, dim }, dim, w, acc);
    }
}

lane_kernel! {
    /// [`accumulate_rows_lanes`] straight from the block's packed value rows (`m = packed.len()
    /// / row_bytes ≤ 16` tokens of `dim` codes of `bits ≤ 4` bits; `table` the codebook
    /// repeated to 16 entries; `acc` holds `w.len() × dim` sums): `acc[r·dim + s] += Σ_l
    /// w[r][l] · table[code_lj]` for coordinate `j` = [`packed_slot_coordinate`]`(bits, dim, s)`
    /// (the tokens' scales belong in `w`). (`dim` is passed, not divided out: this runs once
    /// per block and row group, where a division is a measurable part of the call.)
    pub fn accumulate_packed_lanes(packed: &[u8], row_bytes: usize, dim: usize, bits: u32, table: &[f32; 16], w: &[Lanes], acc: &mut [f32]) {
        assert_eq!(acc.len(), w.len() * dim, "accumulate_packed_lanes: acc is not w.len() × dim");
        let common = packed.len() == LANES * row_bytes
            && dim.is_multiple_of(4 * LANES)
            && w.len().is_multiple_of(ACC_ROWS);
        match bits {
            4 if common => accumulate_whole_tiles::<R, 4, 2>(packed, row_bytes, dim, table, w, acc),
            3 if common => accumulate_whole_tiles::<R, 3, 0>(packed, row_bytes, dim, table, w, acc),
            2 if common => accumulate_whole_tiles::<R, 2, 4>(packed, row_bytes, dim, table, w, acc),
            1 => accumulate_any::<R, _>(PackedRows::<1>::new(packed, row_bytes, dim, table), dim, w, acc),
            2 => accumulate_any::<R, _>(PackedRows::<2>::new(packed, row_bytes, dim, table), dim, w, acc),
            3 => accumulate_any::<R, _>(PackedRows::<3>::new(packed, row_bytes, dim, table), dim, w, acc),
            _ => accumulate_any::<R, _>(PackedRows::<4>::new(packed, row_bytes, dim, table), dim, w, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_slots_are_a_permutation_of_the_coordinates() {
        for bits in 1..=4u32 {
            for dim in [8usize, 24, 64, 80, 128, 136, 256] {
                let mut seen = vec![false; dim];
                for s in 0..dim {
                    let c = packed_slot_coordinate(bits, dim, s);
                    assert!(c < dim && !seen[c], "bits {bits} dim {dim} slot {s} → {c}");
                    seen[c] = true;
                }
            }
        }
        // 4 bits: the low nibbles of a chunk's 16 bytes, then the high ones
        assert_eq!(packed_slot_coordinate(4, 128, 1), 2);
        assert_eq!(packed_slot_coordinate(4, 128, 16), 1);
        assert_eq!(packed_slot_coordinate(4, 128, 32), 32);
    }

    #[test]
    fn load_words_reads_each_row_at_every_level() {
        for row_bytes in [8usize, 30, 64, 100] {
            for m in [16usize, 3] {
                let packed: Vec<u8> = (0..m * row_bytes).map(|i| (i * 7 + 1) as u8).collect();
                for level in SimdLevel::available() {
                    let nw = row_bytes.div_ceil(4);
                    let mut out = vec![[0u32; LANES]; nw];
                    for w0 in (0..nw).step_by(LANES) {
                        let n = nw.min(w0 + LANES);
                        load_words(level, &packed, row_bytes, w0, &mut out[w0..n]);
                    }
                    for (k, o) in out.iter().enumerate() {
                        for (l, &v) in o.iter().enumerate() {
                            // bytes of the row must match; past its end anything may follow
                            for i in 0..4 {
                                let (at, got) = (4 * k + i, (v >> (8 * i)) as u8);
                                if l >= m {
                                    assert_eq!(v, 0, "row {l} past m");
                                } else if at < row_bytes {
                                    assert_eq!(got, packed[l * row_bytes + at], "{level:?}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn load_rows_transposes_at_every_level() {
        for dim in [16usize, 37, 64, 100] {
            for m in [16usize, 5] {
                let rows: Vec<f32> = (0..m * dim).map(|i| i as f32).collect();
                for level in SimdLevel::available() {
                    let mut out = vec![[f32::NAN; LANES]; dim];
                    load_rows(level, &rows, dim, &mut out);
                    for j in 0..dim {
                        for l in 0..LANES {
                            let want = if l < m { rows[l * dim + j] } else { 0.0 };
                            assert_eq!(out[j][l], want, "dim {dim} m {m} j {j} l {l} {level:?}");
                        }
                    }
                }
            }
        }
    }
}
