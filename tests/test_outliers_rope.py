"""Outlier channels (detection, exact split/merge, the paper's b/b+1 split) and RoPE vs transformers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from turboquant_rs import (
    OutlierSplit,
    TurboQuant,
    apply_rope,
    compute_rope_frequencies,
    detect_outlier_channels,
    merge_outliers,
    split_outliers,
)
from turboquant_rs.outliers import QuantizedOutlierSplit


def _planted(
    rng: np.random.Generator, shape: tuple[int, int, int, int] = (2, 4, 512, 128), k: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian (B, H, S, D) keys whose ``k`` outlier channels per head (different per head) have
    3-6x the scale of the others; returns the keys and the planted channels (H, k), ascending."""
    x = rng.standard_normal(shape).astype(np.float32)
    planted = np.stack([np.sort(rng.choice(shape[3], k, replace=False)) for _ in range(shape[1])])
    for h in range(shape[1]):
        x[:, h][..., planted[h]] *= rng.uniform(3.0, 6.0, size=k).astype(np.float32)
    return x, planted


def _rel_mse(x_hat: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((np.asarray(x_hat, np.float64) - x) ** 2) / np.sum(np.asarray(x, np.float64) ** 2))


# ---------------------------------------------------------------------------------------------
# split / merge


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("per_head", [False, True])
def test_split_merge_round_trip_is_exact(rng: np.random.Generator, dtype: type, per_head: bool) -> None:
    x = (rng.standard_normal((2, 3, 7, 16)) * 10).astype(dtype)
    # unsorted indices, per head or shared
    idx = np.stack([rng.permutation(16)[:5] for _ in range(3)]) if per_head else np.array([9, 2, 14])
    s = split_outliers(x, idx)
    k = idx.shape[-1]
    assert isinstance(s, OutlierSplit)
    assert s.original_dim == 16 and s.n_outliers == k
    assert s.bulk.dtype == dtype and s.outlier_values.dtype == dtype
    assert s.bulk.shape == (2, 3, 7, 16 - k) and s.outlier_values.shape == (2, 3, 7, k)
    for h in range(3):
        hi = idx[h] if per_head else idx
        rest = np.setdiff1d(np.arange(16), hi)
        np.testing.assert_array_equal(s.outlier_values[:, h], x[:, h][..., hi])
        np.testing.assert_array_equal(s.bulk[:, h], x[:, h][..., rest])
    merged = merge_outliers(s.bulk, s)
    assert merged.dtype == dtype
    assert np.array_equal(merged, x)  # bit for bit


def test_split_merge_torch_keeps_kind_and_dtype(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    x_np, planted = _planted(rng, (1, 4, 64, 32), k=4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.from_numpy(x_np).to(dtype)
        idx = detect_outlier_channels(x, 4)
        assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64
        np.testing.assert_array_equal(idx.numpy(), planted)
        s = split_outliers(x, idx)
        assert isinstance(s.bulk, torch.Tensor) and s.bulk.dtype == dtype and s.outlier_values.dtype == dtype
        merged = merge_outliers(s.bulk, s)
        assert isinstance(merged, torch.Tensor) and merged.dtype == dtype
        assert torch.equal(merged, x)


def test_merge_with_a_reconstructed_bulk_restores_the_outlier_values(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 12)).astype(np.float16)
    s = split_outliers(x, [0, 7, 11])
    merged = merge_outliers(np.zeros((5, 9), dtype=np.float32), s)
    assert merged.dtype == np.float32  # promoted, never rounded
    np.testing.assert_array_equal(merged[:, [0, 7, 11]], x[:, [0, 7, 11]].astype(np.float32))
    assert not merged[:, np.setdiff1d(np.arange(12), [0, 7, 11])].any()


# ---------------------------------------------------------------------------------------------
# detection


def test_detect_finds_the_planted_channels_per_head(rng: np.random.Generator) -> None:
    x, planted = _planted(rng)
    idx = detect_outlier_channels(x, 32)
    assert idx.shape == (4, 32) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, planted)
    # the channels of largest RMS over batch and tokens, ascending
    rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=(0, 2)))
    for h in range(4):
        assert set(idx[h]) == set(np.argsort(-rms[h])[:32])
        assert np.all(np.diff(idx[h]) > 0)
    # (tokens, dim) input has one set
    np.testing.assert_array_equal(detect_outlier_channels(x[0, 2], 32), planted[2])


