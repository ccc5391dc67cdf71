"""Every ``python`` code block of README.md runs, each on its own (fresh namespace, empty temp folder).

Convention (an HTML comment on the line before the block's opening fence):

- ``<!-- test: setup=tiny_llama -->``: the block gets ``model``, a random 2-layer ``LlamaForCausalLM``
  built from a config (4 query / 2 KV heads, head_dim 16, vocab 256), and ``tokenizer``, a stand-in that
  maps UTF-8 bytes to token ids (``tokenizer(text, return_tensors="pt")``, ``tokenizer.decode(ids)``).
- ``<!-- test: needs=mod1,mod2 -->``: the block runs only where those modules import (skipped otherwise).

Nothing downloads anything.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- test: (?P<opts>[^>]*?) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)\n```", re.S)


@dataclass
class Block:
    line: int
    code: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"line{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The README's ``python`` blocks with their test options."""
    out = []
    for m in _BLOCK.finditer(text):
        if m.group("lang") != "python":
            continue
        opts = dict(kv.split("=", 1) for kv in (m.group("opts") or "").split() if "=" in kv)
        out.append(Block(text[: m.start("code")].count("\n") + 1, m.group("code"), opts))
    return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


class ByteTokenizer:
    """An offline stand-in tokenizer: UTF-8 bytes are the token ids (vocab 256)."""

    eos_token_id = 0
    pad_token_id = 0

    def __call__(self, text: str, return_tensors: str | None = "pt", **_: Any) -> dict[str, Any]:
        import torch

        ids = torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")


def tiny_llama() -> dict[str, Any]:
    """``model`` and ``tokenizer`` for blocks marked ``setup=tiny_llama``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        max_position_embeddings=1024,
        pad_token_id=0,
        eos_token_id=0,
        bos_token_id=0,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = 0
    return {"model": model, "tokenizer": ByteTokenizer()}


SETUPS = {"tiny_llama": tiny_llama}


def test_the_readme_has_the_blocks_it_promises() -> None:
    assert len(BLOCKS) >= 10
    codes = "\n".join(b.code for b in BLOCKS)
    for name in ("TurboQuantKVCache", "TurboQuantCache.from_model", "TurboQuantIndex", "compress_model_kv"):
        assert name in codes
    for b in BLOCKS:
        unknown = set(b.options) - {"setup", "needs"}
        assert not unknown, f"README line {b.line}: unknown test option(s) {unknown}"
        assert b.options.get("setup", "tiny_llama") in SETUPS
    text = README.read_text(encoding="utf-8")
    assert text.startswith("# turboquant-rs\n\n```bash\nbash scripts/demo.sh")
    assert "bash .ci/run" in text.split("\n\n")[1]


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in filter(None, block.options.get("needs", "").split(",")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"needs {mod}")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    if "setup" in block.options:
        namespace.update(SETUPS[block.options["setup"]]())
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    try:
        exec(code, namespace)
    finally:
        model = namespace.get("model")
        if model is not None and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
