"""Real-model KV-cache quality and speed: SmolLM2-135M-Instruct on the Canterbury text, offline.

Command (the full table, ~1-2 h on 2 shared cores; parts run alone with --only):

    nice -n 5 .venv/bin/python benches/bench_kv_quality.py --tokens 8192 --threads 2

Parts (``--only ppl,residual,greedy,passkey,decode,memory,layers``):

- ppl: perplexity over ``--tokens`` tokens of the Canterbury text (1,024-token windows spread
  evenly over the four texts, each fed in 128-token chunks through the cache; every stored token
  quantized, ``residual_length=0``: the chunk being processed attends to its own K/V exactly, as
  HF's QuantizedCache does at prefill) for DynamicCache, ours (`TurboQuantCache`) at K/V 4/4,
  3/3, 2.5 (outlier split: half the channels at 3 bits) and 2/2, adaptive at an average of 3.0
  (calibrated on the library's default text) vs uniform 3, HF QuantizedCache (quanto and HQQ, 4
  and 2 bits) and turboquant-torch 0.4.0's quantizers (stored tokens round-tripped once: its
  default QJL keys and MSE keys); teacher-forced top-1 agreement with DynamicCache.
- residual: the same with the default residual window (128 full-precision tokens).
- greedy: free greedy agreement with DynamicCache over 8 prompts × 64 tokens.
- passkey: a random 5-digit key hidden at several depths of 1-3k tokens of filler.
- decode: CPU time per decoded token at 2k and 8k context (DynamicCache, QuantizedCache, ours).
- memory: bytes held at 4k and 32k tokens for a Llama-3-8B-shaped cache (2 layers filled
  directly, scaled to 32 layers; no model).
- layers: why: per-layer attention-output error of ours, keys vs values, at 2/3/4 bits.

``--quick`` shrinks every part (for a first timing). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kv_data  # noqa: E402
import torch  # noqa: E402

WINDOW = 1024
CHUNK = 128


# --------------------------------------------------------------------------------------------------
# caches under test


@dataclass
class Spec:
    """One cache configuration of the table."""

    name: str
    kind: str  # dynamic | ours | codes | quanto | hqq | tqtorch | tqtorch_mse
    bits: int = 4
    residual: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def _roundtrip_cache(model: Any, factory: Callable[[], Callable[[Any, Any], tuple[Any, Any]]]) -> Any:
    """A Cache for peers without attention from codes (turboquant-torch 0.4.0): each token is
    quantized and dequantized once when stored through ``roundtrip(k, v) -> (k̂, v̂)`` (never
    re-quantized); the current forward pass's tokens are returned exact. Quality only."""
    from transformers.cache_utils import Cache, DynamicLayer

    class _Layer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.roundtrip = factory()

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
            kq, vq = self.roundtrip(key_states, value_states)
            self.keys = torch.cat([self.keys, kq.to(key_states.dtype)], dim=-2)
            self.values = torch.cat([self.values, vq.to(value_states.dtype)], dim=-2)
            return keys, values

    n = model.config.num_hidden_layers
    return Cache(layers=[_Layer() for _ in range(n)])


def _tqtorch_roundtrip(head_dim: int, bits: int, mse_keys: bool) -> Callable[[Any, Any], tuple[Any, Any]]:
    """turboquant-torch 0.4.0's KV quantizers (its TurboQuantKVCache; MSE keys optional)."""
    import turboquant

    cache = turboquant.TurboQuantKVCache(head_dim=head_dim, bit_width=bits, residual_length=0)
    if mse_keys:
        cache.key_quantizer = turboquant.TurboQuant(head_dim, bits, unbiased=False, seed=0)

    def rt(k: Any, v: Any) -> tuple[Any, Any]:
        c = cache.compress(k.float(), v.float())
        return cache.decompress_keys(c), cache.decompress_values(c)

    return rt


