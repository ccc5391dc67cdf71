//! Softmax attention read from the packed codes of a [`KvStore`] (see the [module doc](super)).
//!
//! Work is split into tasks of (stream, up to [`GROUP_ROWS`] query rows, a chunk of tokens), run
//! in parallel; each reads a block of tokens once for all of its rows: parts of at most 4 bits
//! straight from the packed bytes (keys as transposed 32-bit words, scored [`DOT_ROWS`] rows at
//! a time; values from each token's bytes, their sums in the slot order of
//! [`lanes::packed_slot_coordinate`]), wider parts decoded first. Each task keeps an
//! online-softmax state and value sums per row, and the chunks of a row are merged exactly at
//! the end (split-KV, as flash-decoding does).

use super::exact::{self, ExactSegment};
use super::kernels::{self, RowBounds, RowState};
use super::side::{SideCodec, SideStream};
use super::store::{checked_size, KvStore};
use crate::error::{Error, Result};
use crate::packing::unpack_block;
use crate::parallel;
use crate::simd::kernels::LANES;
use crate::simd::lanes::{self, Lanes, DOT_ROWS};
use crate::simd::SimdLevel;

/// What an attention call asks for.
#[derive(Debug, Clone, Copy)]
pub struct AttendParams<'a> {
    /// Query heads `Hq`, a multiple of the store's KV heads (query head `h·G + g` reads KV head `h`).
    pub query_heads: usize,
    /// Queries per head `Q`.
    pub q_len: usize,
    /// Per batch row and query (`B × Q`): first stored token the query attends (clamped at 0).
    pub lo: &'a [i64],
    /// Per batch row and query: one past the last stored token it attends (clamped at the length).
    pub hi: &'a [i64],
    /// Logit scale (usually `1/√D`).
    pub scaling: f32,
    /// Logit soft-cap `c` (`c · tanh(z / c)`, Gemma-2), if any.
    pub softcap: Option<f32>,
    /// Full-precision tokens joined into the same softmax (sink tokens, a residual window, the
    /// step's own tokens), if any.
    pub exact: Option<ExactSegment<'a>>,
}

/// Query rows of a stream that share one decode of each block (GQA group × q_len, tiled).
const GROUP_ROWS: usize = 128;

/// Tokens per task at least / at most (multiples of the 16-token block).
const MIN_CHUNK: usize = 512;
const MAX_CHUNK: usize = 16384;

/// One task: rows `row0 .. row0 + rows` of a stream over tokens `t0 .. t1`.
#[derive(Debug, Clone, Copy)]
struct Task {
    stream: usize,
    row0: usize,
    rows: usize,
    t0: usize,
    t1: usize,
}

/// A task's result: softmax state and rotated-domain value sums (per value part, row-major:
/// `acc[p][r·d_p + j]`) of its rows.
struct Partial {
    states: Vec<RowState>,
    acc: Vec<Vec<f32>>,
}

/// The query side of one stream: rotated queries per key part, biases and token ranges per row.
struct StreamQueries {
    /// Per key part, `rows × d_p` rotated (channel-gathered) queries.
    rotated: Vec<Vec<f32>>,
    /// Per row, `⟨q, μ_k⟩`.
    bias: Vec<f32>,
    /// Per row, the attended token range, clamped to the stored tokens.
    range: Vec<(usize, usize)>,
}

/// Per-task buffers.
struct Scratch {
    codes: Vec<[u8; LANES]>,
    /// The block's packed key rows, word-major (`words[k][l]` = word `k` of token `l`).
    words: Vec<[u32; LANES]>,
    block: Vec<Lanes>,
    /// The block's decoded value rows, token-major (`LANES × d_p`).
    rows: Vec<f32>,
    scores: Vec<Lanes>,
    factors: Vec<f32>,
    bounds: Vec<RowBounds>,
    /// The rows' softmax weights times each token's value scale.
    weights: Vec<Lanes>,
}

impl Scratch {
    fn new(d: usize) -> Scratch {
        Scratch {
            codes: vec![[0; LANES]; d],
            words: vec![[0; LANES]; d.div_ceil(8) + 1],
            block: vec![[0.0; LANES]; d],
            rows: vec![0.0; LANES * d],
            scores: vec![[0.0; LANES]; GROUP_ROWS],
            factors: vec![1.0; GROUP_ROWS],
            bounds: Vec::with_capacity(GROUP_ROWS),
            weights: vec![[0.0; LANES]; GROUP_ROWS],
        }
    }
}

