//! Fast-scan kernels: integer scores of one block of 32 vectors against a query.
//!
//! [`block_sums`] returns, for each of the 32 vectors of a block, an exact `i32`: for an int8
//! query ([`Layout::int8_query`]: 3 and 4 bits) `Σ_j q[j] · level[code_j]`, for the 1- and
//! 2-bit nibble layouts `Σ_g lut[g][code_g]` over `u8` lookup tables. The scalar reference is
//! [`portable_sums`]; the SIMD versions compute the same integers:
//!
//! - int8 query, 4-bit nibbles, AVX-512 VBMI + VNNI: per quad, two `vpermb` turn the 128
//!   nibbles into levels once for all queries of the pass (up to 8), then one `vpdpbusd` per 64
//!   codes and query multiplies them by the query's 4 coordinates (a broadcast dword) and adds
//!   into each vector's lane; AVX2 (decoding shared by up to 4 queries): `pshufb` levels,
//!   `pmaddubsw` (levels ≤ 127 keep it from saturating) + `pmaddwd`; AVX-512 BW without VBMI
//!   (Skylake-SP, Cascade Lake; [`Avx512Kernels::Bw`]): `vpshufb` levels, then `vpdpbusd` with
//!   VNNI, else `vpmaddubsw` + `vpmaddwd` (on those CPUs the other widths run the AVX2 kernels);
//! - lookup-table nibbles (1 and 2 bits), AVX-512 VBMI + VNNI: `vpermb` (`_mm512_permutexvar_epi8`) looks 128 nibbles up
//!   in four in-register 16-entry tables, `vpdpbusd` adds each vector's four entries into a
//!   `i32` lane (no intermediate `u16`); AVX2 (and AVX-512 without VBMI/VNNI): `pshufb`
//!   (`_mm256_shuffle_epi8`) per table with the other tables' bytes masked, then
//!   `pmaddubsw` + `pmaddwd`;
//! - int8 query, 3-bit pairs, AVX-512 VBMI + VNNI: the 64 6-bit codes of a step (16 vectors ×
//!   4 coordinate pairs) are cut out once (`vpermb` + `vpmultishiftqb`), two `vpermb` give the
//!   levels of each pair's first and second coordinate, then two `vpdpbusd` per query (the
//!   query's even and odd coordinates of the span as broadcast dwords); AVX2: `pshufb` + shifts
//!   cut out 32 codes per 24 bytes, `pshufb` on the 8 levels, `pmaddubsw` + `pmaddwd`.
//!
//! [`block_keys_multi`] is the scan's entry: the ranking keys and threshold masks of a run of
//! blocks for a pass of queries. The AVX-512 kernels walk the run in one call and compute the
//! keys from their accumulators in registers (no round trip of the sums through memory); the
//! others go block by block through [`block_sums_multi`] and [`keys_from_sums`], with the same
//! float operations.

use super::layout::{Layout, BLOCK, LEVEL_TABLE};
use super::score::{keys_from_sums, KeyQuery};
use crate::simd::{multiversion, SimdLevel};

multiversion! {
    /// Scalar reference: `out[v] = Σ_j q[j] · level[code_j]` for an int8 query, else
    /// `Σ_g lut[g][code(v, g)]`.
    pub fn portable_sums(layout: &Layout, block: &[u8], lut: &[u8], out: &mut [i32; BLOCK]) {
        *out = [0; BLOCK];
        match *layout {
            _ if layout.int8_query() => {
                let per = layout.coords_per_group();
                let (tables, query) = lut.split_at(layout.level_bytes());
                for g in 0..layout.groups() {
                    for (u, table) in tables.chunks_exact(LEVEL_TABLE).enumerate() {
                        let q = query[layout.query_slot(g * per + u)] as i8 as i32;
                        for (v, o) in out.iter_mut().enumerate() {
                            *o += table[layout.group_code(block, v, g)] as i32 * q;
                        }
                    }
                }
            }
            Layout::Nibble { groups, .. } => {
                for (codes, tables) in block.chunks_exact(64).zip(lut.chunks_exact(64)).take(groups / 4) {
                    for (p, &c) in codes.iter().enumerate() {
                        let t = &tables[16 * (p % 4)..16 * (p % 4) + 16];
                        out[p / 4] += t[(c & 15) as usize] as i32;
                        out[16 + p / 4] += t[(c >> 4) as usize] as i32;
                    }
                }
            }
            Layout::Pair { .. } | Layout::Rows { .. } => {}
        }
    }
}

/// `Σ_g lut[g][code(v, g)]` for the 32 vectors of `block`, at `level` (bit-exact at every level).
pub fn block_sums(
    level: SimdLevel,
    layout: &Layout,
    block: &[u8],
    lut: &[u8],
    out: &mut [i32; BLOCK],
) {
    block_sums_multi(level, layout, block, &[lut], std::slice::from_mut(out));
}

/// Largest number of queries [`block_sums_multi`] scores per pass over a block.
pub const MULTI: usize = 8;

/// Queries per pass that suit `layout`'s kernel: 8 for int8 queries (two accumulators per
/// query), 6 for lookup tables (each query also streams its tables through L1: 6 measured
/// 1.04-1.05× the QPS of 4 at 1-2 bits, 8 0.8-0.9×).
pub fn queries_per_pass(layout: &Layout) -> usize {
    if layout.int8_query() {
        MULTI
    } else {
        6
    }
}

/// [`block_sums`] for up to [`MULTI`] queries at once (`luts.len() == out.len()`): with the
/// AVX-512 VBMI kernels the block's codes are decoded once for all of them. Int8 queries of
/// one pass must share their level table (they do: it depends on the codebook only).
pub fn block_sums_multi(
    level: SimdLevel,
    layout: &Layout,
    block: &[u8],
    luts: &[&[u8]],
    out: &mut [[i32; BLOCK]],
) {
    assert!(
        luts.len() == out.len() && luts.len() <= MULTI,
        "one output row per table"
    );
    let per = queries_per_pass(layout);
    if luts.len() > per {
        for (l, o) in luts.chunks(per).zip(out.chunks_mut(per)) {
            block_sums_multi(level, layout, block, l, o);
        }
        return;
    }
    let block = &block[..layout.block_bytes()];
    #[cfg(target_arch = "x86_64")]
    if vbmi_kernels(level, layout, block, luts, Out::Sums(out)) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level.supported() >= SimdLevel::Avx2 && layout.int8_query() {
        let n = layout.lut_bytes();
        for (luts, out) in luts.chunks(AVX2_MULTI).zip(out.chunks_mut(AVX2_MULTI)) {
            // SAFETY: AVX2 was detected (`supported`); `block` and each table are sliced to
            // the layout's sizes and `out` has one row per table.
            unsafe {
                match layout {
                    Layout::Pair { .. } => {
                        by_count!(pair_int8_avx2, block, luts, n, layout, out, 1, 2, 3, 4)
                    }
                    _ => by_count!(int8_avx2, block, luts, n, layout, out, 1, 2, 3, 4),
                }
            }
        }
        return;
    }
    let n = layout.lut_bytes();
    for (lut, row) in luts.iter().zip(out.iter_mut()) {
        fallback_sums(level, layout, block, &lut[..n], row);
    }
}

