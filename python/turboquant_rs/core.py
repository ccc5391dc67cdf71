"""TurboQuant quantizers with packed storage (seed API: TurboQuant, TurboQuantMSE).

Outputs hold the real packed buffers: ``b``-bit codes take ``b`` bits, one float32 scale per
vector, and in unbiased mode ``d`` sign bits plus one float32 residual norm. ``nbytes`` and
``compression_ratio`` are computed from those buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from ._convert import as_int, as_rows, is_cuda, to_kind
from ._native import TurboQuantError

#: ``TurboQuantOutput.kind`` of outputs whose buffers are CUDA torch tensors (the GPU path).
CUDA = "cuda"

#: Stored-scale rules: "lsq" (default, lowest MSE), "norm" (the paper's ‖x‖), "proj" (exact ⟨x̂, x⟩).
SCALES = ("lsq", "norm", "proj")


@dataclass(frozen=True)
class QJLOutput:
    """Packed QJL sign bits (n, ⌈d/8⌉) and the residual norms (n,)."""

    sign_bits: np.ndarray
    norms: np.ndarray


@dataclass(frozen=True)
class TurboQuantOutput:
    """Packed result of :meth:`TurboQuant.quantize` for vectors of leading shape ``shape``.

    It carries everything that defines its bytes (``dim``, ``bit_width``, ``unbiased``,
    ``scale`` and the rotation ``seed``): a quantizer whose parameters differ refuses it in
    ``dequantize``, ``compute_inner_product`` and ``save_output`` (``TurboQuantError``)
    instead of decoding it with the wrong rotation. ``None`` (hand-built outputs) is not
    checked.
    """

    codes: np.ndarray
    scales: np.ndarray
    qjl_signs: np.ndarray
    residual_norms: np.ndarray
    bit_width: int
    dim: int
    shape: tuple[int, ...]
    kind: str
    seed: int | None = None
    unbiased: bool | None = None
    scale: str | None = None

    @property
    def n(self) -> int:
        """Number of vectors."""
        return int(self.scales.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed buffers."""
        return int(
            self.codes.nbytes + self.scales.nbytes + self.qjl_signs.nbytes + self.residual_norms.nbytes
        )

    @property
    def original_nbytes(self) -> int:
        """Bytes the same vectors take as float32."""
        return 4 * self.n * self.dim

    def compression_ratio(self) -> float:
        """float32 bytes / stored bytes, from the real buffers."""
        return self.original_nbytes / self.nbytes

    # seed names
    @property
    def mse_codes(self) -> np.ndarray:
        """Seed name of ``codes`` (here packed)."""
        return self.codes

    @property
    def mse_norms(self) -> np.ndarray:
        """Seed name of ``scales``."""
        return self.scales

    @property
    def qjl_output(self) -> QJLOutput | None:
        """Seed view of the QJL part (None in MSE mode)."""
        if self.qjl_signs.shape[1] == 0:
            return None
        return QJLOutput(sign_bits=self.qjl_signs, norms=self.residual_norms)

    def buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(codes, scales, signs, residual norms), as the native engine takes them."""
        return self.codes, self.scales, self.qjl_signs, self.residual_norms


class TurboQuant:
    """TurboQuant: rotation + Lloyd-Max codes (+ optional 1-bit QJL residual sketch).

    Args:
        dim: vector dimension (any d ≥ 2; no padding).
        bit_width: total bits per coordinate, 1..8 (2..8 when ``unbiased``).
        unbiased: spend one of the bits on a QJL sketch of the residual, making
            :meth:`compute_inner_product` unbiased. The MSE-only mode (default) has lower
            error variance for queries independent of the data, which is what attention and
            search mostly see.
        seed: seed of the rotations.
        scale: what is stored per vector: "lsq" (default; least-squares scale, never a
            higher MSE than the paper's), "norm" (the paper's ‖x‖), or "proj" (makes
            ⟨x̂, x⟩ = ‖x‖², removing the shrinkage bias of inner products near x).
    """

    def __init__(
        self, dim: int, bit_width: int = 3, unbiased: bool = False, seed: int = 0, *, scale: str = "lsq"
    ):
        self.dim = as_int(dim, "dim", 2, 1 << 24)
        self.bit_width = as_int(bit_width, "bit_width", 1, 8)
        self.unbiased = bool(unbiased)
        self.seed = as_int(seed, "seed", 0, (1 << 64) - 1)
        self._q = _native.Quantizer(self.dim, self.bit_width, self.unbiased, scale, self.seed)
        self.scale: str = self._q.scale

    @property
    def bytes_per_vector(self) -> int:
        """Stored bytes per vector (codes + scale, + signs + residual norm when unbiased)."""
        return int(self._q.bytes_per_vector)

    def quantize(self, x: Any) -> TurboQuantOutput:
        """Quantizes ``x`` of shape (..., dim): numpy float16/32/64 or a CPU torch tensor; a CUDA
        tensor (float32/16, bfloat16) is quantized on the GPU into CUDA buffers of the same bytes
        (MSE mode with the default "lsq" scale)."""
        if is_cuda(x):
            return self._quantize_gpu(x)
        rows, lead, kind = as_rows(x, self.dim)
        codes, scales, signs, rnorms = self._q.quantize(rows)
        return TurboQuantOutput(
            codes, scales, signs, rnorms, self.bit_width, self.dim, lead, kind, *self._params()
        )

    def _gpu_ops(self) -> Any:
        from .cuda import _runtime, ops

        _runtime.require_device()
        if self.unbiased or self.scale != "lsq":
            raise TurboQuantError(
                "the GPU path quantizes in MSE mode with scale='lsq' (unbiased=False); "
                f"this quantizer has unbiased={self.unbiased}, scale={self.scale!r}"
            )
        return ops

    def _quantize_gpu(self, x: Any) -> TurboQuantOutput:
        ops = self._gpu_ops()
        if x.ndim < 1 or int(x.shape[-1]) != self.dim:
            raise TurboQuantError(f"x must have shape (..., {self.dim}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        lead = tuple(int(v) for v in x.shape[:-1])
        xr = x.detach().reshape(-1, self.dim)
        if str(xr.dtype) == "torch.float64":
            xr = xr.float()
        try:
            codes, scales = ops.quantize(xr, self.bit_width, self.seed)
        except ValueError as err:
            raise TurboQuantError(str(err)) from err
        empty = codes.new_empty((int(codes.shape[0]), 0))
        return TurboQuantOutput(
            codes, scales, empty, scales.new_empty((0,)), self.bit_width, self.dim, lead, CUDA,
            *self._params(),
        )  # fmt: skip

    def _params(self) -> tuple[int, bool, str]:
        """(seed, unbiased, scale): with dim and bit_width, what defines an output's bytes."""
        return self.seed, self.unbiased, self.scale

    def _check(self, out: TurboQuantOutput) -> None:
        if not isinstance(out, TurboQuantOutput):
            raise TypeError(f"expected a TurboQuantOutput, got {type(out).__name__}")
        mine = {"dim": self.dim, "bit_width": self.bit_width}
        mine.update(zip(("seed", "unbiased", "scale"), self._params(), strict=True))
        theirs = {name: getattr(out, name) for name in mine}
        bad = [n for n, v in theirs.items() if v is not None and v != mine[n]]
        if bad:
            fmt = ", ".join
            raise TurboQuantError(
                f"output is for {fmt(f'{n}={theirs[n]!r}' for n in mine)}; this quantizer has "
                f"{fmt(f'{n}={v!r}' for n, v in mine.items())} (differs in {fmt(bad)})"
            )

    def dequantize(self, output: TurboQuantOutput) -> Any:
        """Reconstruction of shape (..., dim), as numpy or torch like the input was."""
        self._check(output)
        if output.kind == CUDA:
            ops = self._gpu_ops()
            x = ops.dequantize(output.codes, output.scales, self.dim, self.bit_width, self.seed)
            return x.reshape(*output.shape, self.dim)
        x = self._q.dequantize(*output.buffers())
        return to_kind(x.reshape(*output.shape, self.dim), output.kind)

    def compute_inner_product(self, query: Any, output: TurboQuantOutput) -> Any:
        """⟨query, x⟩ estimates from the codes: (n_queries, n), or (n,) for a 1-D query.

        Each query is rotated once and scored through per-coordinate lookup tables; the
        stored vectors are never decoded. GPU outputs (CUDA queries) are scored as one matmul
        against the vectors decoded on the device.
        """
        self._check(output)
        if output.kind == CUDA:
            if not is_cuda(query):
                raise TurboQuantError("the output is on the GPU: the query must be a CUDA tensor")
            x = self.dequantize(output).reshape(-1, self.dim)
            q = query.detach().float()
            scores = q.reshape(-1, self.dim) @ x.T
            return scores[0] if q.ndim == 1 else scores
        rows, lead, kind = as_rows(query, self.dim, "query")
        scores = self._q.inner_products(rows, *output.buffers())
        if len(lead) == 0:
            scores = scores[0]
        return to_kind(scores, kind)

    def compression_ratio(self, output: TurboQuantOutput | None = None) -> float:
        """float32 bytes / stored bytes (of ``output``'s buffers, or per vector)."""
        if output is not None:
            return output.compression_ratio()
        return 4.0 * self.dim / self.bytes_per_vector

    def memory_bytes(self, n_vectors: int) -> int:
        """Bytes that ``n_vectors`` quantized vectors hold (exactly the buffer sizes)."""
        return int(n_vectors) * self.bytes_per_vector

    def save_output(self, output: TurboQuantOutput, entropy: bool = False) -> bytes:
        """Serializes ``output`` with this quantizer's parameters (versioned, checksummed).

        ``entropy=True`` rANS-codes the codes with the codebook's own cell probabilities
        (about 5 % smaller at 4 bits).
        """
        self._check(output)
        bufs = output.buffers()
        if output.kind == CUDA:
            bufs = tuple(np.ascontiguousarray(b.cpu().numpy()) for b in bufs)  # type: ignore[assignment]
        return bytes(self._q.batch_to_bytes(*bufs, entropy))

    @staticmethod
    def load_output(data: bytes) -> tuple[TurboQuant, TurboQuantOutput]:
        """Inverse of :meth:`save_output`: the quantizer and its output (as numpy, flat)."""
        q, (codes, scales, signs, rnorms) = _native.batch_from_bytes(data)
        tq = TurboQuant(q.dim, q.bits, q.unbiased, q.seed, scale=q.scale)
        out = TurboQuantOutput(
            codes, scales, signs, rnorms, q.bits, q.dim, (int(scales.shape[0]),), "numpy", *tq._params()
        )
        return tq, out

    def to(self, device: Any) -> TurboQuant:
        """Seed compatibility: the CPU engine has no device state; returns self."""
        return self


