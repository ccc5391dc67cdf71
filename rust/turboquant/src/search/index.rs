//! The flat index: append-only storage with stable ids, tombstones, and the exhaustive scan.

use super::center::{self, Center};
use super::fastscan::queries_per_pass;
use super::filter::{allowed_slots, Filter};
use super::ids::IdMap;
use super::layout::{Layout, QueryTables, BLOCK};
use super::scan::{Scan, StoredCodes};
use super::storage::Bytes;
use super::topk::{Hit, TopK};
use crate::error::{Error, Result};
use crate::parallel;
use crate::quantizer::{Mode, Quantizer, ScaleMode};
use crate::simd::{active_level, kernels, SimdLevel};
use half::f16;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

/// Id reported for an empty result position (fewer than `k` vectors matched).
pub const NO_ID: u64 = u64::MAX;
/// Largest id accepted (ids fit in a signed 64-bit integer).
pub const MAX_ID: u64 = i64::MAX as u64;
/// With re-ranking on, the scan keeps `RERANK_FACTOR · k` candidates for the exact re-score.
pub const RERANK_FACTOR: usize = 4;
/// For `b ≤ 4` (without re-ranking) the `u8`-table scan keeps `REFINE_FACTOR · k` candidates, re-scored with
/// the `f32` tables (recovers the table rounding; see `benches/RESULTS.md`).
pub const REFINE_FACTOR: usize = 2;
/// Values (rows × dim) quantized per step of an add: bounds the centred copy to 8 MiB.
const ADD_CHUNK_VALUES: usize = 1 << 21;
/// Searches of at most this many query × block pairs run on the calling thread.
const INLINE_BLOCKS: usize = 256;

/// Where a search runs (see [`Index::search_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exec {
    /// All on the calling thread.
    Inline,
    /// Up to one pass of queries: the calling thread and the pool share the blocks.
    Split,
    /// Handed off to the pool.
    Pool,
}

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
    /// Centre the vectors on the mean of the first batch added (see [`super::center`]);
    /// [`Index::set_center`] fixes a centre explicitly.
    pub center: bool,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            bits: 4,
            metric: Metric::InnerProduct,
            seed: 0,
            rerank: false,
            center: true,
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
    /// The centre `c` whose difference `x − c` is quantized.
    pub(super) center: Center,
    /// Per-slot exact term of the ranking key `scale · est + bias` (empty when it is zero):
    /// `⟨c, x − c⟩` for ip / cosine, `2⟨c, x − c⟩ − ‖x‖²` for L2 (which ranks by
    /// `2⟨q, x⟩ − ‖x‖²`; `‖q‖²` and the per-query terms are added to the reported scores).
    pub(super) biases: Vec<f32>,
    /// Per-slot fp16 originals, little-endian (re-ranking only).
    pub(super) originals: Bytes,
    /// Ids of the slots, tombstones.
    pub(super) ids: IdMap,
    pub(super) next_id: u64,
}

impl Index {
    /// An empty index of `dim`-vectors.
    pub fn new(dim: usize, options: IndexOptions) -> Result<Index> {
        let quantizer =
            Quantizer::new(dim, options.bits, Mode::Mse, ScaleMode::Proj, options.seed)?;
        let mut index = Index::empty(quantizer, options.metric, options.rerank);
        index.center = if options.center {
            Center::Auto
        } else {
            Center::Off
        };
        Ok(index)
    }

