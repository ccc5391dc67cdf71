"""Adaptive per-layer bit allocation for the KV cache (seed API: AdaptiveKVCache).

Layers differ in how much a quantized cache hurts them. This module chooses a width per layer
(one int, or a ``(key_bits, value_bits)`` pair) and applies it:

- `uniform_allocation` and `gradient_allocation` are the seed's fixed schedules;
- `measure_output_errors` (the default measure) quantizes one layer's real keys and values at a
  time, at every candidate width, and measures what that layer's attention-output error does to
  the model's next-token distribution (KL divergence from the exact pass): layers whose error
  the later layers amplify cost more than the residual stream's size suggests;
- `measure_attention_errors` runs a model once over calibration text and measures what reaches
  the residual stream: the error of each layer's attention *output* (after its output
  projection), relative to the hidden state it is added to. Raw key MSE, which the seed ranked
  by, tracks key magnitude instead;
- `calibration_allocation` spends a bit budget greedily where the measured error falls most per
  bit, landing on the target average exactly or just under it;
- `AdaptiveKVCache` holds one `turboquant_rs.kv_cache.TurboQuantKVCache` per distinct width and
  compresses layer by layer; `AdaptiveKVCache.to_cache` (or ``TurboQuantCache(config,
  layer_bits=adaptive.layer_bits)``) puts the same widths inside ``generate()``.

torch and transformers are imported only by the functions that run a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .kv_cache import TurboQuantKVCache, split_widths

#: One side's width: bits per coordinate, an int 1..8 or a half 1.5..7.5 (half of the channels,
#: the outlier split, one bit wider: `turboquant_rs.kv_cache.width_parts`).
Width = int | float
#: One layer's width: one for keys and values, or a ``(key_bits, value_bits)`` pair.
LayerBits = Width | tuple[Width, Width]

#: The default calibration text (written for this library; ordinary English prose, no benchmark data).
DEFAULT_CALIBRATION_TEXT = (
    "The harbour town woke slowly that morning. Fishing boats came in with the tide, and the men "
    "unloaded their catch onto the stone quay while gulls circled overhead, crying for scraps. In "
    "the market square the baker had already sold most of his bread, and the smell of coffee "
    "drifted from the small cafe beside the church. Anna walked down the hill with a basket on her "
    "arm, counting the coins in her pocket and wondering whether there would be enough for both "
    "the fish and the medicine her father needed.\n\n"
    "Her father had been a sailor for thirty years. He had crossed the ocean more times than he "
    "could remember, and he told stories of storms that lasted for days, of islands where the "
    "trees grew so tall that their tops disappeared into the clouds, and of a captain who kept a "
    "parrot that could recite the names of every port between Lisbon and Cape Town. Anna had "
    "never been sure how many of those stories were true. She suspected that the parrot, at "
    "least, had been improved with each telling.\n\n"
    "A computer program is a sequence of instructions that tells a machine what to do. Early "
    "computers were programmed by rewiring them by hand; later, instructions were stored in "
    "memory alongside the data they worked on, which made it possible for programs to modify "
    "themselves and for one program to load and run another. Modern software is built in "
    "layers: an operating system manages the hardware, libraries provide common functions, and "
    "applications combine these pieces to solve particular problems. When a program runs slowly, "
    "the cause is usually not the processor itself but the time spent waiting for data to arrive "
    "from memory or from the network.\n\n"
    "In the spring of that year the river flooded again. The water rose above the lower fields, "
    "covered the road to the next village, and reached the steps of the mill. The miller, who "
    "had seen worse, moved his sacks of flour to the upper floor and waited. Children sailed "
    "paper boats on the new lake; their parents worried about the seed that would rot in the "
    "ground. After a week the water went down, leaving a layer of grey mud that smelled of "
    "leaves and iron, and by the summer the wheat stood higher than it had in a decade.\n\n"
    "Question: what is the capital of France? Answer: the capital of France is Paris, a city on "
    "the river Seine with a population of about two million people. Question: how many legs does "
    "a spider have? Answer: eight. Question: what is seven times eight? Answer: fifty-six. "
    "Question: who wrote the play about a prince of Denmark? Answer: William Shakespeare wrote "
    "Hamlet around the year 1600.\n\n"
    "The committee met on Thursday to discuss the budget. The chairwoman opened the meeting by "
    "reading the minutes of the previous session, and then invited the treasurer to present his "
    "report. Income had risen by four percent, he said, but expenses had risen by six, mostly "
    "because of repairs to the roof of the library and the rising cost of heating. Several "
    "members asked whether the annual festival could be made cheaper without disappointing the "
    "town; one suggested that volunteers could replace the hired stage crew. The vote was "
    "postponed until the next meeting, as it usually was."
)


# --------------------------------------------------------------------------------------------------
# widths


def _check_width(value: Any, name: str) -> Width:
    """A width (an int 1..8, or a half 1.5..7.5 as a float), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be an integer in 1..8 or a half 1.5..7.5, got {value!r}")
    w = float(value)
    if w == int(w) and 1 <= w <= 8:
        return int(w)
    if w - int(w) == 0.5 and 1.5 <= w <= 7.5:
        return w
    raise ValueError(f"{name} must be an integer in 1..8 or a half 1.5..7.5, got {value!r}")


def _pair(bits: Any, name: str) -> tuple[Width, Width]:
    """``bits`` (int or (key, value) pair) as a checked (key_bits, value_bits) pair."""
    if isinstance(bits, (tuple, list)):
        if len(bits) != 2:
            raise ValueError(f"{name} must be an int or a (key_bits, value_bits) pair, got {bits!r}")
        return _check_width(bits[0], f"{name} (keys)"), _check_width(bits[1], f"{name} (values)")
    b = _check_width(bits, name)
    return b, b


