"""TurboQuantCache inside transformers' generate(): every family of the seed's table, offline.

Tiny random-initialised models (fp32, seeded, initializer_range 0.1 so that greedy margins are not
ties) generate through `TurboQuantCache` at 8 bits with every stored token quantized
(``residual_length=0``) and must give DynamicCache's greedy tokens.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from turboquant_rs.hf_cache import (  # noqa: E402
    ATTN_IMPLEMENTATION,
    TurboQuantCache,
    TurboQuantDynamicCache,
    TurboQuantLayer,
    TurboQuantSlidingLayer,
    TurboQuantWrapper,
    cache_argument_name,
    wrap,
)

T = transformers
COMMON = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    initializer_range=0.1,
)

FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_hidden_layers=2)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(num_hidden_layers=2, sliding_window=6)),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            num_hidden_layers=2,
            sliding_window=6,
            head_dim=16,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=30.0,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=3,
            sliding_window=6,
            head_dim=16,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(num_hidden_layers=2, use_sliding_window=True, sliding_window=6, max_window_layers=1),
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_hidden_layers=2, head_dim=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(num_hidden_layers=2, sliding_window=6, pad_token_id=0)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(num_hidden_layers=2)),
    "jamba": (
        "JambaConfig",
        "JambaForCausalLM",
        dict(
            num_hidden_layers=2,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=2,
            mamba_d_state=4,
            mamba_dt_rank=4,
        ),
    ),
    "lfm2": (
        "Lfm2Config",
        "Lfm2ForCausalLM",
        dict(num_hidden_layers=2, layer_types=["conv", "full_attention"]),
    ),
    # hybrid layers: SSM state and attention in one layer
    "zamba2": (
        "Zamba2Config",
        "Zamba2ForCausalLM",
        dict(
            num_hidden_layers=2,
            layers_block_type=["mamba", "hybrid"],
            mamba_d_state=8,
            mamba_headdim=16,
            n_mamba_heads=8,
            num_mem_blocks=1,
            attention_head_dim=16,
        ),
    ),
    "falcon_h1": (
        "FalconH1Config",
        "FalconH1ForCausalLM",
        dict(
            num_hidden_layers=2,
            mamba_d_ssm=32,
            mamba_n_heads=4,
            mamba_d_head=8,
            mamba_d_state=8,
            mamba_n_groups=1,
            head_dim=16,
        ),
    ),
}

_MODELS: dict[str, Any] = {}


def tiny_model(name: str) -> Any:
    """A seeded tiny model of family ``name`` (built once per session, reset to sdpa)."""
    if name not in _MODELS:
        cfg_name, model_name, kw = FAMILIES[name]
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = getattr(T, cfg_name)(**{**COMMON, **kw})
            _MODELS[name] = getattr(T, model_name)(cfg).eval()
    model = _MODELS[name]
    model.set_attn_implementation("eager" if name == "gemma2" else "sdpa")
    return model


def prompt(batch: int = 1, length: int = 12, seed: int = 1) -> dict[str, Any]:
    """Random token ids (no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 96, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def greedy(model: Any, inputs: dict[str, Any], cache: Any = None, n: int = 8, **kw: Any) -> Any:
    """Greedy tokens, with ``cache`` passed under the name the installed version prefers."""
    if cache is not None:
        kw[cache_argument_name(model)] = cache
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, **kw)


#: Logit gap under which two greedy candidates count as tied: 8-bit codes move these tiny models'
#: logits by up to ~0.05, so a divergence is accepted only where DynamicCache's own top-2 gap is
#: below this (a coin flip, not a defect).
TIE = 0.1


