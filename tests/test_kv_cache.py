"""Packed KV cache (``turboquant_rs.kv_cache``): attention from the codes, fidelity, bytes, append,
the seed README's KV examples, and bad input.

*Exactness* compares attention computed from the codes with a float64 softmax over the
dequantized cache (the store's float32 reconstruction, sink tokens exact, plus the window as
stored): they agree to 1e-4 relative in float32 whatever the masking (causal queries, sliding
window, padding, softcap), the head layout (MHA/GQA/MQA), outliers, widths and sink tokens.
*Fidelity* compares with the original K/V: the quantization error itself, which falls with bits.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from turboquant_rs import (  # noqa: E402
    CompressedKV,
    KVLayerStore,
    TurboQuantError,
    TurboQuantKVCache,
    packed_attention,
)

MB = 1024.0 * 1024.0
EXACT = 1e-4  # relative error of attention from the codes vs the float64 dequantized reference


# ----------------------------------------------------------------------------- helpers


def _f64(x: Any) -> np.ndarray:
    """numpy float64 copy of a numpy array or CPU tensor (any float dtype)."""
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _rel(a: Any, b: Any) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a64, b64 = _f64(a), _f64(b)
    return float(np.linalg.norm(a64 - b64) / np.linalg.norm(b64))


def _kv_data(
    rng: np.random.Generator, b: int, h: int, s: int, d: int, offset: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Keys with per-channel offsets (as real keys have) and Gaussian values, float32."""
    k = rng.standard_normal((b, h, s, d)) + offset * rng.standard_normal(d)
    v = rng.standard_normal((b, h, s, d))
    return k.astype(np.float32), v.astype(np.float32)


