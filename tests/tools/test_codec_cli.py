"""mvic-codec end to end through main([...])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvic.tools.codec_cli import main
from tests.conftest import random_image

GOLDEN = Path(__file__).resolve().parents[1] / "shared" / "codec" / "golden" / "test-tiny-fast.mvic"

# mvic-codec in a fresh interpreter: its exit status, its output, and (last line of stderr) the heavy modules it loaded.
_FRESH = """
import sys
from mvic.tools.codec_cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
print("loaded:", ",".join(m for m in ("compressai", "cv2", "torch") if m in sys.modules) or "-", file=sys.stderr)
sys.exit(status)
"""


def _fresh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _FRESH, *args], capture_output=True, text=True, timeout=300)


def test_encode_info_decode(tiny_weights, tmp_path, capsys):
    rng = np.random.default_rng(0)
    files = []
    for cam in ("C1", "C2", "C3"):
        png = tmp_path / f"{cam}.png"
        cv2.imwrite(str(png), random_image(rng, 70, 90))
        out = tmp_path / f"{cam}.mvic"
        assert main(["encode", str(png), "-o", str(out), "--model", "test-tiny-fast", "--rate", "3",
                     "--camera", cam, "--sequence", "12", "--weights", str(tiny_weights["test-tiny-fast"])]) == 0
        files.append(out)
    assert "bpp" in capsys.readouterr().out
    assert main(["info", *map(str, files)]) == 0
    info = capsys.readouterr().out
    assert "camera C2" in info and "test-tiny-fast" in info and "70x90" in info
    assert main(["decode", *map(str, files), "-o", str(tmp_path / "dec"),
                 "--weights", str(tiny_weights["test-tiny-fast"])]) == 0
    img = cv2.imread(str(tmp_path / "dec" / "C2_12.png"))
    assert img.shape == (70, 90, 3)


def test_no_trained_weights_is_said_plainly(tmp_path, capsys):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), np.zeros((64, 64, 3), np.uint8))
    assert main(["encode", str(png), "-o", str(tmp_path / "a.mvic"), "--model", "test-tiny-ar"]) == 2
    assert "no trained weights are installed" in capsys.readouterr().err
    assert not (tmp_path / "a.mvic").exists()


def test_corrupt_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.mvic"
    bad.write_bytes(b"MVIC\x01" + bytes(10))
    assert main(["info", str(bad)]) == 1
    assert "resend" in capsys.readouterr().err


def test_unreadable_image(tmp_path, tiny_weights, capsys):
    (tmp_path / "x.png").write_bytes(b"not an image")
    assert main(["encode", str(tmp_path / "x.png"), "-o", str(tmp_path / "x.mvic"), "--model", "test-tiny-fast",
                 "--weights", str(tiny_weights["test-tiny-fast"])]) == 1
    assert "cannot read image" in capsys.readouterr().err


def test_demo_runs_on_the_synthetic_scene(tmp_path, tiny_weights, capsys):
    assert main(["demo", "--model", "test-tiny-fast", "--weights", str(tiny_weights["test-tiny-fast"]),
                 "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 views 480x270" in out and "test-tiny-fast.safetensors" in out
    assert len(list(tmp_path.glob("C*_rate*.png"))) == 3 * 5


def _encode_views(tmp_path, weights, specs, size=(64, 96)):
    """specs: [(file stem, camera, sequence, capture_ns, seed)] -> paths of .mvic files."""
    paths = []
    for stem, cam, seq, capture, seed in specs:
        png = tmp_path / f"{stem}.png"
        cv2.imwrite(str(png), random_image(np.random.default_rng(seed), *size))
        out = tmp_path / f"{stem}.mvic"
        assert main(["encode", str(png), "-o", str(out), "--model", "test-tiny-fast", "--camera", cam,
                     "--sequence", str(seq), "--capture-ns", str(capture), "--weights", str(weights)]) == 0
        paths.append(out)
    return paths


def test_decode_never_overwrites_one_view_with_another(tiny_weights, tmp_path, capsys):
    w = tiny_weights["test-tiny-fast"]
    a, b = _encode_views(tmp_path, w, [("a", "C1", 0, 10**9, 1), ("b", "C1", 0, 10**9, 2)])
    dec = tmp_path / "dec"
    capsys.readouterr()
    assert main(["decode", str(a), str(a), "-o", str(dec), "--weights", str(w)]) == 1  # one file twice
    assert "a.mvic is given twice" in capsys.readouterr().err
    assert main(["decode", str(a), str(b), "-o", str(dec), "--weights", str(w)]) == 1  # default --camera twice
    err = capsys.readouterr().err
    assert "a.mvic" in err and "b.mvic" in err and "--unique-names" in err
    assert not dec.exists() or not list(dec.iterdir())  # nothing written
    assert main(["decode", str(a), str(b), "-o", str(dec), "--weights", str(w), "--unique-names"]) == 0
    assert sorted(p.name for p in dec.iterdir()) == ["C1_0_a.png", "C1_0_b.png"]
    out = capsys.readouterr().out
    assert out.count("alone: C1#0") == 2  # one camera's two views are never one joint group


def test_decode_groups_by_capture_time_and_size_like_the_server(tiny_weights, tmp_path, capsys):
    w = tiny_weights["test-tiny-fast"]
    t = 5 * 10**9
    paths = _encode_views(tmp_path, w, [("c1", "C1", 7, t, 1), ("c2", "C2", 7, t + 4_000_000, 2),
                                        ("c3", "C3", 7, t + 2 * 10**9, 3)])
    paths += _encode_views(tmp_path, w, [("c4", "C4", 7, t + 1_000_000, 4)], size=(128, 96))  # another size
    capsys.readouterr()
    assert main(["decode", *map(str, paths), "-o", str(tmp_path / "dec"), "--weights", str(w)]) == 0
    captured = capsys.readouterr()
    assert "jointly: C1#7, C2#7 " in captured.out  # within 30 ms, one size
    assert "alone: C4#7" in captured.out and "alone: C3#7" in captured.out  # other size; 2 s later
    assert "span 2.000 s" in captured.err and "3 separate set(s)" in captured.err
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["C1_7.png", "C2_7.png", "C3_7.png", "C4_7.png"]
    # a wider tolerance takes the late view in
    assert main(["decode", *map(str, paths[:3]), "-o", str(tmp_path / "dec2"), "--weights", str(w),
                 "--tolerance-ms", "3000"]) == 0
    assert "jointly: C1#7, C2#7, C3#7 " in capsys.readouterr().out


def test_decode_without_fusion_writes_the_networks_joint_output(tiny_weights, tmp_path):
    from mvic.shared.bitstream import unpack
    from mvic.shared.codec.registry import load_model
    from mvic.shared.codec.view_fusion import NO_FUSION, FusionOptions

    w = tiny_weights["test-tiny-fast"]
    paths = _encode_views(tmp_path, w, [("c1", "C1", 7, 10**9, 1), ("c2", "C2", 7, 10**9, 1)])  # one picture twice
    views = [unpack(p.read_bytes()) for p in paths]
    model = load_model(w)
    for flag, fusion in (([], FusionOptions()), (["--no-fusion"], NO_FUSION)):
        out = tmp_path / f"dec{len(flag)}"
        assert main(["decode", *map(str, paths), "-o", str(out), "--weights", str(w), *flag]) == 0
        for d in model.decompress(views, fusion=fusion):
            png = cv2.cvtColor(cv2.imread(str(out / f"{d.header.camera_id}_7.png")), cv2.COLOR_BGR2RGB)
            assert np.array_equal(png, d.image)


def test_decode_with_a_rig_fuses_with_the_cameras_calibration(tiny_weights, tmp_path, fusion_grounds, capsys):
    from mvic.shared.scene import SceneConfig, write_scene

    w = tiny_weights["test-tiny-fast"]
    paths = _encode_views(tmp_path, w, [("c1", "C1", 7, 10**9, 1), ("c2", "C2", 7, 10**9, 1)])
    write_scene(SceneConfig(seed=1, cameras=2, height=64, width=96), 0, tmp_path / "scene")  # its rig.yaml only
    given = fusion_grounds
    rig = tmp_path / "scene" / "rig.yaml"
    assert main(["decode", *map(str, paths), "-o", str(tmp_path / "dec"), "--weights", str(w), "--rig", str(rig)]) == 0
    assert len(given) == 1 and all(g is not None and g.shape == (3, 3) for g in given[0])
    rig.write_text("cameras: {C1: {size: [64, 64]}}\n")
    assert main(["decode", *map(str, paths), "-o", str(tmp_path / "dec"), "--weights", str(w), "--rig", str(rig)]) == 2
    assert "cameras.C1" in capsys.readouterr().err


def test_camera_ids_never_leave_the_output_folder(tiny_weights, tmp_path, capsys):
    w = tiny_weights["test-tiny-fast"]
    (path,) = _encode_views(tmp_path, w, [("x", "../../evil", 1, 10**9, 1)])
    assert main(["decode", str(path), "-o", str(tmp_path / "dec"), "--weights", str(w)]) == 0
    assert [p.name for p in (tmp_path / "dec").iterdir()] == ["_.._.._evil_1.png"]


def test_the_default_model_is_one_whose_weights_ship(tmp_path, capsys):
    """A new user's first command, with no --model and no --weights, encodes and decodes with the shipped weights."""
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), random_image(np.random.default_rng(3), 64, 64))
    assert main(["encode", str(png), "-o", str(tmp_path / "a.mvic")]) == 0
    assert main(["info", str(tmp_path / "a.mvic")]) == 0
    assert "ldmic-fast-lite" in capsys.readouterr().out
    assert main(["decode", str(tmp_path / "a.mvic"), "-o", str(tmp_path / "dec")]) == 0


