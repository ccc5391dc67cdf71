"""Outlier channels (seed API): detection, an exact split and merge, and the paper's split.

KV activations carry a few channels of much larger magnitude than the rest, and TurboQuant's error
on a vector scales with its squared norm, most of which those channels hold. The paper (Zandieh
et al., experiments on KV caches) therefore splits the channels of each head into an outlier set
and the rest, and quantizes each with its own TurboQuant instance, the outliers at a higher bit
width: 32 of 128 channels at 3 bits with the other 96 at 2 bits stores 2.25 bits per coordinate.
Here that is::

    idx = detect_outlier_channels(keys, n_outliers=32)  # (heads, 32) for (batch, heads, seq, 128)
    split = split_outliers(keys, idx)                   # exact: bulk (..., 96), outlier_values (..., 32)
    packed = split.quantize(bit_width=2)                # regular channels at 2 bits, outliers at 3
    keys_hat = packed.dequantize()                      # (batch, heads, seq, 128)

``merge_outliers(split.bulk, split)`` returns ``keys`` bit for bit, and ``merge_outliers(bulk,
split)`` with a reconstructed ``bulk`` puts the split's outlier values back (the seed's use). Unlike
the seed, nothing here keeps the outlier channels in full precision beside a full-precision copy of
the rest: :meth:`OutlierSplit.quantize` stores only the two packed parts and the channel indices.

Relation to ``TurboQuantKVCache(n_outlier_channels=k)``: the cache performs the same split inside
its Rust store, per stream (batch row × KV head), on the fly. It chooses the ``k`` channels of
largest RMS in each stream's first chunk of tokens, after subtracting that chunk's mean when
``center=True`` (the default, the ranking of ``method="variance"`` here) and without it otherwise
(``method="magnitude"``), stores them at ``outlier_bits`` (default one bit more) and computes
attention from the codes. These helpers quantize tensors directly and let the channels be chosen
from any data, e.g. a calibration set, per head for the whole batch.

numpy arrays and CPU torch tensors are accepted; results come back as the input's kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._convert import _to_numpy, as_int, is_torch, to_kind
from ._native import TurboQuantError
from .core import TurboQuant, TurboQuantOutput

#: Channel scores of :func:`detect_outlier_channels`, computed over the tokens of each head.
METHODS = ("magnitude", "variance", "range")


def _float_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a floating-point numpy array (a view where possible; bfloat16 becomes float32)."""
    arr = _to_numpy(x, name)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array (float16, float32 or float64), got dtype {arr.dtype}")
    return arr


def _check_layout(shape: tuple[int, ...], idx: np.ndarray, name: str) -> None:
    """Refuses per-head indices (H, k) for an array without a head axis of size H at -3."""
    if idx.ndim == 2 and (len(shape) < 3 or shape[-3] != idx.shape[0]):
        raise TurboQuantError(
            f"per-head outlier_indices {tuple(idx.shape)} need {name} of shape (..., {idx.shape[0]}, "
            f"tokens, channels), got {shape}"
        )


