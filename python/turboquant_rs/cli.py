"""Command line: ``turboquant-rs`` (or ``python -m turboquant_rs.cli``).

With no arguments it runs the demo on a built-in default: real MiniLM sentence embeddings
from ``../shared/data/wiki_minilm`` when that folder exists (else seeded Gaussian vectors),
quantized at 1-4 bits, reporting distortion next to the paper's, the bytes actually held,
quantize speed and inner-product error.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from . import TurboQuant, __version__, codebook_distortion, num_threads, simd_level

PAPER_DMSE = {1: 0.3634, 2: 0.1175, 3: 0.03455, 4: 0.009501}
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "wiki_minilm"


def load_vectors(data: Path | None, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(base, queries, description): real embeddings if present, else Gaussian."""
    for folder in [data, DEFAULT_DATA, Path.cwd().parent / "shared" / "data" / "wiki_minilm"]:
        if folder is not None and (folder / "base_f16.npy").exists():
            base = np.load(folder / "base_f16.npy")[:n].astype(np.float32)
            queries = np.load(folder / "queries_f16.npy").astype(np.float32)
            return base, queries, f"wiki-MiniLM embeddings ({folder})"
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, 384)).astype(np.float32)
    return (
        base,
        rng.standard_normal((1000, 384)).astype(np.float32),
        "seeded Gaussian vectors (no data folder)",
    )


def demo(data: Path | None, n: int) -> None:
    """Quantize, report, and check the numbers against the paper."""
    base, queries, what = load_vectors(data, n)
    n, d = base.shape
    print(f"turboquant-rs {__version__}: {n} x {d} {what}; SIMD {simd_level()}, {num_threads()} threads\n")
    print(
        "| bits | mode | D_mse measured | D_mse theory (d) | paper d→∞ "
        "| bytes/vector | ratio vs fp32 | vec/s | IP rmse |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    exact = queries[:100] @ base.T
    for bits in (1, 2, 3, 4):
        for unbiased in (False, True):
            if unbiased and bits == 1:
                continue
            q = TurboQuant(d, bits, unbiased=unbiased)
            t = time.perf_counter()
            out = q.quantize(base)
            rate = n / (time.perf_counter() - t)
            back = q.dequantize(out)
            dmse = float(np.mean(np.sum((base - back) ** 2, 1) / np.sum(base * base, 1)))
            theory = codebook_distortion(bits - unbiased, d) if not unbiased else float("nan")
            ip = q.compute_inner_product(queries[:100], out)
            rmse = float(np.sqrt(np.mean((ip - exact) ** 2)))
            mode = "prod (QJL)" if unbiased else "mse"
            paper = PAPER_DMSE[bits] if not unbiased else float("nan")
            print(
                f"| {bits} | {mode} | {dmse:.5f} | {theory:.5f} | {paper:.5f} "
                f"| {out.nbytes / n:.1f} | {q.compression_ratio(out):.2f}x | {rate:,.0f} | {rmse:.4f} |"
            )
    print("\nD_mse theory: the Lloyd-Max codebook's exact distortion for a random unit vector in this d.")


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    p = argparse.ArgumentParser(prog="turboquant-rs", description=__doc__)
    p.add_argument("--data", type=Path, default=None, help="folder with base_f16.npy / queries_f16.npy")
    p.add_argument("-n", type=int, default=77_573, help="number of base vectors (default: all)")
    args = p.parse_args(argv)
    demo(args.data, args.n)


if __name__ == "__main__":
    main()
