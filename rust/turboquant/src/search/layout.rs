//! The index-internal blocked layouts and the per-query lookup tables that match them.
//!
//! Vectors are stored in blocks of [`BLOCK`] = 32. Every layout is derived from the canonical
//! packed row of [`crate::packing`] (an LSB-first bit stream of `b`-bit codes): a *group code*
//! is a run of `w` consecutive stream bits, i.e. the concatenation of the codes of `w / b`
//! consecutive coordinates (bits past the row's end read as zero, a padded coordinate).
//!
//! - **Nibble** (`b ∈ {1, 2, 4}`, `w = 4`: 4, 2 or 1 coordinates per group; groups padded to a
//!   multiple of 4): groups `4c .. 4c + 4` form quad `c`, 64 bytes at `[64c, 64c + 64)`; byte
//!   `4i + j` (`i < 16`, `j < 4`) holds vector `i`'s code of group `4c + j` in its low nibble
//!   and vector `16 + i`'s in its high nibble. So a 32-bit lane holds one vector's 4 groups
//!   (summed by one `vpdpbusd`). Query tables ([`QueryTables::lut`]): at 1 and 2 bits, 16 `u8`
//!   per group at `[16g, 16g + 16)`; at 4 bits (one coordinate per group) the *int8 query*: 64
//!   bytes of centroid levels (the 16 levels `0..=127`, repeated 4 times, so that a lookup may
//!   ignore index bits 4 and 5), then one `i8` per coordinate (the quantized rotated query,
//!   zero on padding).
//! - **Pair** (`b = 3`, `w = 6`: 2 coordinates per group; groups padded to a multiple of 4):
//!   groups `4t .. 4t + 4` (coordinates `8t .. 8t + 8`) form span `t`, two 48-byte steps at
//!   `[96t + 48h, 96t + 48h + 48)` for the vector halves `h = 0, 1`. A step is a bit stream of
//!   64 6-bit codes, LSB first, where position `4i + k` holds vector `16h + i`'s code of group
//!   `4t + k`. 3 bits per coordinate stay 3 bits. Query: the int8 query, 128 bytes of levels
//!   (64 for the first coordinate of a group code, `level[t & 7]`, then 64 for the second,
//!   `level[t >> 3]`), then per span 8 `i8`: its even coordinates `8t, 8t+2, 8t+4, 8t+6`, then
//!   its odd ones, so that one dword multiplies the first coordinates of a vector's 4 groups.
//! - **Rows** (`b ≥ 5`): the canonical rows themselves, 32 back to back per block; scored with
//!   `f32` per-coordinate tables.
//!
//! An int8 query ([`Layout::int8_query`]: 3 and 4 bits) is scored by multiplying each code's
//! centroid level by the query's `i8` coordinate: one multiply-add per code and query instead of
//! a table lookup and an add, with the code decoding shared by every query of a pass.
//!
//! A block's unused slots (past the last vector) are zero codes and are never reported.

use crate::packing::row_bytes;
use crate::simd::{multiversion, SimdLevel};

/// Vectors per block.
pub const BLOCK: usize = 32;

/// Bytes of one centroid-level table of an int8 query ([`Layout::int8_query`]).
pub const LEVEL_TABLE: usize = 64;
/// Largest centroid level of an int8 query: 7 bits, so that two level × query products
/// (`≤ 2 · 127 · 127`) fit the `i16` of AVX2's `pmaddubsw` without saturating.
const MAX_LEVEL: f32 = 127.0;
/// Largest magnitude of an int8 query coordinate.
const MAX_QUERY: f32 = 127.0;

/// How codes are laid out inside a block (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 4-bit group codes, `groups` a multiple of 4.
    Nibble {
        /// Padded number of groups.
        groups: usize,
        /// Bits per coordinate (1, 2 or 4).
        bits: u8,
    },
    /// 6-bit group codes of coordinate pairs (3 bits each), `groups` a multiple of 4.
    Pair {
        /// Padded number of groups.
        groups: usize,
    },
    /// Canonical packed rows.
    Rows {
        /// Bytes per row.
        row_bytes: usize,
        /// Bits per coordinate (5..=8).
        bits: u8,
    },
}

