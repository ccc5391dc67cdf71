//! # turboquant
//!
//! TurboQuant (Zandieh et al., "Online Vector Quantization with Near-optimal Distortion Rate",
//! ICLR 2026): a data-oblivious vector quantizer. A seeded structured rotation, then a
//! per-coordinate Lloyd-Max codebook with 1..=8 bits, optionally a 1-bit QJL sketch of the
//! residual for unbiased inner products. No training, no calibration.
//!
//! This crate has no Python dependency; `turboquant-py` is a thin binding over it.
//!
//! ```
//! use turboquant::{Mode, Quantizer, ScaleMode};
//! let q = Quantizer::new(128, 4, Mode::Mse, ScaleMode::Lsq, 0).unwrap();
//! let x: Vec<f32> = (0..2 * 128).map(|i| (i as f32 * 0.37).sin()).collect();
//! let batch = q.quantize(&x).unwrap();
//! assert_eq!(batch.nbytes(), 2 * (64 + 4)); // 4 bits × 128 = 64 bytes + one f32 scale
//! let mut back = vec![0.0; x.len()];
//! q.dequantize(&batch.view(), &mut back).unwrap();
//! ```

pub(crate) mod bytes;
pub(crate) mod cells;
pub mod codebook;
pub mod entropy;
pub mod error;
pub mod format;
pub mod kv;
pub mod packing;
pub mod parallel;
pub mod quantizer;
pub mod rng;
pub mod rotation;
pub mod search;
pub mod simd;

/// The crate README's Rust examples, compiled and run by `cargo test --doc` so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use codebook::Codebook;
pub use error::{Error, Result};
pub use quantizer::{BatchMut, BatchView, Mode, QuantizedBatch, Quantizer, ScaleMode};
pub use rotation::Rotation;
