"""GPU benchmark of the CuPy RawKernel path (run on the device; names the card).

Measures, in one run: copy bandwidth (a torch ``clone()``), fused quantize throughput (2M × 128
fp16 rows, and K/V of shape (8, 8, 32768, 128) appended into a preallocated packed cache) at
3 and 4 bits as GB/s of input read and as a fraction of copy bandwidth, and decode attention
latency (CUDA events, warm-up, median) at B ∈ {1, 8}, S ∈ {8k, 32k, 128k}, 32 query / 8 KV
heads, d = 128, K/V at 4/4 and 3/3 bits: ours from the codes, torch SDPA fp16 with
``enable_gqa=True`` on the uncompressed cache, and dequantize-then-SDPA. Prints a markdown table
last.

    PYTHONUNBUFFERED=1 python3 benches/bench_gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any


def _time(fn: Callable[[], Any], warmup: int = 5, reps: int = 30) -> float:
    """Median milliseconds of ``fn`` over ``reps`` runs (CUDA events around each)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def _deq(kv: Any, which: str, St: int) -> Any:
    """Dequantize a cache side to fp16 torch (B, H, St, D) through the GPU kernel."""
    import torch

    from turboquant_rs.cuda import dequantize

    codes = kv.key_codes if which == "k" else kv.value_codes
    scales = kv.key_scales if which == "k" else kv.value_scales
    bits = kv.key_bits if which == "k" else kv.value_bits
    c = torch.from_dlpack(codes)[:, :, :St]
    s = torch.from_dlpack(scales)[:, :, :St]
    return dequantize(c, s, kv.head_dim, bits, seed=kv.seed, dtype="float16")


def main() -> int:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    from turboquant_rs.cuda import PackedKV, decode_attention, quantize, row_bytes
    from turboquant_rs.cuda import ops as gops

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    print(f"# device: {name}, torch {torch.__version__}")
    lines: list[str] = []

    # copy bandwidth (bytes read + written)
    src = torch.empty(1 << 28, dtype=torch.float32, device=dev).normal_()
    ms = _time(src.clone, reps=20)
    copy_gbs = 2 * src.numel() * 4 / ms / 1e6
    del src
    print(f"copy bandwidth: {copy_gbs:.0f} GB/s (1 GiB clone, read + write)")
    lines.append(f"| copy (clone, 1 GiB) | {ms:.3f} ms | {copy_gbs:.0f} GB/s read+write | 100 % |")

    # quantize throughput
    x = torch.randn(2 * 1024 * 1024, 128, device=dev, dtype=torch.float16)
    for bits in (4, 3):
        ms = _time(lambda x=x, bits=bits: quantize(x, bits, check=False), reps=20)
        gbs = x.numel() * 2 / ms / 1e6
        print(f"quantize 2M x 128 fp16 {bits} bit: {ms:.3f} ms")
        lines.append(
            f"| quantize 2M×128 fp16, {bits} bit | {ms:.3f} ms | {gbs:.0f} GB/s input | "
            f"{100 * gbs / copy_gbs:.0f} % |"
        )
    del x
    B, H, S, D = 8, 8, 32768, 128
    kx = torch.randn(B, H, S, D, device=dev, dtype=torch.float16)
    for bits in (4, 3):
        kv = PackedKV(B, H, S, D, bits, bits)

        def app(kv: PackedKV = kv, bits: int = bits, kx: Any = kx) -> None:
            gops.quantize_append(kx, kv.key_codes, kv.key_scales, 0, bits, kv.seed)

        ms = _time(app, reps=20)
        gbs = kx.numel() * 2 / ms / 1e6
        lines.append(
            f"| append K (8,8,32768,128) fp16, {bits} bit | {ms:.3f} ms | {gbs:.0f} GB/s input | "
            f"{100 * gbs / copy_gbs:.0f} % |"
        )
        del kv
    del kx
    torch.cuda.empty_cache()

    # decode attention
    att: list[str] = []
    Hq, Hkv = 32, 8
    seqs = [8192, 32768] if args.quick else [8192, 32768, 131072]
    for Bt in (1, 8):
        for St in seqs:
            k16 = torch.randn(Bt, Hkv, St, D, device=dev, dtype=torch.float16)
            v16 = torch.randn(Bt, Hkv, St, D, device=dev, dtype=torch.float16)
            q = torch.randn(Bt, Hq, 1, D, device=dev, dtype=torch.float16)
            sdpa = _time(
                lambda q=q, k16=k16, v16=v16: F.scaled_dot_product_attention(q, k16, v16, enable_gqa=True)
            )
            fp16_bytes = 2 * k16.numel() * 2
            for kb, vb in ((4, 4), (3, 3)):
                kv = PackedKV(Bt, Hkv, St, D, kb, vb)
                chunk = 8192
                for a in range(0, St, chunk):
                    kv.append(k16[:, :, a : a + chunk], v16[:, :, a : a + chunk])
                ours_simt = _time(lambda kv=kv, q=q: decode_attention(q, kv, impl="simt"))
                ours_tc1 = _time(lambda kv=kv, q=q: decode_attention(q, kv, impl="tc"))
                ours = _time(lambda kv=kv, q=q: decode_attention(q, kv, impl="tc2"))
                # correctness spot check against SDPA on the dequantized cache
                kd = _deq(kv, "k", St)
                vd = _deq(kv, "v", St)
                ref = F.scaled_dot_product_attention(q.float(), kd.float(), vd.float(), enable_gqa=True)
                got = decode_attention(q, kv, impl="tc2").float()
                rel = ((got - ref).norm() / ref.norm()).item()
                del kd, vd

                def deq_sdpa(kv: PackedKV = kv, kb: int = kb, vb: int = vb, q: Any = q, St: int = St) -> Any:
                    kd = _deq(kv, "k", St)
                    vd = _deq(kv, "v", St)
                    return F.scaled_dot_product_attention(q, kd, vd, enable_gqa=True)

                deq = _time(deq_sdpa, warmup=2, reps=5)
                comp_bytes = Bt * Hkv * St * (row_bytes(D, kb) + row_bytes(D, vb) + 8)
                att.append(
                    f"| {Bt} | {St // 1024}k | K{kb}/V{vb} | {ours:.3f} | {ours_tc1:.3f} | {ours_simt:.3f} | "
                    f"{sdpa:.3f} | "
                    f"{deq:.3f} | "
                    f"{sdpa / ours:.2f}× | {comp_bytes / ours / 1e6:.0f} | "
                    f"{fp16_bytes / sdpa / 1e6:.0f} | {rel:.1e} |"
                )
                print(att[-1])
                del kv
                torch.cuda.empty_cache()
            del k16, v16
            torch.cuda.empty_cache()

    print()
    print(f"## GPU results: {name}")
    print()
    print("| work | time | throughput | of copy bandwidth |")
    print("|---|---|---|---|")
    for line in lines:
        print(line)
    print()
    print("Decode attention, q_len 1, 32 q / 8 KV heads, d = 128 (ms, CUDA events, median):")
    print()
    print(
        "| B | S | bits | ours tc2 | ours tc | ours simt | SDPA fp16 | dequant + SDPA | tc2 vs SDPA "
        "| tc2 GB/s (compressed bytes) | SDPA GB/s (fp16 K/V) | rel err vs dequantized |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for line in att:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