    pub(super) fn empty(quantizer: Quantizer, metric: Metric, rerank: bool) -> Index {
        Index {
            layout: Layout::new(quantizer.dim(), quantizer.bits()),
            quantizer,
            metric,
            rerank,
            codes: Bytes::default(),
            scales: Vec::new(),
            center: Center::Off,
            biases: Vec::new(),
            originals: Bytes::default(),
            ids: IdMap::default(),
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
        self.ids.len()
    }
    /// Whether no live vector is stored.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Whether the code blocks are read from a memory-mapped file.
    pub fn is_mapped(&self) -> bool {
        self.codes.is_mapped()
    }
    /// The centre the stored vectors are quantized against, once fixed.
    pub fn center(&self) -> Option<&[f32]> {
        self.center.vector()
    }

    /// Fixes the centre explicitly (before anything was added; see [`super::center`]).
    pub fn set_center(&mut self, c: &[f32]) -> Result<()> {
        if self.ids.slots() > 0 {
            return Err(Error::InvalidParameter(
                "the centre can only be set before the first add".into(),
            ));
        }
        self.center = Center::fixed(c, self.dim())?;
        Ok(())
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: u64) -> bool {
        self.ids.slot_of(id).is_some()
    }

    /// Bytes held by every buffer of the index (codes, scales, biases, centre, originals, ids,
    /// id map, tombstones), from their allocations.
    pub fn memory_bytes(&self) -> usize {
        self.codes.held_bytes()
            + self.originals.held_bytes()
            + 4 * (self.scales.capacity() + self.biases.capacity())
            + 4 * self.center.vector().map_or(0, <[f32]>::len)
            + self.ids.held_bytes()
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
            if self.contains(id) || !seen.insert(id) {
                return Err(Error::InvalidParameter(format!(
                    "id {id} is already in the index"
                )));
            }
        }
        if n == 0 {
            return Ok(());
        }
        // A mapped index is copied to memory first (checking the file), before anything changes.
        self.codes.to_mut()?;
        if self.rerank {
            self.originals.to_mut()?;
        }
        let normalized;
        let x = if self.metric == Metric::Cosine {
            normalized = normalize_rows(vectors, d);
            &normalized[..]
        } else {
            vectors
        };
        if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("vectors hold {bad}")));
        }
        if self.rerank {
            if let Some(big) = x.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
                // the fp16 original would be ±inf and every re-ranked score NaN or ±inf
                return Err(Error::InvalidParameter(format!(
                    "rerank keeps fp16 originals, which cannot hold {big} (|x| ≤ 65504): \
                     scale the vectors or use rerank=false"
                )));
            }
        }
        let first = self.ids.slots();
        if u32::try_from(first + n).is_err() {
            return Err(Error::InvalidParameter(
                "an index holds at most 2^32 vectors".into(),
            ));
        }
        let mut center = self.center.clone();
        if first == 0 {
            center.settle(x, d);
        }
        // Quantized in chunks (the centred copy stays small), committed once all succeeded.
        let (mut codes, mut scales, mut biases) = (Vec::new(), Vec::new(), Vec::new());
        let mut centered = Vec::new();
        for rows in x.chunks((ADD_CHUNK_VALUES / d).max(1) * d) {
            let input = match center.vector() {
                Some(c) => {
                    center::subtract_into(rows, c, &mut centered);
                    &centered[..]
                }
                None => rows,
            };
            let batch = self.quantizer.quantize(input)?;
            codes.extend_from_slice(&batch.codes);
            scales.extend_from_slice(&batch.scales);
            self.biases_of(center.vector(), rows, input, &mut biases);
        }
        if biases.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite(
                "a vector's squared norm (or its product with the centre) overflows float32".into(),
            ));
        }
        self.center = center;
        self.write_codes(first, &codes)?;
        self.scales.extend_from_slice(&scales);
        self.biases.extend_from_slice(&biases);
        if self.rerank {
            let o = self.originals.to_mut()?;
            o.reserve(2 * x.len());
            o.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()));
        }
        self.ids.push(ids);
        let max = ids.iter().copied().max().unwrap_or(0);
        self.next_id = self.next_id.max(max + 1);
        Ok(())
    }

    /// Appends to `out` the biases of rows `x` (quantized as `input`: `x − c` when centred on
    /// `c`); nothing when they are all zero (uncentred ip / cosine).
    fn biases_of(&self, c: Option<&[f32]>, x: &[f32], input: &[f32], out: &mut Vec<f32>) {
        let (d, level) = (self.dim(), active_level());
        let l2 = self.metric == Metric::L2;
        if c.is_none() && !l2 {
            return;
        }
        let bias = |(row, xc): (&[f32], &[f32])| {
            let norm = if l2 {
                kernels::sum_squares(level, row)
            } else {
                0.0
            };
            match c {
                Some(c) => (if l2 { 2.0 } else { 1.0 }) * kernels::dot(level, c, xc) - norm,
                None => -norm,
            }
        };
        parallel::install(|| {
            out.par_extend(
                x.par_chunks_exact(d)
                    .zip(input.par_chunks_exact(d))
                    .map(bias),
            )
        });
    }

    /// Writes canonical packed rows for slots `first..` into the blocked layout.
    fn write_codes(&mut self, first: usize, rows: &[u8]) -> Result<()> {
        let rb = self.quantizer.code_bytes();
        let bb = self.layout.block_bytes();
        let total = first + rows.len() / rb;
        let layout = self.layout;
        let codes = self.codes.to_mut()?;
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
        Ok(())
    }

    /// Fails with [`Error::Corrupt`] if the file the codes are mapped from changed on disk
    /// (see [`super::storage`]); nothing to check for an index in memory.
    pub fn verify_mapping(&self) -> Result<()> {
        self.codes.verify()?;
        self.originals.verify()
    }

    /// Removes the given ids (unknown ids are ignored) and returns how many were removed.
    /// O(1) per id: the slot is tombstoned and skipped by every later search.
    pub fn remove(&mut self, ids: &[u64]) -> usize {
        ids.iter().filter(|&&id| self.ids.remove(id)).count()
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

    /// The `params.k` best vectors for each row-major query. `k` is capped by the number of
    /// live vectors: the results have `min(k, len())` columns (positions a filter leaves
    /// without a match hold [`NO_ID`]).
    pub fn search_with(&self, queries: &[f32], params: &SearchParams<'_>) -> Result<SearchResults> {
        let nq = self.rows(queries.len(), "queries")?;
        if let Some(bad) = queries.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("query holds {bad}")));
        }
        self.verify_mapping()?;
        // More results than live vectors cannot exist: `k` is capped before anything is
        // allocated (a huge `k` costs nothing).
        let capped;
        let params = if params.k > self.len() {
            capped = SearchParams {
                k: self.len(),
                ..*params
            };
            &capped
        } else {
            params
        };
        // Results and candidate heaps are sized by nq × k: refuse what cannot be allocated
        // (an error, where an allocation failure would abort the process).
        let k = params.k;
        let keep = k
            .saturating_mul(RERANK_FACTOR.max(REFINE_FACTOR))
            .min(self.ids.slots());
        let need = nq.saturating_mul(k).saturating_mul(12).saturating_add(
            nq.saturating_mul(keep)
                .saturating_mul(2 * std::mem::size_of::<Hit>()),
        );
        if need > 1 << 30 {
            let mut probe: Vec<u8> = Vec::new();
            probe.try_reserve_exact(need).map_err(|_| {
                Error::InvalidParameter(format!(
                    "{nq} queries with k = {k} need {need} bytes of results and candidates, \
                     more than can be allocated: search fewer queries at a time or a smaller k"
                ))
            })?;
        }
        // A hand-off to the pool costs tens of microseconds: small searches (and a one-thread
        // setting) run on the calling thread; fewer than two queries per thread (and at most
        // one kernel pass: 8 int8 or 6 table queries) are scanned by the calling thread and
        // the pool together, block chunks shared (measured with 2 threads, 4 bits: 2 queries
        // 0.31 → 0.23 ms, 3 queries 0.42 → 0.32 ms; at 8 queries the caller's serial tables
        // and re-scoring made it slower, 0.74 → 0.89 ms); a larger batch hands off once and
        // splits its queries.
        let (blocks, threads) = (self.ids.slots().div_ceil(BLOCK), parallel::num_threads());
        let exec = if threads <= 1 || nq.saturating_mul(blocks) <= INLINE_BLOCKS {
            Exec::Inline
        } else if nq < 2 * threads && nq <= queries_per_pass(&self.layout) {
            Exec::Split
        } else {
            Exec::Pool
        };
        Ok(match exec {
            Exec::Pool => parallel::install(|| self.run_search(queries, nq, params, exec)),
            _ => self.run_search(queries, nq, params, exec),
        })
    }

    /// [`Index::search_with`] on validated input, run as `exec` says.
    fn run_search(
        &self,
        queries: &[f32],
        nq: usize,
        params: &SearchParams<'_>,
        exec: Exec,
    ) -> SearchResults {
        let inline = exec != Exec::Pool;
        let d = self.dim();
        let k = params.k;
        let n = self.ids.slots();
        let allowed = allowed_slots(&params.filter, &self.ids);
        // Stages: with re-ranking, the scan keeps RERANK_FACTOR·k for the fp16 originals;
        // otherwise the u8-table scan keeps REFINE_FACTOR·k, re-scored with the f32 tables.
        let level = params.level;
        let refine = self.layout.group_bits() > 0 && !params.float_tables && !self.rerank;
        let keep = if self.rerank {
            k.saturating_mul(RERANK_FACTOR)
        } else if refine {
            k.saturating_mul(REFINE_FACTOR)
        } else {
            k
        }
        .min(n);
        let queries: Cow<'_, [f32]> = if self.metric == Metric::Cosine {
            Cow::Owned(normalize_rows(queries, d))
        } else {
            Cow::Borrowed(queries)
        };
        // The codes score `q − c`, doubled for L2 (keys `2⟨q, x⟩ − ‖x‖²`); `⟨q, c⟩` is added back.
        let l2 = self.metric == Metric::L2;
        let (scored, offsets): (Cow<'_, [f32]>, Vec<f32>) = match self.center.vector() {
            Some(c) => {
                let mut qc = center::subtract(&queries, c);
                if l2 {
                    qc.iter_mut().for_each(|v| *v *= 2.0);
                }
                let offsets = queries
                    .chunks_exact(d)
                    .map(|q| kernels::dot(level, q, c))
                    .collect();
                (Cow::Owned(qc), offsets)
            }
            None if l2 => (
                Cow::Owned(queries.iter().map(|v| 2.0 * v).collect()),
                vec![0.0; nq],
            ),
            None => (Cow::Borrowed(&queries[..]), vec![0.0; nq]),
        };
        let tables = self.query_tables(&scored, level, inline);
        let scan = Scan {
            stored: self.stored_codes(),
            tables: &tables,
            allowed: allowed.as_deref(),
            level,
            float_tables: params.float_tables,
            keep,
        };
        let nblocks = n.div_ceil(BLOCK);
        let merged = match exec {
            Exec::Inline => {
                let mut tops = scan.tops(nq);
                scan.run(0..nq, 0..nblocks, &mut tops);
                tops
            }
            Exec::Split => split_scan(&scan, nq, nblocks),
            Exec::Pool => pool_scan(&scan, nq, nblocks),
        };
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
        let finish = |(qi, top): (usize, TopK)| {
            let mut hits = top.into_sorted();
            if refine {
                hits = self.refine_hits(&tables[qi], hits, k);
            }
            if self.rerank {
                hits = self.rerank_hits(level, &queries[qi * d..(qi + 1) * d], hits, k);
            }
            hits
        };
        let finished: Vec<Vec<Hit>> = if inline {
            merged.into_iter().enumerate().map(finish).collect()
        } else {
            merged.into_par_iter().enumerate().map(finish).collect()
        };
        for (qi, hits) in finished.into_iter().enumerate() {
            let qn = if self.metric == Metric::L2 {
                kernels::sum_squares(level, &queries[qi * d..(qi + 1) * d])
            } else {
                0.0
            };
            let offset = offsets[qi];
            for (j, h) in hits.iter().take(k).enumerate() {
                out.ids[qi * k + j] = self.ids.id_of(h.slot);
                out.scores[qi * k + j] = match (self.metric, self.rerank) {
                    (Metric::L2, true) => -h.score,
                    (Metric::L2, false) => (qn - h.score - 2.0 * offset).max(0.0),
                    (_, true) => h.score,
                    (_, false) => h.score + offset,
                };
            }
        }
        out
    }

    /// The read-only view of the stored codes that a scan reads.
    fn stored_codes(&self) -> StoredCodes<'_> {
        StoredCodes {
            layout: &self.layout,
            codes: self.codes.as_slice(),
            scales: &self.scales,
            biases: &self.biases,
            slots: self.ids.slots(),
            dim: self.quantizer.dim(),
            centroids: self.quantizer.codebook().centroids(),
            bits: self.quantizer.bits(),
        }
    }

    /// Lookup tables of each (row-major) query, rotated once (inside the thread pool).
    fn query_tables(&self, queries: &[f32], level: SimdLevel, inline: bool) -> Vec<QueryTables> {
        let q = &self.quantizer;
        let one = |query: &[f32]| {
            let mut rq = query.to_vec();
            q.rotation().apply_at(level, &mut rq);
            QueryTables::new(level, &self.layout, rq, q.codebook().centroids(), q.bits())
        };
        if inline || queries.len() <= self.dim() {
            return queries.chunks_exact(self.dim()).map(one).collect();
        }
        queries.par_chunks_exact(self.dim()).map(one).collect()
    }

    fn rows(&self, len: usize, what: &str) -> Result<usize> {
        let d = self.dim();
        if !len.is_multiple_of(d) {
            return Err(Error::ShapeMismatch(format!(
                "{what} hold {len} values, not a whole number of vectors of dim {d}"
            )));
        }
        Ok(len / d)
    }
}

