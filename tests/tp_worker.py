"""Worker of tests/test_tensor_parallel.py: greedy generation through TurboQuantCache, TP or not.

``python tests/tp_worker.py single MODEL_DIR OUT_DIR`` builds a tiny random Llama (4 KV heads, 8 query
heads, fixed seed), saves it to MODEL_DIR, loads it back from there and generates on one process.

``python -m torch.distributed.run --nproc-per-node 2 tests/tp_worker.py tp MODEL_DIR OUT_DIR`` loads the
same saved weights with transformers' tensor parallelism (``tp_plan="auto"``, gloo on CPU) and generates
on every rank.

Each process runs the same greedy ``generate()`` twice, through ``TurboQuantCache`` and through
``DynamicCache``, counting the torch.distributed collectives each run issues, and writes what it saw
(tokens, logits, cache bytes, heads per layer, collectives) to ``OUT_DIR/<single|rankN>.json``.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM

from turboquant_rs.hf_cache import TurboQuantCache, TurboQuantLayer, cache_argument_name

SEED = 0
NUM_KV_HEADS = 4
NUM_Q_HEADS = 8
HEAD_DIM = 32
NUM_LAYERS = 2
NEW_TOKENS = 16
PROMPT_LEN = 12
BATCH = 2
#: The cache settings of both runs.
CACHE_KWARGS: dict[str, Any] = {"bit_width": 4, "residual_length": 4}

#: torch.distributed entry points a cache could gather or exchange K/V through (counted while generating).
_COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "send",
    "recv",
    "isend",
    "irecv",
)
_FUNCTIONAL = ("all_reduce", "all_gather_tensor", "reduce_scatter_tensor", "all_to_all_single", "broadcast")


def build_and_save(model_dir: Path) -> None:
    """A tiny random Llama with fixed weights, saved so that every process loads the same ones."""
    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=NUM_Q_HEADS * HEAD_DIM,
        intermediate_size=512,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_Q_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(cfg).eval().save_pretrained(model_dir)


def load(model_dir: Path, tensor_parallel: bool) -> Any:
    """The saved model, sharded over the ranks with tp_plan="auto" when ``tensor_parallel``."""
    kwargs: dict[str, Any] = {}
    if tensor_parallel:
        try:  # transformers 5.18+: tp_plan travels in a DistributedConfig
            from transformers.distributed import DistributedConfig

            kwargs["distributed_config"] = DistributedConfig(tp_plan="auto")
        except ImportError:  # older releases take tp_plan directly
            kwargs["tp_plan"] = "auto"
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs).eval()


class CollectiveCounter:
    """Counts calls of torch.distributed's collectives (eager and functional) while active."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.active = False
        modules: list[tuple[Any, tuple[str, ...], str]] = [(dist, _COLLECTIVES, "")]
        try:
            import torch.distributed._functional_collectives as funcol

            modules.append((funcol, _FUNCTIONAL, "functional."))
        except ImportError:  # pragma: no cover
            pass
        for module, names, prefix in modules:
            for name in names:
                fn = getattr(module, name, None)
                if callable(fn):
                    setattr(module, name, self._wrap(fn, prefix + name))

    def _wrap(self, fn: Any, name: str) -> Any:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.counts[name] += 1
            return fn(*args, **kwargs)

        return counted

    def run(self, fn: Any) -> tuple[Any, dict[str, int]]:
        """``fn()`` and the collectives it issued."""
        self.counts.clear()
        self.active = True
        try:
            result = fn()
        finally:
            self.active = False
        return result, dict(self.counts)


def prompts() -> torch.Tensor:
    """BATCH fixed prompts of PROMPT_LEN tokens (no padding)."""
    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(3, 256, (BATCH, PROMPT_LEN), generator=gen)
    ids[:, 0] = 1
    return ids


def generate(model: Any, cache: Any) -> tuple[list[list[int]], list[list[list[float]]]]:
    """Greedy tokens (prompt + NEW_TOKENS) and the logits of every new step, (step, batch, vocab)."""
    out = model.generate(
        prompts(),
        attention_mask=torch.ones(BATCH, PROMPT_LEN, dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **{cache_argument_name(model): cache},
    )
    logits = [step.float().tolist() for step in out.logits]
    return out.sequences.tolist(), logits


def main(argv: list[str]) -> None:
    mode, model_dir, out_dir = argv[0], Path(argv[1]), Path(argv[2])
    torch.set_num_threads(1)
    tensor_parallel = mode == "tp"
    if mode == "single":
        build_and_save(model_dir)
    elif mode != "tp":
        raise SystemExit(f"unknown mode {mode!r}: single or tp")
    counter = CollectiveCounter()
    model = load(model_dir, tensor_parallel)
    rank = int(os.environ.get("RANK", "0"))
    k_proj = model.model.layers[0].self_attn.k_proj.weight
    local_k_rows = int((k_proj.to_local() if hasattr(k_proj, "to_local") else k_proj).shape[0])

    cache = TurboQuantCache.from_model(model, **CACHE_KWARGS)
    with torch.no_grad():
        (tokens, logits), tq_collectives = counter.run(lambda: generate(model, cache))
    layers = [layer for layer in cache.layers if isinstance(layer, TurboQuantLayer)]
    report: dict[str, Any] = {
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "tp_size": getattr(model, "_tp_size", None),
        "config_kv_heads": model.config.num_key_value_heads,
        "k_proj_local_rows": local_k_rows,
        "tokens": tokens,
        "logits": logits,
        "cache_nbytes": cache.nbytes,
        "layer_nbytes": [layer.nbytes for layer in layers],
        "layer_kv_heads": [layer.num_kv_heads for layer in layers],
        "store_kv_heads": [store.num_kv_heads for layer in layers for store in layer.stores],
        "quantized_tokens": cache.quantized_tokens,
        "dense_fallback": cache._warned_dense,
        "tq_collectives": tq_collectives,
    }
    dense = DynamicCache(config=model.config)
    with torch.no_grad():
        (dense_tokens, _), dense_collectives = counter.run(lambda: generate(model, dense))
    report["dynamic_tokens"] = dense_tokens
    report["dynamic_collectives"] = dense_collectives
    report["dynamic_kv_heads"] = [int(layer.keys.shape[1]) for layer in dense.layers]
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"rank{rank}.json" if tensor_parallel else "single.json"
    (out_dir / name).write_text(json.dumps(report))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
