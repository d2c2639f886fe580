"""A calibrated camera rig: each camera's pinhole model, so the joint decoder knows how the ground maps between views.

Hop before: a rig file that whoever set up the cameras wrote (``mvic-scene`` writes one beside its rendered plazas,
``rig.yaml``; any calibration tool's K, R, t fit). Hop after: the view fusion (``view_fusion.fuse_views(ground=...)``),
which aligns the ground plane of two calibrated views exactly; the server reads the file (``decode.rig``).

    # world coordinates: z up, the ground is the plane z = ground_z; units are yours (m, cm), one for all
    ground_z: 0.0
    cameras:
      C1:
        size: [480, 270]                                    # width, height (pixels) the calibration describes
        intrinsics: [[420.0, 0, 240.0], [0, 420.0, 135.0], [0, 0, 1]]
        rotation: [[1, 0, 0], [0, 0, -1], [0, 1, 0]]        # world -> camera, 3x3; or OpenCV's Rodrigues [rx, ry, rz]
        translation: [0.0, 5.0, 12.0]                       # world -> camera: x_cam = R x_world + t

A camera whose images arrive at another size is scaled (the same aspect ratio: a resized image), or left out of
the ground's alignment (another aspect: a crop the rig cannot know). Lens distortion is not modelled: give the
calibration of undistorted images (WildTrack's ``intrinsic_zero``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mvic.shared.config import read_yaml, require
from mvic.shared.errors import ConfigError, IdError
from mvic.shared.ids import display, validate_camera_id

__all__ = ["CameraCalibration", "Rig", "load_rig", "rig_to_yaml", "sees_shared_ground"]

MAX_CAMERAS = 1024
MAX_SIDE = 1 << 16
ASPECT_TOLERANCE = 0.01  # images whose aspect ratio differs from the calibration's by more are not scaled to it


@dataclass(frozen=True)
class CameraCalibration:
    """One pinhole camera: pixel ~ intrinsics @ (rotation @ world + translation), for images of ``size``."""

    size: tuple[int, int]  # (width, height) in pixels
    intrinsics: np.ndarray  # (3, 3)
    rotation: np.ndarray  # (3, 3), world -> camera
    translation: np.ndarray  # (3,)

    def ground_to_image(self, ground_z: float = 0.0) -> np.ndarray:
        """(3, 3): the ground's (X, Y, 1) -> depth * (u, v, 1), depth > 0 in front of the camera."""
        r = self.rotation
        return self.intrinsics @ np.stack([r[:, 0], r[:, 1], r[:, 2] * ground_z + self.translation], axis=1)


@dataclass(frozen=True, eq=False)  # equal only to itself, so it can sit in hashable options
class Rig:
    """The calibrated cameras by id, and the ground's height."""

    cameras: Mapping[str, CameraCalibration]
    ground_z: float = 0.0

    def ground(self, camera_id: str, height: int, width: int) -> np.ndarray | None:
        """(3, 3) ground -> pixel homography for camera ``camera_id``'s images of height x width; None when the rig
        has no such camera or the images are not a resized copy of what it calibrated (another aspect ratio)."""
        cal = self.cameras.get(camera_id)
        if cal is None:
            return None
        sx, sy = width / cal.size[0], height / cal.size[1]
        if abs(sx / sy - 1) > ASPECT_TOLERANCE:
            return None
        # pixel centres are at integer coordinates: a resize maps x to (x + 0.5) * s - 0.5
        scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        return scale @ cal.ground_to_image(self.ground_z)


