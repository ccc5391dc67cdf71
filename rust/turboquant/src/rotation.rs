//! THE rotation: a seeded, structured orthogonal transform of `R^d`, `O(d log d)`, for any `d`.
//!
//! The coordinates are covered by Hadamard blocks of one power-of-two size `p`, in one of three
//! layouts chosen from `d` alone:
//!
//! - **single**: `d` is a power of two; one block, `p = d`.
//! - **tiled**: `d = m·p` with `m ≥ 3` odd and `p ≥` [`MIN_TILE_SPREAD`]`·m` (384 = 3·128,
//!   768, 1536 = 3·512, 3072, 1280 = 5·256, …); `m` disjoint blocks.
//! - **overlapping**: every other `d`; `p` is the largest power of two `≤ d`, a head block
//!   `[0, p)` and a tail block `[d−p, d)`.
//!
//! Round `r` of the single and tiled layouts:
//!
//! 1. tiled, `r ≥ 1`: permute all coordinates by a seeded random permutation (`x'[i] = x[π_r[i]]`);
//! 2. flip signs: `x[i] *= s_r[i]` with seeded random signs `s_r ∈ {±1}^d`;
//! 3. an orthonormal Walsh-Hadamard transform (`H_p / √p`, Sylvester order) of every block.
//!
//! Round `r` of the overlapping layout: flip signs, transform the head block, permute all
//! coordinates by `π_r`, transform the tail block.
//!
//! The rotation is [`ROUNDS`] (3) rounds, or [`LARGE_BLOCK_ROUNDS`] (2) when `p ≥ 256` or the
//! layout is tiled. Every step is orthogonal, so the rotation is; nothing is padded, so a
//! `d`-vector keeps exactly `d` coordinates. Three rounds make the coordinates of adversarial
//! inputs (one-hot, constant, sparse) follow the law of a random vector's for small blocks
//! (two do not: one-hot inputs at `d = 64`, 4 bits, lose 32 %: after two rounds a coordinate
//! is a sum of only 64 signs, and 15 % at `d = 128`); from `p = 256` two rounds measure within
//! the same bound, at 2/3 of the cost. The permutation is what makes non-powers of two safe:
//! without it the tail block receives a vector supported on exactly half of it and emits
//! duplicated values (one-hot inputs at `d = 1536` lost 19 %). In the tiled layout it spreads
//! the `p` coordinates a one-hot input reaches in the first round over all `m` blocks, each
//! receiving about `p/m`; from `p/m ≥ 40` two rounds measure within 3 % of random inputs
//! (`p/m = 13`, d = 320, lost 39 %), at a third fewer operations than the overlapping layout
//! (d = 1536: 2·3 transforms of 512 against 2·2 of 1024).
//!
//! Signs: round `r` uses `SplitMix64::new(seed, stream·16 + r).signs(d)`, bit `i` set → −1.
//! Permutations: round `r` draws a Fisher-Yates shuffle from `SplitMix64::new(seed,
//! stream·16 + 8 + r)`: for `i` from `d−1` down to 1, `j = ⌊next_u64 · (i+1) / 2^64⌋`, swap `i, j`.
//! Any other engine (a GPU kernel, another language) must implement this same definition.

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::simd::lanes::{self, Lanes};
use crate::simd::{kernels, SimdLevel};
use std::cell::RefCell;

/// Number of sign-flip + Hadamard rounds.
pub const ROUNDS: usize = 3;
/// Hadamard blocks at least this large need only [`LARGE_BLOCK_ROUNDS`] rounds.
pub const LARGE_BLOCK: usize = 256;
/// Rounds for blocks of [`LARGE_BLOCK`] or more, and for the tiled layout: a sum of ≥ 256
/// random signs is already close enough to Gaussian after two rounds (worst-case inputs
/// measured within 6 %; blocks of 128 measured 15 % worse, so smaller single or overlapping
/// blocks keep three rounds).
pub const LARGE_BLOCK_ROUNDS: usize = 2;
/// The tiled layout needs `p / m` (block size over block count) at least this large.
pub const MIN_TILE_SPREAD: usize = 40;

/// Hadamard blocks from this size on gather the tail block inside its transform (measured:
/// −6 % rotation time at d = 1536, +5-10 % at d = 384, where everything is in L1).
const FUSED_GATHER_BLOCK: usize = 1024;

/// How the coordinates are covered by Hadamard blocks (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLayout {
    /// `d` is a power of two: one block.
    Single,
    /// `d = m·p`: `m` disjoint blocks, a permutation before every round but the first.
    Tiled,
    /// A head and a tail block of the largest power of two `≤ d`, a permutation between them.
    Overlapping,
}

