"""Head-to-head search timing, ours vs turbovec 1.1.2, interleaved (the noise-robust check).

``bench_search.py`` times each method in turn, so a burst of load on this shared machine lands
on whichever runs then (the same row swung 2× between runs). Here every round times each
index once, alternating, and the best round counts: batch QPS over all queries, and the median
single-query latency over ``--single`` queries per round. Recall is reported for context.

    python benches/bench_search_ratio.py --rounds 5
    python benches/bench_search_ratio.py --rounds 5 --tv-full-scan   # turbovec exhaustive too
    python benches/bench_search_ratio.py --data gaussian               # Gaussian 100,000 × 128

turbovec 1.1.2 searches indexes of ≥ 32,768 vectors in stages at 2 and 4 bits (on CPUs with
AVX-512 VBMI + VNNI): a coarse pass over the codes' top bits, then a re-score of a shortlist.
``--tv-full-scan`` sets its ``TURBOVEC_2BIT_PLANES=0`` / ``TURBOVEC_4BIT_PLANES=0`` switches
(read once per process) so that it scans every code, as ours does.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import turboquant_rs
from turboquant_rs.vector_search import TurboQuantIndex

WIKI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wiki_minilm"
K = 10


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(i[:K]) & set(g[:K])) / K for i, g in zip(ids, gt, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--single", type=int, default=100)
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--tv-full-scan", action="store_true", help="turn turbovec's staged search off")
    ap.add_argument("--data", choices=["wiki", "gaussian"], default="wiki")
    args = ap.parse_args()
    if args.tv_full_scan:
        os.environ["TURBOVEC_2BIT_PLANES"] = "0"
        os.environ["TURBOVEC_4BIT_PLANES"] = "0"
    import turbovec

    turboquant_rs.set_num_threads(2)
    if args.data == "wiki":
        dataset = "wiki-MiniLM"
        base = np.load(WIKI / "base_f16.npy").astype(np.float32)
        queries = np.load(WIKI / "queries_f16.npy").astype(np.float32)
        gt = np.load(WIKI / "gt_ip_top100.npy")
    else:
        dataset = "Gaussian"
        rng = np.random.default_rng(0)
        base = rng.standard_normal((100_000, 128), dtype=np.float32)
        queries = rng.standard_normal((1000, 128), dtype=np.float32)
        gt = np.argsort(-(queries @ base.T), axis=1)[:, :K]
    mode = "full scan" if args.tv_full_scan else "default (staged at 2 and 4 bits)"
    print(
        f"{dataset} {base.shape[0]} × {base.shape[1]}, {len(queries)} queries, k = {K}, "
        f"2 threads; turbovec {mode}"
    )
    print(
        "| bits | ours QPS | turbovec QPS | ours ÷ tv | ours 1-query ms | tv 1-query ms "
        "| ours R@10 | tv R@10 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for bits in args.bits:
        ours = TurboQuantIndex(base.shape[1], bit_width=bits)
        ours.add(base)
        tv = turbovec.TurboQuantIndex(dim=base.shape[1], bit_width=bits)
        tv.add(base)
        tv.prepare()
        search = {
            "ours": lambda q, ix=ours: ix.search(q, k=K)[1],
            "tv": lambda q, ix=tv: ix.search(q, K)[1],
        }
        batch = dict.fromkeys(search, float("inf"))
        single = dict.fromkeys(search, float("inf"))
        for fn in search.values():
            fn(queries)
        for _ in range(args.rounds):
            for name, fn in search.items():
                t = time.perf_counter()
                fn(queries)
                batch[name] = min(batch[name], time.perf_counter() - t)
                lat = []
                for q in queries[: args.single]:
                    t = time.perf_counter()
                    fn(q[None, :])
                    lat.append(time.perf_counter() - t)
                single[name] = min(single[name], float(np.median(lat)))
        r = {name: recall(np.asarray(fn(queries)), gt) for name, fn in search.items()}
        qps = {name: len(queries) / t for name, t in batch.items()}
        print(
            f"| {bits} | {qps['ours']:,.0f} | {qps['tv']:,.0f} | {qps['ours'] / qps['tv']:.2f}× "
            f"| {1e3 * single['ours']:.3f} | {1e3 * single['tv']:.3f} | {r['ours']:.4f} | {r['tv']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