/// Reads `width ≤ 8` bits at stream bit `start` of an LSB-first stream (zero past the end).
#[inline]
pub fn stream_bits(stream: &[u8], start: usize, width: usize) -> usize {
    let byte = start / 8;
    let lo = stream.get(byte).copied().unwrap_or(0) as usize;
    let hi = stream.get(byte + 1).copied().unwrap_or(0) as usize;
    ((lo | hi << 8) >> (start % 8)) & ((1 << width) - 1)
}

/// ORs a `width`-bit `value` into stream bit `start` (the stream holds zeros there).
#[inline]
fn put_bits(stream: &mut [u8], start: usize, value: usize) {
    let v = value << (start % 8);
    stream[start / 8] |= v as u8;
    if v >> 8 != 0 {
        stream[start / 8 + 1] |= (v >> 8) as u8;
    }
}

/// Stream position (in codes) of vector `v`'s code of group `g` in a pair block.
#[inline]
fn pair_position(v: usize, g: usize) -> usize {
    64 * (2 * (g / 4) + v / 16) + 4 * (v % 16) + g % 4
}

/// Byte of a nibble block holding vector `v`'s code of group `g`.
#[inline]
fn nibble_byte(v: usize, g: usize) -> usize {
    64 * (g / 4) + 4 * (v % 16) + g % 4
}

impl Layout {
    /// The layout for `dim` coordinates at `bits` bits.
    pub fn new(dim: usize, bits: u8) -> Layout {
        match bits {
            1 | 2 | 4 => Layout::Nibble {
                groups: (dim * bits as usize).div_ceil(16) * 4,
                bits,
            },
            3 => Layout::Pair {
                groups: dim.div_ceil(8) * 4,
            },
            _ => Layout::Rows {
                row_bytes: row_bytes(dim, bits),
                bits,
            },
        }
    }

    /// Bits of a group code (0 for rows).
    pub fn group_bits(&self) -> usize {
        match self {
            Layout::Nibble { .. } => 4,
            Layout::Pair { .. } => 6,
            Layout::Rows { .. } => 0,
        }
    }

    /// Number of (padded) groups; 0 for rows.
    pub fn groups(&self) -> usize {
        match *self {
            Layout::Nibble { groups, .. } | Layout::Pair { groups } => groups,
            Layout::Rows { .. } => 0,
        }
    }

    /// Bytes of one block of [`BLOCK`] vectors.
    pub fn block_bytes(&self) -> usize {
        match *self {
            Layout::Nibble { groups, .. } => 16 * groups,
            Layout::Pair { groups } => 24 * groups,
            Layout::Rows { row_bytes, .. } => BLOCK * row_bytes,
        }
    }

    /// Whether queries are scored as an int8 query against centroid levels (3 and 4 bits)
    /// rather than through per-group lookup tables. At 1 and 2 bits a table entry covers 4 or
    /// 2 coordinates, as many as the multiply-adds it saves (2 bits as an int8 query measured
    /// 0.80× turbovec's batch QPS against 0.84× with tables).
    pub fn int8_query(&self) -> bool {
        matches!(self, Layout::Nibble { bits: 4, .. } | Layout::Pair { .. })
    }

    /// Bits per coordinate.
    pub fn code_bits(&self) -> usize {
        match *self {
            Layout::Nibble { bits, .. } | Layout::Rows { bits, .. } => bits as usize,
            Layout::Pair { .. } => 3,
        }
    }

    /// Coordinates per group code (0 for rows).
    pub fn coords_per_group(&self) -> usize {
        self.group_bits() / self.code_bits()
    }

    /// Bytes of the level tables that open an int8 query, one [`LEVEL_TABLE`] per coordinate
    /// of a group (0 for lookup-table layouts).
    pub fn level_bytes(&self) -> usize {
        if self.int8_query() {
            LEVEL_TABLE * self.coords_per_group()
        } else {
            0
        }
    }

    /// The level tables of an int8 query from the level of each code: table `u` maps a group
    /// code `t` (any bits above the group code ignored) to the level of its coordinate `u`,
    /// `levels[(t >> u·b) mod 2^b]`.
    pub fn level_table(&self, levels: &[u8]) -> Vec<u8> {
        let b = self.code_bits();
        (0..self.level_bytes())
            .map(|i| levels[((i % LEVEL_TABLE) >> (i / LEVEL_TABLE * b)) & ((1 << b) - 1)])
            .collect()
    }