def assert_same_greedy(ref: Any, out: Any) -> None:
    """``out`` has ``ref``'s greedy tokens, up to a step where ``ref``'s top-2 logits are tied."""
    n = len(ref.scores)
    gen_ref = ref.sequences[:, -n:]
    gen_out = out.sequences[:, -n:]
    for step in range(n):
        top = ref.scores[step].topk(2, dim=-1).values
        gap = (top[:, 0] - top[:, 1]).min().item()
        if not torch.equal(gen_ref[:, step], gen_out[:, step]):
            assert gap < TIE, (step, gap, gen_ref.tolist(), gen_out.tolist())
            return
        assert torch.allclose(ref.scores[step], out.scores[step], atol=TIE), step
    assert torch.equal(ref.sequences, out.sequences)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_greedy_equals_dynamic_cache_at_8_bits(family: str) -> None:
    model = tiny_model(family)
    inputs = prompt()
    scored = {"output_scores": True, "return_dict_in_generate": True}
    ref = greedy(model, inputs, **scored)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    res = greedy(model, inputs, cache, **scored)
    assert_same_greedy(ref, res)
    ref = ref.sequences
    kv_layers = [layer for layer in cache.layers if isinstance(layer, TurboQuantLayer)]
    assert kv_layers, "no TurboQuant layer built"
    for layer in kv_layers:
        # residual_length=0: everything held is codes once attention has read the step
        assert layer.keys.shape[-2] == 0
        assert layer.quantized_tokens > 0
        assert layer.get_seq_length() == ref.shape[1] - 1


def test_layer_kinds_follow_the_config() -> None:
    kinds = {
        "gemma3": [TurboQuantSlidingLayer, TurboQuantSlidingLayer, TurboQuantLayer],
        "mistral": [TurboQuantSlidingLayer, TurboQuantSlidingLayer],
        "qwen2": [TurboQuantLayer, TurboQuantSlidingLayer],
        "llama": [TurboQuantLayer, TurboQuantLayer],
    }
    for family, expect in kinds.items():
        cache = TurboQuantCache(tiny_model(family).config, bit_width=4)
        assert [type(layer) for layer in cache.layers] == expect, family
    from turboquant_rs.hf_cache import TurboQuantHybridLayer

    zamba = TurboQuantCache(tiny_model("zamba2").config).layers
    assert not isinstance(zamba[0], TurboQuantLayer) and isinstance(zamba[1], TurboQuantHybridLayer)
    lfm2 = TurboQuantCache(tiny_model("lfm2").config)
    assert not isinstance(lfm2.layers[0], TurboQuantLayer)
    assert isinstance(lfm2.layers[1], TurboQuantLayer)
    sliding = TurboQuantCache(tiny_model("mistral").config).layers[0]
    assert sliding.sliding_window == 6 and sliding.is_sliding


@pytest.mark.parametrize("residual", [0, 3, 64])
def test_residual_window(residual: int) -> None:
    model = tiny_model("llama")
    inputs = prompt(length=10)
    ref = greedy(model, inputs, n=6)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=residual)
    out = greedy(model, inputs, cache, n=6)
    assert torch.equal(ref, out)
    total = ref.shape[1] - 1
    for layer in cache.layers:
        assert layer.keys.shape[-2] <= residual
        assert layer.quantized_tokens + layer.keys.shape[-2] == total
        assert layer.get_seq_length() == total
    if residual >= total:
        assert cache.quantized_tokens == [0, 0]


def test_sliding_layer_drops_tokens_no_query_can_see() -> None:
    model = tiny_model("mistral")
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    greedy(model, prompt(length=12), cache, n=4)
    layer = cache.layers[0]
    assert layer.get_seq_length() == 15
    # the prefill's first 12 - 6 + 1 = 7 tokens were never stored
    assert layer.quantized_tokens == 15 - 7
    assert layer.get_mask_sizes(1) == (6, 15 - 6 + 1)


def test_left_padded_batch_equals_single_runs() -> None:
    model = tiny_model("llama")
    short, long = prompt(length=7, seed=3), prompt(length=11, seed=4)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    ids = torch.cat(
        [torch.cat([torch.zeros((1, pad), dtype=torch.long), short["input_ids"]], 1), long["input_ids"]]
    )
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    batch = greedy(
        model,
        {"input_ids": ids, "attention_mask": mask},
        TurboQuantCache.from_model(model, bit_width=8, residual_length=0),
        n=6,
        pad_token_id=0,
    )
    for row, single in ((0, short), (1, long)):
        alone = greedy(model, single, TurboQuantCache.from_model(model, bit_width=8, residual_length=0), n=6)
        assert batch[row, -6:].tolist() == alone[0, -6:].tolist(), row
    # and the dense reference agrees on the padded batch
    ref = greedy(tiny_model("llama"), {"input_ids": ids, "attention_mask": mask}, n=6, pad_token_id=0)
    assert torch.equal(ref, batch)


