"""``turboquant-rs bench``: measure, write DIR/RESULTS.md (a table per part) and DIR/<part>.png.

Parts (``--only``), each measured in this process through the package's API on data shipped in the
wheel (or ../shared's wiki-MiniLM set when present), peers included when installed
(``pip install 'turboquant-rs[bench]'``) and named as missing otherwise:

- ``distortion``: D_mse and inner-product error vs bits against the paper's values and bounds;
- ``search``: recall@10 and batch QPS vs bits against exact search, FAISS and turbovec;
- ``kv-memory``: KV cache bytes vs context at 2 / 3 / 4 bits against fp16 (Llama-3-8B shape);
- ``perplexity``: SmolLM2-135M perplexity vs bits against DynamicCache and the KV peers
  (the ``demo`` extra; skipped with a line without it);
- ``gpu``: decode attention latency vs context against torch SDPA (skipped without a CUDA device).

Plots need matplotlib (in the ``bench`` extra); without it the tables are still written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from . import distortion, gpu, kv_memory, perplexity, search
from ._report import Options, Section, merge, plot, render

__all__ = ["PARTS", "Options", "run"]

#: The parts in the order of RESULTS.md.
PARTS: dict[str, Callable[[Options], Section]] = {
    "distortion": distortion.run,
    "search": search.run,
    "kv-memory": kv_memory.run,
    "perplexity": perplexity.run,
    "gpu": gpu.run,
}


def run(
    out_dir: Path,
    parts: list[str],
    opts: Options,
    command: str,
    say: Callable[[str], None] = print,
) -> Path:
    """Run ``parts`` into ``out_dir`` (created): a PNG per part that has a plot, and RESULTS.md with
    the sections of ``parts`` replaced (those of earlier runs kept). Returns the RESULTS.md path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "RESULTS.md"
    blocks: dict[str, str] = {}
    for name in parts:
        t = time.perf_counter()
        section = PARTS[name](opts)
        png = out_dir / f"{name}.png"
        plotted = bool(section.panels) and plot(section, png)
        if not plotted:
            png.unlink(missing_ok=True)  # a plot left by an earlier run would contradict the table
        blocks[name] = render(section, command, plotted)
        say("\n".join(ln for ln in blocks[name].splitlines() if not ln.startswith("<!-- ")))
        if not opts.quiet:
            say(f"[{name}: {time.perf_counter() - t:.1f} s{f', wrote {png}' if plotted else ''}]\n")
    existing = results.read_text(encoding="utf-8") if results.is_file() else ""
    tmp = results.with_name(f".{results.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(merge(existing, blocks, list(PARTS)), encoding="utf-8")
        os.replace(tmp, results)
    finally:
        tmp.unlink(missing_ok=True)
    return results