/// Blocks a worker of a small search ([`Exec::Split`]) takes at a time.
const SPLIT_CHUNK_BLOCKS: usize = 32;

/// The scan of `nq` queries (one kernel pass) on the calling thread and the pool's threads at
/// once: each takes [`SPLIT_CHUNK_BLOCKS`] blocks at a time from a shared counter, so a pool
/// thread that wakes late (tens of microseconds from sleep) or a core busy with other work
/// only takes fewer chunks instead of holding up a fixed share.
fn split_scan(scan: &Scan<'_>, nq: usize, nblocks: usize) -> Vec<TopK> {
    let chunks = nblocks.div_ceil(SPLIT_CHUNK_BLOCKS);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut tops = scan.tops(nq);
        loop {
            let c = next.fetch_add(1, AtomicOrdering::Relaxed);
            if c >= chunks {
                return tops;
            }
            let blocks = c * SPLIT_CHUNK_BLOCKS..((c + 1) * SPLIT_CHUNK_BLOCKS).min(nblocks);
            scan.run(0..nq, blocks, &mut tops);
        }
    };
    let helpers = parallel::num_threads().saturating_sub(1).min(chunks);
    let mut parts: Vec<Vec<TopK>> = vec![Vec::new(); helpers];
    let mut tops = parallel::in_place_scope(|s| {
        for slot in parts.iter_mut() {
            s.spawn(|_| *slot = work());
        }
        work()
    });
    for part in parts {
        for (mine, top) in tops.iter_mut().zip(part) {
            mine.merge(top);
        }
    }
    tops
}

