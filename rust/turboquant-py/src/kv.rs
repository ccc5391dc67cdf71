//! `KvStore`: one attention layer's packed K/V (the core's `kv::KvStore`) over numpy buffers.

use crate::args::{Bits, Dim, Seed};
use crate::errors::{invalid, IntoPy};
use numpy::ndarray::{Array3, Array4};
use numpy::{
    IntoPyArray, PyArray3, PyArray4, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
    PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use turboquant::kv::{AttendParams, ExactSegment, KvConfig, KvStore, SideSpec};

/// One side's settings as Python sees them: (bits, outliers, outlier_bits, center).
type SideSettings = (u8, usize, u8, bool);

/// Packed keys and values of one attention layer for a batch (`B × H` token streams).
#[pyclass(name = "KvStore", module = "turboquant_rs._native")]
pub struct PyKvStore {
    inner: KvStore,
}

/// The contiguous data of a 4-D array whose shape is `(_, heads, _, dim)`.
fn block<'a>(
    a: &'a PyReadonlyArray4<'_, f32>,
    what: &str,
    heads: usize,
    dim: usize,
    heads_name: &str,
) -> PyResult<(&'a [f32], [usize; 4])> {
    let s = a.shape();
    let shape = [s[0], s[1], s[2], s[3]];
    if shape[1] != heads || shape[3] != dim {
        return Err(invalid(format!(
            "{what} must have shape (batch, {heads}, tokens, {dim}) ({heads_name} × head_dim), got {shape:?}"
        )));
    }
    let data = a
        .as_slice()
        .map_err(|_| invalid(format!("{what} must be C-contiguous")))?;
    Ok((data, shape))
}

/// One side's spec from the Python arguments.
fn side(bits: u8, outliers: usize, outlier_bits: Option<Bits>, center: bool) -> SideSpec {
    SideSpec {
        bits,
        outliers,
        outlier_bits: outlier_bits.map_or((bits + 1).min(8), |b| b.0),
        center,
    }
}

