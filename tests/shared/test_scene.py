"""The synthetic multi-camera scene: deterministic, overlapping, moving, writable."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.shared.rig import load_rig
from mvic.shared.scene import Scene, SceneConfig, main

SMALL = dict(height=72, width=128, objects=4)


def test_same_seed_same_views_other_seed_other_views():
    a = Scene(SceneConfig(seed=3, cameras=3, **SMALL)).render(2)
    b = Scene(SceneConfig(seed=3, cameras=3, **SMALL)).render(2)
    c = Scene(SceneConfig(seed=4, cameras=3, **SMALL)).render(2)
    assert a.shape == (3, 72, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_views_are_textured_and_objects_move():
    scene = Scene(SceneConfig(seed=0, cameras=2, **SMALL))
    f0, f5 = scene.render(0), scene.render(5)
    assert all(v.std() > 20 for v in f0)  # photographs, not flat colour
    assert np.abs(f0.astype(int) - f5.astype(int)).mean() > 1  # moving boxes


@pytest.mark.parametrize("k", [1, 2, 7])
def test_cameras_overlap_on_the_plaza(k):
    scene = Scene(SceneConfig(seed=1, cameras=k, **SMALL))
    center = np.array([[0.0, 0.0, 0.0], [2.0, -2.0, 0.0], [-2.0, 1.0, 1.0]])  # points on the plaza
    for cam in scene.cameras:
        assert (cam.to_camera(center)[:, 2] > 0).all()
        pix = cam.project(center)
        assert ((pix[:, 0] >= 0) & (pix[:, 0] < 128) & (pix[:, 1] >= 0) & (pix[:, 1] < 72)).sum() >= 2
    assert [c.name for c in scene.cameras] == [f"C{i + 1}" for i in range(k)]


def test_surfaces_say_which_plane_each_pixel_shows():
    scene = Scene(SceneConfig(seed=2, cameras=3, height=96, width=160))
    view = scene.render(0)[1]
    quads, ids = scene.surfaces(0, camera=1)
    sky = ids == 0
    assert 0 < sky.mean() < 1 and (view[sky] == scene.sky[sky]).all()  # 0: the backdrop, as rendered
    assert len(quads) == 4 + 5 * scene.config.objects  # ground layers, wall, building; 5 faces per box
    ground = quads[1]  # surface 1, id 2: the plaza's paving; its pixels map back inside it
    rows, cols = np.nonzero(ids == 2)
    to_image = scene.cameras[1].plane_to_image(np.stack([ground.u, ground.v, ground.origin], axis=1))
    ab = np.linalg.solve(to_image, np.stack([cols + 0.5, rows + 0.5, np.ones(len(rows))]))
    a, b = ab[0] / ab[2], ab[1] / ab[2]
    assert len(rows) > 100
    assert -0.05 < a.min() and a.max() < ground.size_u + 0.05
    assert -0.05 < b.min() and b.max() < ground.size_v + 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        SceneConfig(cameras=0)
    with pytest.raises(ValueError):
        SceneConfig(height=4)


def test_the_rig_maps_the_ground_where_each_camera_renders_it():
    scene = Scene(SceneConfig(seed=4, cameras=3, height=90, width=160))
    rig = scene.rig()
    point = np.array([1.0, -2.0, 0.0])  # on the plaza
    for cam in scene.cameras:
        seen = rig.ground(cam.name, 90, 160) @ np.array([1.0, -2.0, 1.0])
        np.testing.assert_allclose(seen[:2] / seen[2], cam.project(point[None])[0], atol=1e-9)


def test_cli_writes_the_generic_layout(tmp_path, capsys):
    assert main(["-o", str(tmp_path), "--frames", "2", "--cameras", "3", "--size", "40x64"]) == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert files == [f"C{c}/{f:06d}.png" for c in (1, 2, 3) for f in (0, 1)]
    assert list(load_rig(tmp_path / "rig.yaml").cameras) == ["C1", "C2", "C3"]
    assert cv2.imread(str(tmp_path / "C2" / "000001.png")).shape == (40, 64, 3)
    assert "3 cameras x 2 frames" in capsys.readouterr().out


def test_textures_from_a_photo_folder_change_the_scene_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    base = SceneConfig(seed=5, cameras=2, height=48, width=64)
    textured = SceneConfig(seed=5, cameras=2, height=48, width=64, textures=str(tmp_path))
    a, b = Scene(textured).render(0), Scene(textured).render(0)
    assert np.array_equal(a, b) and not np.array_equal(a, Scene(base).render(0))
    with pytest.raises(FileNotFoundError, match="mvic-corpus"):
        Scene(SceneConfig(seed=5, cameras=2, height=48, width=64, textures=str(tmp_path / "none")))
