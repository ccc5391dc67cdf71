"""Golden vectors (tests/golden/quantize_v1.json, written by scripts/make_golden.py): the exact
bytes fixed inputs quantize to, checked from Python as `rust/turboquant/tests/golden.rs` checks
them from Rust, at the default SIMD level and (in a subprocess) the portable one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from turboquant_rs import _native

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((ROOT / "tests" / "golden" / "quantize_v1.json").read_text())
sys.path.insert(0, str(ROOT / "scripts"))
from make_golden import golden_input, index_record, quantizer_record  # noqa: E402


def test_formula_is_exact_float32() -> None:
    x = golden_input(3, 4, 10)
    assert x.dtype == np.float32 and np.all(x * 256 == np.round(x * 256)) and np.abs(x).max() <= 1000 / 256
    assert (
        hashlib.sha256(x.tobytes()).hexdigest()
        == hashlib.sha256(golden_input(3, 4, 10).tobytes()).hexdigest()
    )


@pytest.mark.parametrize("rec", GOLDEN["quantizers"], ids=lambda r: f"d{r['dim']}b{r['bits']}{r['scale']}")
def test_quantizer_bytes(rec: dict) -> None:
    keys = ("case", "dim", "bits", "unbiased", "scale", "seed", "n")
    assert quantizer_record(*(rec[k] for k in keys)) == rec


@pytest.mark.parametrize("rec", GOLDEN["indexes"], ids=lambda r: f"d{r['dim']}b{r['bits']}{r['metric']}")
def test_index_files(rec: dict) -> None:
    keys = ("case", "dim", "bits", "metric", "rerank", "seed", "n")
    assert index_record(*(rec[k] for k in keys)) == rec


def test_portable_simd_level_gives_the_same_bytes() -> None:
    if _native.simd_level() == "scalar":
        pytest.skip("already at the portable level")
    code = (
        "import json, sys; sys.path.insert(0, 'scripts'); from make_golden import quantizer_record;"
        "g = json.load(open('tests/golden/quantize_v1.json'));"
        "keys = ('case', 'dim', 'bits', 'unbiased', 'scale', 'seed', 'n');"
        "bad = [r for r in g['quantizers'] if quantizer_record(*(r[k] for k in keys)) != r];"
        "import turboquant_rs; assert turboquant_rs.simd_level() == 'scalar';"
        "print(len(bad))"
    )
    env = dict(os.environ, TURBOQUANT_SIMD="scalar")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"