def _codes_roundtrip(head_dim: int, bits: int, center: bool, sink: int) -> Callable[[], Any]:
    """Factory of per-layer round trips through one persistent KVLayerStore (ours' codes).

    The same quantizer and the same stream (mean from the first chunk) as `TurboQuantCache`,
    read back dequantized (attention from the codes equals attention on these to 1e-4), with
    an option the cache does not have: centring off (``center=False``), with the ``sink`` first
    tokens kept exact as the cache does.
    """
    from turboquant_rs.kv_cache import KVLayerStore

    def factory() -> Callable[[Any, Any], tuple[Any, Any]]:
        state: dict[str, Any] = {"store": None, "seen": 0}

        def rt(k: Any, v: Any) -> tuple[Any, Any]:
            if state["store"] is None:
                state["store"] = KVLayerStore(head_dim, k.shape[1], bits, bits, center=center, seed=0)
            store, t = state["store"], k.shape[2]
            store.append(k, v)
            kk, vv = store.decompress()
            kq, vq = torch.from_numpy(kk[:, :, -t:].copy()), torch.from_numpy(vv[:, :, -t:].copy())
            m = min(max(sink - state["seen"], 0), t)
            if m:
                kq[:, :, :m], vq[:, :, :m] = k[:, :, :m], v[:, :, :m]
            state["seen"] += t
            return kq, vq

        return rt

    return factory


_ADAPTIVE: dict[str, Any] = {}


def adaptive_bits(model: Any, tok: Any, target: float, options: list[Any], measure: str) -> list[Any]:
    """Per-layer widths from AdaptiveKVCache.from_model (cached per option set and measure)."""
    from turboquant_rs.adaptive import AdaptiveKVCache

    key = f"{target}:{options}:{measure}"
    if key not in _ADAPTIVE:
        t0 = time.perf_counter()
        a = AdaptiveKVCache.from_model(
            model, tok, target_avg_bits=target, bit_options=options, measure=measure
        )
        _ADAPTIVE[key] = a
        took = time.perf_counter() - t0
        print(f"<!-- adaptive {options} ({measure}) calibrated in {took:.0f}s: {a.layer_bits} -->")
    return list(_ADAPTIVE[key].layer_bits)