def _reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float,
    softcap: float | None = None,
    sliding_window: int | None = None,
    key_valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 softmax attention; queries are the last Q positions (causal). Returns (out, lse);
    a query with no visible key gets zeros and -inf."""
    bsz, hq, ql, _ = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = hq // hkv
    kr, vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # q head i reads kv head i // g
    z = np.einsum("bhqd,bhsd->bhqs", q, kr) * scale
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    pos = np.arange(s - ql, s)[:, None]
    kpos = np.arange(s)[None, :]
    allowed = kpos <= pos
    if sliding_window is not None:
        allowed = allowed & (kpos > pos - sliding_window)
    mask = np.broadcast_to(allowed, (bsz, 1, ql, s))
    if key_valid is not None:
        mask = mask & key_valid[:, None, None, :]
    z = np.where(mask, z, -np.inf)
    m = z.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.where(mask, np.exp(z - m), 0.0)
    den = w.sum(axis=-1, keepdims=True)
    out = np.einsum("bhqs,bhsd->bhqd", w, vr) / np.where(den > 0, den, 1.0)
    with np.errstate(divide="ignore"):
        lse = np.where(den[..., 0] > 0, m[..., 0] + np.log(den[..., 0]), -np.inf)
    return out, lse


def _dequantized(c: CompressedKV) -> tuple[np.ndarray, np.ndarray]:
    """float64 (B, H, S, D) keys and values the codes stand for: the store's float32 reconstruction
    (sink tokens exact) followed by the window as stored."""
    parts_k, parts_v = [], []
    if c.store.seq_len:
        k, v = c.store.decompress()
        parts_k.append(k.astype(np.float64))
        parts_v.append(v.astype(np.float64))
    parts_k.append(_f64(c.residual_keys))
    parts_v.append(_f64(c.residual_values))
    return np.concatenate(parts_k, axis=2), np.concatenate(parts_v, axis=2)


def _left_padding(pads: tuple[int, ...], s: int) -> np.ndarray:
    """(B, S) key mask: row b starts with pads[b] padding tokens."""
    return np.arange(s)[None, :] >= np.asarray(pads)[:, None]


# ----------------------------------------------------------------------------- 1. exactness


@dataclass(frozen=True)
class Case:
    """One configuration of the exactness grid."""

    name: str
    batch: int = 2
    kv_heads: int = 2
    q_heads: int = 4
    seq: int = 70
    q_len: int = 1
    head_dim: int = 64
    bits: int = 3
    residual: int = 0
    sliding_window: int | None = None
    pads: tuple[int, ...] | None = None
    softcap: float | None = None
    scale: float | None = None
    outliers: int = 0
    value_outliers: int = 0
    key_bits: int | None = None
    value_bits: int | None = None
    sink: int = 1

    def cache(self) -> TurboQuantKVCache:
        return TurboQuantKVCache(
            self.head_dim,
            self.bits,
            residual_length=self.residual,
            key_bit_width=self.key_bits,
            value_bit_width=self.value_bits,
            n_outlier_channels=self.outliers,
            value_outlier_channels=self.value_outliers,
            n_sink_tokens=self.sink,
        )

    @property
    def masked(self) -> bool:
        """Whether the options change the result (a window wider than the context does not)."""
        narrow = self.sliding_window is not None and self.sliding_window < self.seq
        return narrow or self.pads is not None or self.softcap is not None


CASES = [
    Case("mha_q1_r0", kv_heads=4, q_heads=4),
    Case("mha_qlen5_r16", kv_heads=4, q_heads=4, q_len=5, residual=16),
    Case("gqa_32x8_d128_q1_r16", batch=1, kv_heads=8, q_heads=32, head_dim=128, seq=80, residual=16),
    # more queries than window tokens: the queries' causal rows cross from the codes into the window
    Case("gqa_32x8_qlen24_r16", batch=1, kv_heads=8, q_heads=32, seq=80, q_len=24, residual=16),
    Case("mqa_qlen3_r8", kv_heads=1, q_heads=8, q_len=3, residual=8),
    Case("mqa_qlen6_r0", batch=1, kv_heads=1, q_heads=8, q_len=6),
    Case("sliding17_qlen4_r8", seq=96, q_len=4, residual=8, sliding_window=17),
    # the window of attention lies inside the residual window: every stored token is excluded
    Case("sliding5_inside_window", q_len=3, residual=16, sliding_window=5),
    Case("sliding1", q_len=2, residual=4, sliding_window=1),
    # wider than the context (Mistral's 4096 on a short prompt): everything visible, causal only
    Case("sliding_wider_than_context", q_len=3, residual=8, sliding_window=100),
    Case("left_padding_3_lengths", batch=3, seq=60, q_len=2, residual=8, pads=(0, 7, 40)),
    # row 2 is all padding up to the window: its stored range is empty, only window keys count
    Case("padding_into_window", batch=3, seq=60, residual=8, pads=(0, 3, 55)),
    Case("padding_and_sliding", batch=2, seq=60, q_len=3, residual=8, pads=(0, 20), sliding_window=30),
    Case("softcap_gemma2", q_len=3, residual=8, softcap=2.0, scale=0.5),
    Case("outliers_k16_v8", residual=4, outliers=16, value_outliers=8),
    Case("outliers_k32_d128", batch=1, head_dim=128, seq=50, outliers=32),
    Case("k4_v3", residual=8, bits=3, key_bits=4, value_bits=3),
    Case("d80_qlen3_r8", head_dim=80, q_len=3, residual=8),
    Case("d128_bits2", head_dim=128, bits=2, seq=50, residual=4),
    Case("bits1", bits=1, q_len=2),
    Case("bits8", bits=8, q_len=2),
    Case("sink0_r8", sink=0, residual=8, q_len=2),
    Case("sink3_qlen2", sink=3, q_len=2),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_attention_from_codes_matches_the_dequantized_cache(case: Case) -> None:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    k, v = _kv_data(rng, case.batch, case.kv_heads, case.seq, case.head_dim)
    q = (1.5 * rng.standard_normal((case.batch, case.q_heads, case.q_len, case.head_dim))).astype(np.float32)
    cache = case.cache()
    c = cache.compress(k, v)
    assert c.split_point == max(case.seq - case.residual, 0) and c.seq_len == case.seq
    valid = None if case.pads is None else _left_padding(case.pads, case.seq)
    out = cache.attention(
        q, c, scale=case.scale, softcap=case.softcap, sliding_window=case.sliding_window, key_valid=valid
    )
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == q.shape
    kh, vh = _dequantized(c)
    scale = case.scale if case.scale is not None else 1.0 / math.sqrt(case.head_dim)
    ref, _ = _reference(
        q.astype(np.float64),
        kh,
        vh,
        scale=scale,
        softcap=case.softcap,
        sliding_window=case.sliding_window,
        key_valid=valid,
    )
    assert _rel(out, ref) <= EXACT
    # the reference is the decompressed cache the user sees
    np.testing.assert_array_equal(cache.decompress_keys(c), kh.astype(np.float32))
    np.testing.assert_array_equal(cache.decompress_values(c), vh.astype(np.float32))
    if case.masked:  # the options change the result: a cache that ignored them would fail above
        plain, _ = _reference(q.astype(np.float64), kh, vh, scale=scale)
        assert _rel(plain, ref) > 100 * EXACT


DTYPES = [
    ("numpy", "float32", 0.0),
    ("numpy", "float64", 0.0),
    ("numpy", "float16", 2.0**-11),
    ("torch", "float32", 0.0),
    ("torch", "float16", 2.0**-11),
    ("torch", "bfloat16", 2.0**-8),
]


def _as(x: np.ndarray, kind: str, dtype: str) -> Any:
    return torch.from_numpy(x).to(getattr(torch, dtype)) if kind == "torch" else x.astype(dtype)


@pytest.mark.parametrize(("kind", "dtype", "unit_roundoff"), DTYPES, ids=[f"{k}-{d}" for k, d, _ in DTYPES])
def test_dtypes_and_kinds_follow_the_input(kind: str, dtype: str, unit_roundoff: float) -> None:
    rng = np.random.default_rng(7)
    k32, v32 = _kv_data(rng, 2, 2, 50, 64)
    q32 = rng.standard_normal((2, 8, 3, 64)).astype(np.float32)
    k, v, q = _as(k32, kind, dtype), _as(v32, kind, dtype), _as(q32, kind, dtype)
    cache = TurboQuantKVCache(64, 3, residual_length=12)
    c = cache.compress(k, v)
    valid = _left_padding((0, 5), 50)
    key_valid = torch.from_numpy(valid) if kind == "torch" else valid
    out = cache.attention(q, c, key_valid=key_valid)
    assert type(out) is type(q) and out.dtype == q.dtype and tuple(out.shape) == (2, 8, 3, 64)
    kh, vh = _dequantized(c)
    ref, _ = _reference(_f64(q), kh, vh, scale=0.125, key_valid=valid)
    # float32 engine; the result is rounded once to the query's dtype
    assert _rel(out, ref) <= EXACT + unit_roundoff
    # the window is stored as given (dtype and bits); the codes part comes back in the input dtype
    dk = cache.decompress_keys(c)
    assert type(dk) is type(k) and dk.dtype == k.dtype
    np.testing.assert_array_equal(_f64(dk[:, :, 38:]), _f64(k[:, :, 38:]))
    codes_k = c.store.decompress()[0]
    np.testing.assert_array_equal(_f64(dk[:, :, :38]), _f64(_as(codes_k, kind, dtype)))
    assert c.residual_keys.dtype == k.dtype


def test_output_follows_the_query_not_the_cache() -> None:
    rng = np.random.default_rng(3)
    k, v = _kv_data(rng, 1, 2, 30, 64)
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    cache = TurboQuantKVCache(64, 4, residual_length=4)
    c = cache.compress(torch.from_numpy(k).to(torch.bfloat16), torch.from_numpy(v).to(torch.bfloat16))
    out_np = cache.attention(q, c)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    out_t = cache.attention(torch.from_numpy(q).half(), c)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float16
    assert _rel(out_t, out_np) <= 2.0**-11


def test_sink_token_is_exact() -> None:
    rng = np.random.default_rng(5)
    k, v = _kv_data(rng, 2, 2, 40, 64)
    k[:, :, 0] *= 30.0  # the attention sink: a key far from the others
    c1 = TurboQuantKVCache(64, 3, residual_length=0)
    assert c1.n_sink_tokens == 1
    x1 = c1.compress(k, v)
    np.testing.assert_array_equal(c1.decompress_keys(x1)[:, :, 0], k[:, :, 0])
    np.testing.assert_array_equal(c1.decompress_values(x1)[:, :, 0], v[:, :, 0])
    assert not np.array_equal(c1.decompress_keys(x1)[:, :, 1], k[:, :, 1])
    c0 = TurboQuantKVCache(64, 3, residual_length=0, n_sink_tokens=0)
    x0 = c0.compress(k, v)
    err0 = np.abs(c0.decompress_keys(x0)[:, :, 0] - k[:, :, 0]).max()
    assert err0 > 0.1  # quantized, with an error that scales with its norm
    # the sink is paid for in the input's dtype (float32 here): D·4 bytes per side per stream
    # instead of a code row
    assert x1.nbytes > x0.nbytes
    assert x1.store.settings() != x0.store.settings()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sink_tokens_are_held_in_the_input_dtype(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(6)
    k, v = _kv_data(rng, 1, 2, 50, 64)
    kt, vt = torch.from_numpy(k).to(dtype), torch.from_numpy(v).to(dtype)
    with_sinks = KVLayerStore(64, 2, 4, sink_tokens=4)
    with_sinks.append(kt[:, :, :3], vt[:, :, :3])  # the sinks arrive over two appends
    with_sinks.append(kt[:, :, 3:], vt[:, :, 3:])
    without = KVLayerStore(64, 2, 4)
    without.append(kt[:, :, 4:], vt[:, :, 4:])
    # 4 tokens × 2 streams × 64 channels × 2 sides at 2 bytes, plus the same codes otherwise
    # (the centre comes from the first quantized chunk, so compare the codes' bytes alone)
    assert with_sinks.nbytes - with_sinks._native.nbytes == 4 * 2 * 64 * 2 * 2
    assert with_sinks._native.nbytes == without.nbytes
    dk, dv = with_sinks.decompress()
    np.testing.assert_array_equal(dk[:, :, :4], kt[:, :, :4].float().numpy())
    np.testing.assert_array_equal(dv[:, :, :4], vt[:, :, :4].float().numpy())
    # attention sees the exact sinks: the same as a float32 store given the same values
    ref = KVLayerStore(64, 2, 4, sink_tokens=4)
    ref.append(kt.float().numpy(), vt.float().numpy())
    q = rng.standard_normal((1, 4, 1, 64)).astype(np.float32)
    out, lse = with_sinks.attend(q, [[0]], [[50]], scaling=0.125)
    out_ref, lse_ref = ref.attend(q, [[0]], [[50]], scaling=0.125)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(lse, lse_ref)
    # a later chunk in another dtype keeps every sink exact (in float32)
    mixed = KVLayerStore(64, 2, 4, sink_tokens=4)
    mixed.append(kt[:, :, :2], vt[:, :, :2])
    mixed.append(k[:, :, 2:], v[:, :, 2:])
    mk, _ = mixed.decompress()
    np.testing.assert_array_equal(mk[:, :, :2], kt[:, :, :2].float().numpy())
    np.testing.assert_array_equal(mk[:, :, 2:4], k[:, :, 2:4])


def test_store_attend_returns_the_log_sum_exp_over_any_range() -> None:
    rng = np.random.default_rng(11)
    store = KVLayerStore(64, 2, 3, 4, key_outliers=8, sink_tokens=2)
    k, v = _kv_data(rng, 2, 2, 45, 64)
    store.append(k[:, :, :30], v[:, :, :30])
    store.append(k[:, :, 30:], v[:, :, 30:])
    assert store.seq_len == 45 and store.batch_size == 2
    q = rng.standard_normal((2, 4, 3, 64)).astype(np.float32)
    lo = np.array([[0, 1, 10], [2, 44, 20]])
    hi = np.array([[45, 2, 10], [40, 45, 33]])  # (0, 2) is empty; (0, 1) covers one sink token only
    out, lse = store.attend(q, lo, hi, scaling=0.2)
    kh, vh = (x.astype(np.float64) for x in store.decompress())
    kr, vr = np.repeat(kh, 2, axis=1), np.repeat(vh, 2, axis=1)
    for b in range(2):
        for i in range(3):
            if lo[b, i] == hi[b, i]:
                assert np.all(out[b, :, i] == 0) and np.all(np.isneginf(lse[b, :, i]))
                continue
            sl = slice(lo[b, i], hi[b, i])
            z = np.einsum("hd,hsd->hs", q[b, :, i].astype(np.float64), kr[b, :, sl]) * 0.2
            m = z.max(axis=1, keepdims=True)
            w = np.exp(z - m)
            ref = (w[:, :, None] * vr[b, :, sl]).sum(axis=1) / w.sum(axis=1, keepdims=True)
            assert _rel(out[b, :, i], ref) <= EXACT
            np.testing.assert_allclose(lse[b, :, i], m[:, 0] + np.log(w.sum(axis=1)), atol=1e-4, rtol=0)


def test_packed_attention_with_extras_only_and_with_a_store() -> None:
    rng = np.random.default_rng(12)
    k, v = _kv_data(rng, 2, 2, 20, 64)
    q = rng.standard_normal((2, 6, 2, 64)).astype(np.float32)
    # no store: exact attention over full-precision keys
    out = packed_attention(q, None, k, v, softcap=3.0)
    ref, _ = _reference(*(x.astype(np.float64) for x in (q, k, v)), scale=0.125, softcap=3.0)
    assert _rel(out, ref) <= 1e-5
    # store (positions [0, 14)) + extras (positions [14, 20)), padding on row 1
    store = KVLayerStore(64, 2, 4, sink_tokens=1)
    store.append(k[:, :, :14], v[:, :, :14])
    valid = _left_padding((0, 4), 20)
    valid[0, 16] = False  # holes are allowed among the extras
    out = packed_attention(q, store, k[:, :, 14:], v[:, :, 14:], scaling=0.3, key_valid=valid)
    kh = np.concatenate([store.decompress()[0].astype(np.float64), k[:, :, 14:]], axis=2)
    vh = np.concatenate([store.decompress()[1].astype(np.float64), v[:, :, 14:]], axis=2)
    ref, _ = _reference(q.astype(np.float64), kh, vh, scale=0.3, key_valid=valid)
    assert _rel(out, ref) <= EXACT


def test_store_truncate_select_repeat_copy_reset() -> None:
    rng = np.random.default_rng(13)
    k, v = _kv_data(rng, 3, 2, 20, 64)
    store = KVLayerStore(64, 2, 3, sink_tokens=2)
    store.append(k, v)
    full_k, full_v = store.decompress()
    twin = store.copy()
    store.truncate(12)
    assert store.seq_len == 12
    np.testing.assert_array_equal(store.decompress()[0], full_k[:, :, :12])
    store.truncate(1)  # inside the sink tokens
    assert store.seq_len == 1
    np.testing.assert_array_equal(store.decompress()[1], full_v[:, :, :1])
    # the copy is independent
    np.testing.assert_array_equal(twin.decompress()[0], full_k)
    twin.select([2, 0, 0])
    assert twin.batch_size == 3
    np.testing.assert_array_equal(twin.decompress()[0], full_k[[2, 0, 0]])
    twin.repeat_interleave(2)
    np.testing.assert_array_equal(twin.decompress()[1], np.repeat(full_v[[2, 0, 0]], 2, axis=0))
    with pytest.raises(ValueError):
        twin.select([6])
    assert twin.batch_size == 6
    twin.reset()
    assert twin.seq_len == 0 and twin.batch_size == 0 and twin.nbytes < store.nbytes


# ----------------------------------------------------------------------------- 2. fidelity


def _sink_heavy_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian keys with channel offsets, a first token far out along the queries' shared
    direction (it draws about half of the attention), Gaussian values; GQA 8 q / 4 kv heads."""
    rng = np.random.default_rng(seed)
    d = 128
    off = 1.5 * rng.standard_normal(d)
    k = rng.standard_normal((1, 4, 512, d)) + off
    v = rng.standard_normal((1, 4, 512, d))
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    k[:, :, 0] = 40.0 * u + off
    q = rng.standard_normal((1, 8, 4, d)) + 2.0 * u
    return q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)


