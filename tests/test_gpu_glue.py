"""The GPU store's and GPU attention's bookkeeping, on the CPU.

``cuda.kv_store`` turns a layer's state (exact sink tokens, codes, the residual window, this
step's tokens, padding, a sliding window, > 16 queries) into decode-attention calls whose
positions, starts and segment lengths must add up to the logical sequence. Here the device
kernels are replaced by a lossless stand-in with the kernels' documented semantics (stored
rows kept exactly; ``decode_attention`` = exact attention over stored ++ segment, queries last,
``window``, ``starts``, ``softcap``, log-sum-exp), so every difference from a dense reference
over the logical sequence is a bookkeeping error. The kernels themselves are held to the Rust
core by ``test_gpu.py`` on a GPU.
"""

from __future__ import annotations

import math
import types

import pytest

torch = pytest.importorskip("torch")

from turboquant_rs.cuda import kv_store, ops  # noqa: E402


class _FakePackedKV:
    """``ops.PackedKV``'s attributes, rows kept exactly (``*_codes`` hold the centred rows)."""

    def __init__(self, batch, kv_heads, capacity, head_dim, key_bits=4, value_bits=4, seed=0,
                 key_mean=None, value_mean=None):  # fmt: skip
        self.batch, self.kv_heads, self.capacity, self.head_dim = batch, kv_heads, capacity, head_dim
        self.key_bits, self.value_bits, self.seed = key_bits, value_bits, seed
        shape = (batch, kv_heads, capacity)
        self.key_codes = torch.zeros((*shape, head_dim), dtype=torch.float64)
        self.value_codes = torch.zeros((*shape, head_dim), dtype=torch.float64)
        self.key_scales = torch.zeros(shape)
        self.value_scales = torch.zeros(shape)
        self.lengths = torch.zeros(batch, dtype=torch.int32)
        self.max_length = 0
        self.key_mean, self.value_mean = key_mean, value_mean

    @property
    def nbytes(self) -> int:
        return 0

    def append(self, keys, values) -> None:
        t, pos = keys.shape[2], self.max_length
        assert pos + t <= self.capacity
        km = 0 if self.key_mean is None else self.key_mean[:, :, None]
        vm = 0 if self.value_mean is None else self.value_mean[:, :, None]
        self.key_codes[:, :, pos : pos + t] = keys.double() - km
        self.value_codes[:, :, pos : pos + t] = values.double() - vm
        self.lengths += t
        self.max_length = pos + t


def _fake_dequantize(codes, scales, dim, bits, seed=0, dtype="float32", mean=None):
    x = codes.clone()
    if mean is not None:
        b, h = x.shape[:2]
        x = x + mean.reshape(b, h, 1, dim)
    return x.float()