/// For a part of at most 4 bits, its bits and its centroids repeated to 16 entries (the
/// packed-codes kernels read such a table from one register and ignore the bits above a
/// code); `None` for wider parts, which are decoded first.
fn packed_table(side: &SideCodec, p: usize) -> Option<(u32, [f32; 16])> {
    let q = &side.parts[p];
    let (bits, c) = (q.mse_bits() as u32, q.codebook().centroids());
    (bits <= 4 && c.len() == 1 << bits).then(|| (bits, std::array::from_fn(|i| c[i % c.len()])))
}

/// The scales of tokens `t .. t + m` of part `p` of a stream, zero in lanes `m..`.
fn block_scales(stream: &SideStream, p: usize, t: usize, m: usize) -> Lanes {
    let scales = &stream.parts[p].scales[t..t + m];
    if let Ok(full) = scales.try_into() {
        // (a plain copy: a variable-length one is a memcpy call whose narrow stores stall
        // the wide loads that follow)
        return full;
    }
    let mut scale = [0.0f32; LANES];
    scale[..m].copy_from_slice(scales);
    scale
}

/// Decodes part `p` of tokens `t .. t + m` of a stream into `s.block` (coordinate-major, each
/// token's scale applied; lanes `m..` are zero).
fn decode_part(
    level: SimdLevel,
    side: &SideCodec,
    stream: &SideStream,
    p: usize,
    t: usize,
    m: usize,
    s: &mut Scratch,
) {
    let q = &side.parts[p];
    let (dp, cb) = (q.dim(), q.code_bytes());
    let rows = &stream.parts[p];
    unpack_block(
        level,
        &rows.codes[t * cb..(t + m) * cb],
        m,
        q.mse_bits(),
        &mut s.codes[..dp],
    );
    lanes::decode_lanes(
        level,
        &s.codes[..dp],
        q.codebook().centroids(),
        &block_scales(stream, p, t, m),
        &mut s.block[..dp],
    );
}

impl KvStore {
    /// Softmax attention of `queries` (`B × Hq × Q × D`, row-major) over the stored tokens, read
    /// from the codes. Writes the normalised outputs (`B × Hq × Q × D`; zero for a query whose
    /// range is empty) and the natural-log log-sum-exp of each query's logits (`B × Hq × Q`;
    /// `−∞` for an empty range), so that a caller can merge other keys into the same softmax.
    pub fn attend(
        &self,
        queries: &[f32],
        p: &AttendParams<'_>,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        self.attend_at(crate::simd::active_level(), queries, p, out, lse)
    }