def test_padding_reaches_attention_through_the_mask_function() -> None:
    model = tiny_model("llama")
    ids = prompt(length=8)["input_ids"]
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits[0, -1]
        cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
        got = model(input_ids=ids, attention_mask=mask, **{cache_argument_name(model): cache}).logits[0, -1]
        unmasked = model(input_ids=ids).logits[0, -1]
    assert torch.allclose(ref, got, atol=1e-4)
    assert not torch.allclose(unmasked, got, atol=1e-3)


def test_beam_search_equals_dynamic_cache() -> None:
    model = tiny_model("qwen3")
    inputs = prompt(length=9)
    ref = greedy(model, inputs, n=6, num_beams=2)
    out = greedy(
        model, inputs, TurboQuantCache.from_model(model, bit_width=8, residual_length=0), n=6, num_beams=2
    )
    assert torch.equal(ref, out)


def test_both_cache_argument_names() -> None:
    model = tiny_model("llama")
    inputs = prompt()
    ref = greedy(model, inputs)
    for name in ("past_key_values", "cache"):
        import inspect

        if name == "cache" and "cache" not in inspect.signature(model.forward).parameters:
            continue
        cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, **{name: cache})
        assert torch.equal(ref, out), name
        assert cache.get_seq_length() == out.shape[1] - 1


def test_update_hands_attention_zero_memory_stand_ins() -> None:
    model = tiny_model("llama")
    cache = TurboQuantCache.from_model(model, bit_width=4, residual_length=0)
    k = torch.randn(1, 2, 5, 16)
    keys, values = cache.update(k, torch.randn(1, 2, 5, 16), 0)
    assert keys.shape == (1, 2, 5, 16)
    assert keys.stride() == (0, 0, 0, 0) and values.stride() == (0, 0, 0, 0)
    assert keys.untyped_storage().nbytes() <= 4
    assert keys.turboquant_layer is cache.layers[0]


def test_other_attention_gets_dense_tensors_and_one_warning() -> None:
    model = tiny_model("llama")
    inputs = prompt()
    ref = greedy(model, inputs)
    cache = TurboQuantCache(model.config, bit_width=8, residual_length=0)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = greedy(model, inputs, cache)
    ours = [w for w in seen if "TurboQuantCache" in str(w.message)]
    assert len(ours) == 1
    assert torch.equal(ref, out)
    assert cache.layers[0].quantized_tokens == out.shape[1] - 1


def _fill(cache: Any, tokens: int, seed: int = 0, batch: int = 2) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    kv = []
    for i in range(len(cache.layers)):
        k = torch.randn(batch, 2, tokens, 16, generator=g)
        v = torch.randn(batch, 2, tokens, 16, generator=g)
        cache.update(k, v, i)
        kv.append((k, v))
    cache.commit()
    return kv


def test_crop_matches_dynamic_cache() -> None:
    model = tiny_model("llama")
    for residual in (0, 4, 100):
        ours = TurboQuantCache.from_model(model, bit_width=8, residual_length=residual)
        ref = DynamicCache()
        for (k, v), i in zip(_fill(ours, 10), range(2), strict=True):
            ref.update(k, v, i)
        ours.crop(-3)
        ref.crop(-3)
        assert ours.get_seq_length() == ref.get_seq_length() == 7
        k, v = ours.layers[0].dequantized()
        assert k.shape == ref.layers[0].keys.shape
        assert torch.allclose(k, ref.layers[0].keys, atol=0.05)
        assert ours.get_mask_sizes(1, 0) == ref.get_mask_sizes(1, 0)


def test_generate_after_crop_continues() -> None:
    model = tiny_model("llama")
    inputs = prompt(length=12)
    cut = {k: v[:, :9] for k, v in inputs.items()}
    ref = greedy(model, cut, n=5)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    with torch.no_grad():
        model(**inputs, **{cache_argument_name(model): cache})
    cache.crop(-3)
    out = greedy(model, cut, cache, n=5)
    assert torch.equal(ref, out)


