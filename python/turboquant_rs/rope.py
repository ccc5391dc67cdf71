"""Rotary position embedding (seed API), for quantizing keys before RoPE.

RoPE rotates each key by an angle that grows with its position, so the same key direction lands
in different places at different positions. Quantizing the keys *before* RoPE and rotating at
attention time keeps the quantized vectors position-free. ``TurboQuantKVCache`` stores post-RoPE
keys (its ``pre_rope=True`` is refused); these functions serve a user who quantizes pre-RoPE keys
and applies RoPE after decoding, or who recovers pre-RoPE keys from a model's cache with
``apply_rope(keys, freqs, positions, inverse=True)``.

The rotation is the rotate-half form of transformers' Llama (``LlamaRotaryEmbedding`` with the
default rope type, then ``apply_rotary_pos_emb``): channel ``i`` of the first half and channel
``i + d/2`` form a pair rotated by ``position · base^(−2i/d)``. The angles are computed as
transformers computes them (float32 inverse frequencies and products); the rotation itself is
computed in float64 and rounded once to the input's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._convert import _to_numpy, as_int, is_torch
from ._native import TurboQuantError


def compute_rope_frequencies(
    head_dim: int, max_seq_len: int = 8192, base: float = 10000.0, device: Any = None
) -> Any:
    """RoPE angles ``position · inv_freq`` for positions ``0 .. max_seq_len - 1``.

    Args:
        head_dim: channels per head (even).
        max_seq_len: positions to precompute (>= 1).
        base: RoPE base (transformers' ``rope_theta``), > 0.
        device: ``None`` returns a numpy array; a torch device (or its name) returns a torch tensor
            on it, as the seed did.

    Returns:
        float32 angles of shape ``(max_seq_len, head_dim // 2)``, equal to transformers'
        ``position_ids[..., None].float() * inv_freq``.

    Raises:
        TurboQuantError (a ValueError): odd or non-positive ``head_dim``, ``max_seq_len`` < 1,
        ``base`` not a positive finite number.
    """
    d = as_int(head_dim, "head_dim", 2)
    if d % 2:
        raise TurboQuantError(f"head_dim must be even, got {d}")
    n = as_int(max_seq_len, "max_seq_len", 1)
    if isinstance(base, bool) or not isinstance(base, (int, float, np.integer, np.floating)):
        raise TypeError(f"base must be a number, got {base!r}")
    if not (math.isfinite(base) and base > 0):
        raise TurboQuantError(f"base must be a positive finite number, got {base!r}")
    exponent = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)
    # base ** exponent rounded once to float32: the value transformers' float32 pow gives
    inv_freq = np.float32(1.0) / (np.float64(base) ** exponent.astype(np.float64)).astype(np.float32)
    angles = np.outer(np.arange(n, dtype=np.float32), inv_freq)
    if device is None:
        return angles
    import torch

    return torch.from_numpy(angles).to(device)


def _positions(positions: Any, seq_len: int, lead: tuple[int, ...], n_freqs: int) -> np.ndarray:
    """Validated int64 positions, (seq_len,) or (batch, seq_len)."""
    if positions is None:
        return np.arange(seq_len, dtype=np.int64)
    if isinstance(positions, bool):
        raise TypeError("positions must be integers, got a bool")
    p = positions.detach().cpu().numpy() if is_torch(positions) else np.asarray(positions)
    if p.dtype.kind not in "iu":
        raise TypeError(f"positions must be integers, got dtype {p.dtype}")
    if p.ndim == 0:
        p = p + np.arange(seq_len)
    if p.ndim == 2 and (len(lead) < 1 or p.shape[0] != lead[0]):
        raise TurboQuantError(
            f"positions of shape (batch, seq) = {tuple(p.shape)} need x of shape ({p.shape[0]}, ..., "
            f"seq, head_dim), got leading shape {lead}"
        )
    if p.ndim not in (1, 2) or p.shape[-1] != seq_len:
        raise TurboQuantError(
            f"positions must be an offset, ({seq_len},) or (batch, {seq_len}); got shape {tuple(p.shape)}"
        )
    if p.size and (p.min() < 0 or p.max() >= n_freqs):
        raise TurboQuantError(
            f"positions must lie in [0, {n_freqs}) (the rows of freqs), got {p.min()}..{p.max()}"
        )
    return p.astype(np.int64)


def apply_rope(x: Any, freqs: Any, positions: Any = None, *, inverse: bool = False) -> Any:
    """Rotates ``x`` by the RoPE angles of its positions (or back, with ``inverse=True``).

    Args:
        x: (..., seq, head_dim), e.g. (batch, heads, seq, head_dim): numpy float16/32/64 or a
            CPU torch tensor (bfloat16 too).
        freqs: angles (max_seq_len, head_dim // 2) from :func:`compute_rope_frequencies`
            (numpy or torch).
        positions: position of each token: ``None`` for ``0 .. seq - 1``, an integer offset
            ``p`` for ``p .. p + seq - 1``, or integers of shape (seq,) or (batch, seq) (the
            latter for x of shape (batch, ..., seq, head_dim), as transformers' position_ids).
        inverse: rotate by the negative angles, so that
            ``apply_rope(apply_rope(x, f, p), f, p, inverse=True)`` recovers ``x``.

    Returns:
        The rotated tensor, same shape, kind and dtype as ``x``.

    Raises:
        TurboQuantError (a ValueError): shapes that do not fit, positions outside
        ``[0, max_seq_len)``, NaN or Inf in ``x`` or the angles used. TypeError: non-float ``x``
        or ``freqs``, non-integer positions.
    """
    arr = _to_numpy(x, "x")
    if arr.dtype.kind != "f":
        raise TypeError(f"x must be a float array (float16, float32 or float64), got dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[-1] < 2 or arr.shape[-1] % 2:
        raise TurboQuantError(f"x must have shape (..., seq, head_dim) with head_dim even, got {arr.shape}")
    seq_len, dim = arr.shape[-2:]
    half = dim // 2
    f = _to_numpy(freqs, "freqs")
    if f.dtype.kind != "f":
        raise TypeError(f"freqs must be float angles, got dtype {f.dtype}")
    if f.ndim != 2 or f.shape[1] != half:
        raise TurboQuantError(
            f"freqs must have shape (max_seq_len, {half}) for head_dim {dim}, got {f.shape}"
        )
    pos = _positions(positions, seq_len, arr.shape[:-2], f.shape[0])
    angles = f[pos].astype(np.float64)  # (seq, half) or (batch, seq, half)
    if pos.ndim == 2:
        angles = angles.reshape((pos.shape[0],) + (1,) * (arr.ndim - 3) + (seq_len, half))
    if not (np.isfinite(arr).all() and np.isfinite(angles).all()):
        raise TurboQuantError("x and the angles must be finite (NaN or Inf found)")
    cos, sin = np.cos(angles), np.sin(angles)
    if inverse:
        sin = -sin
    a = arr.astype(np.float64)
    x1, x2 = a[..., :half], a[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(arr.dtype)
    if not is_torch(x):
        return out
    import torch

    return torch.from_numpy(out).to(x.dtype)
