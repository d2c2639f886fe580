"""mvic-codec end to end through main([...])."""

from __future__ import annotations

import cv2
import numpy as np

from mvic.shared.codec.cli import main
from tests.conftest import random_image


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
