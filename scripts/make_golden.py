"""Writes tests/golden/quantize_v1.json: inputs from a fixed integer formula and the sha256 of
the exact bytes they quantize to (codes, scales, signs, residual norms, the rotation's output,
batch files raw and rANS-coded, index files). Rust (`rust/turboquant/tests/golden.rs`) and
Python (`tests/test_golden.py`) check every hash, so a change of the rotation streams, the
codebooks, the bit layout or the file formats cannot pass unnoticed.

Regenerate ONLY for an intended format change (and bump the format version):
    python scripts/make_golden.py
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from turboquant_rs import _native

MASK = (1 << 64) - 1
OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "quantize_v1.json"

# (dim, bits, unbiased, scale, seed, n)
QUANTIZER_CASES = [
    (64, 1, False, "norm", 0, 5),
    (64, 2, False, "lsq", 1, 5),
    (100, 3, False, "lsq", 2, 7),
    (128, 4, False, "lsq", 0, 9),
    (130, 4, True, "lsq", 3, 4),
    (384, 3, True, "proj", 5, 3),
    (384, 4, False, "proj", 0, 33),
    (48, 8, False, "lsq", 7, 2),
    (1536, 4, False, "lsq", 0, 2),
]
# (dim, bits, metric, rerank, seed, n): n >= 256 makes a centred index
INDEX_CASES = [(64, 4, "ip", False, 0, 300), (40, 3, "cosine", True, 2, 50), (32, 2, "l2", False, 1, 40)]


def golden_input(case: int, n: int, dim: int) -> np.ndarray:
    """Exactly representable float32 values: an integer hash of (case, i, j) in -1000..1000, / 256."""
    out = np.empty(n * dim, dtype=np.float32)
    for k in range(n * dim):
        z = ((case * 1_000_003 + k + 1) * 0x9E3779B97F4A7C15) & MASK
        z ^= z >> 31
        out[k] = (((z >> 40) % 2001) - 1000) / 256.0
    return out.reshape(n, dim)


def sha(a: np.ndarray | bytes) -> str:
    data = a if isinstance(a, bytes) else np.ascontiguousarray(a).tobytes()
    return hashlib.sha256(data).hexdigest()


def quantizer_record(case: int, dim: int, bits: int, unbiased: bool, scale: str, seed: int, n: int) -> dict:
    q = _native.Quantizer(dim, bits, unbiased, scale, seed)
    x = golden_input(case, n, dim)
    codes, scales, signs, rnorms = q.quantize(x)
    return {
        "case": case,
        "dim": dim,
        "bits": bits,
        "unbiased": unbiased,
        "scale": scale,
        "seed": seed,
        "n": n,
        "input": sha(x),
        "codes": sha(codes),
        "scales": sha(scales.astype("<f4")),
        "signs": sha(signs),
        "residual_norms": sha(rnorms.astype("<f4")),
        "rotation": sha(q.rotate(x).astype("<f4")),
        "file_raw": sha(q.batch_to_bytes(codes, scales, signs, rnorms, False)),
        "file_rans": sha(q.batch_to_bytes(codes, scales, signs, rnorms, True)),
    }


def index_record(case: int, dim: int, bits: int, metric: str, rerank: bool, seed: int, n: int) -> dict:
    ix = _native.Index(dim, bits, metric, seed, rerank, True)
    ix.add(golden_input(case, n, dim))
    ix.remove(np.array([1, 4], np.int64))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ix.tq"
        ix.save(str(path))
        data = path.read_bytes()
    return {
        "case": case,
        "dim": dim,
        "bits": bits,
        "metric": metric,
        "rerank": rerank,
        "seed": seed,
        "n": n,
        "file": sha(data),
    }


def main() -> None:
    quantizers = [quantizer_record(i, *c) for i, c in enumerate(QUANTIZER_CASES)]
    indexes = [index_record(100 + i, *c) for i, c in enumerate(INDEX_CASES)]
    lines = [
        "{",
        '"version": 1,',
        '"formula": "x[k] for k = i*dim + j: z = ((case*1000003 + k + 1) * 0x9E3779B97F4A7C15) mod 2^64; '
        "z ^= z >> 31; x = ((z >> 40) mod 2001 - 1000) / 256 (float32); "
        'hashes are sha256 of little-endian bytes",',
        '"quantizers": [',
        ",\n".join(json.dumps(r) for r in quantizers),
        "],",
        '"indexes": [',
        ",\n".join(json.dumps(r) for r in indexes),
        "]",
        "}",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    json.loads(OUT.read_text())
    print(f"wrote {OUT} ({len(quantizers)} quantizer cases, {len(indexes)} index cases)")


if __name__ == "__main__":
    main()