def make_cache(spec: Spec, model: Any, tok: Any) -> Any:
    """A fresh cache for ``spec``; switches the model's attention implementation to match."""
    from transformers import DynamicCache, QuantizedCache

    from turboquant_rs.hf_cache import TurboQuantCache, enable_turboquant_attention

    cfg = model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if spec.kind == "ours":
        enable_turboquant_attention(model)
        opts = dict(spec.options)
        if "adaptive" in opts:
            target, options, measure = opts.pop("adaptive")
            opts["layer_bits"] = adaptive_bits(model, tok, target, options, measure)
        return TurboQuantCache(cfg, bit_width=spec.bits, residual_length=spec.residual, **opts)
    model.set_attn_implementation("sdpa")
    if spec.kind == "dynamic":
        return DynamicCache()
    if spec.kind in ("quanto", "hqq"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return QuantizedCache(
                spec.kind,
                cfg,
                nbits=spec.bits,
                residual_length=spec.residual,
                **spec.options,
            )
    if spec.kind in ("tqtorch", "tqtorch_mse"):
        rt = _tqtorch_roundtrip(d, spec.bits, spec.kind == "tqtorch_mse")
        return _roundtrip_cache(model, lambda: rt)
    if spec.kind == "codes":
        opts = {"center": True, "sink": 0, **spec.options}
        return _roundtrip_cache(model, _codes_roundtrip(d, spec.bits, opts["center"], opts["sink"]))
    raise ValueError(spec.kind)


def _arg(model: Any) -> str:
    from turboquant_rs.hf_cache import cache_argument_name

    return cache_argument_name(model)


# --------------------------------------------------------------------------------------------------
# perplexity and teacher-forced agreement


def ppl_windows(n_tokens: int, model: Any) -> list[Any]:
    """``n_tokens // 1024`` windows of 1,024 tokens spread evenly over the Canterbury text.

    Gemma-3 windows start with its BOS token (the model is trained with one; without it the
    perplexity is not meaningful), followed by 1,023 text tokens."""
    name = kv_data.model_name(model)
    ids = kv_data.canterbury_ids(model=name)
    n = max(1, n_tokens // WINDOW)
    step = (ids.numel() - WINDOW) // n
    windows = [ids[i * step : i * step + WINDOW] for i in range(n)]
    if name == "gemma3":
        bos = torch.tensor([model.config.bos_token_id], dtype=ids.dtype)
        windows = [torch.cat([bos, w[:-1]]) for w in windows]
    return windows


@dataclass
class PplResult:
    """Perplexity of one cache over the windows, with its argmax predictions."""

    ppl: float
    n: int
    preds: Any
    nll: Any
    seconds: float


def eval_ppl(spec: Spec, model: Any, tok: Any, windows: list[Any]) -> PplResult:
    """Chunked teacher-forced evaluation: 128-token chunks through a fresh cache per window."""
    arg = _arg(model)
    nlls, preds = [], []
    t0 = time.perf_counter()
    for w in windows:
        x = w.unsqueeze(0)
        cache = make_cache(spec, model, tok)
        with torch.no_grad():
            for c in range(0, WINDOW, CHUNK):
                out = model(input_ids=x[:, c : c + CHUNK], use_cache=True, **{arg: cache})
                logits = out.logits[0].float()
                tgt = x[0, c + 1 : c + CHUNK + 1]
                m = tgt.numel()
                lp = torch.log_softmax(logits[:m], -1)
                nlls.append(-lp.gather(1, tgt[:, None])[:, 0])
                preds.append(logits[:m].argmax(-1))
    nll = torch.cat(nlls)
    return PplResult(
        math.exp(float(nll.mean())), nll.numel(), torch.cat(preds), nll, time.perf_counter() - t0
    )


def ppl_specs(residual: int, quick: bool, head_dim: int) -> list[Spec]:
    """The configurations of the perplexity table (outlier splits at half of ``head_dim``)."""
    half = head_dim // 2
    specs = [Spec("DynamicCache (fp32)", "dynamic")]
    specs += [Spec(f"ours {b}/{b} (default: first token exact)", "ours", b, residual) for b in (4, 3, 2)]
    specs += [
        Spec(f"ours {b}/{b}, sink_tokens=0", "ours", b, residual, {"sink_tokens": 0}) for b in (4, 3, 2)
    ]
    specs += [Spec(f"ours {b}/{b}, sink_tokens=4", "ours", b, residual, {"sink_tokens": 4}) for b in (4, 3)]
    specs += [
        Spec(
            "ours 2.5/2.5 (outlier split K+V)",
            "ours",
            2,
            residual,
            {"n_outlier_channels": half, "value_outlier_channels": half},
        ),
        Spec(
            "ours K2.5/V2 (TurboQuantCache n_outlier_channels=32)",
            "ours",
            2,
            residual,
            {"n_outlier_channels": half},
        ),
    ]
    specs += [
        Spec(
            f"ours K{b}.5/V{b - 1}.5 (avg {b}.0: keys half a bit wider, half the channels one bit up)",
            "ours",
            b,
            residual,
            {"value_bit_width": b - 1, "n_outlier_channels": half, "value_outlier_channels": half},
        )
        for b in (4, 3, 2)
    ]
    specs += [
        Spec(
            f"ours K{b}.5/V{b - 1}.5, sink_tokens=4 (avg {b}.0, four attention sinks exact)",
            "ours",
            b,
            residual,
            {
                "value_bit_width": b - 1,
                "n_outlier_channels": half,
                "value_outlier_channels": half,
                "sink_tokens": 4,
            },
        )
        for b in (4, 3, 2)
    ]
    specs += [
        Spec(
            f"ours K{b + 1}/V{b - 1} (bytes of {b}/{b}: keys one bit wider)",
            "ours",
            b + 1,
            residual,
            {"value_bit_width": b - 1},
        )
        for b in (4, 3, 2)
    ]
    if residual == 0:
        specs += [
            Spec(
                f"ours adaptive avg 3.0 (2/3/4 per layer, {measure} measure)",
                "ours",
                3,
                residual,
                {"adaptive": (3.0, [2, 3, 4], measure)},
            )
            for measure in ("output", "attention")
        ]
        specs += [
            Spec(
                "ours adaptive avg 3.0 (K/V pairs of 2-4, output measure)",
                "ours",
                3,
                residual,
                {"adaptive": (3.0, [2, 3, 4, (2, 3), (3, 2), (3, 4), (4, 3), (2, 4), (4, 2)], "output")},
            ),
        ]
    specs += [
        Spec("HF QuantizedCache quanto 4", "quanto", 4, residual),
        Spec("HF QuantizedCache HQQ 4", "hqq", 4, residual),
        Spec("HF QuantizedCache quanto 2", "quanto", 2, residual),
        Spec("HF QuantizedCache HQQ 2", "hqq", 2, residual),
    ]
    if residual == 0:
        specs += [
            Spec(
                f"ours' codes {b}/{b}, first token exact, keys and values not centred",
                "codes",
                b,
                0,
                {"sink": 1, "center": False},
            )
            for b in (4, 3)
        ]
        specs += [
            Spec("turboquant-torch 0.4.0 4 (QJL keys, default)", "tqtorch", 4, 0),
            Spec("turboquant-torch 0.4.0 4 (MSE keys)", "tqtorch_mse", 4, 0),
            Spec("turboquant-torch 0.4.0 3 (MSE keys)", "tqtorch_mse", 3, 0),
        ]
    if quick:
        keep = {"dynamic", "ours", "quanto"}
        specs = [s for s in specs if s.kind in keep and "adaptive" not in s.options][:6]
    return specs


def part_ppl(model: Any, tok: Any, args: Any, residual: int) -> None:
    """Perplexity and teacher-forced agreement table."""
    windows = ppl_windows(args.tokens, model)
    specs = ppl_specs(residual, args.quick, model.config.head_dim)
    if args.filter:
        specs = [s for s in specs if s.kind == "dynamic" or any(f in s.name for f in args.filter.split("|"))]
    # the same caches again at other rotation seeds (how much of a difference is the seed's)
    extra = [int(v) for v in args.seeds.split(",") if v.strip()]
    specs += [
        Spec(f"{s.name}, seed {seed}", s.kind, s.bits, s.residual, {**s.options, "seed": seed})
        for seed in extra
        for s in list(specs)
        if s.kind == "ours" and "adaptive" not in s.options
    ]
    print(
        f"\n### Perplexity, {len(windows)} × {WINDOW}-token windows "
        f"({len(windows) * (WINDOW - 1)} predictions), {CHUNK}-token chunks, residual_length={residual}\n"
    )
    print("| cache | perplexity | Δ vs DynamicCache | teacher-forced top-1 agreement | s |")
    print("|---|---:|---:|---:|---:|")
    base: PplResult | None = None
    for spec in specs:
        try:
            r = eval_ppl(spec, model, tok, windows)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"| {spec.name} | error: {type(exc).__name__}: {str(exc)[:120]} | | | |", flush=True)
            continue
        if base is None:
            base = r
        delta = 100 * (r.ppl / base.ppl - 1)
        agree = float((r.preds == base.preds).float().mean())
        print(f"| {spec.name} | {r.ppl:.3f} | {delta:+.2f} % | {agree:.4f} | {r.seconds:.0f} |", flush=True)
    model.set_attn_implementation("sdpa")


# --------------------------------------------------------------------------------------------------
# greedy agreement and passkey: prefill once with DynamicCache, then each cache loads the prefix


def load_prefix(spec: Spec, model: Any, tok: Any, prefix: Any) -> Any:
    """A ``spec`` cache holding a DynamicCache prefix (every token quantized where residual is 0).

    Equivalent to a prefill through that cache: the prompt attends to itself exactly either way,
    and every cache stores the prompt's K/V the same way (QuantizedCache quantizes it on its
    first update; ours quantizes all but the residual window).
    """
    cache = make_cache(spec, model, tok)
    if spec.kind == "dynamic":
        return copy.deepcopy(prefix)
    if spec.kind == "ours":
        cache.load_from(prefix)
        return cache
    for i, layer in enumerate(prefix.layers):
        cache.update(layer.keys.clone(), layer.values.clone(), i)
    return cache


def greedy(model: Any, cache: Any, first: int, steps: int) -> list[int]:
    """``steps`` greedy tokens after ``first`` (the prefill's prediction), continuing ``cache``."""
    arg = _arg(model)
    out_ids = []
    nxt = torch.tensor([[first]])
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=nxt, use_cache=True, **{arg: cache})
            t = int(out.logits[0, -1].argmax())
            out_ids.append(t)
            nxt = torch.tensor([[t]])
    return out_ids