# measured once (seed 1): sink 1 → 0.0406 / 0.0206 / 0.0116; sink 0 → 0.43 / 0.21 / 0.13
FIDELITY_BOUNDS = {2: 0.055, 3: 0.028, 4: 0.016}


def test_fidelity_falls_with_bits_and_the_sink_token_pays() -> None:
    q, k, v = _sink_heavy_data(1)
    ref, _ = _reference(*(x.astype(np.float64) for x in (q, k, v)), scale=128**-0.5)
    errs: dict[tuple[int, int], float] = {}
    for sink in (1, 0):
        for bits in (2, 3, 4):
            cache = TurboQuantKVCache(128, bits, residual_length=0, n_sink_tokens=sink)
            errs[sink, bits] = _rel(cache.attention(q, cache.compress(k, v)), ref)
    e2, e3, e4 = errs[1, 2], errs[1, 3], errs[1, 4]
    assert e2 <= FIDELITY_BOUNDS[2] and e3 <= FIDELITY_BOUNDS[3] and e4 <= FIDELITY_BOUNDS[4], errs
    assert e2 > 1.5 * e3 > 1.5 * 1.4 * e4, errs  # each bit about halves the error
    assert e4 > 0.005, errs  # quantized for real (a float copy would give ~1e-7)
    for bits in (2, 3, 4):  # quantizing the outlier token costs 5-10x the error
        assert errs[0, bits] > 5 * errs[1, bits], errs
    assert errs[0, 2] > errs[0, 3] > errs[0, 4], errs


