"""Comparing two weights' mvic-eval results: BD figures of one's joint decoding against the other's."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from mvic.tools.evaluation.compare import compare, main
from mvic.tools.evaluation.evaluate import RDRow


def _rows(codec: str, shift_db: float, bpps=(0.2, 0.4, 0.8, 1.6)) -> list[RDRow]:
    # PSNR = 30 + 6 log2(bpp / 0.4) + shift: 6 dB more at the same rate is half the rate at the same PSNR
    return [RDRow(codec, i, b, 30 + 6 * math.log2(b / 0.4) + shift_db, 0.9 + 0.01 * i + shift_db / 100, 0.0, 0.0)
            for i, b in enumerate(bpps)]


def test_the_tests_joint_rows_against_the_anchors():
    anchor = [*_rows("mvic-joint", 0.0), *_rows("x265-intra-444", 12.0)]
    test = [*_rows("mvic-joint", 6.0), *_rows("mvic-separate", -20.0)]  # only the joint rows count
    bd = compare(anchor, test)
    assert bd["psnr"] == pytest.approx(-50, abs=0.5) and bd["bd-psnr-db"] == pytest.approx(6, abs=0.05)
    assert compare(test, anchor)["psnr"] == pytest.approx(100, abs=1)


def test_cli_prints_the_figures_and_says_what_to_do_without_results(tmp_path, capsys):
    for name, shift in (("a", 0.0), ("b", 1.0)):
        (tmp_path / name).mkdir()
        rows = [asdict(r) for r in _rows("mvic-joint", shift)]
        tables = {"psnr": {}, "ms-ssim-db": {}, "bd-psnr-db": {}}
        (tmp_path / name / "results.json").write_text(json.dumps({"rows": rows, "bjontegaard": tables}))
    assert main(["--anchor", str(tmp_path / "a"), "--test", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "BD-rate -10.9" in out and "BD-PSNR +1.000 dB" in out
    assert main(["--anchor", str(tmp_path / "a"), "--test", str(tmp_path / "missing")]) == 2
    assert "mvic-eval --weights" in capsys.readouterr().err
