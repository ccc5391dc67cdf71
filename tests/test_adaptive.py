"""Adaptive per-layer KV widths: allocations, measured errors, from_model, the seed README examples."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from turboquant_rs.adaptive import (  # noqa: E402
    AdaptiveKVCache,
    calibration_allocation,
    gradient_allocation,
    layer_attention_error,
    measure_attention_errors,
    measure_joint_error,
    measure_output_errors,
    quantized_kv,
    uniform_allocation,
)


def _byte_tokenizer(text: str, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
    """An offline stand-in tokenizer: UTF-8 bytes as token ids."""
    return {"input_ids": torch.tensor([list(text.encode("utf-8"))], dtype=torch.long)}


@pytest.fixture(scope="module")
def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(cfg).eval()


def test_uniform_and_gradient_allocations() -> None:
    assert uniform_allocation(5, 3) == [3] * 5
    lin = gradient_allocation(32, 2, 4, "linear")
    assert len(lin) == 32 and lin[0] == 2 and lin[-1] == 4
    assert lin == sorted(lin)
    step = gradient_allocation(30, 2, 4, "step")
    assert step == [2] * 10 + [3] * 10 + [4] * 10
    assert gradient_allocation(1, 2, 4) == [3]
    with pytest.raises(ValueError):
        gradient_allocation(8, 2, 4, "cosine")
    with pytest.raises(ValueError):
        gradient_allocation(8, 4, 2)
    with pytest.raises(ValueError):
        uniform_allocation(4, 9)


def test_calibration_allocation_hits_the_target_and_spends_where_it_pays() -> None:
    # layer 0 gains a lot from bits, layer 2 almost nothing
    errors = [
        {2: 1.0, 3: 0.3, 4: 0.1},
        {2: 0.2, 3: 0.08, 4: 0.03},
        {2: 0.01, 3: 0.009, 4: 0.008},
    ]
    bits = calibration_allocation(errors, 3.0)
    assert sum(bits) / 3 == pytest.approx(3.0)
    assert bits[0] == 4 and bits[2] == 2
    # fractional targets land exactly or just under
    for target in (2.0, 2.4, 2.5, 3.34, 4.0):
        got = calibration_allocation(errors, target)
        assert sum(got) / 3 <= target + 1e-9
        assert sum(got) / 3 > target - 1.0 / 3
    with pytest.raises(ValueError):
        calibration_allocation(errors, 1.5)
    # the greedy result is the optimum of this small table at the target
    import itertools

    best = min(
        (c for c in itertools.product((2, 3, 4), repeat=3) if sum(c) <= 9),
        key=lambda c: sum(errors[i][b] for i, b in enumerate(c)),
    )
    assert tuple(bits) == best


def test_calibration_allocation_with_key_value_pairs() -> None:
    errors = [{2: 1.0, (2, 3): 0.4, (3, 2): 0.9, 3: 0.35}, {2: 0.5, (2, 3): 0.45, (3, 2): 0.2, 3: 0.19}]
    bits = calibration_allocation(errors, target_avg_bits=2.5)
    assert bits == [(2, 3), (3, 2)]


def test_layer_error_falls_with_bits() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 64, 32, generator=g)
    k = torch.randn(1, 2, 64, 32, generator=g) * 2 + 0.5
    v = torch.randn(1, 2, 64, 32, generator=g)
    errs = [layer_attention_error(q, k, v, b) for b in (1, 2, 3, 4, 6)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    # keys exact / values exact split the error
    assert layer_attention_error(q, k, v, (None, 3)) < errs[2] * 1.01
    assert layer_attention_error(q, k, v, (3, None)) < errs[2] * 1.01


def test_output_errors_rank_widths_and_layers(tiny_llama: torch.nn.Module) -> None:
    kw = {"max_tokens": 160, "chunk": 32}
    table = measure_output_errors(tiny_llama, _byte_tokenizer, bit_options=[2, 3, 4, 8], **kw)
    assert len(table) == 4
    for row in table:
        assert row[2] > row[3] > row[4] > row[8] >= 0
        assert row[8] < 0.05 * row[2]
    # every token through the codes costs more than the chunked protocol
    every = measure_output_errors(tiny_llama, _byte_tokenizer, bit_options=[2], max_tokens=160, chunk=0)
    assert sum(r[2] for r in every) > sum(r[2] for r in table)
    with pytest.raises(ValueError, match="chunk"):
        measure_output_errors(tiny_llama, _byte_tokenizer, max_tokens=64, chunk=128)
    # the default measure of from_model and of the seed's call form
    cache = AdaptiveKVCache.from_model(tiny_llama, _byte_tokenizer, head_dim=16, max_tokens=160)
    default = measure_output_errors(tiny_llama, _byte_tokenizer, max_tokens=160)
    assert cache.calibration_errors == default
    assert all(r[2] > r[4] > 0 for r in default)
    seed_form = calibration_allocation(tiny_llama, _byte_tokenizer, None, [2, 3, 4], 3.0, max_tokens=160)
    assert seed_form == calibration_allocation(default, 3.0)
    with pytest.raises(ValueError, match="measure"):
        AdaptiveKVCache.from_model(tiny_llama, _byte_tokenizer, measure="mse")


def test_from_model_on_a_tiny_llama(tiny_llama: torch.nn.Module) -> None:
    table = measure_attention_errors(tiny_llama, _byte_tokenizer, bit_options=[2, 3, 4], max_tokens=128)
    assert len(table) == 4
    for row in table:
        assert row[2] > row[3] > row[4] > 0
    cache = AdaptiveKVCache.from_model(
        tiny_llama, _byte_tokenizer, head_dim=16, target_avg_bits=3.0, max_tokens=128, measure="attention"
    )
    assert cache.n_layers == 4
    assert cache.average_bits == pytest.approx(3.0)
    assert cache.calibration_errors is not None
    text = cache.summary()
    assert "Layer  0" in text and "Average: 3.00" in text
    with pytest.raises(ValueError, match="head_dim"):
        AdaptiveKVCache.from_model(tiny_llama, _byte_tokenizer, head_dim=32, max_tokens=64)
    # the same widths drive TurboQuantCache inside generate()
    from turboquant_rs.hf_cache import TurboQuantCache, cache_argument_name, enable_turboquant_attention

    enable_turboquant_attention(tiny_llama)
    try:
        tq = cache.to_cache(tiny_llama.config, residual_length=0)
        assert isinstance(tq, TurboQuantCache)
        ids = _byte_tokenizer("hello adaptive world")["input_ids"]
        kw = {cache_argument_name(tiny_llama): tq}
        out = tiny_llama.generate(ids, max_new_tokens=6, do_sample=False, **kw)
        assert out.shape[1] == ids.shape[1] + 6
        assert sum(tq.quantized_tokens) > 0
    finally:
        tiny_llama.set_attn_implementation("sdpa")


def test_half_widths_are_the_outlier_split_of_a_side() -> None:
    from turboquant_rs.kv_cache import width_parts

    assert width_parts(3, 64, "w") == (3, 0)
    assert width_parts(3.5, 64, "w") == (3, 32)
    for bad in (3.25, 8.5, 0.5, 9, True, "3"):
        with pytest.raises(ValueError):
            width_parts(bad, 64, "w")
    with pytest.raises(ValueError, match="even head_dim"):
        width_parts(2.5, 15, "w")
    # a half width's error lies between its neighbours', on each side separately
    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 64, 32, generator=g)
    err = {w: float((quantized_kv(k, k, (w, None))[0] - k).norm() / k.norm()) for w in (3, 3.5, 4)}
    assert err[3] > 1.15 * err[3.5] > 1.15 * err[4]
    verr = {w: float((quantized_kv(k, k, (None, w))[1] - k).norm() / k.norm()) for w in (2, 2.5, 3)}
    assert verr[2] > 1.15 * verr[2.5] > 1.15 * verr[3]
    cache = AdaptiveKVCache(32, [(3.5, 2.5), 3, 2.5])
    assert cache.average_bits == pytest.approx(17 / 6)
    assert cache.key_bits == [3.5, 3, 2.5] and cache.value_bits == [2.5, 3, 2.5]
    inner = cache.cache_for(0)
    assert (inner.key_bit_width, inner.n_outlier_channels) == (3, 16)
    assert (inner.value_bit_width, inner.value_outlier_channels) == (2, 16)
    assert "K3.5/V2.5" in cache.summary()
    with pytest.raises(ValueError):
        AdaptiveKVCache(32, [3.25])
    with pytest.raises(ValueError, match="outlier split already"):
        AdaptiveKVCache(32, [3.5], n_outlier_channels=8)


def test_from_model_checks_the_allocation_as_a_whole(
    tiny_llama: torch.nn.Module,
) -> None:
    opts = [2, 3, 4, (3.5, 2.5)]
    cache = AdaptiveKVCache.from_model(
        tiny_llama, _byte_tokenizer, head_dim=16, target_avg_bits=3.0, max_tokens=160, bit_options=opts
    )
    joint = cache.calibration_joint
    assert "uniform 3" in joint and "uniform K3.5/V2.5" in joint
    assert cache.average_bits <= 3.0 + 1e-9
    from turboquant_rs import adaptive

    chosen = adaptive._allocation_label(cache.layer_bits)
    assert chosen in joint
    again = measure_joint_error(tiny_llama, cache.layer_bits, _byte_tokenizer, max_tokens=160)
    assert again == pytest.approx(joint[chosen], rel=1e-6)
    # the rule: the best uniform candidate, unless the per-layer one is better beyond noise
    per_layer, flat3, split = [2, 3, 4, 3], [3] * 4, [(3.5, 2.5)] * 4
    base = torch.linspace(0.01, 0.03, 400, dtype=torch.float64)
    noise = 0.002 * torch.sin(torch.arange(400, dtype=torch.float64))
    kl = {"uniform 3": base + 0.004, "uniform K3.5/V2.5": base}
    kl["per layer 2, 3, 4, 3"] = base - 0.003 + noise  # clearly better than the split
    assert adaptive._pick_allocation(per_layer, [flat3, split], kl) == per_layer
    kl["per layer 2, 3, 4, 3"] = base - 0.0001 + noise  # better on average, within the noise
    assert adaptive._pick_allocation(per_layer, [flat3, split], kl) == split
    assert adaptive._pick_allocation(per_layer, [], kl) == per_layer
    # the whole-model error grows as the widths shrink
    kl = [measure_joint_error(tiny_llama, [w] * 4, _byte_tokenizer, max_tokens=160) for w in (4, 3, 2)]
    assert kl[0] < kl[1] < kl[2]
    # half widths drive TurboQuantCache too
    from turboquant_rs.hf_cache import TurboQuantCache

    tq = TurboQuantCache(tiny_llama.config, layer_bits=[(3.5, 2.5), 3, 2.5, 4])
    first = tq.layers[0]
    assert (first.key_bits, first.n_outlier_channels, first.value_bits, first.value_outlier_channels) == (
        3,
        8,
        2,
        8,
    )
    with pytest.raises(ValueError):
        TurboQuantCache(tiny_llama.config, layer_bits=[3.25, 3, 3, 3])


def test_seed_readme_adaptive_examples(tiny_llama: torch.nn.Module) -> None:
    # Manual: 2-bit for early layers, 4-bit for late layers
    cache = AdaptiveKVCache(head_dim=128, layer_bits=[2] * 10 + [3] * 12 + [4] * 10)
    assert cache.n_layers == 32
    # Gradient allocation: smooth 2→4 bit ramp
    from turboquant_rs.adaptive import gradient_allocation as ga

    bits = ga(n_layers=32, min_bits=2, max_bits=4, strategy="linear")
    cache = AdaptiveKVCache(head_dim=128, layer_bits=bits)
    k = torch.randn(1, 2, 40, 128)
    v = torch.randn(1, 2, 40, 128)
    c = cache.compress_layer(0, k, v)
    assert cache.decompress_layer_keys(0, c).shape == k.shape
    # Auto-calibrated from model, then the README's multi-layer loop
    adaptive = AdaptiveKVCache.from_model(tiny_llama, _byte_tokenizer, head_dim=16, target_avg_bits=3.0)
    print(adaptive.summary())
    ids = _byte_tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    with torch.no_grad():
        out = tiny_llama(input_ids=ids, use_cache=True)
    past_kv = out.past_key_values
    for i in range(adaptive.n_layers):
        k = past_kv.layers[i].keys.float()
        v = past_kv.layers[i].values.float()
        compressed = adaptive.compress_layer(i, k, v)
        assert compressed.seq_len == k.shape[-2]


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        AdaptiveKVCache(head_dim=64, layer_bits=[])
    with pytest.raises(ValueError):
        AdaptiveKVCache(head_dim=64, layer_bits=[3, 0])
    with pytest.raises(ValueError):
        AdaptiveKVCache(head_dim=64, layer_bits=[(3, 2, 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        calibration_allocation([{2: float("nan")}], 2.0)
    with pytest.raises(ValueError):
        calibration_allocation([], 2.0)
    cache = AdaptiveKVCache(head_dim=64, layer_bits=[2, (4, 3)])
    assert cache.average_bits == pytest.approx(2.75)
    assert cache.key_bits == [2, 4] and cache.value_bits == [2, 3]
    with pytest.raises(IndexError):
        cache.compress_layer(2, torch.zeros(1, 1, 4, 64), torch.zeros(1, 1, 4, 64))