def test_reorder_select_repeat_match_dynamic_cache() -> None:
    model = tiny_model("llama")
    ours = TurboQuantCache.from_model(model, bit_width=8, residual_length=3)
    ref = DynamicCache()
    for (k, v), i in zip(_fill(ours, 8, batch=3), range(2), strict=True):
        ref.update(k, v, i)
    for op, arg in (
        ("reorder_cache", torch.tensor([2, 0, 0])),
        ("batch_repeat_interleave", 2),
        ("batch_select_indices", torch.tensor([5, 1, 2])),
    ):
        getattr(ours, op)(arg)
        getattr(ref, op)(arg)
        k, v = ours.layers[1].dequantized()
        assert k.shape == ref.layers[1].keys.shape, op
        assert torch.allclose(k, ref.layers[1].keys, atol=0.05), op
        assert torch.allclose(v, ref.layers[1].values, atol=0.05), op
        assert torch.equal(ours.layers[1].keys, ref.layers[1].keys[:, :, -3:]), op


@pytest.mark.filterwarnings("ignore:TurboQuantCache:UserWarning")
def test_mask_sizes_and_seq_length_match_dynamic_cache() -> None:
    for family in ("gemma3", "llama"):
        cfg = tiny_model(family).config
        ours = TurboQuantCache(cfg, bit_width=8, residual_length=2)
        ref = DynamicCache(config=cfg)
        g = torch.Generator().manual_seed(0)
        for step, t in enumerate((9, 1, 1, 3)):
            for i in range(len(ours.layers)):
                k = torch.randn(1, 2, t, 16, generator=g)
                v = torch.randn(1, 2, t, 16, generator=g)
                ours.update(k, v, i)
                ref.update(k, v, i)
            ours.commit()
            for i in range(len(ours.layers)):
                assert ours.get_seq_length(i) == ref.get_seq_length(i), (family, step, i)
                for q in (1, 4):
                    assert ours.get_mask_sizes(q, i) == ref.get_mask_sizes(q, i), (family, step, i, q)
            assert ours.get_max_length() == ref.get_max_length()


def test_reset() -> None:
    model = tiny_model("llama")
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    greedy(model, prompt(), cache, n=3)
    assert cache.nbytes > 0
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes == 0
    ref = greedy(model, prompt(seed=7), n=4)
    assert torch.equal(greedy(model, prompt(seed=7), cache, n=4), ref)


@pytest.mark.filterwarnings("ignore:TurboQuantCache:UserWarning")
def test_memory_vs_dynamic_cache() -> None:
    cfg = T.LlamaConfig(
        vocab_size=32,
        hidden_size=512,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
    )
    g = torch.Generator().manual_seed(0)
    tokens = 1024
    dense = DynamicCache(config=cfg)
    caches = {bits: TurboQuantCache(cfg, bit_width=bits, residual_length=0) for bits in (3, 4)}
    for i in range(2):
        k = torch.randn(1, 2, tokens, 128, generator=g).half()
        v = torch.randn(1, 2, tokens, 128, generator=g).half()
        dense.update(k, v, i)
        for c in caches.values():
            c.update(k, v, i)
    dense_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.layers)
    for bits, c in caches.items():
        c.commit()
        ratio = dense_bytes / c.nbytes
        assert ratio >= {4: 3.7, 3: 4.8}[bits], (bits, ratio)
    # the default window holds 128 tokens in full precision (fp16)
    windowed = TurboQuantCache(cfg, bit_width=4)
    windowed.update(k, v, 0)
    windowed.commit()
    assert windowed.layers[0].keys.shape[-2] == 128 and windowed.layers[0].keys.dtype == torch.float16


