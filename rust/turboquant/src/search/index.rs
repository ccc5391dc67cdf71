//! The flat index: append-only storage with stable ids, tombstones, and the exhaustive scan.

use super::fastscan::block_sums;
use super::filter::{allowed_slots, block_bits, Filter, SlotBits};
use super::layout::{Layout, QueryTables, BLOCK};
use super::score::{dequantize_sums, keys_at_least};
use super::storage::Bytes;
use super::topk::{Hit, TopK};
use crate::error::{Error, Result};
use crate::packing::unpack_row;
use crate::parallel;
use crate::quantizer::{Mode, Quantizer, ScaleMode};
use crate::simd::{active_level, kernels, SimdLevel};
use half::f16;
use rayon::prelude::*;
use std::collections::HashMap;

/// Id reported for an empty result position (fewer than `k` vectors matched).
pub const NO_ID: u64 = u64::MAX;
/// Largest id accepted (ids fit in a signed 64-bit integer).
pub const MAX_ID: u64 = i64::MAX as u64;
/// With re-ranking on, the scan keeps `RERANK_FACTOR · k` candidates for the exact re-score.
pub const RERANK_FACTOR: usize = 4;
/// Blocks scanned per query before moving to the next query of a tile (cache blocking).
const TILE_BLOCKS: usize = 16;

/// Similarity of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Inner product (higher is better).
    InnerProduct,
    /// Cosine similarity: vectors and queries are normalized (higher is better).
    Cosine,
    /// Squared Euclidean distance `‖q‖² + ‖x‖² − 2⟨q, x⟩` with stored `‖x‖²` (lower is better).
    L2,
}

impl Metric {
    /// Name used in Python and in files: `"ip"`, `"cosine"` or `"l2"`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::InnerProduct => "ip",
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
        }
    }
    /// Parses a [`Metric::name`].
    pub fn parse(s: &str) -> Result<Metric> {
        match s {
            "ip" => Ok(Metric::InnerProduct),
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            _ => Err(Error::InvalidParameter(format!(
                "metric must be 'ip', 'cosine' or 'l2', got {s:?}"
            ))),
        }
    }
}

/// Parameters of a new [`Index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexOptions {
    /// Bits per coordinate, 1..=8 (fast-scan shuffles for ≤ 4).
    pub bits: u8,
    /// Similarity.
    pub metric: Metric,
    /// Rotation seed.
    pub seed: u64,
    /// Keep fp16 originals and re-score the top `RERANK_FACTOR · k` candidates exactly.
    pub rerank: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            bits: 4,
            metric: Metric::InnerProduct,
            seed: 0,
            rerank: false,
        }
    }
}

/// How one search runs.
#[derive(Debug, Clone, Copy)]
pub struct SearchParams<'a> {
    /// Results per query.
    pub k: usize,
    /// Allowed vectors.
    pub filter: Filter<'a>,
    /// SIMD level of the scan (clamped to the CPU's).
    pub level: SimdLevel,
    /// Score every vector with the `f32` tables instead of the `u8` fast-scan tables
    /// (slow reference scan, for measurements and tests).
    pub float_tables: bool,
}

impl Default for SearchParams<'_> {
    fn default() -> Self {
        SearchParams {
            k: 10,
            filter: Filter::All,
            level: active_level(),
            float_tables: false,
        }
    }
}

/// Results of a batch search: row-major `nq × k`, best first. Empty positions hold
/// [`NO_ID`] and a score of `−∞` (`+∞` for L2).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    /// Number of queries.
    pub nq: usize,
    /// Results per query.
    pub k: usize,
    /// Scores (inner product, cosine, or squared L2 distance).
    pub scores: Vec<f32>,
    /// Ids.
    pub ids: Vec<u64>,
}

