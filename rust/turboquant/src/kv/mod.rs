//! A packed KV cache for transformer attention, and softmax attention computed from its codes.
//!
//! # The KV layout (one format for every engine)
//!
//! A cache layer holds `B × H` *streams* (batch row `b`, KV head `h`, stream `b·H + h`), each a
//! sequence of tokens. A token's key (and, independently, its value) is stored as follows:
//!
//! 1. **Centre.** `x ← x − μ`, where `μ` is the stream's per-channel mean (f32, `D` values) of
//!    the first chunk of tokens the stream stored (zeros when centring is off). For keys this
//!    shifts every logit of a query by the constant `⟨q, μ⟩`, which attention adds back exactly;
//!    for values the weights sum to one, so `μ` is added back to the output.
//! 2. **Split.** Without outliers there is one *part*: all `D` channels. With `n_o` outlier
//!    channels (`2 ≤ n_o ≤ D − 2`), the stream's channel order lists the `D − n_o` regular
//!    channels ascending, then the `n_o` outlier channels ascending (the channels of largest
//!    RMS in the centred first chunk); part 0 is the regular channels, part 1 the outliers.
//! 3. **Quantize.** Part `p` (dimension `d_p`, `b_p` bits) is quantized by the core quantizer
//!    [`crate::Quantizer`]`::new(d_p, b_p, Mode::Mse, ScaleMode::Lsq, seed)`: one packed code row
//!    of [`crate::packing::row_bytes`]`(d_p, b_p)` bytes in the layout of [`crate::packing`],
//!    and one f32 scale.
//!
//! Rows are token-major per stream and part. A GPU engine writes exactly these rows (into
//! preallocated `(B, H, capacity, row_bytes)` buffers); the bytes are the same.
//!
//! # Attention from the codes
//!
//! For a query `q` and a stored token `t`, the logit is
//! `scaling · (⟨q, μ_k⟩ + Σ_p s_{t,p} ⟨R_p q_p, c(code_{t,p})⟩)`, optionally soft-capped
//! (`cap · tanh(z / cap)`): the query is rotated once per part and scored against the codes
//! decoded to centroids 16 tokens at a time, shared by every query head of the KV head (GQA).
//! Softmax is online in f32 over chunks of the sequence that run in parallel (split-KV) and are
//! merged exactly. Values are accumulated in the rotated domain with each token's scale
//! (`Σ_t p_t s_t c(vcode_t)`) and rotated back once per output. No dequantized copy of the
//! cache is ever made. [`KvStore::attend`] returns the normalised output and the log-sum-exp
//! over the stored tokens, so a caller can join a full-precision window into the same softmax.

mod attention;
mod exact;
mod kernels;
mod side;
mod store;

pub use attention::AttendParams;
pub use exact::ExactSegment;
pub use side::SideSpec;
pub use store::{KvConfig, KvStore};
