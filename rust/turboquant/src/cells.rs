//! A uniform cell index over a small codebook's boundaries: encoding in O(1) table lookups.
//!
//! A code is the number of boundaries strictly below the value `y`. Instead of searching the
//! boundaries, `y` is mapped to one of [`CELLS`] equal cells, `g = clamp(⌊(y − origin)·inv_width⌋,
//! 0, CELLS − 1)` (the first and last cell extend to ∓∞). The cells are laid out so that each
//! holds at most one boundary, and no boundary lies within [`MARGIN`] of a cell width of a cell
//! edge. Then `code = below[g] + (inside[g] < y)`, with `below[g]` the number of boundaries
//! below cell `g` and `inside[g]` its boundary (`+∞` if none).
//!
//! That equals the exact count for every `y`, even when rounding puts `y` in a neighbouring
//! cell: that only happens within a few ulps of an edge, where no boundary is near, so both
//! cells give the same count. The SIMD encoder in [`crate::simd::lanes`] does these two lookups
//! with in-register permutes; this module builds the tables and holds the scalar definition.

/// Number of cells (two registers of 16 `f32`).
pub const CELLS: usize = 32;
/// Least distance of a boundary from a cell edge, in cell widths.
pub const MARGIN: f32 = 1e-3;

/// The cell tables of one codebook (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct CellTable {
    /// `−origin · inv_width`: the cell coordinate is `y · inv_width + offset`.
    pub offset: f32,
    /// Cells per unit of `y`.
    pub inv_width: f32,
    /// Boundaries below each cell.
    pub below: [i32; CELLS],
    /// The boundary inside each cell, `+∞` if none.
    pub inside: [f32; CELLS],
}

impl CellTable {
    /// The tables for sorted `boundaries`, or `None` when no layout of [`CELLS`] cells keeps
    /// the boundaries one per cell with the margin (codebooks of more than 16 entries, or
    /// boundaries too unevenly spaced).
    pub fn new(boundaries: &[f32]) -> Option<CellTable> {
        let n = boundaries.len();
        if n == 0 || n > 16 || boundaries.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        let (lo, hi) = (boundaries[0], boundaries[n - 1]);
        // Widest cells first (fewest interior cells used), each tried at several offsets.
        for interior in (n.max(2)..=CELLS - 2).rev() {
            let width = if n == 1 {
                1.0
            } else {
                (hi - lo) / (interior - 1) as f32
            };
            for step in 1..20 {
                let origin = lo - width * (1.0 + step as f32 / 20.0);
                let inv_width = 1.0 / width;
                if let Some(t) = Self::layout(boundaries, origin, inv_width) {
                    return Some(t);
                }
            }
        }
        None
    }

    /// The tables for one layout, if every cell holds at most one boundary with the margin.
    fn layout(boundaries: &[f32], origin: f32, inv_width: f32) -> Option<CellTable> {
        let offset = -origin * inv_width;
        let mut below = [0i32; CELLS];
        let mut inside = [f32::INFINITY; CELLS];
        let mut count = [0usize; CELLS];
        for &t in boundaries {
            let u = t * inv_width + offset;
            if !(1.0..(CELLS - 1) as f32).contains(&u) || (u - u.round()).abs() < MARGIN {
                return None;
            }
            let g = u as usize;
            count[g] += 1;
            inside[g] = t;
        }
        if count.iter().any(|&c| c > 1) {
            return None;
        }
        let mut seen = 0;
        for g in 0..CELLS {
            below[g] = seen;
            seen += count[g] as i32;
        }
        Some(CellTable {
            offset,
            inv_width,
            below,
            inside,
        })
    }

    /// The cell of `y` (the computation the SIMD encoder performs per lane).
    #[inline(always)]
    pub fn cell(&self, y: f32) -> usize {
        y.mul_add(self.inv_width, self.offset)
            .clamp(0.0, (CELLS - 1) as f32) as usize
    }

    /// The code of `y`: the number of boundaries strictly below it.
    #[inline(always)]
    pub fn encode(&self, y: f32) -> u8 {
        let g = self.cell(y);
        (self.below[g] + i32::from(self.inside[g] < y)) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook;

    fn count_below(boundaries: &[f32], y: f32) -> u8 {
        boundaries.iter().filter(|&&t| t < y).count() as u8
    }

    #[test]
    fn exists_for_every_small_codebook() {
        for d in [2usize, 3, 8, 64, 96, 128, 384, 1536, 4096, 1 << 20] {
            for b in 1..=4u8 {
                let cb = codebook::get(d, b).unwrap();
                assert!(CellTable::new(cb.boundaries()).is_some(), "d={d} b={b}");
            }
        }
    }

    #[test]
    fn equals_the_exact_count_everywhere() {
        for d in [2usize, 7, 128, 1536] {
            for b in 1..=4u8 {
                let cb = codebook::get(d, b).unwrap();
                let bnd = cb.boundaries();
                let t = CellTable::new(bnd).unwrap();
                // every boundary, its float neighbours, cell edges and a dense sweep
                let mut ys = vec![0.0f32, -0.0, 1.0, -1.0, 1e30, -1e30, f32::MIN_POSITIVE];
                for &v in bnd {
                    let mut u = v;
                    for _ in 0..4 {
                        u = f32::from_bits(u.to_bits() + 1);
                    }
                    for k in 0..9u32 {
                        ys.push(f32::from_bits(u.to_bits() - k));
                    }
                }
                for g in 0..=CELLS {
                    let edge = (g as f32 - t.offset) / t.inv_width;
                    for k in -3i32..=3 {
                        ys.push(f32::from_bits((edge.to_bits() as i32 + k) as u32));
                    }
                }
                let span = 4.0 / (d as f32).sqrt();
                ys.extend((0..20_001).map(|i| -span + 2.0 * span * i as f32 / 20_000.0));
                for y in ys {
                    assert_eq!(t.encode(y), count_below(bnd, y), "d={d} b={b} y={y}");
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_cannot_index() {
        assert!(CellTable::new(&[]).is_none());
        assert!(CellTable::new(&[0.0; 17]).is_none());
        assert!(CellTable::new(&[0.0, 0.0]).is_none());
        // a tight pair among wide gaps cannot be split by 32 equal cells
        assert!(CellTable::new(&[0.0, 1e-6, 100.0]).is_none());
        let cb = codebook::get(128, 5).unwrap();
        assert!(CellTable::new(cb.boundaries()).is_none());
    }
}
