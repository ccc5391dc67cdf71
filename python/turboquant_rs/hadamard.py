"""Walsh-Hadamard transform and the structured random rotation (seed API names).

``RandomizedHadamardTransform`` is the quantizer's rotation: two or three rounds of random signs
and Hadamard blocks, with seeded permutations when ``dim`` is not a power of two (the layouts are
defined in ``rust/turboquant/src/rotation.rs``). Unlike the
seed's version it never pads: a ``dim``-vector stays ``dim`` coordinates (``padded_dim == dim``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _native
from ._convert import as_rows, is_torch, to_kind
from ._native import TurboQuantError


def fwht(x: Any, normalize: bool = True) -> Any:
    """Fast Walsh-Hadamard transform over the last axis (length a power of two)."""
    arr = x if is_torch(x) else np.asarray(x)
    if arr.ndim == 0:
        raise TurboQuantError("fwht needs at least one dimension, got a 0-d array")
    d = int(arr.shape[-1])
    rows, lead, kind = as_rows(arr, d)
    out = _native.fwht(rows, normalize).reshape(*lead, d)
    return to_kind(out, kind)


class RandomizedHadamardTransform:
    """The seeded orthogonal rotation used by the quantizers, for any ``dim``."""

    def __init__(self, dim: int, seed: int = 0):
        self.original_dim = dim
        self.padded_dim = dim
        self._q = _native.Quantizer(dim, 1, seed=seed)

    def forward(self, x: Any) -> Any:
        """``R x`` over the last axis."""
        return self._apply(x, inverse=False)

    __call__ = forward

    def inverse(self, x: Any) -> Any:
        """``Rᵀ x`` over the last axis."""
        return self._apply(x, inverse=True)

    def _apply(self, x: Any, inverse: bool) -> Any:
        rows, lead, kind = as_rows(x, self.original_dim)
        out = self._q.rotate(rows, inverse).reshape(*lead, self.original_dim)
        return to_kind(out, kind)

    def to(self, device: Any) -> RandomizedHadamardTransform:
        """Seed compatibility: returns self."""
        return self