/// A flat (exhaustive) vector index over TurboQuant codes.
///
/// Vectors are appended with stable 64-bit ids and removed in O(1) (tombstones). Every search
/// scores all live codes (no lossy shortlist): each query is rotated once, and codes are
/// scored by lookup tables, in-register shuffles for ≤ 4 bits. `&self` search is thread-safe.
///
/// ```
/// use turboquant::search::{Filter, Index, IndexOptions, Metric};
/// let dim = 64;
/// let mut index = Index::new(dim, IndexOptions { bits: 4, metric: Metric::Cosine, ..Default::default() })?;
/// let data: Vec<f32> = (0..100 * dim).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
/// let ids = index.add(&data)?;
/// assert_eq!(ids, (0..100).collect::<Vec<u64>>());
/// let hits = index.search(&data[..dim], 3, &Filter::All)?;
/// assert_eq!(hits.ids[0], 0);
/// index.remove(&[0]);
/// let hits = index.search(&data[..dim], 3, &Filter::All)?;
/// assert_ne!(hits.ids[0], 0);
/// # Ok::<(), turboquant::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Index {
    pub(super) quantizer: Quantizer,
    pub(super) metric: Metric,
    pub(super) rerank: bool,
    pub(super) layout: Layout,
    /// Blocks of codes in `layout`.
    pub(super) codes: Bytes,
    /// Per-slot stored scale (`ScaleMode::Proj`).
    pub(super) scales: Vec<f32>,
    /// Per-slot `‖x‖²` (L2 only).
    pub(super) sq_norms: Vec<f32>,
    /// Per-slot fp16 originals, little-endian (re-ranking only).
    pub(super) originals: Bytes,
    /// Per-slot id.
    pub(super) ids: Vec<u64>,
    /// Live id → slot.
    pub(super) slots: HashMap<u64, u32>,
    /// Tombstone bits per slot.
    pub(super) dead: SlotBits,
    pub(super) next_id: u64,
}

impl Index {
    /// An empty index of `dim`-vectors.
    pub fn new(dim: usize, options: IndexOptions) -> Result<Index> {
        let quantizer =
            Quantizer::new(dim, options.bits, Mode::Mse, ScaleMode::Proj, options.seed)?;
        Ok(Index::empty(quantizer, options.metric, options.rerank))
    }

