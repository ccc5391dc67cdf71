"""How many vectors a provably safe 4-bit pruning bound would keep (a feasibility check).

The bound: a vector's score is at most the sum, over coordinates, of the largest product of the
query coordinate with the 4 centroids that share the code's top 2 bits. A scan reading the top
bits first must still read the low bits of every vector whose bound reaches the exact k-th
score. This script emulates the index (centred wiki-MiniLM, a dense random rotation, the 4-bit
codebook, the "proj" scale) in numpy and prints the surviving fraction over queries.

    python benches/sim_prune_bound.py     # numbers quoted in benches/RESULTS.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import turboquant_rs as tq

WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wiki_minilm"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    x = np.load(WIKI / "base_f16.npy").astype(np.float32)
    queries = np.load(WIKI / "queries_f16.npy").astype(np.float32)[: args.queries]
    d = x.shape[1]
    rot, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((d, d)))
    center = x.mean(0)
    xc = x - center
    norms = np.linalg.norm(xc, axis=1)
    y = (xc / norms[:, None]) @ rot.T
    cb = tq.get_codebook(4, d)
    centroids = cb.centroids.astype(np.float32)
    codes = np.searchsorted(cb.boundaries, y)
    yh = centroids[codes]
    scale = norms / (y * yh).sum(1)  # "proj": x̂ = scale · ĉ with <x̂, x> = |x|²
    bias = xc @ center
    top = codes >> 2
    sub = centroids.reshape(4, 4)  # [top 2 bits, low 2 bits]
    survivors = []
    for q in queries:
        rq = (q - center) @ rot.T
        score = (yh @ rq) * scale + bias
        threshold = np.sort(score)[-args.k]
        best = np.where(rq[:, None] >= 0, rq[:, None] * sub.max(1), rq[:, None] * sub.min(1))
        bound = best[np.arange(d), top].sum(1) * scale + bias
        survivors.append((bound >= threshold).mean())
    s = np.array(survivors)
    print(
        f"k={args.k}, {len(s)} queries: surviving fraction mean {s.mean():.4f}, "
        f"median {np.median(s):.4f}, p90 {np.percentile(s, 90):.4f}, max {s.max():.4f}"
    )


if __name__ == "__main__":
    main()
