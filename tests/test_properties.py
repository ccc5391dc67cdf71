"""Property tests (hypothesis): round trips of every encoder/decoder pair, and distortion that
falls monotonically with the bit width."""

from __future__ import annotations

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import turboquant_rs as tq
from turboquant_rs import _native

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dims = st.integers(2, 300)
bit_widths = st.integers(1, 8)


def _rows(draw: st.DrawFn, n: int, dim: int) -> np.ndarray:
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-20, 1e-3, 1.0, 1e4, 1e18]))
    return (np.random.default_rng(seed).standard_normal((n, dim)) * scale).astype(np.float32)


@SETTINGS
@given(st.data(), dims, bit_widths)
def test_pack_unpack_round_trip(data: st.DataObject, dim: int, bits: int) -> None:
    n = data.draw(st.integers(0, 5))
    codes = data.draw(hnp.arrays(np.uint8, (n, dim), elements=st.integers(0, (1 << bits) - 1)))
    packed = _native.pack(codes, bits)
    assert packed.shape == (n, -(-dim * bits // 8))
    np.testing.assert_array_equal(_native.unpack(packed, dim, bits), codes)


@SETTINGS
@given(
    hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, max_side=20), elements=st.integers(0, 1))
)
def test_pack_bits_round_trip(bits: np.ndarray) -> None:
    packed = tq.pack_bits(bits)
    np.testing.assert_array_equal(packed, np.packbits(bits, axis=-1, bitorder="big"))
    np.testing.assert_array_equal(tq.unpack_bits(packed, bits.shape[-1]), bits)


@SETTINGS
@given(st.data(), dims, bit_widths, st.booleans(), st.sampled_from(["lsq", "norm", "proj"]), st.booleans())
def test_save_load_round_trip(
    data: st.DataObject, dim: int, bits: int, unbiased: bool, scale: str, entropy: bool
) -> None:
    if unbiased and bits < 2:
        bits = 2
    q = tq.TurboQuant(dim, bits, unbiased, seed=data.draw(st.integers(0, 2**64 - 1)), scale=scale)
    x = _rows(data.draw, data.draw(st.integers(1, 9)), dim)
    out = q.quantize(x)
    q2, back = tq.TurboQuant.load_output(q.save_output(out, entropy=entropy))
    assert (q2.dim, q2.bit_width, q2.unbiased, q2.seed, q2.scale) == (dim, bits, unbiased, q.seed, scale)
    for a, b in zip(out.buffers(), back.buffers(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(q2.dequantize(back), q.dequantize(out).reshape(-1, dim))


@SETTINGS
@given(st.data(), dims)
def test_rotation_is_orthogonal(data: st.DataObject, dim: int) -> None:
    rot = tq.RandomizedHadamardTransform(dim, seed=data.draw(st.integers(0, 1000)))
    x = np.random.default_rng(dim).standard_normal((3, dim)).astype(np.float32)
    y = rot.forward(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-4)
    np.testing.assert_allclose(rot.inverse(y), x, atol=1e-4)


@settings(max_examples=12, deadline=None)
@given(st.integers(16, 400), st.integers(0, 2**32 - 1))
def test_distortion_falls_with_the_bit_width(dim: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((256, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    errs = []
    for bits in range(1, 9):
        q = tq.TurboQuant(dim, bits)
        errs.append(float(((q.dequantize(q.quantize(x)) - x) ** 2).sum(1).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    # and stays within the paper's bounds (b = 1..4): 4^-b <= D <= sqrt(3)·π/2·4^-b, with slack
    for b, e in enumerate(errs[:4], start=1):
        assert 0.8 * 4.0**-b <= e <= 1.1 * (3**0.5 * np.pi / 2) * 4.0**-b, (b, e)


@SETTINGS
@given(st.data(), st.integers(2, 64), st.integers(1, 4), st.sampled_from(["ip", "cosine", "l2"]))
def test_index_save_load_and_k_capping(data: st.DataObject, dim: int, bits: int, metric: str) -> None:
    n = data.draw(st.integers(0, 70))
    index = tq.TurboQuantIndex(dim, bits, metric)
    if n:
        index.add(_rows(data.draw, n, dim) if metric != "l2" else np.ones((n, dim), np.float32))
    k = data.draw(st.sampled_from([1, 5, n + 1, 10**12]))
    q = np.ones((2, dim), np.float32)
    scores, ids = index.search(q, k=k)
    assert ids.shape == (2, min(k, n))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ix.tq")
        index.save(path)
        back = tq.TurboQuantIndex.load(path, mmap=data.draw(st.booleans()))
        s2, i2 = back.search(q, k=k)
    np.testing.assert_array_equal(i2, ids)
    np.testing.assert_array_equal(s2, scores)