def test_detect_pooled_over_heads_like_the_seed(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 4, 100, 64)).astype(np.float32)
    shared = np.array([3, 20, 41, 60])
    x[..., shared] *= 5.0
    idx = detect_outlier_channels(x, 4, per_head=False)
    assert idx.shape == (4,)
    np.testing.assert_array_equal(idx, shared)


def test_detect_methods(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4000, 16))
    x[:, 3] += 8.0  # large offset, unit spread: big RMS, small variance
    x[:, 9] *= 3.0  # large spread
    x[:, 12] = rng.uniform(-20, 20, 4000) * (rng.random(4000) < 0.01)  # rare spikes: wide range
    assert list(detect_outlier_channels(x, 1, "magnitude")) == [3]
    assert list(detect_outlier_channels(x, 1, "variance")) == [9]
    assert list(detect_outlier_channels(x, 1, "range")) == [12]


# ---------------------------------------------------------------------------------------------
# the paper's split: outliers at one bit more


def test_split_at_b_and_b_plus_1_bits_beats_uniform_b_bits(rng: np.random.Generator) -> None:
    x, _ = _planted(rng)  # (2, 4, 512, 128), 32 outlier channels per head
    idx = detect_outlier_channels(x, 32)
    random_idx = np.stack([np.sort(rng.choice(128, 32, replace=False)) for _ in range(4)])
    # measured (rng 1234): b=2: uniform 0.115, split 0.041, random split 0.094, uniform 3 bits 0.033;
    #                      b=3: uniform 0.034, split 0.011, random split 0.027, uniform 4 bits 0.009
    for b in (2, 3):
        uniform = TurboQuant(128, b)
        e_uniform = _rel_mse(uniform.dequantize(uniform.quantize(x)), x)
        packed = split_outliers(x, idx).quantize(b)
        assert isinstance(packed, QuantizedOutlierSplit)
        assert (packed.bit_width, packed.outlier_bits, packed.average_bits) == (b, b + 1, b + 0.25)
        x_hat = packed.dequantize()
        assert x_hat.shape == x.shape and x_hat.dtype == np.float32
        e_split = _rel_mse(x_hat, x)
        e_random = _rel_mse(split_outliers(x, random_idx).quantize(b).dequantize(), x)
        assert e_split < 0.5 * e_uniform, (b, e_split, e_uniform)
        assert e_split < 0.6 * e_random, (b, e_split, e_random)  # the detected channels matter
        # stored bytes: the two packed parts and the indices, nothing in full precision
        assert packed.nbytes == packed.bulk.nbytes + packed.outliers.nbytes + idx.nbytes
        assert packed.nbytes < 0.4 * x.nbytes


