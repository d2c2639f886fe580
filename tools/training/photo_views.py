"""Multi-view training groups from single photographs: overlapping crops under mild random perspective warps.

Previous hop: mvic.tools.training.corpus writes ``root/photos/*.jpg`` and ``root/manifest.json`` (with the
train/test split). Next hop: mvic.tools.training.data.GroupBatcher crops, flips and batches the groups.

Each group comes from one photo. A square window of ``zoom * size`` photo pixels is placed on it; every view sees
that window moved by a small shift, rotation and scale, with its corners jittered (a homography), and with a slight
per-view gain and offset per channel, as cameras with different exposure and white balance would. The views overlap
heavily but not exactly, like neighbouring cameras looking at one plane. A group is a pure function of
(seed, index): the same in every DataLoader worker and every epoch.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mvic.shared.codec.images import read_rgb


@dataclass(frozen=True)
class WarpConfig:
    """Per-view perturbations, as fractions of the window side unless said otherwise."""

    shift: float = 0.15  # translation, each axis
    rotate_deg: float = 6.0  # rotation about the window centre, degrees
    scale: float = 0.12  # relative change of size
    perspective: float = 0.06  # independent jitter of each corner, each axis
    max_zoom: float = 2.0  # window side / output side, drawn log-uniform in [1, max_zoom] (never upsampled below 1)
    gain: float = 0.06  # per-channel multiplicative change, relative
    offset: float = 6.0  # per-channel additive change, 8-bit levels


def _unit_square() -> np.ndarray:
    return np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])  # (4, 2) corners, clockwise


class PhotoWarpGroups:
    """``cameras`` views of ``size`` x ``size`` per group; ``groups_per_photo`` groups per photo of the split."""

    def __init__(self, root: str | Path, split: str = "train", cameras: int = 7, size: int = 256, seed: int = 0,
                 groups_per_photo: int = 32, warp: WarpConfig = WarpConfig(), cache: int = 64):
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path} not found; build the corpus with `mvic-corpus build -o {root}`")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be train, test or all, got {split!r}")
        if cameras < 1 or size < 16 or groups_per_photo < 1:
            raise ValueError("need cameras >= 1, size >= 16 and groups_per_photo >= 1")
        photos = json.loads(manifest_path.read_text())["photos"]
        self.files = [root / p["file"] for p in photos if split == "all" or p["split"] == split]
        if not self.files:
            raise ValueError(f"{manifest_path} has no {split} photos")
        self.root, self.split, self.size, self.seed = root, split, size, seed
        self.groups_per_photo, self.warp = groups_per_photo, warp
        self.cameras = [f"warp{i}" for i in range(cameras)]
        self._cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()  # photo -> [full, half] RGB, LRU
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self.files) * self.groups_per_photo

    def group(self, index: int) -> np.ndarray:
        """(V, size, size, 3) uint8 RGB."""
        return self.group_with_homographies(index)[0]

    def group_with_homographies(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The views and, per view, the 3x3 homography from full-resolution photo pixels to view pixels."""
        if not 0 <= index < len(self):
            raise IndexError(f"group {index} out of range 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, index])
        levels = self._photo(index // self.groups_per_photo)
        h, w = levels[0].shape[:2]
        w_cfg, n = self.warp, len(self.cameras)

        quads = np.stack([self._view_quad(rng) for _ in range(n)])  # (V, 4, 2) in window units, centre at 0
        lo, hi = quads.reshape(-1, 2).min(0), quads.reshape(-1, 2).max(0)
        fit = min(w / (hi[0] - lo[0]), h / (hi[1] - lo[1]))  # largest window side (pixels) that keeps all inside
        zoom = math.exp(rng.uniform(0.0, math.log(w_cfg.max_zoom)))
        side = min(self.size * zoom, fit * 0.999)
        cx = rng.uniform(-lo[0] * side, max(-lo[0] * side, w - 1 - hi[0] * side))
        cy = rng.uniform(-lo[1] * side, max(-lo[1] * side, h - 1 - hi[1] * side))
        level = 1 if side / self.size >= 1.5 else 0  # read strong reductions from the half-size copy
        image = levels[level]

        dst = np.float32([[0, 0], [self.size, 0], [self.size, self.size], [0, self.size]])
        views, homographies = [], []
        for quad in quads:
            src = (quad * side + (cx, cy)).astype(np.float32)  # (4, 2) full-resolution photo pixels
            hom = cv2.getPerspectiveTransform(src, dst)
            at_level = hom @ np.diag([2.0 ** level, 2.0 ** level, 1.0])  # level pixels -> full pixels -> view
            view = cv2.warpPerspective(image, at_level, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT_101)
            views.append(self._photometric(view, rng))
            homographies.append(hom)
        return np.stack(views), np.stack(homographies)  # (V, size, size, 3), (V, 3, 3)

    def _view_quad(self, rng: np.random.Generator) -> np.ndarray:
        """Corners of one view's window, in units of the window side, relative to the window centre: (4, 2)."""
        w = self.warp
        angle = math.radians(rng.uniform(-w.rotate_deg, w.rotate_deg))
        scale = 1.0 + rng.uniform(-w.scale, w.scale)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        corners = _unit_square() + rng.uniform(-w.perspective, w.perspective, (4, 2))
        return corners @ rot.T * scale + rng.uniform(-w.shift, w.shift, 2)

    def _photometric(self, view: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gain = 1.0 + rng.uniform(-self.warp.gain, self.warp.gain, 3)
        offset = rng.uniform(-self.warp.offset, self.warp.offset, 3)
        lut = np.clip(np.arange(256, dtype=np.float32)[:, None] * gain + offset, 0, 255)  # (256, 3)
        return cv2.LUT(view, np.rint(lut).astype(np.uint8).reshape(256, 1, 3))

    def _photo(self, photo: int) -> list[np.ndarray]:
        levels = self._cache.get(photo)
        if levels is not None:
            self._cache.move_to_end(photo)
            return levels
        rgb = read_rgb(self.files[photo], "rebuild the corpus with `mvic-corpus build`")
        levels = [rgb, cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)]
        self._cache[photo] = levels
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return levels