impl BlockLayout {
    /// The layout and block size for `dim ≥ 1`.
    fn for_dim(dim: usize) -> (BlockLayout, usize) {
        let tile = 1usize << dim.trailing_zeros();
        let count = dim / tile;
        if count == 1 {
            (BlockLayout::Single, dim)
        } else if count >= 3 && tile >= MIN_TILE_SPREAD * count {
            (BlockLayout::Tiled, tile)
        } else {
            (
                BlockLayout::Overlapping,
                1 << (usize::BITS - 1 - dim.leading_zeros()),
            )
        }
    }
}

/// A seeded structured orthogonal rotation of `R^dim`.
#[derive(Debug, Clone)]
pub struct Rotation {
    dim: usize,
    layout: BlockLayout,
    block: usize,
    scale: f32,
    /// Number of rounds: [`ROUNDS`] or [`LARGE_BLOCK_ROUNDS`].
    rounds: usize,
    /// `rounds × dim` signs, round-major.
    signs: Vec<f32>,
    /// `rounds × dim` gather indices, round-major; round 0's is absent (empty) in the tiled
    /// layout, and all are for a single block.
    perms: Vec<u32>,
    /// Overlapping layout only, `rounds × dim`: factors applied while gathering, the round's
    /// sign of the source coordinate when it lies outside the head block (those signs are not
    /// applied by the head transform), else 1.
    gather_signs: Vec<f32>,
}

thread_local! {
    static PERMUTE_SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A seeded uniform permutation of `0..n` (Fisher-Yates, see the module doc).
fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<u32> {
    let mut p: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        p.swap(i, j);
    }
    p
}

