"""turboquant-rs: TurboQuant vector quantization with a Rust SIMD core.

Same API names as turboquant-torch, with real packed storage. numpy is the only hard
dependency; torch tensors (CPU) are accepted and returned when passed. The transformers
integration (`TurboQuantCache` and friends) is imported on first use of its names, so importing
this package never imports torch or transformers.

Errors: bad input raises :class:`TurboQuantError` (a ``ValueError``); truncated, damaged or
unknown files and bytes raise its subclass :class:`CorruptFileError`; failed file I/O raises
``OSError``. The library is fork-safe: a forked child (``multiprocessing`` "fork", DataLoader
workers) starts its own thread pool instead of waiting on the parent's.
"""

import os as _os
from typing import Any

from . import _native, compat
from ._native import CorruptFileError, TurboQuantError, num_threads, set_num_threads, simd_level
from .adaptive import AdaptiveKVCache, calibration_allocation, gradient_allocation, uniform_allocation
from .codebook import Codebook, LloydMaxCodebook, codebook_distortion, get_codebook
from .compat import ModelKVInfo, compress_model_kv, detect_model_kv_info, extract_kv
from .core import MSEQuantizedOutput, TurboQuant, TurboQuantMSE, TurboQuantOutput
from .hadamard import RandomizedHadamardTransform, fwht
from .kv_cache import CompressedKV, KVLayerStore, TurboQuantKVCache, packed_attention
from .outliers import OutlierSplit, detect_outlier_channels, merge_outliers, split_outliers
from .qjl import QJL, QJLOutput, pack_bits, unpack_bits
from .rope import apply_rope, compute_rope_frequencies
from .vector_search import TurboQuantIndex

__version__ = _native.__version__

#: Names served by `turboquant_rs.hf_cache` (imports torch and transformers on first use).
_HF_NAMES = frozenset(
    {
        "TurboQuantCache",
        "TurboQuantDynamicCache",
        "TurboQuantWrapper",
        "wrap",
        "register_turboquant_attention",
        "enable_turboquant_attention",
    }
)


def __getattr__(name: str) -> Any:
    """Lazy access to the transformers integration's names."""
    if name in _HF_NAMES:
        from . import hf_cache

        return getattr(hf_cache, name)
    raise AttributeError(f"module 'turboquant_rs' has no attribute {name!r}")


if hasattr(_os, "register_at_fork"):
    # The Rust side also notices a new process id by itself; this drops the parent's pool eagerly.
    _os.register_at_fork(after_in_child=_native._after_fork_in_child)

__all__ = [
    "TurboQuant",
    "TurboQuantOutput",
    "TurboQuantMSE",
    "TurboQuantIndex",
    "MSEQuantizedOutput",
    "QJL",
    "QJLOutput",
    "pack_bits",
    "unpack_bits",
    "Codebook",
    "LloydMaxCodebook",
    "get_codebook",
    "codebook_distortion",
    "RandomizedHadamardTransform",
    "fwht",
    "set_num_threads",
    "num_threads",
    "simd_level",
    "TurboQuantError",
    "CorruptFileError",
    "TurboQuantKVCache",
    "CompressedKV",
    "KVLayerStore",
    "packed_attention",
    "AdaptiveKVCache",
    "calibration_allocation",
    "gradient_allocation",
    "uniform_allocation",
    "compat",
    "ModelKVInfo",
    "compress_model_kv",
    "detect_model_kv_info",
    "extract_kv",
    "OutlierSplit",
    "detect_outlier_channels",
    "split_outliers",
    "merge_outliers",
    "compute_rope_frequencies",
    "apply_rope",
    *sorted(_HF_NAMES),
]
