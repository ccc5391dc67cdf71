"""The packed KV store and its attention on the GPU, for CUDA torch tensors.

:class:`GpuKVLayerStore` has :class:`turboquant_rs.kv_cache.KVLayerStore`'s interface and
semantics (``B × H_kv`` token streams, each centred on the mean of its first chunk, the first
``sink_tokens`` kept exact) with its codes in a :class:`~turboquant_rs.cuda.ops.PackedKV` on the
device: the bytes of the CPU store for the same input and seed (``kv/mod.rs``), except for a
coordinate within float rounding of a codebook boundary. The first chunk gets 256 spare rows;
later the capacity grows by a quarter (at least 256 rows), so a decode step's append is one
fused quantize kernel per side into preallocated rows, and spare rows stay a small fraction.

:func:`gpu_packed_attention` is :func:`turboquant_rs.kv_cache.packed_attention` for such a store:
the stored tokens are read from the codes by :func:`~turboquant_rs.cuda.ops.decode_attention`
(split over the sequence, GQA-aware), the residual window and this step's tokens join the same
softmax in the kernel, and queries beyond 16 go in chunks of 16.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._native import TurboQuantError
from . import ops

#: queries per decode-attention call (the kernel's limit)
_Q_CHUNK = 16
#: the device type the store and its attention take (tests of the glue logic swap it)
_DEVICE_TYPE = "cuda"


_SPARE = 256


def _grown(capacity: int) -> int:
    """The next capacity after ``capacity`` rows: a quarter more, at least ``_SPARE`` more."""
    return int(capacity) + max(_SPARE, int(capacity) // 4)


def _torch() -> Any:
    import torch

    return torch


def _check_bits(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        raise TurboQuantError(f"{name} must be an integer in 1..8, got {value!r}")
    return int(value)


def _cuda_4d(x: Any, name: str) -> Any:
    torch = _torch()
    if not isinstance(x, torch.Tensor) or x.device.type != _DEVICE_TYPE:
        raise TurboQuantError(f"{name} must be a CUDA torch tensor for the GPU store")
    if x.ndim != 4:
        raise TurboQuantError(f"{name} must be (batch, heads, tokens, head_dim), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TurboQuantError(f"{name} must be float32, float16 or bfloat16, got {x.dtype}")
    return x.detach().contiguous()


class GpuKVLayerStore:
    """One attention layer's packed K/V on the GPU (``KVLayerStore``'s interface).

    Args:
        head_dim: channels per head (a multiple of 8).
        num_kv_heads: KV heads per batch row.
        key_bits, value_bits: bits per coordinate (1..8; ``value_bits`` defaults to ``key_bits``).
        key_outliers, value_outliers, outlier_bits: the outlier split; only 0 is supported on
            the GPU (a clear error otherwise).
        center: subtract each stream's mean of its first chunk before quantizing.
        seed: seed of the rotations.
        sink_tokens: first tokens of every stream kept exact (in the input dtype) and never
            quantized.
    """

    def __init__(
        self,
        head_dim: int,
        num_kv_heads: int,
        key_bits: int = 4,
        value_bits: int | None = None,
        *,
        key_outliers: int = 0,
        value_outliers: int = 0,
        outlier_bits: int | None = None,
        center: bool = True,
        seed: int = 0,
        sink_tokens: int = 0,
    ):
        for name, v in (("head_dim", head_dim), ("num_kv_heads", num_kv_heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TurboQuantError(f"{name} must be a positive integer, got {v!r}")
        if head_dim % 8:
            raise TurboQuantError(f"the GPU store needs head_dim % 8 == 0, got {head_dim}")
        if key_outliers or value_outliers:
            raise TurboQuantError(
                "the GPU store has no outlier split: use n_outlier_channels=0 on CUDA "
                "(or keep the model on the CPU)"
            )
        del outlier_bits  # no outlier channels: the width of none
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise TurboQuantError(f"sink_tokens must be a non-negative integer, got {sink_tokens!r}")
        self.head_dim = int(head_dim)
        self.num_kv_heads = int(num_kv_heads)
        self._kb = _check_bits(key_bits, "key_bits")
        self._vb = self._kb if value_bits is None else _check_bits(value_bits, "value_bits")
        self.center = bool(center)
        self.seed = int(seed)
        self.sink_tokens = int(sink_tokens)
        self._kv: ops.PackedKV | None = None
        self._sink_k: Any = None
        self._sink_v: Any = None

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def _sink_len(self) -> int:
        return 0 if self._sink_k is None else int(self._sink_k.shape[2])

    @property
    def code_len(self) -> int:
        """Tokens per stream held as codes."""
        return 0 if self._kv is None else int(self._kv.max_length)

    @property
    def seq_len(self) -> int:
        """Tokens stored per stream (exact sink tokens and quantized ones)."""
        return self._sink_len + self.code_len

    @property
    def batch_size(self) -> int:
        """Batch rows (0 before the first append)."""
        if self._sink_k is not None:
            return int(self._sink_k.shape[0])
        return 0 if self._kv is None else int(self._kv.batch)

    @property
    def nbytes(self) -> int:
        """Bytes of the device buffers that exist (codes and scales at their capacity, lengths,
        centres, sink tokens)."""
        n = 0 if self._kv is None else self._kv.nbytes
        if self._sink_k is not None:
            n += self._sink_k.numel() * self._sink_k.element_size() * 2
        return int(n)

    @property
    def key_bits(self) -> float:
        """Stored bits per key coordinate."""
        return float(self._kb)

    @property
    def value_bits(self) -> float:
        """Stored bits per value coordinate."""
        return float(self._vb)

    def settings(self) -> tuple[Any, ...]:
        """Everything that defines the stored bytes."""
        return (
            self.head_dim, self.num_kv_heads, self._kb, self._vb, self.center, self.seed,
            self.sink_tokens,
        )  # fmt: skip

    @property
    def packed(self) -> ops.PackedKV | None:
        """The codes' device buffers (None before the first quantized token)."""
        return self._kv

    @property
    def sink(self) -> tuple[Any, Any] | None:
        """The exact sink tokens (keys, values) (B, H, s, D), or None."""
        return None if self._sink_k is None else (self._sink_k, self._sink_v)

    # -- writing ----------------------------------------------------------------------------------
    def append(self, keys: Any, values: Any) -> None:
        """Quantizes and appends (B, H_kv, T, D) CUDA keys and values; nothing stored is
        re-quantized. Bad input raises ``TurboQuantError`` and leaves the store unchanged."""
        torch = _torch()
        k = _cuda_4d(keys, "keys")
        v = _cuda_4d(values, "values")
        b = self.batch_size or int(k.shape[0])
        want = (b, self.num_kv_heads, self.head_dim)
        if k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != want:
            raise TurboQuantError(
                f"keys {tuple(k.shape)} and values {tuple(v.shape)} must both be "
                f"(batch={want[0]}, {want[1]}, tokens, {want[2]})"
            )
        t = int(k.shape[2])
        if t == 0:
            return
        if not bool(torch.isfinite(k).all() & torch.isfinite(v).all()):
            raise TurboQuantError("keys and values must be finite (NaN or Inf found)")
        take = min(max(self.sink_tokens - self._sink_len, 0), t)
        if take:
            sk, sv = k[:, :, :take], v[:, :, :take]
            if self._sink_k is None:
                self._sink_k, self._sink_v = sk.clone(), sv.clone()
            else:
                self._sink_k = torch.cat([self._sink_k, sk], dim=2)
                self._sink_v = torch.cat([self._sink_v, sv], dim=2)
        if t > take:
            self._append_codes(k[:, :, take:].contiguous(), v[:, :, take:].contiguous())

    def _append_codes(self, k: Any, v: Any) -> None:
        t = int(k.shape[2])
        if self._kv is None:
            km = vm = None
            if self.center:  # the Rust store's centre: the f64 mean of the first chunk, as f32
                km = k.double().mean(dim=2).float()
                vm = v.double().mean(dim=2).float()
            self._kv = ops.PackedKV(
                int(k.shape[0]), self.num_kv_heads, t + _SPARE, self.head_dim, self._kb, self._vb,
                self.seed, km, vm,
            )  # fmt: skip
        elif self._kv.max_length + t > self._kv.capacity:
            self._grow(self._kv.max_length + t)
        self._kv.append(k, v)

    def _grow(self, need: int) -> None:
        """Moves the codes into larger buffers (geometric growth: amortised O(1) appends)."""
        old = self._kv
        assert old is not None
        new = ops.PackedKV(
            old.batch, old.kv_heads, max(need + _SPARE, _grown(old.capacity)), old.head_dim, old.key_bits,
            old.value_bits, old.seed, old.key_mean, old.value_mean,
        )  # fmt: skip
        self._copy_rows(old, new, old.max_length)
        self._kv = new

    @staticmethod
    def _copy_rows(src: ops.PackedKV, dst: ops.PackedKV, n: int, rows: Any = None) -> None:
        """Tokens ``0..n`` of every stream (of batch rows ``rows``, default all) from src to dst."""
        for name in ("key_codes", "key_scales", "value_codes", "value_scales"):
            a = getattr(src, name)
            if rows is not None:
                a = a[rows]
            getattr(dst, name)[:, :, :n] = a[:, :, :n]
        dst.lengths[:] = n
        dst.max_length = n

    def _rebuilt(self, batch: int, n: int, rows: Any = None) -> ops.PackedKV:
        """A new PackedKV with ``batch`` rows holding tokens ``0..n`` of ``rows``."""
        old = self._kv
        assert old is not None
        km = old.key_mean if rows is None or old.key_mean is None else old.key_mean[rows]
        vm = old.value_mean if rows is None or old.value_mean is None else old.value_mean[rows]
        new = ops.PackedKV(
            batch, old.kv_heads, max(n, 256), old.head_dim, old.key_bits, old.value_bits,
            old.seed, km, vm,
        )  # fmt: skip
        self._copy_rows(old, new, n, rows)
        return new

    # -- reading ----------------------------------------------------------------------------------
    def decompress(self) -> tuple[Any, Any]:
        """Every stored key and value reconstructed, float32 (B, H, S, D) (sink tokens exact)."""
        torch = _torch()
        parts_k, parts_v = [], []
        if self._sink_k is not None:
            parts_k.append(self._sink_k.float())
            parts_v.append(self._sink_v.float())
        kv = self._kv
        if kv is not None and kv.max_length:
            n = kv.max_length
            d = self.head_dim
            for codes, scales, bits, mean, out in (
                (kv.key_codes, kv.key_scales, kv.key_bits, kv.key_mean, parts_k),
                (kv.value_codes, kv.value_scales, kv.value_bits, kv.value_mean, parts_v),
            ):
                x = ops.dequantize(
                    codes[:, :, :n], scales[:, :, :n], d, bits, kv.seed, "float32",
                    mean=None if mean is None else mean.reshape(-1, d),
                )  # fmt: skip
                out.append(ops.rt.to_torch(x))
        if not parts_k:
            z = torch.zeros((0, self.num_kv_heads, 0, self.head_dim), dtype=torch.float32)
            return z, z.clone()
        return torch.cat(parts_k, dim=2), torch.cat(parts_v, dim=2)

    # -- editing ----------------------------------------------------------------------------------
    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` tokens of every stream."""
        n = int(n)
        if n < 0:
            raise TurboQuantError(f"cannot truncate to {n} tokens")
        s = self._sink_len
        if n < s:
            self._sink_k = self._sink_k[:, :, :n].contiguous()
            self._sink_v = self._sink_v[:, :, :n].contiguous()
        if self._kv is not None:
            keep = min(max(n - s, 0), self._kv.max_length)
            self._kv.lengths[:] = keep
            self._kv.max_length = keep

    def select(self, indices: Any) -> None:
        """Keeps batch rows by index, in that order (may repeat): beam reordering and selection."""
        torch = _torch()
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        b = self.batch_size
        if b and (bool((idx < 0).any()) or bool((idx >= b).any())):
            raise TurboQuantError(f"batch indices must lie in 0..{b - 1}, got {idx.tolist()}")
        if self._sink_k is not None:
            dev_idx = idx.to(self._sink_k.device)
            self._sink_k, self._sink_v = self._sink_k[dev_idx], self._sink_v[dev_idx]
        if self._kv is not None:
            cp = ops.rt.cupy()
            rows = cp.asarray(idx.cpu().numpy())
            self._kv = self._rebuilt(int(idx.numel()), self._kv.max_length, rows)

    def repeat_interleave(self, repeats: int) -> None:
        """Repeats every batch row ``repeats`` times in place."""
        torch = _torch()
        r = int(repeats)
        if r < 1:
            raise TurboQuantError(f"repeats must be positive, got {repeats}")
        b = self.batch_size
        if b:
            self.select(torch.arange(b).repeat_interleave(r))

    def reset(self) -> None:
        """Drops everything stored."""
        self._kv = None
        self._sink_k = self._sink_v = None

    def copy(self) -> GpuKVLayerStore:
        """An independent copy (device buffers copied)."""
        new = object.__new__(GpuKVLayerStore)
        new.__dict__.update(self.__dict__)
        new._kv = None if self._kv is None else self._rebuilt(self._kv.batch, self._kv.max_length)
        new._sink_k = None if self._sink_k is None else self._sink_k.clone()
        new._sink_v = None if self._sink_v is None else self._sink_v.clone()
        return new


def _exact_sdpa(q: Any, k: Any, v: Any, allowed: Any, scale: float, softcap: float | None) -> tuple[Any, Any]:
    """Exact attention of q (B, Hq, Q, D) over k/v (B, Hkv, E, D) where ``allowed`` (B, Q, E):
    float32 output normalised over the allowed keys (0 where none) and its log-sum-exp."""
    torch = _torch()
    b, hq, ql, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qg = q.float().reshape(b, hkv, g * ql, d)
    z = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # (B, Hkv, G·Q, E)
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    mask = allowed[:, None].expand(b, g, ql, -1).reshape(b, 1, g * ql, -1)
    z = z.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(z, dim=-1)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    p = torch.exp(z - safe[..., None])
    out = torch.matmul(p, v.float())
    return out.reshape(b, hq, ql, d), lse.reshape(b, hq, ql)


def _exact_out(q: Any, k: Any, v: Any, allowed: Any, scale: float, softcap: float | None) -> Any:
    """``_exact_sdpa``'s output in the query's dtype; through torch's SDPA (no (Q, E) score
    matrix in memory: long prompts) when there is no soft-capping."""
    torch = _torch()
    if softcap is not None:
        return _exact_sdpa(q, k, v, allowed, scale, softcap)[0].to(q.dtype)
    b = q.shape[0]
    mask = allowed.expand(b, -1, -1)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    # a query with no allowed key (a padding row) comes out NaN: 0, as the codes' path gives
    return torch.where(mask.any(dim=-1, keepdim=True).expand_as(out), out, torch.zeros_like(out))


def _merge(out_a: Any, lse_a: Any, out_b: Any, lse_b: Any) -> tuple[Any, Any]:
    """One softmax from two normalised float32 parts and their log-sum-exps."""
    torch = _torch()
    top = torch.maximum(lse_a, lse_b)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    wa = torch.exp(lse_a - top)
    wb = torch.exp(lse_b - top)
    den = wa + wb
    safe = torch.where(den > 0, den, torch.ones_like(den))
    out = (wa[..., None] * out_a + wb[..., None] * out_b) / safe[..., None]
    lse = torch.where(den > 0, top + torch.log(safe), torch.full_like(top, float("-inf")))
    return out, lse


def gpu_packed_attention(
    query: Any,
    store: GpuKVLayerStore | None,
    extra_keys: Any = None,
    extra_values: Any = None,
    *,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    key_valid: Any = None,
    impl: str = "auto",
) -> Any:
    """``packed_attention`` on the GPU: softmax attention of ``query`` (B, Hq, Q, D) over
    [stored tokens ++ ``extra_keys/values`` (B, H_kv, E, D)], the queries being the last Q
    positions (causal). Stored tokens are read from the codes; ``sliding_window`` W: a query at
    position p sees keys at positions > p − W; ``key_valid`` (B, N+E) bool: False for padding
    keys (left padding: one run per sequence that ends at the last key); ``softcap`` on the
    scaled logits. Returns (B, Hq, Q, D) in the query's dtype (zeros where no key is allowed)."""
    torch = _torch()
    if not isinstance(query, torch.Tensor) or query.device.type != _DEVICE_TYPE or query.ndim != 4:
        raise TurboQuantError("query must be a (batch, heads, q_len, head_dim) CUDA torch tensor")
    b, hq, ql, d = (int(v) for v in query.shape)
    dev = query.device
    n_sink = 0 if store is None or store.sink is None else int(store.sink[0].shape[2])
    n_code = 0 if store is None else store.code_len
    if extra_keys is None:
        extra_keys = query.new_empty((b, store.num_kv_heads if store else 1, 0, d))
        extra_values = extra_keys
    from ..kv_cache import check_attention_layout, contiguous_runs

    total, scale = check_attention_layout(
        tuple(query.shape), tuple(extra_keys.shape), tuple(extra_values.shape), n_sink + n_code,
        scaling, softcap, sliding_window,
    )  # fmt: skip
    hkv = int(extra_keys.shape[1])
    if store is not None and store.seq_len and (store.batch_size != b or store.num_kv_heads != hkv):
        raise TurboQuantError(
            f"query batch {b} / extra KV heads {hkv} do not match the store's "
            f"{store.batch_size} / {store.num_kv_heads}"
        )
    if not bool(torch.isfinite(query).all()):
        raise TurboQuantError("query must be finite (NaN or Inf found)")
    win = 0 if sliding_window is None else int(sliding_window)
    start = None
    if key_valid is not None:
        valid = torch.as_tensor(key_valid, device=dev).bool().reshape(b, -1)
        if valid.shape[1] != total:
            raise TurboQuantError(f"key_valid must have shape ({b}, {total}), got {tuple(valid.shape)}")
        st, end = contiguous_runs(valid)
        some = end > st  # rows with at least one valid key
        if ((end != total) & some).any():
            raise TurboQuantError(
                "the GPU attention needs left padding (each sequence's valid keys end at the queries)"
            )
        start = torch.as_tensor(np.where(some, st, total), device=dev)
    sink = None if store is None else store.sink
    qpos = torch.arange(total - ql, total, device=dev)  # logical query positions
    if n_code == 0:
        # nothing quantized: exact attention over sink tokens ++ extras (their logical order)
        keys, vals = extra_keys, extra_values
        if sink is not None:
            keys = torch.cat([sink[0].to(keys.dtype), keys], dim=2)
            vals = torch.cat([sink[1].to(vals.dtype), vals], dim=2)
        allowed = _allowed(qpos, torch.arange(total, device=dev), win, start)
        return _exact_out(query, keys, vals, allowed, scale, softcap)
    assert store is not None and store.packed is not None
    kv = store.packed
    # the codes and the extras in one kernel call; positions there are logical − n_sink
    whole = win == 0 or total <= win
    fast = sink is None or (whole and start is None)
    if fast and sink is not None:  # sink tokens lead the extra segment: no positional mask binds them
        seg_k = torch.cat([sink[0].to(query.dtype), extra_keys.to(query.dtype)], dim=2)
        seg_v = torch.cat([sink[1].to(query.dtype), extra_values.to(query.dtype)], dim=2)
        shift = 0
    else:
        seg_k, seg_v = extra_keys.to(query.dtype), extra_values.to(query.dtype)
        shift = n_sink
    seg_k, seg_v = seg_k.contiguous(), seg_v.contiguous()
    seg = int(seg_k.shape[2])
    kstart = None if start is None else (start - shift).to(torch.int32)
    qdt = query if fast else query.float()
    if not fast:
        seg_k, seg_v = seg_k.float(), seg_v.float()
    outs, lses = [], []
    for a in range(0, ql, _Q_CHUNK):
        z = min(a + _Q_CHUNK, ql)
        elen = torch.full((b,), seg - (ql - z), dtype=torch.int32, device=dev)
        o, lse = ops.decode_attention(
            qdt[:, :, a:z].contiguous(), kv, extra_keys=seg_k if seg else None,
            extra_values=seg_v if seg else None, extra_lengths=elen if seg else None,
            starts=kstart, scaling=scale, softcap=0.0 if softcap is None else float(softcap),
            window=win, return_lse=True, impl=impl,
        )  # fmt: skip
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    if fast:
        return out.to(query.dtype)
    lse = torch.cat(lses, dim=2) if len(lses) > 1 else lses[0]
    assert sink is not None
    allowed = _allowed(qpos, torch.arange(n_sink, device=dev), win, start)
    so, sl = _exact_sdpa(query, sink[0], sink[1], allowed, scale, softcap)
    merged, _ = _merge(out.float(), lse, so, sl)
    return merged.to(query.dtype)


def _allowed(qpos: Any, kpos: Any, window: int, start: Any) -> Any:
    """(B or 1, Q, K) bool: causal, within the sliding window, at or after each row's start."""
    ok = kpos[None, :] <= qpos[:, None]
    if window > 0:
        ok = ok & (kpos[None, :] > qpos[:, None] - window)
    ok = ok[None]
    if start is not None:
        ok = ok & (kpos[None, None, :] >= start[:, None, None])
    return ok