def _indices(outlier_indices: Any, dim: int) -> np.ndarray:
    """Validated int64 channel indices: (k,) shared by all heads, or (H, k) per head."""
    idx = outlier_indices.detach().cpu().numpy() if is_torch(outlier_indices) else np.asarray(outlier_indices)
    if idx.ndim not in (1, 2):
        raise TurboQuantError(f"outlier_indices must have shape (k,) or (heads, k), got {tuple(idx.shape)}")
    k = idx.shape[-1]
    if not 1 <= k <= dim - 1:
        raise TurboQuantError(
            f"the number of outlier channels must be in 1..{dim - 1} for dim {dim}, got {k}"
        )
    if idx.dtype.kind not in "iu":
        raise TypeError(f"outlier_indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0 or idx.max() >= dim:
        raise TurboQuantError(f"outlier_indices must lie in 0..{dim - 1}, got {idx.min()}..{idx.max()}")
    if np.any(np.diff(np.sort(idx, axis=-1), axis=-1) == 0):
        raise TurboQuantError("outlier_indices must not repeat a channel (within a head)")
    return idx.astype(np.int64)


def _complement(idx: np.ndarray, dim: int) -> np.ndarray:
    """The regular channels, ascending, in the layout of ``idx``: (dim - k,) or (H, dim - k)."""
    mask = np.ones((*idx.shape[:-1], dim), dtype=bool)
    np.put_along_axis(mask, idx, False, axis=-1)
    return np.nonzero(mask)[-1].reshape(*idx.shape[:-1], dim - idx.shape[-1])


def _along(idx: np.ndarray, ndim: int) -> np.ndarray:
    """``idx`` shaped for ``take_along_axis`` on an array of rank ``ndim``."""
    if idx.ndim == 1:
        return idx.reshape((1,) * (ndim - 1) + idx.shape)
    return idx.reshape((1,) * (ndim - 3) + (idx.shape[0], 1, idx.shape[1]))


def _merge(bulk: np.ndarray, outliers: np.ndarray, idx: np.ndarray, dim: int) -> np.ndarray:
    """(..., dim) with ``outliers`` at channels ``idx`` and ``bulk`` at the others (dtypes promoted)."""
    out = np.empty((*bulk.shape[:-1], dim), dtype=np.result_type(bulk, outliers))
    np.put_along_axis(out, _along(_complement(idx, dim), out.ndim), bulk, axis=-1)
    np.put_along_axis(out, _along(idx, out.ndim), outliers, axis=-1)
    return out


def _like(arr: np.ndarray, ref: Any, torch_dtype: Any = None) -> Any:
    """``arr`` as ``ref``'s kind; a torch result gets ``torch_dtype`` (default ``ref.dtype``)."""
    if not is_torch(ref):
        return arr
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr)).to(ref.dtype if torch_dtype is None else torch_dtype)


def detect_outlier_channels(
    x: Any, n_outliers: int = 8, method: str = "magnitude", *, per_head: bool = True
) -> Any:
    """The ``n_outliers`` channels of largest score over the tokens, per head, ascending.

    Args:
        x: (..., heads, tokens, dim), e.g. (batch, heads, seq, dim) keys, or (tokens, dim):
            numpy float16/32/64 or a CPU torch tensor. Axis -3 is the head axis when there is
            one; the tokens of all axes before it (the batch) are pooled.
        n_outliers: channels to pick, in ``1..dim - 1`` (the seed silently capped it at dim / 4).
        method: channel score. "magnitude": RMS over the tokens (the part of the squared norm a
            channel holds, which is what TurboQuant's error scales with; the seed used the mean
            absolute value); "variance": variance over the tokens (RMS after centring);
            "range": max − min.
        per_head: one set per head (default). ``False`` pools every leading axis into one set
            of shape ``(n_outliers,)``, as the seed did.

    Returns:
        int64 channel indices, ascending: (heads, n_outliers) for input of rank 3 or more with
        ``per_head``, else (n_outliers,); a torch tensor if ``x`` was one. Ties go to the lower
        channel. :func:`split_outliers` takes either shape.

    Raises:
        TurboQuantError (a ValueError): bad shape, ``n_outliers`` out of range, unknown
        ``method``, NaN or Inf in ``x``. TypeError: ``x`` is not floating-point.
    """
    arr = _float_array(x, "x")
    if arr.ndim < 2 or arr.shape[-1] < 2 or arr.size == 0:
        raise TurboQuantError(f"x must have shape (..., tokens, dim) with dim >= 2, got {tuple(arr.shape)}")
    k = as_int(n_outliers, "n_outliers", 1, arr.shape[-1] - 1)
    if method not in METHODS:
        raise TurboQuantError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if not np.isfinite(arr).all():
        raise TurboQuantError("x must be finite (NaN or Inf found)")
    head_axis = arr.ndim - 3 if per_head and arr.ndim >= 3 else None
    axes = tuple(a for a in range(arr.ndim - 1) if a != head_axis)
    if method == "magnitude":
        score = np.mean(np.square(arr, dtype=np.float64), axis=axes)
    elif method == "variance":
        score = np.var(arr, axis=axes, dtype=np.float64)
    else:
        score = np.max(arr, axis=axes).astype(np.float64) - np.min(arr, axis=axes)
    top = np.argsort(-score, axis=-1, kind="stable")[..., :k]
    return to_kind(np.sort(top, axis=-1).astype(np.int64), "torch" if is_torch(x) else "numpy")


