"""BD-rate against known answers; classical baselines produce real, decodable streams."""

from __future__ import annotations

import numpy as np
import pytest

from mvic.tools.evaluation import baselines as bl
from mvic.tools.evaluation.bdrate import bd_quality, bd_rate
from mvic.shared.scene import Scene, SceneConfig

RATES, PSNRS = [0.1, 0.2, 0.4, 0.8], [30.0, 33.0, 35.5, 38.0]


def test_bd_rate_known_answers():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(RATES, PSNRS, [r * 0.7 for r in RATES], PSNRS) == pytest.approx(-30.0, abs=1e-6)
    assert bd_quality(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS]) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="overlap"):
        bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    with pytest.raises(ValueError):
        bd_rate([0.1], [30.0], RATES, PSNRS)


@pytest.fixture(scope="module")
def views():
    return list(Scene(SceneConfig(seed=2, cameras=3, height=64, width=96, objects=3)).render(0))


@pytest.mark.parametrize("name", list(bl.BASELINES))
def test_baselines_trade_bits_for_quality(views, name):
    if why := bl.unavailable(name):
        pytest.skip(why)
    baseline = bl.BASELINES[name]
    mid, best = baseline.settings[len(baseline.settings) // 2], baseline.settings[-1]
    low, high = baseline.code(views, mid), baseline.code(views, best)
    assert low.codec == high.codec == name
    assert 0 < low.num_bytes < high.num_bytes
    assert all(d.shape == v.shape and d.dtype == np.uint8 for d, v in zip(high.images, views))
    q_low = np.mean([bl.psnr(v, d) for v, d in zip(views, low.images)])
    q_high = np.mean([bl.psnr(v, d) for v, d in zip(views, high.images)])
    assert 20 < q_low < q_high


def test_odd_sizes_survive_420_padding(views):
    if why := bl.unavailable("vvc-intra-420"):
        pytest.skip(why)
    odd = [v[:33, :47] for v in views[:1]]
    coded = bl.vvc_intra(odd, 30)
    assert coded.images[0].shape == (33, 47, 3) and bl.psnr(odd[0], coded.images[0]) > 25


def test_missing_encoder_is_reported_not_fatal(views, monkeypatch):
    monkeypatch.setattr(bl, "ffmpeg_encoders", lambda: frozenset({"libx265"}))
    assert "libaom-av1" in bl.unavailable("av1-intra-444")
    assert bl.unavailable("x265-intra-444") is None and bl.unavailable("jpeg") is None
    with pytest.raises(bl.BaselineUnavailable, match="libjxl"):
        bl.jpegxl(views, 2)


def test_video_anchor_exploits_repeated_views(views):
    same = [views[0]] * 3
    assert bl.x265_video(same, 28).num_bytes < 0.7 * bl.x265_intra(same, 28).num_bytes


def test_mvic_eval_end_to_end(tiny_weights, tmp_path, capsys):
    import json

    from mvic.tools.evaluation.evaluate import main

    out = tmp_path / "eval"
    assert main(["--weights", str(tiny_weights["test-tiny-fast"]), "--groups", "1", "--cameras", "2",
                 "--size", "64x96", "--baselines", "jpeg", "x265-intra-444", "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    codecs = {r["codec"] for r in res["rows"]}
    assert codecs == {"mvic-joint", "mvic-joint-jct", "mvic-separate", "jpeg", "x265-intra-444"}
    assert all(r["bpp"] > 0 for r in res["rows"])
    assert (out / "rd.png").stat().st_size > 1000 and (out / "results.csv").is_file()
    assert "Bjontegaard vs x265-intra-444" in capsys.readouterr().out


def test_mvic_eval_hands_the_fusion_the_rig_it_is_given(tiny_weights, tmp_path, fusion_grounds, capsys):
    from mvic.tools.evaluation.evaluate import main

    given = fusion_grounds
    common = ["--weights", str(tiny_weights["test-tiny-fast"]), "--groups", "1", "--cameras", "2", "--size", "64x96",
              "--baselines", "--fusion", "on", "-o", str(tmp_path / "eval")]
    assert main([*common, "--rig", "scene"]) == 0
    assert given and all(g is not None for ground in given for g in ground)  # C1, C2 of the scene's own rig
    given.clear()
    assert main(common) == 0
    assert given and all(ground is None for ground in given)
    with pytest.raises(SystemExit):
        main([*common, "--data", "stereo-photos", "--rig", "scene"])
    assert "--rig scene is for --data synthetic" in capsys.readouterr().err


def test_bjontegaard_tables_for_psnr_msssim_and_equal_rate():
    from mvic.tools.evaluation.evaluate import ANCHOR, RDRow, bd_table

    def curve(name, scale, db_shift, ssim_shift):  # same quality at `scale` x the anchor's rate
        return [RDRow(name, i, scale * r, 30 + 3 * i + db_shift, 0.9 + 0.02 * i + ssim_shift, 0.0, 0.0)
                for i, r in enumerate((0.1, 0.2, 0.4, 0.8))]

    rows = curve(ANCHOR, 1.0, 0, 0) + curve("mvic-separate", 0.8, 0, 0) + curve("mvic-joint", 0.7, 0, 0)
    bd = bd_table(rows)
    assert set(bd) == {"psnr", "ms-ssim-db", "bd-psnr-db"} and ANCHOR not in bd["psnr"]
    assert abs(bd["psnr"]["mvic-separate"] + 20) < 0.5 and abs(bd["ms-ssim-db"]["mvic-joint"] + 30) < 0.5
    assert abs(bd["psnr"]["joint-vs-separate"] + 12.5) < 0.5 and bd["bd-psnr-db"]["mvic-joint"] > 0


def test_baselines_are_taken_only_from_a_run_on_the_same_images(tiny_weights, tmp_path, capsys):
    import json

    from mvic.tools.evaluation.evaluate import main

    common = ["--groups", "1", "--cameras", "2", "--size", "64x96", "--fusion", "off"]
    first = tmp_path / "first"
    assert main(["--weights", str(tiny_weights["test-tiny-fast"]), *common, "--baselines", "jpeg", "-o", str(first)]) == 0
    again = tmp_path / "again"
    assert main(["--weights", str(tiny_weights["test-tiny-ar"]), *common, "--baselines", "jpeg",
                 "--baselines-from", str(first), "-o", str(again)]) == 0
    old, new = (json.loads((d / "results.json").read_text()) for d in (first, again))
    assert new["groups_sha256"] == old["groups_sha256"] and len(old["groups_sha256"]) == 64
    assert [r for r in new["rows"] if r["codec"] == "jpeg"] == [r for r in old["rows"] if r["codec"] == "jpeg"]
    mvic = lambda res: [r["bpp"] for r in res["rows"] if r["codec"] == "mvic-joint"]  # noqa: E731
    assert mvic(new) != mvic(old)  # the other weights were measured, not copied
    for other in (["--size", "64x128"], ["--seed", "1001"]):
        with pytest.raises(SystemExit):
            main(["--weights", str(tiny_weights["test-tiny-ar"]), *common, *other, "--baselines", "jpeg",
                  "--baselines-from", str(first), "-o", str(tmp_path / "no")])
        assert "measured other images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--weights", str(tiny_weights["test-tiny-ar"]), *common, "--baselines", "webp",
              "--baselines-from", str(first), "-o", str(tmp_path / "no")])
    assert "has no rows of webp" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()  # a refused run writes nothing