def test_a_full_precision_window_reduces_the_error() -> None:
    q, k, v = _sink_heavy_data(2)
    ref, _ = _reference(*(x.astype(np.float64) for x in (q, k, v)), scale=128**-0.5)
    errs = []
    for residual in (0, 256, 512):
        cache = TurboQuantKVCache(128, 2, residual_length=residual)
        errs.append(_rel(cache.attention(q, cache.compress(k, v)), ref))
    assert errs[0] > 1.3 * errs[1] and errs[2] < 1e-5, errs


# ----------------------------------------------------------------------------- 3. bytes


@pytest.mark.parametrize(("bits", "min_ratio"), [(4, 3.7), (3, 4.8)])
def test_bytes_beyond_the_window(bits: int, min_ratio: float) -> None:
    b, h, d, r, quantized = 1, 8, 128, 128, 2048
    rng = np.random.default_rng(bits)
    k = torch.from_numpy(rng.standard_normal((b, h, quantized + r, d), dtype=np.float32)).half()
    cache = TurboQuantKVCache(d, bits, residual_length=r)
    c = cache.compress(k, k)
    # the window is counted as stored: fp16, 2 bytes
    assert c.nbytes - c.store.nbytes == 2 * b * h * r * d * 2
    tokens = quantized * h * b * 2  # key and value rows
    code_bytes = bits * d // 8
    # at least the codes themselves; at most codes + one f32 scale per row + 2% (per-stream
    # centres, the sink token): measured 68.5 B per row at 4 bits, 52.5 at 3
    assert tokens * code_bytes <= c.store.nbytes <= 1.02 * tokens * (code_bytes + 4)
    if bits == 4:
        assert c.store.nbytes <= 1.06 * tokens * (64 + 2)
    fp16 = tokens * d * 2
    assert fp16 / c.store.nbytes >= min_ratio
    # with no window at all, the whole object
    c0 = TurboQuantKVCache(d, bits, residual_length=0).compress(k, k)
    assert c0.compression_ratio() >= min_ratio
    assert c0.compression_ratio() == pytest.approx(2 * b * h * (quantized + r) * d * 2 / c0.nbytes)


@pytest.mark.parametrize(("b", "h", "s"), [(2, 4, 1000), (1, 2, 100), (3, 1, 4097)])
def test_memory_savings_is_a_real_compress_of_that_shape(b: int, h: int, s: int) -> None:
    cache = TurboQuantKVCache(128, 3, residual_length=128, n_outlier_channels=16)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((b, h, s, 128), dtype=np.float32)).half()
    c = cache.compress(x, x)
    orig_mb, comp_mb, ratio = cache.memory_savings(b, h, s)
    assert orig_mb * MB == 2 * b * h * s * 128 * 2
    assert comp_mb * MB == pytest.approx(c.nbytes, rel=1e-12)
    assert ratio == pytest.approx(c.compression_ratio(), rel=1e-12)
    if s <= 128:
        assert ratio == 1.0  # all in the fp16 window


def test_average_bits_with_outliers() -> None:
    assert TurboQuantKVCache(128, 3).average_bits == (3.0, 3.0)
    assert TurboQuantKVCache(128, 3, n_outlier_channels=64).average_bits == (3.5, 3.0)  # half at b+1
    assert TurboQuantKVCache(128, 2, n_outlier_channels=32, outlier_bits=3).average_bits == (2.25, 2.0)
    assert TurboQuantKVCache(128, 4, value_outlier_channels=64).average_bits == (4.0, 4.5)
    assert TurboQuantKVCache(64, 3, key_bit_width=4, value_bit_width=2).average_bits == (4.0, 2.0)
    # the bytes follow the average: 3.5-bit keys cost more than 3-bit keys, less than 4-bit keys
    rng = np.random.default_rng(0)
    k, v = _kv_data(rng, 1, 4, 256, 128)
    sizes = [
        TurboQuantKVCache(128, 3, residual_length=0, **kw).compress(k, v).nbytes  # type: ignore[arg-type]
        for kw in ({}, {"n_outlier_channels": 64}, {"key_bit_width": 4})
    ]
    assert sizes[0] < sizes[1] < sizes[2]


# ----------------------------------------------------------------------------- 4. append


