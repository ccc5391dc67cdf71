//! `Quantizer`: the core quantizer, taking and returning numpy buffers.

use crate::args::{Bits, Dim, Seed};
use crate::arrays::{contiguous, filled_array2, rows2, slice1, to_array1, to_array2};
use crate::errors::IntoPy;
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use turboquant::{format, BatchMut, BatchView, Mode, Quantizer, ScaleMode};

/// Packed output buffers: codes, scales, signs, residual norms (numpy arrays).
type Packed<'py> = (
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray1<f32>>,
);

/// A TurboQuant quantizer (MSE or unbiased/QJL mode) over float32 rows.
#[pyclass(name = "Quantizer", module = "turboquant_rs._native", frozen)]
pub struct PyQuantizer {
    pub inner: Quantizer,
}

/// Borrowed packed buffers as passed from Python.
pub struct Buffers<'py> {
    codes: PyReadonlyArray2<'py, u8>,
    scales: PyReadonlyArray1<'py, f32>,
    signs: PyReadonlyArray2<'py, u8>,
    rnorms: PyReadonlyArray1<'py, f32>,
}

impl Buffers<'_> {
    /// The buffers as a batch of `q`'s format: every array's shape is checked, not only its
    /// length (a (2n, b/2) code array is refused rather than read as n rows of b bytes).
    fn view(&self, q: &Quantizer) -> PyResult<BatchView<'_>> {
        let scales = slice1(&self.scales, "scales")?;
        let n = scales.len();
        let sb = q.sign_bytes();
        let sign_rows = if sb > 0 { Some(n) } else { None };
        let view = BatchView {
            n,
            codes: rows2(&self.codes, "codes", Some(n), q.code_bytes())?,
            scales,
            qjl_signs: rows2(&self.signs, "qjl_signs", sign_rows, sb)?,
            residual_norms: slice1(&self.rnorms, "residual_norms")?,
        };
        q.check(&view).py_err()?;
        Ok(view)
    }
}

#[pymethods]
impl PyQuantizer {
    /// `Quantizer(dim, bits, unbiased=False, scale="lsq", seed=0)`.
    #[new]
    #[pyo3(signature = (dim, bits, unbiased=false, scale="lsq", seed=Seed(0)))]
    fn new(dim: Dim, bits: Bits, unbiased: bool, scale: &str, seed: Seed) -> PyResult<Self> {
        let (Dim(dim), Bits(bits), Seed(seed)) = (dim, bits, seed);
        let mode = if unbiased { Mode::Prod } else { Mode::Mse };
        let inner =
            Quantizer::new(dim, bits, mode, ScaleMode::parse(scale).py_err()?, seed).py_err()?;
        Ok(PyQuantizer { inner })
    }