def prefill(model: Any, ids: Any) -> tuple[Any, int]:
    """DynamicCache after the prompt ``ids`` (1-D), and the prompt's greedy next token."""
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")
    cache = DynamicCache()
    with torch.no_grad():
        out = model(input_ids=ids[None], use_cache=True, **{_arg(model): cache})
    return cache, int(out.logits[0, -1].argmax())


def small_specs(quick: bool) -> list[Spec]:
    """Configurations of the generation parts."""
    specs = [
        Spec("DynamicCache", "dynamic"),
        Spec("ours 4/4", "ours", 4),
        Spec("ours 3/3", "ours", 3),
        Spec("ours 2/2", "ours", 2),
        Spec("quanto 4", "quanto", 4),
        Spec("HQQ 4", "hqq", 4),
        Spec("quanto 2", "quanto", 2),
    ]
    return specs[:3] if quick else specs


def part_greedy(model: Any, tok: Any, args: Any) -> None:
    """Free greedy agreement: 8 prompts of 256 Canterbury tokens (not in the perplexity windows)."""
    ids = kv_data.canterbury_ids(model=kv_data.model_name(model))
    n_prompts, steps = (2, 16) if args.quick else (8, 64)
    offsets = [int(ids.numel() * (i + 0.5) / n_prompts) for i in range(n_prompts)]
    prompts = [ids[o : o + 256] for o in offsets]
    specs = small_specs(args.quick)
    results: dict[str, list[list[int]]] = {s.name: [] for s in specs}
    for p in prompts:
        prefix, first = prefill(model, p)
        for s in specs:
            results[s.name].append(greedy(model, load_prefix(s, model, tok, prefix), first, steps))
    base = results[specs[0].name]
    print(
        f"\n### Free greedy agreement with DynamicCache, {n_prompts} prompts × {steps} tokens "
        "(residual_length=0)\n"
    )
    print("| cache | tokens equal (position-wise) | mean common prefix | prompts identical |")
    print("|---|---:|---:|---:|")
    for s in specs:
        eq = sum(
            a == b for r, q in zip(results[s.name], base, strict=True) for a, b in zip(r, q, strict=True)
        )
        prefixes = []
        for r, q in zip(results[s.name], base, strict=True):
            k = 0
            while k < len(r) and r[k] == q[k]:
                k += 1
            prefixes.append(k)
        same = sum(p == steps for p in prefixes)
        print(
            f"| {s.name} | {eq / (n_prompts * steps):.3f} | {statistics.mean(prefixes):.1f} / {steps} "
            f"| {same}/{n_prompts} |",
            flush=True,
        )
    model.set_attn_implementation("sdpa")