    /// Where coordinate `j` of an int8 query sits after the level tables: in place with one
    /// coordinate per group; with two, per span of 8 coordinates (4 groups) the even ones,
    /// then the odd ones, so that one dword multiplies the same coordinate of 4 groups.
    pub fn query_slot(&self, j: usize) -> usize {
        if self.coords_per_group() == 1 {
            j
        } else {
            j / 8 * 8 + (j % 2) * 4 + (j % 8) / 2
        }
    }

    /// Bytes of one query's [`QueryTables::lut`] (0 for rows).
    pub fn lut_bytes(&self) -> usize {
        if self.int8_query() {
            self.level_bytes() + self.groups() * self.coords_per_group()
        } else {
            self.groups() << self.group_bits()
        }
    }

    /// Writes vector `v`'s canonical packed `row` into a zeroed slot of `block`.
    pub fn put(&self, block: &mut [u8], v: usize, row: &[u8]) {
        match *self {
            Layout::Nibble { groups, .. } => {
                let shift = if v < 16 { 0 } else { 4 };
                for g in 0..groups {
                    block[nibble_byte(v, g)] |= (stream_bits(row, 4 * g, 4) << shift) as u8;
                }
            }
            Layout::Pair { groups } => {
                for g in 0..groups {
                    put_bits(block, 6 * pair_position(v, g), stream_bits(row, 6 * g, 6));
                }
            }
            Layout::Rows { row_bytes, .. } => {
                block[v * row_bytes..(v + 1) * row_bytes].copy_from_slice(row);
            }
        }
    }

    /// Vector `v`'s code of group `g` (group layouts only).
    #[inline]
    pub fn group_code(&self, block: &[u8], v: usize, g: usize) -> usize {
        match self {
            Layout::Nibble { .. } => {
                let byte = block[nibble_byte(v, g)] as usize;
                if v < 16 {
                    byte & 15
                } else {
                    byte >> 4
                }
            }
            Layout::Pair { .. } => stream_bits(block, 6 * pair_position(v, g), 6),
            Layout::Rows { .. } => 0,
        }
    }
}

/// One query's tables. For a lookup-table group layout, the `f32` group table `table[g][t]`
/// (the sum of `rq[j] · centroids[code_j]` over the group's coordinates `j` for group code `t`)
/// is quantized to `u8`: `lut[g][t] = round((table[g][t] − min_g) / delta)`, so that
/// `Σ_g table[g][c_g] ≈ delta · Σ_g lut[g][c_g] + base` with `base = Σ_g min_g`. For an int8
/// query ([`Layout::int8_query`]) `centroids[c] ≈ lo + step · level[c]` and
/// `rq[j] ≈ s · q[j]`, so that
/// `Σ_j rq[j] · centroids[c_j] ≈ delta · Σ_j q[j] · level[c_j] + base` with
/// `delta = s · step` and `base = s · lo · Σ_j q[j]`. The rotated query `rq` is kept for exact
/// scores ([`QueryTables::exact_score`]); the `f32` tables are not.
#[derive(Debug, Clone, Default)]
pub struct QueryTables {
    /// The rotated query.
    pub rq: Vec<f32>,
    /// The quantized tables or the int8 query (empty for rows; see the module doc).
    pub lut: Vec<u8>,
    /// Step of a unit of the integer sums.
    pub delta: f32,
    /// Offset of the integer sums.
    pub base: f32,
}

impl QueryTables {
    /// Tables for the rotated query `rq` against the unit-scale `centroids` of `bits`-bit codes.
    pub fn new(
        level: SimdLevel,
        layout: &Layout,
        rq: Vec<f32>,
        centroids: &[f32],
        bits: u8,
    ) -> QueryTables {
        let w = layout.group_bits();
        if w == 0 {
            return QueryTables {
                rq,
                ..QueryTables::default()
            };
        }
        if layout.int8_query() {
            return int8_tables(layout, rq, centroids);
        }
        let size = 1usize << w;
        let float = group_tables(layout, &rq, centroids, bits);
        let mut lut = vec![0u8; float.len()];
        let (delta, base) = quantize_tables(level, &float, size, &mut lut);
        QueryTables {
            rq,
            lut,
            delta,
            base,
        }
    }