    pub(super) fn empty(quantizer: Quantizer, metric: Metric, rerank: bool) -> Index {
        Index {
            layout: Layout::new(quantizer.dim(), quantizer.bits()),
            quantizer,
            metric,
            rerank,
            codes: Bytes::default(),
            scales: Vec::new(),
            sq_norms: Vec::new(),
            originals: Bytes::default(),
            ids: Vec::new(),
            slots: HashMap::new(),
            dead: Vec::new(),
            next_id: 0,
        }
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.quantizer.dim()
    }
    /// Bits per coordinate.
    pub fn bits(&self) -> u8 {
        self.quantizer.bits()
    }
    /// The similarity.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Rotation seed.
    pub fn seed(&self) -> u64 {
        self.quantizer.seed()
    }
    /// Whether fp16 originals are kept for exact re-ranking.
    pub fn rerank(&self) -> bool {
        self.rerank
    }
    /// Live (not removed) vectors.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Whether no live vector is stored.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Whether the code blocks are read from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        self.codes.is_mapped()
    }
    /// Whether `id` is live.
    pub fn contains(&self, id: u64) -> bool {
        self.slots.contains_key(&id)
    }

    /// Bytes held by every buffer of the index (codes, scales, norms, originals, ids, id map,
    /// tombstones), from their allocations.
    pub fn memory_bytes(&self) -> usize {
        let map_buckets = if self.slots.capacity() == 0 {
            0
        } else {
            (self.slots.capacity() * 8 / 7).next_power_of_two()
        };
        self.codes.held_bytes()
            + self.originals.held_bytes()
            + 4 * (self.scales.capacity() + self.sq_norms.capacity())
            + 8 * (self.ids.capacity() + self.dead.capacity())
            + map_buckets * (std::mem::size_of::<(u64, u32)>() + 1)
    }

    /// Appends row-major vectors with automatic ids (one past the largest id so far) and
    /// returns their ids.
    pub fn add(&mut self, vectors: &[f32]) -> Result<Vec<u64>> {
        let n = self.rows(vectors.len(), "vectors")?;
        let ids: Vec<u64> = (0..n as u64).map(|i| self.next_id + i).collect();
        if ids.last().is_some_and(|&last| last > MAX_ID) {
            return Err(Error::InvalidParameter("automatic ids exhausted".into()));
        }
        self.add_with_ids(vectors, &ids)?;
        Ok(ids)
    }

    /// Appends row-major vectors under the given ids (each ≤ [`MAX_ID`], not already live).
    pub fn add_with_ids(&mut self, vectors: &[f32], ids: &[u64]) -> Result<()> {
        let d = self.dim();
        let n = self.rows(vectors.len(), "vectors")?;
        if ids.len() != n {
            return Err(Error::ShapeMismatch(format!(
                "{} ids for {n} vectors",
                ids.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for &id in ids {
            if id > MAX_ID {
                return Err(Error::InvalidParameter(format!("id {id} exceeds {MAX_ID}")));
            }
            if self.slots.contains_key(&id) || !seen.insert(id) {
                return Err(Error::InvalidParameter(format!(
                    "id {id} is already in the index"
                )));
            }
        }
        if n == 0 {
            return Ok(());
        }
        let normalized;
        let x = if self.metric == Metric::Cosine {
            normalized = normalize_rows(vectors, d);
            &normalized[..]
        } else {
            vectors
        };
        let batch = self.quantizer.quantize(x)?;
        let first = self.ids.len();
        let total = first + n;
        if u32::try_from(total).is_err() {
            return Err(Error::InvalidParameter(
                "an index holds at most 2^32 vectors".into(),
            ));
        }
        self.write_codes(first, &batch.codes);
        self.scales.extend_from_slice(&batch.scales);
        if self.metric == Metric::L2 {
            let level = active_level();
            self.sq_norms
                .extend(x.chunks_exact(d).map(|r| kernels::sum_squares(level, r)));
        }
        if self.rerank {
            let o = self.originals.to_mut();
            o.reserve(2 * x.len());
            o.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
        }
        self.slots.reserve(n);
        for (i, &id) in ids.iter().enumerate() {
            self.slots.insert(id, (first + i) as u32);
        }
        self.ids.extend_from_slice(ids);
        self.dead.resize(total.div_ceil(64), 0);
        let max = ids.iter().copied().max().unwrap_or(0);
        self.next_id = self.next_id.max(max + 1);
        Ok(())
    }

    /// Writes canonical packed rows for slots `first..` into the blocked layout.
    fn write_codes(&mut self, first: usize, rows: &[u8]) {
        let rb = self.quantizer.code_bytes();
        let bb = self.layout.block_bytes();
        let total = first + rows.len() / rb;
        let layout = self.layout;
        let codes = self.codes.to_mut();
        codes.resize(total.div_ceil(BLOCK) * bb, 0);
        let first_block = first / BLOCK;
        parallel::install(|| {
            codes[first_block * bb..]
                .par_chunks_mut(bb)
                .enumerate()
                .for_each(|(i, block)| {
                    let b = first_block + i;
                    for slot in (b * BLOCK).max(first)..((b + 1) * BLOCK).min(total) {
                        let row = &rows[(slot - first) * rb..(slot - first + 1) * rb];
                        layout.put(block, slot % BLOCK, row);
                    }
                })
        });
    }

    /// Removes the given ids (unknown ids are ignored) and returns how many were removed.
    /// O(1) per id: the slot is tombstoned and skipped by every later search.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        let mut removed = 0;
        for id in ids {
            if let Some(s) = self.slots.remove(id) {
                self.dead[s as usize / 64] |= 1 << (s % 64);
                removed += 1;
            }
        }
        removed
    }

    /// The `k` best vectors for each row-major query, with the default parameters.
    pub fn search(&self, queries: &[f32], k: usize, filter: &Filter<'_>) -> Result<SearchResults> {
        self.search_with(
            queries,
            &SearchParams {
                k,
                filter: *filter,
                ..SearchParams::default()
            },
        )
    }

    /// The `params.k` best vectors for each row-major query.
    pub fn search_with(&self, queries: &[f32], params: &SearchParams<'_>) -> Result<SearchResults> {
        let d = self.dim();
        let nq = self.rows(queries.len(), "queries")?;
        if let Some(bad) = queries.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("query holds {bad}")));
        }
        let k = params.k;
        let n = self.ids.len();
        let allowed = allowed_slots(
            &params.filter,
            n,
            &self.ids,
            &self.slots,
            &self.dead,
            self.slots.len() < n,
        );
        let keep = if self.rerank {
            k.saturating_mul(RERANK_FACTOR)
        } else {
            k
        };
        let queries: Vec<f32> = if self.metric == Metric::Cosine {
            normalize_rows(queries, d)
        } else {
            queries.to_vec()
        };
        let scan = Scan {
            index: self,
            allowed: allowed.as_deref(),
            params,
            keep,
        };
        let nblocks = n.div_ceil(BLOCK);
        let threads = parallel::num_threads().max(1);
        let q_chunk = nq.div_ceil(4 * threads).max(1);
        let b_parts = (4 * threads)
            .div_ceil(nq.div_ceil(q_chunk))
            .clamp(1, nblocks.max(1));
        let b_chunk = nblocks.div_ceil(b_parts).max(1);
        let tasks: Vec<(usize, usize)> = (0..nq.div_ceil(q_chunk))
            .flat_map(|qc| (0..b_parts).map(move |bp| (qc, bp)))
            .collect();
        let parts: Vec<Vec<TopK>> = parallel::install(|| {
            tasks
                .par_iter()
                .map(|&(qc, bp)| {
                    let qs = qc * q_chunk..((qc + 1) * q_chunk).min(nq);
                    let bs = (bp * b_chunk).min(nblocks)..((bp + 1) * b_chunk).min(nblocks);
                    scan.run(&queries[qs.start * d..qs.end * d], bs)
                })
                .collect()
        });
        let mut merged: Vec<TopK> = (0..nq).map(|_| TopK::new(keep)).collect();
        for (&(qc, _), part) in tasks.iter().zip(parts) {
            for (i, top) in part.into_iter().enumerate() {
                merged[qc * q_chunk + i].merge(top);
            }
        }
        let worst = if self.metric == Metric::L2 {
            f32::INFINITY
        } else {
            f32::NEG_INFINITY
        };
        let mut out = SearchResults {
            nq,
            k,
            scores: vec![worst; nq * k],
            ids: vec![NO_ID; nq * k],
        };
        for (qi, top) in merged.into_iter().enumerate() {
            let q = &queries[qi * d..(qi + 1) * d];
            let mut hits = top.into_sorted();
            if self.rerank {
                hits = self.rerank_hits(q, hits, k);
            }
            let qn = if self.metric == Metric::L2 {
                kernels::sum_squares(active_level(), q)
            } else {
                0.0
            };
            for (j, h) in hits.iter().take(k).enumerate() {
                out.ids[qi * k + j] = self.ids[h.slot];
                out.scores[qi * k + j] = match (self.metric, self.rerank) {
                    (Metric::L2, true) => -h.score,
                    (Metric::L2, false) => (qn - h.score).max(0.0),
                    _ => h.score,
                };
            }
        }
        Ok(out)
    }

    /// Exact scores of the candidates from the fp16 originals; the best `k`, best first.
    /// Keys: `⟨q, x⟩` (ip, cosine on normalized rows) or `−‖q − x‖²` (L2).
    fn rerank_hits(&self, q: &[f32], hits: Vec<Hit>, k: usize) -> Vec<Hit> {
        let d = self.dim();
        let orig = self.originals.as_slice();
        let mut row = vec![0.0f32; d];
        let mut top = TopK::new(k);
        for h in hits {
            let bytes = &orig[2 * d * h.slot..2 * d * (h.slot + 1)];
            for (r, c) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *r = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
            let score = if self.metric == Metric::L2 {
                -row.iter()
                    .zip(q)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
            } else {
                kernels::dot(active_level(), q, &row)
            };
            top.push(Hit {
                score,
                slot: h.slot,
            });
        }
        top.into_sorted()
    }

    fn rows(&self, len: usize, what: &str) -> Result<usize> {
        let d = self.dim();
        if len % d != 0 {
            return Err(Error::ShapeMismatch(format!(
                "{what} hold {len} values, not a whole number of vectors of dim {d}"
            )));
        }
        Ok(len / d)
    }
}

