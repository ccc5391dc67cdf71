"""QJL: 1-bit sign sketches for unbiased inner products (seed API), and bit packing helpers.

The default projection is a structured orthogonal one (the quantizer's seeded rotation,
``O(d log d)``, unit-norm orthogonal rows), which has about 2.75× lower estimator variance
than the paper's Gaussian matrix; ``proj_type="gaussian"`` or ``"rademacher"`` give the
dense i.i.d. matrices of the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from ._convert import as_rows, to_kind


def pack_bits(bits: Any) -> Any:
    """Packs {0,1} values (..., m) into bytes (..., ⌈m/8⌉), LSB first (the crate's layout)."""
    arr = np.asarray(bits.cpu().numpy() if hasattr(bits, "cpu") else bits).astype(np.uint8)
    m = arr.shape[-1]
    packed = _native.pack(np.ascontiguousarray(arr.reshape(-1, m)), 1)
    out = packed.reshape(*arr.shape[:-1], packed.shape[-1])
    return to_kind(out, "torch") if hasattr(bits, "cpu") else out


def unpack_bits(packed: Any, num_bits: int) -> Any:
    """Inverse of :func:`pack_bits`: (..., ⌈m/8⌉) bytes → (..., m) {0,1} values."""
    arr = np.asarray(packed.cpu().numpy() if hasattr(packed, "cpu") else packed).astype(np.uint8)
    flat = _native.unpack(np.ascontiguousarray(arr.reshape(-1, arr.shape[-1])), num_bits, 1)
    out = flat.reshape(*arr.shape[:-1], num_bits)
    return to_kind(out, "torch") if hasattr(packed, "cpu") else out


def sphere_abs_mean(dim: int) -> float:
    """κ_d = E|⟨s, e₁⟩| for s uniform on the unit sphere of R^d."""
    return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


@dataclass(frozen=True)
class QJLOutput:
    """Packed sign bits (n, ⌈m/8⌉) and input norms (n,)."""

    sign_bits: np.ndarray
    norms: np.ndarray
    shape: tuple[int, ...] = ()
    kind: str = "numpy"

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return int(self.sign_bits.nbytes + self.norms.nbytes)


class QJL:
    """Quantized Johnson-Lindenstrauss sketch: stores sign(S x) and ‖x‖."""

    def __init__(
        self, input_dim: int, proj_dim: int | None = None, seed: int = 0, proj_type: str = "orthogonal"
    ):
        if proj_type not in ("orthogonal", "gaussian", "rademacher"):
            raise ValueError(f"proj_type must be 'orthogonal', 'gaussian' or 'rademacher', got {proj_type!r}")
        self.input_dim = input_dim
        self.proj_dim = proj_dim or input_dim
        self.seed = seed
        self.proj_type = proj_type
        if proj_type == "orthogonal":
            blocks = -(-self.proj_dim // input_dim)
            self._rotations = [
                _native.Quantizer(input_dim, 1, seed=seed * 1_000_003 + i) for i in range(blocks)
            ]
            # unit rows: E[⟨s,y⟩ sign⟨s,x⟩] = κ_d ⟨y,x⟩/‖x‖
            self._factor = 1.0 / (self.proj_dim * sphere_abs_mean(input_dim))
        else:
            rng = np.random.default_rng(seed)
            if proj_type == "gaussian":
                mat = rng.standard_normal((self.proj_dim, input_dim))
            else:
                mat = rng.integers(0, 2, (self.proj_dim, input_dim)) * 2.0 - 1.0
            self._matrix = mat.astype(np.float32)
            self._factor = math.sqrt(math.pi / 2) / self.proj_dim

    def _project(self, rows: np.ndarray) -> np.ndarray:
        if self.proj_type == "orthogonal":
            parts = [r.rotate(rows) for r in self._rotations]
            return np.concatenate(parts, axis=1)[:, : self.proj_dim]
        return rows @ self._matrix.T

    def quantize(self, x: Any) -> QJLOutput:
        """Sketches ``x`` (..., input_dim)."""
        rows, lead, kind = as_rows(x, self.input_dim)
        z = self._project(rows)
        signs = _native.pack(np.ascontiguousarray((z >= 0).astype(np.uint8)), 1)
        return QJLOutput(signs, np.linalg.norm(rows, axis=1).astype(np.float32), lead, kind)

    def _signs(self, output: QJLOutput) -> np.ndarray:
        bits = _native.unpack(np.ascontiguousarray(output.sign_bits), self.proj_dim, 1)
        return bits.astype(np.float32) * 2.0 - 1.0

    def dequantize_for_dot(self, output: QJLOutput) -> Any:
        """A vector v with ⟨v, y⟩ an unbiased estimate of ⟨x, y⟩."""
        s = self._signs(output) * (output.norms[:, None] * self._factor)
        if self.proj_type == "orthogonal":
            full = np.zeros((s.shape[0], len(self._rotations) * self.input_dim), dtype=np.float32)
            full[:, : self.proj_dim] = s
            parts = np.split(full, len(self._rotations), axis=1)
            v = sum(
                r.rotate(np.ascontiguousarray(p), True) for r, p in zip(self._rotations, parts, strict=True)
            )
        else:
            v = s @ self._matrix
        return to_kind(np.asarray(v, dtype=np.float32).reshape(*output.shape, self.input_dim), output.kind)

    def estimate_inner_product(self, query: Any, output: QJLOutput) -> Any:
        """Unbiased ⟨query, x⟩ estimates: (n_queries, n)."""
        rows, lead, kind = as_rows(query, self.input_dim, "query")
        sy = self._project(rows)
        est = (sy @ self._signs(output).T) * (output.norms[None, :] * self._factor)
        return to_kind(est.astype(np.float32), kind)

    def to(self, device: Any) -> QJL:
        """Seed compatibility: returns self."""
        return self
