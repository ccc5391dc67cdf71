"""End to end on the GPU: TurboQuantCache inside a model, against DynamicCache in the same process.

Command (on the device; the GGUF and token ids as described in benches/RESULTS.md):

    PYTHONUNBUFFERED=1 python3 benches/bench_gpu_e2e.py --only llama,ppl

Parts:

- llama: a Llama-3-8B-shaped model (32 layers, 32 query / 8 KV heads, d = 128, hidden 4096,
  MLP 14336, vocabulary 128256; random bf16 weights) prefilled with ``--context`` tokens through a
  DynamicCache; then ``--steps`` greedy decode steps with that DynamicCache, and with a 4-bit
  ``TurboQuantCache`` loaded from it (``load_from``; the DynamicCache freed before decoding).
  Reports ms per token (CUDA-synchronised wall time, median of the steps after two warm-up
  steps), peak ``torch.cuda.max_memory_allocated`` over the decode steps, the cache's bytes, and
  the largest batch × context each cache fits into the card (the card's memory less the weights
  and the measured decode-time activations, over the measured bytes per token).
- ppl: SmolLM2-135M perplexity through TurboQuantCache on the GPU with bench_kv_quality.py's
  protocol (8 × 1024-token windows of the Canterbury text in 128-token chunks, a fresh cache per
  window, residual_length=0): DynamicCache, ours 4/4 and 3/3 (defaults: first token exact), fp32.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def _sync_ms(fn: Any) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0)


def _llama(layers: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
        rope_theta=500000.0, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():  # small random weights keep bf16 activations finite over 32 layers
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02)
    model.eval()
    return model


def _decode(model: Any, cache: Any, first: Any, steps: int, arg: str) -> tuple[float, int]:
    """(median ms per token after 2 warm-up steps, peak bytes allocated during the steps)."""
    torch.cuda.reset_peak_memory_stats()
    tok = first
    times = []
    with torch.no_grad():
        for i in range(steps + 2):
            box: dict[str, Any] = {}

            def step(tok: Any = tok, box: dict[str, Any] = box) -> None:
                box["out"] = model(input_ids=tok, use_cache=True, **{arg: cache})

            ms = _sync_ms(step)
            tok = box["out"].logits[:, -1:].argmax(-1)
            if i >= 2:
                times.append(ms)
    return statistics.median(times), int(torch.cuda.max_memory_allocated())


def part_llama(args: Any) -> None:
    from transformers import DynamicCache

    from turboquant_rs.hf_cache import TurboQuantCache, cache_argument_name, enable_turboquant_attention

    model = _llama(args.layers)
    arg = cache_argument_name(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    card = torch.cuda.get_device_properties(0).total_memory
    print(f"\n### Llama-3-8B-shaped decode at {args.context} tokens ({torch.cuda.get_device_name(0)})\n")
    print(f"weights {weights / 2**30:.2f} GiB, card {card / 2**30:.1f} GiB, {args.layers} layers\n")
    print("| batch | cache | ms / token | tokens/s | peak allocated GiB | cache GiB | bytes / token | "
          "fits (batch × context tokens) |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch in args.batches:
        g = torch.Generator(device="cuda").manual_seed(1)
        ids = torch.randint(0, 128256, (batch, args.context), device="cuda", generator=g)
        model.set_attn_implementation("sdpa")
        dyn = DynamicCache()
        with torch.no_grad():
            for a in range(0, args.context, args.prefill_chunk):
                out = model(input_ids=ids[:, a : a + args.prefill_chunk], use_cache=True, logits_to_keep=1,
                            **{arg: dyn})  # fmt: skip
        first = out.logits[:, -1:].argmax(-1)
        del out
        # the prefill's K/V, kept to load each TurboQuantCache from; its bytes are taken off every
        # peak below (they are live through each decode but belong to none of the caches)
        snapshot = [(lay.keys.clone(), lay.values.clone()) for lay in dyn.layers]
        held = sum(k.numel() * k.element_size() * 2 for k, _ in snapshot)
        rows = []
        ms, peak = _decode(model, dyn, first, args.steps, arg)
        peak -= held
        rows.append(("DynamicCache (bf16)", ms, peak, held))
        del dyn
        gc.collect()
        torch.cuda.empty_cache()
        for bits in args.bits:
            src = DynamicCache()
            for i, (k, v) in enumerate(snapshot):
                src.update(k, v, i)
            tq = TurboQuantCache(model.config, bit_width=bits)
            tq.load_from(src)
            del src
            gc.collect()
            torch.cuda.empty_cache()
            enable_turboquant_attention(model)
            nb = tq.nbytes
            ms, peak = _decode(model, tq, first, args.steps, arg)
            peak -= held
            rows.append((f"TurboQuantCache {bits}-bit", ms, peak, nb))
            del tq
            gc.collect()
            torch.cuda.empty_cache()
        del snapshot
        gc.collect()
        torch.cuda.empty_cache()
        tokens = batch * args.context
        for name, ms, peak, nb in rows:
            per_tok = nb / tokens
            act = max(peak - weights - nb, 0)  # decode-time activations and workspace
            fits = int((card - weights - act) / per_tok)
            print(f"| {batch} | {name} | {ms:.2f} | {1000 * batch / ms:.1f} | {peak / 2**30:.2f} | "
                  f"{nb / 2**30:.3f} | {per_tok:.0f} | {fits:,} |", flush=True)  # fmt: skip
    del model
    gc.collect()
    torch.cuda.empty_cache()


def part_ppl(args: Any) -> None:
    import bench_kv_quality as bq
    import kv_data

    model, tok = kv_data.load_model("smollm2")
    model.to("cuda")
    windows = bq.ppl_windows(8192, model)
    arg = bq._arg(model)
    specs = [bq.Spec("DynamicCache (fp32)", "dynamic")]
    specs += [bq.Spec(f"ours {b}/{b} (default: first token exact)", "ours", b, 0) for b in (4, 3)]
    print(f"\n### SmolLM2 perplexity on the GPU ({torch.cuda.get_device_name(0)}), 8 × 1024 windows, "
          "128-token chunks, residual_length=0\n")  # fmt: skip
    print("| cache | perplexity | Δ vs DynamicCache | top-1 agreement | s |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for spec in specs:
        nlls, preds = [], []
        t0 = time.perf_counter()
        for w in windows:
            x = w.unsqueeze(0).to("cuda")
            cache = bq.make_cache(spec, model, tok)
            with torch.no_grad():
                for c in range(0, bq.WINDOW, bq.CHUNK):
                    out = model(input_ids=x[:, c : c + bq.CHUNK], use_cache=True, **{arg: cache})
                    logits = out.logits[0].float()
                    tgt = x[0, c + 1 : c + bq.CHUNK + 1]
                    m = tgt.numel()
                    lp = torch.log_softmax(logits[:m], -1)
                    nlls.append(-lp.gather(1, tgt[:, None])[:, 0])
                    preds.append(logits[:m].argmax(-1))
            if spec.kind == "ours":
                store = cache.layers[0].store
                assert type(store).__name__ == "GpuKVLayerStore", type(store)
        nll = torch.cat(nlls)
        ppl = math.exp(float(nll.mean()))
        pred = torch.cat(preds)
        if base is None:
            base = (ppl, pred)
        agree = float((pred == base[1]).float().mean())
        print(f"| {spec.name} | {ppl:.3f} | {100 * (ppl / base[0] - 1):+.2f} % | {agree:.4f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="llama,ppl")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4])
    ap.add_argument("--bits", type=lambda s: [int(v) for v in s.split(",")], default=[4])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--prefill-chunk", type=int, default=8192)
    args = ap.parse_args()
    import transformers

    import turboquant_rs

    print(f"<!-- torch {torch.__version__}, transformers {transformers.__version__}, "
          f"turboquant_rs {turboquant_rs.__version__} -->")  # fmt: skip
    parts = args.only.split(",")
    if "llama" in parts:
        part_llama(args)
    if "ppl" in parts:
        part_ppl(args)


if __name__ == "__main__":
    main()