def test_append_keeps_what_is_stored_and_matches_one_chunked_stream() -> None:
    rng = np.random.default_rng(21)
    k, v = _kv_data(rng, 2, 2, 120, 64)
    r = 8
    cache = TurboQuantKVCache(64, 3, residual_length=r, n_outlier_channels=8)
    c = cache.compress(k[:, :, :40], v[:, :, :40])
    assert (c.seq_len, c.split_point) == (40, 32)
    seen = 40
    for t in (1, 3, 16, 1, 0, 25, 34):
        before_k, before_v = cache.decompress_keys(c), cache.decompress_values(c)
        split_before = c.split_point
        same = cache.append(c, k[:, :, seen : seen + t], v[:, :, seen : seen + t])
        assert same is c
        seen += t
        assert c.seq_len == seen and c.split_point == seen - r and c.store.seq_len == seen - r
        # nothing stored was re-quantized: the earlier tokens decompress bitwise as before
        np.testing.assert_array_equal(
            cache.decompress_keys(c)[:, :, :split_before], before_k[:, :, :split_before]
        )
        np.testing.assert_array_equal(
            cache.decompress_values(c)[:, :, :split_before], before_v[:, :, :split_before]
        )
        # the window is the last r tokens, exactly
        np.testing.assert_array_equal(c.residual_keys, k[:, :, seen - r : seen])
    assert seen == 120
    # The per-stream centre and outlier channels are fixed by the first quantized chunk (here the
    # 31 tokens after the sink that compress() quantized). So: equal bitwise to any other stream
    # with that same first chunk, however the rest is chunked...
    c2 = cache.compress(k[:, :, :40], v[:, :, :40])
    cache.append(c2, k[:, :, 40:], v[:, :, 40:])
    np.testing.assert_array_equal(cache.decompress_keys(c2), cache.decompress_keys(c))
    np.testing.assert_array_equal(cache.decompress_values(c2), cache.decompress_values(c))
    q = rng.standard_normal((2, 4, 2, 64)).astype(np.float32)
    np.testing.assert_array_equal(cache.attention(q, c2), cache.attention(q, c))
    # ...but not to compressing all 120 at once (the centre would be the mean of 111 tokens)
    c_all = cache.compress(k, v)
    assert not np.array_equal(cache.decompress_keys(c_all), cache.decompress_keys(c))
    assert c_all.nbytes == c.nbytes and c_all.split_point == c.split_point
    # both are faithful, to the same order (measured 0.114 and 0.113 at 3 bits)
    e_inc = _rel(cache.decompress_keys(c)[:, :, 1:112], k[:, :, 1:112])
    e_all = _rel(cache.decompress_keys(c_all)[:, :, 1:112], k[:, :, 1:112])
    assert e_inc < 0.13 and e_all < 0.13 and abs(e_inc - e_all) < 0.1 * e_all, (e_inc, e_all)


