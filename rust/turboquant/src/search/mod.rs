//! Flat vector search over TurboQuant codes: append-only storage with stable ids, O(1)
//! removal, filters, exact top-k, optional fp16 re-ranking, and files that can be memory-mapped.
//!
//! **Scoring.** Vectors are stored as MSE-mode codes with the `proj` scale
//! `s = ‖x‖ / ⟨y, ĉ⟩` ([`crate::ScaleMode::Proj`]), so `⟨q, x⟩ ≈ s · ⟨R q, ĉ⟩` (RaBitQ-style
//! length correction; it measured better recall than the least-squares scale, see
//! `benches/RESULTS.md`). A query is rotated once and `⟨R q, ĉ⟩` is a sum of per-group table
//! entries. For `b ≤ 4` the tables are quantized to `u8` per query (one step `delta` and one
//! offset per group) and scanned with in-register shuffles over blocks of 32 vectors
//! ([`layout`], [`fastscan`]); `b ≥ 5` uses `f32` tables on the canonical rows. The scan is
//! exhaustive over every live code; the per-thread top-k lists are merged exactly.
//!
//! **Metrics.** `ip`; `cosine` (vectors and queries normalized); `l2` as
//! `‖q‖² + ‖x‖² − 2⟨q, x⟩` with a stored `‖x‖²` per vector (4 bytes, counted).

pub mod fastscan;
pub mod filter;
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