/// Rows scaled to unit norm (zero rows stay zero).
fn normalize_rows(x: &[f32], d: usize) -> Vec<f32> {
    let level = active_level();
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(d) {
        let n = kernels::sum_squares(level, row).sqrt();
        if n > 0.0 {
            let inv = 1.0 / n;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
    out
}

/// One search's shared state: what each worker needs to scan a range of blocks.
struct Scan<'a> {
    index: &'a Index,
    allowed: Option<&'a [u64]>,
    params: &'a SearchParams<'a>,
    keep: usize,
}

impl Scan<'_> {
    /// Scans blocks `bs` for each query of `queries` (row-major); one [`TopK`] per query.
    fn run(&self, queries: &[f32], bs: std::ops::Range<usize>) -> Vec<TopK> {
        let ix = self.index;
        let (d, level) = (ix.dim(), self.params.level);
        let q = &ix.quantizer;
        let tables: Vec<QueryTables> = queries
            .chunks_exact(d)
            .map(|query| {
                let mut rq = query.to_vec();
                q.rotation().apply_at(level, &mut rq);
                QueryTables::new(&ix.layout, &rq, q.codebook().centroids(), q.bits())
            })
            .collect();
        let mut tops: Vec<TopK> = tables.iter().map(|_| TopK::new(self.keep)).collect();
        let mut est = [0.0f32; BLOCK];
        let mut keys = [0.0f32; BLOCK];
        let mut sums = [0u32; BLOCK];
        let mut codes = vec![0u8; d];
        let codes_all = ix.codes.as_slice();
        let bb = ix.layout.block_bytes();
        let n = ix.ids.len();
        let mut t0 = bs.start;
        while t0 < bs.end {
            let t1 = (t0 + TILE_BLOCKS).min(bs.end);
            for (t, top) in tables.iter().zip(tops.iter_mut()) {
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
                    self.estimate(t, block, mask, &mut sums, &mut codes, &mut est);
                    let slots = b * BLOCK..((b + 1) * BLOCK).min(n);
                    let sq = if ix.metric == Metric::L2 {
                        &ix.sq_norms[slots.clone()]
                    } else {
                        &[][..]
                    };
                    // L2 ranks by 2⟨q, x⟩ − ‖x‖² (the constant ‖q‖² is added back at the end).
                    let mut m = mask
                        & keys_at_least(
                            level,
                            &est,
                            &ix.scales[slots],
                            sq,
                            top.threshold(),
                            &mut keys,
                        );
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
            t0 = t1;
        }
        tops
    }

    /// Table estimates of `⟨R q, c⟩` for the vectors of `block` selected by `mask`.
    fn estimate(
        &self,
        t: &QueryTables,
        block: &[u8],
        mask: u32,
        sums: &mut [u32; BLOCK],
        codes: &mut [u8],
        est: &mut [f32; BLOCK],
    ) {
        let ix = self.index;
        let level = self.params.level;
        match ix.layout {
            Layout::Rows { row_bytes, bits } => {
                let k = 1usize << bits;
                let mut m = mask;
                while m != 0 {
                    let v = m.trailing_zeros() as usize;
                    m &= m - 1;
                    unpack_row(&block[v * row_bytes..(v + 1) * row_bytes], bits, codes);
                    est[v] = kernels::lut_sum(level, &t.float, k, codes);
                }
            }
            _ if self.params.float_tables => {
                let mut m = mask;
                while m != 0 {
                    let v = m.trailing_zeros() as usize;
                    m &= m - 1;
                    est[v] = t.exact_score(&ix.layout, block, v);
                }
            }
            _ => {
                block_sums(level, &ix.layout, block, &t.lut, sums);
                dequantize_sums(level, sums, t.delta, t.base, est);
            }
        }
    }
}