def _fake_decode_attention(query, kv, *, extra_keys=None, extra_values=None, extra_lengths=None,
                           lengths=None, starts=None, scaling=None, softcap=0.0, window=0,
                           return_lse=False, splits=None, impl="auto"):  # fmt: skip
    b, hq, lq, d = query.shape
    assert lq <= 16, "the kernel takes at most 16 queries"
    cl = kv.max_length
    km = 0 if kv.key_mean is None else kv.key_mean[:, :, None].double()
    vm = 0 if kv.value_mean is None else kv.value_mean[:, :, None].double()
    keys = kv.key_codes[:, :, :cl] + km
    vals = kv.value_codes[:, :, :cl] + vm
    outs, lses = [], []
    for i in range(b):
        el = 0 if extra_keys is None else int(extra_lengths[i])
        k = keys[i]
        v = vals[i]
        if el:
            assert extra_keys.dtype == query.dtype, "the segment must have the query's dtype"
            k = torch.cat([k, extra_keys[i, :, :el].double()], dim=1)
            v = torch.cat([v, extra_values[i, :, :el].double()], dim=1)
        total = cl + el
        t = torch.arange(total)[None, :]
        qp = torch.arange(total - lq, total)[:, None]
        ok = t <= qp
        if window > 0:
            ok &= t > qp - window
        if starts is not None:
            ok &= t >= int(starts[i])
        g = hq // k.shape[0]
        kk = k.repeat_interleave(g, dim=0)
        vv = v.repeat_interleave(g, dim=0)
        z = torch.matmul(query[i].double(), kk.transpose(-1, -2)) * scaling
        if softcap > 0:
            z = softcap * torch.tanh(z / softcap)
        z = z.masked_fill(~ok[None], float("-inf"))
        lse = torch.logsumexp(z, dim=-1)
        p = torch.exp(z - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
        outs.append(torch.matmul(p, vv))
        lses.append(lse)
    out = torch.stack(outs).to(query.dtype)
    return (out, torch.stack(lses).float()) if return_lse else out


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(kv_store, "_DEVICE_TYPE", "cpu")
    monkeypatch.setattr(ops, "PackedKV", _FakePackedKV)
    monkeypatch.setattr(ops, "dequantize", _fake_dequantize)
    monkeypatch.setattr(ops, "decode_attention", _fake_decode_attention)
    fake_rt = types.SimpleNamespace(to_torch=lambda a, bf16=False: a, cupy=lambda: torch)
    monkeypatch.setattr(ops, "rt", fake_rt)


def _reference(q, k, v, valid, window, softcap, scaling):
    """Dense attention over the logical sequence (B, Hkv, N, D), queries last and causal."""
    b, hq, lq, d = q.shape
    n = k.shape[2]
    g = hq // k.shape[1]
    kk = k.double().repeat_interleave(g, dim=1)
    vv = v.double().repeat_interleave(g, dim=1)
    z = torch.matmul(q.double(), kk.transpose(-1, -2)) * scaling
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    t = torch.arange(n)[None, :]
    qp = torch.arange(n - lq, n)[:, None]
    ok = (t <= qp)[None, None]
    if window:
        ok = ok & (t > qp - window)[None, None]
    if valid is not None:
        ok = ok & valid[:, None, None, :]
    z = z.masked_fill(~ok, float("-inf"))
    p = torch.softmax(z, dim=-1).nan_to_num(0.0)
    return torch.matmul(p, vv)


@pytest.mark.parametrize("sink", [0, 1, 3])
@pytest.mark.parametrize("q_len", [1, 5, 40])
@pytest.mark.parametrize("window", [None, 24])
@pytest.mark.parametrize("pad", [False, True])
def test_gpu_attention_bookkeeping_equals_dense(fake_gpu, sink, q_len, window, pad) -> None:
    g = torch.Generator().manual_seed(sink * 100 + q_len + (window or 0) + pad)
    b, hkv, hq, d = 2, 2, 6, 16
    n_store, n_extra = 70, 45
    total = n_store + n_extra
    k = torch.randn((b, hkv, total, d), generator=g)
    v = torch.randn((b, hkv, total, d), generator=g)
    q = torch.randn((b, hq, q_len, d), generator=g)
    store = kv_store.GpuKVLayerStore(d, hkv, 4, sink_tokens=sink)
    store.append(k[:, :, :30], v[:, :, :30])  # two appends: the centre comes from the first
    store.append(k[:, :, 30:n_store], v[:, :, 30:n_store])
    assert store.seq_len == n_store and store.code_len == n_store - sink
    valid = None
    if pad:
        valid = torch.ones((b, total), dtype=torch.bool)
        valid[1, :11] = False  # row 1 left-padded past the sink tokens
    softcap = 7.5 if q_len == 5 else None
    scaling = 1.0 / math.sqrt(d)
    got = kv_store.gpu_packed_attention(
        q, store, k[:, :, n_store:], v[:, :, n_store:], scaling=scaling, softcap=softcap,
        sliding_window=window, key_valid=valid,
    )  # fmt: skip
    ref = _reference(q, k, v, valid, window, softcap, scaling)
    assert got.dtype == q.dtype and got.shape == q.shape
    assert torch.allclose(got.double(), ref, atol=2e-5), (got.double() - ref).abs().max()


def test_gpu_attention_without_codes_is_exact(fake_gpu) -> None:
    g = torch.Generator().manual_seed(3)
    b, hkv, hq, d, n = 2, 1, 4, 8, 20
    k, v = torch.randn((b, hkv, n, d), generator=g), torch.randn((b, hkv, n, d), generator=g)
    q = torch.randn((b, hq, 7, d), generator=g)
    store = kv_store.GpuKVLayerStore(d, hkv, 4, sink_tokens=2)
    store.append(k[:, :, :2], v[:, :, :2])  # only sink tokens, no codes
    assert store.code_len == 0 and store.seq_len == 2
    valid = torch.ones((b, n), dtype=torch.bool)
    valid[0, :5] = False
    got = kv_store.gpu_packed_attention(q, store, k[:, :, 2:], v[:, :, 2:], scaling=0.3, key_valid=valid)
    ref = _reference(q, k, v, valid, None, None, 0.3)
    assert torch.allclose(got.double(), ref, atol=2e-5)


def test_gpu_store_edits_keep_the_logical_sequence(fake_gpu) -> None:
    g = torch.Generator().manual_seed(5)
    b, h, d = 3, 2, 8
    k, v = torch.randn((b, h, 600, d), generator=g), torch.randn((b, h, 600, d), generator=g)
    store = kv_store.GpuKVLayerStore(d, h, 3, sink_tokens=1)
    for a in range(0, 600, 100):  # capacity 256 at first: grows twice
        store.append(k[:, :, a : a + 100], v[:, :, a : a + 100])
    dk, dv = store.decompress()
    assert torch.allclose(dk, k, atol=1e-5) and torch.allclose(dv, v, atol=1e-5)
    copy = store.copy()
    store.select([2, 0])
    sk, _ = store.decompress()
    assert torch.allclose(sk, k[[2, 0]], atol=1e-5)
    store.repeat_interleave(2)
    assert store.batch_size == 4 and torch.allclose(store.decompress()[0], k[[2, 2, 0, 0]], atol=1e-5)
    copy.truncate(150)
    ck, _ = copy.decompress()
    assert ck.shape[2] == 150 and torch.allclose(ck, k[:, :, :150], atol=1e-5)
    with pytest.raises(Exception, match="batch indices"):
        copy.select([3])
    with pytest.raises(Exception, match="finite"):
        copy.append(torch.full((b, h, 1, d), float("nan")), torch.zeros((b, h, 1, d)))
    assert copy.seq_len == 150
