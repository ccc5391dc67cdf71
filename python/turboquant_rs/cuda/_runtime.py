"""Lazy cupy access, array interop (DLPack, torch's current stream) and the compiled-module cache.

Nothing here imports cupy or torch at module import time: the package imports with numpy alone,
and a GPU call without cupy raises an ImportError that names the ``turboquant_rs[cuda]`` extra.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import tables

_EXTRA_HINT = (
    "the GPU path needs cupy: install the extra `pip install turboquant_rs[cuda]` "
    "(cupy-cuda12x or cupy-cuda13x, matching your CUDA driver)"
)
_SOURCE = Path(__file__).resolve().parent / "kernels" / "turboquant.cu"
_LOCK = threading.Lock()
_MODULES: dict[tuple[Any, ...], Any] = {}
_SMEM: dict[tuple[Any, ...], tuple[int, ...]] = {}
_STREAMS: dict[int, Any] = {}

#: Element-type codes of the CUDA sources (``TQ_IN``).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


def cupy() -> Any:
    """The cupy module, or an ImportError naming the ``turboquant_rs[cuda]`` extra."""
    try:
        import cupy as cp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(_EXTRA_HINT) from e
    return cp


def available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    try:
        cp = cupy()
        return bool(cp.cuda.runtime.getDeviceCount())
    except Exception:
        return False


def require_device() -> None:
    """Raises ``TurboQuantError`` naming the extra when there is no cupy or no CUDA device (the
    public API's entry points for CUDA tensors call it first)."""
    if not available():
        from .._native import TurboQuantError

        raise TurboQuantError(
            "CUDA tensors need cupy and a CUDA device for the GPU path: pip install "
            "'turboquant-rs[cuda]' (CUDA 12) or 'turboquant-rs[cuda13]' (CUDA 13)"
        )


def is_torch(x: Any) -> bool:
    """True for a torch tensor (without importing torch)."""
    return type(x).__module__.startswith("torch")


def is_gpu_array(x: Any) -> bool:
    """True for a CUDA torch tensor or a cupy array (without importing either)."""
    if is_torch(x):
        return bool(getattr(x, "is_cuda", False))
    return type(x).__module__.startswith("cupy")


def dtype_name(x: Any) -> str:
    """``float32`` / ``float16`` / ``bfloat16`` (or another numpy-style name) of an array."""
    return str(x.dtype).replace("torch.", "")


def as_cupy(x: Any, name: str = "x") -> Any:
    """A cupy view of a CUDA torch tensor or cupy array (zero-copy through DLPack)."""
    if is_torch(x):
        if not x.is_cuda:
            raise TypeError(f"{name} is a CPU tensor; the GPU path takes CUDA tensors")
        cp = cupy()
        if dtype_name(x) == "bfloat16":
            # cupy has no bfloat16: view the bits as uint16 (the kernels convert them)
            import torch

            return cp.from_dlpack(x.contiguous().view(torch.int16)).view(cp.uint16)
        return cp.from_dlpack(x.contiguous())
    if type(x).__module__.startswith("cupy"):
        return x
    raise TypeError(f"{name} must be a CUDA torch tensor or a cupy array, got {type(x).__name__}")


def to_torch(a: Any, bf16: bool = False) -> Any:
    """A torch view of a cupy array (zero-copy); ``bf16`` reinterprets uint16 bits as bfloat16."""
    import torch

    if bf16:
        return torch.from_dlpack(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


@contextlib.contextmanager
def stream_of(x: Any) -> Iterator[None]:
    """Run cupy work on torch's current stream when ``x`` is a torch tensor."""
    if is_torch(x):
        import torch

        cp = cupy()
        ts = torch.cuda.current_stream(x.device)
        s = _STREAMS.get(ts.cuda_stream)
        if s is None:
            from_external = getattr(cp.cuda.Stream, "from_external", None)
            try:
                s = from_external(ts) if from_external is not None else None
            except Exception:
                s = None
            if s is None:
                s = cp.cuda.ExternalStream(ts.cuda_stream, ts.device.index)
            _STREAMS[ts.cuda_stream] = s
        with s:
            yield
    else:
        yield


@lru_cache(maxsize=1)
def _source() -> str:
    return _SOURCE.read_text()


def _device_id() -> int:
    return int(cupy().cuda.runtime.getDevice())


def module(
    dim: int,
    bits: int,
    kb: int | None = None,
    vb: int | None = None,
    rg: int = 4,
    dtype: str = "float32",
    attn: bool = False,
) -> Any:
    """The compiled RawModule for one configuration (compiled once per device and config);
    ``attn`` adds the attention kernels (widths ``kb``/``vb``, ``rg`` query rows per block)."""
    if not attn:
        kb = vb = rg = 0
    kb = kb or bits
    vb = vb or bits
    if dtype not in DTYPE_CODES:
        raise TypeError(f"unsupported dtype {dtype}: float32, float16 or bfloat16")
    key = (_device_id(), dim, bits, kb, vb, rg, dtype, attn)
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is not None:
            return mod
        cp = cupy()
        layout, block = tables.layout_for_dim(dim)
        t = tables.rotation_tables(dim, 0)
        scale_bits = int(np.float32(t.scale).view(np.uint32))
        cells = bits <= 4
        defs = {
            "TQ_D": dim,
            "TQ_P": block,
            "TQ_LAYOUT": layout,
            "TQ_ROUNDS": t.rounds,
            "TQ_FIRST_PERM": t.first_perm,
            "TQ_SCALE_BITS": f"0x{scale_bits:08x}",
            "TQ_IN": DTYPE_CODES[dtype],
            "TQ_BITS": bits,
            "TQ_CELLS": int(cells),
            "TQ_KB": kb,
            "TQ_VB": vb,
            "TQ_RG": max(rg, 1),
            "TQ_WITH_ATTN": int(attn),
        }
        opts = ("-std=c++17",) + tuple(f"-D{k}={v}" for k, v in defs.items())
        mod = cp.RawModule(code=_source(), options=opts)
        _MODULES[key] = mod
        return mod


def attn_smem(mod: Any, key: tuple[Any, ...], buffers: int = 1) -> int:
    """Bytes of the attention kernels' dynamic shared memory for a module (read once), with
    single (1) or double-buffered (2) tiles."""
    if key not in _SMEM:
        cp = cupy()
        out = cp.zeros(2, dtype=cp.int32)
        mod.get_function("tq_attn_smem_size")((1,), (1,), (out,))
        _SMEM[key] = tuple(int(v) for v in out.get())
    return _SMEM[key][buffers - 1]


_SM_COUNT: dict[int, int] = {}


def sm_count() -> int:
    """Multiprocessors of the current device (read once per device)."""
    dev = _device_id()
    n = _SM_COUNT.get(dev)
    if n is None:
        cp = cupy()
        attr = getattr(cp.cuda.runtime, "cudaDevAttrMultiProcessorCount", 16)  # 16 in the CUDA API
        n = int(cp.cuda.runtime.deviceGetAttribute(attr, dev))
        _SM_COUNT[dev] = n
    return n


class DeviceTables:
    """Rotation and codebook tables of one (dim, seed) / (dim, bits) on the current device."""

    _cache: dict[tuple[Any, ...], DeviceTables] = {}

    def __init__(self, dim: int, seed: int):
        cp = cupy()
        t = tables.rotation_tables(dim, seed)
        self.rot = t
        self.signs = cp.asarray(t.signs)
        perms = t.perms if t.perms.size else np.zeros(1, dtype=np.int32)
        self.perms = cp.asarray(perms)
        self.sign_bits8 = (
            cp.asarray(t.sign_bits(8).reshape(-1))
            if (t.layout == tables.SINGLE and dim % 8 == 0 and dim // 8 <= 32)
            else None
        )
        self.codebooks: dict[int, tuple[Any, Any, Any, Any, np.float32, np.float32]] = {}

    @classmethod
    def get(cls, dim: int, seed: int) -> DeviceTables:
        """Cached tables for the current device."""
        key = (_device_id(), dim, seed)
        tab = cls._cache.get(key)
        if tab is None:
            tab = cls(dim, seed)
            cls._cache[key] = tab
        return tab

    def codebook(self, bits: int) -> tuple[Any, Any, Any, Any, np.float32, np.float32]:
        """(centroids, boundaries, below, inside, offset, inv_width) on the device."""
        cb = self.codebooks.get(bits)
        if cb is None:
            from .. import _native

            cp = cupy()
            cent, bound, _, _ = _native.codebook(self.rot.dim, bits)
            cent = np.asarray(cent, dtype=np.float32)
            bound = np.asarray(bound, dtype=np.float32)
            ct = tables.cell_table(tuple(float(v) for v in bound)) if bits <= 4 else None
            if bits <= 4 and ct is None:
                raise RuntimeError(f"no cell table for dim={self.rot.dim}, bits={bits}")
            below = ct.below if ct is not None else np.zeros(32, dtype=np.int32)
            inside = ct.inside if ct is not None else np.zeros(32, dtype=np.float32)
            off = ct.offset if ct is not None else np.float32(0)
            inv_w = ct.inv_width if ct is not None else np.float32(0)
            cb = (
                cp.asarray(cent),
                cp.asarray(np.concatenate([bound, np.zeros(1, np.float32)])),
                cp.asarray(below),
                cp.asarray(inside),
                np.float32(off),
                np.float32(inv_w),
            )
            self.codebooks[bits] = cb
        return cb
