"""Command line: ``turboquant-rs`` (or ``python -m turboquant_rs``).

    turboquant-rs demo                        the main job on data shipped in the wheel (< 1 min, numpy only)
    turboquant-rs demo --model smollm2        + a real LLM generating through TurboQuantCache ([demo] extra)
    turboquant-rs encode IN.npy OUT.tq --bits 4    quantize vectors into a file (versioned, checksummed)
    turboquant-rs decode IN.tq OUT.npy             reconstruct them
    turboquant-rs index build IN.npy OUT.tqi --bits 4   build a search index file
    turboquant-rs index search OUT.tqi QUERIES.npy -k 10 [--base IN.npy]   search it (recall with --base)
    turboquant-rs bench [--out DIR] [--only distortion,search,kv-memory,perplexity,gpu] [--quick]
                                              measure against the paper and the peers: DIR/RESULTS.md + PNGs

Exit codes: 0 success, 1 bad data or files (the message says which), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import TurboQuant, TurboQuantIndex, __version__
from ._native import TurboQuantError

PROG = "turboquant-rs"


class CliError(Exception):
    """A user-facing error: printed as ``turboquant-rs: error: ...`` with exit code 1."""


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg)


def _load_matrix(path: Path, what: str = "vectors") -> np.ndarray:
    """A 2-D float .npy as a read-only memory map (float16/32/64)."""
    if not path.exists():
        raise CliError(f"{path}: no such file")
    if path.is_dir():
        raise CliError(f"{path}: is a folder, expected a .npy file of {what}")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CliError(f"{path}: not a readable .npy file ({err})") from err
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind != "f":
        shape = getattr(arr, "shape", "?")
        dtype = getattr(arr, "dtype", type(arr).__name__)
        raise CliError(f"{path}: expected a 2-D float array of {what} (n, dim), got {dtype} {shape}")
    if arr.shape[0] == 0 or arr.shape[1] < 2:
        raise CliError(f"{path}: expected at least one vector of dim >= 2, got shape {arr.shape}")
    return arr


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _progress(args: argparse.Namespace, items: Any, total: int, desc: str) -> Any:
    from .demo import progress

    return progress(items, total=total, desc=desc, quiet=args.quiet or total <= 1)


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.data is not None and not args.data.exists():
        raise CliError(f"--data {args.data}: no such file or folder")
    if args.threads:
        from . import set_num_threads

        set_num_threads(args.threads)
    if args.model is not None:
        if args.model != "smollm2":
            raise CliError(f"--model {args.model!r}: the offline models are: smollm2")
        demo.model_demo(
            args.model, bits=args.bits, tokens=args.tokens, new_tokens=args.new_tokens, quiet=args.quiet
        )
        return 0
    demo.run(args.data, args.n, quiet=args.quiet)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    x = _load_matrix(args.input)
    n, d = x.shape
    q = TurboQuant(d, args.bits, unbiased=args.unbiased, seed=args.seed)
    t = time.perf_counter()
    out = q.quantize(np.ascontiguousarray(x))
    blob = q.save_output(out, entropy=args.entropy)
    dt = time.perf_counter() - t
    _atomic_write(args.output, blob)
    _say(
        args,
        f"{args.input}: {n} x {d} {x.dtype} -> {args.output}: {len(blob):,} bytes "
        f"({n * d * 4 / len(blob):.2f}x smaller than float32), {args.bits} bits"
        f"{' (QJL)' if args.unbiased else ''}, {n / max(dt, 1e-9):,.0f} vectors/s",
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        raise CliError(f"{args.input}: no such file")
    q, out = TurboQuant.load_output(args.input.read_bytes())
    x = np.asarray(q.dequantize(out)).astype(args.dtype, copy=False)
    with open(args.output, "wb") as f:
        np.save(f, x)
    _say(
        args, f"{args.input}: {q.bit_width}-bit codes -> {args.output}: {x.shape[0]} x {x.shape[1]} {x.dtype}"
    )
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    x = _load_matrix(args.input)
    n, d = x.shape
    index = TurboQuantIndex(
        d, args.bits, metric=args.metric, seed=args.seed, rerank=args.rerank, center=not args.no_center
    )
    t = time.perf_counter()
    starts = range(0, n, args.batch)
    for s in _progress(args, starts, len(starts), "adding"):
        index.add(np.ascontiguousarray(x[s : s + args.batch]))
    dt = time.perf_counter() - t
    index.save(args.output)
    _say(
        args,
        f"{args.input}: {n} x {d} -> {args.output}: {args.bits}-bit {args.metric} index, "
        f"{index.memory_bytes():,} bytes held "
        f"({n * d * 4 / index.memory_bytes():.2f}x smaller than float32), "
        f"built in {dt:.2f} s",
    )
    return 0


def _exact_top(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str, batch: int = 100_000
) -> np.ndarray:
    """Exact top-k ids by the index's metric, scanning ``base`` in blocks."""
    q = queries.astype(np.float32)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for s in range(0, len(base), batch):
        b = np.asarray(base[s : s + batch], dtype=np.float32)
        if metric == "cosine":
            b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
        sc = q @ b.T
        if metric == "l2":
            sc = -(np.sum(q * q, 1)[:, None] - 2 * sc + np.sum(b * b, 1)[None, :])
        allv = np.concatenate([best_s, sc], axis=1)
        alli = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(b)), sc.shape)], axis=1)
        kk = min(k, allv.shape[1])
        top = np.argpartition(-allv, kk - 1, axis=1)[:, :kk]
        best_s, best_i = np.take_along_axis(allv, top, 1), np.take_along_axis(alli, top, 1)
    return best_i


