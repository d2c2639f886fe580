"""The learning curve: BD-rates against each classical codec from mvic-eval results, reused baselines, CSV rows."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest

from mvic.tools.evaluation.curve import main, point, read_csv
from mvic.tools.evaluation.evaluate import RDRow


def _rows(codec: str, shift_db: float, bpps=(0.2, 0.4, 0.8, 1.6)) -> list[RDRow]:
    # PSNR = 30 + 6 log2(bpp / 0.4) + shift: a codec shifted by +6 dB needs half the rate
    return [RDRow(codec, i, b, 30 + 6 * math.log2(b / 0.4) + shift_db, math.nan, 0.0, 0.0) for i, b in enumerate(bpps)]


def _write(path, rows):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "bjontegaard": {
        "psnr": {}, "ms-ssim-db": {}, "bd-psnr-db": {}}}))
    return path


def test_bd_rates_against_each_codec_and_joint_vs_separate():
    rows = [*_rows("mvic-joint", 6.0), *_rows("mvic-separate", 0.0), *_rows("x265-intra-444", 12.0),
            *_rows("jpeg", 0.0), *_rows("webp", 6.0)]
    p = point("v", "real", 100, 1.5, rows)
    assert p.bd_jpeg == pytest.approx(-50, abs=0.5)  # 6 dB better: half the rate
    assert p.bd_x265 == pytest.approx(100, abs=1) and p.bd_webp == pytest.approx(0, abs=0.5)
    assert p.joint_vs_separate == pytest.approx(-50, abs=0.5)
    assert p.bpp_min == 0.2 and p.bpp_max == 1.6 and p.psnr_span_db == pytest.approx(18)
    lonely = point("v", "real", 1, 1.0, _rows("mvic-joint", 0.0))  # no baselines: NaN, not an error
    assert math.isnan(lonely.bd_jpeg)


def test_cli_adds_replaces_and_reuses_baselines(tmp_path):
    base = _write(tmp_path / "base", [*_rows("mvic-joint", 0.0), *_rows("x265-intra-444", 6.0),
                                      *_rows("jpeg", 0.0), *_rows("webp", 3.0)])
    only_mvic = _write(tmp_path / "new", [*_rows("mvic-joint", 6.0), *_rows("mvic-separate", 6.0)])
    csv_path, png = tmp_path / "curve.csv", tmp_path / "curve.png"
    common = ["--csv", str(csv_path), "--plot", str(png)]
    assert main([*common, "--add", "a", "--steps", "10", "--hours", "1", "--results", f"real={base}"]) == 0
    assert main([*common, "--add", "b", "--steps", "20", "--hours", "2", "--results", f"real={only_mvic}",
                 "--baselines-from", f"real={base}"]) == 0
    assert main([*common, "--add", "b", "--steps", "30", "--hours", "2", "--results", f"real={only_mvic}",
                 "--baselines-from", f"real={base}"]) == 0  # same label: replaced
    points = read_csv(csv_path)
    assert [(p.label, p.steps) for p in points] == [("a", 10), ("b", 30)]
    assert points[0].bd_jpeg == pytest.approx(0, abs=0.5) and points[1].bd_jpeg == pytest.approx(-50, abs=0.5)
    assert png.stat().st_size > 1000