def sees_shared_ground(ground_a: np.ndarray, ground_b: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(...) bool: whether camera a's pixels ``points`` (..., 2) look at the ground in front of camera a and of
    camera b (``ground_*``: their ``Rig.ground`` homographies). A ground homography maps (X, Y, 1) to
    depth * (u, v, 1), so its inverse gives (X, Y, 1) / depth: negative above the horizon."""
    pixels = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1).astype(np.float64)
    plane = pixels @ np.linalg.inv(ground_a).T  # (X, Y, 1) / depth_a
    return (plane[..., 2] > 0) & (plane @ ground_b[2] > 0)  # depth_b / depth_a


def load_rig(path: str | Path) -> Rig:
    """The rig in a YAML file (format: this module's doc); ConfigError saying which key is wrong and how."""
    raw = read_yaml(path)
    return parse_rig(raw, f"rig {Path(path).name}")


def parse_rig(raw: Any, where: str = "rig") -> Rig:
    require(isinstance(raw, dict), where, "must be a mapping with 'cameras' (and optionally 'ground_z')")
    unknown = sorted(set(map(str, raw)) - {"cameras", "ground_z"})
    require(not unknown, where, f"unknown keys {display(unknown)}; allowed: cameras, ground_z")
    ground_z = raw.get("ground_z", 0.0)
    require(_number(ground_z), f"{where}.ground_z", "must be a finite number (the ground's height, world units)")
    cams = raw.get("cameras")
    require(isinstance(cams, dict) and 0 < len(cams) <= MAX_CAMERAS, f"{where}.cameras",
            f"must map 1..{MAX_CAMERAS} camera ids to their calibration")
    out = {}
    for cid, entry in cams.items():
        try:
            validate_camera_id(str(cid))
        except IdError as exc:
            raise ConfigError(f"{where}.cameras: {exc}") from None
        key = f"{where}.cameras.{cid}"  # a valid id: printable, bounded
        out[str(cid)] = cal = _camera(entry, key)
        # a camera whose centre lies in the ground's plane sees it edge-on: no homography to or from it
        require(np.linalg.cond(cal.ground_to_image(float(ground_z))) < 1e12, key,
                "its centre lies in the ground's plane (z = ground_z): check translation, rotation and ground_z")
    return Rig(out, float(ground_z))


def rig_to_yaml(rig: Rig) -> str:
    """The rig as the YAML ``load_rig`` reads (rotations as 3x3 matrices)."""
    lines = ["# MVIC rig: world z up, the ground is z = ground_z; x_cam = rotation @ x_world + translation",
             f"ground_z: {rig.ground_z!r}", "cameras:"]
    for cid, cal in rig.cameras.items():
        lines += [f"  {cid}:", f"    size: [{cal.size[0]}, {cal.size[1]}]",
                  f"    intrinsics: {_rows(cal.intrinsics)}", f"    rotation: {_rows(cal.rotation)}",
                  f"    translation: [{', '.join(repr(float(v)) for v in cal.translation)}]"]
    return "\n".join(lines) + "\n"


def _rows(m: np.ndarray) -> str:
    return "[" + ", ".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in m) + "]"


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _matrix(v: Any, shape: tuple[int, ...], key: str) -> np.ndarray:
    rows = v if len(shape) == 2 and isinstance(v, list) else [v]
    ok = (isinstance(v, list) and len(rows) == (shape[0] if len(shape) == 2 else 1)
          and all(isinstance(r, list) and len(r) == shape[-1]
                                                                  and all(_number(x) for x in r) for r in rows))
    require(ok, key, f"must be {'x'.join(map(str, shape))} finite numbers, got {display(v)}")
    return np.array(v, np.float64)


def _rodrigues(vector: np.ndarray) -> np.ndarray:
    """OpenCV's rotation vector (axis times angle, radians) as a 3x3 matrix (cv2.Rodrigues, without loading cv2)."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    x, y, z = vector / angle
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _camera(entry: Any, key: str) -> CameraCalibration:
    require(isinstance(entry, dict), key, "must be a mapping with size, intrinsics, rotation, translation")
    missing = sorted({"size", "intrinsics", "rotation", "translation"} - set(map(str, entry)))
    extra = sorted(set(map(str, entry)) - {"size", "intrinsics", "rotation", "translation"})
    require(not missing and not extra, key, f"needs exactly size, intrinsics, rotation, translation "
            f"(missing {missing}, unknown {display(extra)})")
    size = entry["size"]
    require(isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool)
                                                               and 0 < s <= MAX_SIDE for s in size),
            f"{key}.size", f"must be [width, height], integers 1..{MAX_SIDE}, got {display(size)}")
    k = _matrix(entry["intrinsics"], (3, 3), f"{key}.intrinsics")
    require(k[2, 2] > 0 and abs(np.linalg.det(k)) > 1e-9 and np.allclose(k[2, :2], 0), f"{key}.intrinsics",
            "must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy non-zero")
    rot = entry["rotation"]
    if isinstance(rot, list) and np.shape(rot) == (3,):
        rot = _rodrigues(_matrix(rot, (3,), f"{key}.rotation"))
    else:
        rot = _matrix(rot, (3, 3), f"{key}.rotation")
    require(np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) and np.linalg.det(rot) > 0, f"{key}.rotation",
            "must be a rotation (orthonormal, determinant +1) or a Rodrigues vector [rx, ry, rz]")
    t = _matrix(entry["translation"], (3,), f"{key}.translation")
    return CameraCalibration((size[0], size[1]), k, rot, t)
