"""A live TurboQuant KV cache for transformers' ``generate()``: attention reads the packed codes.

`TurboQuantCache` is a ``transformers.Cache`` built from one layer object per model layer:
`TurboQuantLayer` for full attention, `TurboQuantSlidingLayer` for sliding-window attention, and
transformers' own layer classes for layers without KV (the conv / SSM / linear-attention layers of
hybrid models). Each ``update()`` appends the step's tokens; tokens leaving the residual window are
quantized into the layer's `KVLayerStore` at that step and their full-precision copies are freed.

Attention reads the codes: the attention function registered here as ``"turboquant"`` (with its mask
function, so padding masks arrive) calls `turboquant_rs.kv_cache.packed_attention` on the layer's
store plus the full-precision extras (residual window + this step's tokens). ``update()`` hands the
model zero-memory stand-ins (``torch.empty(()).expand(B, H, T, D)``) that carry a reference to the
layer, so no dense copy of the cache exists at any step. The tokens of the current forward pass
attend to their own K/V exactly (as transformers' QuantizedCache does).

If the model runs another attention implementation (sdpa, eager...), ``update()`` returns dense
dequantized tensors instead and warns once: that is a fallback, not the fast path. Switch with
`TurboQuantCache.from_model`, `enable_turboquant_attention`, ``model.set_attn_implementation(
"turboquant")`` or ``from_pretrained(..., attn_implementation="turboquant")``.

The seed library's names `wrap`, `TurboQuantWrapper` and `TurboQuantDynamicCache` are here too, and
compress during generation for real.

Importing this module imports torch and transformers (5.17 through 5.25 are supported).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import cache_utils as _cu
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicCache, EncoderDecoderCache

from .compat import (
    ATTENTION_KINDS,
    ModelKVInfo,
    _head_dims,
    _text_config,
    detect_model_kv_info,
    is_latent_kv_config,
    layer_plan,
)

try:  # transformers exports both at top level from 5.0; keep the module paths as a fallback
    from transformers import AttentionInterface
except ImportError:  # pragma: no cover
    from transformers.modeling_utils import AttentionInterface
try:
    from transformers import AttentionMaskInterface
except ImportError:  # pragma: no cover
    from transformers.masking_utils import AttentionMaskInterface

__all__ = [
    "ATTN_IMPLEMENTATION",
    "TurboQuantCache",
    "TurboQuantDynamicCache",
    "TurboQuantHybridLayer",
    "TurboQuantLayer",
    "TurboQuantSlidingHybridLayer",
    "TurboQuantSlidingLayer",
    "TurboQuantWrapper",
    "enable_turboquant_attention",
    "register_turboquant_attention",
    "turboquant_attention",
    "turboquant_mask",
    "wrap",
]

#: The name the codes-reading attention (and its mask function) is registered under.
ATTN_IMPLEMENTATION = "turboquant"

_MIN_BITS = 1
_MAX_BITS = 8


def _kv() -> Any:
    """The packed KV module (imported at call time)."""
    from . import kv_cache

    return kv_cache


_GPU_WARNED = False


def _gpu_store_class(device: Any) -> Any:
    """The GPU store class for a CUDA layer when cupy is there, else None (CPU store; warned once)."""
    global _GPU_WARNED
    if getattr(device, "type", "cpu") != "cuda":
        return None
    from .cuda import _runtime

    if _runtime.available():
        from .cuda.kv_store import GpuKVLayerStore

        return GpuKVLayerStore
    if not _GPU_WARNED:
        _GPU_WARNED = True
        warnings.warn(
            "TurboQuantCache on a CUDA model without cupy: the codes live and are read on the CPU "
            "(pip install 'turboquant-rs[cuda]' or '[cuda13]' for the GPU kernels)",
            stacklevel=3,
        )
    return None


def _check_bits(bits: Any, name: str) -> int:
    """Validate a bit width: an integer in [1, 8]."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or int(bits) != bits:
        raise ValueError(f"{name} must be an integer number of bits, got {bits!r}")
    if not _MIN_BITS <= int(bits) <= _MAX_BITS:
        raise ValueError(f"{name} must be in [{_MIN_BITS}, {_MAX_BITS}], got {bits}")
    return int(bits)


# --------------------------------------------------------------------------------------------------
# layers


