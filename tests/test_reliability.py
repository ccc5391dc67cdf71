"""Hostile and careless input (issue 12): no crash, no silent wrong answer, one error family."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import turboquant_rs as tq
from turboquant_rs import CorruptFileError, TurboQuantError, _native


def _run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter (a crash or hang there cannot take pytest down)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the exception family ---------------------------------------------------------------


def test_one_exception_family() -> None:
    assert issubclass(TurboQuantError, ValueError)
    assert issubclass(CorruptFileError, TurboQuantError)
    assert tq.TurboQuantError is _native.TurboQuantError
    with pytest.raises(TurboQuantError):
        tq.TurboQuant(64, 9)
    with pytest.raises(TurboQuantError):
        _native.Quantizer(64, 4).quantize(np.full((1, 64), np.nan, np.float32))
    with pytest.raises(CorruptFileError):
        tq.TurboQuant.load_output(b"not a file at all")
    with pytest.raises(ValueError):  # old catches keep working
        tq.TurboQuant.load_output(b"TQRS")


# --- crashes: huge k, mapped files, fork ------------------------------------------------


@pytest.mark.parametrize("k", [11, 10**9, 2**62, 2**70])
def test_huge_k_is_capped_by_the_live_vectors(rng: np.random.Generator, k: int) -> None:
    index = tq.TurboQuantIndex(16)
    index.add(rng.standard_normal((10, 16)).astype(np.float32))
    t = time.perf_counter()
    scores, ids = index.search(rng.standard_normal((3, 16)).astype(np.float32), k=k)
    assert time.perf_counter() - t < 1.0
    assert scores.shape == ids.shape == (3, 10)
    assert sorted(ids[0]) == list(range(10))
    _, ids = index.search(np.ones(16, np.float32), k=k, filter=[2, 5])
    assert ids.shape == (10,) and sorted(ids[:2]) == [2, 5] and np.all(ids[2:] == -1)


def test_mapped_index_truncated_or_rewritten_is_an_error_not_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "ix.tq"
    res = _run_child(
        f"""
        import os, numpy as np, turboquant_rs as tq
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5000, 64)).astype(np.float32)
        ix = tq.TurboQuantIndex(64); ix.add(x); ix.save({str(path)!r})
        want = ix.search(x[:3], k=5)[1]
        m = tq.TurboQuantIndex.load({str(path)!r}, mmap=True)
        assert (m.search(x[:3], k=5)[1] == want).all()
        # replaced by save() (a rename): the mapping keeps its data
        tq.TurboQuantIndex(64).save({str(path)!r})
        assert (m.search(x[:3], k=5)[1] == want).all()
        ix.save({str(path)!r})
        m = tq.TurboQuantIndex.load({str(path)!r})
        os.truncate({str(path)!r}, 100)
        for op in (lambda: m.search(x[:3], k=5), lambda: m.add(x[:2]), lambda: m.save({str(path)!r} + ".2")):
            try:
                op()
                raise SystemExit("no error after truncation")
            except tq.CorruptFileError as e:
                assert "changed on disk" in str(e), e
        ix.save({str(path)!r})
        m = tq.TurboQuantIndex.load({str(path)!r})
        size = os.path.getsize({str(path)!r})
        with open({str(path)!r}, "r+b") as f:  # rewritten in place, same length
            f.seek(size // 2); f.write(b"\\xff" * 64)
        try:
            m.search(x[:3], k=5)
            raise SystemExit("no error after an in-place rewrite")
        except tq.CorruptFileError:
            pass
        ix.save({str(path)!r})
        m = tq.TurboQuantIndex.load({str(path)!r})
        os.remove({str(path)!r})  # unlinking keeps the mapped file alive
        assert (m.search(x[:3], k=5)[1] == want).all()
        print("ok")
        """
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_forked_child_quantizes_after_the_parent_used_the_pool() -> None:
    res = _run_child(
        """
        import multiprocessing as mp, os, warnings, numpy as np, turboquant_rs as tq
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process
        x = np.random.default_rng(1).standard_normal((20_000, 128)).astype(np.float32)
        q = tq.TurboQuant(128, 4)
        want = int(q.quantize(x).codes.sum())  # parent starts and uses the pool
        ix = tq.TurboQuantIndex(128); ix.add(x); ix.search(x[:64], k=5)
        def work(_):
            return int(q.quantize(x).codes.sum()), ix.search(x[:64], k=5)[1].shape, tq.num_threads()
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(work, range(4))
        assert all(g[0] == want and g[1] == (64, 5) for g in got), got
        pid = os.fork()
        if pid == 0:
            os._exit(0 if int(q.quantize(x).codes.sum()) == want else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # forks while other threads are busy in the library (locks may be held at the fork)
        import threading
        stop = threading.Event()
        def busy():
            while not stop.is_set():
                ix.search(x[:8], k=3); q.quantize(x[:256]); tq.num_threads()
        workers = [threading.Thread(target=busy) for _ in range(3)]
        for w in workers:
            w.start()
        small = x[:2000]
        want_small = int(q.quantize(small).codes.sum())
        for _ in range(15):
            pid = os.fork()
            if pid == 0:
                os._exit(0 if int(q.quantize(small).codes.sum()) == want_small else 1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        stop.set()
        for w in workers:
            w.join()
        tq.set_num_threads(3)
        pid = os.fork()
        if pid == 0:
            ok = int(q.quantize(x).codes.sum()) == want and tq.num_threads() == 3
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        print("ok")
        """,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# --- silent wrong results ---------------------------------------------------------------


@pytest.mark.parametrize("factor", [1e-25, 1e-40, 1e20, 1e36])
@pytest.mark.parametrize("unbiased", [False, True])
def test_tiny_and_huge_norms_quantize_like_unit_vectors(
    rng: np.random.Generator, factor: float, unbiased: bool
) -> None:
    x = rng.standard_normal((40, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = tq.TurboQuant(64, 4, unbiased=unbiased)
    ref = q.quantize(x)
    scaled = (x.astype(np.float64) * factor).astype(np.float32)
    out = q.quantize(scaled)
    # below 1e-38 the inputs are subnormal: a coordinate next to a boundary may change cells
    allowed = 0 if factor > 1e-37 else out.codes.size // 50
    assert np.count_nonzero(out.codes != ref.codes) <= allowed
    # below 1e-38 the inputs themselves are subnormal floats with fewer significant bits
    np.testing.assert_allclose(out.scales / factor, ref.scales, rtol=1e-5 if factor > 1e-37 else 1e-2)
    back = q.dequantize(out).astype(np.float64) / factor
    err = np.sum((back - x) ** 2, axis=1).mean()
    assert 0.002 < err < 0.03, err
    if unbiased:
        np.testing.assert_allclose(out.residual_norms / factor, ref.residual_norms, rtol=1e-3, atol=1e-6)


def test_norm_beyond_float32_is_refused() -> None:
    with pytest.raises(TurboQuantError):
        tq.TurboQuant(64, 4).quantize(np.full((1, 64), 3e38, np.float32))


@pytest.mark.parametrize("factor", [1e-25, 1e20])
def test_cosine_index_of_tiny_and_huge_vectors(rng: np.random.Generator, factor: float) -> None:
    x = rng.standard_normal((300, 32)).astype(np.float32)
    index = tq.TurboQuantIndex(32, metric="cosine", center=False)
    index.add((x.astype(np.float64) * factor).astype(np.float32))
    scores, ids = index.search((x[:5].astype(np.float64) * factor).astype(np.float32), k=1)
    assert list(ids[:, 0]) == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=0.05)


def test_rerank_refuses_values_fp16_cannot_hold() -> None:
    index = tq.TurboQuantIndex(16, rerank=True)
    with pytest.raises(TurboQuantError, match="fp16"):
        index.add(np.full((2, 16), 1e5, np.float32))
    assert len(index) == 0
    index.add(np.full((2, 16), 6e4, np.float32))


def test_outputs_carry_their_seed_and_parameters(rng: np.random.Generator) -> None:
    x = rng.standard_normal((8, 64)).astype(np.float32)
    out = tq.TurboQuant(64, 4, seed=0).quantize(x)
    assert (out.seed, out.unbiased, out.scale) == (0, False, "lsq")
    for other in (
        tq.TurboQuant(64, 4, seed=1),
        tq.TurboQuant(64, 4, scale="norm"),
        tq.TurboQuant(64, 4, unbiased=True),
    ):
        for call in (
            lambda o=other: o.dequantize(out),
            lambda o=other: o.compute_inner_product(x[0], out),
            lambda o=other: o.save_output(out),
        ):
            with pytest.raises(TurboQuantError, match="differs in"):
                call()
    q2, back = tq.TurboQuant.load_output(
        tq.TurboQuant(64, 4, seed=7).save_output(tq.TurboQuant(64, 4, seed=7).quantize(x))
    )
    assert back.seed == q2.seed == 7
    with pytest.raises(TurboQuantError):
        tq.TurboQuant(64, 4).dequantize(back)


def test_qjl_sketches_carry_their_parameters(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 32)).astype(np.float32)
    sketch = tq.QJL(32, seed=1).quantize(x * 1e-25)
    assert np.all(sketch.norms > 0)  # the norm of a tiny vector is not flushed to zero
    for other in (tq.QJL(32, seed=2), tq.QJL(32, 64, seed=1), tq.QJL(32, seed=1, proj_type="gaussian")):
        with pytest.raises(TurboQuantError, match="sketch was made"):
            other.estimate_inner_product(x, sketch)
        with pytest.raises(TurboQuantError, match="sketch was made"):
            other.dequantize_for_dot(sketch)
    assert tq.QJL(32, seed=1).estimate_inner_product(x, sketch).shape == (4, 4)


def test_concurrent_saves_to_one_path(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "ix.tq"
    indexes = []
    for i in range(4):
        ix = tq.TurboQuantIndex(32)
        ix.add(rng.standard_normal((500 + i, 32)).astype(np.float32))
        indexes.append(ix)
    errors: list[BaseException] = []
    stop = threading.Event()

    def saver(ix: tq.TurboQuantIndex) -> None:
        try:
            for _ in range(15):
                ix.save(path)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader() -> None:
        while not stop.is_set():
            if path.exists():
                try:
                    n = len(tq.TurboQuantIndex.load(path, mmap=False))
                    assert 500 <= n < 504
                except FileNotFoundError:
                    pass
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)

    threads = [threading.Thread(target=saver, args=(ix,)) for ix in indexes]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert not errors, errors[:3]
    assert 500 <= len(tq.TurboQuantIndex.load(path)) < 504
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix.tq"]  # no temporary left behind


def test_failed_save_leaves_nothing_behind(tmp_path: Path) -> None:
    ix = tq.TurboQuantIndex(16)
    target = tmp_path / "a_dir"
    target.mkdir()
    with pytest.raises(OSError):
        ix.save(target)  # rename onto a directory fails after the temporary was written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir"]
    assert list(target.iterdir()) == []
    with pytest.raises(OSError):
        ix.save(tmp_path / "missing" / "ix.tq")


def test_pack_bits_has_the_seeds_bytes(rng: np.random.Generator) -> None:
    # the seed (turboquant-torch 0.4.0) packs the first value into the most significant bit
    assert tq.pack_bits(np.array([1, 0, 0, 0, 0, 0, 0, 0])).tolist() == [128]
    assert tq.pack_bits(np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])).tolist() == [1, 128]
    bits = rng.integers(0, 2, (3, 5, 19))
    packed = tq.pack_bits(bits)
    np.testing.assert_array_equal(packed, np.packbits(bits.astype(np.uint8), axis=-1, bitorder="big"))
    np.testing.assert_array_equal(tq.unpack_bits(packed, 19), bits)
    torch = pytest.importorskip("torch")
    t = tq.pack_bits(torch.tensor(bits))
    assert isinstance(t, torch.Tensor) and t.tolist() == packed.tolist()
    for bad in ([256, 1], [2], [-1], [0.5]):
        with pytest.raises(TurboQuantError):
            tq.pack_bits(np.array(bad))
    with pytest.raises(TurboQuantError):
        tq.pack_bits(np.array(1))
    with pytest.raises(TurboQuantError):
        tq.unpack_bits(packed, 30)  # 30 bits take 4 bytes, not 3
    with pytest.raises(TurboQuantError):
        tq.unpack_bits(np.array(3, np.uint8), 8)


def test_small_input_checks(rng: np.random.Generator) -> None:
    cb = tq.LloydMaxCodebook(64, 3)
    for bad in ([-1], [8], [300]):
        with pytest.raises(TurboQuantError):
            cb.dequantize(np.array(bad))
    assert cb.dequantize([7])[0] == cb.centroids[-1]
    for dim in (2.5, "64", True):
        with pytest.raises(TurboQuantError):
            tq.TurboQuantIndex(dim)  # type: ignore[arg-type]
        with pytest.raises(TurboQuantError):
            tq.TurboQuant(dim)  # type: ignore[arg-type]
    index = tq.TurboQuantIndex(16)
    index.add(rng.standard_normal((20, 16)).astype(np.float32))
    assert index.remove([]) == 0
    scores, ids = index.search(np.ones(16, np.float32), k=3, filter=[])
    assert np.all(ids == -1) and np.all(np.isneginf(scores))
    with pytest.raises(TurboQuantError, match="2\\*\\*63"):
        index.remove(np.array([2**63], np.uint64))
    with pytest.raises(TurboQuantError):
        index.add(np.ones((1, 16), np.float32), ids=np.array([2**64 - 1], np.uint64))
    np.testing.assert_allclose(tq.fwht([1.0, 1.0]), [2**0.5, 0.0], atol=1e-6)
    with pytest.raises(TurboQuantError):
        tq.fwht(np.array(1.0))
    for bad in (0, -3, 2.5):
        with pytest.raises(TurboQuantError):
            tq.QJL(bad)  # type: ignore[arg-type]
    # an unaligned but C-contiguous float32 array is copied, not refused
    buf = np.zeros(16 * 4 + 1, np.uint8)[1:].view(np.float32)
    assert not buf.flags.aligned and buf.flags.c_contiguous
    buf[:] = 1.0
    q = tq.TurboQuant(16, 4)
    np.testing.assert_array_equal(q.quantize(buf).codes, q.quantize(np.ones(16, np.float32)).codes)
    with pytest.raises(TurboQuantError, match="aligned"):
        _native.Quantizer(16, 4).quantize(buf.reshape(1, 16))
    # the native layer checks shapes, not only lengths
    nq = _native.Quantizer(64, 4)
    with pytest.raises(TurboQuantError, match="shape"):
        nq.quantize(np.zeros((6, 32), np.float32))
    codes, scales, signs, rnorms = nq.quantize(np.ones((4, 64), np.float32))
    with pytest.raises(TurboQuantError, match="shape"):
        nq.dequantize(codes.reshape(8, 16), scales, signs, rnorms)
    with pytest.raises(TurboQuantError, match="shape"):
        nq.inner_products(np.zeros((2, 32), np.float32), codes, scales, signs, rnorms)
    with pytest.raises(TurboQuantError, match="shape"):
        _native.unpack(np.zeros((2, 3), np.uint8), 64, 4)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("kind", [2, 3])
def test_declared_sizes_are_checked_before_building(kind: int, tmp_path: Path) -> None:
    # a small file (valid checksum) declaring dim 2**24 - 1 is refused at once, before the
    # codebook and rotation of that dimension are built
    header = b"TQRS" + bytes([kind, 2]) + struct.pack("<I", 2**24 - 1) + bytes([4, 0, 2 if kind == 3 else 1])
    header += struct.pack("<Q", 0)
    if kind == 2:
        body = header + struct.pack("<Q", 3) + b"\x00" + b"\x00" * 140
    else:
        body = header + bytes([3, 0, 0, 0]) + struct.pack("<QQ", 3, 3) + b"\x00" * 130
    data = _with_crc(body)
    t = time.perf_counter()
    with pytest.raises(CorruptFileError):
        if kind == 2:
            tq.TurboQuant.load_output(data)
        else:
            (tmp_path / "ix.tq").write_bytes(data)
            tq.TurboQuantIndex.load(tmp_path / "ix.tq")
    assert time.perf_counter() - t < 0.5


def test_corrupt_bytes_are_corrupt_file_errors(rng: np.random.Generator) -> None:
    q = tq.TurboQuant(32, 3, unbiased=True)
    data = q.save_output(q.quantize(rng.standard_normal((6, 32))), entropy=True)
    for cut in range(0, len(data), 7):
        with pytest.raises(CorruptFileError):
            tq.TurboQuant.load_output(data[:cut])
    for i in range(0, len(data), 5):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(CorruptFileError):
            tq.TurboQuant.load_output(bytes(bad))
