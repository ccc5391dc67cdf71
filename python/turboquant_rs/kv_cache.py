"""Packed KV cache with attention computed from the codes (seed API: TurboQuantKVCache).

The layout is the Rust core's (``turboquant::kv``, documented there once): per batch row and KV
head a stream of tokens, each key and value centred on the stream's mean of its first chunk,
optionally split into regular and outlier channels, and quantized by the core quantizer into a
packed code row and one float32 scale. Attention never builds a dequantized copy: the query is
rotated once per head and scored against the codes; values are summed in the rotated domain and
rotated back once per output. A full-precision window of recent tokens joins the same softmax
exactly (the stored part returns its log-sum-exp and the two are merged).

numpy arrays and CPU torch tensors are accepted (float16, bfloat16, float32, float64); results
come back as the query's kind and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _native
from ._convert import as_int, is_cuda, is_torch, kind_of, to_kind
from ._native import TurboQuantError

#: Bytes per coordinate of the fp16 baseline that memory ratios are measured against.
FP16_BYTES = 2


def _float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy array of rank ``ndim`` (a view when possible)."""
    if is_torch(x):
        if x.device.type != "cpu":
            raise TurboQuantError(f"{name} is on {x.device}; the CPU engine takes CPU tensors")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        x = x.detach()
        if str(x.dtype) != "torch.float32":
            x = x.float()
        arr = x.contiguous().numpy()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind != "f":
            raise TypeError(f"{name} must be a float array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise TurboQuantError(f"{name} must have {ndim} dimensions, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _exact_dtype(x: Any) -> Any:
    """The numpy dtype that holds ``x``'s values exactly, as few bytes as its own dtype:
    float16, bfloat16 as its raw 16 bits (uint16), float32 otherwise."""
    name = str(x.dtype)
    if name in ("torch.float16", "float16"):
        return np.float16
    if name == "torch.bfloat16":
        return np.uint16
    return np.float32


def _pack_exact(x: np.ndarray, dtype: Any) -> np.ndarray:
    """float32 values ``x`` (exactly representable in ``dtype``) stored as ``dtype``."""
    if dtype is np.uint16:
        return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return np.array(x, dtype=dtype)


def _unpack_exact(x: np.ndarray) -> np.ndarray:
    """The float32 values of an array stored by :func:`_pack_exact`."""
    if x.dtype == np.uint16:
        return (x.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _gpu_store(head_dim: int, num_heads: int, **kwargs: Any) -> Any:
    """A ``cuda.kv_store.GpuKVLayerStore``; a clear error naming the extra without cupy."""
    from .cuda import _runtime

    _runtime.require_device()
    from .cuda.kv_store import GpuKVLayerStore

    return GpuKVLayerStore(head_dim, num_heads, **kwargs)


def _bits(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= 8:
        raise TurboQuantError(f"{name} must be an integer in 1..8, got {value!r}")
    return int(value)


def width_parts(width: Any, head_dim: int, name: str) -> tuple[int, int]:
    """One side's width as ``(bits, outlier channels)``: an integer ``b`` (1..8) stores every
    channel at ``b`` bits; a half width ``b + 0.5`` (1.5..7.5) stores half of the channels (the
    outlier split: the ``head_dim / 2`` channels of largest RMS) at ``b + 1`` bits, an average
    of exactly ``b + 0.5`` (``head_dim`` even, at least 4)."""
    if isinstance(width, bool) or not isinstance(width, (int, float, np.integer, np.floating)):
        raise TurboQuantError(f"{name} must be a width in 1..8 (halves allowed), got {width!r}")
    w = float(width)
    if w == int(w) and 1 <= w <= 8:
        return int(w), 0
    if w - int(w) != 0.5 or not 1.5 <= w <= 7.5:
        raise TurboQuantError(f"{name} must be an integer 1..8 or a half 1.5..7.5, got {width!r}")
    if head_dim < 4 or head_dim % 2:
        raise TurboQuantError(f"{name}={width}: a half width needs an even head_dim >= 4, got {head_dim}")
    return int(w), head_dim // 2


def split_widths(
    key_width: Any,
    value_width: Any,
    head_dim: int,
    name: str,
    key_outliers: int = 0,
    value_outliers: int = 0,
) -> tuple[int, int, int, int]:
    """A (key, value) width pair as ``(key bits, value bits, key outlier channels, value outlier
    channels)`` (:func:`width_parts` per side); explicit ``key_outliers`` / ``value_outliers``
    apply to a side of integer width, and a half width together with them is an error (a half
    width is that side's outlier split already)."""
    kb, k_out = width_parts(key_width, head_dim, f"{name} (keys)")
    vb, v_out = width_parts(value_width, head_dim, f"{name} (values)")
    if (k_out and key_outliers) or (v_out and value_outliers):
        raise TurboQuantError(
            f"{name} = ({key_width!r}, {value_width!r}): a half width is an outlier split already; "
            "leave n_outlier_channels / value_outlier_channels at 0 with it"
        )
    return kb, vb, k_out or key_outliers, v_out or value_outliers


class KVLayerStore:
    """One attention layer's packed K/V for a batch: ``B × H_kv`` token streams in the Rust core.

    Args:
        head_dim: channels per head.
        num_kv_heads: KV heads per batch row.
        key_bits, value_bits: bits per coordinate (1..8; ``value_bits`` defaults to ``key_bits``).
        key_outliers, value_outliers: channels per head stored at ``outlier_bits`` (the paper's
            outlier split; 0, or 2..head_dim-2), chosen per stream as the channels of largest
            RMS in its first chunk.
        outlier_bits: bits of the outlier channels (default: one more than the side's bits).
        center: subtract each stream's mean (of its first chunk) before quantizing: exact for
            attention, and real keys carry large per-channel offsets.
        seed: seed of the rotations.
        sink_tokens: the first tokens of every stream kept exactly, in the input's dtype
            (float16, bfloat16 or float32), and never quantized (attention sinks: the first
            token of an LLM's context draws a large share of the attention, and its key is far
            from the others). They take part in attention
            exactly and do not enter the centre or the outlier choice of the quantized part.
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
        kb = _bits(key_bits, "key_bits")
        vb = kb if value_bits is None else _bits(value_bits, "value_bits")
        ob = None if outlier_bits is None else _bits(outlier_bits, "outlier_bits")
        for name, v in (("head_dim", head_dim), ("num_kv_heads", num_kv_heads)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
                raise TurboQuantError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, (int, np.integer)) or sink_tokens < 0:
            raise TurboQuantError(f"sink_tokens must be a non-negative integer, got {sink_tokens!r}")
        self._native = _native.KvStore(
            int(head_dim),
            int(num_kv_heads),
            kb,
            vb,
            int(key_outliers),
            ob,
            int(value_outliers),
            ob,
            bool(center),
            int(seed),
        )
        self.head_dim = int(head_dim)
        self.num_kv_heads = int(num_kv_heads)
        self.sink_tokens = int(sink_tokens)
        # exact sink tokens (B, H, s, D) with s <= sink_tokens, in the input's dtype
        # (`_pack_exact`); the codes hold the rest
        self._sink_k: np.ndarray | None = None
        self._sink_v: np.ndarray | None = None

    @property
    def _sink_len(self) -> int:
        return 0 if self._sink_k is None else int(self._sink_k.shape[2])

    @property
    def seq_len(self) -> int:
        """Tokens stored per stream (exact sink tokens and quantized ones)."""
        return self._sink_len + int(self._native.seq_len)

    @property
    def batch_size(self) -> int:
        """Batch rows (0 before the first append)."""
        return int(self._sink_k.shape[0]) if self._sink_k is not None else int(self._native.batch)

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers that exist (codes, scales, centres, channel orders, sink tokens)."""
        sink = 0 if self._sink_k is None else self._sink_k.nbytes + self._sink_v.nbytes  # type: ignore[union-attr]
        return int(self._native.nbytes) + int(sink)

    @property
    def key_bits(self) -> float:
        """Average stored bits per key coordinate."""
        return float(self._native.key_average_bits)

    @property
    def value_bits(self) -> float:
        """Average stored bits per value coordinate."""
        return float(self._native.value_average_bits)

    def settings(self) -> tuple[Any, ...]:
        """Everything that defines the stored bytes (to check that objects are compatible)."""
        return (self.head_dim, self.num_kv_heads, *self._native.settings(), self.sink_tokens)

    def append(self, keys: Any, values: Any) -> None:
        """Quantizes and appends (B, H_kv, T, D) keys and values; nothing stored is re-quantized.

        Bad input (shape, batch, NaN/Inf) raises ``ValueError`` and leaves the store unchanged."""
        k = _float_array(keys, "keys", 4)
        v = _float_array(values, "values", 4)
        if self._sink_k is not None and k.shape[0] != self._sink_k.shape[0]:
            # the codes may still be empty (only sink tokens stored): they would take any batch
            raise TurboQuantError(
                f"shape mismatch: the store holds {self._sink_k.shape[0]} batch rows, "
                f"the new tokens have {k.shape[0]}"
            )
        need = self.sink_tokens - self._sink_len
        if need <= 0 or k.shape[2] == 0:
            self._native.append(k, v)
            return
        want = (self.batch_size or k.shape[0], self.num_kv_heads, self.head_dim)
        if k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != want:
            raise TurboQuantError(
                f"keys {k.shape} and values {v.shape} must both be "
                f"(batch={want[0]}, {want[1]}, tokens, {want[2]})"
            )
        if not (np.isfinite(k).all() and np.isfinite(v).all()):
            raise TurboQuantError("keys and values must be finite (NaN or Inf found)")
        take = min(need, k.shape[2])
        if k.shape[2] > take:  # the codes part first: if it refuses, nothing has changed
            self._native.append(np.ascontiguousarray(k[:, :, take:]), np.ascontiguousarray(v[:, :, take:]))
        dtype = _exact_dtype(keys)
        if _exact_dtype(values) is not dtype:
            dtype = np.float32
        if self._sink_k is not None and self._sink_k.dtype != dtype:
            # a later chunk in another dtype: keep every sink token exact in float32
            dtype = np.float32
            self._sink_k, self._sink_v = _unpack_exact(self._sink_k), _unpack_exact(self._sink_v)  # type: ignore[arg-type]
        sk, sv = _pack_exact(k[:, :, :take], dtype), _pack_exact(v[:, :, :take], dtype)
        if self._sink_k is None:
            self._sink_k, self._sink_v = sk, sv
        else:
            self._sink_k = np.concatenate([self._sink_k, sk], axis=2)
            self._sink_v = np.concatenate([self._sink_v, sv], axis=2)

    def attend(
        self,
        query: Any,
        lo: Any,
        hi: Any,
        *,
        scaling: float,
        softcap: float | None = None,
        extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Attention of ``query`` (B, Hq, Q, D) over the stored tokens ``[lo[b, i], hi[b, i])``.

        Ranges are clamped to the stored tokens. ``extra``: optional full-precision
        ``(keys, values, allowed)`` — float32 (B, H_kv, E, D) twice and bool (B, Q, E) — joined
        into the same softmax where ``allowed`` (computed with the sink tokens in one pass).
        Returns float32 numpy ``out`` (B, Hq, Q, D), normalised over those tokens (0 where
        none is attended), and the log-sum-exp ``lse`` (B, Hq, Q) (``-inf`` where none).
        """
        q = _float_array(query, "query", 4)
        sc = None if softcap is None else float(softcap)
        lo_a = np.asarray(lo, dtype=np.int64).reshape(q.shape[0], q.shape[2])
        hi_a = np.asarray(hi, dtype=np.int64).reshape(q.shape[0], q.shape[2])
        return self._attend(q, lo_a, hi_a, float(scaling), sc, extra)

    def _attend(
        self,
        q: np.ndarray,
        lo_a: np.ndarray,
        hi_a: np.ndarray,
        scaling: float,
        softcap: float | None,
        extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``attend`` on a float32 query and int64 (B, Q) ranges; the native call checks the
        query's values, the scalars and the shapes."""
        s = self._sink_len
        if s == 0 and extra is None:
            lo_c, hi_c = np.ascontiguousarray(lo_a), np.ascontiguousarray(hi_a)
            return self._native.attend(q, lo_c, hi_c, scaling, softcap)
        if q.shape[0] != self.batch_size:
            raise TurboQuantError(f"query batch {q.shape[0]} does not match the store's {self.batch_size}")
        # one native call: the sink tokens and the extra ones join the codes' softmax exactly.
        # Ranges are clamped to the stored tokens, as the codes' attend does (a sliding window
        # wider than the context starts before token 0).
        if s == 0:
            assert extra is not None
            exact_k, exact_v, allowed = extra
        else:
            pos = np.arange(s)
            allowed = (pos >= lo_a[..., None]) & (pos < hi_a[..., None])  # (B, Q, s)
            exact_k, exact_v = _unpack_exact(self._sink_k), _unpack_exact(self._sink_v)  # type: ignore[arg-type]
            if extra is not None:
                ek, ev, ea = extra
                exact_k = np.concatenate([exact_k, ek], axis=2)
                exact_v = np.concatenate([exact_v, ev], axis=2)
                allowed = np.concatenate([allowed, ea], axis=2)
        clo = np.maximum(lo_a - s, 0)
        chi = np.maximum(hi_a - s, clo)
        return self._native.attend(
            q, clo, chi, scaling, softcap,
            np.ascontiguousarray(exact_k, dtype=np.float32),
            np.ascontiguousarray(exact_v, dtype=np.float32),
            np.ascontiguousarray(allowed).view(np.uint8),
        )  # fmt: skip

    def decompress(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored key and value reconstructed, float32 (B, H, S, D) (sink tokens exact)."""
        k, v = self._native.decompress()
        if self._sink_k is None:
            return k, v
        sk, sv = _unpack_exact(self._sink_k), _unpack_exact(self._sink_v)  # type: ignore[arg-type]
        if k.shape[0] == 0:
            return sk.copy(), sv.copy()
        return np.concatenate([sk, k], axis=2), np.concatenate([sv, v], axis=2)

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` tokens of every stream."""
        n = int(n)
        if n < 0:
            raise TurboQuantError(f"cannot truncate to {n} tokens")
        s = self._sink_len
        if n < s:
            self._sink_k, self._sink_v = self._sink_k[:, :, :n].copy(), self._sink_v[:, :, :n].copy()  # type: ignore[index]
        self._native.truncate(max(n - s, 0))

    def select(self, indices: Any) -> None:
        """Keeps batch rows by index, in that order (may repeat): beam reordering and selection."""
        idx = indices.detach().cpu().numpy() if is_torch(indices) else np.asarray(indices)
        idx = np.ascontiguousarray(idx.reshape(-1), dtype=np.int64)
        if self._sink_k is not None and (np.any(idx < 0) or np.any(idx >= self.batch_size)):
            raise TurboQuantError(f"batch indices must lie in 0..{self.batch_size - 1}, got {idx.tolist()}")
        if self._native.batch:
            self._native.select(idx)
        if self._sink_k is not None:
            self._sink_k, self._sink_v = self._sink_k[idx], self._sink_v[idx]  # type: ignore[index]

    def repeat_interleave(self, repeats: int) -> None:
        """Repeats every batch row ``repeats`` times in place."""
        if int(repeats) < 1:
            raise TurboQuantError(f"repeats must be positive, got {repeats}")
        if self._native.batch:
            self._native.repeat_interleave(int(repeats))
        if self._sink_k is not None:
            self._sink_k = np.repeat(self._sink_k, int(repeats), axis=0)
            self._sink_v = np.repeat(self._sink_v, int(repeats), axis=0)

    def reset(self) -> None:
        """Drops everything stored."""
        self._native.reset()
        self._sink_k = self._sink_v = None

    def copy(self) -> KVLayerStore:
        """An independent copy."""
        new = object.__new__(KVLayerStore)
        new._native = self._native.copy()
        new.head_dim, new.num_kv_heads, new.sink_tokens = self.head_dim, self.num_kv_heads, self.sink_tokens
        new._sink_k = None if self._sink_k is None else self._sink_k.copy()
        new._sink_v = None if self._sink_v is None else self._sink_v.copy()
        return new


def _check_attend_args(q: np.ndarray, scaling: float, softcap: float | None) -> None:
    """The checks the codes' attend makes, for the parts computed here (sink tokens, window)."""
    if not np.isfinite(q).all():
        raise TurboQuantError("query must be finite (NaN or Inf found)")
    _check_scalars(scaling, softcap)


def check_attention_layout(
    q_shape: tuple[int, ...],
    extra_shape: tuple[int, ...] | None,
    extra_values_shape: tuple[int, ...] | None,
    n_stored: int,
    scaling: float | None,
    softcap: float | None,
    sliding_window: int | None,
) -> tuple[int, float]:
    """The checks of ``packed_attention``'s shapes and scalars (CPU and GPU engines alike):
    returns (keys in total, the scale)."""
    bsz, hq, ql, d = (int(v) for v in q_shape)
    e = 0
    if extra_shape is not None:
        ks, vs = tuple(int(v) for v in extra_shape), tuple(int(v) for v in extra_values_shape or ())
        if ks != vs or ks[0] != bsz or ks[3] != d:
            raise TurboQuantError(f"extra keys {ks} and values {vs} must be (batch={bsz}, H_kv, E, {d})")
        if hq % ks[1]:
            raise TurboQuantError(f"query heads ({hq}) must be a multiple of the KV heads ({ks[1]})")
        e = ks[2]
    total = int(n_stored) + e
    if ql > total:
        raise TurboQuantError(f"{ql} queries but only {total} keys: queries are the last positions")
    scale = 1.0 / math.sqrt(d) if scaling is None else float(scaling)
    _check_scalars(scale, softcap)
    if sliding_window is not None and int(sliding_window) < 1:
        raise TurboQuantError(f"sliding_window must be positive, got {sliding_window}")
    return total, scale


def _check_scalars(scaling: float, softcap: float | None) -> None:
    if not (math.isfinite(float(scaling)) and float(scaling) > 0):
        raise TurboQuantError(f"scaling must be positive and finite, got {scaling}")
    if softcap is not None and not (math.isfinite(float(softcap)) and float(softcap) > 0):
        raise TurboQuantError(f"softcap must be positive and finite, got {softcap}")


def _exact_part(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, allowed: np.ndarray, scale: float, softcap: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact attention of ``q`` (B, Hq, Q, D) over full-precision ``k``/``v`` (B, Hkv, E, D) where
    ``allowed`` (B, Q, E) is True: the normalised output and its log-sum-exp (``-inf`` if empty)."""
    bsz, hq, ql, d = q.shape
    hkv = k.shape[1]
    g = hq // hkv
    qg = q.reshape(bsz, hkv, g * ql, d)
    z = np.matmul(qg, k.transpose(0, 1, 3, 2)) * np.float32(scale)  # (B, Hkv, G·Q, E)
    if softcap is not None:
        z = np.float32(softcap) * np.tanh(z / np.float32(softcap))
    mask = np.tile(allowed, (1, g, 1))[:, None]  # (B, 1, G·Q, E)
    z = np.where(mask, z, -np.inf).astype(np.float32)
    m = z.max(axis=-1, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0).astype(np.float32)
    w = np.exp(z - m_safe)
    s = w.sum(axis=-1, keepdims=True)
    out = np.matmul(w, v) / np.where(s > 0, s, 1.0)
    s0 = s[..., 0]
    lse = np.where(s0 > 0, m_safe[..., 0] + np.log(np.where(s0 > 0, s0, 1.0)), -np.inf)
    return out.reshape(bsz, hq, ql, d).astype(np.float32), lse.reshape(bsz, hq, ql).astype(np.float32)


def contiguous_runs(valid: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a (B, L) bool mask (numpy, or a torch tensor on any device), the [start, end)
    of its True run as int64 numpy arrays; raises if a row has two (a mask with holes)."""
    if is_torch(valid):
        valid = valid.detach().cpu().numpy()
    valid = np.asarray(valid, dtype=bool)
    b, n = valid.shape
    any_ = valid.any(axis=1)
    start = np.where(any_, valid.argmax(axis=1), 0)
    end = np.where(any_, n - valid[:, ::-1].argmax(axis=1), 0)
    width = np.arange(n)[None, :]
    expect = (width >= start[:, None]) & (width < end[:, None])
    if not np.array_equal(expect, valid):
        raise TurboQuantError(
            "the key mask over stored tokens must be one contiguous run per sequence "
            "(left or right padding); got a mask with holes"
        )
    return start, end


def packed_attention(
    query: Any,
    store: KVLayerStore | None,
    extra_keys: Any = None,
    extra_values: Any = None,
    *,
    scaling: float | None = None,
    softcap: float | None = None,
    sliding_window: int | None = None,
    key_valid: Any = None,
) -> Any:
    """Exact softmax attention over [stored codes ++ extra full-precision keys].

    Stored tokens sit at positions [0, N), ``extra_keys``/``extra_values`` (B, H_kv, E, D; the
    residual window and this step's tokens) at [N, N+E); the Q queries of ``query``
    (B, Hq, Q, D) are the last Q positions and causal. ``sliding_window`` W: a query at
    position p sees keys at positions > p − W. ``key_valid``: optional bool (B, N+E), False for
    padding keys. ``softcap``: ``c·tanh(z/c)`` on the scaled logits. The stored part is read from
    the codes (log-sum-exp merged with the extra part), never dequantized. Returns (B, Hq, Q, D)
    in the query's kind and dtype (a query whose keys are all masked gets zeros). A CUDA query
    (with a ``cuda.kv_store.GpuKVLayerStore``) runs on the GPU, ``gpu_packed_attention``.
    """
    if is_cuda(query):
        from .cuda.kv_store import gpu_packed_attention

        return gpu_packed_attention(
            query, store, extra_keys, extra_values, scaling=scaling, softcap=softcap,
            sliding_window=sliding_window, key_valid=key_valid,
        )  # fmt: skip
    q = _float_array(query, "query", 4)
    bsz, hq, ql, d = q.shape
    n = store.seq_len if store is not None else 0
    e = 0
    if extra_keys is not None:
        ek = _float_array(extra_keys, "extra_keys", 4)
        ev = _float_array(extra_values, "extra_values", 4)
        e = ek.shape[2]
    total, scale = check_attention_layout(
        q.shape, None if extra_keys is None else ek.shape, None if extra_keys is None else ev.shape,
        n, scaling, softcap, sliding_window,
    )  # fmt: skip
    pos = np.arange(total - ql, total, dtype=np.int64)  # query positions
    lo = np.zeros(ql, dtype=np.int64) if sliding_window is None else pos - int(sliding_window) + 1
    hi = pos + 1
    valid = None
    if key_valid is not None:
        kv_arr = key_valid.detach().cpu().numpy() if is_torch(key_valid) else np.asarray(key_valid)
        valid = kv_arr.astype(bool).reshape(bsz, -1)
        if valid.shape[1] != total:
            raise TurboQuantError(f"key_valid must have shape ({bsz}, {total}), got {kv_arr.shape}")
    if n > 0:
        assert store is not None
        if store.batch_size != bsz:
            raise TurboQuantError(f"query batch {bsz} does not match the store's {store.batch_size}")
        lo_b = np.broadcast_to(lo, (bsz, ql))
        hi_b = np.broadcast_to(np.minimum(hi, n), (bsz, ql))
        if valid is not None:
            start, end = contiguous_runs(valid[:, :n])
            lo_b = np.maximum(lo_b, start[:, None])
            hi_b = np.minimum(hi_b, end[:, None])
    allowed = None
    if e > 0:
        kpos = np.arange(n, total)
        allowed = (kpos[None, :] <= pos[:, None]) & (kpos[None, :] >= lo[:, None])  # (Q, E)
        allowed = np.broadcast_to(allowed[None], (bsz, ql, e))
        if valid is not None:
            allowed = allowed & valid[:, None, n:]
    if n > 0:
        # the extra tokens join the store's own exact part (its sink tokens): one native call
        extra = None if allowed is None else (ek, ev, allowed)
        out, lse = store._attend(q, lo_b, hi_b, scale, None if softcap is None else float(softcap), extra)
    elif allowed is not None:
        _check_attend_args(q, scale, softcap)
        out, _ = _exact_part(q, ek, ev, allowed, scale, softcap)
    else:
        out = np.zeros((bsz, hq, ql, d), dtype=np.float32)
    return _like(out, query)


def _like(arr: np.ndarray, ref: Any) -> Any:
    """``arr`` in ``ref``'s kind (numpy/torch) and floating dtype."""
    if is_torch(ref):
        import torch

        return torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype)
    return arr.astype(np.asarray(ref).dtype, copy=False)


@dataclass
class CompressedKV:
    """A compressed K/V cache of (B, H, S, D) tensors: packed codes plus a full-precision window.

    ``store`` holds the quantized tokens (positions ``[0, split_point)``), ``residual_keys`` /
    ``residual_values`` the most recent tokens in the input's own dtype and kind.
    """

    store: KVLayerStore
    residual_keys: Any
    residual_values: Any
    batch_size: int
    num_heads: int
    seq_len: int
    head_dim: int
    kind: str
    dtype: Any
    settings: tuple[Any, ...]

    @property
    def split_point(self) -> int:
        """Number of quantized tokens (where the full-precision window begins)."""
        return self.store.seq_len

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers that exist: packed store plus the window as stored."""
        return self.store.nbytes + int(self.residual_keys.nbytes) + int(self.residual_values.nbytes)

    def compression_ratio(self) -> float:
        """fp16 bytes of the same K/V over :attr:`nbytes`."""
        fp16 = 2 * self.batch_size * self.num_heads * self.seq_len * self.head_dim * FP16_BYTES
        return fp16 / max(self.nbytes, 1)


def _concat(a: Any, b: Any) -> Any:
    if is_torch(a):
        import torch

        return torch.cat([a, b.to(a.dtype)], dim=2)
    return np.concatenate([a, np.asarray(b, dtype=a.dtype)], axis=2)


def _check_finite(keys: Any, values: Any) -> None:
    if is_torch(keys):
        ok = bool(keys.isfinite().all()) and bool(values.isfinite().all())
    else:
        ok = bool(np.isfinite(keys).all() and np.isfinite(values).all())
    if not ok:
        raise TurboQuantError("keys and values must be finite (NaN or Inf found)")


def _same_kind(x: Any, kind: str, name: str) -> Any:
    if kind_of(x) != kind:
        raise TypeError(f"{name} is {kind_of(x)}, the cache holds {kind} tensors")
    return x


class TurboQuantKVCache:
    """TurboQuant KV-cache compression (seed API), with attention computed from the codes.

    Args:
        head_dim: channels per head.
        bit_width: bits per coordinate for keys and values (1..8).
        residual_length: most recent tokens kept in full precision (the input's dtype).
        key_bit_width, value_bit_width: asymmetric widths (e.g. K4/V3); default ``bit_width``.
        n_outlier_channels: key channels per head stored at ``outlier_bits`` (the paper's
            outlier split: e.g. 32 of 128 channels at 3 bits over 2 gives 2.25 bits; half the
            channels at b + 1 gives b + 0.5).
        seed: seed of the rotations.
        outlier_bits: bits of the outlier channels (default ``bit_width + 1``, at most 8).
        value_outlier_channels: outlier channels for values (default 0).
        center: subtract per-stream means before quantizing (default True: measured better on
            real keys, exact for attention).
        n_sink_tokens: first tokens of the sequence kept exact in the input dtype (default 1: the
            attention sink; on SmolLM2 it takes 4-bit perplexity from +1.9% to +0.5% over fp).
        outlier_method: how outlier channels are chosen; "magnitude" (RMS per channel).
        pre_rope: the seed's pre-RoPE mode is not supported here (keys are stored post-RoPE).
    """

    def __init__(
        self,
        head_dim: int,
        bit_width: int = 3,
        residual_length: int = 128,
        key_bit_width: int | None = None,
        value_bit_width: int | None = None,
        pre_rope: bool = False,
        n_outlier_channels: int = 0,
        outlier_method: str = "magnitude",
        seed: int = 0,
        *,
        outlier_bits: int | None = None,
        value_outlier_channels: int = 0,
        center: bool = True,
        n_sink_tokens: int = 1,
    ):
        if pre_rope:
            raise NotImplementedError("pre_rope=True is not supported: keys are quantized after RoPE")
        if outlier_method != "magnitude":
            raise TurboQuantError(f"outlier_method must be 'magnitude', got {outlier_method!r}")
        if isinstance(residual_length, bool) or not isinstance(residual_length, int) or residual_length < 0:
            raise TurboQuantError(f"residual_length must be a non-negative integer, got {residual_length!r}")
        self.head_dim = as_int(head_dim, "head_dim", 1)
        self.bit_width = _bits(bit_width, "bit_width")
        self.key_bit_width = (
            self.bit_width if key_bit_width is None else _bits(key_bit_width, "key_bit_width")
        )
        self.value_bit_width = (
            self.bit_width if value_bit_width is None else _bits(value_bit_width, "value_bit_width")
        )
        self.residual_length = residual_length
        self.n_outlier_channels = as_int(n_outlier_channels, "n_outlier_channels", 0)
        self.value_outlier_channels = as_int(value_outlier_channels, "value_outlier_channels", 0)
        self.outlier_bits = outlier_bits
        self.center = bool(center)
        self.n_sink_tokens = as_int(n_sink_tokens, "n_sink_tokens", 0)
        self.seed = as_int(seed, "seed", 0)
        self.pre_rope = False
        self.outlier_method = outlier_method
        # validates every setting once (head_dim, outliers, bits)
        self._new_store(1)

    @staticmethod
    def for_gqa(
        head_dim: int,
        num_kv_heads: int,
        num_query_heads: int,
        bit_width: int = 3,
        residual_length: int = 128,
        pre_rope: bool = False,
        n_outlier_channels: int = 0,
        outlier_method: str = "magnitude",
        seed: int = 0,
    ) -> TurboQuantKVCache:
        """A cache for grouped-query attention: keys one bit wider (up to 4) when more than two
        query heads share a KV head (each key's error reaches every head of its group).
        Attention itself is GQA-native: each KV head's codes are read once for all its heads."""
        if num_kv_heads < 1 or num_query_heads % num_kv_heads:
            raise TurboQuantError(
                f"num_query_heads ({num_query_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
            )
        ratio = num_query_heads // num_kv_heads
        key_bits = min(bit_width + 1, 4) if ratio > 2 else bit_width
        key_bits = max(key_bits, bit_width)
        return TurboQuantKVCache(
            head_dim,
            bit_width,
            residual_length,
            key_bit_width=key_bits,
            value_bit_width=bit_width,
            pre_rope=pre_rope,
            n_outlier_channels=n_outlier_channels,
            outlier_method=outlier_method,
            seed=seed,
        )

    def _new_store(self, num_heads: int, gpu: bool = False) -> Any:
        """An empty store with this cache's settings: the Rust core's, or the GPU's (``gpu``)."""
        kwargs = dict(
            key_outliers=self.n_outlier_channels,
            value_outliers=self.value_outlier_channels,
            outlier_bits=self.outlier_bits,
            center=self.center,
            seed=self.seed,
            sink_tokens=self.n_sink_tokens,
        )
        if gpu:
            return _gpu_store(self.head_dim, num_heads, key_bits=self.key_bit_width,
                              value_bits=self.value_bit_width, **kwargs)  # fmt: skip
        return KVLayerStore(self.head_dim, num_heads, self.key_bit_width, self.value_bit_width, **kwargs)

    @property
    def average_bits(self) -> tuple[float, float]:
        """Exact average stored bits per coordinate of keys and values (codes only)."""
        s = self._new_store(1)
        return s.key_bits, s.value_bits

    def to(self, device: Any) -> TurboQuantKVCache:
        """Seed compatibility: the cache holds no device state (each compressed object lives
        where its input did: CUDA tensors on the GPU path); returns self."""
        return self

    def _check_kv(self, keys: Any, values: Any) -> tuple[int, int, int]:
        for name, x in (("keys", keys), ("values", values)):
            if is_torch(x):
                if x.device != keys.device:
                    raise TurboQuantError(f"{name} is on {x.device}, keys on {keys.device}")
                if x.device.type not in ("cpu", "cuda"):
                    raise TurboQuantError(f"{name} is on {x.device}; CPU and CUDA tensors are supported")
                if not x.is_floating_point():
                    raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
            elif np.asarray(x).dtype.kind != "f":
                raise TypeError(f"{name} must be a float array, got dtype {np.asarray(x).dtype}")
            shape = tuple(x.shape)
            if len(shape) != 4 or shape[-1] != self.head_dim:
                raise TurboQuantError(
                    f"{name} must have shape (batch, heads, seq, {self.head_dim}), got {shape}"
                )
        if tuple(keys.shape) != tuple(values.shape):
            raise TurboQuantError(
                f"keys {tuple(keys.shape)} and values {tuple(values.shape)} differ in shape"
            )
        if kind_of(keys) != kind_of(values):
            raise TypeError("keys and values must both be numpy arrays or both torch tensors")
        b, h, s, _ = (int(v) for v in keys.shape)
        if b < 1 or h < 1:
            raise TurboQuantError(f"keys need at least one batch row and one head, got {tuple(keys.shape)}")
        return b, h, s

    def compress(self, keys: Any, values: Any) -> CompressedKV:
        """Compresses (B, H, S, D) keys and values: all but the last ``residual_length`` tokens
        are quantized into packed codes; the window stays in the input's dtype."""
        b, h, s = self._check_kv(keys, values)
        store = self._new_store(h, gpu=is_cuda(keys))
        cut = max(s - self.residual_length, 0)
        if cut > 0:
            store.append(keys[:, :, :cut], values[:, :, :cut])
        rk, rv = keys[:, :, cut:], values[:, :, cut:]
        _check_finite(rk, rv)
        if is_torch(rk):
            rk, rv = rk.detach().clone(), rv.detach().clone()
        else:
            rk, rv = np.array(rk), np.array(rv)
        return CompressedKV(
            store, rk, rv, b, h, s, self.head_dim, kind_of(keys), keys.dtype, store.settings()
        )

    def _check_compressed(self, c: Any) -> CompressedKV:
        if not isinstance(c, CompressedKV):
            raise TypeError(f"expected a CompressedKV, got {type(c).__name__}")
        if c.settings != self._new_store(c.num_heads, gpu=is_cuda(c.residual_keys)).settings():
            raise TurboQuantError(
                "this CompressedKV was made by a cache with other settings "
                "(head_dim, bits, outliers, seed, sink tokens)"
            )
        return c

    def append(self, compressed: CompressedKV, keys: Any, values: Any) -> CompressedKV:
        """Appends new (B, H, T, D) tokens in O(T): tokens leaving the window are quantized now;
        nothing already stored is re-quantized. Returns the updated object (the same store)."""
        c = self._check_compressed(compressed)
        b, h, t = self._check_kv(keys, values)
        if (b, h) != (c.batch_size, c.num_heads):
            raise TurboQuantError(
                f"new tokens are for batch {b} × {h} heads; the cache holds {c.batch_size} × {c.num_heads}"
            )
        _same_kind(keys, c.kind, "keys")
        if is_cuda(keys) != is_cuda(c.residual_keys):
            raise TurboQuantError(f"new tokens are on {keys.device}, the cache on {c.residual_keys.device}")
        _check_finite(keys, values)
        rk, rv = _concat(c.residual_keys, keys), _concat(c.residual_values, values)
        over = int(rk.shape[2]) - self.residual_length
        if over > 0:
            c.store.append(rk[:, :, :over], rv[:, :, :over])
            rk, rv = rk[:, :, over:], rv[:, :, over:]
        if is_torch(rk):
            rk, rv = rk.clone(), rv.clone()
        else:
            rk, rv = np.ascontiguousarray(rk), np.ascontiguousarray(rv)
        c.residual_keys, c.residual_values = rk, rv
        c.seq_len += t
        return c

    def _window(self, c: CompressedKV) -> tuple[Any, Any]:
        if int(c.residual_keys.shape[2]) == 0:
            return None, None
        return c.residual_keys, c.residual_values

    def attention(
        self,
        query: Any,
        compressed: CompressedKV,
        scale: float | None = None,
        *,
        softcap: float | None = None,
        sliding_window: int | None = None,
        key_valid: Any = None,
    ) -> Any:
        """Softmax attention of ``query`` (B, Hq, Q, D) over the compressed cache, from the codes.

        GQA/MQA: Hq a multiple of the KV heads. The Q queries are the cache's last Q positions
        (causal among themselves). ``key_valid`` (B, S) masks padding keys; ``sliding_window``
        limits each query to its last W positions; ``softcap`` is Gemma-2's logit cap.
        """
        c = self._check_compressed(compressed)
        qs = tuple(query.shape)
        if len(qs) != 4 or qs[-1] != self.head_dim or qs[0] != c.batch_size:
            raise TurboQuantError(
                f"query must have shape ({c.batch_size}, heads, q_len, {self.head_dim}), got {qs}"
            )
        if qs[1] % c.num_heads:
            raise TurboQuantError(f"query heads ({qs[1]}) must be a multiple of the KV heads ({c.num_heads})")
        wk, wv = self._window(c)
        return packed_attention(
            query,
            c.store,
            wk,
            wv,
            scaling=scale,
            softcap=softcap,
            sliding_window=sliding_window,
            key_valid=key_valid,
        )

    def _decompress(self, c: CompressedKV, which: int) -> Any:
        c = self._check_compressed(c)
        window = c.residual_keys if which == 0 else c.residual_values
        if c.store.seq_len == 0:
            return window
        part = c.store.decompress()[which]
        if is_cuda(window):
            return _concat(part.to(c.dtype), window)
        return (
            _concat(to_kind(part, c.kind).to(c.dtype), window)
            if c.kind == "torch"
            else _concat(part.astype(c.dtype), window)
        )

    def decompress_keys(self, compressed: CompressedKV) -> Any:
        """All keys (B, H, S, D) reconstructed (quantized part) and the window as stored."""
        return self._decompress(compressed, 0)

    def decompress_values(self, compressed: CompressedKV) -> Any:
        """All values (B, H, S, D), as :meth:`decompress_keys`."""
        return self._decompress(compressed, 1)

    def memory_savings(self, batch_size: int, num_heads: int, seq_len: int) -> tuple[float, float, float]:
        """(fp16 MB, compressed MB, ratio) for K and V of (batch, heads, seq_len, head_dim):
        the compressed size is that of a real cache of that shape (its buffers' bytes, the
        window and the sink tokens at 2 bytes per value as fp16), built on zero-free synthetic
        fp16 tokens."""
        b, h, s = int(batch_size), int(num_heads), int(seq_len)
        if min(b, h, s) < 1:
            raise TurboQuantError("batch_size, num_heads and seq_len must be positive")
        fp16 = 2 * b * h * s * self.head_dim * FP16_BYTES
        quantized = max(s - self.residual_length, 0)
        store = self._new_store(h)
        rng = np.random.default_rng(0)
        step = 4096
        done = 0
        while done < quantized:
            t = min(step, quantized - done)
            x = rng.standard_normal((b, h, t, self.head_dim), dtype=np.float32).astype(np.float16)
            store.append(x, x)
            done += t
        window = 2 * b * h * (s - quantized) * self.head_dim * FP16_BYTES
        comp = store.nbytes + window
        mb = 1024.0 * 1024.0
        return fp16 / mb, comp / mb, fp16 / comp


__all__ = ["KVLayerStore", "packed_attention", "CompressedKV", "TurboQuantKVCache"]