@dataclass
class OutlierSplit:
    """A tensor split into its regular ("bulk") and outlier channels (seed API).

    Built by :func:`split_outliers`; :func:`merge_outliers` is its exact inverse.

    Args:
        bulk: the regular channels (..., dim - k), ascending, in the input's kind and dtype.
        outlier_values: the outlier channels (..., k), in the order of ``outlier_indices``.
        outlier_indices: int64 channel indices, (k,) for every head or (heads, k) per head.
        original_dim: the channel count before splitting.
    """

    bulk: Any
    outlier_values: Any
    outlier_indices: Any
    original_dim: int

    @property
    def n_outliers(self) -> int:
        """Outlier channels per head (k)."""
        return int(self.outlier_indices.shape[-1])

    def quantize(
        self, bit_width: int = 3, outlier_bits: int | None = None, *, seed: int = 0
    ) -> QuantizedOutlierSplit:
        """The paper's split: two TurboQuant instances (MSE mode), one for the regular channels at
        ``bit_width`` and one for the outlier channels at ``outlier_bits`` (default
        ``bit_width + 1``, at most 8). Each part needs at least 2 channels.
        """
        b = as_int(bit_width, "bit_width", 1, 8)
        ob = min(b + 1, 8) if outlier_bits is None else as_int(outlier_bits, "outlier_bits", 1, 8)
        idx = _indices(self.outlier_indices, self.original_dim)
        k = idx.shape[-1]
        if k < 2 or self.original_dim - k < 2:
            raise TurboQuantError(
                f"quantizing needs at least 2 regular and 2 outlier channels; this split has "
                f"{self.original_dim - k} and {k}"
            )
        qb = TurboQuant(self.original_dim - k, b, seed=seed)
        qo = TurboQuant(k, ob, seed=seed)
        return QuantizedOutlierSplit(
            qb.quantize(self.bulk), qo.quantize(self.outlier_values), idx, self.original_dim, qb, qo
        )


@dataclass(frozen=True)
class QuantizedOutlierSplit:
    """The paper's outlier split, packed: what :meth:`OutlierSplit.quantize` returns.

    Holds only the packed codes and scales of the two parts and the channel indices; no
    full-precision copy of either part.

    Args:
        bulk: the regular channels, quantized at ``bit_width``.
        outliers: the outlier channels, quantized at ``outlier_bits``.
        outlier_indices: int64 channel indices, (k,) or (heads, k).
        original_dim: the channel count before splitting.
        bulk_quantizer, outlier_quantizer: the two TurboQuant instances that decode them.
    """

    bulk: TurboQuantOutput
    outliers: TurboQuantOutput
    outlier_indices: np.ndarray
    original_dim: int
    bulk_quantizer: TurboQuant
    outlier_quantizer: TurboQuant

    @property
    def bit_width(self) -> int:
        """Bits per coordinate of the regular channels."""
        return self.bulk.bit_width

    @property
    def outlier_bits(self) -> int:
        """Bits per coordinate of the outlier channels."""
        return self.outliers.bit_width

    @property
    def average_bits(self) -> float:
        """Code bits per coordinate over all channels (per-vector scales not counted)."""
        k = self.outliers.dim
        return (k * self.outlier_bits + (self.original_dim - k) * self.bit_width) / self.original_dim

    @property
    def nbytes(self) -> int:
        """Bytes held: both parts' packed codes and scales, and the channel indices."""
        return self.bulk.nbytes + self.outliers.nbytes + int(self.outlier_indices.nbytes)

    def dequantize(self) -> Any:
        """The reconstruction (..., original_dim), float32, as numpy or torch like the input."""
        bulk = np.asarray(self.bulk_quantizer.dequantize(self.bulk))
        outliers = np.asarray(self.outlier_quantizer.dequantize(self.outliers))
        return to_kind(_merge(bulk, outliers, self.outlier_indices, self.original_dim), self.bulk.kind)


