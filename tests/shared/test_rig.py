"""A rig file: the cameras' calibration, read strictly, giving each camera's ground -> pixel homography."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.shared.errors import ConfigError
from mvic.shared.rig import CameraCalibration, Rig, load_rig, parse_rig, rig_to_yaml
from mvic.shared.scene import Scene, SceneConfig


def _camera(x: float = 0.0) -> dict:
    """A camera 5 m up at (x, -10), looking north and 30 degrees down, for 320x240 images."""
    tilt = np.deg2rad(30)
    rot = np.array([[1, 0, 0], [0, -np.sin(tilt), -np.cos(tilt)], [0, np.cos(tilt), -np.sin(tilt)]])
    centre = np.array([x, -10.0, 5.0])
    return {"size": [320, 240], "intrinsics": [[300.0, 0, 160.0], [0, 300.0, 120.0], [0, 0, 1.0]],
            "rotation": rot.tolist(), "translation": (-rot @ centre).tolist()}


def _project(cam: dict, point: np.ndarray) -> np.ndarray:
    x = np.array(cam["intrinsics"]) @ (np.array(cam["rotation"]) @ point + np.array(cam["translation"]))
    return x[:2] / x[2]


def test_the_ground_homography_maps_a_ground_point_where_the_camera_sees_it():
    cam = _camera()
    rig = parse_rig({"cameras": {"C1": cam}})
    point = np.array([1.5, 3.0, 0.0])
    seen = rig.ground("C1", 240, 320) @ np.array([1.5, 3.0, 1.0])
    assert seen[2] > 0  # in front of the camera
    np.testing.assert_allclose(seen[:2] / seen[2], _project(cam, point), atol=1e-9)
    raised = parse_rig({"cameras": {"C1": cam}, "ground_z": 0.5}).ground("C1", 240, 320) @ np.array([1.5, 3.0, 1.0])
    np.testing.assert_allclose(raised[:2] / raised[2], _project(cam, np.array([1.5, 3.0, 0.5])), atol=1e-9)


def test_resized_images_are_scaled_and_other_aspects_or_cameras_are_left_out():
    rig = parse_rig({"cameras": {"C1": _camera()}})
    full, half = rig.ground("C1", 240, 320), rig.ground("C1", 120, 160)
    p, q = full @ [2.0, 1.0, 1.0], half @ [2.0, 1.0, 1.0]
    # a pixel centre x of the full image is at (x + 0.5) / 2 - 0.5 in the half-size one
    np.testing.assert_allclose(q[:2] / q[2], (p[:2] / p[2] + 0.5) / 2 - 0.5, atol=1e-9)
    assert rig.ground("C1", 240, 240) is None  # a crop, not a resize
    assert rig.ground("C2", 240, 320) is None


def test_a_rig_written_as_yaml_reads_back_the_same(tmp_path):
    rig = Scene(SceneConfig(seed=3, cameras=3, height=90, width=160)).rig()
    path = tmp_path / "rig.yaml"
    path.write_text(rig_to_yaml(rig))
    back = load_rig(path)
    assert list(back.cameras) == ["C1", "C2", "C3"]
    for cid in rig.cameras:
        np.testing.assert_allclose(back.ground(cid, 90, 160), rig.ground(cid, 90, 160), rtol=1e-12)


def test_a_rodrigues_vector_is_a_rotation():
    cam = _camera()
    rvec = cv2.Rodrigues(np.array(cam["rotation"]))[0].ravel().tolist()
    a = parse_rig({"cameras": {"C1": cam}})
    b = parse_rig({"cameras": {"C1": {**cam, "rotation": rvec}}})
    np.testing.assert_allclose(a.ground("C1", 240, 320), b.ground("C1", 240, 320), atol=1e-9)


@pytest.mark.parametrize("change, key", [
    ({"size": [320]}, "C1.size"),
    ({"size": [320, True]}, "C1.size"),
    ({"size": [0, 240]}, "C1.size"),
    ({"intrinsics": [[1, 0], [0, 1]]}, "C1.intrinsics"),
    ({"intrinsics": [[0, 0, 0], [0, 0, 0], [0, 0, 1]]}, "C1.intrinsics"),
    ({"intrinsics": [[300, 0, 160], [0, 300, 120], [0, 0, float("nan")]]}, "C1.intrinsics"),
    ({"rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}, "C1.rotation"),
    ({"rotation": [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]}, "C1.rotation"),  # a mirror
    ({"rotation": "north"}, "C1.rotation"),
    ({"translation": [0, 0]}, "C1.translation"),
    ({"translation": [0, 0, "1"]}, "C1.translation"),
    ({"lens": "fisheye"}, "C1"),
])
def test_a_bad_camera_is_refused_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_rig({"cameras": {"C1": {**_camera(), **change}}})


def test_a_bad_rig_is_refused_with_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="cameras"):
        parse_rig({"cameras": {}})
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_rig({"cameras": {"C1": _camera()}, "origin": [0, 0]})
    with pytest.raises(ConfigError, match="camera id"):
        parse_rig({"cameras": {"C\x00": _camera()}})
    with pytest.raises(ConfigError, match="ground_z"):
        parse_rig({"cameras": {"C1": _camera()}, "ground_z": float("inf")})
    with pytest.raises(ConfigError, match="C1: its centre lies in the ground's plane"):
        parse_rig({"cameras": {"C1": _camera()}, "ground_z": 5.0})  # the camera stands 5 m up
    bad = tmp_path / "rig.yaml"
    bad.write_text("cameras: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rig(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_rig(tmp_path / "missing.yaml")


def test_a_rig_compares_by_identity_so_options_holding_it_stay_hashable():
    cal = CameraCalibration((320, 240), np.eye(3), np.eye(3), np.zeros(3))
    a, b = Rig({"C1": cal}), Rig({"C1": cal})
    assert a == a and a != b
    assert len({a, b}) == 2