def cmd_index_search(args: argparse.Namespace) -> int:
    if not args.index.is_file():
        raise CliError(f"{args.index}: no such file")
    index = TurboQuantIndex.load(args.index, mmap=True)
    queries = _load_matrix(args.queries, "queries")
    if queries.shape[1] != index.dim:
        raise CliError(f"{args.queries}: queries have dim {queries.shape[1]}, the index has dim {index.dim}")
    qs = np.ascontiguousarray(queries, dtype=np.float32)
    t = time.perf_counter()
    scores, ids = index.search(qs, args.k)
    dt = time.perf_counter() - t
    if args.output is not None:
        with open(args.output, "wb") as f:
            np.savez(f, scores=scores, ids=ids)
    _say(
        args,
        f"{args.index}: {len(index)} vectors, {index.bit_width}-bit {index.metric}; "
        f"{len(qs)} queries, k = {args.k}: "
        f"{dt * 1e3:.1f} ms ({len(qs) / max(dt, 1e-9):,.0f} QPS)",
    )
    if args.base is not None:
        base = _load_matrix(args.base, "base vectors")
        if base.shape[1] != index.dim:
            raise CliError(
                f"{args.base}: base vectors have dim {base.shape[1]}, the index has dim {index.dim}"
            )
        truth = _exact_top(base, qs, ids.shape[1], index.metric)
        hit = [len(np.intersect1d(a, b)) / max(len(b), 1) for a, b in zip(ids, truth, strict=True)]
        print(f"recall@{ids.shape[1]} against exact search over {args.base}: {float(np.mean(hit)):.4f}")
    if args.output is None:
        for i in range(min(len(qs), args.show)):
            pairs = ", ".join(f"{int(j)}:{float(s):.4f}" for j, s in zip(ids[i], scores[i], strict=True))
            print(f"query {i}: {pairs}")
    return 0


#: ``bench --out`` when not given (relative to the working directory).
BENCH_OUT = Path("bench-results")


