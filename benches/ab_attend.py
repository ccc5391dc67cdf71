"""A/B of the CPU decode-attention kernel between two builds of turboquant-rs, in alternating rounds.

The machine is shared and noisy, so a kernel change is judged against the build before it in the
same minutes: each round runs one subprocess per build (``--base`` first, then the current
import path) and prints the median of ``--calls`` native ``attend`` calls, in nanoseconds per
stored token and KV head. Shape: one sequence of ``--seq`` tokens, 8 KV heads, 32 query heads
(GQA 4), d = 128, q_len 1, keys and values at ``--bits``.

Build the base as a wheel and install it apart, then compare wheel against wheel (an editable
``maturin develop`` build measured a few per cent apart from the same code as a wheel)::

    git worktree add /tmp/basewt HEAD~1
    (cd /tmp/basewt && maturin build --release -q -o /tmp/basewhl)
    pip install --no-deps --target /tmp/base_site /tmp/basewhl/*.whl
    maturin build --release -q -o /tmp/newwhl
    pip install --no-deps --target /tmp/new_site /tmp/newwhl/*.whl
    python benches/ab_attend.py --base /tmp/base_site --new /tmp/new_site --bits 4,3

One thread unless ``--threads`` says otherwise (``RAYON_NUM_THREADS``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_ONE = """
import sys, time
import numpy as np
from turboquant_rs.kv_cache import KVLayerStore
calls, bits, seq = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
H, Q, D = 8, 32, 128
rng = np.random.default_rng(0)
store = KVLayerStore(D, H, bits, bits)
k = rng.standard_normal((1, H, seq, D), dtype=np.float32)
store.append(k, k)
q = rng.standard_normal((1, Q, 1, D), dtype=np.float32)
lo, hi = np.zeros((1, 1), np.int64), np.full((1, 1), seq, np.int64)
native = store._native
for _ in range(3):
    native.attend(q, lo, hi, D ** -0.5, None)
times = []
for _ in range(calls):
    t = time.perf_counter()
    native.attend(q, lo, hi, D ** -0.5, None)
    times.append(time.perf_counter() - t)
print(f"{np.median(times) / (seq * H) * 1e9:.2f}")
"""


def _run(site: str | None, calls: int, bits: int, seq: int, threads: int) -> str:
    """One measurement in a fresh interpreter that imports the build at ``site`` (or the
    environment's own build for ``None``)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", _ONE, str(calls), str(bits), str(seq)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="folder holding the base build (pip --target)")
    ap.add_argument("--new", default=None, help="folder holding the new build (default: this environment's)")
    ap.add_argument("--bits", default="4,3", help="comma-separated widths (keys = values)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=150)
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(f"ns per token and KV head, median of {a.calls} calls, S = {a.seq}, {a.threads} thread(s)")
    print("| bits | round | base | new |")
    print("|---:|---:|---:|---:|")
    for bits in (int(b) for b in a.bits.split(",")):
        for r in range(1, a.rounds + 1):
            base = _run(a.base, a.calls, bits, a.seq, a.threads)
            new = _run(a.new, a.calls, bits, a.seq, a.threads)
            print(f"| {bits} | {r} | {base} | {new} |", flush=True)


if __name__ == "__main__":
    main()
