"""Quick in-process ratio of our quantize to FAISS SQ4 encode (the check behind each change).

Best of ``--rounds`` interleaved rounds on Gaussian data, ``--threads`` threads for both;
prints one line per (d, b). Use it to judge a kernel change; ``bench_quantize.py`` is the
full table with turboquant-torch.

    python benches/bench_quantize_ratio.py --threads 1 --dims 128 1536 --bits 2 4
"""

from __future__ import annotations

import argparse
import os
import time

# OpenMP workers otherwise spin after each FAISS call on the core our second thread needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import turboquant_rs as tq

ROWS = {128: 100_000, 384: 50_000, 1536: 20_000}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 384, 1536])
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()

    import faiss

    tq.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    for d in args.dims:
        n = ROWS.get(d, 10_000_000 // d)
        x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
        sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_4bit)
        sq.train(x[:20_000])
        for b in args.bits:
            q = tq.TurboQuantMSE(d, b)
            fns = {"ours": lambda: q.quantize(x), "faiss": lambda: sq.sa_encode(x)}  # noqa: B023
            best = dict.fromkeys(fns, float("inf"))
            for fn in fns.values():
                fn()
            for _ in range(args.rounds):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    best[name] = min(best[name], time.perf_counter() - t)
            print(
                f"d={d} b={b} threads={args.threads}: ours {n / best['ours'] / 1e6:.2f} M/s, "
                f"FAISS SQ4 {n / best['faiss'] / 1e6:.2f} M/s, ratio {best['faiss'] / best['ours']:.2f}"
            )


if __name__ == "__main__":
    main()