def split_outliers(x: Any, outlier_indices: Any) -> OutlierSplit:
    """Splits ``x`` (..., dim) into its regular channels and the channels ``outlier_indices``.

    Args:
        x: numpy array or CPU torch tensor, any float dtype (kept: the parts are exact copies).
        outlier_indices: integer channel indices, (k,) for every head or (heads, k) per head
            (then ``x`` is (..., heads, tokens, dim)), as :func:`detect_outlier_channels`
            returns; unique within a head, any order, ``1 <= k <= dim - 1``.

    Returns:
        :class:`OutlierSplit`, whose parts are the input's kind and dtype.

    Raises:
        TurboQuantError (a ValueError): bad shapes or indices. TypeError: non-float ``x`` or
        non-integer indices.
    """
    arr = _float_array(x, "x")
    if arr.ndim == 0:
        raise TurboQuantError("x must have shape (..., dim), got a 0-d array")
    dim = arr.shape[-1]
    idx = _indices(outlier_indices, dim)
    _check_layout(arr.shape, idx, "x")
    bulk = np.take_along_axis(arr, _along(_complement(idx, dim), arr.ndim), axis=-1)
    outliers = np.take_along_axis(arr, _along(idx, arr.ndim), axis=-1)
    kind = "torch" if is_torch(x) else "numpy"
    return OutlierSplit(_like(bulk, x), _like(outliers, x), to_kind(idx, kind), dim)


def merge_outliers(bulk: Any, outlier_split: OutlierSplit) -> Any:
    """Puts ``bulk`` (..., dim - k) back together with the split's outlier values: (..., dim).

    With ``bulk = outlier_split.bulk`` this is the exact inverse of :func:`split_outliers`; with a
    reconstructed bulk (e.g. dequantized) it restores the split's outlier values as they are.

    Args:
        bulk: the regular channels, numpy or CPU torch; the result takes its kind.
        outlier_split: the :class:`OutlierSplit` they came from.

    Returns:
        (..., original_dim) in the promoted dtype of ``bulk`` and the outlier values (the seed
        cast to ``bulk``'s dtype; promotion never rounds a value).

    Raises:
        TurboQuantError (a ValueError): shapes that do not fit the split. TypeError: not an
        :class:`OutlierSplit`, or non-float parts.
    """
    if not isinstance(outlier_split, OutlierSplit):
        raise TypeError(f"outlier_split must be an OutlierSplit, got {type(outlier_split).__name__}")
    dim = outlier_split.original_dim
    b = _float_array(bulk, "bulk")
    o = _float_array(outlier_split.outlier_values, "outlier_values")
    idx = _indices(outlier_split.outlier_indices, dim)
    k = idx.shape[-1]
    if b.ndim == 0 or b.shape[-1] != dim - k or b.shape[:-1] != o.shape[:-1] or o.shape[-1] != k:
        raise TurboQuantError(
            f"bulk {tuple(b.shape)} and outlier_values {tuple(o.shape)} must be (..., {dim - k}) and "
            f"(..., {k}) with the same leading shape"
        )
    _check_layout(b.shape, idx, "bulk")
    merged = _merge(b, o, idx, dim)
    if not is_torch(bulk):
        return merged
    ov = outlier_split.outlier_values
    import torch

    o_dtype = ov.dtype if is_torch(ov) else torch.from_numpy(o[:0]).dtype
    return _like(merged, bulk, torch.promote_types(bulk.dtype, o_dtype))
