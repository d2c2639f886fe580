"""mvic-rig: WildTrack's calibration files as a rig, and a rig's cameras and shared ground at a glance."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.shared.rig import load_rig
from mvic.shared.scene import Scene, SceneConfig
from mvic.tools.rig_cli import WILDTRACK_CAMERAS, main


def _wildtrack(root, scene: Scene) -> None:
    """WildTrack's layout and formats (OpenCV FileStorage intrinsics; rvec/tvec text) for a scene's cameras."""
    (root / "calibrations" / "intrinsic_zero").mkdir(parents=True)
    (root / "calibrations" / "extrinsic").mkdir(parents=True)
    for name, cam in zip(WILDTRACK_CAMERAS, scene.cameras):
        fs = cv2.FileStorage(str(root / "calibrations" / "intrinsic_zero" / f"intr_{name}.xml"), cv2.FILE_STORAGE_WRITE)
        fs.write("camera_matrix", cam.intrinsics)
        fs.write("distortion_coefficients", np.zeros((1, 5)))
        fs.release()
        rvec = cv2.Rodrigues(cam.rotation)[0].ravel()
        (root / "calibrations" / "extrinsic" / f"extr_{name}.xml").write_text(
            '<?xml version="1.0"?>\n<opencv_storage>\n<rvec>' + " ".join(f"{v!r}" for v in rvec) + "</rvec>\n<tvec>"
            + " ".join(f"{v!r}" for v in cam.translation) + "</tvec>\n</opencv_storage>\n")


def test_wildtrack_calibrations_become_a_rig_of_c1_to_c7(tmp_path, capsys):
    scene = Scene(SceneConfig(seed=2, cameras=7, height=1080, width=1920))
    _wildtrack(tmp_path / "wt", scene)
    assert main(["wildtrack", str(tmp_path / "wt"), "-o", str(tmp_path / "rig.yaml")]) == 0
    rig, truth = load_rig(tmp_path / "rig.yaml"), scene.rig()
    assert list(rig.cameras) == [f"C{i}" for i in range(1, 8)]
    for cid in rig.cameras:
        np.testing.assert_allclose(rig.ground(cid, 540, 960), truth.ground(cid, 540, 960), rtol=1e-6)
    assert main(["show", str(tmp_path / "rig.yaml"), "--size", "270x480"]) == 0
    out = capsys.readouterr().out
    assert "7 cameras" in out and "left out" not in out and "\n    C7    0." in out  # its row of shares


def test_show_reports_how_much_ground_neighbours_share(tmp_path, capsys):
    from mvic.tools.rig_cli import shared_ground

    rig = Scene(SceneConfig(seed=0, cameras=3, height=90, width=160)).rig()
    assert 0.2 < shared_ground(rig, "C1", "C2", 90, 160) <= 1.0  # neighbours around the plaza
    assert shared_ground(rig, "C1", "C9", 90, 160) == 0.0


def test_missing_or_broken_calibration_files_are_named(tmp_path, capsys):
    scene = Scene(SceneConfig(seed=2, cameras=7, height=90, width=160))
    assert main(["wildtrack", str(tmp_path / "none")]) == 2
    assert "intr_CVLab1.xml: cannot read it" in capsys.readouterr().err
    _wildtrack(tmp_path / "wt", scene)
    extr = tmp_path / "wt" / "calibrations" / "extrinsic" / "extr_IDIAP2.xml"
    extr.write_text("<opencv_storage><rvec>1 2</rvec><tvec>0 0 1</tvec></opencv_storage>")
    assert main(["wildtrack", str(tmp_path / "wt"), "-o", str(tmp_path / "rig.yaml")]) == 2
    assert "extr_IDIAP2.xml: rvec: expected 3 numbers" in capsys.readouterr().err
    extr.write_text("<opencv_storage><rvec>")
    assert main(["wildtrack", str(tmp_path / "wt"), "-o", str(tmp_path / "rig.yaml")]) == 2
    assert "not valid XML" in capsys.readouterr().err
    extr.write_bytes(b" " * (2 << 20))
    assert main(["wildtrack", str(tmp_path / "wt"), "-o", str(tmp_path / "rig.yaml")]) == 2
    assert "over 1048576 bytes" in capsys.readouterr().err
    assert not (tmp_path / "rig.yaml").exists()


@pytest.mark.parametrize("size", ["big", "10x"])
def test_show_refuses_a_bad_size(tmp_path, capsys, size):
    (tmp_path / "r").mkdir()
    from mvic.shared.scene import write_scene

    write_scene(SceneConfig(seed=1, cameras=2, height=64, width=96), 0, tmp_path / "r")
    assert main(["show", str(tmp_path / "r" / "rig.yaml"), "--size", size]) == 2
    assert "--size must be HxW" in capsys.readouterr().err
