//! The exhaustive scan: every allowed slot of a range of blocks, for a range of queries.

use super::fastscan::{block_keys_multi, queries_per_pass, BlockKeys, MULTI};
use super::filter::block_bits;
use super::layout::{Layout, QueryTables, BLOCK};
use super::score::{keys_from_estimates, KeyQuery};
use super::topk::{Hit, TopK};
use crate::packing::unpack_row;
use crate::simd::{kernels, SimdLevel};
use std::ops::Range;

/// Blocks scanned for a group of queries before moving to the next group (cache blocking:
/// the tile's codes stay in L2 while every query's tables pass over them).
const TILE_BLOCKS: usize = 16;

/// A read-only view of stored codes: what a scan reads (it never sees the index that owns them).
#[derive(Clone, Copy)]
pub struct StoredCodes<'a> {
    /// How the codes are laid out in blocks.
    pub layout: &'a Layout,
    /// Blocks of codes in `layout`.
    pub codes: &'a [u8],
    /// Per-slot stored scale.
    pub scales: &'a [f32],
    /// Per-slot exact key terms (empty when they are all zero).
    pub biases: &'a [f32],
    /// Slots in use (filled or removed).
    pub slots: usize,
    /// Coordinates per vector.
    pub dim: usize,
    /// The codebook's centroids (the reference path's float tables).
    pub centroids: &'a [f32],
    /// Bits per code.
    pub bits: u8,
}

/// One search's shared, read-only state.
pub struct Scan<'a> {
    /// The stored codes searched.
    pub stored: StoredCodes<'a>,
    /// Per-query tables.
    pub tables: &'a [QueryTables],
    /// Allowed slots (`None`: all).
    pub allowed: Option<&'a [u64]>,
    /// SIMD level.
    pub level: SimdLevel,
    /// Score with `f32` arithmetic instead of the integer kernels (reference scan).
    pub float_tables: bool,
    /// Hits kept per query.
    pub keep: usize,
}

/// The allowed, filled slots of one block and the ranking inputs of its vectors.
struct BlockView<'a> {
    first_slot: usize,
    mask: u32,
    codes: &'a [u8],
    scales: &'a [f32],
    /// The slots' exact key terms (empty when they are zero).
    biases: &'a [f32],
}