impl Rotation {
    /// The rotation of `R^dim` for `seed`; `stream` separates independent rotations of one seed
    /// (0: the quantizer's rotation, 1: the QJL projection).
    pub fn new(dim: usize, seed: u64, stream: u64) -> Result<Rotation> {
        if dim == 0 {
            return Err(Error::InvalidParameter("dim must be positive".into()));
        }
        let (layout, block) = BlockLayout::for_dim(dim);
        let rounds = if block >= LARGE_BLOCK || layout == BlockLayout::Tiled {
            LARGE_BLOCK_ROUNDS
        } else {
            ROUNDS
        };
        let mut signs = Vec::with_capacity(rounds * dim);
        for r in 0..rounds as u64 {
            signs.extend(SplitMix64::new(seed, stream * 16 + r).signs(dim));
        }
        let first_permuted = match layout {
            BlockLayout::Single => rounds,
            BlockLayout::Tiled => 1,
            BlockLayout::Overlapping => 0,
        };
        let mut perms = Vec::new();
        for r in first_permuted as u64..rounds as u64 {
            perms.extend(permutation(
                dim,
                &mut SplitMix64::new(seed, stream * 16 + 8 + r),
            ));
        }
        let gather_signs = if layout == BlockLayout::Overlapping {
            perms
                .iter()
                .enumerate()
                .map(|(k, &src)| {
                    let src = src as usize;
                    if src >= block {
                        signs[(k / dim) * dim + src]
                    } else {
                        1.0
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Rotation {
            dim,
            layout,
            block,
            scale: 1.0 / (block as f32).sqrt(),
            rounds,
            signs,
            perms,
            gather_signs,
        })
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of sign + Hadamard rounds.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The Hadamard block size `p`.
    pub fn block(&self) -> usize {
        self.block
    }

    /// How the coordinates are covered by blocks.
    pub fn layout(&self) -> BlockLayout {
        self.layout
    }

    /// The sign vectors, `rounds × dim`, round-major (for engines that re-implement the rotation).
    pub fn signs(&self) -> &[f32] {
        &self.signs
    }

    /// The permutations, round-major, `dim` each: every round's for the overlapping layout,
    /// rounds `1..` for the tiled one, none for a single block.
    pub fn permutations(&self) -> &[u32] {
        &self.perms
    }

    /// Round `r`'s signs.
    fn round_signs(&self, r: usize) -> &[f32] {
        &self.signs[r * self.dim..(r + 1) * self.dim]
    }

    /// Round `r`'s permutation (gather indices), if the round has one.
    fn round_perm(&self, r: usize) -> Option<&[u32]> {
        let slot = match self.layout {
            BlockLayout::Single => return None,
            BlockLayout::Tiled => r.checked_sub(1)?,
            BlockLayout::Overlapping => r,
        };
        Some(&self.perms[slot * self.dim..(slot + 1) * self.dim])
    }

    /// `x ← R x` in place (`x.len() == dim`), at the given SIMD level.
    pub fn apply_at(&self, level: SimdLevel, x: &mut [f32]) {
        debug_assert_eq!(x.len(), self.dim);
        let (d, p) = (self.dim, self.block);
        for r in 0..self.rounds {
            if self.layout == BlockLayout::Overlapping {
                kernels::mul_assign(level, x, self.round_signs(r));
                kernels::fwht_scaled(level, &mut x[..p], self.scale);
                self.permute(x, r, false);
                kernels::fwht_scaled(level, &mut x[d - p..], self.scale);
            } else {
                if r > 0 {
                    self.permute(x, r, false);
                }
                kernels::mul_assign(level, x, self.round_signs(r));
                for tile in x.chunks_exact_mut(p) {
                    kernels::fwht_scaled(level, tile, self.scale);
                }
            }
        }
    }

    /// `x ← Rᵀ x` in place (the inverse), at the given SIMD level.
    pub fn apply_inverse_at(&self, level: SimdLevel, x: &mut [f32]) {
        debug_assert_eq!(x.len(), self.dim);
        let (d, p) = (self.dim, self.block);
        for r in (0..self.rounds).rev() {
            if self.layout == BlockLayout::Overlapping {
                kernels::fwht_scaled(level, &mut x[d - p..], self.scale);
                self.permute(x, r, true);
                kernels::fwht_scaled(level, &mut x[..p], self.scale);
                kernels::mul_assign(level, x, self.round_signs(r));
            } else {
                for tile in x.chunks_exact_mut(p) {
                    kernels::fwht_scaled(level, tile, self.scale);
                }
                kernels::mul_assign(level, x, self.round_signs(r));
                if r > 0 {
                    self.permute(x, r, true);
                }
            }
        }
    }

    /// `R` applied to each lane of a coordinate-major block of vectors (`block.len() == dim`);
    /// bit-identical to [`Self::apply_at`] on each vector. The permutations gather into
    /// `spare` and swap the two buffers (no copies); `spare` is resized as needed.
    pub fn apply_lanes_at(&self, level: SimdLevel, block: &mut Vec<Lanes>, spare: &mut Vec<Lanes>) {
        debug_assert_eq!(block.len(), self.dim);
        let (d, p) = (self.dim, self.block);
        if self.layout != BlockLayout::Single {
            spare.resize(d, [0.0; crate::simd::kernels::LANES]);
        }
        for r in 0..self.rounds {
            let signs = self.round_signs(r);
            match (self.layout, self.round_perm(r)) {
                (BlockLayout::Overlapping, Some(perm)) => {
                    lanes::fwht_lanes(level, &mut block[..p], None, self.scale, &signs[..p], &[]);
                    // The gather also applies the signs of the coordinates outside the head
                    // block. For large blocks the tail transform gathers its own rows in its
                    // first pass (one trip less through L2); for small ones a separate gather
                    // is faster.
                    let f = &self.gather_signs[r * d..(r + 1) * d];
                    if p >= FUSED_GATHER_BLOCK {
                        let (head, tail) = spare.split_at_mut(d - p);
                        lanes::gather_lanes(level, block, &perm[..d - p], &f[..d - p], head);
                        let from = Some((&block[..], &perm[d - p..]));
                        lanes::fwht_lanes(level, tail, from, self.scale, &f[d - p..], &[]);
                        std::mem::swap(block, spare);
                    } else {
                        lanes::gather_lanes(level, block, perm, f, spare);
                        std::mem::swap(block, spare);
                        lanes::fwht_lanes(level, &mut block[d - p..], None, self.scale, &[], &[]);
                    }
                }
                (_, Some(perm)) => {
                    // Tiled: each block gathers its rows (and applies the signs) in its
                    // transform's first pass.
                    for (k, tile) in spare.chunks_exact_mut(p).enumerate() {
                        let rows = k * p..(k + 1) * p;
                        let from = Some((&block[..], &perm[rows.clone()]));
                        lanes::fwht_lanes(level, tile, from, self.scale, &signs[rows], &[]);
                    }
                    std::mem::swap(block, spare);
                }
                (_, None) => {
                    for (tile, s) in block.chunks_exact_mut(p).zip(signs.chunks_exact(p)) {
                        lanes::fwht_lanes(level, tile, None, self.scale, s, &[]);
                    }
                }
            }
        }
    }

    /// `Rᵀ` applied to each lane of a coordinate-major block; the inverse of
    /// [`Self::apply_lanes_at`], bit-identical to [`Self::apply_inverse_at`] per vector.
    pub fn apply_inverse_lanes_at(
        &self,
        level: SimdLevel,
        block: &mut Vec<Lanes>,
        spare: &mut Vec<Lanes>,
    ) {
        debug_assert_eq!(block.len(), self.dim);
        let (d, p) = (self.dim, self.block);
        if self.layout != BlockLayout::Single {
            spare.resize(d, [0.0; crate::simd::kernels::LANES]);
        }
        for r in (0..self.rounds).rev() {
            let signs = self.round_signs(r);
            match (self.layout, self.round_perm(r)) {
                (BlockLayout::Overlapping, Some(perm)) => {
                    lanes::fwht_lanes(level, &mut block[d - p..], None, self.scale, &[], &[]);
                    let f = &self.gather_signs[r * d..(r + 1) * d];
                    lanes::scatter_lanes(level, block, perm, f, spare);
                    std::mem::swap(block, spare);
                    lanes::fwht_lanes(level, &mut block[..p], None, self.scale, &[], &signs[..p]);
                }
                (_, Some(perm)) => {
                    // Tiled: the scatter applies the signs.
                    for tile in block.chunks_exact_mut(p) {
                        lanes::fwht_lanes(level, tile, None, self.scale, &[], &[]);
                    }
                    lanes::scatter_lanes(level, block, perm, signs, spare);
                    std::mem::swap(block, spare);
                }
                (_, None) => {
                    for (tile, s) in block.chunks_exact_mut(p).zip(signs.chunks_exact(p)) {
                        lanes::fwht_lanes(level, tile, None, self.scale, &[], s);
                    }
                }
            }
        }
    }

    /// Applies round `r`'s permutation (gather) or its inverse (scatter) in place.
    fn permute(&self, x: &mut [f32], r: usize, inverse: bool) {
        let Some(perm) = self.round_perm(r) else {
            return;
        };
        PERMUTE_SCRATCH.with(|cell| {
            let mut tmp = cell.borrow_mut();
            tmp.clear();
            tmp.extend_from_slice(x);
            if inverse {
                for (&src, &v) in perm.iter().zip(tmp.iter()) {
                    x[src as usize] = v;
                }
            } else {
                for (dst, &src) in x.iter_mut().zip(perm) {
                    *dst = tmp[src as usize];
                }
            }
        });
    }

    /// `x ← R x` at the active SIMD level.
    pub fn apply(&self, x: &mut [f32]) {
        self.apply_at(crate::simd::active_level(), x)
    }

    /// `x ← Rᵀ x` at the active SIMD level.
    pub fn apply_inverse(&self, x: &mut [f32]) {
        self.apply_inverse_at(crate::simd::active_level(), x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_for_many_dims() {
        for d in [1usize, 2, 3, 5, 8, 96, 100, 128, 320, 384, 1000, 1280, 1536] {
            let rot = Rotation::new(d, 42, 0).unwrap();
            let x: Vec<f32> = (0..d).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
            let mut y = x.clone();
            rot.apply(&mut y);
            let nx: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
            let ny: f64 = y.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((nx - ny).abs() / nx < 1e-5, "d={d} norm {nx} -> {ny}");
            rot.apply_inverse(&mut y);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() < 1e-3, "d={d}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn layouts() {
        let layout = |d| BlockLayout::for_dim(d);
        assert_eq!(layout(128), (BlockLayout::Single, 128));
        assert_eq!(layout(384), (BlockLayout::Tiled, 128));
        assert_eq!(layout(768), (BlockLayout::Tiled, 256));
        assert_eq!(layout(1536), (BlockLayout::Tiled, 512));
        assert_eq!(layout(1280), (BlockLayout::Tiled, 256));
        // too few coordinates per tile after the first round: overlapping blocks
        assert_eq!(layout(320), (BlockLayout::Overlapping, 256));
        assert_eq!(layout(96), (BlockLayout::Overlapping, 64));
        assert_eq!(layout(1000), (BlockLayout::Overlapping, 512));
        assert_eq!(layout(2), (BlockLayout::Single, 2));
        assert_eq!(
            Rotation::new(1536, 0, 0).unwrap().rounds(),
            LARGE_BLOCK_ROUNDS
        );
        assert_eq!(Rotation::new(384, 0, 0).unwrap().permutations().len(), 384);
    }

    #[test]
    fn one_hot_is_spread() {
        let d = 384;
        let rot = Rotation::new(d, 1, 0).unwrap();
        let mut x = vec![0.0f32; d];
        x[5] = 1.0;
        rot.apply(&mut x);
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(max < 5.0 / (d as f32).sqrt(), "max coordinate {max}");
        let distinct: std::collections::BTreeSet<u32> =
            x.iter().map(|v| v.abs().to_bits()).collect();
        // tiled (3 · 128): a coordinate is a sum of ~43 signs over 128, so ~2·43 levels
        assert!(
            distinct.len() > d / 8,
            "coordinates not spread: {}",
            distinct.len()
        );
    }
}