def test_layer_bits_drive_each_layer() -> None:
    cfg = tiny_model("llama").config
    cache = TurboQuantCache(cfg, layer_bits=[2, (4, 3)])
    assert (cache.layers[0].key_bits, cache.layers[0].value_bits) == (2, 2)
    assert (cache.layers[1].key_bits, cache.layers[1].value_bits) == (4, 3)
    model = tiny_model("llama")
    ref = greedy(model, prompt())
    out = greedy(
        model, prompt(), TurboQuantCache.from_model(model, layer_bits=[8, (8, 8)], residual_length=0)
    )
    assert torch.equal(ref, out)


def test_bart_self_attention_cache() -> None:
    torch.manual_seed(0)
    cfg = T.BartConfig(
        vocab_size=96,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        max_position_embeddings=64,
        init_std=0.1,
    )
    model = T.BartForConditionalGeneration(cfg).eval()
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    ref = greedy(model, inputs, n=6)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    assert isinstance(cache, T.EncoderDecoderCache)
    assert isinstance(cache.self_attention_cache, TurboQuantCache)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no dense fallback anywhere
        out = greedy(model, inputs, cache, n=6)
    assert torch.equal(ref, out)
    assert cache.self_attention_cache.quantized_tokens == [out.shape[1] - 1] * 2


# -- bad input -------------------------------------------------------------------------------------


def test_mla_is_refused() -> None:
    cfg = T.DeepseekV2Config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
    )
    with pytest.raises(ValueError, match="Multi-head Latent Attention"):
        TurboQuantCache(cfg)


def test_config_without_attention_is_refused() -> None:
    with pytest.raises(ValueError, match="no attention layers"):
        TurboQuantCache(T.MambaConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2))


@pytest.mark.parametrize("bits", [0, 9, 2.5, 2.25, 8.5, -1, True])
def test_bits_out_of_range(bits: Any) -> None:
    cfg = tiny_model("llama").config
    with pytest.raises(ValueError):
        TurboQuantCache(cfg, bit_width=bits)
    with pytest.raises(ValueError):
        TurboQuantCache(cfg, key_bit_width=bits)
    if bits == 2.5:  # a half width per layer is the outlier split of that side
        layer = TurboQuantCache(cfg, layer_bits=[4, bits]).layers[1]
        assert (layer.key_bits, layer.n_outlier_channels) == (2, cfg.head_dim // 2)
    else:
        with pytest.raises(ValueError):
            TurboQuantCache(cfg, layer_bits=[4, bits])


def test_bad_layer_bits_and_residual() -> None:
    cfg = tiny_model("llama").config
    with pytest.raises(ValueError, match="layer_bits"):
        TurboQuantCache(cfg, layer_bits=[4])
    with pytest.raises(ValueError, match="residual_length"):
        TurboQuantCache(cfg, residual_length=-1)


@pytest.mark.filterwarnings("ignore:TurboQuantCache:UserWarning")
def test_mismatched_head_dims_are_refused() -> None:
    cache = TurboQuantCache(tiny_model("llama").config)
    with pytest.raises(ValueError, match="head_dim"):
        cache.update(torch.randn(1, 2, 3, 32), torch.randn(1, 2, 3, 32), 0)
    with pytest.raises(ValueError, match="KV heads"):
        cache.update(torch.randn(1, 4, 3, 16), torch.randn(1, 4, 3, 16), 0)
    cache.update(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16), 0)
    with pytest.raises(ValueError, match="batch size"):
        cache.update(torch.randn(2, 2, 1, 16), torch.randn(2, 2, 1, 16), 0)


def test_cache_reused_across_models_is_refused() -> None:
    llama, qwen = tiny_model("llama"), tiny_model("qwen3")
    cache = TurboQuantCache.from_model(llama, bit_width=4)
    TurboQuantCache.from_model(qwen, bit_width=4)
    with pytest.raises(ValueError, match="different model"):
        greedy(qwen, prompt(), cache, n=2)


# -- the seed's names ------------------------------------------------------------------------------


def test_wrap_compresses_during_generate() -> None:
    model = tiny_model("llama")
    inputs = prompt()
    ref = greedy(model, inputs)
    wrapped = wrap(model, bit_width=8)
    assert isinstance(wrapped, TurboQuantWrapper)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = wrapped.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(ref, out)
    cache = wrapped.last_cache
    assert isinstance(cache, TurboQuantCache)
    assert sum(cache.quantized_tokens) == 2 * (out.shape[1] - 1)
    assert wrapped.config is model.config and wrapped.vocab_size == model.vocab_size
    assert TurboQuantWrapper(model)._bit_width == 4  # head_dim 16 < 128: the seed's auto choice