    /// `⟨rq, ĉ⟩` for vector `v` of a group-layout `block`, in `f32` without the integer
    /// scan's rounding (four running sums by coordinate mod 4: one running sum is a chain of
    /// dependent adds).
    pub fn exact_score(&self, layout: &Layout, block: &[u8], v: usize, centroids: &[f32]) -> f32 {
        let acc = match *layout {
            Layout::Nibble { bits: 1, .. } => nibble_score::<1>(&self.rq, block, v, centroids),
            Layout::Nibble { bits: 2, .. } => nibble_score::<2>(&self.rq, block, v, centroids),
            Layout::Nibble { .. } => nibble_score::<4>(&self.rq, block, v, centroids),
            _ => {
                // a group code holds `per` codes of `b` bits, coordinate g·per + u at bit u·b
                let (b, per) = (layout.code_bits(), layout.coords_per_group());
                let mask = (1usize << b) - 1;
                let mut acc = [0.0f32; 4];
                for (g, rq) in self.rq.chunks(per).enumerate() {
                    let t = layout.group_code(block, v, g);
                    for (u, &r) in rq.iter().enumerate() {
                        acc[(g * per + u) % 4] += r * centroids[(t >> (u * b)) & mask];
                    }
                }
                acc
            }
        };
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    }

    /// The `f32` tables of a scan without `u8` rounding: per-coordinate `rq[j] · centroids[c]`
    /// (`dim × 2^bits`) for the rows layout, else the group tables (`groups × 2^group_bits`).
    pub fn float_tables(&self, layout: &Layout, centroids: &[f32], bits: u8) -> Vec<f32> {
        match layout {
            Layout::Rows { .. } => self
                .rq
                .iter()
                .flat_map(|&v| centroids.iter().map(move |&c| v * c))
                .collect(),
            _ => group_tables(layout, &self.rq, centroids, bits),
        }
    }
}

/// [`QueryTables::exact_score`] for a nibble layout of `B` bits per code: four running sums,
/// by coordinate mod 4. Vector `v`'s 4 group codes of quad `c` are the nibbles of the
/// little-endian `u32` at byte `64 c + 4 (v mod 16)` ([`nibble_byte`]), the low or high half of
/// each byte by `v / 16`; coordinate `u` of the quad sits at bit `8 (u / per) + B (u mod per)`
/// of that word (`per = 4 / B` coordinates per group).
fn nibble_score<const B: usize>(rq: &[f32], block: &[u8], v: usize, centroids: &[f32]) -> [f32; 4] {
    let per = 4 / B;
    let mask = (1u32 << B) - 1;
    let (at, shift) = (nibble_byte(v, 0), 4 * (v / 16));
    let word = |c: usize| {
        let w = &block[64 * c + at..64 * c + at + 4];
        u32::from_le_bytes([w[0], w[1], w[2], w[3]]) >> shift
    };
    let code = |w: u32, u: usize| ((w >> (8 * (u / per) + B * (u % per))) & mask) as usize;
    let mut acc = [0.0f32; 4];
    let quads = rq.chunks_exact(4 * per);
    let (tail, last) = (quads.remainder(), rq.len() / (4 * per));
    for (c, rq) in quads.enumerate() {
        let w = word(c);
        for (i, r4) in rq.chunks_exact(4).enumerate() {
            for (k, (a, &r)) in acc.iter_mut().zip(r4).enumerate() {
                *a += r * centroids[code(w, 4 * i + k)];
            }
        }
    }
    if !tail.is_empty() {
        let w = word(last);
        for (u, &r) in tail.iter().enumerate() {
            acc[u % 4] += r * centroids[code(w, u)];
        }
    }
    acc
}

