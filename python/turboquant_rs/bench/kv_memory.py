"""KV memory vs context: bytes held by TurboQuantKVCache at 2 / 3 / 4 bits against fp16 / bf16."""

from __future__ import annotations

import numpy as np

from .. import TurboQuantKVCache
from ..demo import progress
from ._report import Line, Options, Panel, Section

#: Llama-3-8B's KV shape.
LAYERS, KV_HEADS, HEAD_DIM = 32, 8, 128
#: Layers actually filled; the byte counts are scaled to LAYERS (every layer holds the same shapes).
FILLED = 2
BITS = (4, 3, 2)
MIB = 2**20


def run(opts: Options) -> Section:
    """Real ``CompressedKV.nbytes`` of FILLED layers of random K/V per context, scaled to 32 layers."""
    contexts = [512, 2048] if opts.quick else [1024, 4096, 16384, 32768]
    rng = np.random.default_rng(0)
    scale = LAYERS // FILLED
    held: dict[int, dict[int, int]] = {b: {} for b in BITS}
    fp16: dict[int, int] = {}
    work = [(s, layer) for s in contexts for layer in range(FILLED)]
    for s, _layer in progress(work, total=len(work), desc="kv memory", quiet=opts.quiet):
        k = rng.standard_normal((1, KV_HEADS, s, HEAD_DIM), dtype=np.float32)
        v = rng.standard_normal((1, KV_HEADS, s, HEAD_DIM), dtype=np.float32)
        fp16[s] = fp16.get(s, 0) + k.astype(np.float16).nbytes + v.astype(np.float16).nbytes
        for b in BITS:
            cache = TurboQuantKVCache(head_dim=HEAD_DIM, bit_width=b, residual_length=0)
            held[b][s] = held[b].get(s, 0) + cache.compress(k, v).nbytes
        del k, v
    rows = []
    for s in contexts:
        cells = [f"{s:,}", f"{fp16[s] * scale / MIB:,.1f}"]
        for b in BITS:
            cells += [f"{held[b][s] * scale / MIB:,.1f}", f"{fp16[s] / held[b][s]:.2f}x"]
        rows.append(cells)
    header = ["context (tokens)", "fp16 / bf16 MiB"]
    for b in BITS:
        header += [f"{b}-bit MiB", f"{b}-bit vs fp16"]
    gib = 2**30
    lines = [Line("fp16 / bf16", contexts, [fp16[s] * scale / gib for s in contexts], "k--")]
    lines += [
        Line(f"turboquant-rs {b}-bit K/V", contexts, [held[b][s] * scale / gib for s in contexts])
        for b in BITS
    ]
    return Section(
        name="kv-memory",
        title="KV cache memory vs context",
        about=f"Llama-3-8B shape: {LAYERS} layers × {KV_HEADS} KV heads × head_dim {HEAD_DIM}, batch 1. "
        f"Measured on {FILLED} layers of random K/V per context and scaled × {scale} to {LAYERS} layers "
        "(bytes depend only on the shapes).",
        header=header,
        rows=rows,
        notes=[
            "turboquant-rs: `TurboQuantKVCache(head_dim=128, bit_width=b, residual_length=0)"
            ".compress(k, v).nbytes`, the buffers that exist: packed codes, one float32 scale per "
            "token and head, per-head means, the first token kept exact (attention sink). The default "
            "`residual_length=128` adds 128 full-precision tokens per layer.",
            "fp16 / bf16: `.nbytes` of the same K/V as float16 (a bf16 DynamicCache holds as many bytes).",
        ],
        panels=[
            Panel(
                "KV cache bytes, Llama-3-8B shape",
                "context (tokens)",
                "GiB (32 layers)",
                lines,
                logx=True,
                logy=True,
                xticks=[float(s) for s in contexts],
            )
        ],
    )
