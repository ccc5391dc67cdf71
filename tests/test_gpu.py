"""GPU path (CuPy RawKernels) against the Rust CPU core: same rotation, same bytes, attention
from the codes within 1e-3 of a float64 reference on the dequantized cache.

Every test is marked ``gpu``; ``conftest.py`` skips them when cupy sees no CUDA device. The
pure-numpy table tests at the end run everywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from turboquant_rs import _native
from turboquant_rs.cuda import tables

gpu = pytest.mark.gpu


def _cp():  # type: ignore[no-untyped-def]
    return pytest.importorskip("cupy")


def _unpack(codes: np.ndarray, dim: int, bits: int) -> np.ndarray:
    return np.asarray(_native.unpack(np.ascontiguousarray(codes), dim, bits))


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


# ------------------------------------------------------------------ tables (CPU only, no GPU)


@pytest.mark.parametrize("dim", [2, 64, 80, 96, 128, 256, 384, 1000, 1280])
def test_numpy_rotation_tables_match_cpu(dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = rng.standard_normal((4, dim)).astype(np.float32)
    q = _native.Quantizer(dim, 4, False, "lsq", 5)
    t = tables.rotation_tables(dim, 5)
    np.testing.assert_array_equal(tables.rotate_reference(t, x), q.rotate(x))
    np.testing.assert_array_equal(tables.rotate_reference(t, x, inverse=True), q.rotate(x, inverse=True))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_cell_tables_are_exact(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for dim in (64, 96, 128, 256):
        _, bd, _, _ = _native.codebook(dim, bits)
        ct = tables.cell_table(tuple(float(v) for v in bd))
        assert ct is not None
        y = np.concatenate(
            [rng.standard_normal(20000) / math.sqrt(dim), bd, np.nextafter(bd, 1), np.nextafter(bd, -1)]
        ).astype(np.float32)
        u = (y.astype(np.float64) * ct.inv_width + ct.offset).astype(np.float32)
        g = np.clip(np.floor(u), 0, 31).astype(np.int64)
        code = ct.below[g] + (ct.inside[g] < y)
        np.testing.assert_array_equal(code, tables.encode_reference(y, bd))


# ------------------------------------------------------------------ GPU


@gpu
@pytest.mark.parametrize("dim", [64, 80, 96, 128, 256, 384, 1000, 4096])
def test_rotation_equals_cpu(dim: int) -> None:
    cp = _cp()
    from turboquant_rs.cuda import rotate

    rng = np.random.default_rng(dim)
    x = rng.standard_normal((37, dim)).astype(np.float32)
    q = _native.Quantizer(dim, 4, False, "lsq", 11)
    for inverse in (False, True):
        ref = q.rotate(x, inverse=inverse)
        got = cp.asnumpy(rotate(cp.asarray(x), seed=11, inverse=inverse))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # half input: same as the CPU on the float16 values
    xh = x.astype(np.float16)
    got = cp.asnumpy(rotate(cp.asarray(xh), seed=11))
    np.testing.assert_allclose(got, q.rotate(xh.astype(np.float32)), rtol=0, atol=1e-5 * 4)


def _code_mismatch(got: np.ndarray, ref: np.ndarray, dim: int, bits: int) -> float:
    a = _unpack(got, dim, bits)
    b = _unpack(ref, dim, bits)
    return float((a != b).mean())


@gpu
@pytest.mark.parametrize("dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_quantize_bytes_equal_cpu(dim: int, bits: int) -> None:
    cp = _cp()
    from turboquant_rs.cuda import quantize

    rng = np.random.default_rng(dim * 10 + bits)
    x = rng.standard_normal((3001, dim)).astype(np.float32)
    x[5] = 0.0  # zero vector: scale 0, codes of 0
    q = _native.Quantizer(dim, bits, False, "lsq", 3)
    half = (dim, bits) in ((128, 4), (128, 3), (64, 2), (96, 3), (256, 4))
    for arr in (x, x.astype(np.float16)) if half else (x,):
        ref_codes, ref_scales, _, _ = q.quantize(np.ascontiguousarray(arr.astype(np.float32)))
        codes, scales = quantize(cp.asarray(arr), bits, seed=3)
        codes, scales = cp.asnumpy(codes), cp.asnumpy(scales)
        frac = _code_mismatch(codes, ref_codes, dim, bits)
        print(f"dim={dim} bits={bits} {arr.dtype}: code mismatch fraction {frac:.2e}")
        assert frac <= 2e-4
        same = (codes == ref_codes).all(axis=1)
        assert same.mean() > 0.95
        np.testing.assert_allclose(scales[same], ref_scales[same], rtol=1e-5, atol=0)


@gpu
def test_quantize_rejects_nan() -> None:
    cp = _cp()
    from turboquant_rs.cuda import quantize

    x = cp.ones((4, 128), dtype=cp.float32)
    x[2, 3] = cp.nan
    with pytest.raises(ValueError):
        quantize(x, 4)


@gpu
@pytest.mark.parametrize("dim", [96, 128])
def test_dequantize_equals_cpu(dim: int) -> None:
    cp = _cp()
    from turboquant_rs.cuda import dequantize

    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, dim)).astype(np.float32)
    q = _native.Quantizer(dim, 3, False, "lsq", 9)
    codes, scales, signs, rn = q.quantize(x)
    ref = q.dequantize(codes, scales, signs, rn)
    got = cp.asnumpy(dequantize(cp.asarray(codes), cp.asarray(scales), dim, 3, seed=9))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def _make_cache(
    rng: np.random.Generator, B: int, H: int, S: int, D: int, kb: int, vb: int, mean: bool,
    chunks: int = 2,
):  # type: ignore[no-untyped-def]  # fmt: skip
    cp = _cp()
    from turboquant_rs.cuda import PackedKV

    k = (rng.standard_normal((B, H, S, D)) + (0.5 if mean else 0.0)).astype(np.float16)
    v = rng.standard_normal((B, H, S, D)).astype(np.float16)
    mk = k.astype(np.float32).mean(axis=2) if mean else None
    mv = v.astype(np.float32).mean(axis=2) if mean else None
    kv = PackedKV(B, H, S + 5, D, kb, vb, seed=7, key_mean=mk if mk is None else cp.asarray(mk),
                  value_mean=mv if mv is None else cp.asarray(mv))  # fmt: skip
    bounds = np.linspace(0, S, chunks + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        kv.append(
            cp.asarray(np.ascontiguousarray(k[:, :, a:b])), cp.asarray(np.ascontiguousarray(v[:, :, a:b]))
        )
    return kv, k, v, mk, mv


def _cpu_dequant(kv, which: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    cp = _cp()
    bits = kv.key_bits if which == "k" else kv.value_bits
    codes = cp.asnumpy(kv.key_codes if which == "k" else kv.value_codes)
    scales = cp.asnumpy(kv.key_scales if which == "k" else kv.value_scales)
    B, H, cap, rb = codes.shape
    S = kv.max_length
    q = _native.Quantizer(kv.head_dim, bits, False, "lsq", kv.seed)
    e2 = np.zeros((0, 0), np.uint8)
    e1 = np.zeros(0, np.float32)
    out = q.dequantize(
        np.ascontiguousarray(codes[:, :, :S].reshape(-1, rb)),
        np.ascontiguousarray(scales[:, :, :S].reshape(-1)),
        e2,
        e1,
    )
    out = np.asarray(out, dtype=np.float64).reshape(B, H, S, kv.head_dim)
    mean = kv.key_mean if which == "k" else kv.value_mean
    if mean is not None:
        out += cp.asnumpy(mean)[:, :, None, :]
    return out


def _reference(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, clen: np.ndarray, scaling: float, softcap: float,
    window: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """float64 attention; k/v (B, Hkv, S_total, D) with the first clen[b] + extra valid."""
    B, Hq, Lq, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    out = np.zeros((B, Hq, Lq, D))
    lse = np.zeros((B, Hq, Lq))
    for b in range(B):
        total = int(clen[b])
        for h in range(Hq):
            kk, vv = k[b, h // G, :total], v[b, h // G, :total]
            for i in range(Lq):
                qp = total - Lq + i
                s = scaling * (kk @ q[b, h, i].astype(np.float64))
                if softcap > 0:
                    s = softcap * np.tanh(s / softcap)
                t = np.arange(total)
                ok = t <= qp
                if window > 0:
                    ok &= t > qp - window
                s = np.where(ok, s, -np.inf)
                m = s.max()
                p = np.exp(s - m)
                out[b, h, i] = p @ vv / p.sum()
                lse[b, h, i] = m + np.log(p.sum())
    return out, lse


@gpu
@pytest.mark.parametrize(
    "D,kb,vb,G,Lq,mean,extra,softcap,window,dtype",
    [
        (128, 4, 4, 4, 1, False, 0, 0.0, 0, "float16"),
        (128, 4, 3, 4, 1, True, 0, 0.0, 0, "float16"),
        (128, 3, 3, 4, 1, True, 40, 0.0, 0, "float16"),
        (128, 4, 4, 4, 4, True, 20, 0.0, 0, "float16"),
        (128, 4, 4, 2, 3, False, 0, 30.0, 100, "float32"),
        (64, 4, 2, 3, 1, True, 17, 0.0, 0, "float16"),
        (96, 3, 4, 4, 2, True, 9, 0.0, 0, "bfloat16"),
        (80, 4, 4, 2, 1, False, 0, 0.0, 0, "float32"),
        (256, 4, 4, 8, 1, True, 0, 0.0, 0, "float16"),
        (128, 4, 4, 4, 16, False, 16, 0.0, 0, "float16"),
    ],
)
@pytest.mark.parametrize("impl", ["simt", "tc", "tc2"])
def test_attention_matches_float64_reference(
    D: int, kb: int, vb: int, G: int, Lq: int, mean: bool, extra: int, softcap: float,
    window: int, dtype: str, impl: str,
) -> None:  # fmt: skip
    cp = _cp()
    torch = pytest.importorskip("torch")
    from turboquant_rs.cuda import decode_attention

    rng = np.random.default_rng(D + kb * 7 + Lq)
    B, Hkv, S = 2, 2, 333
    kv, _, _, _, _ = _make_cache(rng, B, Hkv, S, D, kb, vb, mean)
    lengths = np.array([S, S - 101], dtype=np.int32)
    kd = _cpu_dequant(kv, "k")
    vd = _cpu_dequant(kv, "v")
    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    q = torch.randn(B, G * Hkv, Lq, D, device="cuda").to(tdt)
    ek = ev = None
    elen = None
    if extra:
        ek = torch.randn(B, Hkv, extra, D, device="cuda").to(tdt)
        ev = torch.randn(B, Hkv, extra, D, device="cuda").to(tdt)
        elen = np.array([extra, max(1, extra - 5)], dtype=np.int32)
    out, lse = decode_attention(
        q, kv, extra_keys=ek, extra_values=ev,
        extra_lengths=None if elen is None else cp.asarray(elen),
        lengths=cp.asarray(lengths), softcap=softcap, window=window, return_lse=True, impl=impl,
    )  # fmt: skip
    assert out.dtype == tdt and out.shape == q.shape
    # reference: per sequence, compressed tokens then the extra segment
    qn = q.float().cpu().numpy().astype(np.float64)
    Emax = extra
    kfull = np.zeros((B, Hkv, S + Emax, D))
    vfull = np.zeros((B, Hkv, S + Emax, D))
    tot = np.zeros(B, dtype=np.int64)
    for b in range(B):
        c = int(lengths[b])
        e = 0 if elen is None else int(elen[b])
        kfull[b, :, :c] = kd[b, :, :c]
        vfull[b, :, :c] = vd[b, :, :c]
        if e:
            kfull[b, :, c : c + e] = ek[b, :, :e].float().cpu().numpy()  # type: ignore[index]
            vfull[b, :, c : c + e] = ev[b, :, :e].float().cpu().numpy()  # type: ignore[index]
        tot[b] = c + e
    ref, ref_lse = _reference(qn, kfull, vfull, tot, 1.0 / math.sqrt(D), softcap, window)
    got = out.float().cpu().numpy().astype(np.float64)
    out_tol = {"float32": 1e-3, "float16": 2e-3, "bfloat16": 8e-3}[dtype]  # output rounding
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    print(f"{impl} D={D} K{kb}/V{vb} G={G} Lq={Lq} {dtype}: rel err {rel:.2e}")
    assert rel < out_tol
    np.testing.assert_allclose(lse.cpu().numpy(), ref_lse, rtol=0, atol=1e-3)
    if dtype == "float32":
        assert rel < 1e-3


@gpu
@pytest.mark.parametrize("impl", ["simt", "tc", "tc2"])
def test_attention_f32_output_is_within_1e3_of_dequantized_reference(impl: str) -> None:
    """The kernel's own arithmetic (no output rounding): float32 query, K4/V4, D = 128."""
    _cp()
    torch = pytest.importorskip("torch")
    from turboquant_rs.cuda import decode_attention

    rng = np.random.default_rng(5)
    B, Hkv, S, D, G = 2, 2, 1500, 128, 4
    kv, _, _, _, _ = _make_cache(rng, B, Hkv, S, D, 4, 4, True, chunks=3)
    kd, vd = _cpu_dequant(kv, "k"), _cpu_dequant(kv, "v")
    q = torch.randn(B, G * Hkv, 1, D, device="cuda")
    out = decode_attention(q, kv, splits=5, impl=impl)
    ref, _ = _reference(q.cpu().numpy().astype(np.float64), kd, vd, np.full(B, S), 1 / math.sqrt(D), 0.0, 0)
    rel = np.linalg.norm(out.cpu().numpy() - ref) / np.linalg.norm(ref)
    assert rel < 1e-4, rel


