//! The one mapping from the core crate's errors to Python exceptions, and the one place the
//! library's exception classes are created.
//!
//! ```text
//! ValueError
//!  └─ TurboQuantError          every rejected input, parameter or shape (and NaN / Inf)
//!      └─ CorruptFileError     bytes or a file that are truncated, damaged, of an unknown
//!                              format, or changed under a memory mapping
//! OSError                      reading or writing a file failed
//! ```
//! Both classes derive from `ValueError`, so code that caught `ValueError` keeps working.

use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::PyErr;

create_exception!(
    _native,
    TurboQuantError,
    PyValueError,
    "Base class of the errors turboquant_rs raises for bad input (a subclass of ValueError)."
);
create_exception!(
    _native,
    CorruptFileError,
    TurboQuantError,
    "Serialized bytes or a file are truncated, damaged, of an unknown format or version, \
     or changed under a memory mapping."
);

/// A `TurboQuantError` with `msg`.
pub fn invalid(msg: impl Into<String>) -> PyErr {
    TurboQuantError::new_err(msg.into())
}

/// Converts a core error into `CorruptFileError`, `OSError` or `TurboQuantError`.
pub fn to_py(e: turboquant::Error) -> PyErr {
    match e {
        turboquant::Error::Io(_) => PyOSError::new_err(e.to_string()),
        turboquant::Error::Corrupt(_) => CorruptFileError::new_err(e.to_string()),
        _ => TurboQuantError::new_err(e.to_string()),
    }
}

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TurboQuantError", py.get_type::<TurboQuantError>())?;
    m.add("CorruptFileError", py.get_type::<CorruptFileError>())?;
    Ok(())
}

/// `Result` with the error already mapped for Python.
pub type PyResult<T> = Result<T, PyErr>;

/// Extension to map core results with `?`.
pub trait IntoPy<T> {
    /// Maps the error to a Python exception.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for turboquant::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