    /// [`KvStore::attend`] at an explicit SIMD level (parity tests and benchmarks).
    pub fn attend_at(
        &self,
        level: SimdLevel,
        queries: &[f32],
        p: &AttendParams<'_>,
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        let (h, d) = (self.config.kv_heads, self.config.head_dim);
        let (hq, ql) = (p.query_heads, p.q_len);
        if hq == 0 || !hq.is_multiple_of(h) {
            return Err(Error::InvalidParameter(format!(
                "query heads ({hq}) must be a positive multiple of the KV heads ({h})"
            )));
        }
        if ql == 0 {
            return Err(Error::InvalidParameter("q_len must be at least 1".into()));
        }
        let per_batch = checked_size(&[hq, ql, d], "the query block")?;
        if queries.is_empty() || !queries.len().is_multiple_of(per_batch) {
            return Err(Error::ShapeMismatch(format!(
                "queries hold {} values, not a whole number of {hq}×{ql}×{d} blocks",
                queries.len()
            )));
        }
        let b = queries.len() / per_batch;
        if self.batch != 0 && b != self.batch {
            return Err(Error::ShapeMismatch(format!(
                "queries have {b} batch rows, the store holds {}",
                self.batch
            )));
        }
        if p.lo.len() != b * ql || p.hi.len() != b * ql {
            return Err(Error::ShapeMismatch(format!(
                "lo and hi must hold batch × q_len = {} values, got {} and {}",
                b * ql,
                p.lo.len(),
                p.hi.len()
            )));
        }
        if out.len() != queries.len() || lse.len() != b * hq * ql {
            return Err(Error::ShapeMismatch(format!(
                "outputs must hold {} and {} values, got {} and {}",
                queries.len(),
                b * hq * ql,
                out.len(),
                lse.len()
            )));
        }
        if !(p.scaling.is_finite() && p.scaling > 0.0) {
            return Err(Error::InvalidParameter(format!(
                "scaling must be positive and finite, got {}",
                p.scaling
            )));
        }
        let cap = match p.softcap {
            None => 0.0,
            Some(c) if c.is_finite() && c > 0.0 => c,
            Some(c) => {
                return Err(Error::InvalidParameter(format!(
                    "softcap must be positive and finite, got {c}"
                )))
            }
        };
        if let Some(bad) = queries.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite(format!("queries hold {bad}")));
        }
        if let Some(seg) = &p.exact {
            seg.check(b, h, ql, d)?;
        }
        out.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        let g = hq / h;
        if self.len > 0 {
            self.attend_codes(level, queries, p, b, g, cap, out, lse);
        }
        if let Some(seg) = &p.exact {
            exact::join(level, queries, seg, (h, g, ql, d), p.scaling, cap, out, lse);
        }
        Ok(())
    }

    /// The stored tokens' part of [`KvStore::attend_at`] (arguments checked there).
    #[allow(clippy::too_many_arguments)]
    fn attend_codes(
        &self,
        level: SimdLevel,
        queries: &[f32],
        p: &AttendParams<'_>,
        b: usize,
        g: usize,
        cap: f32,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let (h, d, ql) = (self.config.kv_heads, self.config.head_dim, p.q_len);
        let rows = g * ql;
        // The query side of every stream (rotated once per row and key part: little work, done
        // on the caller).
        let prepared: Vec<StreamQueries> = (0..b * h)
            .map(|s| self.stream_queries(level, queries, p, s, g))
            .collect();
        // Tasks: rows in groups of GROUP_ROWS, each group's token union split into chunks.
        let mut spans = Vec::new();
        for (s, sq) in prepared.iter().enumerate() {
            for row0 in (0..rows).step_by(GROUP_ROWS) {
                let n = GROUP_ROWS.min(rows - row0);
                let tile = &sq.range[row0..row0 + n];
                let t0 = tile.iter().filter(|r| r.0 < r.1).map(|r| r.0).min();
                let t1 = tile.iter().filter(|r| r.0 < r.1).map(|r| r.1).max();
                if let (Some(t0), Some(t1)) = (t0, t1) {
                    spans.push((s, row0, n, t0 / LANES * LANES, t1));
                }
            }
        }
        let work: usize = spans.iter().map(|sp| sp.4 - sp.3).sum();
        let target_tasks = 4 * parallel::num_threads().max(1);
        let chunk = (work / target_tasks)
            .clamp(MIN_CHUNK, MAX_CHUNK)
            .div_ceil(LANES)
            * LANES;
        let mut tasks = Vec::new();
        for &(stream, row0, n, t0, t1) in &spans {
            let mut t = t0;
            while t < t1 {
                let end = (t + chunk).min(t1);
                tasks.push(Task {
                    stream,
                    row0,
                    rows: n,
                    t0: t,
                    t1: end,
                });
                t = end;
            }
        }
        let partials: Vec<Partial> = parallel::map_shared(
            &tasks,
            || Scratch::new(d),
            |s, task| self.run_task(level, task, &prepared[task.stream], cap, p, s),
        );
        self.merge(level, &tasks, &partials, g, ql, out, lse);
    }

    /// Rotated queries, biases and ranges of stream `s` (batch row `s / H`, KV head `s % H`).
    fn stream_queries(
        &self,
        level: SimdLevel,
        queries: &[f32],
        p: &AttendParams<'_>,
        s: usize,
        g: usize,
    ) -> StreamQueries {
        let (h, d, ql) = (self.config.kv_heads, self.config.head_dim, p.q_len);
        let (bi, kh) = (s / h, s % h);
        let stream = &self.keys[s];
        let rows = g * ql;
        let row = |r: usize| {
            let head = bi * h * g + kh * g + r / ql;
            let at = (head * ql + r % ql) * d;
            &queries[at..at + d]
        };
        let mut rotated = Vec::with_capacity(self.key.parts.len());
        for (part, q) in self.key.parts.iter().enumerate() {
            let dp = q.dim();
            let channels = self.key.part_channels(stream, part);
            let mut buf = vec![0.0f32; rows * dp];
            for (r, dst) in buf.chunks_exact_mut(dp).enumerate() {
                let src = row(r);
                for (k, v) in dst.iter_mut().enumerate() {
                    *v = src[channels.get(k)];
                }
                q.rotation().apply_at(level, dst);
            }
            rotated.push(buf);
        }
        let bias = (0..rows)
            .map(|r| {
                let q = row(r);
                let dot: f64 = q
                    .iter()
                    .zip(&stream.mean)
                    .map(|(&a, &m)| a as f64 * m as f64)
                    .sum();
                dot as f32
            })
            .collect();
        let range = (0..rows)
            .map(|r| {
                let i = bi * ql + r % ql;
                let lo = p.lo[i].clamp(0, self.len as i64) as usize;
                let hi = p.hi[i].clamp(0, self.len as i64) as usize;
                (lo, hi.max(lo))
            })
            .collect();
        StreamQueries {
            rotated,
            bias,
            range,
        }
    }

    /// Runs one task: online softmax and value sums over its tokens, block by block.
    fn run_task(
        &self,
        level: SimdLevel,
        task: &Task,
        sq: &StreamQueries,
        cap: f32,
        p: &AttendParams<'_>,
        s: &mut Scratch,
    ) -> Partial {
        let n = task.rows;
        let kstream = &self.keys[task.stream];
        let vstream = &self.values[task.stream];
        let mut states = vec![RowState::default(); n];
        let mut acc: Vec<Vec<f32>> = self
            .value
            .parts
            .iter()
            .map(|q| vec![0.0; n * q.dim()])
            .collect();
        let key_tables: Vec<_> = (0..self.key.parts.len())
            .map(|p| packed_table(&self.key, p))
            .collect();
        let value_tables: Vec<_> = (0..self.value.parts.len())
            .map(|p| packed_table(&self.value, p))
            .collect();
        let mut t = task.t0;
        while t < task.t1 {
            let m = LANES.min(task.t1 - t);
            for sc in &mut s.scores[..n] {
                *sc = [0.0; LANES];
            }
            for (part, q) in self.key.parts.iter().enumerate() {
                let dp = q.dim();
                let rq = &sq.rotated[part][task.row0 * dp..(task.row0 + n) * dp];
                if let Some((bits, table)) = &key_tables[part] {
                    // packed codes → centroids inside the dot products; the scales once per sum
                    let (cb, rows) = (q.code_bytes(), &kstream.parts[part]);
                    let packed = &rows.codes[t * cb..(t + m) * cb];
                    let nw = cb.div_ceil(4);
                    for w0 in (0..nw).step_by(LANES) {
                        let words = &mut s.words[w0..nw.min(w0 + LANES)];
                        lanes::load_words(level, packed, cb, w0, words);
                    }
                    let scale = block_scales(kstream, part, t, m);
                    for r0 in (0..n).step_by(DOT_ROWS) {
                        let r1 = (r0 + DOT_ROWS).min(n);
                        let (words, scores) = (&s.words[..nw], &mut s.scores[r0..r1]);
                        let qs = &rq[r0 * dp..r1 * dp];
                        lanes::dot_words_lanes(level, words, *bits, table, &scale, qs, scores);
                    }
                    continue;
                }
                decode_part(level, &self.key, kstream, part, t, m, s);
                for r0 in (0..n).step_by(DOT_ROWS) {
                    let r1 = (r0 + DOT_ROWS).min(n);
                    let (block, scores) = (&s.block[..dp], &mut s.scores[r0..r1]);
                    lanes::dot_rows_lanes(level, block, &rq[r0 * dp..r1 * dp], scores);
                }
            }
            s.bounds.clear();
            for r in task.row0..task.row0 + n {
                let (lo, hi) = sq.range[r];
                s.bounds.push(RowBounds {
                    bias: sq.bias[r],
                    lo: lo as i64 - t as i64,
                    hi: hi as i64 - t as i64,
                });
            }
            kernels::softmax_step(
                level,
                &mut s.scores[..n],
                &s.bounds,
                &mut states,
                m,
                p.scaling,
                cap,
                &mut s.factors[..n],
            );
            if s.factors[..n].iter().any(|&f| f != 1.0) {
                for a in acc.iter_mut() {
                    kernels::scale_rows(level, a, &s.factors[..n]);
                }
            }
            if s.scores[..n].iter().any(|w| w.iter().any(|&v| v != 0.0)) {
                for (part, a) in acc.iter_mut().enumerate() {
                    let q = &self.value.parts[part];
                    let dp = q.dim();
                    if let Some((bits, table)) = &value_tables[part] {
                        // packed token-major codes read through the table; the scales join the
                        // weights
                        let (cb, rows) = (q.code_bytes(), &vstream.parts[part]);
                        let packed = &rows.codes[t * cb..(t + m) * cb];
                        let scale = block_scales(vstream, part, t, m);
                        kernels::weigh(level, &s.scores[..n], &scale, &mut s.weights[..n]);
                        let w = &s.weights[..n];
                        lanes::accumulate_packed_lanes(level, packed, cb, dp, *bits, table, w, a);
                        continue;
                    }
                    decode_part(level, &self.value, vstream, part, t, m, s);
                    lanes::store_rows(level, &s.block[..dp], dp, &mut s.rows[..LANES * dp]);
                    lanes::accumulate_rows_lanes(level, &s.rows[..LANES * dp], &s.scores[..n], a);
                }
            }
            t += m;
        }
        Partial { states, acc }
    }

    /// Merges the chunks of every (stream, row), rotates the value sums back, adds the value
    /// centre, and writes outputs and log-sum-exps.
    #[allow(clippy::too_many_arguments)]
    fn merge(
        &self,
        level: SimdLevel,
        tasks: &[Task],
        partials: &[Partial],
        g: usize,
        ql: usize,
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let (h, d) = (self.config.kv_heads, self.config.head_dim);
        let mut i = 0;
        let mut part_out: Vec<Vec<f32>> = self
            .value
            .parts
            .iter()
            .map(|q| vec![0.0; q.dim()])
            .collect();
        // where each slot of a packed part's sums belongs (they are summed shuffled)
        let slot_coords: Vec<Option<Vec<usize>>> = (0..self.value.parts.len())
            .map(|p| {
                let dp = self.value.parts[p].dim();
                packed_table(&self.value, p).map(|(bits, _)| {
                    (0..dp)
                        .map(|s| lanes::packed_slot_coordinate(bits, dp, s))
                        .collect()
                })
            })
            .collect();
        let mut natural = vec![0.0f32; d];
        while i < tasks.len() {
            let (stream, row0, n) = (tasks[i].stream, tasks[i].row0, tasks[i].rows);
            let mut j = i;
            while j < tasks.len() && tasks[j].stream == stream && tasks[j].row0 == row0 {
                j += 1;
            }
            let group = &partials[i..j];
            let vstream = &self.values[stream];
            let (bi, kh) = (stream / h, stream % h);
            for r in 0..n {
                let max = group
                    .iter()
                    .map(|pt| pt.states[r].max)
                    .fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY {
                    continue;
                }
                let mut sum = 0.0f32;
                for po in &mut part_out {
                    po.fill(0.0);
                }
                for pt in group {
                    let st = pt.states[r];
                    if st.max == f32::NEG_INFINITY {
                        continue;
                    }
                    let f = kernels::exp(st.max - max);
                    sum += f * st.sum();
                    for (po, a) in part_out.iter_mut().zip(&pt.acc) {
                        let dp = po.len();
                        for (o, &v) in po.iter_mut().zip(&a[r * dp..(r + 1) * dp]) {
                            *o += f * v;
                        }
                    }
                }
                let row = row0 + r;
                let head = bi * h * g + kh * g + row / ql;
                let qi = row % ql;
                let at = (head * ql + qi) * d;
                let dst = &mut out[at..at + d];
                for (part, (po, q)) in part_out.iter_mut().zip(&self.value.parts).enumerate() {
                    if let Some(coords) = &slot_coords[part] {
                        let nat = &mut natural[..po.len()];
                        for (&c, &v) in coords.iter().zip(po.iter()) {
                            nat[c] = v;
                        }
                        po.copy_from_slice(nat);
                    }
                    for v in po.iter_mut() {
                        *v /= sum;
                    }
                    q.rotation().apply_inverse_at(level, po);
                    let channels = self.value.part_channels(vstream, part);
                    for (k, &v) in po.iter().enumerate() {
                        let c = channels.get(k);
                        dst[c] = v + vstream.mean[c];
                    }
                }
                lse[head * ql + qi] = max + sum.ln();
            }
            i = j;
        }
    }
}