@gpu
def test_append_equals_cpu_quantize_of_centred_rows() -> None:
    cp = _cp()
    rng = np.random.default_rng(2)
    B, H, S, D = 2, 3, 70, 128
    kv, k, _, mk, _ = _make_cache(rng, B, H, S, D, 4, 3, True, chunks=3)
    assert mk is not None
    q = _native.Quantizer(D, 4, False, "lsq", 7)
    rows = (k.astype(np.float32) - mk[:, :, None, :]).reshape(-1, D)
    ref_codes, ref_scales, _, _ = q.quantize(np.ascontiguousarray(rows))
    got = cp.asnumpy(kv.key_codes[:, :, :S]).reshape(-1, 64)
    frac = _code_mismatch(got, ref_codes, D, 4)
    assert frac <= 2e-4
    np.testing.assert_allclose(cp.asnumpy(kv.key_scales[:, :, :S]).reshape(-1), ref_scales, rtol=1e-4)
    assert int(cp.asnumpy(kv.lengths).min()) == S


@gpu
def test_torch_tensors_round_trip() -> None:
    torch = pytest.importorskip("torch")
    from turboquant_rs.cuda import dequantize, quantize

    x = torch.randn(300, 128, device="cuda", dtype=torch.bfloat16)
    codes, scales = quantize(x, 4)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8 and codes.is_cuda
    y = dequantize(codes, scales, 128, 4, dtype="bfloat16")
    assert y.dtype == torch.bfloat16
    err = ((y.float() - x.float()).norm(dim=1) / x.float().norm(dim=1)).mean().item()
    assert err < 0.15
