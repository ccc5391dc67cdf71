"""Lloyd-Max codebooks for the coordinates of a randomly rotated unit vector (seed API names)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _native
from ._convert import kind_of, to_kind
from ._native import TurboQuantError


class Codebook(NamedTuple):
    """Decision boundaries (2^b − 1) and reconstruction centroids (2^b), unit-vector scale."""

    boundaries: np.ndarray
    centroids: np.ndarray


def get_codebook(bit_width: int, dim: int) -> Codebook:
    """The Lloyd-Max codebook for the exact coordinate law in dimension ``dim`` (any d ≥ 2)."""
    centroids, boundaries, _, _ = _native.codebook(dim, bit_width)
    return Codebook(boundaries=boundaries.astype(np.float64), centroids=centroids.astype(np.float64))


def codebook_distortion(bit_width: int, dim: int) -> float:
    """D_mse = E‖x − x̂‖² of the codebook for a random unit vector in dimension ``dim``."""
    return float(_native.codebook(dim, bit_width)[3])


class LloydMaxCodebook:
    """Scalar quantizer of rotated coordinates: ``quantize`` → codes, ``dequantize`` → centroids."""

    def __init__(self, dim: int, bit_width: int):
        self.dim = dim
        self.bit_width = bit_width
        centroids, boundaries, probabilities, distortion = _native.codebook(dim, bit_width)
        self._centroids = centroids
        self._boundaries = boundaries
        self.probabilities = probabilities
        self.distortion = distortion

    @property
    def boundaries(self) -> np.ndarray:
        """Thresholds between codes (float32, ascending)."""
        return self._boundaries

    @property
    def centroids(self) -> np.ndarray:
        """Reconstruction values (float32, ascending)."""
        return self._centroids

    def quantize(self, x: Any) -> Any:
        """Code of each coordinate: the number of boundaries strictly below it (uint8)."""
        kind = kind_of(x)
        arr = np.asarray(x.detach().cpu().numpy() if kind == "torch" else x, dtype=np.float32)
        codes = np.searchsorted(self._boundaries, arr, side="left").astype(np.uint8)
        return to_kind(codes, kind)

    def dequantize(self, codes: Any) -> Any:
        """Centroid values of ``codes``."""
        kind = kind_of(codes)
        arr = np.asarray(codes.cpu().numpy() if kind == "torch" else codes)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"codes must be integers, got dtype {arr.dtype}")
        top = len(self._centroids) - 1
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > top):
            raise TurboQuantError(f"codes must be in 0..{top} for {self.bit_width} bits")
        return to_kind(self._centroids[arr.astype(np.intp)], kind)

    def to(self, device: Any) -> LloydMaxCodebook:
        """Seed compatibility: codebooks live on the host; returns self."""
        return self


__all__ = ["Codebook", "LloydMaxCodebook", "get_codebook", "codebook_distortion"]
