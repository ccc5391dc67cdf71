"""TurboQuant core through the Python API: distortion, bytes, unbiasedness, input handling."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from conftest import unit_rows

import turboquant_rs as tq

PAPER_D1536 = [0.3634, 0.1175, 0.03455, 0.009501]
BETA_D128 = [0.36089, 0.11600, 0.033966, 0.009315]


def relative_mse(x: np.ndarray, xh: np.ndarray) -> float:
    return float(np.mean(np.sum((x - xh) ** 2, axis=1) / np.sum(x * x, axis=1)))


@pytest.mark.parametrize(("d", "table"), [(1536, PAPER_D1536), (128, BETA_D128)])
def test_distortion_matches_paper(rng: np.random.Generator, d: int, table: list[float]) -> None:
    x = unit_rows(rng, 10_000, d)
    for b, want in enumerate(table, start=1):
        exact = tq.TurboQuant(d, b, scale="norm")
        got = relative_mse(x, exact.dequantize(exact.quantize(x)))
        assert abs(got - want) / want < 0.03, (d, b, got, want)
        default = tq.TurboQuant(d, b)
        got_default = relative_mse(x, default.dequantize(default.quantize(x)))
        assert got_default <= got * 1.0001, (d, b, got_default, got)
        assert abs(tq.codebook_distortion(b, d) - want) / want < 0.005


@pytest.mark.parametrize(
    ("d", "b", "unbiased"), [(128, 3, False), (384, 4, False), (1536, 2, True), (100, 3, True)]
)
def test_nbytes_are_real_packed_sizes(rng: np.random.Generator, d: int, b: int, unbiased: bool) -> None:
    n = 257
    q = tq.TurboQuant(d, b, unbiased=unbiased)
    out = q.quantize(rng.standard_normal((n, d)).astype(np.float32))
    mse_bits = b - 1 if unbiased else b
    bound = n * (math.ceil(mse_bits * d / 8) + 4)
    if unbiased:
        bound += n * (math.ceil(d / 8) + 4)
    assert out.nbytes <= bound
    assert out.nbytes == sum(a.nbytes for a in out.buffers())
    assert out.codes.dtype == np.uint8 and out.codes.shape == (n, math.ceil(mse_bits * d / 8))
    assert q.compression_ratio(out) == pytest.approx(4 * n * d / out.nbytes)
    assert q.memory_bytes(n) == out.nbytes


def test_unbiased_inner_products(rng: np.random.Generator) -> None:
    d, n = 64, 20_000
    q = tq.TurboQuant(d, 3, unbiased=True, seed=5)
    x = unit_rows(rng, n, d)
    y = unit_rows(rng, n, d) * 0.6 + x * 0.8
    out = q.quantize(x)
    est = np.empty(n)
    for s in range(0, n, 1000):
        sub = tq.TurboQuantOutput(
            out.codes[s : s + 1000],
            out.scales[s : s + 1000],
            out.qjl_signs[s : s + 1000],
            out.residual_norms[s : s + 1000],
            3,
            d,
            (1000,),
            "numpy",
        )
        est[s : s + 1000] = np.diagonal(q.compute_inner_product(y[s : s + 1000], sub))
    err = est - np.sum(x * y, axis=1)
    se = err.std() / math.sqrt(n)
    assert abs(err.mean()) < 3 * se
    assert d * err.var() < 0.067 * 1.1  # DESIGN.md: orthogonal S at b=3


def test_scores_from_codes_equal_scores_of_reconstruction(rng: np.random.Generator) -> None:
    for unbiased in (False, True):
        q = tq.TurboQuant(96, 4, unbiased=unbiased)
        out = q.quantize(rng.standard_normal((300, 96)))
        queries = rng.standard_normal((7, 96)).astype(np.float32)
        from_codes = q.compute_inner_product(queries, out)
        from_recon = queries @ q.dequantize(out).T
        np.testing.assert_allclose(from_codes, from_recon, rtol=1e-4, atol=1e-4)
        single = q.compute_inner_product(queries[0], out)
        assert single.shape == (300,)


def test_batch_shapes_dtypes_and_zero_copy(rng: np.random.Generator) -> None:
    q = tq.TurboQuant(64, 4)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    out = q.quantize(x)
    assert out.shape == (2, 3) and q.dequantize(out).shape == (2, 3, 64)
    for dtype in (np.float16, np.float64):
        o2 = q.quantize(x.astype(dtype))
        np.testing.assert_array_equal(o2.codes, out.codes) if dtype == np.float64 else None
    from turboquant_rs._convert import as_rows

    rows, _, _ = as_rows(x, 64)
    assert np.shares_memory(rows, x)


def test_torch_in_torch_out(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    q = tq.TurboQuant(128, 3)
    x = torch.randn(4, 128)
    out = q.quantize(x)
    xh = q.dequantize(out)
    assert isinstance(xh, torch.Tensor) and xh.shape == (4, 128)
    ip = q.compute_inner_product(torch.randn(2, 128), out)
    assert isinstance(ip, torch.Tensor) and ip.shape == (2, 4)
    np.testing.assert_array_equal(q.quantize(x.numpy()).codes, out.codes)
    assert q.quantize(x.to(torch.bfloat16)).codes.shape == out.codes.shape


@pytest.mark.parametrize(
    ("make", "exc", "words"),
    [
        (lambda: tq.TurboQuant(64, 0), ValueError, "bit_width"),
        (lambda: tq.TurboQuant(64, 9), ValueError, "bit_width"),
        (lambda: tq.TurboQuant(64, 1, unbiased=True), ValueError, "bit_width >= 2"),
        (lambda: tq.TurboQuant(1, 3), ValueError, "dim"),
        (lambda: tq.TurboQuant(-5, 3), ValueError, "dim"),
        (lambda: tq.TurboQuant(10**12, 3), ValueError, "dim"),
        (lambda: tq.TurboQuant(64, -1), ValueError, "bit_width"),
        (lambda: tq.TurboQuant(64, 2.5), ValueError, "bit_width"),
        (lambda: tq.TurboQuant(64, 3, scale="bogus"), ValueError, "scale"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.zeros((2, 63))), ValueError, "(..., 64)"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.zeros((0, 64))), ValueError, "empty"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.full((2, 64), np.nan)), ValueError, "NaN"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.full((2, 64), np.inf)), ValueError, "Inf"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.zeros((2, 64), dtype=np.int32)), TypeError, "float"),
        (lambda: tq.TurboQuant(64, 3).quantize(np.array([["a"] * 64])), TypeError, "float"),
        (lambda: tq.TurboQuant.load_output(b"garbage bytes"), ValueError, "corrupt"),
        # out-of-range ints reach the native layer as ValueError naming the argument, not
        # PyO3's anonymous OverflowError
        (lambda: tq.get_codebook(300, 128), ValueError, "bit_width"),
        (lambda: tq.get_codebook(4, -1), ValueError, "dim"),
        (lambda: tq.LloydMaxCodebook(128, 9), ValueError, "bit_width"),
        (lambda: tq.TurboQuantIndex(384, 300), ValueError, "bit_width"),
        (lambda: tq.TurboQuantIndex(-1, 4), ValueError, "dim"),
        (lambda: tq.TurboQuantIndex(384, 4, seed=-1), ValueError, "seed"),
    ],
)
def test_bad_input_raises_clear_errors(make, exc, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=None) as info:
        make()
    assert words.lower() in str(info.value).lower()


def test_mismatched_output_is_rejected(rng: np.random.Generator) -> None:
    out = tq.TurboQuant(64, 3).quantize(rng.standard_normal((5, 64)))
    with pytest.raises(ValueError, match="dim=64"):
        tq.TurboQuant(64, 4).dequantize(out)


def test_zero_vector_round_trips(rng: np.random.Generator) -> None:
    q = tq.TurboQuant(32, 3)
    out = q.quantize(np.zeros((3, 32), dtype=np.float32))
    np.testing.assert_array_equal(q.dequantize(out), 0.0)


def test_save_load_and_entropy_coding(rng: np.random.Generator) -> None:
    q = tq.TurboQuant(128, 4, seed=3)
    out = q.quantize(rng.standard_normal((2000, 128)))
    raw = q.save_output(out)
    packed = q.save_output(out, entropy=True)
    saving = 1 - (len(packed) - 2000 * 4) / (len(raw) - 2000 * 4)
    assert 0.04 < saving < 0.07, saving  # paper §3.1: ≈ 5 % at 4 bits (entropy 3.77 bits)
    for blob in (raw, packed):
        q2, o2 = tq.TurboQuant.load_output(blob)
        assert (q2.dim, q2.bit_width, q2.seed) == (128, 4, 3)
        np.testing.assert_array_equal(o2.codes, out.codes)
        np.testing.assert_array_equal(q2.dequantize(o2), q.dequantize(out).reshape(-1, 128))
    damaged = bytearray(packed)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        tq.TurboQuant.load_output(bytes(damaged))


def test_gil_is_released_during_quantize(rng: np.random.Generator) -> None:
    q = tq.TurboQuant(1024, 4)
    x = rng.standard_normal((60_000, 1024)).astype(np.float32)
    tq.set_num_threads(1)
    try:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (q.quantize(x), done.set()))
        start = time.perf_counter()
        worker.start()
        ticks = 0
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)
        worker.join()
        elapsed = time.perf_counter() - start
    finally:
        tq.set_num_threads(0)
    assert elapsed > 0.05
    # with the GIL held, this loop could not run while Rust works
    assert ticks > 0.3 * elapsed / 0.0012, (ticks, elapsed)


def test_seed_api_names_exist() -> None:
    cb = tq.LloydMaxCodebook(128, 2)
    assert cb.centroids.shape == (4,) and cb.boundaries.shape == (3,)
    codes = cb.quantize(np.array([-1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(codes, [0, 1, 3])  # ties go to the lower code
    assert tq.get_codebook(3, 1536).centroids.shape == (8,)
    m = tq.TurboQuantMSE(64, 2)
    x = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    assert m.distortion(x).shape == (10,)
    bits = np.array([[1, 0, 1, 1, 0, 0, 0, 0, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(tq.unpack_bits(tq.pack_bits(bits), 9), bits)
    rht = tq.RandomizedHadamardTransform(100, seed=1)
    assert rht.padded_dim == 100
    np.testing.assert_allclose(
        rht.inverse(rht(x[:, :50].repeat(2, axis=1))), x[:, :50].repeat(2, axis=1), atol=1e-5
    )
    h = tq.fwht(np.eye(4, dtype=np.float32))
    np.testing.assert_allclose(h @ h.T, np.eye(4), atol=1e-6)


@pytest.mark.parametrize("proj_type", ["orthogonal", "gaussian"])
def test_qjl_standalone_is_unbiased(rng: np.random.Generator, proj_type: str) -> None:
    d = 64
    qjl = tq.QJL(d, seed=2, proj_type=proj_type)
    x = unit_rows(rng, 4000, d)
    y = unit_rows(rng, 4000, d) * 0.6 + 0.8 * x
    out = qjl.quantize(x)
    assert out.sign_bits.shape == (4000, 8)
    est = np.einsum("ij,ij->i", qjl.dequantize_for_dot(out), y)
    err = est - np.sum(x * y, axis=1)
    assert abs(err.mean()) < 3 * err.std() / math.sqrt(len(err))
    limit = 1.0 if proj_type == "orthogonal" else math.pi / 2  # d·Var ≤ π/2 (Gaussian), ≈ 0.57 orthogonal
    assert d * err.var() < limit * 1.1
