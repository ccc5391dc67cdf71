//! `Index`: the core crate's flat search index over numpy buffers.
//!
//! The class is `frozen` and `Sync`: the index sits behind a `RwLock`, searches take the read
//! lock (many at once, GIL released), `add`/`remove` the write lock.

use crate::args::{Bits, Dim, Seed};
use crate::arrays::{rows2, slice1, to_array1, to_array2};
use crate::errors::IntoPy;
use numpy::{PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use turboquant::search::{Filter, Index, IndexOptions, Metric, NO_ID};

/// A flat TurboQuant vector index (exhaustive fast-scan search, stable int64 ids).
#[pyclass(name = "Index", module = "turboquant_rs._native", frozen)]
pub struct PyIndex {
    inner: RwLock<Index>,
}

impl PyIndex {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Non-negative int64 ids as u64, or a `ValueError`.
fn to_ids(ids: &[i64]) -> PyResult<Vec<u64>> {
    ids.iter()
        .map(|&i| {
            u64::try_from(i)
                .map_err(|_| crate::errors::invalid(format!("ids must be non-negative, got {i}")))
        })
        .collect()
}

/// u64 ids as int64, with `NO_ID` as -1.
fn from_ids(ids: Vec<u64>) -> Vec<i64> {
    ids.into_iter()
        .map(|i| if i == NO_ID { -1 } else { i as i64 })
        .collect()
}

#[pymethods]
impl PyIndex {
    /// `Index(dim, bits=4, metric="ip", seed=0, rerank=False, center=True)`.
    #[new]
    #[pyo3(signature = (dim, bits=Bits(4), metric="ip", seed=Seed(0), rerank=false, center=true))]
    fn new(
        dim: Dim,
        bits: Bits,
        metric: &str,
        seed: Seed,
        rerank: bool,
        center: bool,
    ) -> PyResult<Self> {
        let (Dim(dim), Bits(bits), Seed(seed)) = (dim, bits, seed);
        let metric = Metric::parse(metric).py_err()?;
        let inner = Index::new(
            dim,
            IndexOptions {
                bits,
                metric,
                seed,
                rerank,
                center,
            },
        )
        .py_err()?;
        Ok(PyIndex {
            inner: RwLock::new(inner),
        })
    }

    /// Vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.read().dim()
    }
    /// Bits per coordinate.
    #[getter]
    fn bits(&self) -> u8 {
        self.read().bits()
    }
    /// "ip", "cosine" or "l2".
    #[getter]
    fn metric(&self) -> &'static str {
        self.read().metric().name()
    }
    /// Rotation seed.
    #[getter]
    fn seed(&self) -> u64 {
        self.read().seed()
    }
    /// Whether fp16 originals are kept for exact re-ranking.
    #[getter]
    fn rerank(&self) -> bool {
        self.read().rerank()
    }
    /// The centre the vectors are quantized against (float32, dim), or None.
    #[getter]
    fn center<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.read().center().map(|c| to_array1(py, c.to_vec()))
    }
    /// Fixes the centre (float32, dim) before the first add.
    fn set_center(&self, center: PyReadonlyArray1<'_, f32>) -> PyResult<()> {
        let c = slice1(&center, "center")?;
        self.write().set_center(c).py_err()
    }
    /// Whether the codes are served from a memory-mapped file.
    #[getter]
    fn mapped(&self) -> bool {
        self.read().is_mapped()
    }

    /// Live vectors.
    fn __len__(&self) -> usize {
        self.read().len()
    }

    /// Bytes held by all buffers of the index.
    fn memory_bytes(&self) -> usize {
        self.read().memory_bytes()
    }

    /// Appends (n, dim) float32 rows; `ids` (int64, n) or automatic ids. Returns the int64 ids.
    #[pyo3(signature = (vectors, ids=None))]
    fn add<'py>(
        &self,
        py: Python<'py>,
        vectors: PyReadonlyArray2<'py, f32>,
        ids: Option<PyReadonlyArray1<'py, i64>>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let x = rows2(&vectors, "vectors", None, self.read().dim())?;
        let given = match &ids {
            Some(a) => Some(to_ids(slice1(a, "ids")?)?),
            None => None,
        };
        let out = py
            .detach(|| {
                let mut ix = self.write();
                match given {
                    Some(ids) => ix.add_with_ids(x, &ids).map(|()| ids),
                    None => ix.add(x),
                }
            })
            .py_err()?;
        Ok(to_array1(py, from_ids(out)))
    }

    /// Removes int64 ids (unknown ones are ignored); returns how many were removed.
    fn remove(&self, py: Python<'_>, ids: PyReadonlyArray1<'_, i64>) -> PyResult<usize> {
        let ids = to_ids(slice1(&ids, "ids")?)?;
        Ok(py.detach(|| self.write().remove(&ids)))
    }

    /// Searches (nq, dim) float32 queries → (scores float32 (nq, k), ids int64 (nq, k), -1 for
    /// empty positions). `allow_ids` (int64) or `allow_mask` (bool, indexed by id) filter the scan.
    #[pyo3(signature = (queries, k, allow_ids=None, allow_mask=None))]
    #[allow(clippy::type_complexity)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: PyReadonlyArray2<'py, f32>,
        k: usize,
        allow_ids: Option<PyReadonlyArray1<'py, i64>>,
        allow_mask: Option<PyReadonlyArray1<'py, bool>>,
    ) -> PyResult<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>)> {
        let q = rows2(&queries, "queries", None, self.read().dim())?;
        let allow = match &allow_ids {
            Some(a) => Some(to_ids(slice1(a, "allow_ids")?)?),
            None => None,
        };
        let mask = match &allow_mask {
            Some(m) => Some(slice1(m, "allow_mask")?),
            None => None,
        };
        let filter = match (&allow, mask) {
            (Some(_), Some(_)) => {
                return Err(crate::errors::invalid(
                    "pass allow_ids or allow_mask, not both",
                ))
            }
            (Some(ids), None) => Filter::Ids(ids),
            (None, Some(m)) => Filter::Mask(m),
            (None, None) => Filter::All,
        };
        let res = py.detach(|| self.read().search(q, k, &filter)).py_err()?;
        Ok((
            to_array2(py, res.scores, res.nq, res.k)?,
            to_array2(py, from_ids(res.ids), res.nq, res.k)?,
        ))
    }

    /// Writes the index file.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read().save(&path)).py_err()
    }

    /// Reads an index file; `mmap` serves the codes from a read-only mapping of it.
    #[staticmethod]
    #[pyo3(signature = (path, mmap=true))]
    fn load(py: Python<'_>, path: PathBuf, mmap: bool) -> PyResult<Self> {
        let inner = py.detach(|| Index::load(&path, mmap)).py_err()?;
        Ok(PyIndex {
            inner: RwLock::new(inner),
        })
    }
}
