"""Array plumbing: numpy or torch (CPU) in, the same kind out, no copies where avoidable.

Rust works on C-contiguous float32 rows. ``as_rows`` returns a view of the input when it
already is one (numpy float32, or a CPU torch float32 tensor through ``Tensor.numpy()``), and
converts otherwise. ``to_kind`` wraps results back as torch tensors (``torch.from_numpy``,
zero-copy) when the input was torch. torch is never imported unless a tensor is passed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._native import TurboQuantError

NUMPY = "numpy"
TORCH = "torch"


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def is_cuda(x: Any) -> bool:
    """True for a CUDA torch tensor (without importing torch)."""
    return is_torch(x) and x.device.type == "cuda"


def kind_of(x: Any) -> str:
    """'torch' for tensors, else 'numpy'."""
    return TORCH if is_torch(x) else NUMPY


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if is_torch(x):
        if x.device.type != "cpu":
            raise TurboQuantError(
                f"{name} is on {x.device}; the CPU engine takes CPU tensors (move it with .cpu())"
            )
        x = x.detach()
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_rows(x: Any, dim: int, name: str = "x") -> tuple[np.ndarray, tuple[int, ...], str]:
    """(n, dim) float32 C-contiguous rows of ``x`` (..., dim), its leading shape, and its kind."""
    kind = kind_of(x)
    arr = _to_numpy(x, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be float16, float32 or float64, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[-1] != dim:
        raise TurboQuantError(f"{name} must have shape (..., {dim}), got {tuple(arr.shape)}")
    if arr.size == 0:
        raise TurboQuantError(f"{name} is empty (shape {tuple(arr.shape)})")
    lead = tuple(arr.shape[:-1])
    # C-contiguous *and* aligned float32 (an unaligned view, e.g. from a byte buffer, is copied)
    rows = np.ascontiguousarray(arr.reshape(-1, dim), dtype=np.float32)
    if not rows.flags.aligned:
        rows = rows.copy()
    return rows, lead, kind


def as_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``lo..=hi``: Python or numpy integers only (not bool, not 2.5)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TurboQuantError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise TurboQuantError(f"{name} must be an integer in {bound}, got {v}")
    return v


def to_kind(arr: np.ndarray, kind: str) -> Any:
    """``arr`` as a torch tensor (zero-copy) if ``kind`` is 'torch', else unchanged."""
    if kind == TORCH:
        import torch

        return torch.from_numpy(arr)
    return arr