impl Scan<'_> {
    /// Empty selections for `n` queries.
    pub fn tops(&self, n: usize) -> Vec<TopK> {
        (0..n).map(|_| TopK::new(self.keep)).collect()
    }

    /// Scans blocks `blocks` for queries `queries` into `tops` (one [`TopK`] per query).
    pub fn run(&self, queries: Range<usize>, blocks: Range<usize>, tops: &mut [TopK]) {
        let tables = &self.tables[queries];
        assert_eq!(tables.len(), tops.len(), "one selection per query");
        if self.stored.layout.group_bits() > 0 && !self.float_tables {
            self.run_kernels(tables, blocks, tops);
        } else {
            // The reference / rows path: one query at a time over the whole range.
            let mut est = [0.0f32; BLOCK];
            let mut keys = [0.0f32; BLOCK];
            let st = &self.stored;
            let mut codes = vec![0u8; st.dim];
            for (t, top) in tables.iter().zip(tops.iter_mut()) {
                let float = t.float_tables(st.layout, st.centroids, st.bits);
                for view in blocks.clone().filter_map(|b| self.block(b)) {
                    self.estimate(&float, &view, &mut codes, &mut est);
                    let hits = keys_from_estimates(
                        self.level,
                        &est,
                        view.scales,
                        view.biases,
                        top.threshold(),
                        &mut keys,
                    );
                    push(top, view.first_slot, view.mask & hits, &keys);
                }
            }
        }
    }

    /// The integer-kernel scan: tiles of [`TILE_BLOCKS`] blocks, each scanned by every pass
    /// of up to [`queries_per_pass`] queries. A tile of full blocks that all hold an allowed
    /// slot is one kernel call (the thresholds of its keys are the queries' at the tile's
    /// start: a lower threshold only offers more hits to the top-k); otherwise blocks go one
    /// at a time and blocks without an allowed slot are skipped.
    fn run_kernels(&self, tables: &[QueryTables], blocks: Range<usize>, tops: &mut [TopK]) {
        let ix = &self.stored;
        let layout = ix.layout;
        let (bb, full_blocks) = (layout.block_bytes(), ix.slots / BLOCK);
        let mut keys = vec![[0.0f32; BLOCK]; TILE_BLOCKS * MULTI];
        let mut masks = [0u32; TILE_BLOCKS * MULTI];
        let mut params = [KeyQuery {
            delta: 0.0,
            base: 0.0,
            threshold: 0.0,
        }; MULTI];
        let per = queries_per_pass(layout);
        let luts: Vec<&[u8]> = tables.iter().map(|t| &t.lut[..]).collect();
        for t0 in blocks.clone().step_by(TILE_BLOCKS) {
            let tile = t0..(t0 + TILE_BLOCKS).min(blocks.end);
            // Slots each block may offer (all, or the filter's); a tile with a block that has
            // none goes block by block, so that a selective filter skips the scan.
            let allowed = |b: usize| self.allowed.map_or(u32::MAX, |a| block_bits(a, b));
            let whole = tile.end <= full_blocks && tile.clone().all(|b| allowed(b) != 0);
            let passes = tables.chunks(per).zip(luts.chunks(per));
            for ((group, luts), tops) in passes.zip(tops.chunks_mut(per)) {
                let nq = group.len();
                let mut set_params = |tops: &[TopK]| {
                    for ((p, t), top) in params.iter_mut().zip(group).zip(tops) {
                        *p = KeyQuery {
                            delta: t.delta,
                            base: t.base,
                            threshold: top.threshold(),
                        };
                    }
                    params
                };
                // Until a query keeps `k` hits its threshold is −∞ and every vector of a whole
                // tile would be offered: go block by block until then.
                if whole && tops.iter().all(|t| t.threshold() > f32::NEG_INFINITY) {
                    let params = set_params(tops);
                    let (nb, slots) = (tile.len(), tile.start * BLOCK..tile.end * BLOCK);
                    let out = BlockKeys {
                        queries: &params[..nq],
                        scales: &ix.scales[slots.clone()],
                        biases: ix.biases.get(slots).unwrap_or(&[]),
                        keys: &mut keys[..nb * nq],
                        masks: &mut masks[..nb * nq],
                    };
                    let codes = &ix.codes[tile.start * bb..tile.end * bb];
                    block_keys_multi(self.level, layout, codes, luts, out);
                    for (i, b) in tile.clone().enumerate() {
                        let rows = masks[i * nq..].iter().zip(&keys[i * nq..]);
                        let allowed = allowed(b);
                        for (top, (&hits, keys)) in tops.iter_mut().zip(rows) {
                            push(top, b * BLOCK, allowed & hits, keys);
                        }
                    }
                    continue;
                }
                for view in tile.clone().filter_map(|b| self.block(b)) {
                    let params = set_params(tops);
                    let out = BlockKeys {
                        queries: &params[..nq],
                        scales: view.scales,
                        biases: view.biases,
                        keys: &mut keys[..nq],
                        masks: &mut masks[..nq],
                    };
                    block_keys_multi(self.level, layout, view.codes, luts, out);
                    for ((top, &hits), keys) in tops.iter_mut().zip(&masks).zip(&keys) {
                        push(top, view.first_slot, view.mask & hits, keys);
                    }
                }
            }
        }
    }

    /// Block `b` if any of its slots is filled and allowed.
    fn block(&self, b: usize) -> Option<BlockView<'_>> {
        let ix = &self.stored;
        let n = ix.slots;
        let valid = if (b + 1) * BLOCK <= n {
            u32::MAX
        } else {
            (1u32 << (n - b * BLOCK)) - 1
        };
        let mask = self.allowed.map_or(valid, |a| block_bits(a, b) & valid);
        if mask == 0 {
            return None;
        }
        let bb = ix.layout.block_bytes();
        let slots = b * BLOCK..((b + 1) * BLOCK).min(n);
        Some(BlockView {
            first_slot: b * BLOCK,
            mask,
            codes: &ix.codes[b * bb..(b + 1) * bb],
            scales: &ix.scales[slots.clone()],
            biases: if ix.biases.is_empty() {
                &[]
            } else {
                &ix.biases[slots]
            },
        })
    }

    /// `f32` estimates of `⟨R q, c⟩` for the selected vectors of a block, from the query's
    /// [`QueryTables::float_tables`].
    fn estimate(
        &self,
        float: &[f32],
        view: &BlockView<'_>,
        codes: &mut [u8],
        est: &mut [f32; BLOCK],
    ) {
        let layout = self.stored.layout;
        let size = 1usize << layout.group_bits();
        let mut m = view.mask;
        while m != 0 {
            let v = m.trailing_zeros() as usize;
            m &= m - 1;
            est[v] = match *layout {
                Layout::Rows { row_bytes, bits } => {
                    unpack_row(&view.codes[v * row_bytes..(v + 1) * row_bytes], bits, codes);
                    kernels::lut_sum(self.level, float, 1 << bits, codes)
                }
                _ => (0..layout.groups())
                    .map(|g| float[g * size + layout.group_code(view.codes, v, g)])
                    .sum(),
            };
        }
    }
}

/// Offers the vectors of the block at `first_slot` whose bit is set in `hits` (allowed and
/// with a key at or above the threshold) to `top`.
#[inline]
fn push(top: &mut TopK, first_slot: usize, hits: u32, keys: &[f32; BLOCK]) {
    let mut m = hits;
    while m != 0 {
        let v = m.trailing_zeros() as usize;
        m &= m - 1;
        top.push(Hit {
            score: keys[v],
            slot: first_slot + v,
        });
    }
}