def test_turboquant_dynamic_cache_seed_api() -> None:
    model = tiny_model("qwen3")
    inputs = prompt()
    ref = greedy(model, inputs)
    cache = TurboQuantDynamicCache.from_model(model, bit_width=8)
    assert isinstance(cache, TurboQuantCache) and cache.residual_length == 0
    out = greedy(model, inputs, cache)
    assert torch.equal(ref, out)
    keys = cache.key_cache
    assert len(keys) == 2 and keys[0].shape[-2] == out.shape[1] - 1
    stats = cache.compress_all()
    assert stats["layers_compressed"] == 2 and stats["layers_skipped"] == 0
    assert stats["compressed_mb"] == pytest.approx(cache.nbytes / 2**20)
    assert stats["ratio"] == pytest.approx(stats["original_mb"] / stats["compressed_mb"])
    k0, v0 = cache[0]
    assert k0.shape == v0.shape == keys[0].shape
    assert len(cache.to_legacy_cache()) == 2


def test_turboquant_dynamic_cache_without_config_falls_back_loudly() -> None:
    model = tiny_model("llama")
    inputs = prompt()
    ref = greedy(model, inputs)
    cache = TurboQuantDynamicCache(bit_width=8)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = greedy(model, inputs, cache)
    assert any("dense dequantized" in str(w.message) for w in seen)
    assert torch.equal(ref, out)
    assert cache.quantized_tokens == [out.shape[1] - 1] * 2


class _Module:
    """Stands in for an attention module in direct calls of the attention function."""

    is_causal = True
    training = False


