//! The exhaustive scan: every allowed slot of a range of blocks, for a range of queries.

use super::fastscan::{block_sums_multi, MULTI};
use super::filter::block_bits;
use super::index::{Index, Metric};
use super::layout::{Layout, QueryTables, BLOCK};
use super::score::{keys_from_estimates, keys_from_sums};
use super::topk::{Hit, TopK};
use crate::packing::unpack_row;
use crate::simd::{kernels, SimdLevel};
use std::ops::Range;

/// Blocks scanned for a group of queries before moving to the next group (cache blocking:
/// the tile's codes stay in L2 while every query's tables pass over them).
const TILE_BLOCKS: usize = 16;

/// One search's shared, read-only state.
pub struct Scan<'a> {
    /// The index searched.
    pub index: &'a Index,
    /// Per-query tables.
    pub tables: &'a [QueryTables],
    /// Allowed slots (`None`: all).
    pub allowed: Option<&'a [u64]>,
    /// SIMD level.
    pub level: SimdLevel,
    /// Score with the `f32` tables (reference scan).
    pub float_tables: bool,
    /// Hits kept per query.
    pub keep: usize,
}

impl Scan<'_> {
    /// Scans blocks `blocks` for queries `queries`; one [`TopK`] per query.
    pub fn run(&self, queries: Range<usize>, blocks: Range<usize>) -> Vec<TopK> {
        let ix = self.index;
        let n = ix.ids.slots();
        let bb = ix.layout.block_bytes();
        let codes_all = ix.codes.as_slice();
        let tables = &self.tables[queries];
        let mut tops: Vec<TopK> = tables.iter().map(|_| TopK::new(self.keep)).collect();
        let mut sums = [[0u32; BLOCK]; MULTI];
        let mut est = [0.0f32; BLOCK];
        let mut keys = [0.0f32; BLOCK];
        let mut codes = vec![0u8; ix.dim()];
        let fast = ix.layout.group_bits() > 0 && !self.float_tables;
        let mut t0 = blocks.start;
        while t0 < blocks.end {
            let t1 = (t0 + TILE_BLOCKS).min(blocks.end);
            for (group, tops) in tables.chunks(MULTI).zip(tops.chunks_mut(MULTI)) {
                let luts: Vec<&[u8]> = group.iter().map(|t| &t.lut[..]).collect();
                for b in t0..t1 {
                    let valid = if (b + 1) * BLOCK <= n {
                        u32::MAX
                    } else {
                        (1u32 << (n - b * BLOCK)) - 1
                    };
                    let mask = self.allowed.map_or(valid, |a| block_bits(a, b) & valid);
                    if mask == 0 {
                        continue;
                    }
                    let block = &codes_all[b * bb..(b + 1) * bb];
                    let slots = b * BLOCK..((b + 1) * BLOCK).min(n);
                    let scales = &ix.scales[slots.clone()];
                    // L2 ranks by 2⟨q, x⟩ − ‖x‖² (the constant ‖q‖² is added back at the end).
                    let sq = if ix.metric == Metric::L2 {
                        &ix.sq_norms[slots]
                    } else {
                        &[][..]
                    };
                    if fast {
                        block_sums_multi(
                            self.level,
                            &ix.layout,
                            block,
                            &luts,
                            &mut sums[..group.len()],
                        );
                    }
                    for (i, (t, top)) in group.iter().zip(tops.iter_mut()).enumerate() {
                        let hits = if fast {
                            keys_from_sums(
                                self.level,
                                &sums[i],
                                t.delta,
                                t.base,
                                scales,
                                sq,
                                top.threshold(),
                                &mut keys,
                            )
                        } else {
                            self.estimate(t, block, mask, &mut codes, &mut est);
                            keys_from_estimates(
                                self.level,
                                &est,
                                scales,
                                sq,
                                top.threshold(),
                                &mut keys,
                            )
                        };
                        let mut m = mask & hits;
                        while m != 0 {
                            let v = m.trailing_zeros() as usize;
                            m &= m - 1;
                            top.push(Hit {
                                score: keys[v],
                                slot: b * BLOCK + v,
                            });
                        }
                    }
                }
            }
            t0 = t1;
        }
        tops
    }

    /// `f32`-table estimates of `⟨R q, c⟩` for the vectors of `block` selected by `mask`.
    fn estimate(
        &self,
        t: &QueryTables,
        block: &[u8],
        mask: u32,
        codes: &mut [u8],
        est: &mut [f32; BLOCK],
    ) {
        let layout = &self.index.layout;
        let mut m = mask;
        while m != 0 {
            let v = m.trailing_zeros() as usize;
            m &= m - 1;
            est[v] = match *layout {
                Layout::Rows { row_bytes, bits } => {
                    unpack_row(&block[v * row_bytes..(v + 1) * row_bytes], bits, codes);
                    kernels::lut_sum(self.level, &t.float, 1 << bits, codes)
                }
                _ => t.exact_score(layout, block, v),
            };
        }
    }
}
