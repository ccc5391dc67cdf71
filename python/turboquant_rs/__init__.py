"""turboquant-rs: TurboQuant vector quantization with a Rust SIMD core.

Same API names as turboquant-torch, with real packed storage. numpy is the only hard
dependency; torch tensors (CPU) are accepted and returned when passed.
"""

from . import _native
from ._native import num_threads, set_num_threads, simd_level
from .codebook import Codebook, LloydMaxCodebook, codebook_distortion, get_codebook
from .core import MSEQuantizedOutput, TurboQuant, TurboQuantMSE, TurboQuantOutput
from .hadamard import RandomizedHadamardTransform, fwht
from .qjl import QJL, QJLOutput, pack_bits, unpack_bits
from .vector_search import TurboQuantIndex

__version__ = _native.__version__

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
]