/// The int8 query of `rq` (see [`QueryTables`] and the module doc).
fn int8_tables(layout: &Layout, rq: Vec<f32>, centroids: &[f32]) -> QueryTables {
    let lo = centroids[0];
    let hi = centroids[centroids.len() - 1];
    let step = if hi > lo { (hi - lo) / MAX_LEVEL } else { 1.0 };
    let levels: Vec<u8> = centroids
        .iter()
        .map(|&c| ((c - lo) / step).round().clamp(0.0, MAX_LEVEL) as u8)
        .collect();
    let mut lut = vec![0u8; layout.lut_bytes()];
    let (table, query) = lut.split_at_mut(layout.level_bytes());
    table.copy_from_slice(&layout.level_table(&levels));
    let peak = rq.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = if peak > 0.0 { peak / MAX_QUERY } else { 1.0 };
    let mut total = 0i64;
    for (j, &v) in rq.iter().enumerate() {
        let i = (v / s).round().clamp(-MAX_QUERY, MAX_QUERY) as i8;
        total += i as i64;
        query[layout.query_slot(j)] = i as u8;
    }
    QueryTables {
        delta: s * step,
        base: s * lo * total as f32,
        rq,
        lut,
    }
}

/// The `f32` group tables of a group layout: `table[g][t] = Σ_u rq[g·per + u] · centroids[code_u]`
/// over the `per = w / bits` coordinates of group `g` with group code `t` (padding counts zero).
fn group_tables(layout: &Layout, rq: &[f32], centroids: &[f32], bits: u8) -> Vec<f32> {
    match *layout {
        Layout::Nibble { bits: 1, groups } => return nibble_tables::<1>(rq, centroids, groups),
        Layout::Nibble { bits: 2, groups } => return nibble_tables::<2>(rq, centroids, groups),
        _ => {}
    }
    any_group_tables(layout, rq, centroids, bits)
}

/// [`group_tables`] for any group layout.
fn any_group_tables(layout: &Layout, rq: &[f32], centroids: &[f32], bits: u8) -> Vec<f32> {
    let (w, b) = (layout.group_bits(), bits as usize);
    let (size, per, k) = (1usize << w, w / b, 1usize << b);
    let mut float = vec![0.0f32; layout.groups() * size];
    // The products of the group's coordinates with every centroid, then each entry sums its
    // coordinates' products in order u = 0, 1, ….
    let mut products = vec![0.0f32; per * k];
    for (g, table) in float.chunks_exact_mut(size).enumerate() {
        let coords = rq.len().saturating_sub(g * per).min(per);
        for u in 0..coords {
            let v = rq[g * per + u];
            for (p, &c) in products[u * k..(u + 1) * k].iter_mut().zip(centroids) {
                *p = v * c;
            }
        }
        if coords == per && per == 1 {
            // one coordinate per group (4 bits): the table is its products
            table.copy_from_slice(&products[..k]);
            continue;
        }
        for (t, e) in table.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for u in 0..coords {
                acc += products[u * k + ((t >> (u * b)) & (k - 1))];
            }
            *e = acc;
        }
    }
    float
}

/// [`group_tables`] of a nibble layout with `B` = 1 or 2 bits per code (`4 / B` coordinates
/// per group, 16 entries): the same sums in the same order, with the widths known at compile
/// time. Coordinates past `rq`'s end (the last group's padding) count as 0, which leaves
/// every sum bit-identical.
fn nibble_tables<const B: usize>(rq: &[f32], centroids: &[f32], groups: usize) -> Vec<f32> {
    let (per, k) = (4 / B, 1usize << B);
    let mut float = vec![0.0f32; 16 * groups];
    for (g, table) in float.chunks_exact_mut(16).enumerate() {
        let mut products = [[0.0f32; 4]; 4]; // [coordinate u][centroid]
        for (u, row) in products.iter_mut().enumerate().take(per) {
            let v = rq.get(g * per + u).copied().unwrap_or(0.0);
            for (p, &c) in row.iter_mut().zip(centroids).take(k) {
                *p = v * c;
            }
        }
        for (t, e) in table.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (u, row) in products.iter().enumerate().take(per) {
                acc += row[(t >> (u * B)) & (k - 1)];
            }
            *e = acc;
        }
    }
    float
}

