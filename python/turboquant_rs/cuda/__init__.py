"""GPU path of turboquant_rs: CuPy RawKernels that write and read the core's exact format.

- :func:`rotate`: the core's structured rotation (same signs, permutations and blocks).
- :func:`quantize` / :func:`dequantize`: fused quantize (norm, rotation, codebook search,
  bit-packing in one pass) giving the bytes of ``_native.Quantizer(dim, bits, False, "lsq",
  seed).quantize``, and its inverse.
- :class:`PackedKV`, :func:`quantize_append`: a preallocated packed KV cache layer
  (``rust/turboquant/src/kv/mod.rs`` layout) and in-place appends for decode steps.
- :func:`decode_attention`: softmax attention computed from the codes (split over the
  sequence, GQA-aware, with a full-precision segment, masks, soft-capping, log-sum-exp).
- :class:`GpuKVLayerStore`, :func:`gpu_packed_attention`: ``KVLayerStore`` / ``packed_attention``
  on the device (what ``TurboQuantKVCache`` and ``TurboQuantCache`` use for CUDA tensors).

The ``.cu`` sources ship in ``kernels/`` and are compiled once per device and configuration
through ``cupy.RawModule``. cupy is optional (``pip install turboquant_rs[cuda]``): this package
imports with numpy alone, and GPU calls without cupy raise an ImportError naming the extra.
"""

from __future__ import annotations

from ._runtime import available, is_gpu_array
from .kv_store import GpuKVLayerStore, gpu_packed_attention
from .ops import (
    PackedKV,
    decode_attention,
    dequantize,
    layout_of,
    quantize,
    quantize_append,
    rotate,
    row_bytes,
)
from .tables import rotation_tables

__all__ = [
    "GpuKVLayerStore",
    "PackedKV",
    "available",
    "decode_attention",
    "dequantize",
    "gpu_packed_attention",
    "is_gpu_array",
    "layout_of",
    "quantize",
    "quantize_append",
    "rotate",
    "rotation_tables",
    "row_bytes",
]