def _exact(q: Any, k: Any, v: Any, window: int | None, valid: Any = None, scale: float = 0.25) -> Any:
    hq, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(hq // hkv, 1)
    v = v.repeat_interleave(hq // hkv, 1)
    z = q @ k.transpose(-1, -2) * scale
    t, ql = k.shape[2], q.shape[2]
    qpos = torch.arange(t - ql, t)[:, None]
    kpos = torch.arange(t)[None, :]
    allowed = kpos <= qpos
    if window is not None:
        allowed &= kpos > qpos - window
    allowed = allowed[None, None]
    if valid is not None:
        allowed = allowed & valid[:, None, None, :]
    return torch.softmax(z.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0) @ v


@pytest.mark.parametrize("window", [None, 20])
def test_multi_store_attention_equals_dense_attention_over_the_decoded_stores(window: int | None) -> None:
    """Several consecutive stores (a sliding layer's segments) plus exact extras: the codes'
    parts and the extras in one softmax equal dense attention over the dequantized tokens
    followed by the extras (causal, window, a padded batch row)."""
    from turboquant_rs.hf_cache import _multi_store_attention
    from turboquant_rs.kv_cache import KVLayerStore

    g = torch.Generator().manual_seed(3)
    b, hkv, hq, d = 2, 2, 4, 64
    stores, ks, vs = [], [], []
    for i, t in enumerate((30, 25)):
        st = KVLayerStore(d, hkv, 4, 3, sink_tokens=1 if i == 0 else 0)
        k = torch.randn(b, hkv, t, d, generator=g)
        v = torch.randn(b, hkv, t, d, generator=g)
        st.append(k.numpy(), v.numpy())
        dk, dv = st.decompress()
        stores.append(st)
        ks.append(torch.from_numpy(dk))
        vs.append(torch.from_numpy(dv))
    ek = torch.randn(b, hkv, 6, d, generator=g)
    ev = torch.randn(b, hkv, 6, d, generator=g)
    q = torch.randn(b, hq, 3, d, generator=g)
    valid = torch.ones(b, 61, dtype=torch.bool)
    valid[1, :4] = False  # left padding of row 1
    got = _multi_store_attention(
        q, stores, ek, ev, scaling=0.25, softcap=None, sliding_window=window, key_valid=valid
    )
    want = _exact(q, torch.cat(ks + [ek], 2), torch.cat(vs + [ev], 2), window, valid)
    assert float((got - want).norm() / want.norm()) < 1e-5


@pytest.mark.parametrize("residual", [0, 5])
def test_sliding_layer_memory_stays_bounded_and_attention_exact(residual: int) -> None:
    from turboquant_rs.hf_cache import turboquant_attention

    cfg = T.MistralConfig(
        vocab_size=32,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
        sliding_window=8,
    )
    cfg._attn_implementation = ATTN_IMPLEMENTATION
    cache = TurboQuantCache(cfg, bit_width=8, residual_length=residual)
    layer = cache.layers[0]
    g = torch.Generator().manual_seed(0)
    ks, vs = [], []
    valid = torch.ones(2, 0, dtype=torch.bool)
    most_stores = 0
    for step, t in enumerate([20] + [1] * 150 + [7] + [1] * 30):
        k = torch.randn(2, 2, t, 16, generator=g)
        v = torch.randn(2, 2, t, 16, generator=g)
        q = torch.randn(2, 4, t, 16, generator=g)
        ks.append(k)
        vs.append(v)
        new_valid = torch.ones(2, t, dtype=torch.bool)
        if step == 0:
            new_valid[0, :4] = False  # a left-padded row
        valid = torch.cat([valid, new_valid], 1)
        sk, sv = cache.update(k, v, 0)
        most_stores = max(most_stores, len([x for x in layer.stores if x.seq_len]))
        mask = valid if not bool(valid.all()) else None
        out, _ = turboquant_attention(_Module(), q, sk, sv, mask, scaling=0.25, sliding_window=8)
        ref = _exact(q, torch.cat(ks, 2), torch.cat(vs, 2), 8, valid).transpose(1, 2)
        assert out.shape == (2, t, 4, 16) and out.is_contiguous()
        assert torch.allclose(out, ref, atol=3e-2), (step, (out - ref).abs().max())
        assert layer.held_tokens <= 2 * layer.segment_tokens + layer.first_chunk_tokens + residual + 8
    assert len(layer.stores) <= 2
    # with residual 0 the two-store attention path ran (with 5, residual + a new store's first chunk
    # cover the window, so the old store is unseen by the time the new one starts)
    assert most_stores == (2 if residual == 0 else 1)
    assert layer.get_seq_length() == 20 + 150 + 7 + 30
    assert layer.keys.shape[-2] <= residual + layer.first_chunk_tokens


def test_long_sliding_generation_equals_dynamic_cache() -> None:
    model = tiny_model("mistral")
    inputs = prompt(length=12)
    scored = {"output_scores": True, "return_dict_in_generate": True}
    ref = greedy(model, inputs, n=90, **scored)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    out = greedy(model, inputs, cache, n=90, **scored)
    assert_same_greedy(ref, out)
    layer = cache.layers[0]
    assert len(layer.stores) >= 1 and layer.held_tokens < 80


def test_deepcopy_gives_an_independent_cache() -> None:
    import copy

    model = tiny_model("gemma3")
    inputs = prompt(length=12)
    cut = {k: v[:, :-1] for k, v in inputs.items()}
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=2)
    with torch.no_grad():
        model(**cut, **{cache_argument_name(model): cache})
    twin = copy.deepcopy(cache)
    assert twin.layers[0].owner is twin and twin.layers[0].store is not cache.layers[0].store
    a = greedy(model, inputs, cache, n=4)
    b = greedy(model, inputs, twin, n=4)
    assert torch.equal(a, b)
    assert cache.get_seq_length() == twin.get_seq_length() == 11 + 4


def test_t5_relative_bias_is_refused_for_codes_and_falls_back_loudly() -> None:
    torch.manual_seed(0)
    cfg = T.T5Config(
        vocab_size=96,
        d_model=64,
        d_kv=16,
        d_ff=96,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        initializer_factor=3.0,
        decoder_start_token_id=0,
    )
    model = T.T5ForConditionalGeneration(cfg).eval()
    with pytest.raises(ValueError, match="relative position bias"):
        TurboQuantCache.from_model(model)
    model.set_attn_implementation("eager")
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(3))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = greedy(model, inputs, n=5)
    cache = T.EncoderDecoderCache(TurboQuantCache(cfg, bit_width=8, residual_length=0), DynamicCache())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = greedy(model, inputs, cache, n=5)
    assert any("dense dequantized" in str(w.message) for w in seen)
    assert torch.equal(ref, out)
    assert cache.self_attention_cache.quantized_tokens == [out.shape[1] - 1] * 2