    /// Vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    /// Total bits per coordinate.
    #[getter]
    fn bits(&self) -> u8 {
        self.inner.bits()
    }
    /// Bits of the Lloyd-Max codes.
    #[getter]
    fn mse_bits(&self) -> u8 {
        self.inner.mse_bits()
    }
    /// True for the QJL (inner-product) mode.
    #[getter]
    fn unbiased(&self) -> bool {
        self.inner.mode() == Mode::Prod
    }
    /// The stored-scale rule: "norm", "lsq" or "proj".
    #[getter]
    fn scale(&self) -> &'static str {
        self.inner.scale_mode().name()
    }
    /// Rotation seed.
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed()
    }
    /// Packed code bytes per vector.
    #[getter]
    fn code_bytes(&self) -> usize {
        self.inner.code_bytes()
    }
    /// Packed sign bytes per vector (0 in MSE mode).
    #[getter]
    fn sign_bytes(&self) -> usize {
        self.inner.sign_bytes()
    }
    /// All bytes stored per vector.
    #[getter]
    fn bytes_per_vector(&self) -> usize {
        self.inner.bytes_per_vector()
    }

    /// Quantizes `x` (n × dim, float32, C-contiguous) → (codes, scales, signs, residual_norms).
    fn quantize<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<Packed<'py>> {
        let q = &self.inner;
        let data = rows2(&x, "x", None, q.dim())?;
        let n = data.len() / q.dim();
        let prod = q.mode() == Mode::Prod;
        // numpy allocates the outputs (huge pages for large arrays; see `filled_array2`)
        let codes = PyArray2::<u8>::zeros(py, [n, q.code_bytes()], false);
        let scales = PyArray1::<f32>::zeros(py, n, false);
        let signs = PyArray2::<u8>::zeros(py, [n, if prod { q.sign_bytes() } else { 0 }], false);
        let rnorms = PyArray1::<f32>::zeros(py, if prod { n } else { 0 }, false);
        {
            let (mut c, mut s) = (codes.readwrite(), scales.readwrite());
            let (mut g, mut r) = (signs.readwrite(), rnorms.readwrite());
            let out = BatchMut {
                codes: c.as_slice_mut().map_err(contiguous)?,
                scales: s.as_slice_mut().map_err(contiguous)?,
                qjl_signs: g.as_slice_mut().map_err(contiguous)?,
                residual_norms: r.as_slice_mut().map_err(contiguous)?,
            };
            py.detach(|| q.quantize_into(data, out)).py_err()?;
        }
        Ok((codes, scales, signs, rnorms))
    }

    /// Reconstructs float32 rows (n × dim) from packed buffers.
    fn dequantize<'py>(
        &self,
        py: Python<'py>,
        codes: PyReadonlyArray2<'py, u8>,
        scales: PyReadonlyArray1<'py, f32>,
        signs: PyReadonlyArray2<'py, u8>,
        rnorms: PyReadonlyArray1<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let bufs = Buffers {
            codes,
            scales,
            signs,
            rnorms,
        };
        let view = bufs.view(&self.inner)?;
        let q = &self.inner;
        filled_array2(py, view.n, q.dim(), |out| q.dequantize(&view, out))
    }

    /// Inner-product estimates (n_queries × n) of float32 queries against packed vectors.
    #[allow(clippy::too_many_arguments)]
    fn inner_products<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        codes: PyReadonlyArray2<'py, u8>,
        scales: PyReadonlyArray1<'py, f32>,
        signs: PyReadonlyArray2<'py, u8>,
        rnorms: PyReadonlyArray1<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let qs = rows2(&queries, "queries", None, self.inner.dim())?;
        let bufs = Buffers {
            codes,
            scales,
            signs,
            rnorms,
        };
        let view = bufs.view(&self.inner)?;
        let q = &self.inner;
        let nq = qs.len() / q.dim().max(1);
        filled_array2(py, nq, view.n, |out| q.inner_products(qs, &view, out))
    }

    /// Applies the rotation (or its inverse) to float32 rows; returns a new array.
    #[pyo3(signature = (x, inverse=false))]
    fn rotate<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        inverse: bool,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let rot = self.inner.rotation();
        let d = rot.dim();
        let data = rows2(&x, "x", None, d)?;
        let mut out = data.to_vec();
        py.detach(|| {
            for row in out.chunks_exact_mut(d) {
                if inverse {
                    rot.apply_inverse(row)
                } else {
                    rot.apply(row)
                }
            }
        });
        to_array2(py, out, data.len() / d, d)
    }

    /// Codebook centroids (unit-vector scale), ascending.
    fn centroids<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        to_array1(py, self.inner.codebook().centroids().to_vec())
    }

    /// Serialized parameters (versioned, checksummed).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &format::quantizer_to_bytes(&self.inner))
    }

    /// Rebuilds a quantizer from `to_bytes()`.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(PyQuantizer {
            inner: format::quantizer_from_bytes(data).py_err()?,
        })
    }

    /// Serializes packed buffers with this quantizer's parameters; `entropy` rANS-codes the codes.
    #[pyo3(signature = (codes, scales, signs, rnorms, entropy=false))]
    fn batch_to_bytes<'py>(
        &self,
        py: Python<'py>,
        codes: PyReadonlyArray2<'py, u8>,
        scales: PyReadonlyArray1<'py, f32>,
        signs: PyReadonlyArray2<'py, u8>,
        rnorms: PyReadonlyArray1<'py, f32>,
        entropy: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let bufs = Buffers {
            codes,
            scales,
            signs,
            rnorms,
        };
        let view = bufs.view(&self.inner)?;
        let q = &self.inner;
        let bytes = py
            .detach(|| format::batch_to_bytes(q, &view, entropy))
            .py_err()?;
        Ok(PyBytes::new(py, &bytes))
    }
}

/// Reads `batch_to_bytes` output → (quantizer, codes, scales, signs, residual_norms).
#[pyfunction]
pub fn batch_from_bytes<'py>(py: Python<'py>, data: &[u8]) -> PyResult<(PyQuantizer, Packed<'py>)> {
    let (q, b) = py.detach(|| format::batch_from_bytes(data)).py_err()?;
    let n = b.n;
    let packed = (
        to_array2(py, b.codes, n, q.code_bytes())?,
        to_array1(py, b.scales),
        to_array2(py, b.qjl_signs, n, q.sign_bytes())?,
        to_array1(py, b.residual_norms),
    );
    Ok((PyQuantizer { inner: q }, packed))
}
