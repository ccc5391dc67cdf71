"""Host overhead of GPU decode attention at B = 1 (needs CUDA and cupy): wall time per call of
queued `decode_attention` calls, then a `cProfile` of the Python side.

    python3 benches/bench_gpu_host.py
"""

from __future__ import annotations

import cProfile
import pstats
import time

import torch

from turboquant_rs.cuda import PackedKV, decode_attention


def main() -> None:
    """Time a decode step with and without an exact segment, then profile the first."""
    dev = "cuda"
    b, hkv, hq, s, d = 1, 8, 32, 8192, 128
    k = torch.randn(b, hkv, s, d, device=dev, dtype=torch.float16)
    mean = k.float().mean(2)
    kv = PackedKV(b, hkv, s, d, 4, 4, key_mean=mean, value_mean=mean)
    kv.append(k, k)
    q = torch.randn(b, hq, 1, d, device=dev, dtype=torch.float16)
    extra = torch.randn(b, hkv, 5, d, device=dev, dtype=torch.float16)
    starts = torch.zeros(b, dtype=torch.int32, device=dev)

    def with_extras() -> None:
        decode_attention(q, kv, extra_keys=extra, extra_values=extra, starts=starts, impl="tc")

    def codes_only() -> None:
        decode_attention(q, kv, impl="tc")

    print(torch.cuda.get_device_name())
    for f in (with_extras, codes_only):
        for _ in range(50):
            f()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(500):
            f()
        torch.cuda.synchronize()
        print(f"{f.__name__}: {(time.perf_counter() - t0) / 500 * 1e3:.3f} ms per call (wall, queued)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        with_extras()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