@dataclass(frozen=True)
class MSEQuantizedOutput:
    """Seed-named view of an MSE-mode output: packed codes, scales (the stored norms), bits."""

    codes: np.ndarray
    norms: np.ndarray
    bit_width: int
    packed: TurboQuantOutput

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed buffers."""
        return self.packed.nbytes


class TurboQuantMSE:
    """TurboQuant_mse (seed name): ``bit_width`` bits of Lloyd-Max codes per coordinate."""

    def __init__(self, dim: int, bit_width: int = 2, seed: int = 0, *, scale: str = "lsq"):
        self.dim = dim
        self.bit_width = bit_width
        self._tq = TurboQuant(dim, bit_width, unbiased=False, seed=seed, scale=scale)

    def quantize(self, x: Any) -> MSEQuantizedOutput:
        """Quantizes ``x`` (..., dim)."""
        out = self._tq.quantize(x)
        return MSEQuantizedOutput(out.codes, out.scales, self.bit_width, out)

    def dequantize(self, output: MSEQuantizedOutput) -> Any:
        """Reconstruction (..., dim)."""
        return self._tq.dequantize(output.packed)

    def get_residual(self, x: Any) -> Any:
        """``x − dequantize(quantize(x))``."""
        return x - self.dequantize(self.quantize(x))

    def distortion(self, x: Any) -> Any:
        """Per-vector ‖x − x̂‖² / ‖x‖²."""
        r = self.get_residual(x)
        return (r * r).sum(-1) / (x * x).sum(-1)

    def to(self, device: Any) -> TurboQuantMSE:
        """Seed compatibility: returns self."""
        return self
