//! Integer arguments that fail with a `ValueError` naming them: PyO3's own conversion of an
//! out-of-range int (`bit_width=300`, `dim=-1`) raises an `OverflowError` that names nothing.

use pyo3::prelude::*;
use pyo3::Borrowed;

/// Bits per coordinate, `1..=8`.
#[derive(Debug, Clone, Copy)]
pub struct Bits(pub u8);

/// A vector dimension, `1..=MAX_DIM` (the core checks tighter bounds where it needs them).
#[derive(Debug, Clone, Copy)]
pub struct Dim(pub usize);

/// A rotation seed, `0..=u64::MAX`.
#[derive(Debug, Clone, Copy)]
pub struct Seed(pub u64);

/// The int `obj` if it lies in `lo..=hi`, else a `ValueError` naming `name`.
fn int_in(obj: Borrowed<'_, '_, PyAny>, name: &str, lo: i64, hi: i64) -> PyResult<i64> {
    let fail = || {
        crate::errors::invalid(format!(
            "{name} must be an integer in {lo}..={hi}, got {}",
            &*obj
        ))
    };
    let v: i64 = obj.extract().map_err(|_| fail())?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(fail())
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Bits {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Bits(int_in(obj, "bit_width", 1, 8)? as u8))
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Dim {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let max = turboquant::quantizer::MAX_DIM as i64;
        Ok(Dim(int_in(obj, "dim", 1, max)? as usize))
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for Seed {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        obj.extract::<u64>().map(Seed).map_err(|_| {
            crate::errors::invalid(format!(
                "seed must be an integer in 0..={}, got {}",
                u64::MAX,
                &*obj
            ))
        })
    }
}
