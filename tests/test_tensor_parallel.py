"""TurboQuantCache under transformers' tensor parallelism on CPU (issue 14, CPU part).

Real TP, not a simulation: ``torchrun --nproc-per-node 2`` (``python -m torch.distributed.run``) runs
tests/tp_worker.py on two ranks with the gloo backend, and each rank loads a tiny random Llama (4 KV
heads, 8 query heads, head_dim 32, 2 layers, weights saved once to a temp dir) with
``from_pretrained(..., tp_plan="auto")`` (a ``DistributedConfig`` on transformers 5.18+), so k_proj /
v_proj are split column-wise and every rank's attention sees 2 of the 4 KV heads while the config still
says 4. The same worker, run as one plain process, gives the reference.

Checked: greedy tokens through ``TurboQuantCache(bit_width=4, residual_length=4)`` on both ranks equal
the single-process run with the same cache settings; each rank's cache holds 2 KV heads per layer and
half the single-process cache's bytes; attention read the codes (no dense fallback); and the
TurboQuantCache run issued exactly the collectives a DynamicCache run under the same TP issues (the
model's own all-reduces), so nothing gathered the cache.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

WORKER = Path(__file__).with_name("tp_worker.py")
TIMEOUT_S = 240


def _distributed_unavailable() -> str | None:
    """Why the test cannot run, or None."""
    import torch.distributed as dist

    if not dist.is_available():
        return "torch.distributed is not available in this torch build"
    if not dist.is_gloo_available():
        return "torch.distributed has no gloo backend in this torch build"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    reason = _distributed_unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("tp")
    model_dir, out_dir = root / "model", root / "out"
    _run([str(WORKER), "single", str(model_dir), str(out_dir)], cwd=root)
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(WORKER),
            "tp",
            str(model_dir),
            str(out_dir),
        ],
        cwd=root,
    )
    return {name: json.loads((out_dir / f"{name}.json").read_text()) for name in ("single", "rank0", "rank1")}


def test_real_tensor_parallelism_ran(reports: dict[str, dict[str, Any]]) -> None:
    single = reports["single"]
    assert single["world_size"] == 1 and single["k_proj_local_rows"] == 4 * 32
    for name in ("rank0", "rank1"):
        r = reports[name]
        assert (r["world_size"], r["backend"], r["tp_size"]) == (2, "gloo", 2)
        assert r["config_kv_heads"] == 4  # the config keeps the global count...
        assert r["k_proj_local_rows"] == 2 * 32  # ...while each rank's k_proj holds 2 heads
        assert r["dynamic_kv_heads"] == [2, 2]


def test_greedy_tokens_equal_single_process(reports: dict[str, dict[str, Any]]) -> None:
    single = reports["single"]
    for name in ("rank0", "rank1"):
        assert reports[name]["tokens"] == single["tokens"], name
    # the runs attended over the codes, not a dense copy
    for r in reports.values():
        assert not r["dense_fallback"]
        assert all(n > 0 for n in r["quantized_tokens"])
    # TP changes only the summation order of the row-parallel projections
    ref = torch.tensor(single["logits"])
    for name in ("rank0", "rank1"):
        diff = (torch.tensor(reports[name]["logits"]) - ref).abs().max().item()
        assert diff < 1e-3, (name, diff)


def test_each_rank_holds_half_the_heads_and_bytes(reports: dict[str, dict[str, Any]]) -> None:
    single = reports["single"]
    assert single["layer_kv_heads"] == [4, 4] and single["store_kv_heads"] == [4, 4]
    for name in ("rank0", "rank1"):
        r = reports[name]
        assert r["layer_kv_heads"] == [2, 2] and r["store_kv_heads"] == [2, 2], name
        assert r["quantized_tokens"] == single["quantized_tokens"]
        assert r["cache_nbytes"] * 2 == pytest.approx(single["cache_nbytes"], rel=0.01), name
        assert r["cache_nbytes"] < single["cache_nbytes"]


def test_cache_adds_no_collective(reports: dict[str, dict[str, Any]]) -> None:
    for name in ("rank0", "rank1"):
        r = reports[name]
        assert sum(r["dynamic_collectives"].values()) > 0  # the counter sees TP's own all-reduces
        assert r["tq_collectives"] == r["dynamic_collectives"], name
        assert not any("gather" in k for k in r["tq_collectives"]), r["tq_collectives"]
    assert reports["single"]["tq_collectives"] == {}


def test_fewer_heads_refused_without_a_process_group() -> None:
    """Outside torch.distributed a share of the configured heads is still a mismatch, as before."""
    import torch.distributed as dist
    from transformers import LlamaConfig

    from turboquant_rs.hf_cache import TurboQuantCache

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4
    )
    cache = TurboQuantCache(cfg, bit_width=4)
    with pytest.raises(ValueError, match="KV heads"):
        cache.update(torch.randn(1, 2, 3, 32), torch.randn(1, 2, 3, 32), 0)