class TurboQuantLayer(CacheLayerMixin):
    """One full-attention layer's cache: packed codes for old tokens, a full-precision residual window.

    ``keys`` / ``values`` hold the full-precision part only (the residual window, plus the current
    step's tokens until attention has read them); every older token lives as codes in ``store``.

    Args:
        head_dim: Size of one head (keys and values).
        num_kv_heads: Number of KV heads.
        key_bits: Bits per key coordinate.
        value_bits: Bits per value coordinate.
        residual_length: Most recent tokens kept in full precision (0: everything stored is quantized).
        n_outlier_channels: Key outlier channels per head (0, or 2..head_dim-2), stored at
            ``outlier_bits`` (the paper's outlier split: e.g. half the channels at b + 1 is b + 0.5 bits).
        value_outlier_channels: The same for values.
        outlier_bits: Bits of the outlier channels (default: one more than the side's bits).
        seed: Seed of the store's random rotation.
        sink_tokens: First tokens of the sequence kept exact in the input dtype, never quantized
            (the attention sink).
        owner: The cache this layer belongs to (decides codes attention vs dense fallback).
        layer_idx: Index of the layer in the model.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = True
    sliding_window: int | None = None

    def __init__(
        self,
        *,
        head_dim: int | None,
        num_kv_heads: int | None,
        key_bits: int = 4,
        value_bits: int | None = None,
        residual_length: int = 128,
        n_outlier_channels: int = 0,
        seed: int = 0,
        owner: TurboQuantCache | None = None,
        value_outlier_channels: int = 0,
        outlier_bits: int | None = None,
        layer_idx: int = 0,
        sink_tokens: int = 1,
    ) -> None:
        super().__init__()
        if residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {residual_length}")
        self.head_dim = head_dim
        self.num_kv_heads = num_kv_heads
        self.key_bits = _check_bits(key_bits, "key bits")
        self.value_bits = _check_bits(value_bits if value_bits is not None else key_bits, "value bits")
        self.residual_length = int(residual_length)
        self.n_outlier_channels = int(n_outlier_channels)
        self.value_outlier_channels = int(value_outlier_channels)
        self.outlier_bits = None if outlier_bits is None else _check_bits(outlier_bits, "outlier_bits")
        self.seed = int(seed)
        self.sink_tokens = int(sink_tokens)
        self.owner = owner
        self.layer_idx = layer_idx
        # Packed stores, oldest first, holding consecutive positions; appends go to the last one.
        # Full-attention layers have one; sliding layers start a new one per window's worth of
        # tokens so that stores no query can see any more are dropped whole.
        self._segments: list[Any] = []
        self.cumulative_length = 0
        # Logical position of the first token held (store or window); > 0 only for sliding layers
        # whose oldest tokens can no longer be seen by any query and were dropped.
        self._dropped = 0
        self._pending = 0

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bits={self.key_bits}/{self.value_bits}, "
            f"residual_length={self.residual_length}, tokens={self.cumulative_length})"
        )

    # -- CacheLayerMixin ---------------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Create the store from the first tensors' shape (checked against the config; under tensor
        parallelism a rank's even share of the configured KV heads is accepted, see `_tp_shard`)."""
        b, h, _, d = key_states.shape
        if value_states.shape[0] != b or value_states.shape[1] != h or value_states.shape[-1] != d:
            raise ValueError(
                f"layer {self.layer_idx}: keys {tuple(key_states.shape)} and values "
                f"{tuple(value_states.shape)} differ in heads or head size; TurboQuantCache needs "
                "equal key and value head sizes"
            )
        if self.head_dim is not None and d != self.head_dim:
            raise ValueError(
                f"layer {self.layer_idx}: keys have head_dim {d} but the cache was built for head_dim "
                f"{self.head_dim} (a cache reused across models, or a config that does not match)"
            )
        if self.num_kv_heads is not None and h != self.num_kv_heads and not _tp_shard(self.num_kv_heads, h):
            raise ValueError(
                f"layer {self.layer_idx}: keys have {h} KV heads but the cache was built for "
                f"{self.num_kv_heads} (a cache reused across models, or a config that does not match)"
            )
        self.head_dim, self.num_kv_heads = int(d), int(h)
        self.device = key_states.device
        self.dtype = key_states.dtype
        self._segments = []
        self._segments = [self._new_store()]
        self.keys = key_states.new_empty((b, h, 0, d))
        self.values = value_states.new_empty((b, h, 0, d))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's tokens; return stand-ins for codes attention (dense tensors otherwise)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._check_step(key_states, value_states)
        self.commit()
        t = key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self._pending = t
        self.cumulative_length += t
        owner = self.owner
        if owner is not None and owner.codes_attention_active():
            inner = kwargs.get("kwargs")
            if isinstance(inner, dict):  # 5.24+: these kwargs are unpacked into the attention call
                inner["turboquant_layer"] = self
            n = self.held_tokens
            return _stand_in(self, key_states, n), _stand_in(self, value_states, n)
        if owner is not None:
            owner.warn_dense_fallback()
        keys, values = self.dequantized()
        if self.sliding_window is not None:
            previous = keys.shape[-2] - t
            visible = min(previous, self.sliding_window - 1) + t
            keys, values = keys[:, :, -visible:], values[:, :, -visible:]
        self.commit()
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) of the next step's mask, as DynamicLayer's."""
        return self.cumulative_length + query_length, 0

    def get_seq_length(self) -> int:
        """Every token seen so far (quantized, in the window, or dropped by a sliding window)."""
        return self.cumulative_length

    def get_max_length(self) -> int:
        """-1: a full-attention layer grows without bound."""
        return -1

    def reset(self) -> None:
        """Forget every token (the layer keeps its settings)."""
        for store in self._segments:
            store.reset()
        self._segments = []
        self.keys = self.values = None
        self.is_initialized = False
        self.cumulative_length = 0
        self._dropped = 0
        self._pending = 0

    def offload(self) -> None:
        """No-op: the codes live in the packed store (offloading is not supported)."""

    def prefetch(self) -> None:
        """No-op (see `offload`)."""

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` tokens (negative, 5.25 style) or keep the first N (N >= 0)."""
        if not self.is_initialized:
            return
        self.commit()
        current = self.cumulative_length
        if tokens_to_remove < 0:
            new_len = max(current + tokens_to_remove, 0)
        elif tokens_to_remove == 0 or tokens_to_remove >= current:
            return
        else:
            new_len = tokens_to_remove
        if new_len < self._dropped:
            raise RuntimeError(
                f"layer {self.layer_idx}: cannot crop to {new_len} tokens, the sliding window already "
                f"dropped the first {self._dropped}"
            )
        rel = new_len - self._dropped
        stored = self.stored_tokens
        if rel >= stored:
            keep = rel - stored
            self.keys = self.keys[:, :, :keep].contiguous()
            self.values = self.values[:, :, :keep].contiguous()
        else:
            kept: list[Any] = []
            start = 0
            for store in self._segments:
                length = store.seq_len
                if rel < start + length:
                    store.truncate(max(rel - start, 0))
                    if store.seq_len or not kept:
                        kept.append(store)
                else:
                    kept.append(store)
                start += length
            self._segments = kept
            self.keys = self.keys[:, :, :0]
            self.values = self.values[:, :, :0]
        self.cumulative_length = new_len

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder batch rows for beam search."""
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the batch rows ``indices`` (may repeat)."""
        if not self.is_initialized:
            return
        self.commit()
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        for store in self._segments:
            if store.batch_size:
                store.select(idx.cpu().numpy())
        self.keys = self.keys.index_select(0, idx.to(self.keys.device))
        self.values = self.values.index_select(0, idx.to(self.values.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times (row-interleaved)."""
        if not self.is_initialized:
            return
        self.commit()
        for store in self._segments:
            if store.batch_size:
                store.repeat_interleave(int(repeats))
        self.keys = self.keys.repeat_interleave(repeats, dim=0)
        self.values = self.values.repeat_interleave(repeats, dim=0)

    def __deepcopy__(self, memo: dict[int, Any]) -> TurboQuantLayer:
        """An independent copy (stores copied with ``KVLayerStore.copy``; the owner through ``memo``)."""
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            if name == "_segments":
                new._segments = [store.copy() for store in value]
            else:
                setattr(new, name, copy.deepcopy(value, memo))
        return new

    # -- TurboQuant specifics ---------------------------------------------------------------------
    @property
    def store(self) -> Any:
        """The packed store new tokens go to (None before the first update)."""
        return self._segments[-1] if self._segments else None

    @property
    def stores(self) -> list[Any]:
        """Every packed store held, oldest first (one for full attention)."""
        return list(self._segments)

    @property
    def stored_tokens(self) -> int:
        """Tokens held as codes (over every store)."""
        return sum(store.seq_len for store in self._segments)

    @property
    def held_tokens(self) -> int:
        """Tokens attention sees this step: stored codes + full-precision window (+ this step's)."""
        if not self.is_initialized:
            return 0
        return self.stored_tokens + self.keys.shape[-2]

    @property
    def quantized_tokens(self) -> int:
        """Tokens held as codes."""
        return self.stored_tokens

    @property
    def nbytes(self) -> int:
        """Bytes held: the packed stores' buffers plus the full-precision window."""
        if not self.is_initialized:
            return 0
        window = self.keys.numel() * self.keys.element_size()
        window += self.values.numel() * self.values.element_size()
        return sum(int(store.nbytes) for store in self._segments) + int(window)

    def _new_store(self) -> Any:
        """An empty packed store with this layer's settings: on the GPU for a CUDA layer (when
        cupy is installed), in the Rust core otherwise."""
        gpu = _gpu_store_class(getattr(self, "device", None))
        return (gpu or _kv().KVLayerStore)(
            int(self.head_dim),
            int(self.num_kv_heads),
            self.key_bits,
            self.value_bits,
            key_outliers=self.n_outlier_channels,
            value_outliers=self.value_outlier_channels,
            outlier_bits=self.outlier_bits,
            seed=self.seed,
            sink_tokens=0 if self._segments else self.sink_tokens,  # sinks only at position 0
        )

    def _route_chunk(self, n: int) -> int:
        """How many of the ``n`` overflowing tokens to store now (sliding layers may start a store)."""
        return n

    def _drop_unseen_stores(self) -> None:
        """Drop stores no query can see any more (sliding layers)."""

    def _check_step(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Reject a step whose shape does not match what the layer holds."""
        b, h, _, d = key_states.shape
        if h != self.num_kv_heads or d != self.head_dim:
            raise ValueError(
                f"layer {self.layer_idx}: got keys with {h} heads of size {d}, the cache holds "
                f"{self.num_kv_heads} heads of size {self.head_dim} (a cache reused across models?)"
            )
        if self.keys is not None and b != self.keys.shape[0]:
            raise ValueError(
                f"layer {self.layer_idx}: batch size {b} does not match the cache's {self.keys.shape[0]} "
                "(call reset(), or batch_repeat_interleave / batch_select_indices first)"
            )
        if value_states.shape[-2] != key_states.shape[-2]:
            raise ValueError("keys and values carry different token counts")

    def _dead_tokens(self) -> int:
        """Held tokens no present or future query can see (sliding layers only)."""
        return 0

    def commit(self) -> None:
        """Quantize the tokens that left the residual window and free their full-precision copies.

        Called by the attention function once it has read this step's tokens (and by the next
        ``update()`` / crop / reorder when attention never ran).
        """
        if self._pending == 0 or self.keys is None:
            return
        self._pending = 0
        dead = self._dead_tokens() if self.stored_tokens == 0 else 0
        if dead:
            self.keys = self.keys[:, :, dead:]
            self.values = self.values[:, :, dead:]
            self._dropped += dead
        held = self.keys.shape[-2]
        n = held - self.residual_length
        if n <= 0:
            if dead:
                self.keys = self.keys.contiguous()
                self.values = self.values.contiguous()
            return
        if self.stored_tokens == 0 and self.residual_length > 0:
            # The store centres each stream on the mean of its first chunk: give it a real chunk.
            n = min(held, max(n, self.residual_length // 2))
        n = self._route_chunk(n)
        if n > 0:
            self._append_to_store(self.keys[:, :, :n], self.values[:, :, :n])
        self.keys = self.keys[:, :, n:].contiguous()
        self.values = self.values[:, :, n:].contiguous()
        self._drop_unseen_stores()

    def _append_to_store(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantize ``keys`` / ``values`` (B, H, T, D) into the store."""
        if keys.shape[-2] == 0:
            return
        if _is_gpu_store(self.store):
            self.store.append(keys, values)
        else:
            self.store.append(_cpu(keys), _cpu(values))

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense keys and values of every held token, decoded from the codes (a materialised copy).

        For inspection and for the dense fallback; the codes-reading attention never calls it.
        """
        if not self.is_initialized:
            return None, None  # type: ignore[return-value]
        parts_k, parts_v = [], []
        for store in self._segments:
            if store.seq_len == 0:
                continue
            k, v = store.decompress()
            parts_k.append(torch.as_tensor(k).to(device=self.keys.device, dtype=self.keys.dtype))
            parts_v.append(torch.as_tensor(v).to(device=self.values.device, dtype=self.values.dtype))
        if not parts_k:
            return self.keys, self.values
        return torch.cat([*parts_k, self.keys], dim=-2), torch.cat([*parts_v, self.values], dim=-2)

    def load(self, keys: torch.Tensor, values: torch.Tensor, total_length: int | None = None) -> None:
        """Fill an empty layer with the cached ``keys`` / ``values`` of an earlier forward pass.

        Args:
            keys: (B, H, T, D) keys; the last ``residual_length`` stay in full precision.
            values: (B, H, T, D) values.
            total_length: Tokens seen in total, when the source held only the last T of them (a
                sliding window); defaults to T.
        """
        if self.is_initialized and self.cumulative_length:
            raise ValueError(f"layer {self.layer_idx} already holds tokens: load() needs an empty layer")
        self.lazy_initialization(keys, values)
        t = keys.shape[-2]
        total = t if total_length is None else int(total_length)
        self._dropped = total - t
        self.cumulative_length = total
        self.keys, self.values = keys, values
        self._pending = t
        self.commit()


class TurboQuantSlidingLayer(TurboQuantLayer):
    """A sliding-window attention layer's cache (Mistral, Phi-3, Gemma-2/3 local layers, Qwen2).

    Attention sees the last ``sliding_window`` positions, so memory stays bounded like
    DynamicSlidingWindowLayer's: tokens no query can see any more are dropped while still in the
    full-precision window, and stored codes live in stores of about one window each (a packed store
    cannot drop its front), the oldest dropped whole once no query can see it: at most about two
    windows of codes are held. A new store centres its streams on the mean of its first chunk, so
    its first chunk waits for ``min(32, W // 2)`` tokens: up to that many tokens beyond
    ``residual_length`` stay full precision once per window.

    Args:
        sliding_window: The window size W (a query at position p sees keys at positions > p - W).
        **kwargs: As `TurboQuantLayer`.
    """

    is_sliding = True

    def __init__(self, *, sliding_window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sliding_window is None or int(sliding_window) < 1:
            raise ValueError(f"sliding_window must be a positive int, got {sliding_window!r}")
        self.sliding_window = int(sliding_window)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """(kv_length, kv_offset) of the next step's mask, as DynamicSlidingWindowLayer's."""
        w = self.sliding_window
        offset = max(self.cumulative_length - w + 1, 0)
        if self.cumulative_length >= w:
            return w - 1 + query_length, offset
        return self.cumulative_length + query_length, offset

    def get_max_length(self) -> int:
        """The sliding window."""
        return self.sliding_window

    def _dead_tokens(self) -> int:
        """Front tokens of the window that the next query (position = tokens seen) cannot see."""
        first_visible = self.cumulative_length - self.sliding_window + 1
        return max(0, min(first_visible - self._dropped, self.keys.shape[-2]))

    @property
    def segment_tokens(self) -> int:
        """Tokens per packed store before a new one starts (one window, at least 64)."""
        return max(self.sliding_window, 64)

    @property
    def first_chunk_tokens(self) -> int:
        """Tokens a new store's first chunk waits for (its centre comes from them)."""
        return max(1, min(32, self.sliding_window // 2))

    def _route_chunk(self, n: int) -> int:
        if self.store.seq_len < self.segment_tokens:
            return n
        if n < self.first_chunk_tokens:
            return 0
        self._segments.append(self._new_store())
        return n

    def _drop_unseen_stores(self) -> None:
        first_visible = self.cumulative_length - self.sliding_window + 1
        while len(self._segments) > 1 and self._dropped + self._segments[0].seq_len <= first_visible:
            self._dropped += self._segments[0].seq_len
            self._segments.pop(0)


_LinearLayer: Any = getattr(_cu, "LinearAttentionLayer", None)
#: State attributes of transformers' linear-attention layers (copied by `TurboQuantCache.load_from`).
_LINEAR_STATE = (
    "number_of_states",
    "conv_states",
    "recurrent_states",
    "is_conv_states_initialized",
    "is_recurrent_states_initialized",
    "has_previous_state",
    "conv_kernel_size",
    "cumulative_length_linear",
    "batch_size",
)


def _hybrid_class(attention: type[TurboQuantLayer]) -> type[TurboQuantLayer] | None:
    """A layer holding an SSM/conv state (transformers' LinearAttentionLayer) and TurboQuant KV."""
    if _LinearLayer is None:  # pragma: no cover - transformers without linear-attention layers
        return None

    class _Hybrid(_LinearLayer, attention):  # type: ignore[misc, valid-type]
        is_compileable = False

        def __init__(self, number_of_states: int = 1, **kwargs: Any) -> None:
            attention.__init__(self, **kwargs)
            _LinearLayer.__init__(self, number_of_states=number_of_states)

        def lazy_initialization(self, *args: Any, **kwargs: Any) -> None:
            # update() passes (keys, values); the conv / recurrent state updates pass keywords
            if len(args) == 2 and not kwargs:
                attention.lazy_initialization(self, *args)
            elif not args:
                _LinearLayer.lazy_initialization(self, **kwargs)

        def offload(self) -> None:
            """No-op (see TurboQuantLayer.offload)."""

        def prefetch(self) -> None:
            """No-op."""

        def reset(self) -> None:
            _LinearLayer.reset(self)
            attention.reset(self)

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            _LinearLayer.reorder_cache(self, beam_idx)
            attention.reorder_cache(self, beam_idx)

        def crop(self, tokens_to_remove: int) -> None:
            _LinearLayer.crop(self, tokens_to_remove)
            attention.crop(self, tokens_to_remove)

        def get_seq_length(self) -> int:
            return attention.get_seq_length(self)

        def get_max_length(self) -> int:
            return attention.get_max_length(self)

    _Hybrid.__name__ = _Hybrid.__qualname__ = f"{attention.__name__[:-5]}HybridLayer"
    _Hybrid.__doc__ = (
        f"A hybrid layer (Zamba2, Falcon-H1): an SSM/conv state as transformers keeps it, plus "
        f"TurboQuant KV as in `{attention.__name__}`."
    )
    return _Hybrid


#: Hybrid (state + full attention) layer class, or None where transformers has no linear layers.
TurboQuantHybridLayer = _hybrid_class(TurboQuantLayer)
#: Hybrid (state + sliding attention) layer class.
TurboQuantSlidingHybridLayer = _hybrid_class(TurboQuantSlidingLayer)


def _tp_shard(configured: int, received: int) -> bool:
    """True when ``received`` KV heads are one tensor-parallel rank's share of the ``configured`` ones.

    Under transformers' tensor parallelism (``tp_plan="auto"`` under torchrun) k_proj / v_proj are
    split column-wise, so each rank's attention sees ``num_key_value_heads / tp`` heads while the
    config keeps the global count. The layer then sizes its store from the heads it receives: each
    rank quantizes and attends over its own heads (the rotations depend on head_dim and seed only, so
    a rank's codes are the single-process codes of those heads) and nothing is gathered.
    """
    if received < 1 or received >= configured or configured % received:
        return False
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size() % (configured // received) == 0


def _is_gpu_store(store: Any) -> bool:
    """Whether ``store`` keeps its codes on the GPU (``cuda.kv_store.GpuKVLayerStore``)."""
    return type(store).__name__ == "GpuKVLayerStore"


def _cpu(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, contiguous and on the CPU (the packed engine's device)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.contiguous()


def _stand_in(layer: TurboQuantLayer, like: torch.Tensor, n: int) -> torch.Tensor:
    """A zero-memory (B, H, n, D) tensor carrying a reference to ``layer``."""
    b, h, _, d = like.shape
    t = torch.empty((), dtype=like.dtype, device=like.device).expand(b, h, n, d)
    t.turboquant_layer = layer  # type: ignore[attr-defined]
    return t


# --------------------------------------------------------------------------------------------------
# the cache


def _fingerprint(tc: Any) -> tuple[Any, ...]:
    """Shape-defining fields of a decoder config (to catch a cache reused across models)."""
    try:
        dims = _head_dims(tc)
    except ValueError:
        dims = None
    return (getattr(tc, "model_type", None), getattr(tc, "num_hidden_layers", None), dims)


class TurboQuantCache(Cache):
    """A transformers ``Cache`` that stores KV as TurboQuant codes and whose attention reads them.

    Use as ``model.generate(**inputs, past_key_values=TurboQuantCache(model.config, bit_width=4))``
    (or ``cache=`` on transformers 5.24+) after switching the model to ``attn_implementation=
    "turboquant"``, or build both in one call with `TurboQuantCache.from_model`.

    Args:
        config: The model's config (its decoder/text config is used).
        bit_width: Bits per coordinate for keys and values (1-8).
        residual_length: Most recent tokens per layer kept in full precision; 0 quantizes everything
            stored (the current step's tokens always attend to themselves exactly).
        key_bit_width: Bits for keys (default ``bit_width``).
        value_bit_width: Bits for values (default ``bit_width``).
        n_outlier_channels: Key outlier channels per head (0, or 2..head_dim-2) split off at
            ``outlier_bits`` (the paper's outlier split).
        layer_bits: Per-layer bits, one entry per decoder layer: a width (keys and values) or a
            ``(key_bits, value_bits)`` pair, a width being an int 1..8 or a half 1.5..7.5 (half of
            the channels one bit wider, the outlier split); entries of non-attention layers are
            ignored.
        seed: Seed of the quantizers' random rotations (layer i uses ``seed + i``).
        value_outlier_channels: Value outlier channels per head (0, or 2..head_dim-2).
        outlier_bits: Bits of the outlier channels (default: one more than the side's bits).
        sink_tokens: First tokens of the sequence kept exact in the input dtype in every layer
            (default 1, the attention sink: measured on SmolLM2 it takes 4-bit perplexity from
            +1.9% to +0.5%).

    Raises:
        ValueError: For configs without attention layers, MLA configs (``kv_lora_rank``), chunked
            attention, bits out of range, or a ``layer_bits`` of the wrong length.
    """

    def __init__(
        self,
        config: Any,
        bit_width: int = 4,
        residual_length: int = 128,
        key_bit_width: int | None = None,
        value_bit_width: int | None = None,
        n_outlier_channels: int = 0,
        layer_bits: Sequence[int | tuple[int, int]] | None = None,
        seed: int = 0,
        value_outlier_channels: int = 0,
        outlier_bits: int | None = None,
        sink_tokens: int = 1,
    ) -> None:
        register_turboquant_attention()
        if config is None:
            raise ValueError("TurboQuantCache needs the model's config")
        tc = _text_config(config)
        self._tq_config = tc
        self._tq_top_config = getattr(config, "config", config)
        self._tq_fingerprint = _fingerprint(tc)
        self._warned_dense = False
        self.bit_width = _check_bits(bit_width, "bit_width")
        self.key_bit_width = _check_bits(
            key_bit_width if key_bit_width is not None else bit_width, "key_bit_width"
        )
        self.value_bit_width = _check_bits(
            value_bit_width if value_bit_width is not None else bit_width, "value_bit_width"
        )
        if residual_length < 0:
            raise ValueError(f"residual_length must be >= 0, got {residual_length}")
        self.residual_length = int(residual_length)
        self.n_outlier_channels = int(n_outlier_channels)
        self.value_outlier_channels = int(value_outlier_channels)
        self.outlier_bits = None if outlier_bits is None else _check_bits(outlier_bits, "outlier_bits")
        self.seed = int(seed)
        if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
            raise ValueError(f"sink_tokens must be a non-negative integer, got {sink_tokens!r}")
        self.sink_tokens = sink_tokens
        layers = self._build_layers(tc, layer_bits)
        super().__init__(layers=layers)

    # -- construction ------------------------------------------------------------------------------
    def _layer_kwargs(self, i: int, head_dim: int, n_kv: int, bits: Any) -> dict[str, Any]:
        """Constructor arguments of the TurboQuant layer at index ``i``."""
        if bits is None:
            kb, vb = self.key_bit_width, self.value_bit_width
        elif isinstance(bits, (tuple, list)):
            if len(bits) != 2:
                raise ValueError(f"layer_bits[{i}] must be an int or a (key, value) pair, got {bits!r}")
            kb, vb = bits
        else:
            kb = vb = bits
        k_out, v_out = self.n_outlier_channels, self.value_outlier_channels
        if bits is not None:  # a half width is the outlier split of that side
            kb, vb, k_out, v_out = _kv().split_widths(kb, vb, head_dim, f"layer_bits[{i}]", k_out, v_out)
        return {
            "head_dim": head_dim,
            "num_kv_heads": n_kv,
            "key_bits": _check_bits(kb, f"layer_bits[{i}] (keys)"),
            "value_bits": _check_bits(vb, f"layer_bits[{i}] (values)"),
            "residual_length": self.residual_length,
            "n_outlier_channels": k_out,
            "value_outlier_channels": v_out,
            "outlier_bits": self.outlier_bits,
            "seed": self.seed + i,
            "owner": self,
            "layer_idx": i,
            "sink_tokens": self.sink_tokens,
        }

    def _build_layers(self, tc: Any, layer_bits: Sequence[Any] | None) -> list[Any]:
        """One layer object per decoder layer, by kind."""
        if is_latent_kv_config(tc):
            raise ValueError(
                "this model uses Multi-head Latent Attention (MLA, kv_lora_rank set, DeepSeek-V2/V3): "
                "its cache holds latents and keys/values are rebuilt inside attention, so TurboQuant "
                "codes cannot reach attention. Keep the model's own DynamicCache."
            )
        try:
            head_dim, n_kv, _ = _head_dims(tc)
        except ValueError as err:
            raise ValueError(
                f"config {type(tc).__name__} has no attention layers ({err}): there is no KV cache to "
                "quantize (SSM/RNN models such as Mamba or RWKV keep a state, not keys and values)"
            ) from err
        for name, n in (
            ("n_outlier_channels", self.n_outlier_channels),
            ("value_outlier_channels", self.value_outlier_channels),
        ):
            if n != 0 and not 2 <= n <= head_dim - 2:
                raise ValueError(f"{name} must be 0 or in 2..{head_dim - 2} (head_dim {head_dim}), got {n}")
        kinds, windows = layer_plan(tc)
        if not any(k in ATTENTION_KINDS or k.startswith("hybrid") for k in kinds):
            raise ValueError(
                f"config {type(tc).__name__} has no attention layers (layer kinds {sorted(set(kinds))}): "
                "there is no KV cache to quantize"
            )
        if layer_bits is not None and len(layer_bits) != len(kinds):
            raise ValueError(f"layer_bits has {len(layer_bits)} entries, the model has {len(kinds)} layers")
        layers: list[Any] = []
        for i, (kind, window) in enumerate(zip(kinds, windows, strict=True)):
            bits = None if layer_bits is None else layer_bits[i]
            if kind == "full_attention":
                layers.append(TurboQuantLayer(**self._layer_kwargs(i, head_dim, n_kv, bits)))
            elif kind == "sliding_attention":
                layers.append(
                    TurboQuantSlidingLayer(
                        sliding_window=window, **self._layer_kwargs(i, head_dim, n_kv, bits)
                    )
                )
            elif kind == "chunked_attention":
                raise ValueError(
                    f"layer {i} uses chunked attention (attention_chunk_size): not supported by "
                    "TurboQuantCache's attention"
                )
            elif kind in ("hybrid", "hybrid_sliding") and TurboQuantHybridLayer is not None:
                kw = self._layer_kwargs(i, head_dim, n_kv, bits)
                kw["number_of_states"] = getattr(tc, "number_of_conv_states", 1)
                if kind == "hybrid":
                    layers.append(TurboQuantHybridLayer(**kw))
                else:
                    layers.append(TurboQuantSlidingHybridLayer(sliding_window=window, **kw))
            elif kind in _cu.DYNAMIC_LAYER_TYPE_MAPPING:
                # No KV (conv / linear attention / dummy): transformers' own layer, as DynamicCache.
                cls = _cu.DYNAMIC_LAYER_TYPE_MAPPING[kind]
                kw = {"number_of_states": getattr(tc, "number_of_conv_states", 1)}
                try:
                    layers.append(cls(**kw))
                except TypeError:
                    layers.append(cls())
            else:
                raise ValueError(f"layer {i} has kind '{kind}', which TurboQuantCache does not handle")
        return layers

    @classmethod
    def from_model(cls, model: Any, bit_width: int = 4, **kwargs: Any) -> Any:
        """Build a cache for ``model`` and switch the model to the codes-reading attention.

        Args:
            model: A transformers model.
            bit_width: Bits per coordinate.
            **kwargs: The other `TurboQuantCache` arguments.

        Returns:
            The cache; for encoder-decoder models an ``EncoderDecoderCache`` whose self-attention
            cache is a `TurboQuantCache` (cross-attention stays a DynamicCache).
        """
        if getattr(_text_config(model.config), "relative_attention_num_buckets", None) is not None:
            raise ValueError(
                "this model adds a relative position bias to its attention scores (T5 style), which "
                "attention computed from codes cannot apply. TurboQuantCache(model.config) with the "
                "model's own attention works, through the (warned) dense dequantizing fallback."
            )
        cache = cls(model.config, bit_width=bit_width, **kwargs)
        enable_turboquant_attention(model)
        if getattr(model.config, "is_encoder_decoder", False):
            return EncoderDecoderCache(cache, DynamicCache())
        return cache

    # -- state -------------------------------------------------------------------------------------
    def codes_attention_active(self) -> bool:
        """True when the model this cache serves runs the ``"turboquant"`` attention."""
        for cfg in (self._tq_config, self._tq_top_config):
            if getattr(cfg, "_attn_implementation", None) == ATTN_IMPLEMENTATION:
                return True
        return False

    def warn_dense_fallback(self) -> None:
        """Warn (once per cache) that attention is reading dense dequantized tensors."""
        if self._warned_dense:
            return
        self._warned_dense = True
        impl = getattr(self._tq_config, "_attn_implementation", None)
        warnings.warn(
            f"TurboQuantCache: the model runs attn_implementation={impl!r}, not 'turboquant', so every "
            "step hands attention dense dequantized K/V (a full-size copy). Use "
            "TurboQuantCache.from_model(model) or model.set_attn_implementation('turboquant') for "
            "attention computed from the codes.",
            stacklevel=3,
        )

    def check_module(self, module: Any) -> None:
        """Raise if ``module`` belongs to a model whose shapes differ from the cache's config."""
        mc = getattr(module, "config", None)
        if mc is None or mc is self._tq_config:
            return
        if _fingerprint(_text_config(mc)) != self._tq_fingerprint:
            raise ValueError(
                "TurboQuantCache was built for a different model (config "
                f"{self._tq_fingerprint}) than the one running attention: build one cache per model"
            )

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache: packed codes plus full-precision windows (and non-KV states)."""
        total = 0
        for layer in self.layers:
            n = getattr(layer, "nbytes", None)
            if isinstance(n, int):
                total += n
                continue
            for name in ("conv_states", "recurrent_states"):
                states = getattr(layer, name, None)
                values = states.values() if isinstance(states, dict) else (states or [])
                for s in values:
                    if isinstance(s, torch.Tensor):
                        total += s.numel() * s.element_size()
        return total

    @property
    def quantized_tokens(self) -> list[int]:
        """Tokens held as codes, per layer (0 for layers without KV)."""
        return [getattr(layer, "quantized_tokens", 0) for layer in self.layers]

    def commit(self) -> None:
        """Quantize every layer's tokens that left its residual window (normally done by attention)."""
        for layer in self.layers:
            if isinstance(layer, TurboQuantLayer):
                layer.commit()

    def load_from(self, source: Any) -> None:
        """Fill this (empty) cache with the KV of another cache, e.g. a DynamicCache after a prefill.

        Attention layers are quantized (the last ``residual_length`` tokens stay full precision);
        layers without KV (conv / SSM states of hybrids) are copied.

        Raises:
            ValueError: If the source has a different number of layers or shapes than the config.
        """
        import copy

        src_layers = getattr(source, "layers", None)
        if src_layers is None:
            src_layers = None
            pairs = [(k, v) for k, v in source]
        if src_layers is not None and len(src_layers) != len(self.layers):
            raise ValueError(f"source cache has {len(src_layers)} layers, this cache {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            if isinstance(layer, TurboQuantLayer):
                if src_layers is not None:
                    src = src_layers[i]
                    k, v = getattr(src, "keys", None), getattr(src, "values", None)
                    total = src.get_seq_length() if hasattr(src, "get_seq_length") else None
                else:
                    k, v = pairs[i]
                    total = None
                if _LinearLayer is not None and isinstance(layer, _LinearLayer) and src_layers is not None:
                    # hybrid: the SSM / conv state travels as it is
                    for name in _LINEAR_STATE:
                        if hasattr(src_layers[i], name):
                            setattr(layer, name, copy.deepcopy(getattr(src_layers[i], name)))
                if k is None or v is None or k.ndim != 4 or k.shape[-2] == 0:
                    continue
                layer.load(k, v, total_length=total)
            elif src_layers is not None:
                self.layers[i] = copy.deepcopy(src_layers[i])


# --------------------------------------------------------------------------------------------------
# attention and mask functions


def _allowed_from_mask(mask: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Bool "may attend" of a 4-D mask (bool, or additive float)."""
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    return allowed[..., -n_keys:] if allowed.shape[-1] >= n_keys else allowed


def _key_valid(mask: Any, n_keys: int, batch: int) -> torch.Tensor | None:
    """(B, n_keys) bool key validity (False = padding) from the mask the model passes, or None."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return None
    if mask.ndim == 4:
        allowed = _allowed_from_mask(mask, n_keys)
        valid = allowed.any(dim=-2)[:, 0]
    elif mask.ndim == 2:
        valid = mask if mask.dtype == torch.bool else mask != 0
    else:
        raise ValueError(f"turboquant attention got a mask of shape {tuple(mask.shape)}")
    length = valid.shape[-1]
    if length >= n_keys:
        valid = valid[:, length - n_keys :]
    else:  # keys older than the mask: not padding
        pad = torch.ones((valid.shape[0], n_keys - length), dtype=torch.bool, device=valid.device)
        valid = torch.cat([pad, valid], dim=-1)
    if valid.shape[0] != batch:
        valid = valid.expand(batch, -1) if valid.shape[0] == 1 else valid
    if bool(valid.all()):
        return None
    return valid


def _dense_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *,
    scaling: float,
    sliding_window: int | None,
    softcap: float | None,
    position_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Exact attention over real (B, Hkv, K, D) tensors: encoder, cross-attention, DynamicCache."""
    b, hq, q_len, _ = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    if hq != hkv:
        key = key.repeat_interleave(hq // hkv, dim=1)
        value = value.repeat_interleave(hq // hkv, dim=1)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias.float()
    qpos = torch.arange(k_len - q_len, k_len, device=query.device)[:, None]
    kpos = torch.arange(k_len, device=query.device)[None, :]
    allowed = torch.ones((q_len, k_len), dtype=torch.bool, device=query.device)
    if getattr(module, "is_causal", True):
        allowed &= kpos <= qpos
        if sliding_window is not None:
            allowed &= kpos > qpos - sliding_window
    elif sliding_window is not None:
        allowed &= (kpos - qpos).abs() < sliding_window
    allowed4 = allowed[None, None]
    if isinstance(attention_mask, torch.Tensor):
        if attention_mask.ndim == 4:
            allowed4 = allowed4 & _allowed_from_mask(attention_mask, k_len)
        else:
            valid = _key_valid(attention_mask, k_len, b)
            if valid is not None:
                allowed4 = allowed4 & valid[:, None, None, :]
    scores = scores.masked_fill(~allowed4, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.matmul(probs, value.float()).to(query.dtype)


def _multi_store_attention(
    query: torch.Tensor,
    stores: list[Any],
    extra_keys: torch.Tensor,
    extra_values: torch.Tensor,
    *,
    scaling: float,
    softcap: float | None,
    sliding_window: int | None,
    key_valid: torch.Tensor | None,
) -> torch.Tensor:
    """`packed_attention` over several consecutive stores: each store's part read from its codes
    (``KVLayerStore.attend``: output + log-sum-exp; the extras join the last store's softmax
    exactly), merged in one softmax."""
    b, hq, q_len, d = query.shape
    lengths = [store.seq_len for store in stores]
    n = sum(lengths)
    e = extra_keys.shape[-2]
    total = n + e
    pos = torch.arange(total - q_len, total)
    lo = torch.zeros_like(pos) if sliding_window is None else pos - int(sliding_window) + 1
    hi = pos + 1
    q32 = query.detach().float().contiguous()
    extra = None
    if e > 0:
        kpos = torch.arange(n, total)
        allowed = ((kpos[None, :] <= pos[:, None]) & (kpos[None, :] >= lo[:, None]))[None].expand(b, -1, -1)
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, n:].cpu()
        extra = (
            extra_keys.detach().float().contiguous().numpy(),
            extra_values.detach().float().contiguous().numpy(),
            allowed.contiguous().numpy(),
        )
    outs: list[torch.Tensor] = []
    lses: list[torch.Tensor] = []
    offset = 0
    for i, (store, length) in enumerate(zip(stores, lengths, strict=True)):
        lo_s = (lo - offset).clamp(0, length).expand(b, q_len).clone()
        hi_s = (hi - offset).clamp(0, length).expand(b, q_len).clone()
        if key_valid is not None:
            start, end = _kv().contiguous_runs(key_valid[:, offset : offset + length])
            lo_s = torch.maximum(lo_s, torch.from_numpy(start)[:, None])
            hi_s = torch.minimum(hi_s, torch.from_numpy(end)[:, None])
        offset += length
        joined = extra if i == len(stores) - 1 else None
        if joined is None and bool((hi_s <= lo_s).all()):
            continue
        out, lse = store.attend(
            q32, lo_s.numpy(), hi_s.numpy(), scaling=scaling, softcap=softcap, extra=joined
        )
        outs.append(torch.from_numpy(out))
        lses.append(torch.from_numpy(lse))
    if not outs:
        return torch.zeros_like(query)
    lse_all = torch.stack(lses)  # (parts, B, Hq, Q)
    top = lse_all.max(dim=0).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lse_all - top)  # 0 where a part is empty
    den = w.sum(dim=0)
    merged = (w[..., None] * torch.stack(outs)).sum(dim=0) / torch.where(den > 0, den, torch.ones_like(den))[
        ..., None
    ]
    return merged.to(query.dtype)


def _gpu_attention(
    query: torch.Tensor,
    layer: TurboQuantLayer,
    stores: list[Any],
    valid: torch.Tensor | None,
    scaling: float,
    softcap: float | None,
    window: int | None,
) -> torch.Tensor:
    """The GPU branch of `turboquant_attention`: one store's codes read by the decode kernels
    (`cuda.kv_store.gpu_packed_attention`). A sliding layer holding several stores (each at most
    a window's worth of tokens) decodes the older ones and attends exactly over the window."""
    from .cuda.kv_store import gpu_packed_attention

    keys, values = layer.keys, layer.values
    if len(stores) > 1:
        parts = [store.decompress() for store in stores]
        keys = torch.cat([*(k.to(keys.dtype) for k, _ in parts), keys], dim=-2)
        values = torch.cat([*(v.to(values.dtype) for _, v in parts), values], dim=-2)
        stores = []
    return gpu_packed_attention(
        query,
        stores[0] if stores else None,
        keys,
        values,
        scaling=scaling,
        softcap=softcap,
        sliding_window=window,
        key_valid=valid,
    )


def turboquant_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``"turboquant"`` attention function (transformers' AttentionInterface signature).

    With keys from a `TurboQuantCache` layer (zero-memory stand-ins), computes exact softmax
    attention over the layer's stored codes plus its full-precision extras with
    `turboquant_rs.kv_cache.packed_attention`, honouring padding (the mask), GQA, the layer's sliding
    window and ``softcap``, then quantizes the tokens that left the residual window. With real
    tensors (encoders, cross-attention, other caches) computes ordinary attention.

    Returns:
        ``(output (B, q, H, D) contiguous, None)``.
    """
    layer = getattr(key, "turboquant_layer", None)
    if layer is None:
        layer = kwargs.get("turboquant_layer")
        if layer is not None and key.stride()[-1] != 0:
            layer = None  # a real tensor: the entry belongs to another call
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    position_bias = kwargs.get("position_bias")
    if layer is None:
        out = _dense_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            scaling=scaling,
            sliding_window=sliding_window,
            softcap=softcap,
            position_bias=position_bias,
        )
        return out.transpose(1, 2).contiguous(), None
    if position_bias is not None and bool(torch.any(position_bias != 0)):
        raise NotImplementedError(
            "an additive position bias (T5 relative attention) cannot be applied to attention computed "
            "from codes; use attn_implementation='eager' (dense dequantizing fallback) for this model"
        )
    if layer.owner is not None:
        layer.owner.check_module(module)
    n_keys = layer.held_tokens
    valid = _key_valid(attention_mask, n_keys, query.shape[0])
    window = layer.sliding_window if layer.sliding_window is not None else sliding_window
    stores = [store for store in layer.stores if store.seq_len > 0]
    if query.device.type == "cuda" and _is_gpu_store(layer.store):
        out = _gpu_attention(query, layer, stores, valid, float(scaling), softcap, window)
        layer.commit()
        return out.transpose(1, 2).contiguous(), None
    device = query.device
    query, extra_k, extra_v = _cpu(query), _cpu(layer.keys), _cpu(layer.values)
    if valid is not None:
        valid = valid.cpu()
    if len(stores) <= 1:
        out = _kv().packed_attention(
            query,
            stores[0] if stores else None,
            extra_k,
            extra_v,
            scaling=float(scaling),
            softcap=softcap,
            sliding_window=window,
            key_valid=valid,
        )
    else:
        out = _multi_store_attention(
            query,
            stores,
            extra_k,
            extra_v,
            scaling=float(scaling),
            softcap=softcap,
            sliding_window=window,
            key_valid=valid,
        )
    layer.commit()
    return out.to(device).transpose(1, 2).contiguous(), None


def turboquant_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The ``"turboquant"`` mask function: the 2-D padding mask (B, seen + q), or None without padding.

    Causality and sliding windows are applied inside `turboquant_attention`, so only key validity
    travels; a 4-D mask passed by the caller goes through unchanged.
    """
    if attention_mask is None or not isinstance(attention_mask, torch.Tensor):
        return None
    if attention_mask.ndim != 2:
        return attention_mask
    mask = attention_mask.to(torch.bool)
    if bool(mask.all()):
        return None
    return mask


_REGISTERED = False


def register_turboquant_attention() -> str:
    """Register the ``"turboquant"`` attention and mask functions with transformers (idempotent).

    Returns:
        The implementation name, for ``attn_implementation=``.
    """
    global _REGISTERED
    if not _REGISTERED:
        AttentionInterface.register(ATTN_IMPLEMENTATION, turboquant_attention)
        AttentionMaskInterface.register(ATTN_IMPLEMENTATION, turboquant_mask)
        _REGISTERED = True
    return ATTN_IMPLEMENTATION


def enable_turboquant_attention(model: Any) -> Any:
    """Switch ``model`` (and its sub-models) to the ``"turboquant"`` attention; returns the model."""
    register_turboquant_attention()
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(ATTN_IMPLEMENTATION)
    else:  # pragma: no cover - pre-5 models
        model.config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def cache_argument_name(model: Any) -> str:
    """``"cache"`` where the model's forward takes it (transformers 5.24+), else ``"past_key_values"``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


# --------------------------------------------------------------------------------------------------
# the seed library's names


def _auto_bits(info: ModelKVInfo) -> int:
    """The seed's default: 3 bits for head_dim >= 128, else 4."""
    return 3 if info.head_dim >= 128 else 4


class TurboQuantDynamicCache(TurboQuantCache):
    """The seed's ``TurboQuantDynamicCache`` name, compressing during generation for real.

    Args:
        bit_width: Bits per coordinate.
        residual_length: Most recent tokens kept in full precision (the seed's default, 0).
        n_outlier_channels: Outlier channels split off at a higher bit width.
        model_info: A `ModelKVInfo` (from `detect_model_kv_info`) that gives the model's config.
        config: The model config (used when ``model_info`` carries none).
        **kwargs: The other `TurboQuantCache` arguments.

    Without a config (neither argument) the layers are created as updates arrive (all full
    attention) and attention gets dense dequantized tensors, with a warning: the cache cannot know
    the model's attention implementation. Build it with `TurboQuantDynamicCache.from_model`.
    """

    def __init__(
        self,
        bit_width: int = 3,
        residual_length: int = 0,
        n_outlier_channels: int = 0,
        model_info: ModelKVInfo | None = None,
        *,
        config: Any = None,
        **kwargs: Any,
    ) -> None:
        self.model_info = model_info
        if config is None and model_info is not None:
            config = model_info.config
        if config is not None:
            super().__init__(
                config,
                bit_width=bit_width,
                residual_length=residual_length,
                n_outlier_channels=n_outlier_channels,
                **kwargs,
            )
            return
        register_turboquant_attention()
        self._tq_config = None
        self._tq_top_config = None
        self._tq_fingerprint = None
        self._warned_dense = False
        self.bit_width = self.key_bit_width = self.value_bit_width = _check_bits(bit_width, "bit_width")
        self.residual_length = int(residual_length)
        self.n_outlier_channels = int(n_outlier_channels)
        self.value_outlier_channels = int(kwargs.get("value_outlier_channels", 0))
        self.outlier_bits = kwargs.get("outlier_bits")
        self.seed = int(kwargs.get("seed", 0))
        Cache.__init__(self, layer_class_to_replicate=_LazyLayerFactory(self))  # type: ignore[arg-type]

    @staticmethod
    def from_model(model: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """A cache for ``model`` (bits 3 if head_dim >= 128 else 4 unless given); switches attention."""
        info = detect_model_kv_info(model)
        kwargs.setdefault("bit_width", _auto_bits(info))
        cache = TurboQuantDynamicCache(model_info=info, **kwargs)
        enable_turboquant_attention(model)
        if info.is_encoder_decoder:
            return EncoderDecoderCache(cache, DynamicCache())
        return cache

    @property
    def key_cache(self) -> list[torch.Tensor | None]:
        """Per-layer dense keys decoded from the codes (a materialised copy, for inspection)."""
        return [
            layer.dequantized()[0] if isinstance(layer, TurboQuantLayer) else None for layer in self.layers
        ]

    @property
    def value_cache(self) -> list[torch.Tensor | None]:
        """Per-layer dense values decoded from the codes (a materialised copy, for inspection)."""
        return [
            layer.dequantized()[1] if isinstance(layer, TurboQuantLayer) else None for layer in self.layers
        ]

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        """Iterate (keys, values) per layer, decoded (see `key_cache`)."""
        yield from zip(self.key_cache, self.value_cache, strict=True)

    def __getitem__(self, idx: int) -> tuple[Any, Any]:
        """(keys, values) of layer ``idx``, decoded (see `key_cache`)."""
        return self.key_cache[idx], self.value_cache[idx]

    def to_legacy_cache(self) -> tuple[tuple[Any, Any], ...]:
        """Tuple of decoded (keys, values) per layer."""
        return tuple(zip(self.key_cache, self.value_cache, strict=True))

    def compress_all(self) -> dict[str, Any]:
        """Quantize every layer's full-precision window now and report the bytes held.

        Returns:
            ``layers_compressed``, ``layers_skipped``, ``original_mb`` (fp16 size of the tokens held),
            ``compressed_mb`` (bytes held) and ``ratio``.
        """
        done = skipped = 0
        original = 0
        for layer in self.layers:
            if not isinstance(layer, TurboQuantLayer) or not layer.is_initialized:
                skipped += 1
                continue
            if layer.keys.shape[-2]:
                layer._append_to_store(layer.keys, layer.values)
                layer.keys = layer.keys[:, :, :0]
                layer.values = layer.values[:, :, :0]
                layer._pending = 0
            b = layer.keys.shape[0]
            original += 2 * b * layer.num_kv_heads * layer.stored_tokens * layer.head_dim * 2
            done += 1
        held = self.nbytes
        return {
            "layers_compressed": done,
            "layers_skipped": skipped,
            "original_mb": original / 2**20,
            "compressed_mb": held / 2**20,
            "ratio": original / held if held else 0.0,
        }


class _LazyLayerFactory:
    """Builds full-attention layers for a config-less `TurboQuantDynamicCache`, one per new index."""

    def __init__(self, cache: TurboQuantDynamicCache) -> None:
        self.cache = cache

    def __call__(self) -> TurboQuantLayer:
        c = self.cache
        i = len(c.layers)
        return TurboQuantLayer(
            head_dim=None,
            num_kv_heads=None,
            key_bits=c.key_bit_width,
            value_bits=c.value_bit_width,
            residual_length=c.residual_length,
            n_outlier_channels=c.n_outlier_channels,
            value_outlier_channels=c.value_outlier_channels,
            outlier_bits=c.outlier_bits,
            seed=c.seed + i,
            owner=c,
            layer_idx=i,
        )


class TurboQuantWrapper:
    """The seed's ``TurboQuantWrapper``: a model whose ``generate()`` runs on a TurboQuant cache.

    Switches the model to the codes-reading attention, and gives every ``generate()`` call without a
    cache of its own a fresh `TurboQuantCache`. Other attributes reach the wrapped model.

    Args:
        model: A transformers model.
        bit_width: Bits per coordinate, or None for 3 bits at head_dim >= 128 and 4 below.
        residual_length: Most recent tokens kept in full precision.
        n_outlier_channels: Outlier channels split off at a higher bit width.
        verbose: Print the bytes held after each ``generate()``.
        **cache_kwargs: Other `TurboQuantCache` arguments (key_bit_width, layer_bits, seed...).
    """

    def __init__(
        self,
        model: Any,
        bit_width: int | None = None,
        residual_length: int = 0,
        n_outlier_channels: int = 0,
        verbose: bool = False,
        **cache_kwargs: Any,
    ) -> None:
        self._model = model
        self._info = detect_model_kv_info(model)
        self._bit_width = _check_bits(
            bit_width if bit_width is not None else _auto_bits(self._info), "bit_width"
        )
        self._residual_length = residual_length
        self._n_outlier_channels = n_outlier_channels
        self._verbose = verbose
        self._cache_kwargs = cache_kwargs
        self.last_cache: Any = None
        enable_turboquant_attention(model)

    def make_cache(self) -> Any:
        """A fresh cache for the wrapped model."""
        return TurboQuantCache.from_model(
            self._model,
            bit_width=self._bit_width,
            residual_length=self._residual_length,
            n_outlier_channels=self._n_outlier_channels,
            **self._cache_kwargs,
        )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with a fresh TurboQuant cache unless one is passed."""
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            kwargs.pop("past_key_values", None)
            kwargs.pop("cache", None)
            kwargs[cache_argument_name(self._model)] = self.make_cache()
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self.last_cache = cache
        result = self._model.generate(*args, **kwargs)
        if self._verbose:
            held = getattr(getattr(cache, "self_attention_cache", cache), "nbytes", 0)
            print(f"TurboQuant: cache holds {held / 2**20:.2f} MiB")
        return result

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward."""
        return self._model(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward."""
        return self.forward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Reach the wrapped model's attributes."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._model, name)

    @property
    def model(self) -> Any:
        """The wrapped model."""
        return self._model

    @property
    def config(self) -> Any:
        """The wrapped model's config."""
        return self._model.config

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model's parameters."""
        return next(self._model.parameters()).device

    def to(self, *args: Any, **kwargs: Any) -> TurboQuantWrapper:
        """Move the wrapped model; returns the wrapper."""
        self._model.to(*args, **kwargs)
        return self

    def eval(self) -> TurboQuantWrapper:
        """Put the wrapped model in eval mode; returns the wrapper."""
        self._model.eval()
        return self

    def __repr__(self) -> str:
        return (
            f"TurboQuantWrapper(bit_width={self._bit_width}, residual_length={self._residual_length}, "
            f"model={type(self._model).__name__})"
        )


def wrap(
    model: Any,
    bit_width: int | None = None,
    residual_length: int = 0,
    n_outlier_channels: int = 0,
    verbose: bool = False,
    **cache_kwargs: Any,
) -> TurboQuantWrapper:
    """Wrap a transformers model so that ``generate()`` keeps its KV cache as TurboQuant codes.

    Args:
        model: A transformers model.
        bit_width: Bits per coordinate, or None for 3 bits at head_dim >= 128 and 4 below.
        residual_length: Most recent tokens kept in full precision.
        n_outlier_channels: Outlier channels split off at a higher bit width.
        verbose: Print the bytes held after each ``generate()``.
        **cache_kwargs: Other `TurboQuantCache` arguments.

    Returns:
        A `TurboQuantWrapper`.
    """
    return TurboQuantWrapper(
        model,
        bit_width=bit_width,
        residual_length=residual_length,
        n_outlier_channels=n_outlier_channels,
        verbose=verbose,
        **cache_kwargs,
    )


register_turboquant_attention()
