"""mvic-publish: measured points into records.json, an RD figure, and the README block between its markers only."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict

import pytest

from mvic.shared.codec import registry
from mvic.tools.evaluation.evaluate import RDRow, bd_table
from mvic.tools.evaluation.publish import main

NAME = "tiny-v1"
README = "# MVIC\n\nIntro.\n\n<!-- rd:tiny-v1:begin -->\nold table\n<!-- rd:tiny-v1:end -->\n\n## After\nText.\n"


def fake_rows(shift: float, ms_ssim: bool = True) -> list[RDRow]:
    """MVIC joint beats separate by `shift` dB; x265 intra and JPEG as baselines."""
    rows = []
    for i in range(5):
        bpp = 0.1 * 1.6 ** i
        for codec, gain in (("mvic-joint", shift), ("mvic-separate", 0.0)):
            psnr = 28 + 4 * math.log2(bpp / 0.1) + gain
            rows.append(RDRow(codec, i, bpp, psnr, 1 - 10 ** (-psnr / 20) if ms_ssim else math.nan, 0.2 + i, 1.5))
    for codec, q in (("x265-intra-444", 27.0), ("jpeg", 24.0)):
        rows += [RDRow(codec, 50 - 5 * i, 0.08 * 1.8 ** i, q + 4 * i, 0.9 + 0.01 * i, 0.3, math.nan) for i in range(6)]
    return rows


def write_results(folder, rows):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"rows": [asdict(r) for r in rows], "bjontegaard": bd_table(rows),
                                                     "unavailable_baselines": {"vvc-intra-420": "no libvvenc"}}))
    return folder


@pytest.fixture
def setup(tmp_path, tiny_weights, monkeypatch):
    """A weights folder holding one exported file with its .record.json, two results folders and a README."""
    wdir = tmp_path / "weights"
    wdir.mkdir()
    monkeypatch.setattr(registry, "WEIGHTS_DIR", wdir)
    weights = wdir / f"{NAME}.safetensors"
    shutil.copy(tiny_weights["test-tiny-fast"], weights)
    record = {"name": NAME, "file": weights.name, "sha256": registry.sha256_of(weights), "model": "test-tiny-fast",
              "metric": "mse", "measured": [], "recipe": "test"}
    (wdir / f"{weights.name}.record.json").write_text(json.dumps(record))
    other = dict(record, name="zzz-other", file="zzz.safetensors", sha256="0" * 64)
    (wdir / "records.json").write_text(json.dumps([other]))
    synth = write_results(tmp_path / "results" / "synth", fake_rows(1.0))
    real = write_results(tmp_path / "results" / "real", fake_rows(0.5, ms_ssim=False))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    argv = ["--weights", str(weights), "--results", f"synthetic={synth}", f"real={real / 'results.json'}",
            "--readme", str(readme), "--plot", str(tmp_path / "docs" / "rd.png")]
    return tmp_path, argv


def test_records_hold_the_joint_rows(setup, monkeypatch):
    tmp_path, argv = setup
    assert main(argv) == 0
    entries = json.loads((tmp_path / "weights" / "records.json").read_text())
    assert [e["name"] for e in entries] == [NAME, "zzz-other"]  # sorted, the other record kept
    monkeypatch.setattr(registry, "_REGISTRY", {})
    registry._load_shipped_records()  # the registry reads what was written
    record = registry.registered_weights()[NAME]
    assert [(p.dataset, p.rate_index) for p in record.measured] == [("synthetic", i) for i in range(5)] + [
        ("real", i) for i in range(5)]
    joint = [r for r in fake_rows(1.0) if r.codec == "mvic-joint"]
    assert [p.bpp for p in record.measured[:5]] == [r.bpp for r in joint]
    assert [p.psnr_db for p in record.measured[:5]] == [r.psnr_db for r in joint]
    assert record.measured[2].ms_ssim == pytest.approx(joint[2].ms_ssim) and math.isnan(record.measured[7].ms_ssim)
    listing = (tmp_path / "weights" / "records.json").read_text()
    (tmp_path / "weights" / f"{NAME}.safetensors.record.json").unlink()  # now found in records.json itself
    assert main(argv) == 0
    assert (tmp_path / "weights" / "records.json").read_text() == listing


def test_hash_mismatch_is_refused(setup):
    tmp_path, argv = setup
    sidecar = tmp_path / "weights" / f"{NAME}.safetensors.record.json"
    sidecar.write_text(json.dumps(dict(json.loads(sidecar.read_text()), sha256="1" * 64)))
    listing = (tmp_path / "weights" / "records.json").read_text()
    assert main(argv) == 1
    assert (tmp_path / "weights" / "records.json").read_text() == listing
    assert (tmp_path / "README.md").read_text() == README and not (tmp_path / "docs").exists()


def test_hash_mismatch_message_says_what_to_do(setup, capsys):
    tmp_path, argv = setup
    (tmp_path / "weights" / f"{NAME}.safetensors").write_bytes(b"not those weights")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "sha256" in err and "mvic-train --export" in err


def test_readme_block_replaced_between_markers_only(setup):
    tmp_path, argv = setup
    assert main(argv) == 0
    text = (tmp_path / "README.md").read_text()
    head, rest = text.split("<!-- rd:tiny-v1:begin -->\n")
    block, tail = rest.split("<!-- rd:tiny-v1:end -->")
    assert head == README.split("<!-- rd:")[0] and tail == "\n\n## After\nText.\n"
    assert "old table" not in block and "**synthetic**" in block and "**real**" in block
    joint = [r for r in fake_rows(1.0) if r.codec == "mvic-joint"]
    assert f"| 3 | {joint[3].bpp:.4f} | {joint[3].psnr_db:.2f} | {joint[3].ms_ssim:.4f} | 3.200 | 1.50 |" in block
    bd = bd_table(fake_rows(1.0))
    assert f"| jpeg | {bd['psnr']['jpeg']:+.1f} % |" in block
    assert f"| joint-vs-separate (vs mvic-separate) | {bd['psnr']['joint-vs-separate']:+.1f} % |" in block
    assert bd["psnr"]["joint-vs-separate"] < 0 and "vvc-intra-420" in block
    assert "](docs/rd.png)" in block
    assert main(argv) == 0
    assert (tmp_path / "README.md").read_text() == text  # idempotent


def test_plot_written(setup):
    tmp_path, argv = setup
    assert main(argv) == 0
    png = (tmp_path / "docs" / "rd.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_missing_markers_print_the_block(setup, capsys):
    tmp_path, argv = setup
    (tmp_path / "README.md").write_text("# MVIC\n")
    assert main(argv) == 1
    out = capsys.readouterr()
    assert "| rate index | bpp |" in out.out and "<!-- rd:tiny-v1:begin -->" in out.err
    assert (tmp_path / "README.md").read_text() == "# MVIC\n"


def test_missing_or_invalid_results_name_the_file_and_command(setup, capsys):
    tmp_path, argv = setup
    results = tmp_path / "results" / "synth" / "results.json"
    results.unlink()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{results} does not exist" in err and "mvic-eval" in err
    results.write_text('{"rows": [{"codec": "jpeg"}]}')
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{results} is not an mvic-eval results.json" in err and "mvic-eval" in err
    assert json.loads((tmp_path / "weights" / "records.json").read_text())[0]["name"] == "zzz-other"  # untouched
    with pytest.raises(SystemExit):
        main([*argv[:3], "no-label-here", *argv[5:]])