/// The ranking keys of a run of blocks for a pass of queries: what [`block_keys_multi`] fills.
/// Rows are block-major: row `b · nq + q` is query `q`'s keys (or mask) for block `b`.
pub struct BlockKeys<'a> {
    /// Per query: the key parameters and threshold.
    pub queries: &'a [KeyQuery],
    /// The blocks' vector scales, [`BLOCK`] per block (the last block of a run of one may
    /// have fewer).
    pub scales: &'a [f32],
    /// The blocks' vector biases: empty (none) or as many as `scales`.
    pub biases: &'a [f32],
    /// Per block and query: the keys of the block's vectors.
    pub keys: &'a mut [[f32; BLOCK]],
    /// Per block and query: the mask of keys `≥` the query's threshold.
    pub masks: &'a mut [u32],
}

/// [`block_sums_multi`] followed by [`keys_from_sums`] for each query (bit-identical) over a
/// run of `keys.len() / luts.len()` consecutive blocks in `blocks` (at most
/// [`queries_per_pass`] queries). With an AVX-512 kernel the keys come from its accumulators
/// in registers and the kernel walks the whole run in one call; a run of several blocks must
/// hold full blocks only.
pub fn block_keys_multi(
    level: SimdLevel,
    layout: &Layout,
    blocks: &[u8],
    luts: &[&[u8]],
    mut out: BlockKeys<'_>,
) {
    let nq = luts.len();
    let nblocks = out.keys.len() / nq.max(1);
    assert!(
        nq >= 1
            && nq <= queries_per_pass(layout)
            && out.queries.len() == nq
            && out.keys.len() == nblocks * nq
            && out.masks.len() == nblocks * nq,
        "one key row per block and table"
    );
    let n = out.scales.len();
    let full = n == nblocks * BLOCK && (out.biases.is_empty() || out.biases.len() == n);
    assert!(
        full || (nblocks == 1 && n <= BLOCK && (out.biases.is_empty() || out.biases.len() == n)),
        "a run of several blocks holds full blocks"
    );
    let bb = layout.block_bytes();
    let blocks = &blocks[..nblocks * bb];
    #[cfg(target_arch = "x86_64")]
    if full && vbmi_kernels(level, layout, blocks, luts, Out::Keys(&mut out)) {
        return;
    }
    let mut sums = [[0i32; BLOCK]; MULTI];
    let sums = &mut sums[..nq];
    for b in 0..nblocks {
        block_sums_multi(level, layout, &blocks[b * bb..], luts, sums);
        let span = b * BLOCK..((b + 1) * BLOCK).min(n);
        let (scales, biases) = (
            &out.scales[span.clone()],
            out.biases.get(span).unwrap_or(&[]),
        );
        let rows = out.keys[b * nq..].iter_mut().zip(&mut out.masks[b * nq..]);
        for ((q, s), (keys, mask)) in out.queries.iter().zip(sums.iter()).zip(rows) {
            *mask = keys_from_sums(level, s, q.delta, q.base, scales, biases, q.threshold, keys);
        }
    }
}

/// Where an AVX-512 kernel puts each query's results.
#[cfg(target_arch = "x86_64")]
pub enum Out<'a, 'b> {
    /// The integer sums of one block, one row per query.
    Sums(&'a mut [[i32; BLOCK]]),
    /// The keys and threshold masks of a run of full blocks.
    Keys(&'a mut BlockKeys<'b>),
}

#[cfg(target_arch = "x86_64")]
impl Out<'_, '_> {
    /// Blocks the kernel walks for `q` queries.
    fn blocks(&self, q: usize) -> usize {
        match self {
            Out::Sums(_) => 1,
            Out::Keys(k) => k.keys.len() / q,
        }
    }
}

/// The first `Q` of `luts`, each cut to `n` bytes, as an array (a plain loop: the
/// `array::from_fn` closure was not inlined, 2 % of a small-block search).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tables<'a, const Q: usize>(luts: &[&'a [u8]], n: usize) -> [&'a [u8]; Q] {
    let mut out: [&[u8]; Q] = [&[]; Q];
    for (o, l) in out.iter_mut().zip(luts) {
        *o = &l[..n];
    }
    out
}

/// Calls `x86::$kernel::<Q>` (or `<Q, ACC>` where the list gives `Q => ACC`) for
/// `Q = $luts.len()`, with the tables as a `[&[u8]; Q]` of `$n` bytes each.
#[cfg(target_arch = "x86_64")]
macro_rules! by_count {
    ($kernel:ident, $block:expr, $luts:expr, $n:expr, $layout:expr, $out:expr,
     $($q:literal $(=> $acc:literal)?),*) => {
        match $luts.len() {
            $($q => x86::$kernel::<$q $(, $acc)?>(
                $block,
                tables::<$q>($luts, $n),
                $layout.groups(),
                $out,
            ),)*
            _ => unreachable!("at most {} queries per pass", MULTI),
        }
    };
}
#[cfg(target_arch = "x86_64")]
use by_count;

/// The AVX-512 kernels a CPU can run: with VBMI and VNNI, one per layout; with AVX-512 BW
/// only (Skylake-SP, Cascade Lake: no VBMI), the 4-bit int8 kernel, with or without VNNI.
/// Ordered: a later family needs more of the CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Avx512Kernels {
    /// `vpshufb` decoding; `vpdpbusd` when `vnni`, else `vpmaddubsw` + `vpmaddwd`.
    Bw {
        /// Whether AVX-512 VNNI is there.
        vnni: bool,
    },
    /// `vpermb` decoding and lookups, `vpdpbusd`.
    Vbmi,
}

#[cfg(target_arch = "x86_64")]
impl Avx512Kernels {
    /// This CPU's best family at `level` (`None` below AVX-512). `TURBOQUANT_AVX512=bw`,
    /// `bw-vnni` or `vbmi` caps it (to test and time the others on a CPU that has more).
    pub fn detect(level: SimdLevel) -> Option<Avx512Kernels> {
        static FAMILY: std::sync::OnceLock<Avx512Kernels> = std::sync::OnceLock::new();
        if level.supported() != SimdLevel::Avx512 {
            return None;
        }
        Some(*FAMILY.get_or_init(|| {
            let best = [
                Avx512Kernels::Vbmi,
                Avx512Kernels::Bw { vnni: true },
                Avx512Kernels::Bw { vnni: false },
            ]
            .into_iter()
            .find(|f| f.runs_here())
            .unwrap_or(Avx512Kernels::Bw { vnni: false });
            let cap = match std::env::var("TURBOQUANT_AVX512").ok().as_deref() {
                Some("bw") => Avx512Kernels::Bw { vnni: false },
                Some("bw-vnni") => Avx512Kernels::Bw { vnni: true },
                _ => Avx512Kernels::Vbmi,
            };
            best.min(cap)
        }))
    }