def test_split_quantize_bits_and_torch(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    x, _ = _planted(rng, (1, 2, 64, 32), k=8)
    s = split_outliers(torch.from_numpy(x), detect_outlier_channels(x, 8))
    packed = s.quantize(2, outlier_bits=4)
    assert packed.average_bits == pytest.approx((8 * 4 + 24 * 2) / 32)
    x_hat = packed.dequantize()
    assert isinstance(x_hat, torch.Tensor) and x_hat.shape == (1, 2, 64, 32)
    assert _rel_mse(x_hat.numpy(), x) < 0.1


# ---------------------------------------------------------------------------------------------
# bad input (outliers)


def test_outlier_bad_input(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 3, 10, 16)).astype(np.float32)
    for n in (0, 16, -1):
        with pytest.raises(ValueError, match="n_outliers"):
            detect_outlier_channels(x, n)
    for n in (2.5, True):
        with pytest.raises(ValueError, match="n_outliers must be an integer"):
            detect_outlier_channels(x, n)
    with pytest.raises(ValueError, match="method"):
        detect_outlier_channels(x, 4, "mean")
    bad = x.copy()
    bad[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        detect_outlier_channels(bad, 4)
    with pytest.raises(ValueError, match="shape"):
        detect_outlier_channels(x[0, 0, 0], 4)  # 1-D
    with pytest.raises(TypeError, match="float"):
        detect_outlier_channels(np.ones((10, 16), dtype=np.int32), 4)

    with pytest.raises(ValueError, match="0..15"):
        split_outliers(x, [1, 16])
    with pytest.raises(ValueError, match="repeat"):
        split_outliers(x, [1, 5, 1])
    with pytest.raises(ValueError, match="1..15"):
        split_outliers(x, [])
    with pytest.raises(TypeError, match="integers"):
        split_outliers(x, [1.0, 2.0])
    with pytest.raises(ValueError, match="per-head"):
        split_outliers(x, np.zeros((4, 2), dtype=np.int64) + [0, 1])  # 4 heads for 3
    with pytest.raises(ValueError, match=r"\(k,\) or \(heads, k\)"):
        split_outliers(x, np.zeros((1, 3, 2), dtype=np.int64))

    s = split_outliers(x, [2, 3])
    with pytest.raises(ValueError, match="bulk"):
        merge_outliers(np.zeros((2, 3, 10, 15), np.float32), s)
    with pytest.raises(ValueError, match="bulk"):
        merge_outliers(np.zeros((2, 3, 9, 14), np.float32), s)
    with pytest.raises(TypeError, match="OutlierSplit"):
        merge_outliers(s.bulk, (s.outlier_values, [2, 3]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2"):
        split_outliers(x, [2]).quantize(2)
    with pytest.raises(ValueError, match="outlier_bits"):
        s.quantize(2, outlier_bits=9)


# ---------------------------------------------------------------------------------------------
# RoPE


def _llama_rope(theta: float, head_dim: int = 16, max_pos: int = 256) -> Any:
    """transformers' LlamaRotaryEmbedding for a tiny LlamaConfig (default rope type, no download)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = transformers.LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=max_pos,
        rope_theta=theta,
    )
    return LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_frequencies_match_transformers(theta: float) -> None:
    torch = pytest.importorskip("torch")
    rotary = _llama_rope(theta)
    f = compute_rope_frequencies(16, 256, theta)
    assert isinstance(f, np.ndarray) and f.shape == (256, 8) and f.dtype == np.float32
    np.testing.assert_array_equal(f[1], rotary.inv_freq.numpy())
    positions = torch.arange(256)[None]
    np.testing.assert_array_equal(f, (positions[..., None].float() * rotary.inv_freq).numpy()[0])
    on_cpu = compute_rope_frequencies(16, 256, theta, device="cpu")
    assert isinstance(on_cpu, torch.Tensor) and torch.equal(on_cpu, torch.from_numpy(f))


# max |ours - transformers| measured: f32 4.8e-7, f64 9.7e-8, f16 2.0e-3, bf16 1.6e-2 (1 ulp of |x| < 4)
_TOL = {"float32": 1e-6, "float64": 1e-6, "float16": 4e-3, "bfloat16": 3.2e-2}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_apply_rope_matches_transformers(dtype: str, theta: float) -> None:
    torch = pytest.importorskip("torch")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rotary = _llama_rope(theta)
    freqs = compute_rope_frequencies(16, 256, theta)
    gen = torch.Generator().manual_seed(0)
    tdt = getattr(torch, dtype)
    q = torch.randn(2, 4, 10, 16, generator=gen).to(tdt)
    k = torch.randn(2, 2, 10, 16, generator=gen).to(tdt)
    position_ids = torch.stack([torch.arange(37, 47), torch.arange(200, 210)])  # per-row offsets
    cos, sin = rotary(q, position_ids)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
    q_ours, k_ours = apply_rope(q, freqs, position_ids), apply_rope(k, freqs, position_ids)
    assert isinstance(q_ours, torch.Tensor) and q_ours.dtype == tdt and q_ours.shape == q.shape
    assert (q_ours.double() - q_ref.double()).abs().max().item() <= _TOL[dtype]
    assert (k_ours.double() - k_ref.double()).abs().max().item() <= _TOL[dtype]
    if dtype != "bfloat16":  # numpy in, numpy out
        k_np = apply_rope(k.numpy(), freqs, position_ids.numpy())
        assert isinstance(k_np, np.ndarray) and k_np.dtype == np.dtype(dtype)
        assert np.abs(k_np.astype(np.float64) - k_ref.double().numpy()).max() <= _TOL[dtype]
    if dtype == "float32":  # pre-RoPE keys back from transformers' rotated keys
        k_back = apply_rope(k_ref, freqs, position_ids, inverse=True)
        assert (k_back - k).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inverse_recovers_x(rng: np.random.Generator, dtype: type) -> None:
    freqs = compute_rope_frequencies(128, 8192, 500000.0)
    x = rng.standard_normal((2, 4, 33, 128)).astype(dtype)
    for positions in (None, 8000, rng.integers(0, 8192, size=(2, 33))):
        y = apply_rope(x, freqs, positions)
        assert y.dtype == dtype and not np.allclose(y, x, atol=1e-2)
        back = apply_rope(y, freqs, positions, inverse=True)
        assert np.abs(back - x).max() <= 1e-6


def test_inverse_in_float16_is_within_rounding(rng: np.random.Generator) -> None:
    freqs = compute_rope_frequencies(64, 1024)
    x = rng.standard_normal((3, 20, 64)).astype(np.float16)
    back = apply_rope(apply_rope(x, freqs, 500), freqs, 500, inverse=True)
    assert back.dtype == np.float16
    # one rounding per rotation: within an f16 ulp (2^-10 relative) of each value, twice
    assert np.all(np.abs(back.astype(np.float64) - x) <= 2 * 2.0**-10 * np.maximum(np.abs(x), 1.0))


def test_positions_forms_and_relative_property(rng: np.random.Generator) -> None:
    freqs = compute_rope_frequencies(32, 512)
    x = rng.standard_normal((2, 3, 6, 32))
    base = apply_rope(x, freqs)
    np.testing.assert_array_equal(base, apply_rope(x, freqs, np.arange(6)))
    np.testing.assert_array_equal(apply_rope(x, freqs, 100), apply_rope(x, freqs, np.arange(100, 106)))
    np.testing.assert_array_equal(
        apply_rope(x, freqs, np.tile(np.arange(7, 13), (2, 1))), apply_rope(x, freqs, np.arange(7, 13))
    )
    # <R_p q, R_p' k> depends on p - p' only (what makes pre-RoPE keys usable at attention time)
    q, k = rng.standard_normal((1, 32)), rng.standard_normal((1, 32))
    dots = [float(apply_rope(q, freqs, p + 17)[0] @ apply_rope(k, freqs, p)[0]) for p in (0, 5, 300, 480)]
    np.testing.assert_allclose(dots, dots[0], rtol=0, atol=1e-4)


def test_rope_bad_input(rng: np.random.Generator) -> None:
    freqs = compute_rope_frequencies(16, 64)
    x = rng.standard_normal((2, 2, 5, 16)).astype(np.float32)
    for head_dim in (15, 0):
        with pytest.raises(ValueError, match="head_dim"):
            compute_rope_frequencies(head_dim)
    with pytest.raises(ValueError, match="max_seq_len"):
        compute_rope_frequencies(16, 0)
    for base in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="base"):
            compute_rope_frequencies(16, 8, base)
    with pytest.raises(TypeError, match="base"):
        compute_rope_frequencies(16, 8, "10000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="freqs must have shape"):
        apply_rope(x, compute_rope_frequencies(32, 64))
    with pytest.raises(ValueError, match="head_dim even"):
        apply_rope(x[..., :15], freqs)
    with pytest.raises(ValueError, match="head_dim even"):
        apply_rope(x[0, 0, 0], freqs)  # 1-D
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        apply_rope(x, freqs, 60)
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        apply_rope(x, freqs, np.array([0, 1, 2, 3, -1]))
    with pytest.raises(ValueError, match="positions must be"):
        apply_rope(x, freqs, np.arange(4))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        apply_rope(x, freqs, np.zeros((3, 5), dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        apply_rope(x, freqs, np.arange(5.0))
    with pytest.raises(TypeError, match="integers"):
        apply_rope(x, freqs, True)
    with pytest.raises(TypeError, match="float"):
        apply_rope(np.ones((5, 16), dtype=np.int64), freqs)
    bad = x.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        apply_rope(bad, freqs)