def test_append_without_centring_equals_compressing_at_once() -> None:
    """Without centring or outliers each token is quantized on its own: the stream does not
    depend on how it was chunked, and equals compress() of everything at once bitwise."""
    rng = np.random.default_rng(22)
    k, v = _kv_data(rng, 1, 4, 90, 64)
    cache = TurboQuantKVCache(64, 4, residual_length=6, center=False)
    c = cache.compress(k[:, :, :0], v[:, :, :0])  # an empty start
    assert c.seq_len == 0 and c.split_point == 0
    for lo, hi in ((0, 3), (3, 4), (4, 50), (50, 90)):
        cache.append(c, k[:, :, lo:hi], v[:, :, lo:hi])
    c_all = cache.compress(k, v)
    np.testing.assert_array_equal(cache.decompress_keys(c), cache.decompress_keys(c_all))
    np.testing.assert_array_equal(cache.decompress_values(c), cache.decompress_values(c_all))
    q = rng.standard_normal((1, 8, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(cache.attention(q, c), cache.attention(q, c_all))


def test_append_is_proportional_to_new_tokens() -> None:
    rng = np.random.default_rng(23)
    k = rng.standard_normal((1, 8, 8192, 128), dtype=np.float32)
    cache = TurboQuantKVCache(128, 4, residual_length=16)
    t0 = time.perf_counter()
    c = cache.compress(k, k)
    t_compress = time.perf_counter() - t0
    one = k[:, :, :1]
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        cache.append(c, one, one)
        times.append(time.perf_counter() - t0)
    assert c.split_point == 8192 - 16 + 7
    # one token onto 8k: the work of one token, not of the stream (measured ~1000x faster)
    assert statistics.median(times) < 0.05 * t_compress, (times, t_compress)


# ----------------------------------------------------------------------------- 5. seed README


def test_readme_basic_kv_cache_compression() -> None:
    torch.manual_seed(0)
    cache = TurboQuantKVCache(head_dim=128, bit_width=3, residual_length=128)

    # Compress KV tensors (batch, heads, seq, dim)
    keys = torch.randn(2, 32, 2048, 128)
    values = torch.randn(2, 32, 2048, 128)
    compressed = cache.compress(keys, values)

    # Attention with compressed cache
    query = torch.randn(2, 32, 1, 128)
    output = cache.attention(query, compressed)

    orig_mb, comp_mb, ratio = cache.memory_savings(2, 32, 2048)
    print(f"Memory: {orig_mb:.0f} MB -> {comp_mb:.0f} MB ({ratio:.1f}x)")

    assert isinstance(output, torch.Tensor) and output.shape == (2, 32, 1, 128)
    assert orig_mb == 64.0
    # 1920 tokens at 3 bits (52 B per row) + 128 fp16 window tokens (256 B): measured 3.93x
    assert 3.85 < ratio < 4.0
    kh, vh = _dequantized(compressed)
    ref, _ = _reference(_f64(query), kh, vh, scale=128**-0.5)
    assert _rel(output, ref) <= EXACT
    # against the true K/V (random data, near-uniform weights): measured 0.251 at 3 bits
    exact, _ = _reference(_f64(query), _f64(keys), _f64(values), scale=128**-0.5)
    assert 0.15 < _rel(output, exact) < 0.3


def test_readme_sliding_window_residual_buffer() -> None:
    cache = TurboQuantKVCache(
        head_dim=128,
        bit_width=3,
        residual_length=128,  # last 128 tokens stay in fp16
    )
    torch.manual_seed(1)
    keys, values = torch.randn(1, 4, 300, 128).half(), torch.randn(1, 4, 300, 128).half()
    c = cache.compress(keys, values)
    assert c.split_point == 172 and c.residual_keys.dtype == torch.float16
    assert torch.equal(c.residual_keys, keys[:, :, -128:]) and torch.equal(
        c.residual_values, values[:, :, -128:]
    )
    assert torch.equal(cache.decompress_keys(c)[:, :, -128:], keys[:, :, -128:])
    # a sequence shorter than the window is not quantized at all
    short = cache.compress(keys[:, :, :100], values[:, :, :100])
    assert short.split_point == 0 and torch.equal(cache.decompress_values(short), values[:, :, :100])


def test_readme_gqa_for_gqa() -> None:
    cache = TurboQuantKVCache.for_gqa(
        head_dim=128,
        num_kv_heads=8,  # Llama-3-8B
        num_query_heads=32,
        bit_width=3,
        residual_length=128,
    )
    # Keys auto-bumped to 4-bit to compensate for GQA error amplification
    assert (cache.key_bit_width, cache.value_bit_width) == (4, 3)
    assert cache.average_bits == (4.0, 3.0)
    # attention is GQA-native: 32 query heads over 8 KV heads
    rng = np.random.default_rng(2)
    k, v = _kv_data(rng, 1, 8, 200, 128)
    q = rng.standard_normal((1, 32, 2, 128)).astype(np.float32)
    c = cache.compress(k, v)
    kh, vh = _dequantized(c)
    assert _rel(cache.attention(q, c), _reference(q.astype(np.float64), kh, vh, scale=128**-0.5)[0]) <= EXACT
    assert TurboQuantKVCache.for_gqa(128, 8, 16, bit_width=3).key_bit_width == 3  # 2 per group: no bump
    assert TurboQuantKVCache.for_gqa(128, 1, 8, bit_width=4).key_bit_width == 4  # capped at 4
    with pytest.raises(ValueError):
        TurboQuantKVCache.for_gqa(128, num_kv_heads=8, num_query_heads=30)


def test_readme_outlier_channel_routing() -> None:
    cache = TurboQuantKVCache(
        head_dim=128,
        bit_width=3,
        n_outlier_channels=8,  # top-8 channels kept in fp16
        residual_length=128,
    )
    # ours: the paper's split, the 8 outlier channels at 4 bits (not an fp16 copy)
    assert cache.average_bits == (pytest.approx((120 * 3 + 8 * 4) / 128), 3.0)
    rng = np.random.default_rng(4)
    k, v = _kv_data(rng, 1, 2, 400, 128)
    k[..., [3, 50, 77, 90, 100, 101, 110, 127]] *= 20.0  # loud channels
    c = cache.compress(k, v)
    plain = TurboQuantKVCache(head_dim=128, bit_width=3, residual_length=128)
    cp = plain.compress(k, v)
    q = rng.standard_normal((1, 2, 1, 128)).astype(np.float32)
    kh, vh = _dequantized(c)
    assert _rel(cache.attention(q, c), _reference(q.astype(np.float64), kh, vh, scale=128**-0.5)[0]) <= EXACT
    err_split = _rel(cache.decompress_keys(c), k)
    err_plain = _rel(plain.decompress_keys(cp), k)
    assert err_split < 0.9 * err_plain, (err_split, err_plain)


def _byte_tokenizer(text: str, return_tensors: str = "pt") -> dict[str, Any]:
    """An offline stand-in tokenizer: UTF-8 bytes as token ids."""
    ids = torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def tiny_llama() -> Any:
    """Stands in for ``AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-0.6B")``: a random-init
    Llama built locally (no download), GQA 4 q / 2 kv heads, head_dim 64."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=256,
        max_position_embeddings=512,
        initializer_range=0.1,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_readme_real_model_examples(tiny_llama: Any) -> None:
    from transformers import DynamicCache

    model, tokenizer = tiny_llama, _byte_tokenizer

    # "Real Model Example"
    with torch.no_grad():
        out = model(**tokenizer("The quick brown fox", return_tensors="pt"), use_cache=True)
    kv = out.past_key_values
    k, v = kv.layers[0].keys, kv.layers[0].values  # layer 0 KV cache
    cache = TurboQuantKVCache(head_dim=k.shape[-1], bit_width=3)
    compressed = cache.compress(k.float(), v.float())
    # 19 tokens, all inside the default 128-token window: kept exactly
    assert compressed.split_point == 0 and torch.equal(cache.decompress_keys(compressed), k)

    # "Compress a live model's KV cache"
    inputs = tokenizer("Explain quantum computing in simple terms:", return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    past_kv = out.past_key_values
    head_dim = past_kv.layers[0].keys.shape[-1]
    cache = TurboQuantKVCache(head_dim=head_dim, bit_width=3, residual_length=0)
    mses = []
    for i in range(len(past_kv.layers)):
        k, v = past_kv.layers[i].keys.float(), past_kv.layers[i].values.float()
        compressed = cache.compress(k, v)
        k_hat = cache.decompress_keys(compressed)
        print(f"Layer {i}: MSE={((k - k_hat) ** 2).mean():.6f}")
        mses.append(float(((k - k_hat) ** 2).mean() / (k**2).mean()))
        assert compressed.split_point == k.shape[2] == 42
    assert len(mses) == 3 and max(mses) < 0.05, mses  # 3-bit: a few % of the key energy

    # "Generate text with compressed KV cache"
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    new_cache = DynamicCache()
    for i in range(len(out.past_key_values.layers)):
        k = out.past_key_values.layers[i].keys.float()
        v = out.past_key_values.layers[i].values.float()
        compressed = cache.compress(k, v)
        k_hat = cache.decompress_keys(compressed).to(k.dtype)
        v_hat = cache.decompress_values(compressed).to(v.dtype)
        new_cache.update(k_hat, v_hat, i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = model.generate(**inputs, past_key_values=new_cache, max_new_tokens=12, do_sample=False)
    print(bytes(outputs[0].tolist()).decode("utf-8", errors="replace"))

    assert outputs.shape == (1, 42 + 12)
    assert torch.equal(outputs[:, :42], inputs["input_ids"])
    # the same flow on the uncompressed cache (transformers 5 re-reads the prompt after a prefilled
    # cache in both): the 3-bit cache gives the same greedy tokens (measured on this model)
    with torch.no_grad():
        plain = model(**inputs, use_cache=True).past_key_values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = model.generate(**inputs, past_key_values=plain, max_new_tokens=12, do_sample=False)
    assert torch.equal(outputs, baseline)
    assert new_cache.get_seq_length() == plain.get_seq_length()


# ----------------------------------------------------------------------------- 6. bad input


@dataclass
class Fixture:
    """A compressed torch cache (codes + window) and inputs to feed it."""

    cache: TurboQuantKVCache
    c: CompressedKV
    k: Any
    v: Any
    q: Any

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.cache.decompress_keys(self.c),
            self.cache.decompress_values(self.c),
            self.cache.attention(self.q, self.c),
            self.c.seq_len,
            self.c.split_point,
            self.c.nbytes,
        )


@pytest.fixture
def fx() -> Fixture:
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 2, 30, 64, generator=g)
    v = torch.randn(2, 2, 30, 64, generator=g)
    q = torch.randn(2, 4, 2, 64, generator=g)
    cache = TurboQuantKVCache(64, 3, residual_length=6)
    return Fixture(cache, cache.compress(k, v), k, v, q)


def _with(x: Any, idx: tuple[Any, ...], value: float) -> Any:
    y = x.clone()
    y[idx] = value
    return y


Bad = Callable[[Fixture], Any]
NAN = float("nan")
INF = float("inf")
META = torch.empty(2, 2, 30, 64, device="meta")
OTHER_CACHES = {
    "bits": TurboQuantKVCache(64, 4, residual_length=6),
    "key_bits": TurboQuantKVCache(64, 3, residual_length=6, key_bit_width=4),
    "seed": TurboQuantKVCache(64, 3, residual_length=6, seed=1),
    "outliers": TurboQuantKVCache(64, 3, residual_length=6, n_outlier_channels=8),
    "outlier_bits": TurboQuantKVCache(64, 3, residual_length=6, n_outlier_channels=8, outlier_bits=6),
    "sink": TurboQuantKVCache(64, 3, residual_length=6, n_sink_tokens=0),
    "center": TurboQuantKVCache(64, 3, residual_length=6, center=False),
    "head_dim": TurboQuantKVCache(32, 3, residual_length=6),
}

BAD_CALLS: dict[str, tuple[Bad, type[Exception]]] = {
    # compress
    "compress_rank3": (lambda f: f.cache.compress(f.k[0], f.v[0]), ValueError),
    "compress_rank5": (lambda f: f.cache.compress(f.k[None], f.v[None]), ValueError),
    "compress_head_dim": (lambda f: f.cache.compress(f.k[..., :32], f.v[..., :32]), ValueError),
    "compress_shapes_differ": (lambda f: f.cache.compress(f.k, f.v[:, :, :10]), ValueError),
    "compress_batch_0": (lambda f: f.cache.compress(f.k[:0], f.v[:0]), ValueError),
    "compress_batch_0_window_only": (lambda f: f.cache.compress(f.k[:0, :, :3], f.v[:0, :, :3]), ValueError),
    "compress_heads_0": (lambda f: f.cache.compress(f.k[:, :0], f.v[:, :0]), ValueError),
    "compress_kinds_mixed": (lambda f: f.cache.compress(f.k, f.v.numpy()), TypeError),
    "compress_int": (lambda f: f.cache.compress(f.k.int(), f.v.int()), TypeError),
    "compress_int_numpy_window": (
        lambda f: f.cache.compress(np.ones((2, 2, 3, 64), np.int32), np.ones((2, 2, 3, 64), np.int32)),
        TypeError,
    ),
    "compress_nan_key_codes": (lambda f: f.cache.compress(_with(f.k, (0, 1, 3, 5), NAN), f.v), ValueError),
    "compress_nan_key_sink": (lambda f: f.cache.compress(_with(f.k, (1, 0, 0, 0), NAN), f.v), ValueError),
    "compress_inf_key_window": (lambda f: f.cache.compress(_with(f.k, (0, 0, 29, 1), INF), f.v), ValueError),
    "compress_inf_value": (lambda f: f.cache.compress(f.k, _with(f.v, (1, 1, 10, 63), -INF)), ValueError),
    "compress_nan_value_window": (
        lambda f: f.cache.compress(f.k, _with(f.v, (1, 1, 27, 0), NAN)),
        ValueError,
    ),
    "compress_nan_numpy": (
        lambda f: f.cache.compress(_with(f.k, (0, 0, 2, 2), NAN).numpy(), f.v.numpy()),
        ValueError,
    ),
    "compress_meta": (lambda f: f.cache.compress(META, META), ValueError),
    "compress_meta_window_only": (lambda f: f.cache.compress(META[:, :, :3], META[:, :, :3]), ValueError),
    # attention
    "query_rank3": (lambda f: f.cache.attention(f.q[0], f.c), ValueError),
    "query_head_dim": (lambda f: f.cache.attention(f.q[..., :32], f.c), ValueError),
    "query_heads_not_multiple": (lambda f: f.cache.attention(f.q[:, :3], f.c), ValueError),
    "query_batch": (lambda f: f.cache.attention(f.q[:1], f.c), ValueError),
    "query_nan": (lambda f: f.cache.attention(_with(f.q, (1, 3, 1, 7), NAN), f.c), ValueError),
    "query_inf": (lambda f: f.cache.attention(_with(f.q, (0, 0, 0, 0), INF), f.c), ValueError),
    "query_meta": (lambda f: f.cache.attention(torch.empty(2, 4, 2, 64, device="meta"), f.c), ValueError),
    "query_int": (lambda f: f.cache.attention(f.q.int(), f.c), TypeError),
    "query_len_0": (lambda f: f.cache.attention(f.q[:, :, :0], f.c), ValueError),
    "query_longer_than_cache": (lambda f: f.cache.attention(torch.randn(2, 4, 31, 64), f.c), ValueError),
    "sliding_window_0": (lambda f: f.cache.attention(f.q, f.c, sliding_window=0), ValueError),
    "softcap_0": (lambda f: f.cache.attention(f.q, f.c, softcap=0.0), ValueError),
    "softcap_negative": (lambda f: f.cache.attention(f.q, f.c, softcap=-5.0), ValueError),
    "softcap_nan": (lambda f: f.cache.attention(f.q, f.c, softcap=NAN), ValueError),
    "scale_nan": (lambda f: f.cache.attention(f.q, f.c, scale=NAN), ValueError),
    "scale_0": (lambda f: f.cache.attention(f.q, f.c, scale=0.0), ValueError),
    "key_valid_shape": (lambda f: f.cache.attention(f.q, f.c, key_valid=np.ones((2, 29), bool)), ValueError),
    "key_valid_hole_in_codes": (
        lambda f: f.cache.attention(f.q, f.c, key_valid=_left_padding((0, 0), 30) & (np.arange(30) != 9)),
        ValueError,
    ),
    "not_compressed": (lambda f: f.cache.attention(f.q, (f.k, f.v)), TypeError),
    # append
    "append_batch": (lambda f: f.cache.append(f.c, f.k[:1, :, :2], f.v[:1, :, :2]), ValueError),
    "append_heads": (lambda f: f.cache.append(f.c, f.k[:, :1, :2], f.v[:, :1, :2]), ValueError),
    "append_head_dim": (lambda f: f.cache.append(f.c, f.k[:, :, :2, :32], f.v[:, :, :2, :32]), ValueError),
    "append_rank3": (lambda f: f.cache.append(f.c, f.k[0, :, :2], f.v[0, :, :2]), ValueError),
    "append_nan_staying_in_window": (
        lambda f: f.cache.append(f.c, _with(f.k[:, :, :2], (0, 0, 1, 0), NAN), f.v[:, :, :2]),
        ValueError,
    ),
    "append_nan_entering_codes": (
        lambda f: f.cache.append(f.c, _with(f.k[:, :, :20], (1, 1, 0, 3), NAN), f.v[:, :, :20]),
        ValueError,
    ),
    "append_inf_value": (
        lambda f: f.cache.append(f.c, f.k[:, :, :20], _with(f.v[:, :, :20], (0, 1, 19, 3), INF)),
        ValueError,
    ),
    "append_numpy_to_torch": (
        lambda f: f.cache.append(f.c, f.k[:, :, :2].numpy(), f.v[:, :, :2].numpy()),
        TypeError,
    ),
    "append_meta": (lambda f: f.cache.append(f.c, META[:, :, :2], META[:, :, :2]), ValueError),
    "append_not_compressed": (lambda f: f.cache.append((f.k, f.v), f.k, f.v), TypeError),
}
for _name, _other in OTHER_CACHES.items():
    BAD_CALLS[f"mix_{_name}_attention"] = (lambda f, o=_other: o.attention(f.q, f.c), ValueError)
    BAD_CALLS[f"mix_{_name}_decompress_keys"] = (lambda f, o=_other: o.decompress_keys(f.c), ValueError)
    BAD_CALLS[f"mix_{_name}_decompress_values"] = (lambda f, o=_other: o.decompress_values(f.c), ValueError)
    BAD_CALLS[f"mix_{_name}_append"] = (
        lambda f, o=_other: o.append(f.c, f.k[:, :, :9], f.v[:, :, :9]),
        ValueError,
    )


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_input_raises_and_loses_nothing(fx: Fixture, name: str) -> None:
    call, exc = BAD_CALLS[name]
    before = fx.snapshot()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NaN arithmetic before the check
        with pytest.raises(exc) as info:
            call(fx)
    assert str(info.value)  # a message, not a bare exception
    after = fx.snapshot()
    for a, b in zip(before, after, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
        else:
            assert a == b, name
    # still usable: a good append goes through afterwards
    fx.cache.append(fx.c, fx.k[:, :, :3], fx.v[:, :, :3])
    assert fx.c.seq_len == 33


def test_turboquant_error_is_a_value_error() -> None:
    assert issubclass(TurboQuantError, ValueError)
    with pytest.raises(TurboQuantError):
        TurboQuantKVCache(64, 0)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, True, "3", np.float32(3.0)])
def test_bits_out_of_range(bits: Any) -> None:
    with pytest.raises(ValueError, match="1..8"):
        TurboQuantKVCache(64, bits)
    with pytest.raises(ValueError):
        TurboQuantKVCache(64, 3, key_bit_width=bits)
    with pytest.raises(ValueError):
        TurboQuantKVCache(64, 3, value_bit_width=bits)
    with pytest.raises(ValueError):
        TurboQuantKVCache(64, 3, n_outlier_channels=8, outlier_bits=bits)
    with pytest.raises(ValueError):
        KVLayerStore(64, 2, key_bits=bits)
    with pytest.raises(ValueError):
        KVLayerStore(64, 2, 3, value_bits=bits)


def test_none_bits() -> None:
    """None is the default for the per-side widths, not for the width itself."""
    with pytest.raises(ValueError):
        TurboQuantKVCache(64, None)  # type: ignore[arg-type]
    assert TurboQuantKVCache(64, 3, key_bit_width=None, value_bit_width=None).average_bits == (3.0, 3.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"head_dim": 0},
        {"head_dim": -64},
        {"head_dim": 2.5},
        {"head_dim": 64, "residual_length": -1},
        {"head_dim": 64, "residual_length": 2.5},
        {"head_dim": 64, "n_outlier_channels": 1},
        {"head_dim": 64, "n_outlier_channels": 63},
        {"head_dim": 64, "n_outlier_channels": 2.5},
        {"head_dim": 64, "value_outlier_channels": 64},
        {"head_dim": 64, "n_outlier_channels": 8, "outlier_bits": 9},
        {"head_dim": 64, "n_sink_tokens": -1},
        {"head_dim": 64, "n_sink_tokens": 1.5},
        {"head_dim": 64, "seed": -1},
        {"head_dim": 64, "outlier_method": "kmeans"},
    ],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        TurboQuantKVCache(**kwargs)


def test_pre_rope_is_refused() -> None:
    with pytest.raises(NotImplementedError):
        TurboQuantKVCache(64, 3, pre_rope=True)


def test_empty_sequences() -> None:
    """S = 0 is an empty cache (a stream may start empty and grow by append); attending to it,
    or attending with no queries, is a ValueError; appending zero tokens changes nothing."""
    rng = np.random.default_rng(31)
    k, v = _kv_data(rng, 2, 2, 12, 64)
    q = rng.standard_normal((2, 4, 1, 64)).astype(np.float32)
    cache = TurboQuantKVCache(64, 3, residual_length=4)
    empty = cache.compress(k[:, :, :0], v[:, :, :0])
    assert (empty.seq_len, empty.split_point, cache.decompress_keys(empty).shape) == (0, 0, (2, 2, 0, 64))
    with pytest.raises(ValueError, match="queries"):
        cache.attention(q, empty)
    with pytest.raises(ValueError):
        packed_attention(q, None)
    cache.append(empty, k[:, :, :0], v[:, :, :0])
    assert empty.seq_len == 0
    cache.append(empty, k, v)
    assert (empty.seq_len, empty.split_point) == (12, 8)
    before = cache.attention(q, empty)
    cache.append(empty, k[:, :, :0], v[:, :, :0])
    np.testing.assert_array_equal(cache.attention(q, empty), before)
    # the store: zero tokens are a no-op; attending to nothing is the empty softmax (zeros, -inf)
    store = KVLayerStore(64, 2, 3, sink_tokens=1)
    store.append(k[:, :, :0], v[:, :, :0])
    assert store.seq_len == 0 and store.nbytes == 0
    out, lse = store.attend(q, np.zeros((2, 1)), np.ones((2, 1)), scaling=0.1)
    assert np.all(out == 0) and np.all(np.isneginf(lse))


@pytest.mark.parametrize("sink", [0, 1, 3])
def test_store_ranges_are_clamped_to_the_stored_tokens(sink: int) -> None:
    """Regression: with sink tokens a range starting before 0 (a sliding window wider than the
    context) raised, while the codes' attend clamps; both clamp now."""
    rng = np.random.default_rng(33)
    k, v = _kv_data(rng, 1, 2, 20, 64)
    store = KVLayerStore(64, 2, 3, sink_tokens=sink)
    store.append(k, v)
    q = rng.standard_normal((1, 2, 2, 64)).astype(np.float32)
    wide = store.attend(q, np.array([[-50, -1]]), np.array([[20, 99]]), scaling=0.1)
    exact = store.attend(q, np.array([[0, 0]]), np.array([[20, 20]]), scaling=0.1)
    np.testing.assert_array_equal(wide[0], exact[0])
    np.testing.assert_array_equal(wide[1], exact[1])


def test_store_with_only_sink_tokens_refuses_another_batch() -> None:
    """Regression: a store holding only sink tokens (no codes yet) took a chunk of another batch
    size, and decompress() then failed."""
    rng = np.random.default_rng(32)
    k, v = _kv_data(rng, 2, 2, 5, 64)
    store = KVLayerStore(64, 2, 3, sink_tokens=1)
    store.append(k[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match="batch"):
        store.append(k[:1, :, 1:], v[:1, :, 1:])
    assert store.seq_len == 1 and store.batch_size == 2
    store.append(k[:, :, 1:], v[:, :, 1:])
    np.testing.assert_array_equal(store.decompress()[0][:, :, 0], k[:, :, 0])