def test_attn_implementation_by_name_at_load_time() -> None:
    from turboquant_rs.hf_cache import register_turboquant_attention

    name = register_turboquant_attention()
    torch.manual_seed(0)
    cfg_name, _, kw = FAMILIES["llama"]
    cfg = getattr(T, cfg_name)(**{**COMMON, **kw})
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation=name).eval()
    assert model.config._attn_implementation == name
    inputs = prompt()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the cache sees the codes attention: no fallback
        out = greedy(model, inputs, TurboQuantCache(model.config, bit_width=8, residual_length=0))
    model.set_attn_implementation("sdpa")
    assert torch.equal(out, greedy(model, inputs))


def test_outlier_split_reaches_the_store() -> None:
    model = tiny_model("llama")
    inputs = prompt()
    ref = greedy(model, inputs)
    cache = TurboQuantCache.from_model(
        model, bit_width=7, residual_length=0, n_outlier_channels=8, value_outlier_channels=8, outlier_bits=8
    )
    assert torch.equal(greedy(model, inputs, cache), ref)
    store = cache.layers[0].store
    assert store.key_bits == pytest.approx(7.5) and store.value_bits == pytest.approx(7.5)
    with pytest.raises(ValueError, match="n_outlier_channels"):
        TurboQuantCache(model.config, n_outlier_channels=15)
    with pytest.raises(ValueError, match="outlier_bits"):
        TurboQuantCache(model.config, n_outlier_channels=4, outlier_bits=9)


def _padded_batch(short: int = 7, long: int = 11) -> dict[str, Any]:
    a, b = prompt(length=short, seed=3)["input_ids"], prompt(length=long, seed=4)["input_ids"]
    pad = long - short
    ids = torch.cat([torch.cat([torch.zeros((1, pad), dtype=torch.long), a], 1), b])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["gemma3", "mistral", "gemma2"])
def test_sliding_families_padded_batch_and_beams(family: str) -> None:
    model = tiny_model(family)
    inputs = _padded_batch()
    scored = {"output_scores": True, "return_dict_in_generate": True, "pad_token_id": 0}
    ref = greedy(model, inputs, n=20, **scored)
    out = greedy(
        model, inputs, TurboQuantCache.from_model(model, bit_width=8, residual_length=0), n=20, **scored
    )
    assert_same_greedy(ref, out)
    single = prompt(length=9)
    ref_b = greedy(tiny_model(family), single, n=8, num_beams=2)
    out_b = greedy(
        model, single, TurboQuantCache.from_model(model, bit_width=8, residual_length=3), n=8, num_beams=2
    )
    assert torch.equal(ref_b, out_b)


def test_gemma3_shaped_mqa_with_wide_heads() -> None:
    # Gemma-3-270m's shape in small: one KV head (MQA), head_dim 256, 5 sliding : 1 full
    torch.manual_seed(0)
    cfg = T.Gemma3TextConfig(
        **{**COMMON, "num_key_value_heads": 1},
        num_hidden_layers=6,
        head_dim=256,
        sliding_window=8,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
    )
    model = T.Gemma3ForCausalLM(cfg).eval()
    inputs = prompt(length=14)
    scored = {"output_scores": True, "return_dict_in_generate": True}
    ref = greedy(model, inputs, n=10, **scored)
    cache = TurboQuantCache.from_model(model, bit_width=8, residual_length=0)
    assert_same_greedy(ref, greedy(model, inputs, cache, n=10, **scored))
    assert [type(x) for x in cache.layers] == [TurboQuantSlidingLayer] * 5 + [TurboQuantLayer]
