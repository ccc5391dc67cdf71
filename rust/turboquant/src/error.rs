//! The one error type of the crate. Every fallible public function returns [`Result`];
//! the Python binding maps each variant to one Python exception class.

use std::fmt;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A parameter (dimension, bit width, mode, k, ...) is outside what is supported.
    InvalidParameter(String),
    /// An input buffer has the wrong length or shape for the operation.
    ShapeMismatch(String),
    /// An input vector holds NaN or Inf (or its norm overflows `f32`).
    NonFinite(String),
    /// Serialized bytes are truncated, corrupted, or of an unknown format or version.
    Corrupt(String),
    /// Reading or writing a file failed.
    Io(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidParameter(m) => write!(f, "invalid parameter: {m}"),
            Error::ShapeMismatch(m) => write!(f, "shape mismatch: {m}"),
            Error::NonFinite(m) => write!(f, "non-finite input: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt data: {m}"),
            Error::Io(m) => write!(f, "i/o error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;
