//! The one mapping from the core crate's errors to Python exceptions.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// Converts a core error into `ValueError` (bad input, bad parameters, corrupt data) or `OSError` (I/O).
pub fn to_py(e: turboquant::Error) -> PyErr {
    match e {
        turboquant::Error::Io(_) => PyOSError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
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
