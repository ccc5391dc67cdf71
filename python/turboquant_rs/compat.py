"""Model compatibility helpers: what a model's KV cache looks like, and compressing one.

`detect_model_kv_info` reads a transformers model (or its config) and reports the KV layout of every
layer: head size, KV and query heads, which layers are attention (full or sliding window), which hold
no KV (Mamba / conv / linear-attention layers of hybrids), and whether the model caches latents (MLA,
DeepSeek-V2/V3), where codes cannot reach attention.

`compress_model_kv` turns a filled transformers cache into a live `TurboQuantCache` holding packed
codes, which `generate()` continues from; `extract_kv` reads per-layer (key, value) tensors from any
cache format.

This module imports with the standard library alone; torch and transformers are imported inside
the functions that need them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ATTENTION_KINDS",
    "NO_KV_KINDS",
    "ModelKVInfo",
    "compress_model_kv",
    "detect_model_kv_info",
    "extract_kv",
]

#: Layer kinds whose layers cache keys and values (sliding and chunked keep a window of them).
ATTENTION_KINDS = ("full_attention", "sliding_attention", "chunked_attention")
#: Layer kinds that hold a recurrent / convolution state (or nothing) and no per-token KV.
NO_KV_KINDS = ("linear_attention", "conv", "mamba", "dummy", "moe", "mlp")


@dataclass
class ModelKVInfo:
    """KV cache layout of a model, as read from its config.

    Args:
        n_layers: Total number of decoder layers (attention and non-attention).
        head_dim: Size of one attention head.
        num_kv_heads: Number of key/value heads.
        num_query_heads: Number of query heads (a multiple of ``num_kv_heads`` under GQA/MQA).
        cache_format: Cache format seen by `extract_kv` (``"layers"``, ``"encoder_decoder"``,
            ``"legacy"``), filled when known.
        attention_layers: Indices of the layers that cache keys and values.
        skip_layers: Indices of the layers that hold no KV (SSM / conv / linear attention).
        sliding_window: The config's sliding window, or None.
        shared_kv_layers: Layers that reuse another layer's KV (cross-layer sharing), or None.
        is_latent_kv: True for Multi-head Latent Attention (DeepSeek-V2/V3): the cache holds
            latents and keys/values are rebuilt before attention, so codes cannot reach attention.
        layer_types: Per-layer kind (``full_attention``, ``sliding_attention``, ``chunked_attention``,
            ``linear_attention``, ``conv``, ``hybrid``, ``dummy``...), as transformers' cache sees it.
        sliding_windows: Per-layer sliding window (None for full attention and non-attention layers).
        is_encoder_decoder: True for encoder-decoder models (T5, BART): only the decoder's
            self-attention KV is cached by `TurboQuantCache`; cross-attention stays dense.
        model_type: The config's ``model_type``.
        config: The decoder (text) config the info was read from (not part of equality or repr).
    """

    n_layers: int
    head_dim: int
    num_kv_heads: int
    num_query_heads: int
    cache_format: str | None = None
    attention_layers: list[int] = field(default_factory=list)
    skip_layers: list[int] = field(default_factory=list)
    sliding_window: int | None = None
    shared_kv_layers: list[int] | None = None
    is_latent_kv: bool = False
    layer_types: list[str] = field(default_factory=list)
    sliding_windows: list[int | None] = field(default_factory=list)
    is_encoder_decoder: bool = False
    model_type: str | None = None
    config: Any = field(default=None, repr=False, compare=False)

    @property
    def is_gqa(self) -> bool:
        """True when several query heads share one KV head."""
        return self.num_query_heads != self.num_kv_heads

    @property
    def has_sliding_layers(self) -> bool:
        """True when some layer attends through a sliding window."""
        return any(w is not None for w in self.sliding_windows)


def _text_config(obj: Any) -> Any:
    """The decoder config of a model or config (``get_text_config(decoder=True)`` where it exists)."""
    cfg = getattr(obj, "config", obj)
    if cfg is None:
        raise ValueError("model has no .config: not a transformers model or config")
    getter = getattr(cfg, "get_text_config", None)
    if callable(getter):
        try:
            return getter(decoder=True)
        except TypeError:
            return getter()
    return getattr(cfg, "text_config", cfg)


def _head_dims(tc: Any) -> tuple[int, int, int]:
    """(head_dim, num_kv_heads, num_query_heads) of a decoder config."""
    n_heads = getattr(tc, "num_attention_heads", None)
    if n_heads is None:
        n_heads = getattr(tc, "num_heads", None) or getattr(tc, "decoder_attention_heads", None)
    if n_heads is None:
        raise ValueError(f"config of type {type(tc).__name__} names no attention heads")
    head_dim = getattr(tc, "head_dim", None) or getattr(tc, "d_kv", None)
    if not head_dim:
        hidden = getattr(tc, "hidden_size", None) or getattr(tc, "d_model", None)
        if hidden is None:
            raise ValueError(f"config of type {type(tc).__name__} gives no head_dim nor hidden_size")
        head_dim = hidden // n_heads
    n_kv = getattr(tc, "num_key_value_heads", None) or n_heads
    return int(head_dim), int(n_kv), int(n_heads)


def _n_layers(tc: Any) -> int:
    """Number of decoder layers of a decoder config."""
    for name in ("num_hidden_layers", "num_decoder_layers", "decoder_layers", "num_layers"):
        n = getattr(tc, name, None)
        if n is not None:
            return int(n)
    raise ValueError(f"config of type {type(tc).__name__} names no layer count")


def layer_plan(tc: Any) -> tuple[list[str], list[int | None]]:
    """Per-layer kinds and sliding windows of a decoder config, as transformers' DynamicCache builds them.

    Uses transformers' own ``get_layer_types_and_kwargs`` where installed (its 5.17 form returns one
    kwargs dict, 5.25 one per layer) and the config fields otherwise.
    """
    kinds: list[str] | None = None
    windows: list[int | None] = []
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # pragma: no cover - transformers absent or very old
        get_layer_types_and_kwargs = None
    if get_layer_types_and_kwargs is not None and getattr(tc, "num_hidden_layers", None) is not None:
        raw_kinds, raw_kwargs = get_layer_types_and_kwargs(tc)
        kinds = list(raw_kinds)
        per = raw_kwargs if isinstance(raw_kwargs, list) else [raw_kwargs] * len(kinds)
        for kind, kw in zip(kinds, per, strict=True):
            sliding = kind in ("sliding_attention", "chunked_attention", "hybrid_sliding")
            windows.append(int(kw["sliding_window"]) if sliding and kw.get("sliding_window") else None)
        return kinds, windows
    n = _n_layers(tc)
    kinds = getattr(tc, "layer_types", None)
    if kinds is None:
        if getattr(tc, "sliding_window", None) is not None:
            kinds = ["sliding_attention"] * n
        elif getattr(tc, "attention_chunk_size", None) is not None:
            kinds = ["chunked_attention"] * n
        else:
            kinds = ["full_attention"] * n
    kinds = ["dummy" if k in ("moe", "mlp") else k for k in kinds]
    for kind in kinds:
        if kind == "chunked_attention":
            windows.append(getattr(tc, "attention_chunk_size", None))
        elif kind in ("sliding_attention", "hybrid_sliding"):
            windows.append(getattr(tc, "sliding_window", None))
        else:
            windows.append(None)
    return list(kinds), windows


def is_latent_kv_config(tc: Any) -> bool:
    """True for Multi-head Latent Attention configs (DeepSeek-V2/V3 style, ``kv_lora_rank`` set)."""
    return getattr(tc, "kv_lora_rank", None) is not None


def detect_model_kv_info(model: Any) -> ModelKVInfo:
    """Read the KV cache layout of a transformers model (or of a config).

    Handles GQA/MQA, sliding-window layers from ``config.layer_types`` / ``sliding_window``, hybrid
    attention/SSM models (non-attention layers land in ``skip_layers``), encoder-decoder models (the
    decoder's self-attention) and MLA (``is_latent_kv``).

    Args:
        model: A transformers model, or its config.

    Returns:
        The model's `ModelKVInfo`.

    Raises:
        ValueError: If ``model`` has no config, or the config names no attention heads or layers.
    """
    if model is None or (not hasattr(model, "config") and not hasattr(model, "to_dict")):
        raise ValueError("detect_model_kv_info needs a transformers model or config (no .config found)")
    top = getattr(model, "config", model)
    tc = _text_config(model)
    head_dim, n_kv, n_q = _head_dims(tc)
    kinds, windows = layer_plan(tc)
    attention = [i for i, k in enumerate(kinds) if k in ATTENTION_KINDS or k.startswith("hybrid")]
    skip = [i for i in range(len(kinds)) if i not in attention]
    shared = [i for i, k in enumerate(kinds) if k == "dummy"] if "dummy" in kinds else None
    sliding = getattr(tc, "sliding_window", None)
    if sliding is None:
        sliding = next((w for w in windows if w is not None), None)
    return ModelKVInfo(
        n_layers=len(kinds),
        head_dim=head_dim,
        num_kv_heads=n_kv,
        num_query_heads=n_q,
        attention_layers=attention,
        skip_layers=skip,
        sliding_window=sliding,
        shared_kv_layers=shared or None,
        is_latent_kv=is_latent_kv_config(tc),
        layer_types=kinds,
        sliding_windows=windows,
        is_encoder_decoder=bool(getattr(top, "is_encoder_decoder", False)),
        model_type=getattr(tc, "model_type", None),
        config=tc,
    )


def extract_kv(past_key_values: Any) -> list[tuple[Any, Any]]:
    """Per-layer (key, value) tensors of a cache, ``(None, None)`` for layers without KV.

    Reads transformers 5.x caches (``.layers[i].keys`` / ``.values``), the decoder self-attention cache
    of an ``EncoderDecoderCache``, 4.x ``key_cache`` / ``value_cache`` lists and legacy tuples. For a
    `TurboQuantCache` the keys and values are decoded from the codes (a materialised copy, for
    inspection: attention never reads it).

    Args:
        past_key_values: A cache object, or a legacy tuple of (key, value) pairs.

    Returns:
        One ``(key, value)`` pair per layer, each ``(batch, kv_heads, seq, head_dim)`` or None.
    """
    cache = getattr(past_key_values, "self_attention_cache", past_key_values)
    layers = getattr(cache, "layers", None)
    if layers is not None:
        out: list[tuple[Any, Any]] = []
        for layer in layers:
            dense = getattr(layer, "dequantized", None)
            if callable(dense):
                out.append(dense())
                continue
            k = getattr(layer, "keys", None)
            v = getattr(layer, "values", None)
            if k is None or v is None or getattr(k, "ndim", 0) != 4:
                out.append((None, None))
            else:
                out.append((k, v))
        return out
    if hasattr(cache, "key_cache"):
        return [
            (k, v) if k is not None else (None, None)
            for k, v in zip(cache.key_cache, cache.value_cache, strict=True)
        ]
    return [(item[0], item[1]) for item in cache]


def compress_model_kv(
    past_key_values: Any,
    model: Any,
    *,
    bit_width: int = 3,
    residual_length: int = 0,
    n_outlier_channels: int = 0,
    model_info: ModelKVInfo | None = None,
    key_bit_width: int | None = None,
    value_bit_width: int | None = None,
    seed: int = 0,
    **cache_kwargs: Any,
) -> Any:
    """Compress a filled cache into a live `TurboQuantCache` that ``generate()`` continues from.

    Every attention layer's keys and values are quantized into packed storage (the last
    ``residual_length`` tokens stay in full precision); non-attention layers of hybrid models
    (conv / SSM states) are copied as they are. The model is switched to the codes-reading attention
    (``attn_implementation="turboquant"``), so the next forward passes read the codes: no dense copy
    of the compressed cache is ever made. For encoder-decoder models an ``EncoderDecoderCache`` comes
    back, with the decoder self-attention compressed and the cross-attention cache copied.

    Args:
        past_key_values: The cache a forward pass returned (DynamicCache, EncoderDecoderCache).
        model: The model that filled it.
        bit_width: Bits per coordinate for keys and values.
        residual_length: Most recent tokens kept in full precision.
        n_outlier_channels: Outlier channels split off and stored at a higher bit width.
        model_info: A `ModelKVInfo` already read from ``model`` (read again when None).
        key_bit_width: Bits for keys (default ``bit_width``).
        value_bit_width: Bits for values (default ``bit_width``).
        seed: Seed of the quantizers' random rotations.
        **cache_kwargs: Other `TurboQuantCache` arguments (``value_outlier_channels``,
            ``outlier_bits``, ``layer_bits``).

    Returns:
        A `TurboQuantCache` (or ``EncoderDecoderCache`` around one) holding the compressed KV.

    Raises:
        ValueError: For MLA models (DeepSeek-V2/V3: their cache holds latents, not keys and values),
            bits out of range, or a cache whose shapes do not match the model.
    """
    from .hf_cache import TurboQuantCache

    info = model_info if model_info is not None else detect_model_kv_info(model)
    if info.is_latent_kv:
        raise ValueError(
            "model uses Multi-head Latent Attention (MLA, kv_lora_rank set): its cache holds latents and "
            "keys/values are rebuilt inside attention, so TurboQuant codes cannot reach attention. "
            "Keep its own cache (it is already compressed by the architecture)."
        )
    cache = TurboQuantCache.from_model(
        model,
        bit_width=bit_width,
        residual_length=residual_length,
        key_bit_width=key_bit_width,
        value_bit_width=value_bit_width,
        n_outlier_channels=n_outlier_channels,
        seed=seed,
        **cache_kwargs,
    )
    src = getattr(past_key_values, "self_attention_cache", past_key_values)
    target = getattr(cache, "self_attention_cache", cache)
    target.load_from(src)
    if hasattr(past_key_values, "cross_attention_cache") and hasattr(cache, "cross_attention_cache"):
        cache.cross_attention_cache = copy.deepcopy(past_key_values.cross_attention_cache)
        if hasattr(past_key_values, "is_updated"):
            cache.is_updated = dict(past_key_values.is_updated)
    return cache