def _bench_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this ``bench`` run (for RESULTS.md)."""
    cmd = [PROG, "bench"]
    if args.out != BENCH_OUT:
        cmd += ["--out", str(args.out)]
    if args.only is not None:
        cmd += ["--only", ",".join(args.only)]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    if args.quick:
        cmd.append("--quick")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return " ".join(cmd)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.data is not None and not args.data.exists():
        raise CliError(f"--data {args.data}: no such file or folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        probe = args.out / f".bench-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CliError(f"--out {args.out}: cannot write there ({err.strerror or err})") from err
    if args.threads:
        from . import set_num_threads

        set_num_threads(args.threads)
    opts = bench.Options(quick=args.quick, quiet=args.quiet, data=args.data, threads=args.threads or 0)
    path = bench.run(args.out, args.only or list(bench.PARTS), opts, _bench_command(args))
    print(f"wrote {path}")
    return 0


def _parts(text: str) -> list[str]:
    from .bench import PARTS

    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [n for n in names if n not in PARTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(bad) or repr(text)}; choose from {','.join(PARTS)}"
        )
    return names


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _bits(text: str) -> int:
    v = _positive(text)
    if v > 8:
        raise argparse.ArgumentTypeError(f"bits must be in 1..8, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", help="results only: no progress bars, no explanations"
    )
    p = argparse.ArgumentParser(
        prog=PROG,
        description="TurboQuant vector quantization (Rust SIMD core): demo, files, search index.",
        epilog="Run `turboquant-rs demo` first. Exit codes: 0 ok, 1 bad data/files, 2 bad arguments.",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo",
        parents=[common],
        help="the main job on shipped real data: distortion vs the paper, bytes, search, KV cache",
        description="Quantize real MiniLM embeddings and SmolLM2 K/V shipped in the wheel; compare with "
        "the paper (distortion, bounds), exact search (recall, QPS) and fp16 attention (error, memory). "
        "Under a minute, numpy only.",
    )
    d.add_argument(
        "--data",
        type=Path,
        default=None,
        help="other vectors: a .npy (n, d) or a folder with base*.npy, queries*.npy",
    )
    d.add_argument("-n", type=_positive, default=None, help="use only the first N base vectors")
    d.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="also run a real LLM through TurboQuantCache: smollm2 (needs turboquant-rs[demo])",
    )
    d.add_argument(
        "--bits", type=_bits, nargs="+", default=[4, 3, 2], help="--model: bit widths (default 4 3 2)"
    )
    d.add_argument("--tokens", type=_positive, default=512, help="--model: perplexity text length in tokens")
    d.add_argument(
        "--new-tokens", type=_positive, default=32, help="--model: tokens to generate (default 32)"
    )
    d.add_argument("--threads", type=_positive, default=None, help="Rust threads (default: all cores)")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("encode", parents=[common], help="quantize a .npy of vectors into a .tq file")
    e.add_argument("input", type=Path, metavar="IN.npy")
    e.add_argument("output", type=Path, metavar="OUT.tq")
    e.add_argument("--bits", "-b", type=_bits, required=True, help="bits per coordinate, 1..8")
    e.add_argument(
        "--unbiased", action="store_true", help="spend one bit on a QJL sketch (unbiased inner products)"
    )
    e.add_argument("--entropy", action="store_true", help="rANS-code the codes (~5%% smaller at 4 bits)")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_encode)

    x = sub.add_parser("decode", parents=[common], help="reconstruct the vectors of a .tq file into a .npy")
    x.add_argument("input", type=Path, metavar="IN.tq")
    x.add_argument("output", type=Path, metavar="OUT.npy")
    x.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    x.set_defaults(func=cmd_decode)

    ix = sub.add_parser("index", help="build or search a vector search index file")
    isub = ix.add_subparsers(dest="index_command", metavar="ACTION")
    ib = isub.add_parser("build", parents=[common], help="quantize a .npy of vectors into an index file")
    ib.add_argument("input", type=Path, metavar="IN.npy")
    ib.add_argument("output", type=Path, metavar="OUT.tqi")
    ib.add_argument("--bits", "-b", type=_bits, default=4, help="bits per coordinate (default 4)")
    ib.add_argument("--metric", choices=["ip", "cosine", "l2"], default="ip")
    ib.add_argument(
        "--rerank", action="store_true", help="keep fp16 originals and re-score the best candidates"
    )
    ib.add_argument("--no-center", action="store_true", help="do not centre the data on its mean")
    ib.add_argument("--batch", type=_positive, default=100_000, help="vectors per add() call")
    ib.add_argument("--seed", type=int, default=0)
    ib.set_defaults(func=cmd_index_build)
    isr = isub.add_parser("search", parents=[common], help="search an index file with a .npy of queries")
    isr.add_argument("index", type=Path, metavar="INDEX.tqi")
    isr.add_argument("queries", type=Path, metavar="QUERIES.npy")
    isr.add_argument("-k", type=_positive, default=10, help="results per query (default 10)")
    isr.add_argument("--output", "-o", type=Path, default=None, help="write scores and ids to this .npz")
    isr.add_argument(
        "--base",
        type=Path,
        default=None,
        help="the indexed vectors (.npy): report recall@k against exact search",
    )
    isr.add_argument("--show", type=int, default=5, help="queries to print when no --output (default 5)")
    isr.set_defaults(func=cmd_index_search)
    ix.set_defaults(func=lambda a: _help(ix))

    bn = sub.add_parser(
        "bench",
        parents=[common],
        help="measure against the paper and the peers: markdown tables and PNG plots",
        description="Measure distortion vs bits (against the paper's bounds), search recall and QPS "
        "(against exact search, FAISS, turbovec), KV memory vs context, perplexity vs bits (against "
        "the KV peers; needs turboquant-rs[demo]) and GPU decode latency (with a CUDA device). Writes "
        "DIR/RESULTS.md and DIR/<part>.png. Peers and matplotlib: pip install 'turboquant-rs[bench]'.",
    )
    bn.add_argument(
        "--out", type=Path, default=BENCH_OUT, metavar="DIR", help="output folder (default bench-results)"
    )
    bn.add_argument(
        "--only",
        type=_parts,
        default=None,
        metavar="PARTS",
        help="comma-separated: distortion,search,kv-memory,perplexity,gpu (default: all)",
    )
    bn.add_argument("--quick", action="store_true", help="smaller sizes: seconds, minutes with perplexity")
    bn.add_argument(
        "--data",
        type=Path,
        default=None,
        help="vectors for distortion and search: a .npy (n, d) or a folder with base*.npy, queries*.npy "
        "(default: ../shared/data/wiki_minilm when present, else the shipped sample)",
    )
    bn.add_argument("--threads", type=_positive, default=None, help="threads (default: all cores)")
    bn.set_defaults(func=cmd_bench)
    return p


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CliError, TurboQuantError, FileNotFoundError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"{PROG}: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