@pytest.mark.parametrize("args", [["--help"], ["encode", "--help"], ["info", str(GOLDEN)]])
def test_commands_that_need_no_model_load_neither_torch_nor_compressai(args):
    done = _fresh(*args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "loaded: -\n"  # and nothing else: no warning before the command's own output
    if args[0] == "info":
        assert "model test-tiny-fast (id 0xf001)" in done.stdout and "camera C7" in done.stdout


def test_a_command_that_runs_the_model_prints_no_import_warning(tiny_weights, tmp_path):
    png = tmp_path / "a.png"
    cv2.imwrite(str(png), random_image(np.random.default_rng(5), 64, 64))
    done = _fresh("encode", str(png), "-o", str(tmp_path / "a.mvic"), "--model", "test-tiny-fast",
                  "--weights", str(tiny_weights["test-tiny-fast"]))
    assert done.returncode == 0, done.stderr
    assert done.stderr == "loaded: compressai,cv2,torch\n"  # compressai's torch.jit.script FutureWarning is gone
    assert "bpp" in done.stdout


def test_an_unknown_model_is_a_usage_error_naming_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.mvic"), "--model", "ldmic-huge"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --model: unknown model 'ldmic-huge'; choose one of: ldmic-fast, ldmic, ldmic-fast-lite" in err
