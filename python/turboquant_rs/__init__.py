"""turboquant-rs: TurboQuant vector quantization with a Rust SIMD core.

Same API names as turboquant-torch, with real packed storage. numpy is the only hard
dependency; torch tensors (CPU) are accepted and returned when passed.

Errors: bad input raises :class:`TurboQuantError` (a ``ValueError``); truncated, damaged or
unknown files and bytes raise its subclass :class:`CorruptFileError`; failed file I/O raises
``OSError``. The library is fork-safe: a forked child (``multiprocessing`` "fork", DataLoader
workers) starts its own thread pool instead of waiting on the parent's.
"""

import os as _os

from . import _native
from ._native import CorruptFileError, TurboQuantError, num_threads, set_num_threads, simd_level
from .codebook import Codebook, LloydMaxCodebook, codebook_distortion, get_codebook
from .core import MSEQuantizedOutput, TurboQuant, TurboQuantMSE, TurboQuantOutput
from .hadamard import RandomizedHadamardTransform, fwht
from .qjl import QJL, QJLOutput, pack_bits, unpack_bits
from .vector_search import TurboQuantIndex

__version__ = _native.__version__

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
]