/// A batch's scan in the pool: the queries split evenly across the threads and, when there
/// are fewer queries than threads, the blocks too.
fn pool_scan(scan: &Scan<'_>, nq: usize, nblocks: usize) -> Vec<TopK> {
    let threads = parallel::num_threads().max(1);
    let q_chunk = nq.div_ceil(threads).max(1);
    let b_parts = threads
        .div_ceil(nq.div_ceil(q_chunk))
        .clamp(1, nblocks.max(1));
    let b_chunk = nblocks.div_ceil(b_parts).max(1);
    let tasks: Vec<(usize, usize)> = (0..nq.div_ceil(q_chunk))
        .flat_map(|qc| (0..b_parts).map(move |bp| (qc, bp)))
        .collect();
    let parts: Vec<Vec<TopK>> = tasks
        .par_iter()
        .map(|&(qc, bp)| {
            let qs = qc * q_chunk..((qc + 1) * q_chunk).min(nq);
            let bs = (bp * b_chunk).min(nblocks)..((bp + 1) * b_chunk).min(nblocks);
            let mut tops = scan.tops(qs.len());
            scan.run(qs, bs, &mut tops);
            tops
        })
        .collect();
    let mut merged = scan.tops(nq);
    for (&(qc, _), part) in tasks.iter().zip(parts) {
        for (i, top) in part.into_iter().enumerate() {
            merged[qc * q_chunk + i].merge(top);
        }
    }
    merged
}

/// Rows scaled to unit norm (zero rows stay zero).
fn normalize_rows(x: &[f32], d: usize) -> Vec<f32> {
    let level = active_level();
    let mut out = x.to_vec();
    for row in out.chunks_exact_mut(d) {
        let nsq = kernels::sum_squares(level, row);
        if (1e-30..=1e30).contains(&nsq) {
            let inv = 1.0 / nsq.sqrt();
            row.iter_mut().for_each(|v| *v *= inv);
        } else {
            // tiny (1e-25) and huge (1e20) norms, whose squares leave the f32 range
            let n = crate::quantizer::robust_norm(level, row);
            if n > 0.0 && n.is_finite() {
                row.iter_mut().for_each(|v| *v = (f64::from(*v) / n) as f32);
            }
        }
    }
    out
}
