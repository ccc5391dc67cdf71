"""``TurboQuantIndex``: a flat vector index over TurboQuant codes, backed by the Rust crate.

Same names as turboquant-torch's ``TurboQuantIndex``, with these differences: ``add`` appends
(it never overwrites), ids are stable int64 values, ``remove`` is O(1) per id, search scans
packed codes with SIMD lookup tables (never dequantizing the database), and the index can be
saved and memory-mapped. Search releases the GIL and is safe to call from several threads.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _native
from ._convert import as_int, as_rows, is_torch, to_kind
from ._native import TurboQuantError

_METRICS = ("ip", "cosine", "l2")


_INT64_MAX = np.iinfo(np.int64).max


def _as_id_array(ids: Any, name: str) -> np.ndarray:
    """A 1-D C-contiguous int64 array of ids (each in 0..2**63-1), or TypeError/TurboQuantError."""
    arr = ids.detach().cpu().numpy() if is_torch(ids) else np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)  # [] (float64 to numpy) or any empty array
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if int(arr.min()) < 0:
        raise TurboQuantError(f"{name} must be non-negative")
    if int(arr.max()) > _INT64_MAX:
        raise TurboQuantError(f"{name} must be at most 2**63 - 1, got {int(arr.max())}")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    return out if out.flags.aligned else out.copy()


class TurboQuantIndex:
    """Exhaustive inner-product / cosine / L2 search over ``bit_width``-bit TurboQuant codes.

    Args:
        dim: vector dimension.
        bit_width: bits per coordinate, 1..8 (fast-scan SIMD kernels for 1-4).
        metric: ``"ip"``, ``"cosine"`` (vectors and queries normalized) or ``"l2"``
            (squared distances, smaller is better).
        seed: rotation seed.
        rerank: keep fp16 originals (2 bytes per coordinate, counted in ``memory_bytes``)
            and re-score the best ``4·k`` candidates exactly.
        center: quantize ``x − c`` and score the rest exactly (one float32 per vector).
            ``True``: ``c`` is the mean of the first ``add`` if it holds at least 256 vectors
            (otherwise no centring); an array of ``dim`` values fixes ``c``; ``False``: off.
            Real embeddings share a mean direction; centring cuts the score error (wiki-MiniLM
            recall@10 at 1 / 2 / 4 bits: 0.682 → 0.707, 0.828 → 0.848, 0.953 → 0.956;
            benches/RESULTS.md, "Vector search").
        num_threads: threads for Rust work (process-wide, as ``turboquant_rs.set_num_threads``);
            ``None`` leaves the setting alone.
    """

    def __init__(
        self,
        dim: int,
        bit_width: int = 4,
        metric: str = "ip",
        seed: int = 0,
        *,
        rerank: bool = False,
        center: bool | Any = True,
        num_threads: int | None = None,
    ) -> None:
        if metric not in _METRICS:
            raise TurboQuantError(f"metric must be one of {_METRICS}, got {metric!r}")
        dim = as_int(dim, "dim", 2, 1 << 24)
        bit_width = as_int(bit_width, "bit_width", 1, 8)
        seed = as_int(seed, "seed", 0, (1 << 64) - 1)
        if num_threads is not None:
            _native.set_num_threads(as_int(num_threads, "num_threads", 0))
        auto = center is True
        self._index = _native.Index(dim, bit_width, metric, seed, bool(rerank), auto)
        if not isinstance(center, bool):
            c, _, _ = as_rows(center, int(dim), "center")
            if len(c) != 1:
                raise TurboQuantError(f"center must be one vector of {dim} values, got {len(c)} rows")
            self._index.set_center(c[0])

    @classmethod
    def _wrap(cls, native: Any) -> TurboQuantIndex:
        obj = cls.__new__(cls)
        obj._index = native
        return obj

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._index.dim

    @property
    def bit_width(self) -> int:
        """Bits per coordinate."""
        return self._index.bits

    @property
    def metric(self) -> str:
        """``"ip"``, ``"cosine"`` or ``"l2"``."""
        return self._index.metric

    @property
    def center(self) -> np.ndarray | None:
        """The centre the vectors are quantized against (float32, dim), once fixed."""
        return self._index.center

    @property
    def n_vectors(self) -> int:
        """Number of live (not removed) vectors."""
        return len(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (
            f"TurboQuantIndex(dim={self.dim}, bit_width={self.bit_width}, metric={self.metric!r}, "
            f"n_vectors={self.n_vectors})"
        )

    def memory_bytes(self) -> int:
        """Bytes held by the index's buffers (codes, scales, biases, centre, originals, ids)."""
        return self._index.memory_bytes()

    def add(self, vectors: Any, ids: Any = None) -> Any:
        """Appends ``vectors`` (n, dim) or (dim,); returns their int64 ids (numpy, or torch for
        torch input). Without ``ids``, ids continue from one past the largest id so far."""
        rows, _, kind = as_rows(vectors, self.dim, "vectors")
        id_arr = None if ids is None else _as_id_array(ids, "ids")
        if id_arr is not None and len(id_arr) != len(rows):
            raise TurboQuantError(f"{len(id_arr)} ids for {len(rows)} vectors")
        return to_kind(self._index.add(rows, id_arr), kind)

    def remove(self, ids: Any) -> int:
        """Removes ``ids`` (unknown ids are ignored); returns how many were removed."""
        return self._index.remove(_as_id_array(ids, "ids"))

    def search(self, queries: Any, k: int = 10, *, filter: Any = None) -> tuple[Any, Any]:
        """The ``k`` best vectors per query → ``(scores, ids)``, best first.

        ``queries`` is (nq, dim) or a single (dim,) query (1-D results). Scores are inner
        products, cosines, or squared L2 distances. ``k`` is capped by the number of live
        vectors (as the seed does): results have ``min(k, len(self))`` columns, and positions
        that a ``filter`` leaves without a match hold id -1 (score −inf, +inf for L2).
        ``filter`` restricts the scan: an integer array of allowed ids, or a boolean mask
        indexed by id (``mask[id]``; ids past its end are excluded).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise TypeError(f"k must be a non-negative int, got {k!r}")
        rows, lead, kind = as_rows(queries, self.dim, "queries")
        allow_ids = allow_mask = None
        if filter is not None:
            f = filter.detach().cpu().numpy() if is_torch(filter) else np.asarray(filter)
            if f.dtype == np.bool_:
                allow_mask = np.ascontiguousarray(f.reshape(-1))
            elif f.size == 0:
                allow_ids = np.zeros(0, dtype=np.int64)  # filter=[]: nothing allowed
            else:
                allow_ids = _as_id_array(f, "filter")
        k = min(int(k), len(self._index))  # also keeps k ≥ 2**64 from overflowing the binding
        scores, ids = self._index.search(rows, k, allow_ids, allow_mask)
        shape = (*lead, ids.shape[1])
        return to_kind(scores.reshape(shape), kind), to_kind(ids.reshape(shape), kind)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the index to ``path`` (versioned, checksummed), atomically: through a
        uniquely named temporary file in the same folder, flushed to disk and renamed into
        place, so concurrent saves and readers never see a partial file; on error the
        temporary file is removed."""
        self._index.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> TurboQuantIndex:
        """Reads an index file (``CorruptFileError`` if it is truncated, damaged or unknown).

        With ``mmap`` (the default) the codes are served from a read-only mapping of the file,
        which is *checked*: the file's length and modification time are compared with those at
        load before every search, save and add, and a file truncated or rewritten in place
        raises ``CorruptFileError`` (reload it) instead of crashing the process or silently
        changing results. Replacing the file with :meth:`save` (a rename) is always safe; the
        mapping keeps the data it was loaded with. A change that races with a search already
        running is not covered: use ``mmap=False`` (a private copy in memory) for files that
        other processes may rewrite in place.
        """
        return cls._wrap(_native.Index.load(os.fspath(path), bool(mmap)))

    def to(self, device: Any) -> TurboQuantIndex:
        """Seed compatibility: the index lives in CPU memory; returns ``self``."""
        return self


__all__ = ["TurboQuantIndex"]
