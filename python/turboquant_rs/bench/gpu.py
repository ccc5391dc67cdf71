"""GPU decode latency vs context: attention from the codes (turboquant_rs.cuda) vs torch SDPA fp16."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any

from ..demo import progress
from ._report import Line, Options, Panel, Section, cpu_name

Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BITS = (4, 3)


def cuda_device() -> str | None:
    """The CUDA device's name when cupy and torch both see one, else None."""
    try:
        import cupy
        import torch

        if cupy.cuda.runtime.getDeviceCount() < 1 or not torch.cuda.is_available():
            return None
        return str(torch.cuda.get_device_name(0))
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU part"
        return None


def _ms(fn: Callable[[], Any], reps: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events around each call, after a warm-up)."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run(opts: Options) -> Section:
    """Batch 1, one new token, 32 query / 8 KV heads, d = 128, at several contexts."""
    name = cuda_device()
    title = "GPU decode attention latency vs context"
    if name is None:
        return Section("gpu", title, "skipped: no CUDA device (needs cupy, `pip install "
                       "'turboquant-rs[cuda]'`, and a GPU torch can see).", [], [])  # fmt: skip
    import torch
    import torch.nn.functional as F

    from ..cuda import PackedKV, decode_attention

    contexts = [4096, 16384] if opts.quick else [4096, 16384, 65536, 131072]
    reps = 10 if opts.quick else 30
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    sdpa: dict[int, float] = {}
    ours: dict[int, dict[int, float]] = {b: {} for b in BITS}
    errs: dict[int, dict[int, float]] = {b: {} for b in BITS}
    for s in progress(contexts, total=len(contexts), desc="gpu decode", quiet=opts.quiet):
        k = torch.randn(1, KV_HEADS, s, HEAD_DIM, device=dev, dtype=torch.float16, generator=g)
        v = torch.randn(1, KV_HEADS, s, HEAD_DIM, device=dev, dtype=torch.float16, generator=g)
        q = torch.randn(1, Q_HEADS, 1, HEAD_DIM, device=dev, dtype=torch.float16, generator=g)
        sdpa[s] = _ms(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), reps)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True)
        for b in BITS:
            kv = PackedKV(1, KV_HEADS, s, HEAD_DIM, b, b)
            for a in range(0, s, 8192):
                kv.append(k[:, :, a : a + 8192], v[:, :, a : a + 8192])
            ours[b][s] = _ms(lambda q=q, kv=kv: decode_attention(q, kv), reps)
            got = decode_attention(q, kv).float()
            errs[b][s] = float((got - ref).norm() / ref.norm())
            del kv
        del k, v
        torch.cuda.empty_cache()
    rows = []
    for s in contexts:
        cells = [f"{s:,}", f"{sdpa[s]:.3f}"]
        for b in BITS:
            cells += [f"{ours[b][s]:.3f}", f"{sdpa[s] / ours[b][s]:.2f}x", f"{errs[b][s]:.3f}"]
        rows.append(cells)
    header = ["context", "SDPA fp16 ms"]
    for b in BITS:
        header += [f"ours {b}/{b} ms", f"{b}-bit speed-up", f"{b}-bit attn error"]
    lines = [Line("torch SDPA fp16 (enable_gqa)", contexts, [sdpa[s] for s in contexts], "k--")]
    lines += [
        Line(f"turboquant-rs {b}/{b} from the codes", contexts, [ours[b][s] for s in contexts]) for b in BITS
    ]
    return Section(
        name="gpu",
        title=title,
        about=f"{name}; batch 1, one query token, {Q_HEADS} query / {KV_HEADS} KV heads, head_dim "
        f"{HEAD_DIM}, random fp16 K/V; median of {reps} calls timed with CUDA events after a warm-up.",
        header=header,
        rows=rows,
        notes=[
            "ours: `turboquant_rs.cuda.decode_attention(q, PackedKV)` reading the packed codes "
            "(`impl='auto'`); SDPA: `torch.nn.functional.scaled_dot_product_attention` on the fp16 cache.",
            "attn error: ‖ours − exact‖ / ‖exact‖ against float32 SDPA on the unquantized K/V "
            "(random data, so higher than on real K/V).",
        ],
        panels=[
            Panel(
                "decode attention latency",
                "context (tokens)",
                "ms per call",
                lines,
                logx=True,
                logy=True,
                xticks=[float(s) for s in contexts],
            )
        ],
        packages=["torch", "cupy-cuda12x", "cupy-cuda13x"],
        machine=f"{name}; host {cpu_name()}, {os.cpu_count()} cores",
    )