#[pymethods]
impl PyKvStore {
    /// `KvStore(head_dim, kv_heads, key_bits, value_bits, key_outliers=0, key_outlier_bits=None,
    /// value_outliers=0, value_outlier_bits=None, center=True, seed=0)`; outlier bits default
    /// to one more than the side's bits (at most 8).
    #[new]
    #[pyo3(signature = (head_dim, kv_heads, key_bits, value_bits, key_outliers=0, key_outlier_bits=None,
        value_outliers=0, value_outlier_bits=None, center=true, seed=Seed(0)))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        head_dim: Dim,
        kv_heads: usize,
        key_bits: Bits,
        value_bits: Bits,
        key_outliers: usize,
        key_outlier_bits: Option<Bits>,
        value_outliers: usize,
        value_outlier_bits: Option<Bits>,
        center: bool,
        seed: Seed,
    ) -> PyResult<Self> {
        let config = KvConfig {
            head_dim: head_dim.0,
            kv_heads,
            key: side(key_bits.0, key_outliers, key_outlier_bits, center),
            value: side(value_bits.0, value_outliers, value_outlier_bits, center),
            seed: seed.0,
        };
        Ok(PyKvStore {
            inner: KvStore::new(config).py_err()?,
        })
    }

    /// Channels per head.
    #[getter]
    fn head_dim(&self) -> usize {
        self.inner.config().head_dim
    }
    /// KV heads per batch row.
    #[getter]
    fn kv_heads(&self) -> usize {
        self.inner.config().kv_heads
    }
    /// Batch rows (0 before the first append).
    #[getter]
    fn batch(&self) -> usize {
        self.inner.batch()
    }
    /// Tokens stored per stream.
    #[getter]
    fn seq_len(&self) -> usize {
        self.inner.len()
    }
    /// Bytes held by the buffers.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    /// Average stored bits per key coordinate (codes only).
    #[getter]
    fn key_average_bits(&self) -> f64 {
        let c = self.inner.config();
        c.key.average_bits(c.head_dim)
    }
    /// Average stored bits per value coordinate (codes only).
    #[getter]
    fn value_average_bits(&self) -> f64 {
        let c = self.inner.config();
        c.value.average_bits(c.head_dim)
    }
    /// (bits, outliers, outlier_bits, center) of the keys and of the values, and the seed.
    fn settings(&self) -> (SideSettings, SideSettings, u64) {
        let c = self.inner.config();
        let t = |s: SideSpec| (s.bits, s.outliers, s.outlier_bits, s.center);
        (t(c.key), t(c.value), c.seed)
    }

    /// Appends keys and values of shape (batch, kv_heads, tokens, head_dim), float32.
    fn append(
        &mut self,
        py: Python<'_>,
        keys: PyReadonlyArray4<'_, f32>,
        values: PyReadonlyArray4<'_, f32>,
    ) -> PyResult<()> {
        let c = *self.inner.config();
        let (k, ks) = block(&keys, "keys", c.kv_heads, c.head_dim, "kv_heads")?;
        let (v, vs) = block(&values, "values", c.kv_heads, c.head_dim, "kv_heads")?;
        if ks != vs {
            return Err(invalid(format!(
                "keys {ks:?} and values {vs:?} must have the same shape"
            )));
        }
        let inner = &mut self.inner;
        py.detach(|| inner.append(k, v, ks[0], ks[2])).py_err()
    }

    /// Attention of queries (batch, query_heads, q_len, head_dim) over the stored tokens, read
    /// from the codes: query row (b, i) attends tokens [lo[b, i], hi[b, i]). With `exact_keys`
    /// / `exact_values` (batch, kv_heads, E, head_dim) float32 and `exact_allowed` (batch,
    /// q_len, E) uint8, those full-precision tokens join the same softmax where allowed is
    /// non-zero. Returns the normalised output (same shape) and the log-sum-exp (batch,
    /// query_heads, q_len).
    #[pyo3(signature = (queries, lo, hi, scaling, softcap=None, exact_keys=None, exact_values=None, exact_allowed=None))]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn attend<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray4<'py, f32>,
        lo: PyReadonlyArray2<'py, i64>,
        hi: PyReadonlyArray2<'py, i64>,
        scaling: f32,
        softcap: Option<f32>,
        exact_keys: Option<PyReadonlyArray4<'py, f32>>,
        exact_values: Option<PyReadonlyArray4<'py, f32>>,
        exact_allowed: Option<PyReadonlyArray3<'py, u8>>,
    ) -> PyResult<(Bound<'py, PyArray4<f32>>, Bound<'py, PyArray3<f32>>)> {
        let c = *self.inner.config();
        let s = queries.shape();
        let shape = [s[0], s[1], s[2], s[3]];
        if shape[3] != c.head_dim {
            return Err(invalid(format!(
                "queries must have shape (batch, query_heads, q_len, {}), got {shape:?}",
                c.head_dim
            )));
        }
        for (name, a) in [("lo", &lo), ("hi", &hi)] {
            if a.shape() != [shape[0], shape[2]] {
                return Err(invalid(format!(
                    "{name} must have shape (batch, q_len) = ({}, {}), got {:?}",
                    shape[0],
                    shape[2],
                    a.shape()
                )));
            }
        }
        let contiguous = |what: &str| invalid(format!("{what} must be C-contiguous"));
        let q = queries.as_slice().map_err(|_| contiguous("queries"))?;
        let lo_s = lo.as_slice().map_err(|_| contiguous("lo"))?;
        let hi_s = hi.as_slice().map_err(|_| contiguous("hi"))?;
        if q.is_empty() {
            return Err(invalid(format!("queries are empty (shape {shape:?})")));
        }
        let exact = match (&exact_keys, &exact_values, &exact_allowed) {
            (None, None, None) => None,
            (Some(k), Some(v), Some(a)) => {
                let ks = k.shape();
                if ks[0] != shape[0]
                    || ks[1] != c.kv_heads
                    || ks[3] != c.head_dim
                    || v.shape() != ks
                {
                    return Err(invalid(format!(
                        "exact keys {ks:?} and values {:?} must both be (batch={}, {}, E, {})",
                        v.shape(),
                        shape[0],
                        c.kv_heads,
                        c.head_dim
                    )));
                }
                if a.shape() != [shape[0], shape[2], ks[2]] {
                    return Err(invalid(format!(
                        "exact_allowed must have shape ({}, {}, {}), got {:?}",
                        shape[0],
                        shape[2],
                        ks[2],
                        a.shape()
                    )));
                }
                Some(ExactSegment {
                    tokens: ks[2],
                    keys: k.as_slice().map_err(|_| contiguous("exact_keys"))?,
                    values: v.as_slice().map_err(|_| contiguous("exact_values"))?,
                    allowed: a.as_slice().map_err(|_| contiguous("exact_allowed"))?,
                })
            }
            _ => {
                return Err(invalid(
                    "exact_keys, exact_values and exact_allowed go together".to_string(),
                ))
            }
        };
        let p = AttendParams {
            query_heads: shape[1],
            q_len: shape[2],
            lo: lo_s,
            hi: hi_s,
            scaling,
            softcap,
            exact,
        };
        let mut out = vec![0.0f32; q.len()];
        let mut lse = vec![0.0f32; shape[0] * shape[1] * shape[2]];
        let inner = &self.inner;
        py.detach(|| inner.attend(q, &p, &mut out, &mut lse))
            .py_err()?;
        let out = Array4::from_shape_vec(shape, out).map_err(|e| invalid(e.to_string()))?;
        let lse = Array3::from_shape_vec((shape[0], shape[1], shape[2]), lse)
            .map_err(|e| invalid(e.to_string()))?;
        Ok((out.into_pyarray(py), lse.into_pyarray(py)))
    }

    /// Every stored key and value, reconstructed: two float32 arrays (batch, kv_heads, seq_len, head_dim).
    #[allow(clippy::type_complexity)]
    fn decompress<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyArray4<f32>>, Bound<'py, PyArray4<f32>>)> {
        let c = *self.inner.config();
        let shape = [self.inner.batch(), c.kv_heads, self.inner.len(), c.head_dim];
        let n: usize = shape.iter().product();
        let (mut k, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let inner = &self.inner;
        py.detach(|| inner.decompress(&mut k, &mut v)).py_err()?;
        let to4 =
            |x: Vec<f32>| Array4::from_shape_vec(shape, x).map_err(|e| invalid(e.to_string()));
        Ok((to4(k)?.into_pyarray(py), to4(v)?.into_pyarray(py)))
    }

    /// Keeps the first `n` tokens of every stream.
    fn truncate(&mut self, n: usize) {
        self.inner.truncate(n)
    }

    /// Keeps the batch rows `rows` (int64) in that order; a row may repeat.
    fn select(&mut self, rows: PyReadonlyArray1<'_, i64>) -> PyResult<()> {
        let rows = rows
            .as_slice()
            .map_err(|_| invalid("rows must be C-contiguous"))?;
        let rows: Vec<usize> = rows
            .iter()
            .map(|&r| {
                usize::try_from(r).map_err(|_| invalid(format!("batch index {r} is negative")))
            })
            .collect::<PyResult<_>>()?;
        self.inner.select(&rows).py_err()
    }

    /// Repeats every batch row `repeats` times in place.
    fn repeat_interleave(&mut self, repeats: usize) -> PyResult<()> {
        self.inner.repeat_interleave(repeats).py_err()
    }

    /// Drops every stored token and the batch size.
    fn reset(&mut self) {
        self.inner.reset()
    }

    /// An independent copy.
    fn copy(&self) -> PyKvStore {
        PyKvStore {
            inner: self.inner.clone(),
        }
    }
}
