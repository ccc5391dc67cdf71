"""turboquant_rs.compat: detect_model_kv_info, compress_model_kv (generate continues), extract_kv.

Also runs the seed README's HF and compat examples under ``turboquant_rs`` names, with tiny local
models in place of hub downloads.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_cache import (  # noqa: E402
    FAMILIES,
    assert_same_greedy,
    cache_argument_name,
    greedy,
    prompt,
    tiny_model,
)
from transformers import DynamicCache  # noqa: E402

from turboquant_rs.compat import ModelKVInfo, compress_model_kv, detect_model_kv_info, extract_kv  # noqa: E402
from turboquant_rs.hf_cache import ATTN_IMPLEMENTATION, TurboQuantCache, TurboQuantLayer  # noqa: E402

T = transformers


def test_compat_imports_without_torch_at_module_level() -> None:
    import ast
    import pathlib

    import turboquant_rs.compat as compat

    tree = ast.parse(pathlib.Path(compat.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top for a in n.names} | {
        (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)
    }
    assert not names & {"torch", "transformers", "numpy"}


EXPECT: dict[str, dict[str, Any]] = {
    "llama": dict(head_dim=16, kv=2, q=4, kinds=["full_attention"] * 2, skip=[], window=None),
    "mistral": dict(head_dim=16, kv=2, q=4, kinds=["sliding_attention"] * 2, skip=[], window=6),
    "gemma2": dict(head_dim=16, kv=2, q=4, kinds=["sliding_attention", "full_attention"], skip=[], window=6),
    "gemma3": dict(
        head_dim=16, kv=2, q=4, kinds=["sliding_attention"] * 2 + ["full_attention"], skip=[], window=6
    ),
    "qwen2": dict(head_dim=16, kv=2, q=4, kinds=["full_attention", "sliding_attention"], skip=[], window=6),
    "qwen3": dict(head_dim=16, kv=2, q=4, kinds=["full_attention"] * 2, skip=[], window=None),
    "phi3": dict(head_dim=16, kv=2, q=4, kinds=["sliding_attention"] * 2, skip=[], window=6),
    "cohere": dict(head_dim=16, kv=2, q=4, kinds=["full_attention"] * 2, skip=[], window=None),
    "jamba": dict(
        head_dim=16, kv=2, q=4, kinds=["linear_attention", "full_attention"], skip=[0], window=None
    ),
    "lfm2": dict(head_dim=16, kv=2, q=4, kinds=["conv", "full_attention"], skip=[0], window=None),
    "zamba2": dict(head_dim=16, kv=2, q=4, kinds=["linear_attention", "hybrid"], skip=[0], window=None),
    "falcon_h1": dict(head_dim=16, kv=2, q=4, kinds=["hybrid", "hybrid"], skip=[], window=None),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detect_model_kv_info(family: str) -> None:
    info = detect_model_kv_info(tiny_model(family))
    e = EXPECT[family]
    assert (info.head_dim, info.num_kv_heads, info.num_query_heads) == (e["head_dim"], e["kv"], e["q"])
    assert info.layer_types == e["kinds"]
    assert info.skip_layers == e["skip"]
    assert info.attention_layers == [i for i in range(len(e["kinds"])) if i not in e["skip"]]
    assert info.n_layers == len(e["kinds"])
    assert info.is_gqa and not info.is_latent_kv and not info.is_encoder_decoder
    windows = [6 if k == "sliding_attention" else None for k in e["kinds"]]
    assert info.sliding_windows == windows
    if e["window"] is not None:
        assert info.sliding_window == e["window"] and info.has_sliding_layers


def test_detect_mla_encoder_decoder_and_configs() -> None:
    mla = T.DeepseekV2Config(
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
    assert detect_model_kv_info(mla).is_latent_kv
    bart = T.BartConfig(d_model=64, decoder_layers=3, decoder_attention_heads=4, encoder_attention_heads=4)
    info = detect_model_kv_info(bart)
    assert info.is_encoder_decoder and info.n_layers == 3 and info.head_dim == 16
    t5 = T.T5Config(d_model=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2)
    assert detect_model_kv_info(t5).head_dim == 8
    with pytest.raises(ValueError):
        detect_model_kv_info(object())
    assert isinstance(detect_model_kv_info(tiny_model("llama").config), ModelKVInfo)


def _prefill(model: Any, inputs: dict[str, Any]) -> Any:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        out = model(**inputs, use_cache=True)
    return getattr(out, "past_key_values", None) or out.cache


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma3", "jamba", "lfm2", "zamba2", "falcon_h1"])
def test_compress_model_kv_continues_generate(family: str) -> None:
    # transformers' own pattern for continuing from a cache: the cache holds every token but the
    # last of the ids passed to generate() (a cache holding all of them makes 5.25 feed the whole
    # prompt again, for DynamicCache as for ours).
    model = tiny_model(family)
    inputs = prompt(length=12)
    scored = {"output_scores": True, "return_dict_in_generate": True}
    ref = greedy(model, inputs, n=6, **scored)
    past = _prefill(model, {k: v[:, :-1] for k, v in inputs.items()})
    cache = compress_model_kv(past, model, bit_width=8)
    assert isinstance(cache, TurboQuantCache)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert cache.get_seq_length() == 11
    for layer in cache.layers:
        if isinstance(layer, TurboQuantLayer):
            assert layer.keys.shape[-2] == 0  # residual_length=0 (the seed's default): all codes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # attention reads the codes, no dense fallback
        out = greedy(model, inputs, cache, n=6, **scored)
    assert_same_greedy(ref, out)


def test_compress_model_kv_keeps_a_residual_window_and_bits() -> None:
    model = tiny_model("llama")
    past = _prefill(model, prompt(length=12))
    cache = compress_model_kv(past, model, bit_width=4, residual_length=5, key_bit_width=5)
    for layer in cache.layers:
        assert (layer.key_bits, layer.value_bits) == (5, 4)
        assert layer.keys.shape[-2] == 5 and layer.quantized_tokens == 7


def test_compress_model_kv_bart() -> None:
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
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(5))
    dec = torch.tensor([[2, 7, 11, 13]])
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=dec, use_cache=True)
        past = getattr(out, "past_key_values", None) or out.cache
        cache = compress_model_kv(past, model, bit_width=8)
        assert isinstance(cache, T.EncoderDecoderCache)
        assert cache.self_attention_cache.get_seq_length() == 4
        nxt = torch.tensor([[17]])
        enc = (out.encoder_last_hidden_state,)
        got = model(encoder_outputs=enc, decoder_input_ids=nxt, **{cache_argument_name(model): cache}).logits
        model.set_attn_implementation("sdpa")
        ref = model(input_ids=ids, decoder_input_ids=torch.cat([dec, nxt], 1)).logits[:, -1:]
    assert torch.allclose(got, ref, atol=5e-2)


def test_compress_model_kv_refuses_mla() -> None:
    mla = T.DeepseekV2Config(
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

    class Fake:
        config = mla

    with pytest.raises(ValueError, match="Multi-head Latent Attention"):
        compress_model_kv(DynamicCache(), Fake(), bit_width=3)


def test_extract_kv_formats() -> None:
    model = tiny_model("lfm2")
    past = _prefill(model, prompt(length=6))
    pairs = extract_kv(past)
    assert pairs[0] == (None, None)  # the conv layer
    k, v = pairs[1]
    assert k.shape == (1, 2, 6, 16)
    legacy = extract_kv([(k, v), (k, v)])
    assert legacy[1][0] is k
    cache = compress_model_kv(past, model, bit_width=8)
    dk, dv = extract_kv(cache)[1]
    assert dk.shape == k.shape and torch.allclose(dk, k, atol=0.05) and torch.allclose(dv, v, atol=0.05)
    enc_dec = T.EncoderDecoderCache(DynamicCache(), DynamicCache())
    enc_dec.self_attention_cache.update(k, v, 0)
    assert extract_kv(enc_dec)[0][0] is not None


# -- the seed README's examples, under turboquant_rs names -------------------------------------------


def _readme_model() -> tuple[Any, dict[str, Any]]:
    """Stands in for ``AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-0.6B")`` and its tokenizer."""
    model = tiny_model("qwen3")
    return model, prompt(length=10, seed=11)