    /// Whether this CPU can run the family.
    pub fn runs_here(self) -> bool {
        let vnni = is_x86_feature_detected!("avx512vnni");
        crate::simd::hardware_level() == SimdLevel::Avx512
            && match self {
                Avx512Kernels::Bw { vnni: v } => vnni || !v,
                Avx512Kernels::Vbmi => vnni && is_x86_feature_detected!("avx512vbmi"),
            }
    }
}

/// Runs the AVX-512 kernel of `layout` for `luts` (at most [`queries_per_pass`]) when the
/// CPU has one; `false` when it does not (or the family has none for the layout), leaving
/// `out` untouched.
#[cfg(target_arch = "x86_64")]
fn vbmi_kernels(
    level: SimdLevel,
    layout: &Layout,
    block: &[u8],
    luts: &[&[u8]],
    out: Out<'_, '_>,
) -> bool {
    match Avx512Kernels::detect(level) {
        Some(family) => avx512_kernels(family, layout, block, luts, out),
        None => false,
    }
}

/// [`vbmi_kernels`] with the family given (`family.runs_here()` must hold).
#[cfg(target_arch = "x86_64")]
fn avx512_kernels(
    family: Avx512Kernels,
    layout: &Layout,
    block: &[u8],
    luts: &[&[u8]],
    out: Out<'_, '_>,
) -> bool {
    let n = layout.lut_bytes();
    /// The int8 kernels: few queries need several accumulators to hide the latency.
    macro_rules! by_count8 {
        ($kernel:ident) => {
            by_count!($kernel, block, luts, n, layout, out,
                1 => 4, 2 => 2, 3 => 1, 4 => 1, 5 => 1, 6 => 1, 7 => 1, 8 => 1)
        };
    }
    // SAFETY: the family's features were detected (`Avx512Kernels::detect` or `runs_here`);
    // `block` and each table are sliced to the layout's sizes, `out` has one row per table
    // and, for keys, the block is full.
    unsafe {
        match (family, *layout) {
            (Avx512Kernels::Vbmi, Layout::Nibble { bits: 4, .. }) => by_count8!(int8_vnni),
            (Avx512Kernels::Vbmi, Layout::Nibble { .. }) => {
                by_count!(nibble_vnni, block, luts, n, layout, out, 1 => 4, 2 => 2, 3 => 2, 4 => 1, 5 => 1, 6 => 1)
            }
            (Avx512Kernels::Vbmi, Layout::Pair { .. }) => by_count8!(pair_int8_vnni),
            (Avx512Kernels::Bw { vnni: true }, Layout::Nibble { bits: 4, .. }) => {
                by_count8!(int8_bw_vnni)
            }
            (Avx512Kernels::Bw { vnni: false }, Layout::Nibble { bits: 4, .. }) => {
                by_count8!(int8_bw)
            }
            _ => return false,
        }
    }
    true
}

/// Queries per pass of the AVX2 int8 kernels (their accumulators fill the 16 `ymm` registers).
#[cfg(target_arch = "x86_64")]
const AVX2_MULTI: usize = 4;