def _cost(bits: LayerBits) -> float:
    """Average bits per stored coordinate of one layer's width (keys and values weigh alike)."""
    kb, vb = _pair(bits, "bits")
    return (kb + vb) / 2.0


def _normal(bits: Any, name: str) -> LayerBits:
    """An int when key and value widths are equal, else the pair."""
    kb, vb = _pair(bits, name)
    return kb if kb == vb else (kb, vb)


def uniform_allocation(n_layers: int, bit_width: int) -> list[int]:
    """The same width for every layer: ``[bit_width] * n_layers``."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    return [_check_width(bit_width, "bit_width")] * n_layers


def gradient_allocation(
    n_layers: int, min_bits: int = 2, max_bits: int = 4, strategy: str = "linear"
) -> list[int]:
    """A schedule rising from ``min_bits`` (first layers) to ``max_bits`` (last layers).

    Args:
        n_layers: number of layers.
        min_bits, max_bits: widths of the first and the last layer (1..8, ``min_bits <= max_bits``).
        strategy: ``"linear"`` (a rounded linear ramp) or ``"step"`` (three tiers: a third of the
            layers at ``min_bits``, the middle at the rounded mean, the last third at ``max_bits``).

    Raises:
        ValueError: for an unknown strategy, widths out of range or in the wrong order.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
    lo, hi = _check_width(min_bits, "min_bits"), _check_width(max_bits, "max_bits")
    if lo > hi:
        raise ValueError(f"min_bits ({lo}) must not exceed max_bits ({hi})")
    if strategy == "linear":
        if n_layers == 1:
            return [round((lo + hi) / 2)]
        return [int(math.floor(lo + (hi - lo) * i / (n_layers - 1) + 0.5)) for i in range(n_layers)]
    if strategy == "step":
        third = n_layers // 3
        mid = int(math.floor((lo + hi) / 2 + 0.5))
        return [lo] * third + [mid] * (n_layers - 2 * third) + [hi] * third
    raise ValueError(f"unknown strategy {strategy!r}: use 'linear' or 'step'")


def _error_rows(errors: Any) -> list[dict[LayerBits, float]]:
    """The per-layer error table as one {width: error} dict per layer."""
    rows: list[dict[LayerBits, float]] = []
    for i, row in enumerate(errors):
        if not isinstance(row, Mapping) or not row:
            raise ValueError(f"errors[{i}] must be a non-empty mapping of width -> measured error")
        out: dict[LayerBits, float] = {}
        for k, v in row.items():
            e = float(v)
            if not math.isfinite(e) or e < 0:
                raise ValueError(f"errors[{i}][{k!r}] must be a finite non-negative number, got {v!r}")
            out[_normal(k, f"errors[{i}] width")] = e
        rows.append(out)
    if not rows:
        raise ValueError("errors must have one entry per layer")
    return rows


def calibration_allocation(errors: Any, *args: Any, **kwargs: Any) -> list[LayerBits]:
    """Per-layer widths that minimise the summed measured error at a target average width.

    Two call forms:

    - ``calibration_allocation(errors, target_avg_bits=3.0)``: ``errors[i]`` maps each candidate
      width of layer ``i`` (an int, or a ``(key_bits, value_bits)`` pair costing their mean) to
      its measured error (e.g. from `measure_output_errors` or `measure_attention_errors`).
    - the seed's ``calibration_allocation(model, tokenizer, calibration_text, bit_options=None,
      target_avg_bits=3.0, measure="output")``: measures the errors first (`measure_errors`).

    Every layer starts at its cheapest width; then, greedily, the upgrade (to any dearer width of
    one layer) that lowers the error most per extra bit and still fits the budget
    ``target_avg_bits × n_layers`` is taken, until none fits. The average lands on the target
    exactly when the widths allow it, else just under it; an upgrade that would not lower the
    error is never taken.

    Raises:
        ValueError: if even the cheapest widths exceed the target, or for a malformed table.
    """
    if hasattr(errors, "config") and hasattr(errors, "forward"):
        names = ("tokenizer", "calibration_text", "bit_options", "target_avg_bits")
        params = dict(zip(names, args, strict=False))
        params.update(kwargs)
        target = float(params.pop("target_avg_bits", 3.0))
        return calibration_allocation(measure_errors(errors, **params), target)
    if len(args) > 1:
        raise TypeError("calibration_allocation(errors, target_avg_bits) takes one positional target")
    target = float(args[0] if args else kwargs.pop("target_avg_bits", 3.0))
    if kwargs:
        raise TypeError(f"unexpected arguments {sorted(kwargs)}")
    rows = _error_rows(errors)
    n = len(rows)
    budget = target * n + 1e-9
    choice = [min(row, key=lambda w: (_cost(w), row[w])) for row in rows]
    spent = sum(_cost(c) for c in choice)
    if spent > budget:
        raise ValueError(
            f"target_avg_bits={target} is below the cheapest widths' average ({spent / n:.3f} bits)"
        )
    while True:
        best: tuple[float, float, int, LayerBits] | None = None
        for i, row in enumerate(rows):
            cur = choice[i]
            c0, e0 = _cost(cur), row[cur]
            for w, e in row.items():
                extra = _cost(w) - c0
                if extra <= 0 or spent + extra > budget or e >= e0:
                    continue
                gain = (e0 - e) / extra
                key = (gain, -extra, -i, w)
                if best is None or key[:3] > best[:3]:
                    best = key
        if best is None:
            return choice
        _, neg_extra, neg_i, w = best
        choice[-neg_i] = w
        spent -= neg_extra


