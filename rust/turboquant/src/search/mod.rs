//! Flat vector search over TurboQuant codes: append-only storage with stable ids, O(1)
//! removal, filters, exact top-k, optional fp16 re-ranking, and files that can be memory-mapped.
//!
//! **Scoring.** Vectors are stored as MSE-mode codes with the `proj` scale
//! `s = ‖x‖ / ⟨y, ĉ⟩` ([`crate::ScaleMode::Proj`]), so `⟨q, x⟩ ≈ s · ⟨R q, ĉ⟩` (RaBitQ-style
//! length correction). Measured on wiki-MiniLM (77,573 × 384, recall@10 against exact search):
//! `proj` 0.9524 / 0.8321 at 4 / 2 bits against 0.9513 / 0.8244 with the least-squares scale,
//! so `proj` it is. A query is rotated once and `⟨R q, ĉ⟩` is a sum of per-group table entries.
//!
//! **Fast scan** (`b ≤ 4`). Every code is scored in integers over blocks of 32 vectors
//! ([`layout`], [`fastscan`]), with the code decoding shared by up to 8 queries per pass. At
//! 3 and 4 bits the query is rounded to `i8` and multiplied into the codes' 7-bit centroid
//! levels (one `vpdpbusd` per 64 codes and query); at 1 and 2 bits the per-group tables are
//! quantized to `u8` per query and looked up in registers ([`layout::QueryTables`] has both
//! forms). The scan keeps the best [`index::REFINE_FACTOR`]` · k` by the integer scores and
//! re-scores them from their codes in `f32`: on wiki-MiniLM this reproduces the top-10 of an
//! exhaustive `f32` scan (a test holds agreement ≥ 0.99). Every live code is scored; there is
//! no coarse shortlist. `b ≥ 5` scans the canonical rows with `f32` tables. Per-thread top-k
//! lists are merged exactly (ties broken by insertion order), so results do not depend on the
//! thread count or SIMD level.
//!
//! **Metrics.** `ip`; `cosine` (vectors and queries normalized); `l2` as
//! `‖q‖² + ‖x‖² − 2⟨q, x⟩` with a stored `‖x‖²` per vector (4 bytes, counted).
//!
//! **Re-ranking** (opt-in): fp16 originals (2 bytes per coordinate, counted in
//! [`Index::memory_bytes`]) re-score the best [`index::RERANK_FACTOR`]` · k` exactly.

pub mod center;
pub mod fastscan;
pub mod filter;
pub mod ids;
pub mod index;
pub mod layout;
mod persist;
mod rescore;
pub mod scan;
pub mod score;
pub mod storage;
pub mod topk;

pub use filter::Filter;
pub use index::{Index, IndexOptions, Metric, SearchParams, SearchResults, NO_ID};
pub use persist::INDEX_VERSION;