/// [`block_sums`] of one lookup-table query without AVX-512 VBMI: the AVX2 kernel or the
/// portable body (int8 queries without AVX2 also land here).
fn fallback_sums(
    level: SimdLevel,
    layout: &Layout,
    block: &[u8],
    lut: &[u8],
    out: &mut [i32; BLOCK],
) {
    #[cfg(target_arch = "x86_64")]
    if level.supported() >= SimdLevel::Avx2 {
        match *layout {
            // SAFETY: AVX2 was detected (`supported`); the slices hold `groups` groups.
            Layout::Nibble { groups, .. } if !layout.int8_query() => {
                return unsafe { x86::nibble_avx2(block, lut, groups, out) }
            }
            _ => {}
        }
    }
    portable_sums(level, layout, block, lut, out)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::score::x86::key_half;
    use super::{Out, BLOCK, LEVEL_TABLE};
    use std::arch::x86_64::*;

    /// The 4 query bytes at `at` of a table as one dword (the kernels broadcast it).
    ///
    /// # Safety
    /// `at + 4 ≤ lut.len()`.
    #[inline(always)]
    unsafe fn dword(lut: &[u8], at: usize) -> i32 {
        // SAFETY: `at + 4 ≤ lut.len()` (caller's contract).
        unsafe { lut.as_ptr().add(at).cast::<i32>().read_unaligned() }
    }

    /// Calls `step(i, a)` for every `i < n`, cycling `a` through `ACC` independent
    /// accumulators in runs of `ACC` (the tail uses slot 0).
    #[inline(always)]
    fn rotate<const ACC: usize>(n: usize, mut step: impl FnMut(usize, usize)) {
        let full = n / ACC * ACC;
        for i0 in (0..full).step_by(ACC) {
            for a in 0..ACC {
                step(i0 + a, a);
            }
        }
        for i in full..n {
            step(i, 0);
        }
    }

    /// Hands each query's results for block `b` of the run to `out`: vectors 0..16 sum
    /// `lo[q]`'s `ACC` accumulators, vectors 16..32 `hi[q]`'s; as rows of sums, or as keys
    /// and masks.
    ///
    /// Always inlined into its kernel (which enables AVX-512 F), so that the accumulators
    /// stay in registers.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F; for [`Out::Keys`] block `b` is full.
    #[inline(always)]
    unsafe fn finish<const Q: usize, const ACC: usize>(
        lo: &[[__m512i; ACC]; Q],
        hi: &[[__m512i; ACC]; Q],
        out: &mut Out<'_, '_>,
        b: usize,
    ) {
        let sum = |a: &[__m512i; ACC]| a[1..].iter().fold(a[0], |s, &v| _mm512_add_epi32(s, v));
        match out {
            Out::Sums(rows) => {
                for (q, row) in rows.iter_mut().enumerate().take(Q) {
                    // SAFETY: `row` is 32 `i32` = two 64-byte vectors.
                    unsafe {
                        _mm512_storeu_si512(row.as_mut_ptr().cast(), sum(&lo[q]));
                        _mm512_storeu_si512(row.as_mut_ptr().add(16).cast(), sum(&hi[q]));
                    }
                }
            }
            Out::Keys(k) => {
                let span = b * BLOCK..(b + 1) * BLOCK;
                let scales = &k.scales[span.clone()];
                let biases = if k.biases.is_empty() {
                    &[][..]
                } else {
                    &k.biases[span]
                };
                for q in 0..Q {
                    let (query, keys) = (&k.queries[q], &mut k.keys[b * Q + q]);
                    // SAFETY: block `b` is full: `scales` has `BLOCK` entries, `biases` none
                    // or `BLOCK`.
                    let (l, h) = unsafe {
                        (
                            key_half(sum(&lo[q]), query, scales, biases, 0, keys),
                            key_half(sum(&hi[q]), query, scales, biases, 1, keys),
                        )
                    };
                    k.masks[b * Q + q] = l as u32 | (h as u32) << 16;
                }
            }
        }
    }

    /// Runs `scan` on each block of the run `out` asks for (`bytes` per block, accumulators
    /// zeroed: `lo` for vectors 0..16, `hi` for 16..32) and hands them to [`finish`].
    ///
    /// # Safety
    /// Inlined into a kernel that enables AVX-512 F; `blocks` holds `out.blocks(Q)` blocks,
    /// full ones for [`Out::Keys`].
    #[inline(always)]
    unsafe fn for_each_block<const Q: usize, const ACC: usize>(
        blocks: &[u8],
        bytes: usize,
        mut out: Out<'_, '_>,
        mut scan: impl FnMut(&[u8], &mut [[__m512i; ACC]; Q], &mut [[__m512i; ACC]; Q]),
    ) {
        for b in 0..out.blocks(Q) {
            let mut lo = [[_mm512_setzero_si512(); ACC]; Q];
            let mut hi = lo;
            scan(&blocks[b * bytes..(b + 1) * bytes], &mut lo, &mut hi);
            // SAFETY: AVX-512 F is enabled by the kernel; block `b` is full for keys.
            unsafe { finish(&lo, &hi, &mut out, b) };
        }
    }

    /// AVX-512 VBMI + VNNI nibble kernel for `Q` queries at once (codes are decoded once per
    /// quad): one quad (4 groups × 32 vectors, 64 bytes) per step. `vpermb` looks each nibble up
    /// in the quad's four 16-entry tables (index `16 j + code` for byte `4 i + j`), `vpdpbusd`
    /// adds each vector's 4 entries into its `u32` lane. `ACC` independent accumulators per
    /// query hide the `vpdpbusd` latency.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI/VNNI; `block` and every `luts[q]` hold
    /// `16 · groups` bytes, `groups` is a multiple of 4 and `out` has `Q` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    pub unsafe fn nibble_vnni<const Q: usize, const ACC: usize>(
        blocks: &[u8],
        luts: [&[u8]; Q],
        groups: usize,
        out: Out<'_, '_>,
    ) {
        let mask = _mm512_set1_epi8(0x0F);
        let sel = _mm512_set1_epi32(0x3020_1000);
        let ones = _mm512_set1_epi8(1);
        let scan = |block: &[u8], lo: &mut [[__m512i; ACC]; Q], hi: &mut [[__m512i; ACC]; Q]| {
            let step = |c: usize, a: usize| {
                // SAFETY: `64 c + 64 ≤ 16 · groups` = the slice lengths (caller's contract).
                let x = unsafe { _mm512_loadu_si512(block.as_ptr().add(64 * c).cast()) };
                // (x & 0x0F) | sel, as one ternary-logic op (A & B) | C.
                let il = _mm512_ternarylogic_epi32::<0xEA>(x, mask, sel);
                let ih = _mm512_ternarylogic_epi32::<0xEA>(_mm512_srli_epi16::<4>(x), mask, sel);
                for q in 0..Q {
                    // SAFETY: as above, for each table.
                    let t = unsafe { _mm512_loadu_si512(luts[q].as_ptr().add(64 * c).cast()) };
                    lo[q][a] = _mm512_dpbusd_epi32(lo[q][a], _mm512_permutexvar_epi8(il, t), ones);
                    hi[q][a] = _mm512_dpbusd_epi32(hi[q][a], _mm512_permutexvar_epi8(ih, t), ones);
                }
            };
            rotate::<ACC>(groups / 4, step);
        };
        // SAFETY: AVX-512 F is enabled here; `blocks` holds `out.blocks(Q)` blocks and,
        // for keys, full ones (caller's contract).
        unsafe { for_each_block::<Q, ACC>(blocks, 16 * groups, out, scan) };
    }

    /// AVX2 nibble kernel: half a quad (8 vectors' bytes) per register; each of the quad's four
    /// tables is looked up with `pshufb` where bytes of other groups are masked to zero
    /// (index bit 7), the four results are ORed, and `pmaddubsw` + `pmaddwd` add each
    /// vector's 4 entries into its `u32` lane.
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` and `lut` hold `16 · groups` bytes, `groups` a
    /// multiple of 4.
    #[target_feature(enable = "avx2")]
    pub unsafe fn nibble_avx2(block: &[u8], lut: &[u8], groups: usize, out: &mut [i32; BLOCK]) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones8 = _mm256_set1_epi8(1);
        let ones16 = _mm256_set1_epi16(1);
        // Byte 4i + j keeps its index for table j; other bytes get bit 7 (pshufb → 0).
        let keep = [0, 1, 2, 3]
            .map(|j: u32| _mm256_set1_epi32((0x8080_8080u32 & !(0xFFu32 << (8 * j))) as i32));
        let z = _mm256_setzero_si256();
        let mut acc = [z; 4]; // vectors 0..8, 8..16 (low nibbles), 16..24, 24..32 (high)
        for c in 0..groups / 4 {
            let mut t = [z; 4];
            for (j, tj) in t.iter_mut().enumerate() {
                // SAFETY: `64 c + 16 j + 16 ≤ 16 · groups` (caller's contract).
                *tj = _mm256_broadcastsi128_si256(unsafe {
                    _mm_loadu_si128(lut.as_ptr().add(64 * c + 16 * j).cast())
                });
            }
            for h in 0..2 {
                // SAFETY: `64 c + 32 h + 32 ≤ 16 · groups` (caller's contract).
                let x = unsafe { _mm256_loadu_si256(block.as_ptr().add(64 * c + 32 * h).cast()) };
                let nibbles = [
                    _mm256_and_si256(x, mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask),
                ];
                for (n, idx) in nibbles.into_iter().enumerate() {
                    let mut r = _mm256_shuffle_epi8(t[0], _mm256_or_si256(idx, keep[0]));
                    for j in 1..4 {
                        r = _mm256_or_si256(
                            r,
                            _mm256_shuffle_epi8(t[j], _mm256_or_si256(idx, keep[j])),
                        );
                    }
                    let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(r, ones8), ones16);
                    acc[2 * n + h] = _mm256_add_epi32(acc[2 * n + h], sum);
                }
            }
        }
        for (i, a) in acc.into_iter().enumerate() {
            // SAFETY: `out` has 32 `i32`; chunk `i` is `out[8 i .. 8 i + 8]`.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(8 * i).cast(), a) };
        }
    }

    /// AVX-512 VBMI + VNNI int8-query kernel for `Q` queries at once: per quad (4 coordinates
    /// × 32 vectors, 64 bytes) two `vpermb` map the low and high nibbles to their levels (the
    /// 64-byte level table repeats the 16 levels, so index bits 4 and 5 do not matter and the
    /// high nibbles need only a shift), then per query one `vpdpbusd` per half multiplies each
    /// vector's 4 levels by the query's 4 `i8` (a broadcast dword) and adds them into the
    /// vector's `i32` lane. `ACC` independent accumulators per query hide the latency when
    /// few queries share a pass.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI/VNNI; `block` holds `16 · groups` bytes, every
    /// `luts[q]` `LEVEL_TABLE + groups`, `groups` is a multiple of 4 and `out` has `Q` rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    pub unsafe fn int8_vnni<const Q: usize, const ACC: usize>(
        blocks: &[u8],
        luts: [&[u8]; Q],
        groups: usize,
        out: Out<'_, '_>,
    ) {
        // SAFETY: every table opens with its `LEVEL_TABLE` = 64 level bytes; all queries
        // share the same levels (one codebook).
        let levels = unsafe { _mm512_loadu_si512(luts[0].as_ptr().cast()) };
        let scan = |block: &[u8], lo: &mut [[__m512i; ACC]; Q], hi: &mut [[__m512i; ACC]; Q]| {
            let step = |c: usize, a: usize| {
                // SAFETY: `64 c + 64 ≤ 16 · groups` = the block's length (caller's contract).
                let x = unsafe { _mm512_loadu_si512(block.as_ptr().add(64 * c).cast()) };
                let vl = _mm512_permutexvar_epi8(x, levels);
                let vh = _mm512_permutexvar_epi8(_mm512_srli_epi16::<4>(x), levels);
                for q in 0..Q {
                    // SAFETY: `LEVEL_TABLE + 4 c + 4 ≤ LEVEL_TABLE + groups` (caller's contract).
                    let w = _mm512_set1_epi32(unsafe { dword(luts[q], LEVEL_TABLE + 4 * c) });
                    lo[q][a] = _mm512_dpbusd_epi32(lo[q][a], vl, w);
                    hi[q][a] = _mm512_dpbusd_epi32(hi[q][a], vh, w);
                }
            };
            rotate::<ACC>(groups / 4, step);
        };
        // SAFETY: AVX-512 F is enabled here; `blocks` holds `out.blocks(Q)` blocks and,
        // for keys, full ones (caller's contract).
        unsafe { for_each_block::<Q, ACC>(blocks, 16 * groups, out, scan) };
    }

    /// Defines an AVX-512 BW int8-query kernel (no VBMI) for `Q` queries at once: per quad,
    /// `vpshufb` maps the low and high nibbles to their levels (one 16-level table in every
    /// 128-bit lane) once for all queries, then per half and query `vpdpbusd` (`$vnni`) or
    /// `vpmaddubsw` (levels ≤ 127, so a pair of products cannot saturate the `i16`) +
    /// `vpmaddwd` + `vpaddd`. One body for both, expanded inside each `target_feature`
    /// function so that its closures get the features too.
    macro_rules! int8_bw_kernel {
        ($(#[$doc:meta])* $name:ident, $features:literal, $vnni:literal) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const Q: usize, const ACC: usize>(
                blocks: &[u8],
                luts: [&[u8]; Q],
                groups: usize,
                out: Out<'_, '_>,
            ) {
                let mask = _mm512_set1_epi8(0x0F);
                let ones16 = _mm512_set1_epi16(1);
                // SAFETY: every table opens with its level bytes; the first 16 are the
                // levels, shared by all queries (one codebook).
                let levels =
                    _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(luts[0].as_ptr().cast()) });
                let mac = |acc: __m512i, v: __m512i, w: __m512i| {
                    if $vnni {
                        _mm512_dpbusd_epi32(acc, v, w)
                    } else {
                        let pairs = _mm512_maddubs_epi16(v, w);
                        _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, ones16))
                    }
                };
                let scan = |block: &[u8], lo: &mut [[__m512i; ACC]; Q], hi: &mut [[__m512i; ACC]; Q]| {
                let step = |c: usize, a: usize| {
                    // SAFETY: `64 c + 64 ≤ 16 · groups` = the block's length (caller's
                    // contract).
                    let x = unsafe { _mm512_loadu_si512(block.as_ptr().add(64 * c).cast()) };
                    let high = _mm512_srli_epi16::<4>(x);
                    let vl = _mm512_shuffle_epi8(levels, _mm512_and_si512(x, mask));
                    let vh = _mm512_shuffle_epi8(levels, _mm512_and_si512(high, mask));
                    for q in 0..Q {
                        // SAFETY: `LEVEL_TABLE + 4 c + 4 ≤ LEVEL_TABLE + groups` (caller's
                        // contract).
                        let w = _mm512_set1_epi32(unsafe { dword(luts[q], LEVEL_TABLE + 4 * c) });
                        lo[q][a] = mac(lo[q][a], vl, w);
                        hi[q][a] = mac(hi[q][a], vh, w);
                    }
                };
                rotate::<ACC>(groups / 4, step);
        };
        // SAFETY: AVX-512 F is enabled here; `blocks` holds `out.blocks(Q)` blocks and,
        // for keys, full ones (caller's contract).
        unsafe { for_each_block::<Q, ACC>(blocks, 16 * groups, out, scan) };
            }
        };
    }

    int8_bw_kernel!(
        /// The AVX-512 BW + VNNI int8 kernel (Cascade Lake: no VBMI).
        ///
        /// # Safety
        /// The CPU must support AVX-512 F/BW/VNNI; the rest as [`int8_vnni`].
        int8_bw_vnni,
        "avx512f,avx512bw,avx512vnni",
        true
    );
    int8_bw_kernel!(
        /// The AVX-512 BW int8 kernel without VNNI (Skylake-SP).
        ///
        /// # Safety
        /// The CPU must support AVX-512 F/BW; the rest as [`int8_vnni`].
        int8_bw,
        "avx512f,avx512bw",
        false
    );

    /// AVX2 int8-query kernel for `Q ≤ 4` queries at once: half a quad (8 vectors' bytes) per
    /// register; `pshufb` maps nibbles to levels once for all queries, `pmaddubsw` multiplies them by each query's `i8` (levels ≤ 127, so a
    /// pair of products cannot saturate the `i16`) and `pmaddwd` adds each vector's 4.
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` holds `16 · groups` bytes, every `luts[q]`
    /// `LEVEL_TABLE + groups`, `groups` a multiple of 4, and `out` has `Q` rows.
    #[target_feature(enable = "avx2")]
    pub unsafe fn int8_avx2<const Q: usize>(
        block: &[u8],
        luts: [&[u8]; Q],
        groups: usize,
        out: &mut [[i32; BLOCK]],
    ) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones16 = _mm256_set1_epi16(1);
        // SAFETY: every table opens with 64 level bytes (shared by all queries); the first 16
        // are the levels.
        let levels =
            _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(luts[0].as_ptr().cast()) });
        // per query: vectors 0..8, 8..16 (low nibbles), 16..24, 24..32 (high)
        let mut acc = [[_mm256_setzero_si256(); 4]; Q];
        for c in 0..groups / 4 {
            for h in 0..2 {
                // SAFETY: `64 c + 32 h + 32 ≤ 16 · groups` (caller's contract).
                let x = unsafe { _mm256_loadu_si256(block.as_ptr().add(64 * c + 32 * h).cast()) };
                let vl = _mm256_shuffle_epi8(levels, _mm256_and_si256(x, mask));
                let vh =
                    _mm256_shuffle_epi8(levels, _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask));
                for q in 0..Q {
                    // SAFETY: `LEVEL_TABLE + 4 c + 4 ≤ luts[q].len()` (caller's contract).
                    let w = _mm256_set1_epi32(unsafe { dword(luts[q], LEVEL_TABLE + 4 * c) });
                    let sl = _mm256_madd_epi16(_mm256_maddubs_epi16(vl, w), ones16);
                    let sh = _mm256_madd_epi16(_mm256_maddubs_epi16(vh, w), ones16);
                    acc[q][h] = _mm256_add_epi32(acc[q][h], sl);
                    acc[q][2 + h] = _mm256_add_epi32(acc[q][2 + h], sh);
                }
            }
        }
        for (row, acc) in out.iter_mut().zip(&acc) {
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: `row` has 32 `i32`; chunk `i` is `row[8 i .. 8 i + 8]`.
                unsafe { _mm256_storeu_si256(row.as_mut_ptr().add(8 * i).cast(), *a) };
            }
        }
    }

    /// AVX-512 VBMI + VNNI int8-query pair (3-bit) kernel for `Q` queries at once: per step (48
    /// bytes, 16 vectors × 4 coordinate pairs) the 64 6-bit codes are cut out of their bit
    /// stream (`vpermb` gathers each qword's 6 source bytes, `vpmultishiftqb` aligns its 8
    /// codes), two `vpermb` map them to the levels of the pair's first and second coordinate
    /// (64-entry tables, so bits 6 and 7 do not matter), and per query two `vpdpbusd` add
    /// `level · q` for the span's even and odd coordinates into each vector's lane.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VBMI/VNNI; `block` holds `24 · groups` bytes, every
    /// `luts[q]` `2 · LEVEL_TABLE + 2 · groups`, `groups` is a multiple of 4 and `out` has `Q`
    /// rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
    pub unsafe fn pair_int8_vnni<const Q: usize, const ACC: usize>(
        blocks: &[u8],
        luts: [&[u8]; Q],
        groups: usize,
        out: Out<'_, '_>,
    ) {
        // Byte r of qword q gathers source byte 6q + r: qword q then starts at stream bit 48q,
        // where positions 8q..8q+8 begin, and position 8q + r sits at bit 6r of it.
        let mut perm = [0u8; 64];
        for (i, p) in perm.iter_mut().enumerate() {
            *p = (6 * (i / 8) + i % 8) as u8;
        }
        // SAFETY: `perm` is 64 readable bytes; every table opens with the two 64-byte level
        // tables, shared by all queries (one codebook).
        let (perm, first, second) = unsafe {
            (
                _mm512_loadu_si512(perm.as_ptr().cast()),
                _mm512_loadu_si512(luts[0].as_ptr().cast()),
                _mm512_loadu_si512(luts[0].as_ptr().add(LEVEL_TABLE).cast()),
            )
        };
        let shifts = _mm512_set1_epi64(0x2A24_1E18_120C_0600);
        let scan = |block: &[u8], lo: &mut [[__m512i; ACC]; Q], hi: &mut [[__m512i; ACC]; Q]| {
            let step = |t: usize, a: usize| {
                for (h, acc) in [&mut *lo, &mut *hi].into_iter().enumerate() {
                    // SAFETY: the masked load reads bytes `96 t + 48 h .. + 48` only (masked-out
                    // bytes are not accessed), inside the block's `24 · groups` bytes.
                    let x = unsafe {
                        _mm512_maskz_loadu_epi8(
                            0xFFFF_FFFF_FFFF,
                            block.as_ptr().add(96 * t + 48 * h).cast(),
                        )
                    };
                    let codes =
                        _mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(perm, x));
                    let va = _mm512_permutexvar_epi8(codes, first);
                    let vb = _mm512_permutexvar_epi8(codes, second);
                    for q in 0..Q {
                        let at = 2 * LEVEL_TABLE + 8 * t;
                        // SAFETY: bytes `at .. at + 8` of each table are in bounds (caller's contract).
                        let (wa, wb) = unsafe { (dword(luts[q], at), dword(luts[q], at + 4)) };
                        let (wa, wb) = (_mm512_set1_epi32(wa), _mm512_set1_epi32(wb));
                        let s = _mm512_dpbusd_epi32(acc[q][a], va, wa);
                        acc[q][a] = _mm512_dpbusd_epi32(s, vb, wb);
                    }
                }
            };
            rotate::<ACC>(groups / 4, step);
        };
        // SAFETY: AVX-512 F is enabled here; `blocks` holds `out.blocks(Q)` blocks and,
        // for keys, full ones (caller's contract).
        unsafe { for_each_block::<Q, ACC>(blocks, 24 * groups, out, scan) };
    }

    /// AVX2 int8-query pair (3-bit) kernel for `Q ≤ 4` queries at once: per 24 bytes (8
    /// vectors × 4 pairs) `pshufb` and shifts cut the 32 6-bit codes out and `pshufb` on the 8
    /// levels maps each code's first and second coordinate, once for all queries; then per
    /// query `pmaddubsw` (levels ≤ 127: no saturation) + `pmaddwd` add `level · q` into each
    /// vector's lane. One 8-vector part of the block after the other.
    ///
    /// # Safety
    /// The CPU must support AVX2; `block` holds `24 · groups` bytes, every `luts[q]`
    /// `2 · LEVEL_TABLE + 2 · groups`, `groups` a multiple of 4, and `out` has `Q` rows.
    #[target_feature(enable = "avx2")]
    pub unsafe fn pair_int8_avx2<const Q: usize>(
        block: &[u8],
        luts: [&[u8]; Q],
        groups: usize,
        out: &mut [[i32; BLOCK]],
    ) {
        // Dword i of lane 0 takes bytes 3i..3i+3 of the 24 bytes; lane 1 is loaded from byte 8
        // and takes bytes 4 + 3i.. (bytes 12 + 3i of the 24).
        let gather = _mm256_setr_epi8(
            0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, //
            4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1,
        );
        let (m12, m6) = (
            _mm256_set1_epi32(0x0000_0FFF),
            _mm256_set1_epi32(0x003F_003F),
        );
        let (m12h, m6h) = (
            _mm256_set1_epi32(0x00FF_F000),
            _mm256_set1_epi32(0x0FC0_0FC0),
        );
        let seven = _mm256_set1_epi8(7);
        let ones16 = _mm256_set1_epi16(1);
        // SAFETY: every table opens with the first-coordinate levels, `level[i mod 8]`,
        // shared by all queries.
        let levels =
            _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(luts[0].as_ptr().cast()) });
        for part in 0..4 {
            let mut acc = [_mm256_setzero_si256(); Q]; // vectors 8 part .. 8 part + 8
            for t in 0..groups / 4 {
                // SAFETY: bytes `96 t + 24 part .. + 24` are in the block; both 16-byte loads
                // (from `+ 0` and `+ 8`) stay inside them.
                let x = unsafe {
                    let p = block.as_ptr().add(96 * t + 24 * part);
                    _mm256_loadu2_m128i(p.add(8).cast(), p.cast())
                };
                // Each dword holds 4 codes at bits 0, 6, 12, 18: spread them to its 4 bytes.
                let d = _mm256_shuffle_epi8(x, gather);
                let d = _mm256_or_si256(
                    _mm256_and_si256(d, m12),
                    _mm256_slli_epi32::<4>(_mm256_and_si256(d, m12h)),
                );
                let c = _mm256_or_si256(
                    _mm256_and_si256(d, m6),
                    _mm256_slli_epi32::<2>(_mm256_and_si256(d, m6h)),
                );
                let la = _mm256_shuffle_epi8(levels, _mm256_and_si256(c, seven));
                let lb =
                    _mm256_shuffle_epi8(levels, _mm256_and_si256(_mm256_srli_epi16::<3>(c), seven));
                for q in 0..Q {
                    let at = 2 * LEVEL_TABLE + 8 * t;
                    // SAFETY: bytes `at .. at + 8` of each table are in bounds (caller's contract).
                    let (wa, wb) = unsafe { (dword(luts[q], at), dword(luts[q], at + 4)) };
                    let (wa, wb) = (_mm256_set1_epi32(wa), _mm256_set1_epi32(wb));
                    let sa = _mm256_madd_epi16(_mm256_maddubs_epi16(la, wa), ones16);
                    let sb = _mm256_madd_epi16(_mm256_maddubs_epi16(lb, wb), ones16);
                    acc[q] = _mm256_add_epi32(acc[q], _mm256_add_epi32(sa, sb));
                }
            }
            for (row, a) in out.iter_mut().zip(acc) {
                // SAFETY: `row` has 32 `i32`; `8 part + 8 ≤ 32`.
                unsafe { _mm256_storeu_si256(row.as_mut_ptr().add(8 * part).cast(), a) };
            }
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
            (9, 2),
            (1030, 2),
            (37, 1),
            (384, 3),
            (70, 3),
            (4200, 4),
            (2100, 3),
            (8, 4),
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
            let mut lut: Vec<u8> = (0..layout.lut_bytes())
                .map(|_| next() as u8 | 0xF0)
                .collect();
            let mut other: Vec<u8> = lut.iter().map(|&v| v.wrapping_mul(7)).collect();
            if layout.int8_query() {
                // levels 0..=127 shared by all queries, then any i8 query (extremes included)
                let levels: Vec<u8> = (0..16).map(|_| next() as u8 & 0x7F).collect();
                let table = layout.level_table(&levels);
                let n = table.len();
                for t in [&mut lut, &mut other] {
                    t[..n].copy_from_slice(&table);
                    t[n] = 0x80; // -128 never occurs in a query but must not overflow
                    t[n + 1] = 0x7F;
                }
                for v in &mut other[n..] {
                    *v = next() as u8;
                }
            }
            let mut want = [0i32; BLOCK];
            portable_sums(SimdLevel::Scalar, &layout, &block, &lut, &mut want);
            let mut want_other = [0i32; BLOCK];
            portable_sums(SimdLevel::Scalar, &layout, &block, &other, &mut want_other);
            for level in SimdLevel::available() {
                let mut got = [0i32; BLOCK];
                block_sums(level, &layout, &block, &lut, &mut got);
                assert_eq!(got, want, "{level:?} dim {dim} bits {bits}");
                for q in 1..=MULTI {
                    let luts: Vec<&[u8]> = (0..q)
                        .map(|i| if i % 2 == 0 { &lut[..] } else { &other[..] })
                        .collect();
                    let mut rows = vec![[0i32; BLOCK]; q];
                    block_sums_multi(level, &layout, &block, &luts, &mut rows);
                    for (i, row) in rows.iter().enumerate() {
                        assert_eq!(
                            *row,
                            if i % 2 == 0 { want } else { want_other },
                            "{level:?} multi {q}"
                        );
                    }
                    if q <= queries_per_pass(&layout) {
                        keys_match_the_scalar_reference(level, &layout, &block, &luts, &rows);
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            every_avx512_family_matches(&layout, &block, [&lut, &other], [want, want_other]);
        }
    }

    /// Each AVX-512 kernel family this CPU can run (not only the one dispatch picks) gives the
    /// reference sums and keys, for 1 to [`queries_per_pass`] queries.
    #[cfg(target_arch = "x86_64")]
    fn every_avx512_family_matches(
        layout: &Layout,
        block: &[u8],
        tables: [&[u8]; 2],
        want: [[i32; BLOCK]; 2],
    ) {
        let families = [
            Avx512Kernels::Bw { vnni: false },
            Avx512Kernels::Bw { vnni: true },
            Avx512Kernels::Vbmi,
        ];
        let block = &block[..layout.block_bytes()];
        for family in families.into_iter().filter(|f| f.runs_here()) {
            for q in 1..=queries_per_pass(layout) {
                let luts: Vec<&[u8]> = (0..q).map(|i| tables[i % 2]).collect();
                let mut rows = vec![[0i32; BLOCK]; q];
                if !avx512_kernels(family, layout, block, &luts, Out::Sums(&mut rows)) {
                    break; // no kernel of this family for the layout
                }
                for (i, row) in rows.iter().enumerate() {
                    assert_eq!(*row, want[i % 2], "{family:?} {q} queries, {layout:?}");
                }
                let queries: Vec<KeyQuery> = (0..q)
                    .map(|i| KeyQuery {
                        delta: 0.01 * (i + 1) as f32,
                        base: 3.5,
                        threshold: 1.0,
                    })
                    .collect();
                let scales: Vec<f32> = (0..BLOCK).map(|v| 1.0 + v as f32 / 9.0).collect();
                let (mut keys, mut masks) = (vec![[0.0f32; BLOCK]; q], vec![0u32; q]);
                let mut out = BlockKeys {
                    queries: &queries,
                    scales: &scales,
                    biases: &[],
                    keys: &mut keys,
                    masks: &mut masks,
                };
                assert!(avx512_kernels(
                    family,
                    layout,
                    block,
                    &luts,
                    Out::Keys(&mut out)
                ));
                for (i, k) in queries.iter().enumerate() {
                    let mut want_keys = [0.0f32; BLOCK];
                    let (d, b, t) = (k.delta, k.base, k.threshold);
                    let s = &scales[..];
                    let m = keys_from_sums(
                        SimdLevel::Scalar,
                        &rows[i],
                        d,
                        b,
                        s,
                        &[],
                        t,
                        &mut want_keys,
                    );
                    assert_eq!(masks[i], m, "{family:?} query {i}");
                    assert_eq!(keys[i].map(f32::to_bits), want_keys.map(f32::to_bits));
                }
            }
        }
    }

    #[test]
    fn a_run_of_blocks_equals_its_blocks_one_by_one() {
        for (dim, bits) in [(384usize, 4u8), (100, 2), (37, 1), (70, 3), (128, 2)] {
            let layout = Layout::new(dim, bits);
            let (nb, bb) = (5, layout.block_bytes());
            let blocks: Vec<u8> = (0..nb * bb).map(|i| (i * 131 + i / 7) as u8).collect();
            let mut lut: Vec<u8> = (0..layout.lut_bytes())
                .map(|i| (i * 17 % 251) as u8)
                .collect();
            if layout.int8_query() {
                let levels: Vec<u8> = (0..16).map(|i| (i * 8) as u8).collect();
                let table = layout.level_table(&levels);
                lut[..table.len()].copy_from_slice(&table);
            }
            let scales: Vec<f32> = (0..nb * BLOCK)
                .map(|v| 0.75 + (v % 13) as f32 / 10.0)
                .collect();
            let biases: Vec<f32> = (0..nb * BLOCK).map(|v| (v % 7) as f32 - 3.0).collect();
            for level in SimdLevel::available() {
                for q in 1..=queries_per_pass(&layout) {
                    let luts = vec![&lut[..]; q];
                    let queries: Vec<KeyQuery> = (0..q)
                        .map(|i| KeyQuery {
                            delta: 0.5 / (i + 1) as f32,
                            base: -2.0,
                            threshold: 40.0 * i as f32,
                        })
                        .collect();
                    for biases in [&biases[..], &[]] {
                        let mut keys = vec![[0.0f32; BLOCK]; nb * q];
                        let mut masks = vec![0u32; nb * q];
                        let out = BlockKeys {
                            queries: &queries,
                            scales: &scales,
                            biases,
                            keys: &mut keys,
                            masks: &mut masks,
                        };
                        block_keys_multi(level, &layout, &blocks, &luts, out);
                        for b in 0..nb {
                            let span = b * BLOCK..(b + 1) * BLOCK;
                            let mut one_keys = vec![[0.0f32; BLOCK]; q];
                            let mut one_masks = vec![0u32; q];
                            let out = BlockKeys {
                                queries: &queries,
                                scales: &scales[span.clone()],
                                biases: biases.get(span).unwrap_or(&[]),
                                keys: &mut one_keys,
                                masks: &mut one_masks,
                            };
                            block_keys_multi(level, &layout, &blocks[b * bb..], &luts, out);
                            assert_eq!(
                                &masks[b * q..(b + 1) * q],
                                &one_masks[..],
                                "{level:?} {layout:?} block {b}"
                            );
                            for (i, k) in one_keys.iter().enumerate() {
                                assert_eq!(keys[b * q + i].map(f32::to_bits), k.map(f32::to_bits));
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`block_keys_multi`] (fused with AVX-512 VBMI) gives bit-for-bit the keys and masks
    /// of the scalar [`keys_from_sums`] on `sums` (the block's reference sums per table):
    /// full blocks with and without biases, and a partial block.
    fn keys_match_the_scalar_reference(
        level: SimdLevel,
        layout: &Layout,
        block: &[u8],
        luts: &[&[u8]],
        sums: &[[i32; BLOCK]],
    ) {
        let scales: Vec<f32> = (0..BLOCK).map(|v| 0.5 + v as f32 / 7.0).collect();
        let biases: Vec<f32> = (0..BLOCK).map(|v| (v as f32 - 9.5) * 1e3).collect();
        let queries: Vec<KeyQuery> = (0..luts.len())
            .map(|i| KeyQuery {
                delta: 1.0 / (3.0 + i as f32),
                base: -17.25 * i as f32,
                threshold: [f32::NEG_INFINITY, -1e3, 0.0, 5e3][i % 4],
            })
            .collect();
        for (n, with_bias) in [(BLOCK, false), (BLOCK, true), (BLOCK - 5, true)] {
            let (scales, biases) = (&scales[..n], if with_bias { &biases[..n] } else { &[] });
            let mut keys = vec![[0.0f32; BLOCK]; luts.len()];
            let mut masks = vec![0u32; luts.len()];
            let out = BlockKeys {
                queries: &queries,
                scales,
                biases,
                keys: &mut keys,
                masks: &mut masks,
            };
            block_keys_multi(level, layout, block, luts, out);
            for (i, q) in queries.iter().enumerate() {
                let mut want = [0.0f32; BLOCK];
                let args = (q.delta, q.base, scales, biases, q.threshold);
                let (d, b, s, bi, t) = args;
                let mask = keys_from_sums(SimdLevel::Scalar, &sums[i], d, b, s, bi, t, &mut want);
                assert_eq!(
                    masks[i],
                    mask,
                    "{level:?} query {i} of {}, n {n}",
                    luts.len()
                );
                let bits = |k: &[f32]| k[..n].iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&keys[i]), bits(&want), "{level:?} query {i}, n {n}");
                if q.threshold == f32::NEG_INFINITY {
                    assert_eq!(mask as u64, (1u64 << n) - 1, "-inf passes every vector");
                }
            }
        }
    }
}