multiversion! {
    /// Quantizes the `f32` tables (`size` entries per group) to `u8` into `lut`; returns
    /// `(delta, base)` (see [`QueryTables`]).
    pub fn quantize_tables(float: &[f32], size: usize, lut: &mut [u8]) -> (f32, f32) {
        let (mut base, mut range) = (0.0f32, 0.0f32);
        let mut mins = Vec::with_capacity(float.len() / size);
        for t in float.chunks_exact(size) {
            let (mut lo, mut hi) = (t[0], t[0]);
            for &v in t {
                lo = if v < lo { v } else { lo };
                hi = if v > hi { v } else { hi };
            }
            base += lo;
            range = range.max(hi - lo);
            mins.push(lo);
        }
        let delta = if range > 0.0 { range / 255.0 } else { 1.0 };
        let inv = 1.0 / delta;
        for ((dst, t), &lo) in lut.chunks_exact_mut(size).zip(float.chunks_exact(size)).zip(&mins) {
            for (d, &v) in dst.iter_mut().zip(t) {
                // v ≥ lo, so adding 0.5 and truncating rounds to nearest.
                let q = (v - lo) * inv + 0.5;
                *d = if q < 255.0 { q as u8 } else { 255 };
            }
        }
        (delta, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packing::pack_row;

    #[test]
    fn group_codes_are_runs_of_the_canonical_stream() {
        for (dim, bits) in [(7usize, 1u8), (9, 2), (10, 3), (13, 4), (64, 3), (33, 4)] {
            let layout = Layout::new(dim, bits);
            let mut block = vec![0u8; layout.block_bytes()];
            let rows: Vec<Vec<u8>> = (0..BLOCK)
                .map(|v| {
                    let codes: Vec<u8> = (0..dim)
                        .map(|j| ((v * 7 + j * 3 + j * j) % (1 << bits)) as u8)
                        .collect();
                    let mut row = vec![0u8; row_bytes(dim, bits)];
                    pack_row(&codes, bits, &mut row);
                    row
                })
                .collect();
            for (v, row) in rows.iter().enumerate() {
                layout.put(&mut block, v, row);
            }
            let w = layout.group_bits();
            for (v, row) in rows.iter().enumerate() {
                for g in 0..layout.groups() {
                    assert_eq!(layout.group_code(&block, v, g), stream_bits(row, w * g, w));
                }
            }
        }
    }

    #[test]
    fn nibble_tables_equal_the_general_group_tables() {
        for (dim, bits) in [(9usize, 2u8), (100, 2), (384, 2), (37, 1), (8, 1), (384, 1)] {
            let layout = Layout::new(dim, bits);
            let centroids: Vec<f32> = (0..1 << bits).map(|c| c as f32 * 0.61 - 0.9).collect();
            let rq: Vec<f32> = (0..dim)
                .map(|j| ((j * 29 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let fast = group_tables(&layout, &rq, &centroids, bits);
            let general = any_group_tables(&layout, &rq, &centroids, bits);
            let bits_of = |t: &[f32]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits_of(&fast), bits_of(&general), "dim {dim} bits {bits}");
        }
    }

    #[test]
    fn exact_score_reads_each_vectors_codes() {
        for (dim, bits) in [
            (7usize, 1u8),
            (9, 2),
            (40, 2),
            (10, 3),
            (13, 4),
            (64, 3),
            (33, 4),
        ] {
            let layout = Layout::new(dim, bits);
            let centroids: Vec<f32> = (0..1 << bits).map(|c| c as f32 * 0.75 - 1.3).collect();
            let rq: Vec<f32> = (0..dim)
                .map(|j| ((j * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let t = QueryTables {
                rq: rq.clone(),
                ..Default::default()
            };
            let mut block = vec![0u8; layout.block_bytes()];
            let codes: Vec<Vec<u8>> = (0..BLOCK)
                .map(|v| {
                    (0..dim)
                        .map(|j| ((v * 5 + j * j) % (1 << bits)) as u8)
                        .collect()
                })
                .collect();
            for (v, c) in codes.iter().enumerate() {
                let mut row = vec![0u8; row_bytes(dim, bits)];
                pack_row(c, bits, &mut row);
                layout.put(&mut block, v, &row);
            }
            for (v, c) in codes.iter().enumerate() {
                let want: f32 = rq
                    .iter()
                    .zip(c)
                    .map(|(r, &k)| r * centroids[k as usize])
                    .sum();
                let got = t.exact_score(&layout, &block, v, &centroids);
                assert!(
                    (got - want).abs() < 1e-4,
                    "d={dim} b={bits} v={v}: {got} vs {want}"
                );
            }
        }
    }
}
