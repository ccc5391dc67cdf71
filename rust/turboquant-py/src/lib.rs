//! `turboquant_rs._native`: a thin PyO3 binding of the `turboquant` crate.
//!
//! Borrows numpy buffers (C-contiguous, checked), releases the GIL around all Rust work,
//! moves result vectors into numpy arrays without copies, and maps the crate's one error
//! enum to `TurboQuantError` / `CorruptFileError` (both `ValueError`s) and `OSError`. No panics cross this boundary: every fallible call
//! returns a `Result`.

mod args;
mod arrays;
mod errors;
mod index;
mod kv;
mod quantizer;

use args::{Bits, Dim};
use arrays::{rows2, slice2, to_array1, to_array2};
use errors::IntoPy;
use numpy::{PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

/// A codebook as Python sees it: (centroids, boundaries, probabilities, distortion).
type PyCodebook<'py> = (
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f64>>,
    f64,
);

/// Lloyd-Max codebook for (dim, bits): (centroids, boundaries, probabilities, distortion).
#[pyfunction]
fn codebook(py: Python<'_>, dim: Dim, bits: Bits) -> PyResult<PyCodebook<'_>> {
    let (Dim(dim), Bits(bits)) = (dim, bits);
    let cb = py
        .detach(|| turboquant::codebook::get(dim, bits))
        .py_err()?;
    Ok((
        to_array1(py, cb.centroids().to_vec()),
        to_array1(py, cb.boundaries().to_vec()),
        to_array1(py, cb.probabilities().to_vec()),
        cb.distortion(),
    ))
}

/// Packs an (n, dim) uint8 code matrix at `bits` bits per code (the crate's one layout).
#[pyfunction]
fn pack<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray2<'py, u8>,
    bits: Bits,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let Bits(bits) = bits;
    let dim = codes.shape()[1];
    let data = slice2(&codes, "codes")?;
    let packed = py
        .detach(|| turboquant::packing::pack(data, dim, bits))
        .py_err()?;
    let rows = codes.shape()[0];
    to_array2(py, packed, rows, turboquant::packing::row_bytes(dim, bits))
}

/// Unpacks an (n, row_bytes) packed matrix into (n, dim) codes.
#[pyfunction]
fn unpack<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray2<'py, u8>,
    dim: Dim,
    bits: Bits,
) -> PyResult<Bound<'py, PyArray2<u8>>> {
    let (Dim(dim), Bits(bits)) = (dim, bits);
    let rows = packed.shape()[0];
    let data = rows2(
        &packed,
        "packed",
        None,
        turboquant::packing::row_bytes(dim, bits),
    )?;
    let codes = py
        .detach(|| turboquant::packing::unpack(data, dim, bits))
        .py_err()?;
    to_array2(py, codes, rows, dim)
}

/// Orthonormal fast Walsh-Hadamard transform of each row (length a power of two).
#[pyfunction]
fn fwht<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    normalize: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let d = x.shape()[1];
    if d == 0 || !d.is_power_of_two() {
        return Err(crate::errors::invalid(format!(
            "last dimension must be a power of 2, got {d}"
        )));
    }
    let mut out = slice2(&x, "x")?.to_vec();
    let scale = if normalize {
        1.0 / (d as f32).sqrt()
    } else {
        1.0
    };
    let level = turboquant::simd::active_level();
    py.detach(|| {
        for row in out.chunks_exact_mut(d) {
            turboquant::simd::kernels::fwht_scaled(level, row, scale);
        }
    });
    let rows = x.shape()[0];
    to_array2(py, out, rows, d)
}

/// Sets the threads used by Rust work (0: rayon's default, `RAYON_NUM_THREADS` or the cores).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    turboquant::parallel::set_num_threads(n).py_err()
}

/// Threads used by Rust work now.
#[pyfunction]
fn num_threads() -> usize {
    turboquant::parallel::num_threads()
}

/// Abandons a thread pool inherited through `fork` (registered with `os.register_at_fork`).
#[pyfunction]
fn _after_fork_in_child() {
    turboquant::parallel::after_fork_in_child();
}

/// SIMD level the kernels dispatch to ("avx512", "avx2" or "scalar").
#[pyfunction]
fn simd_level() -> &'static str {
    turboquant::simd::active_level().name()
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<quantizer::PyQuantizer>()?;
    m.add_class::<index::PyIndex>()?;
    m.add_class::<kv::PyKvStore>()?;
    m.add_function(wrap_pyfunction!(quantizer::batch_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(codebook, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(unpack, m)?)?;
    m.add_function(wrap_pyfunction!(fwht, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