FILLER = (
    "The grass grows in the field. The river runs to the sea. The clouds move over the hills. "
    "A dog sleeps by the door. The clock on the wall ticks on. "
)


def passkey_prompt(tok: Any, n_tokens: int, depth: float, key: str) -> Any:
    """Token ids of a passkey prompt of about ``n_tokens`` tokens, the key at relative ``depth``."""
    head = (
        "There is a pass key hidden in the long text below. Read it, remember it, and answer the "
        "question at the end.\n\n"
    )
    needle = f" The pass key is {key}. Remember it: the pass key is {key}. "
    tail = "\n\nQuestion: what is the pass key? Answer: the pass key is"
    per = len(tok(FILLER, add_special_tokens=False)["input_ids"])
    budget = n_tokens - len(tok(head + needle + tail, add_special_tokens=False)["input_ids"])
    reps = max(1, budget // per)
    before = int(reps * depth)
    text = head + FILLER * before + needle + FILLER * (reps - before) + tail
    return torch.tensor(tok(text, add_special_tokens=False)["input_ids"])


def part_passkey(model: Any, tok: Any, args: Any) -> None:
    """Passkey retrieval accuracy: random 5-digit keys at depths 0.1-0.9 of 1k/2k/3k-token prompts."""
    rng = random.Random(1234)
    lengths = [1024] if args.quick else [1024, 2048, 3072]
    depths = [0.5] if args.quick else [0.1, 0.3, 0.5, 0.7, 0.9]
    specs = small_specs(args.quick)
    hits = {s.name: 0 for s in specs}
    total = 0
    for n in lengths:
        for dpt in depths:
            key = str(rng.randrange(10000, 100000))
            ids = passkey_prompt(tok, n, dpt, key)
            prefix, first = prefill(model, ids)
            total += 1
            for s in specs:
                toks = [first] + greedy(model, load_prefix(s, model, tok, prefix), first, 7)
                text = tok.decode(toks)
                hits[s.name] += key in text.replace(" ", "")
    print(
        f"\n### Passkey retrieval, {total} prompts ({lengths} tokens × depths {depths}), residual_length=0\n"
    )
    print("| cache | found |")
    print("|---|---:|")
    for s in specs:
        print(f"| {s.name} | {hits[s.name]}/{total} |", flush=True)
    model.set_attn_implementation("sdpa")


# --------------------------------------------------------------------------------------------------
# decode speed


def part_decode(model: Any, tok: Any, args: Any) -> None:
    """CPU time per decoded token at 2k and 8k context, every cache loaded from one prefill."""
    from transformers import DynamicCache

    contexts = [512] if args.quick else [int(c) for c in args.contexts.split(",")]
    steps = 4 if args.quick else 16
    ids = kv_data.canterbury_ids(model=kv_data.model_name(model))
    specs = [
        Spec("DynamicCache", "dynamic"),
        Spec("HF QuantizedCache quanto 4 (residual 128)", "quanto", 4, 128),
        Spec("HF QuantizedCache HQQ 4 (residual 128)", "hqq", 4, 128),
        Spec("ours 4/4 (residual 128)", "ours", 4, 128),
        Spec("ours 4/4 (residual 0)", "ours", 4, 0),
        Spec("ours 3/3 (residual 128)", "ours", 3, 128),
    ]
    if args.quick:
        specs = specs[:1] + specs[3:5]
    print(
        f"\n### CPU decode time per token ({torch.get_num_threads()} threads), {steps} steps "
        "after the context\n"
    )
    print("| context | cache | ms / token | × DynamicCache |")
    print("|---:|---|---:|---:|")
    arg = _arg(model)
    for n in contexts:
        model.set_attn_implementation("sdpa")
        prefix = DynamicCache()
        with torch.no_grad():
            for c in range(0, n, 1024):
                out = model(input_ids=ids[None, c : min(n, c + 1024)], use_cache=True, **{arg: prefix})
        first = int(out.logits[0, -1].argmax())
        base = None
        for s in specs:
            if args.filter and s.kind != "dynamic" and not any(f in s.name for f in args.filter.split("|")):
                continue
            times = []
            for _rep in range(2):
                cache = load_prefix(s, model, tok, prefix)
                nxt = torch.tensor([[first]])
                with torch.no_grad():
                    model(input_ids=nxt, use_cache=True, **{arg: cache})  # warm
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        o = model(input_ids=nxt, use_cache=True, **{arg: cache})
                        times.append(time.perf_counter() - t0)
                        nxt = o.logits[:, -1:].argmax(-1)
            ms = 1000 * statistics.median(times)
            base = base or ms
            print(f"| {n} | {s.name} | {ms:.1f} | {ms / base:.2f} |", flush=True)
    model.set_attn_implementation("sdpa")


# --------------------------------------------------------------------------------------------------
# memory


def _tensor_bytes(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of every distinct tensor storage reachable from ``obj`` (peers' quantized states)."""
    seen = set() if seen is None else seen
    if depth > 6 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        inner = [
            getattr(obj, a)
            for a in ("_data", "_scale", "_shift")
            if isinstance(getattr(obj, a, None), torch.Tensor)
        ]
        if inner:
            return sum(_tensor_bytes(t, seen, depth + 1) for t in inner)
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(_tensor_bytes(v, seen, depth + 1) for v in vars(obj).values())
    return 0


def part_memory(args: Any) -> None:
    """Bytes held at 4k and 32k tokens, Llama-3-8B shape (32 layers, 8 KV heads, head_dim 128), bf16."""
    from transformers import DynamicCache, LlamaConfig, QuantizedCache

    from turboquant_rs.hf_cache import TurboQuantCache

    filled = 2
    cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        num_hidden_layers=filled,
        intermediate_size=14336,
        vocab_size=128256,
    )
    scale = 32 / filled
    from turboquant_rs.hf_cache import register_turboquant_attention

    cfg._attn_implementation = register_turboquant_attention()  # update() stores codes, no dense copy
    lengths = [1024] if args.quick else [4096, 32768]
    print(
        f"\n### Cache bytes, Llama-3-8B shape (32 layers × 8 KV heads × head_dim 128, bf16 K/V; {filled} "
        "layers filled, × 16)\n"
    )
    print("| tokens | cache | MiB | × smaller than DynamicCache |")
    print("|---:|---|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for n in lengths:
        kv = [
            (
                torch.randn(1, 8, n, 128, generator=g).to(torch.bfloat16),
                torch.randn(1, 8, n, 128, generator=g).to(torch.bfloat16),
            )
            for _ in range(filled)
        ]
        rows: list[tuple[str, int]] = []
        dyn = DynamicCache()
        for i, (k, v) in enumerate(kv):
            dyn.update(k, v, i)
        rows.append(
            ("DynamicCache (bf16)", sum(layer.keys.nbytes + layer.values.nbytes for layer in dyn.layers))
        )
        for bits, resid in ((4, 0), (3, 0), (2, 0), (4, 128), (3, 128)):
            c = TurboQuantCache(cfg, bit_width=bits, residual_length=resid)
            for i, (k, v) in enumerate(kv):
                for s in range(0, n, 4096):
                    c.update(k[:, :, s : s + 4096], v[:, :, s : s + 4096], i)
                    c.layers[i].commit()
            rows.append((f"ours {bits}/{bits} (residual {resid})", c.nbytes))
        for backend, bits in (("quanto", 4), ("hqq", 4), ("quanto", 2)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = QuantizedCache(backend, cfg, nbits=bits, residual_length=128)
                for i, (k, v) in enumerate(kv):
                    q.update(k, v, i)
            nb = sum(
                _tensor_bytes(layer._quantized_keys) + _tensor_bytes(layer._quantized_values)
                for layer in q.layers
            )
            rows.append((f"QuantizedCache {backend} {bits} (quantized part)", nb))
        base = rows[0][1]
        for name, nb in rows:
            print(f"| {n} | {name} | {nb * scale / 2**20:.1f} | {base / nb:.2f} |", flush=True)


# --------------------------------------------------------------------------------------------------
# diagnostics: per-layer attention-output error, keys vs values


def part_layers(model: Any, tok: Any, args: Any) -> None:
    """Per-layer attention-output error (relative to the residual stream) of ours, K vs V."""
    from turboquant_rs.adaptive import capture_attention, layer_attention_error

    n = 512 if args.quick else 2048
    ids = kv_data.canterbury_ids(n, model=kv_data.model_name(model))[None]
    recs = capture_attention(model, ids)
    print(
        f"\n### Per-layer attention-output error of ours on {n} real tokens "
        "(‖o_proj(Δ)‖² / ‖h‖², mean over tokens)\n"
    )
    cols = [(4, 4), (3, 3), (2, 2), (4, None), (None, 4), (3, None), (None, 3), (2, None), (None, 2)]
    names = ["4/4", "3/3", "2/2", "K4 only", "V4 only", "K3 only", "V3 only", "K2 only", "V2 only"]
    print("| layer | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    sums = [0.0] * len(cols)
    for i, r in enumerate(recs):
        errs = [
            layer_attention_error(
                r["query"],
                r["keys"],
                r["values"],
                c,
                scaling=r["scaling"],
                out_proj=r["out_proj"],
                residual=r["residual"],
                seed=i,
            )
            for c in cols
        ]
        sums = [a + b for a, b in zip(sums, errs, strict=True)]
        print(f"| {i} | " + " | ".join(f"{e:.2e}" for e in errs) + " |", flush=True)
    print("| sum | " + " | ".join(f"{e:.2e}" for e in sums) + " |")


# --------------------------------------------------------------------------------------------------


def main() -> None:
    """Parse flags and run the selected parts."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192, help="perplexity tokens (multiple of 1024)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small settings, to time the parts")
    ap.add_argument("--only", default="ppl,residual,greedy,passkey,decode,memory,layers")
    ap.add_argument(
        "--filter", default="", help="ppl/residual/decode: only caches whose name has one of a|b|c"
    )
    ap.add_argument("--contexts", default="2048,8000", help="decode: context lengths")
    ap.add_argument("--seeds", default="", help="ppl: also run our caches at these seeds (a,b)")
    ap.add_argument(
        "--model", default="smollm2", choices=sorted(kv_data.MODEL_DIRS), help="offline GGUF model"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import turboquant_rs

        turboquant_rs.set_num_threads(args.threads)
    except Exception:  # noqa: BLE001
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)
    parts = args.only.split(",")
    import transformers

    print(
        f"<!-- torch {torch.__version__}, transformers {transformers.__version__}, threads {args.threads} -->"
    )
    model = tok = None
    if set(parts) - {"memory"}:
        model, tok = kv_data.load_model(args.model)
        print(f"<!-- model {args.model}: {type(model).__name__}, {model.config.num_hidden_layers} layers -->")
    t00 = time.perf_counter()
    for part in parts:
        t0 = time.perf_counter()
        if part == "ppl":
            part_ppl(model, tok, args, 0)
        elif part == "residual":
            part_ppl(model, tok, args, 128)
        elif part == "greedy":
            part_greedy(model, tok, args)
        elif part == "passkey":
            part_passkey(model, tok, args)
        elif part == "decode":
            part_decode(model, tok, args)
        elif part == "memory":
            part_memory(args)
        elif part == "layers":
            part_layers(model, tok, args)
        else:
            raise SystemExit(f"unknown part {part}")
        print(f"<!-- {part}: {time.perf_counter() - t0:.0f}s -->", flush=True)
    print(f"<!-- total {time.perf_counter() - t00:.0f}s -->")


if __name__ == "__main__":
    main()