def test_readme_compat_example() -> None:
    # The README's flow hands generate() a cache that already holds the whole prompt; transformers
    # then feeds the prompt again on top of it (5.17 and 5.25 alike, for any cache; 5.17's sdpa mask
    # even treats the cached tokens as padding there), so only "it runs and continues from the
    # compressed cache" is checked here. test_compress_model_kv_continues_generate checks tokens.
    from turboquant_rs.compat import compress_model_kv

    model, inputs = _readme_model()
    for bits in (3, 8):
        past_key_values = _prefill(model, inputs)
        # --- README ---
        compressed_cache = compress_model_kv(past_key_values, model, bit_width=bits)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            outputs = model.generate(**inputs, past_key_values=compressed_cache, max_new_tokens=10)
        # --------------
        assert outputs.shape == (1, 20)
        assert torch.equal(outputs[:, :10], inputs["input_ids"])
        assert isinstance(compressed_cache, TurboQuantCache)
        assert compressed_cache.get_seq_length() == 10 + outputs.shape[1] - 1
        assert compressed_cache.layers[0].keys.shape[-2] == 0


def test_readme_real_model_and_generate_examples() -> None:
    from turboquant_rs.kv_cache import TurboQuantKVCache

    model, inputs = _readme_model()
    # "Real Model Example"
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    kv = out.past_key_values
    k, v = kv.layers[0].keys, kv.layers[0].values
    cache = TurboQuantKVCache(head_dim=k.shape[-1], bit_width=3)
    compressed = cache.compress(k.float(), v.float())
    assert cache.decompress_keys(compressed).shape == k.shape
    # "Generate text with compressed KV cache"
    cache = TurboQuantKVCache(head_dim=k.shape[-1], bit_width=8, residual_length=0)
    new_cache = DynamicCache()
    for i in range(len(out.past_key_values.layers)):
        k = out.past_key_values.layers[i].keys.float()
        v = out.past_key_values.layers[i].values.float()
        compressed = cache.compress(k, v)
        k_hat = cache.decompress_keys(compressed).to(k.dtype)
        v_hat = cache.decompress_values(compressed).to(v.dtype)
        new_cache.update(k_hat, v_hat, i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        outputs = model.generate(**inputs, past_key_values=new_cache, max_new_tokens=8, do_sample=False)
    assert outputs.shape == (1, 18) and torch.equal(outputs[:, :10], inputs["input_ids"])
    assert new_cache.get_seq_length() == 10 + outputs.shape[1] - 1


def test_readme_wrap_example() -> None:
    from turboquant_rs.hf_cache import wrap

    model, inputs = _readme_model()
    expected = greedy(model, inputs, n=8)
    # wrap(your_hf_model); model.generate(input_ids, max_new_tokens=...)
    wrapped = wrap(model, bit_width=8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        output = wrapped.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(output, expected)
    assert wrapped.last_cache.nbytes > 0