# --------------------------------------------------------------------------------------------------
# measuring attention-output error on real K/V


def _reference_attention(
    query: Any,
    keys: Any,
    values: Any,
    *,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> Any:
    """Causal softmax attention in float32, GQA-aware: (B, Hq, S, D) from (B, Hkv, S, D) K/V.

    The S queries are the last S positions of the keys.
    """
    import torch

    b, hq, s, d = query.shape
    hkv, n = keys.shape[1], keys.shape[2]
    g = hq // hkv
    q = query.float().reshape(b, hkv, g * s, d)
    z = torch.matmul(q, keys.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    pos = torch.arange(n - s, n)
    kpos = torch.arange(n)
    allowed = kpos[None, :] <= pos[:, None]
    if sliding_window is not None:
        allowed &= kpos[None, :] > pos[:, None] - int(sliding_window)
    z = z.masked_fill(~allowed.repeat(g, 1)[None, None], float("-inf"))
    out = torch.matmul(torch.softmax(z, dim=-1), values.float())
    return out.reshape(b, hq, s, d)


def quantized_kv(
    keys: Any,
    values: Any,
    bits: Any,
    *,
    seed: int = 0,
    n_outlier_channels: int = 0,
    sink_tokens: int = 0,
) -> tuple[Any, Any]:
    """``keys``/``values`` (B, H, S, D) after a round trip through a packed store at ``bits``.

    ``bits`` is a width (int, or a half: the outlier split), a ``(key_bits, value_bits)`` pair,
    or a pair with ``None`` on one side to keep that side exact (to tell key error from value
    error); the first ``sink_tokens`` tokens
    stay exact, as the cache keeps them. Returns float32 torch tensors.
    """
    import torch

    from .kv_cache import KVLayerStore

    kb, vb = bits if isinstance(bits, (tuple, list)) else (bits, bits)
    d, h = int(keys.shape[-1]), int(keys.shape[1])
    kbits, vbits, k_out, v_out = split_widths(
        kb if kb is not None else 8, vb if vb is not None else 8, d, "width", n_outlier_channels
    )
    store = KVLayerStore(
        d,
        h,
        kbits,
        vbits,
        key_outliers=k_out,
        value_outliers=v_out,
        seed=seed,
        sink_tokens=sink_tokens,
    )
    store.append(keys, values)
    k, v = store.decompress()
    kq = torch.from_numpy(k) if kb is not None else keys.float()
    vq = torch.from_numpy(v) if vb is not None else values.float()
    return kq, vq


def layer_attention_error(
    query: Any,
    keys: Any,
    values: Any,
    bits: Any,
    *,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    out_proj: Any = None,
    residual: Any = None,
    seed: int = 0,
    n_outlier_channels: int = 0,
    skip_first: int = 1,
    sink_tokens: int = 0,
) -> float:
    """Error one layer's attention output takes when its K/V are quantized at ``bits``.

    Exact causal attention of ``query`` (B, Hq, S, D) over ``keys``/``values`` (B, Hkv, S, D) is
    compared with attention over their quantized round trip (`quantized_kv`). The difference of
    the outputs goes through ``out_proj`` (the layer's output projection, a callable on
    (B, S, Hq·D)) when given, and each token's squared error is divided by the squared norm of
    ``residual`` (B, S, hidden), the hidden state the output is added to; without them, by the
    exact output's. Returns the mean over tokens (the first ``skip_first`` skipped: the first
    token sees only itself, exactly). ``sink_tokens`` first tokens stay exact (`quantized_kv`).
    """
    import torch

    d = int(query.shape[-1])
    scale = d**-0.5 if scaling is None else float(scaling)
    kq, vq = quantized_kv(
        keys, values, bits, seed=seed, n_outlier_channels=n_outlier_channels, sink_tokens=sink_tokens
    )
    kw = {"scaling": scale, "sliding_window": sliding_window, "softcap": softcap}
    with torch.no_grad():
        exact = _reference_attention(query, keys, values, **kw)
        approx = _reference_attention(query, kq, vq, **kw)
        b, hq, s, _ = exact.shape
        diff = (approx - exact).transpose(1, 2).reshape(b, s, hq * d)
        ref = exact.transpose(1, 2).reshape(b, s, hq * d)
        if out_proj is not None:
            diff = out_proj(diff.to(_param_dtype(out_proj))).float()
            ref = out_proj(ref.to(_param_dtype(out_proj))).float()
        denom = residual.float() if residual is not None else ref
        num = diff.pow(2).sum(-1)[:, skip_first:]
        den = denom.pow(2).sum(-1)[:, skip_first:].clamp_min(1e-30)
        return float((num / den).mean())


def _param_dtype(module: Any) -> Any:
    """dtype of a module's first parameter (float32 when it has none)."""
    import torch

    for p in getattr(module, "parameters", lambda: iter(()))():
        return p.dtype
    return torch.float32


def _find_out_proj(module: Any) -> Any:
    """The attention module's output projection (o_proj / out_proj / o / dense), or None."""
    for name in ("o_proj", "out_proj", "o", "dense", "c_proj"):
        sub = getattr(module, name, None)
        if sub is not None and callable(sub):
            return sub
    return None


def _exact_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
    """What the model's own attention computes (SDPA; soft-capped logits in float32)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kw.get("softcap") is not None:
        scale = kw.get("scaling") or query.shape[-1] ** -0.5
        out = _reference_attention(
            query, key, value, scaling=scale, sliding_window=kw.get("sliding_window"), softcap=kw["softcap"]
        )
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    kw.pop("softcap", None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)


def _forward_with_attention(model: Any, input_ids: Any, attend: Any, **kwargs: Any) -> Any:
    """One no-grad forward of ``model`` over ``input_ids`` with ``attend`` as its attention
    function (registered under a private name, with SDPA's mask), the model's own restored after."""
    import inspect

    import torch
    from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
    from transformers.masking_utils import sdpa_mask

    name = "turboquant_rs_calibrate"
    AttentionInterface.register(name, attend)
    AttentionMaskInterface.register(name, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        with torch.no_grad():
            return model(input_ids=input_ids, use_cache=True, **kwargs, **{arg: DynamicCache()})
    finally:
        model.set_attn_implementation(previous)


def capture_attention(model: Any, input_ids: Any) -> list[dict[str, Any]]:
    """Runs ``model`` once over ``input_ids`` (1, S) and records every self-attention call.

    Returns one dict per attention layer in call order: ``query`` (B, Hq, S, D) as attention saw
    it (post-RoPE), ``keys``/``values`` (B, Hkv, S, D), ``scaling``, ``sliding_window``,
    ``softcap``, ``out_proj`` (the module's output projection or None), ``layer_idx`` and
    ``residual`` (the hidden state entering that decoder layer, when the model reports hidden
    states and the layer index is known).
    """
    records: list[dict[str, Any]] = []

    def grab(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
        records.append(
            {
                "query": query.detach().float().clone(),
                "keys": key.detach().float().clone(),
                "values": value.detach().float().clone(),
                "scaling": kw.get("scaling"),
                "sliding_window": kw.get("sliding_window"),
                "softcap": kw.get("softcap"),
                "out_proj": _find_out_proj(module),
                "layer_idx": getattr(module, "layer_idx", None),
            }
        )
        return _exact_attention(module, query, key, value, attention_mask, **kw)

    out = _forward_with_attention(model, input_ids, grab, output_hidden_states=True)
    hidden = getattr(out, "hidden_states", None)
    for r in records:
        i = r["layer_idx"]
        r["residual"] = (
            hidden[i] if hidden is not None and isinstance(i, int) and 0 <= i < len(hidden) else None
        )
        if r["keys"].shape[-2] != r["query"].shape[-2]:
            raise ValueError("calibration capture saw a cache longer than the text: run on a fresh model")
    return records


def _calibration_ids(tokenizer: Any, text: str | None, max_tokens: int) -> Any:
    """Token ids (1, S) of the calibration text, at most ``max_tokens``."""
    import torch

    enc = tokenizer(text or DEFAULT_CALIBRATION_TEXT, return_tensors="pt")
    ids = enc["input_ids"] if isinstance(enc, Mapping) or hasattr(enc, "keys") else enc
    ids = torch.as_tensor(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.shape[-1] < 2:
        raise ValueError("the calibration text must give at least 2 tokens")
    return ids[:, :max_tokens]


def _calibration_inputs(
    tokenizer: Any, text: str | None, input_ids: Any, max_tokens: int, bit_options: Sequence[Any] | None
) -> tuple[Any, list[LayerBits]]:
    """The measures' shared inputs: token ids (given, or of the calibration text) and the
    candidate widths (default ``[2, 3, 4]``)."""
    if input_ids is None:
        if tokenizer is None:
            raise ValueError("pass a tokenizer (or input_ids) to measure calibration errors")
        input_ids = _calibration_ids(tokenizer, text, max_tokens)
    return input_ids, [_normal(b, "bit_options entry") for b in (bit_options or [2, 3, 4])]


def _layer_index(layer_idx: Any, call: int) -> int:
    """A layer's index for its rotation seed: the module's own, else its call order."""
    return layer_idx if isinstance(layer_idx, int) and layer_idx >= 0 else call


def measure_attention_errors(
    model: Any,
    tokenizer: Any = None,
    calibration_text: str | None = None,
    bit_options: Sequence[Any] | None = None,
    *,
    input_ids: Any = None,
    max_tokens: int = 512,
    seed: int = 0,
    n_outlier_channels: int = 0,
    sink_tokens: int = 1,
) -> list[dict[LayerBits, float]]:
    """Per-layer attention-output error of each candidate width, measured on real K/V.

    One forward pass over the calibration text (``calibration_text``, default
    `DEFAULT_CALIBRATION_TEXT`, at most ``max_tokens`` tokens; or ``input_ids`` directly) records
    each attention layer's queries and K/V; each candidate in ``bit_options`` (ints and/or
    ``(key_bits, value_bits)`` pairs; default ``[2, 3, 4]``) is then scored with
    `layer_attention_error` (output projection applied, relative to the residual stream), using
    the rotation seed ``seed + layer`` that `TurboQuantCache` gives that layer and its
    ``sink_tokens`` exact first tokens.

    Returns:
        One {width: error} dict per decoder layer, ready for `calibration_allocation`.
    """
    input_ids, options = _calibration_inputs(tokenizer, calibration_text, input_ids, max_tokens, bit_options)
    records = capture_attention(model, input_ids)
    if not records:
        raise ValueError("the model ran no attention layer on the calibration text: nothing to allocate")
    table: list[dict[LayerBits, float]] = []
    for j, r in enumerate(records):
        idx = _layer_index(r["layer_idx"], j)
        table.append(
            {
                w: layer_attention_error(
                    r["query"],
                    r["keys"],
                    r["values"],
                    _pair(w, "width"),
                    scaling=r["scaling"],
                    sliding_window=r["sliding_window"],
                    softcap=r["softcap"],
                    out_proj=r["out_proj"],
                    residual=r["residual"],
                    seed=seed + idx,
                    n_outlier_channels=n_outlier_channels,
                    sink_tokens=sink_tokens,
                )
                for w in options
            }
        )
    return table


def _next_token_log_probs(out: Any) -> Any:
    """float32 log-probabilities of every position's next token from a model output."""
    import torch

    return torch.log_softmax(out.logits.float(), dim=-1)


def _chunked_attention(
    query: Any, key: Any, value: Any, kq: Any, vq: Any, chunk: int, **kw: Any
) -> tuple[Any, None]:
    """Causal attention of ``query`` in pieces of ``chunk`` positions: each piece attends to the
    exact ``key``/``value`` of its own positions and to the quantized ``kq``/``vq`` before them.
    Returns (B, S, Hq, D) in the query's dtype, as an attention function does."""
    import torch

    s = int(query.shape[2])
    scale = kw.get("scaling") or query.shape[-1] ** -0.5
    outs = []
    for c0 in range(0, s, chunk):
        c1 = min(c0 + chunk, s)
        k = torch.cat([kq[:, :, :c0], key[:, :, c0:c1].float()], dim=2)
        v = torch.cat([vq[:, :, :c0], value[:, :, c0:c1].float()], dim=2)
        outs.append(
            _reference_attention(
                query[:, :, c0:c1],
                k,
                v,
                scaling=scale,
                sliding_window=kw.get("sliding_window"),
                softcap=kw.get("softcap"),
            )
        )
    out = torch.cat(outs, dim=2)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


def _quantized_log_probs(
    model: Any,
    input_ids: Any,
    width_of: Any,
    *,
    seed: int,
    n_outlier_channels: int,
    sink_tokens: int,
    chunk: int,
) -> tuple[Any, int]:
    """Next-token log-probabilities of one pass in which attention call ``j`` (layer ``idx``)
    reads its K/V after the round trip at width ``width_of(j, idx)`` (None: exact), with the
    layer's seed ``seed + idx`` and ``sink_tokens`` exact first tokens; with ``chunk > 0`` the
    text goes in ``chunk``-token pieces that attend to themselves exactly (`_chunked_attention`).
    Returns the log-probabilities and the number of attention calls."""
    calls = [0]

    def attend(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
        j = calls[0]
        calls[0] += 1
        idx = _layer_index(getattr(module, "layer_idx", None), j)
        width = width_of(j, idx)
        if width is not None:
            kq, vq = quantized_kv(
                key, value, width, seed=seed + idx, n_outlier_channels=n_outlier_channels,
                sink_tokens=sink_tokens,
            )  # fmt: skip
            if chunk > 0:
                return _chunked_attention(query, key, value, kq, vq, chunk, **kw)
            key, value = kq.to(key.dtype), vq.to(value.dtype)
        return _exact_attention(module, query, key, value, attention_mask, **kw)

    return _next_token_log_probs(_forward_with_attention(model, input_ids, attend)), calls[0]


def _token_kl(exact: Any, approx: Any) -> Any:
    """Per-position KL divergence of ``approx``'s next-token distributions from ``exact``'s
    (positions 1.., the first has no context)."""
    return (exact.exp() * (exact - approx)).sum(-1)[:, 1:]


def measure_output_errors(
    model: Any,
    tokenizer: Any = None,
    calibration_text: str | None = None,
    bit_options: Sequence[Any] | None = None,
    *,
    input_ids: Any = None,
    max_tokens: int = 512,
    seed: int = 0,
    n_outlier_channels: int = 0,
    sink_tokens: int = 1,
    chunk: int = 128,
) -> list[dict[LayerBits, float]]:
    """Per-layer error of each candidate width as the model's output sees it.

    For each attention layer and each width of ``bit_options`` (default ``[2, 3, 4]``; pairs
    allowed), one forward pass over the calibration text in which only that layer attends to
    its K/V after the round trip through the packed format (`quantized_kv`, the layer's rotation
    seed ``seed + layer``, ``sink_tokens`` exact first tokens) measures the mean KL divergence of
    the next-token distributions from the exact pass'. This is the layer's attention-output
    error carried through every later layer to the prediction, so a layer whose error the
    residual stream absorbs costs little and one whose error the later layers amplify costs
    much (`measure_attention_errors` stops at the residual stream). As in the cache, the text
    goes in ``chunk``-token pieces whose tokens attend to each other exactly and to the earlier
    pieces through the codes (chunked prefill; in decoding, the residual window plays that
    part); ``chunk=0`` quantizes every token for every query. ``layers × widths + 1`` forward
    passes.

    Returns:
        One {width: KL} dict per attention layer (call order), ready for `calibration_allocation`.
    """
    import torch

    input_ids, options = _calibration_inputs(tokenizer, calibration_text, input_ids, max_tokens, bit_options)
    if chunk > 0 and int(input_ids.shape[-1]) <= chunk:
        raise ValueError(
            f"the calibration text ({int(input_ids.shape[-1])} tokens) must be longer than chunk={chunk}: "
            "otherwise every token attends exactly and nothing is measured"
        )
    kw = {"seed": seed, "n_outlier_channels": n_outlier_channels, "sink_tokens": sink_tokens, "chunk": chunk}
    exact, n_layers = _quantized_log_probs(model, input_ids, lambda j, idx: None, **kw)
    if n_layers == 0:
        raise ValueError("the model ran no attention layer on the calibration text: nothing to allocate")
    table: list[dict[LayerBits, float]] = []
    for layer in range(n_layers):
        row: dict[LayerBits, float] = {}
        for w in options:
            pair = _pair(w, "width")
            approx, _ = _quantized_log_probs(
                model, input_ids, lambda j, idx, layer=layer, pair=pair: pair if j == layer else None, **kw
            )
            kl = _token_kl(exact, approx)
            row[w] = max(float(kl.mean()), 0.0) if torch.isfinite(kl).all() else math.inf
        table.append(row)
    return table


def _joint_token_kl(
    model: Any,
    input_ids: Any,
    layer_bits: Sequence[Any],
    exact: Any,
    *,
    seed: int,
    n_outlier_channels: int,
    sink_tokens: int,
    chunk: int,
) -> Any:
    """Per-position KL divergence (float64 torch, positions 1..) of the next-token distribution
    with every attention layer at its width of ``layer_bits`` from the exact pass' log-probs
    ``exact`` (`_quantized_log_probs` with no layer quantized)."""
    import torch

    widths = [_pair(b, f"layer_bits[{i}]") for i, b in enumerate(layer_bits)]

    def width_of(j: int, idx: int) -> Any:
        if idx >= len(widths):
            raise ValueError(f"layer_bits has {len(widths)} entries but the model ran layer {idx}")
        return widths[idx]

    approx, _ = _quantized_log_probs(
        model, input_ids, width_of, seed=seed, n_outlier_channels=n_outlier_channels,
        sink_tokens=sink_tokens, chunk=chunk,
    )  # fmt: skip
    kl = _token_kl(exact, approx).double().reshape(-1)
    return torch.where(torch.isfinite(kl), kl.clamp_min(0.0), torch.full_like(kl, math.inf))


def measure_joint_error(
    model: Any,
    layer_bits: Sequence[Any],
    tokenizer: Any = None,
    calibration_text: str | None = None,
    *,
    input_ids: Any = None,
    max_tokens: int = 512,
    seed: int = 0,
    n_outlier_channels: int = 0,
    sink_tokens: int = 1,
    chunk: int = 128,
) -> float:
    """The model's error with every attention layer at its width of ``layer_bits`` at once: the
    mean KL divergence of the next-token distributions from the exact pass over the calibration
    text, under `measure_output_errors`' protocol (``chunk``-token pieces, ``sink_tokens`` exact,
    the layer's seed ``seed + layer``). Two forward passes; it checks an allocation as a whole,
    where the one-layer-at-a-time table assumes that layers' errors add up."""
    input_ids, _ = _calibration_inputs(tokenizer, calibration_text, input_ids, max_tokens, [3])
    kw = {"seed": seed, "n_outlier_channels": n_outlier_channels, "sink_tokens": sink_tokens, "chunk": chunk}
    exact, _ = _quantized_log_probs(model, input_ids, lambda j, idx: None, **kw)
    return float(_joint_token_kl(model, input_ids, layer_bits, exact, **kw).mean())


def _pick_allocation(
    per_layer: list[LayerBits], uniform: list[list[LayerBits]], token_kl: Any
) -> list[LayerBits]:
    """The allocation to keep after the whole-model check: the uniform candidate of lowest
    error, unless the per-layer allocation beats it by more than two standard errors of their
    per-position difference (a per-layer allocation tuned on a short text is otherwise as
    likely to fit the text's noise as the model's real sensitivities)."""
    if not uniform:
        return per_layer
    label = _allocation_label
    best = min(uniform, key=lambda c: float(token_kl[label(c)].mean()))
    diff = token_kl[label(per_layer)] - token_kl[label(best)]
    n = int(diff.numel())
    if n > 1 and bool(diff.isfinite().all()):
        se = float(diff.std()) / math.sqrt(n)
        if float(diff.mean()) < -2.0 * se:
            return per_layer
    return best


def measure_errors(
    model: Any, *args: Any, measure: str = "output", **kwargs: Any
) -> list[dict[LayerBits, float]]:
    """The per-layer error table by the named measure: ``"output"`` (`measure_output_errors`,
    the default) or ``"attention"`` (`measure_attention_errors`); other arguments go to it."""
    measures = {"output": measure_output_errors, "attention": measure_attention_errors}
    if measure not in measures:
        raise ValueError(f"measure must be one of {sorted(measures)}, got {measure!r}")
    return measures[measure](model, *args, **kwargs)


# --------------------------------------------------------------------------------------------------
# the cache


class AdaptiveKVCache:
    """KV-cache compression with a width per layer: one `TurboQuantKVCache` per distinct width.

    Args:
        head_dim: channels per head.
        layer_bits: one width per layer (keys and values) or a ``(key_bits, value_bits)`` pair;
            a width is an int 1..8 or a half 1.5..7.5 (half of the channels one bit wider).
        residual_length: most recent tokens kept in full precision (every layer).
        n_outlier_channels: key outlier channels per head (the paper's split, at one bit more).
        seed: seed of the rotations.
        **kwargs: further `TurboQuantKVCache` arguments (e.g. ``center``).

    Raises:
        ValueError: for an empty ``layer_bits`` or a width out of range.
    """

    def __init__(
        self,
        head_dim: int,
        layer_bits: Sequence[LayerBits],
        residual_length: int = 128,
        n_outlier_channels: int = 0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        bits = [_normal(b, f"layer_bits[{i}]") for i, b in enumerate(layer_bits)]
        if not bits:
            raise ValueError("layer_bits must have at least one entry")
        self.head_dim = int(head_dim)
        self.layer_bits: list[LayerBits] = bits
        self.residual_length = int(residual_length)
        self.n_outlier_channels = int(n_outlier_channels)
        self.seed = int(seed)
        self.calibration_errors: list[dict[LayerBits, float]] | None = None
        #: `from_model`'s whole-model check: calibration KL of each candidate allocation.
        self.calibration_joint: dict[str, float] = {}
        self._by_width: dict[tuple[Width, Width], TurboQuantKVCache] = {}
        for b in bits:
            kb, vb = _pair(b, "width")
            if (kb, vb) in self._by_width:
                continue
            kbits, vbits, k_out, v_out = split_widths(kb, vb, self.head_dim, "width", self.n_outlier_channels)
            self._by_width[(kb, vb)] = TurboQuantKVCache(
                self.head_dim,
                bit_width=kbits,
                residual_length=self.residual_length,
                key_bit_width=kbits,
                value_bit_width=vbits,
                n_outlier_channels=k_out,
                seed=self.seed,
                **({"value_outlier_channels": v_out} if v_out else {}),
                **kwargs,
            )

    @property
    def n_layers(self) -> int:
        """Number of layers."""
        return len(self.layer_bits)

    @property
    def caches(self) -> list[TurboQuantKVCache]:
        """The cache each layer uses (layers of equal width share one object)."""
        return [self.cache_for(i) for i in range(self.n_layers)]

    @property
    def average_bits(self) -> float:
        """Mean width over layers, keys and values alike (half widths included; the extra bit of
        ``n_outlier_channels`` not counted)."""
        return sum(_cost(b) for b in self.layer_bits) / self.n_layers

    @property
    def key_bits(self) -> list[Width]:
        """Key width of each layer."""
        return [_pair(b, "width")[0] for b in self.layer_bits]

    @property
    def value_bits(self) -> list[Width]:
        """Value width of each layer."""
        return [_pair(b, "width")[1] for b in self.layer_bits]

    def cache_for(self, layer_idx: int) -> TurboQuantKVCache:
        """The `TurboQuantKVCache` of layer ``layer_idx``."""
        if not isinstance(layer_idx, int) or not 0 <= layer_idx < self.n_layers:
            raise IndexError(f"layer_idx {layer_idx!r} out of range for {self.n_layers} layers")
        return self._by_width[_pair(self.layer_bits[layer_idx], "width")]

    def compress_layer(self, layer_idx: int, keys: Any, values: Any) -> Any:
        """Compresses layer ``layer_idx``'s (B, H, S, D) keys and values at its width."""
        return self.cache_for(layer_idx).compress(keys, values)

    def append_layer(self, layer_idx: int, compressed: Any, keys: Any, values: Any) -> Any:
        """Appends new tokens to a layer's compressed object (see `TurboQuantKVCache.append`)."""
        return self.cache_for(layer_idx).append(compressed, keys, values)

    def decompress_layer_keys(self, layer_idx: int, compressed: Any) -> Any:
        """Reconstructed keys of a layer's compressed object."""
        return self.cache_for(layer_idx).decompress_keys(compressed)

    def decompress_layer_values(self, layer_idx: int, compressed: Any) -> Any:
        """Reconstructed values of a layer's compressed object."""
        return self.cache_for(layer_idx).decompress_values(compressed)

    def attention_layer(self, layer_idx: int, query: Any, compressed: Any, **kwargs: Any) -> Any:
        """Attention from the codes of a layer's compressed object (`TurboQuantKVCache.attention`)."""
        return self.cache_for(layer_idx).attention(query, compressed, **kwargs)

    def to_cache(self, config: Any, **kwargs: Any) -> Any:
        """A `turboquant_rs.hf_cache.TurboQuantCache` for ``generate()`` with these widths.

        ``kwargs`` go to `TurboQuantCache` (default ``residual_length`` and
        ``n_outlier_channels`` are this object's). Switch the model to the codes attention with
        ``TurboQuantCache.from_model`` or ``model.set_attn_implementation("turboquant")``.
        """
        from .hf_cache import TurboQuantCache

        kwargs.setdefault("residual_length", self.residual_length)
        kwargs.setdefault("n_outlier_channels", self.n_outlier_channels)
        kwargs.setdefault("seed", self.seed)
        return TurboQuantCache(config, layer_bits=list(self.layer_bits), **kwargs)

    def summary(self) -> str:
        """A readable table: width per layer (with the calibration errors when measured) and the average."""
        lines = [f"AdaptiveKVCache: {self.n_layers} layers, head_dim={self.head_dim}"]
        for i, b in enumerate(self.layer_bits):
            width = _label(b) + ("-bit" if not isinstance(b, tuple) else "")
            extra = ""
            if self.calibration_errors is not None and i < len(self.calibration_errors):
                row = self.calibration_errors[i]
                extra = "  error " + ", ".join(
                    f"{_label(w)}: {e:.2e}" for w, e in sorted(row.items(), key=lambda x: _cost(x[0]))
                )
            lines.append(f"  Layer {i:2d}: {width}{extra}")
        lines.append(f"  Average: {self.average_bits:.2f} bits per coordinate")
        for name, kl in self.calibration_joint.items():
            lines.append(f"  Whole-model calibration KL, {name}: {kl:.3e}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"AdaptiveKVCache(head_dim={self.head_dim}, layers={self.n_layers}, "
            f"average_bits={self.average_bits:.2f})"
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        head_dim: int | None = None,
        calibration_text: str | None = None,
        target_avg_bits: float = 3.0,
        residual_length: int = 128,
        n_outlier_channels: int = 0,
        *,
        bit_options: Sequence[Any] | None = None,
        max_tokens: int = 512,
        seed: int = 0,
        measure: str = "output",
        sink_tokens: int = 1,
        **kwargs: Any,
    ) -> AdaptiveKVCache:
        """Calibrated widths for ``model``: measure, then allocate at ``target_avg_bits``.

        Measures each layer's error at the candidate widths ``bit_options`` (default
        ``[2, 3, 4]``; ``(key, value)`` pairs allowed) on ``calibration_text`` (default
        `DEFAULT_CALIBRATION_TEXT`) and allocates with `calibration_allocation`. ``measure``:
        ``"output"`` (default, `measure_output_errors`: the layer's attention error as the
        model's next-token distribution sees it, ``layers × widths`` forward passes) or
        ``"attention"`` (`measure_attention_errors`: one pass, the error where the layer's
        output joins the residual stream). ``sink_tokens`` is the cache's count of exact first
        tokens (`TurboQuantCache`'s default 1). The greedy allocation is then checked as a whole
        (`measure_joint_error`) against every uniform option at the budget and the uniform
        split with keys half a bit wider than values (keys carry most of the attention error:
        on SmolLM2 at 3.0 bits K3.5/V2.5 measured +2.16 % perplexity against 3/3's +2.49 %);
        the best uniform candidate is kept unless the per-layer allocation beats it by more
        than two standard errors of their per-position difference (`_pick_allocation`).
        Widths may be halves (``2.5``: half of the channels one bit wider) and ``(key, value)``
        pairs, e.g. ``bit_options=[2, 3, 4, (3.5, 2.5)]``. The measured table is kept in
        ``calibration_errors``, the whole-model check in ``calibration_joint``.

        Raises:
            ValueError: if ``head_dim`` does not match the model's keys, the target is below
                the cheapest option, or ``measure`` is unknown.
        """
        tc = (
            model.config.get_text_config(decoder=True)
            if hasattr(model.config, "get_text_config")
            else model.config
        )
        d_model = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        if head_dim is None:
            head_dim = int(d_model)
        elif int(head_dim) != int(d_model):
            raise ValueError(f"head_dim={head_dim} but the model's keys have head_dim {d_model}")
        table = measure_errors(
            model,
            tokenizer,
            calibration_text,
            bit_options,
            max_tokens=max_tokens,
            seed=seed,
            n_outlier_channels=n_outlier_channels,
            sink_tokens=sink_tokens,
            measure=measure,
        )
        bits = calibration_allocation(table, target_avg_bits)
        # the greedy allocation assumes the layers' errors add up: check it as a whole against
        # every uniform option at the budget and the uniform key-heavy split of the target (keys
        # half a bit wider than values: K3.5/V2.5 at 3.0 bits), keep the best
        options = list(table[0]) if table else []
        uniform = [w for w in options if target_avg_bits - 0.25 < _cost(w) <= target_avg_bits + 1e-9]
        split = (target_avg_bits + 0.5, target_avg_bits - 0.5)
        halves_fit = split[0] % 1 == 0 or (int(head_dim) % 2 == 0 and int(head_dim) >= 4)
        if (2 * target_avg_bits) % 1 == 0 and split[1] >= 1 and split[0] <= 8 and halves_fit:
            uniform.append(_normal(split, "split"))
        flat = [[w] * len(bits) for w in dict.fromkeys(uniform) if [w] * len(bits) != bits]
        joint: dict[str, float] = {}
        if flat:
            ids, _ = _calibration_inputs(tokenizer, calibration_text, None, max_tokens, [3])
            kw = {"seed": seed, "n_outlier_channels": n_outlier_channels, "sink_tokens": sink_tokens}
            kw["chunk"] = 128
            exact, _ = _quantized_log_probs(model, ids, lambda j, idx: None, **kw)  # once for all candidates
            token_kl = {
                _allocation_label(c): _joint_token_kl(model, ids, c, exact, **kw) for c in [bits, *flat]
            }
            joint = {name: float(kl.mean()) for name, kl in token_kl.items()}
            bits = _pick_allocation(bits, flat, token_kl)
        n_layers = getattr(tc, "num_hidden_layers", len(bits))
        if len(bits) != n_layers:
            raise ValueError(
                f"the model ran {len(bits)} attention layers but has {n_layers} decoder layers: "
                "allocate with measure_attention_errors / calibration_allocation per attention layer"
            )
        out = cls(
            head_dim,
            bits,
            residual_length=residual_length,
            n_outlier_channels=n_outlier_channels,
            seed=seed,
            **kwargs,
        )
        out.calibration_errors = table
        out.calibration_joint = joint
        return out


def _allocation_label(widths: Sequence[LayerBits]) -> str:
    """A short name of an allocation: ``"uniform K3.5/V2.5"`` or ``"per layer 2, 3, 4, ..."``."""
    if all(w == widths[0] for w in widths):
        return f"uniform {_label(widths[0])}"
    return "per layer " + ", ".join(_label(w) for w in widths)


def _label(width: LayerBits) -> str:
    """A short name of a width: ``"3"`` or ``"K4/V3"``."""
    kb, vb = _pair(width, "width")
    return str(kb) if kb == vb else f"K{kb}/V{vb}"


__all__ = [
    "AdaptiveKVCache",
    "DEFAULT_CALIBRATION_TEXT",
    "LayerBits",
    "Width",
    "calibration_allocation",
    "capture_attention",
    "gradient_allocation",
    "layer_attention_error",
    "measure_attention_errors",
    "measure_joint_error",
    "measure_output_errors",
    "quantized_kv",
    "uniform_allocation",
]
