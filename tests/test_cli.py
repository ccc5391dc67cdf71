"""The main job (``scripts/demo.sh`` → ``turboquant_rs.cli``) runs and reports the paper's numbers."""

from __future__ import annotations

import re

import pytest

from turboquant_rs import cli


def test_demo_reports_distortion_near_the_paper(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["-n", "3000"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d) \| mse \| ([0-9.]+) \| ([0-9.]+) \|", out, flags=re.M)
    assert [int(b) for b, _, _ in rows] == [1, 2, 3, 4]
    for _, measured, theory in rows:
        assert abs(float(measured) - float(theory)) / float(theory) < 0.05
    assert "bytes/vector" in out
