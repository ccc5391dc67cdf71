"""GPU operations on the core's format: rotation, fused quantize (plain and KV append),
dequantize, and decode attention on packed K/V.

Inputs are CUDA torch tensors (run on torch's current stream, zero-copy through DLPack) or cupy
arrays; outputs come back as the same kind. Codes and scales are the bytes the Rust CPU core
writes for the same input and seed (``packing.rs`` / ``kv/mod.rs``), except for a coordinate
within float rounding of a codebook boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _runtime as rt
from . import tables

_NULL = np.uint64(0)
_SMEM_DEFAULT = 48 * 1024


def row_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed row of ``dim`` codes at ``bits`` bits (``packing::row_bytes``)."""
    return (dim * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")


@dataclass
class _In:
    arr: Any  # cupy array (uint16 bits for bfloat16)
    dtype: str
    torch: bool


def _inp(x: Any, name: str = "x") -> _In:
    dt = rt.dtype_name(x)
    if dt not in rt.DTYPE_CODES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {dt}")
    return _In(rt.as_cupy(x, name), dt, rt.is_torch(x))


def _out(a: Any, like: _In, dtype: str | None = None) -> Any:
    if not like.torch:
        return a
    return rt.to_torch(a, bf16=(dtype == "bfloat16"))


def _to_f32(a: Any, dtype: str) -> Any:
    cp = rt.cupy()
    if dtype == "bfloat16":
        return (a.astype(cp.uint32) << 16).view(cp.float32)
    return a.astype(cp.float32)


def _gen_warps(dim: int) -> int:
    per = 8 * dim + ((dim + 15) & ~15)
    return max(1, min(4, _SMEM_DEFAULT // per))


def _set_smem(fn: Any, nbytes: int) -> None:
    if nbytes > _SMEM_DEFAULT:
        fn.max_dynamic_shared_size_bytes = nbytes


def _blocks(n: int, per_block: int, per_sm: int = 16) -> int:
    return max(1, min((n + per_block - 1) // per_block, rt.sm_count() * per_sm))


def rotate(x: Any, seed: int = 0, inverse: bool = False, scale: float = 1.0) -> Any:
    """``R x`` (or ``Rᵀ x``) over the last axis, float32 out, times ``scale``; the core's
    rotation for ``(dim, seed)`` (``rust/turboquant/src/rotation.rs``)."""
    xi = _inp(x)
    cp = rt.cupy()
    dim = int(xi.arr.shape[-1])
    with rt.stream_of(x):
        rows = cp.ascontiguousarray(xi.arr).reshape(-1, dim)
        out = _rotate_rows(rows, xi.dtype, dim, seed, inverse, scale)
    return _out(out.reshape(xi.arr.shape), xi)


def _rotate_rows(rows: Any, dtype: str, dim: int, seed: int, inverse: bool, scale: float) -> Any:
    cp = rt.cupy()
    n = int(rows.shape[0])
    out = cp.empty((n, dim), dtype=cp.float32)
    if n == 0:
        return out
    mod = rt.module(dim, 4, dtype=dtype)
    tab = rt.DeviceTables.get(dim, seed)
    fn = mod.get_function("tq_rotate")
    w = _gen_warps(dim)
    smem = w * 2 * dim * 4
    _set_smem(fn, smem)
    fn(
        (_blocks(n, w),),
        (32 * w,),
        (rows, out, np.int64(n), tab.signs, tab.perms, np.int32(inverse), np.float32(scale)),
        shared_mem=smem,
    )
    return out


def _launch_quantize(
    rows: Any,
    dtype: str,
    dim: int,
    bits: int,
    seed: int,
    n: int,
    T: int,
    H: int,
    s_cap: int,
    pos: Any,
    mean: Any,
    codes: Any,
    scales: Any,
    bad: Any,
) -> None:
    if n == 0:
        return
    mod = rt.module(dim, bits, dtype=dtype)
    tab = rt.DeviceTables.get(dim, seed)
    cent, bound, below, inside, off, inv_w = tab.codebook(bits)
    esize = 4 if dtype == "float32" else 2
    fast = (
        tab.sign_bits8 is not None
        and dim in (64, 128, 256)
        and rows.data.ptr % 16 == 0
        and (dim // 8) * esize >= 16
        and codes.data.ptr % 8 == 0
    )
    pos_arg = _NULL if pos is None else pos
    mean_arg = _NULL if mean is None else mean
    if fast:
        fn = mod.get_function("tq_quantize_fast")
        fn(
            (_blocks(n, 32),),
            (256,),
            (
                rows, np.int64(n), np.int32(T), np.int32(H), np.int32(s_cap), pos_arg,
                mean_arg, tab.sign_bits8, cent, bound, below, inside, off, inv_w,
                codes, scales, bad,
            ),
        )  # fmt: skip
    else:
        fn = mod.get_function("tq_quantize_gen")
        w = _gen_warps(dim)
        smem = w * 2 * dim * 4 + w * ((dim + 15) & ~15)
        _set_smem(fn, smem)
        fn(
            (_blocks(n, w),),
            (32 * w,),
            (
                rows, np.int64(n), np.int32(T), np.int32(H), np.int32(s_cap), pos_arg,
                mean_arg, tab.signs, tab.perms, cent, bound, below, inside, off, inv_w,
                codes, scales, bad,
            ),
            shared_mem=smem,
        )  # fmt: skip


def quantize(x: Any, bits: int, seed: int = 0, check: bool = True) -> tuple[Any, Any]:
    """Fused quantize of the rows of ``x`` (last axis = dim): norm, rotation, codebook search and
    bit-packing in one pass. Returns ``(codes, scales)``: ``(..., row_bytes)`` uint8 and ``(...)``
    float32, the bytes of ``_native.Quantizer(dim, bits, False, "lsq", seed).quantize``.
    ``check`` raises ValueError on NaN/Inf input (one device sync)."""
    _check_bits(bits)
    xi = _inp(x)
    cp = rt.cupy()
    dim = int(xi.arr.shape[-1])
    lead = tuple(xi.arr.shape[:-1])
    rb = row_bytes(dim, bits)
    with rt.stream_of(x):
        rows = cp.ascontiguousarray(xi.arr).reshape(-1, dim)
        n = int(rows.shape[0])
        codes = cp.empty((n, rb), dtype=cp.uint8)
        scales = cp.empty(n, dtype=cp.float32)
        bad = cp.zeros(1, dtype=cp.int32)
        _launch_quantize(rows, xi.dtype, dim, bits, seed, n, n, 1, n, None, None, codes, scales, bad)
        if check and int(bad.get()[0]):
            raise ValueError("input holds NaN or Inf (or a vector whose squared norm overflows)")
    return _out(codes.reshape(*lead, rb), xi), _out(scales.reshape(lead), xi)


def dequantize(
    codes: Any, scales: Any, dim: int, bits: int, seed: int = 0, dtype: str = "float32",
    mean: Any = None,
) -> Any:  # fmt: skip
    """Rows from packed codes and scales (``(..., row_bytes)`` uint8, ``(...)`` float32): centroid
    times scale, inverse rotation (plus ``mean``, shape ``(streams, dim)``, per leading row group
    of ``codes.shape[-2]`` rows when given). Output in ``dtype``."""
    _check_bits(bits)
    cp = rt.cupy()
    was_torch = rt.is_torch(codes)
    c = rt.as_cupy(codes, "codes")
    s = rt.as_cupy(scales, "scales")
    rb = row_bytes(dim, bits)
    if c.shape[-1] != rb:
        raise ValueError(f"codes rows must be {rb} bytes for dim={dim}, bits={bits}")
    lead = tuple(c.shape[:-1])
    with rt.stream_of(codes):
        c2 = cp.ascontiguousarray(c).reshape(-1, rb)
        s2 = cp.ascontiguousarray(s, dtype=cp.float32).reshape(-1)
        n = int(c2.shape[0])
        if s2.shape[0] != n:
            raise ValueError("codes and scales hold different numbers of rows")
        odt = {"float32": cp.float32, "float16": cp.float16, "bfloat16": cp.uint16}[dtype]
        out = cp.empty((n, dim), dtype=odt)
        T = int(lead[-1]) if (mean is not None and len(lead) >= 1) else max(n, 1)
        mu = _NULL if mean is None else cp.ascontiguousarray(rt.as_cupy(mean, "mean"), dtype=cp.float32)
        if n:
            mod = rt.module(dim, bits, dtype=dtype)
            tab = rt.DeviceTables.get(dim, seed)
            cent = tab.codebook(bits)[0]
            fn = mod.get_function("tq_dequantize")
            w = _gen_warps(dim)
            smem = w * 2 * dim * 4
            _set_smem(fn, smem)
            fn(
                (_blocks(n, w),),
                (32 * w,),
                (c2, s2, np.int64(n), np.int32(T), mu, tab.signs, tab.perms, cent, out),
                shared_mem=smem,
            )
    out = out.reshape(*lead, dim)
    if not was_torch:
        return out
    return rt.to_torch(out, bf16=(dtype == "bfloat16"))


def quantize_append(
    x: Any, codes_buf: Any, scales_buf: Any, pos: Any, bits: int, seed: int = 0,
    mean: Any = None,
) -> None:  # fmt: skip
    """Quantize new tokens ``x`` of shape (B, H, T, D) into preallocated KV buffers
    ``codes_buf`` (B, H, S_cap, row_bytes) uint8 and ``scales_buf`` (B, H, S_cap) float32 at
    slots ``pos .. pos + T`` (``pos``: an int, or a (B,) int32 device array per sequence), with
    ``mean`` (B, H, D) float32 subtracted first. No reallocation; one kernel."""
    _check_bits(bits)
    cp = rt.cupy()
    xi = _inp(x)
    if xi.arr.ndim != 4:
        raise ValueError("x must be (batch, heads, tokens, dim)")
    B, H, T, D = (int(v) for v in xi.arr.shape)
    cb = rt.as_cupy(codes_buf, "codes_buf")
    sb = rt.as_cupy(scales_buf, "scales_buf")
    if cb.shape[:2] != (B, H) or cb.shape[-1] != row_bytes(D, bits) or not cb.flags.c_contiguous:
        raise ValueError("codes_buf must be a C-contiguous (B, H, S_cap, row_bytes) uint8 buffer")
    s_cap = int(cb.shape[2])
    if sb.shape != (B, H, s_cap) or not sb.flags.c_contiguous:
        raise ValueError("scales_buf must be a C-contiguous (B, H, S_cap) float32 buffer")
    with rt.stream_of(x):
        if isinstance(pos, (int, np.integer)):
            if pos < 0 or pos + T > s_cap:
                raise ValueError(f"tokens {pos}..{pos + T} do not fit the capacity {s_cap}")
            pos_arr = cp.full(B, int(pos), dtype=cp.int32)
        else:
            pos_arr = cp.ascontiguousarray(rt.as_cupy(pos, "pos"), dtype=cp.int32)
        mu = None if mean is None else cp.ascontiguousarray(rt.as_cupy(mean, "mean"), dtype=cp.float32)
        rows = cp.ascontiguousarray(xi.arr).reshape(-1, D)
        _launch_quantize(rows, xi.dtype, D, bits, seed, B * H * T, T, H, s_cap, pos_arr, mu, cb, sb, _NULL)


class PackedKV:
    """A preallocated packed KV cache layer on the GPU, in the format of ``kv/mod.rs``:
    per (batch b, KV head h) token-major code rows (``row_bytes(D, bits)`` bytes) and one f32
    scale per token, for keys and values; optional per-(b, h) f32 means subtracted before
    quantizing (keys: the logit adds ⟨q, μ_k⟩; values: the output adds μ_v)."""

    def __init__(
        self, batch: int, kv_heads: int, capacity: int, head_dim: int, key_bits: int = 4,
        value_bits: int = 4, seed: int = 0, key_mean: Any = None, value_mean: Any = None,
    ):  # fmt: skip
        _check_bits(key_bits)
        _check_bits(value_bits)
        cp = rt.cupy()
        cap = max(16, (int(capacity) + 15) // 16 * 16)
        self.batch, self.kv_heads, self.capacity, self.head_dim = batch, kv_heads, cap, head_dim
        self.key_bits, self.value_bits, self.seed = key_bits, value_bits, seed
        shape = (batch, kv_heads, cap)
        self.key_codes = cp.zeros((*shape, row_bytes(head_dim, key_bits)), dtype=cp.uint8)
        self.key_scales = cp.zeros(shape, dtype=cp.float32)
        self.value_codes = cp.zeros((*shape, row_bytes(head_dim, value_bits)), dtype=cp.uint8)
        self.value_scales = cp.zeros(shape, dtype=cp.float32)
        self.lengths = cp.zeros(batch, dtype=cp.int32)
        #: the longest stored sequence (host-side, so launches need no sync)
        self.max_length = 0

        def _mean(m: Any) -> Any:
            if m is None:
                return None
            a = cp.ascontiguousarray(rt.as_cupy(m, "mean"), dtype=cp.float32)
            if a.shape != (batch, kv_heads, head_dim):
                raise ValueError("means must be (batch, kv_heads, head_dim)")
            return a

        self.key_mean = _mean(key_mean)
        self.value_mean = _mean(value_mean)

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers that exist (codes, scales, lengths, means)."""
        n = sum(
            a.nbytes
            for a in (self.key_codes, self.key_scales, self.value_codes, self.value_scales, self.lengths)
        )
        for m in (self.key_mean, self.value_mean):
            if m is not None:
                n += m.nbytes
        return int(n)

    def append(self, keys: Any, values: Any) -> None:
        """Quantize (B, H, T, D) keys and values into slots ``max_length ..`` of every sequence."""
        t = int(keys.shape[2])
        pos = self.max_length
        if pos + t > self.capacity:
            raise ValueError(f"capacity {self.capacity} exceeded ({pos} + {t} tokens)")
        quantize_append(keys, self.key_codes, self.key_scales, pos, self.key_bits, self.seed, self.key_mean)
        quantize_append(
            values, self.value_codes, self.value_scales, pos, self.value_bits, self.seed,
            self.value_mean,
        )  # fmt: skip
        with rt.stream_of(keys):
            self.lengths += t
        self.max_length = pos + t


def _rows_per_group(r: int) -> int:
    for g in (1, 2, 4):
        if r <= g:
            return g
    return 8


def decode_attention(
    query: Any,
    kv: PackedKV,
    *,
    extra_keys: Any = None,
    extra_values: Any = None,
    extra_lengths: Any = None,
    lengths: Any = None,
    starts: Any = None,
    scaling: float | None = None,
    softcap: float = 0.0,
    window: int = 0,
    return_lse: bool = False,
    splits: int | None = None,
    impl: str = "auto",
) -> Any:
    """Softmax attention of ``query`` (B, Hq, q_len ≤ 16, D) over a :class:`PackedKV` computed
    from the codes, plus an optional full-precision segment ``extra_keys/values`` (B, Hkv, E, D)
    in the query's dtype that follows the stored tokens (``extra_lengths``: (B,) valid counts).

    The last ``q_len`` positions of each sequence are the queries (causal among the new tokens);
    ``window > 0`` attends only to the last ``window`` positions; ``lengths`` overrides the
    stored tokens per sequence; ``starts`` (B,) is each sequence's first valid position (keys
    before it, in stored-then-extra order, are masked: left padding); ``softcap > 0`` applies
    ``cap·tanh(z/cap)`` to the logits.
    ``impl``: ``"tc"`` (tensor cores, mma.sync with hi/lo split operands; needs
    ``head_dim % 16 == 0``), ``"tc2"`` (the same with double-buffered tiles), ``"simt"`` (f32
    FMAs) or ``"auto"`` (tc for caches under about 2M tokens over batch and KV heads, else simt,
    as measured on an H100).
    Returns the output (query dtype) and, with ``return_lse``, the log-sum-exp (float32)."""
    cp = rt.cupy()
    qi = _inp(query, "query")
    if qi.arr.ndim != 4:
        raise ValueError("query must be (batch, q_heads, q_len, head_dim)")
    B, Hq, Lq, D = (int(v) for v in qi.arr.shape)
    Hkv = kv.kv_heads
    if kv.head_dim != D or kv.batch != B:
        raise ValueError("query batch / head_dim do not match the cache")
    if Hq % Hkv:
        raise ValueError("query heads must be a multiple of KV heads")
    if D % 8:
        raise ValueError("head_dim must be a multiple of 8")
    G = Hq // Hkv
    scaling = 1.0 / math.sqrt(D) if scaling is None else float(scaling)
    R = G * Lq
    rg = _rows_per_group(R)
    nrg = (R + rg - 1) // rg
    mod = rt.module(D, kv.key_bits, kv.key_bits, kv.value_bits, rg, qi.dtype, attn=True)
    key = (rt._device_id(), D, kv.key_bits, kv.value_bits, rg, qi.dtype)
    if impl not in ("auto", "tc", "tc2", "simt"):
        raise ValueError("impl must be 'auto', 'tc', 'tc2' or 'simt'")
    if impl == "auto":
        # measured on an H100 (benches/RESULTS.md, GPU section): tensor cores win on short caches,
        # the f32-FMA kernel from B*Hkv*S of about 2M tokens on
        big = kv.batch * kv.kv_heads * kv.max_length >= 2 * 1024 * 1024
        impl = "tc" if (D % 16 == 0 and not big) else "simt"
    if impl != "simt" and D % 16:
        raise ValueError("the tensor-core kernels need head_dim % 16 == 0")
    smem = rt.attn_smem(mod, key)
    smem2 = rt.attn_smem(mod, key, 2)
    tab = rt.DeviceTables.get(D, kv.seed)
    kcent = tab.codebook(kv.key_bits)[0]
    vcent = tab.codebook(kv.value_bits)[0]
    with rt.stream_of(query):
        q = cp.ascontiguousarray(qi.arr)
        qr = _rotate_rows(q.reshape(-1, D), qi.dtype, D, kv.seed, False, scaling)
        # the scaled float32 query, for the key centre's logit offsets and the exact segment
        qs = None
        qm: Any = _NULL
        if kv.key_mean is not None or extra_keys is not None:
            qs = _to_f32(q, qi.dtype) * np.float32(scaling)
        if kv.key_mean is not None:
            assert qs is not None
            # ⟨q, μ_k⟩ per row: one batched matmul (einsum's host path measured 0.3 ms a call)
            qm = cp.matmul(qs.reshape(B, Hkv, G * Lq, D), kv.key_mean.reshape(B, Hkv, D, 1)).reshape(-1)
        clen = (
            kv.lengths
            if lengths is None
            else cp.ascontiguousarray(rt.as_cupy(lengths, "lengths"), dtype=cp.int32)
        )
        max_len = kv.max_length if lengths is None else int(clen.max().get()) if B else 0
        e_cap = 0
        elen: Any = _NULL
        ke: Any = _NULL
        ve: Any = _NULL
        if extra_keys is not None:
            ki = _inp(extra_keys, "extra_keys")
            vi = _inp(extra_values, "extra_values")
            if ki.dtype != qi.dtype or vi.dtype != qi.dtype:
                raise TypeError("the full-precision segment must have the query's dtype")
            if ki.arr.shape[:2] != (B, Hkv) or ki.arr.shape[-1] != D or vi.arr.shape != ki.arr.shape:
                raise ValueError("extra keys/values must be (batch, kv_heads, tokens, head_dim)")
            e_cap = int(ki.arr.shape[2])
            ke = cp.ascontiguousarray(ki.arr)
            ve = cp.ascontiguousarray(vi.arr)
            if extra_lengths is None:
                elen = cp.full(B, e_cap, dtype=cp.int32)
            else:
                elen = cp.ascontiguousarray(rt.as_cupy(extra_lengths, "extra_lengths"), dtype=cp.int32)
        cst: Any = _NULL
        if starts is not None:
            cst = cp.ascontiguousarray(rt.as_cupy(starts, "starts"), dtype=cp.int32)
            if cst.shape != (B,):
                raise ValueError("starts must be (batch,)")
        tiles = max(1, (max_len + 127) // 128)
        if splits is None:
            # many small splits: the last wave of blocks is a small fraction of the work
            target = rt.sm_count() * 16
            splits = max(1, min(tiles, -(-target // (B * Hkv * nrg))))
        tps = -(-tiles // splits) * 128
        ns = max(1, -(-max_len // tps))
        nrow = B * Hq * Lq
        part_acc = cp.empty((nrow, ns + 1, D), dtype=cp.float32)
        part_ml = cp.empty((nrow, ns + 1, 2), dtype=cp.float32)
        scal = (
            np.int32(Hq), np.int32(Hkv), np.int32(Lq), np.int32(kv.capacity), np.int32(e_cap),
            np.int32(tps), np.int32(ns), np.int32(window), np.int32(nrg), np.float32(softcap),
        )  # fmt: skip
        fa = mod.get_function(
            {"tc": "tq_attn_codes_tc", "tc2": "tq_attn_codes_tc2"}.get(impl, "tq_attn_codes")
        )
        sa = smem2 if impl == "tc2" else smem
        _set_smem(fa, sa)
        fa(
            (ns, Hkv * nrg, B),
            (128,),
            (qr, qm, kv.key_codes, kv.key_scales, kv.value_codes, kv.value_scales, kcent, vcent,
             clen, elen, cst, *scal, part_acc, part_ml),
            shared_mem=sa,
        )  # fmt: skip
        qraw: Any = _NULL
        if extra_keys is not None:
            assert qs is not None
            qraw = cp.ascontiguousarray(qs).reshape(-1)
        if extra_keys is not None:
            fe = mod.get_function("tq_attn_extra")
            _set_smem(fe, smem)
            fe(
                (1, Hkv * nrg, B),
                (128,),
                (qraw, ke, ve, clen, elen, cst, *scal, part_acc, part_ml),
                shared_mem=smem,
            )
        odt = {"float32": cp.float32, "float16": cp.float16, "bfloat16": cp.uint16}[qi.dtype]
        out = cp.empty((B, Hq, Lq, D), dtype=odt)
        lse = cp.empty((B, Hq, Lq), dtype=cp.float32) if return_lse else None
        fr = mod.get_function("tq_attn_reduce")
        w = 4
        rs = w * 2 * D * 4
        _set_smem(fr, rs)
        fr(
            ((nrow + w - 1) // w,),
            (32 * w,),
            (part_acc, part_ml, np.int64(nrow), np.int32(ns), np.int32(Hq), np.int32(Hkv),
             np.int32(Lq), np.int32(extra_keys is not None),
             _NULL if kv.value_mean is None else kv.value_mean, tab.signs,
             tab.perms, out, _NULL if lse is None else lse),
            shared_mem=rs,
        )  # fmt: skip
    o = _out(out, qi, qi.dtype)
    if return_lse:
        return o, _out(lse, qi)
    return o


def layout_of(dim: int) -> str:
    """The rotation layout name for ``dim`` (single / tiled / overlapping)."""
    return {tables.SINGLE: "single", tables.TILED: "tiled", tables.OVERLAPPING: "overlapping"}[
        tables.layout_for_dim(dim)[0]
    ]
