"""View-group sources for training: each item is one timestamp seen by several cameras, (V, H, W, 3) uint8.

Sources:
* ``FolderGroups``: the generic layout ``root/<camera>/<frame>.png`` of a user's own installation (frames that
  every listed camera has form the groups);
* ``SyntheticGroups``: the seeded synthetic plaza (mvic.shared.scene), rendered on the fly.

``GroupBatcher`` turns a source into training batches (B, K, 3, h, w) in [0, 1]: K drawn per batch from
[k_min, k_max] (K = 1 included when k_min = 1), a random subset of K cameras in random order, one random crop
window and one pair of flips shared by all views of a group (LDMIC's joint augmentation), and a random rate index
per group so all rate points of the variable-rate model train together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch

from mvic.shared.codec.images import read_rgb
from mvic.shared.rig import Rig
from mvic.shared.scene import Scene, SceneConfig

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class GroupSource(Protocol):
    cameras: Sequence[str]

    def __len__(self) -> int: ...

    def group(self, index: int) -> np.ndarray:
        """(V, H, W, 3) uint8, one row per camera in ``cameras`` order."""


class FolderGroups:
    def __init__(self, root: str | Path, cameras: Sequence[str] | None = None):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        cams = sorted(p.name for p in root.iterdir() if p.is_dir()) if cameras is None else list(cameras)
        if not cams:
            raise ValueError(f"{root} has no camera folders; expected root/<camera>/<frame>.png")
        frames = None
        for cam in cams:
            names = {p.stem: p.name for p in (root / cam).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
            keys = set(names)
            frames = keys if frames is None else frames & keys
        if not frames:
            raise ValueError(f"no frame name is present in every camera folder of {root} ({', '.join(cams)})")
        self.root, self.cameras = root, cams
        self.frames = sorted(frames)
        self._suffix = {cam: {p.stem: p.name for p in (root / cam).iterdir()} for cam in cams}

    def __len__(self) -> int:
        return len(self.frames)

    def group(self, index: int) -> np.ndarray:
        frame = self.frames[index]
        views = []
        for cam in self.cameras:
            views.append(read_rgb(self.root / cam / self._suffix[cam][frame]))
        if len({v.shape for v in views}) != 1:
            raise ValueError(f"frame {frame}: cameras have different image sizes; resize them to one size")
        return np.stack(views)


class ConcatGroups:
    """Several sources with the same number of cameras as one (e.g. many scene folders: ``root: scenes/*``)."""

    def __init__(self, sources: Sequence[GroupSource]):
        if not sources:
            raise ValueError("no sources to concatenate")
        counts = {len(s.cameras) for s in sources}
        if len(counts) != 1:
            raise ValueError(f"sources have different camera counts {sorted(counts)}; mix them as extra_data")
        self.sources = list(sources)
        self.cameras = list(sources[0].cameras)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def group(self, index: int) -> np.ndarray:
        i = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.sources[i].group(index - int(self._starts[i]))


class SyntheticGroups:
    """``frames`` timestamps of each of ``scenes`` seeded scenes (seeds seed, seed+1, ...)."""

    def __init__(self, config: SceneConfig, frames: int, scenes: int = 1, cache: int = 256):
        self._scenes = [Scene(replace(config, seed=config.seed + i)) for i in range(scenes)]
        self.frames = frames
        self.cameras = [c.name for c in self._scenes[0].cameras]
        self._cache: dict[int, np.ndarray] = {}  # rendered groups, at most `cache` of them
        self._cache_size = cache

    def __len__(self) -> int:
        return self.frames * len(self._scenes)

    def rig(self) -> Rig:
        """The cameras' calibration (``Scene.rig``), for one scene: another's cameras stand elsewhere, same ids."""
        if len(self._scenes) != 1:
            raise ValueError(f"{len(self._scenes)} scenes have {len(self._scenes)} rigs; ask one scene's")
        return self._scenes[0].rig()

    def group(self, index: int) -> np.ndarray:
        views = self._cache.get(index)
        if views is None:
            views = self._scenes[index // self.frames].render(index % self.frames)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = views
        return views


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # (B, K, 3, h, w) float in [0, 1]
    rate: torch.Tensor  # (B,) rate indexes

    def pin_memory(self) -> "Batch":
        """Called by a DataLoader with pin_memory=True, so that the copies to the GPU really are non-blocking."""
        return Batch(self.images.pin_memory(), self.rate.pin_memory())


class GroupBatcher:
    def __init__(self, source: GroupSource, batch_size: int, crop: int, k_min: int, k_max: int, num_rates: int,
                 seed: int = 0, rates: Sequence[int] = ()):
        """Each group's rate index is drawn from ``rates`` (empty: all of 0 .. num_rates - 1)."""
        if crop % 64:
            raise ValueError(f"crop {crop} must be a multiple of 64")
        if any(not 0 <= r < num_rates for r in rates) or len(set(rates)) != len(rates):
            raise ValueError(f"optim.rates: {list(rates)} must be distinct rate indexes within 0..{num_rates - 1}")
        k_max = min(k_max, len(source.cameras))
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max <= {len(source.cameras)} cameras, got {k_min}..{k_max}")
        self.source, self.batch_size, self.crop = source, batch_size, crop
        self.k_min, self.k_max, self.num_rates = k_min, k_max, num_rates
        self.rates = np.asarray(rates or range(num_rates), dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    def next(self) -> Batch:
        k = int(self.rng.integers(self.k_min, self.k_max + 1))
        groups = []
        for _ in range(self.batch_size):
            views = self.source.group(int(self.rng.integers(len(self.source))))
            cams = self.rng.permutation(views.shape[0])[:k]
            groups.append(self._augment(views[cams]))
        images = torch.from_numpy(np.stack(groups)).permute(0, 1, 4, 2, 3).float().div_(255)  # (B, K, 3, h, w)
        rate = torch.from_numpy(self.rates[self.rng.integers(0, len(self.rates), self.batch_size)])
        return Batch(images, rate)

    def _augment(self, views: np.ndarray) -> np.ndarray:
        """One crop window and one pair of flips for all K views: (K, H, W, 3) -> (K, crop, crop, 3)."""
        _, h, w, _ = views.shape
        if h < self.crop or w < self.crop:
            scale = self.crop / min(h, w)
            views = np.stack([cv2.resize(v, (max(self.crop, round(w * scale)), max(self.crop, round(h * scale))),
                                         interpolation=cv2.INTER_AREA) for v in views])
            _, h, w, _ = views.shape
        y = int(self.rng.integers(0, h - self.crop + 1))
        x = int(self.rng.integers(0, w - self.crop + 1))
        out = views[:, y:y + self.crop, x:x + self.crop]
        if self.rng.random() < 0.5:
            out = out[:, :, ::-1]
        if self.rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


class MixedBatcher:
    """Batches from several sources: each batch comes whole from one source, drawn by weight."""

    def __init__(self, batchers: Sequence[GroupBatcher], weights: Sequence[float], seed: int = 0):
        if not batchers or len(batchers) != len(weights) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("need one non-negative weight per source, not all zero")
        self.batchers = list(batchers)
        self.p = np.asarray(weights, dtype=np.float64) / float(sum(weights))
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        for i, b in enumerate(self.batchers):
            b.rng = np.random.default_rng([seed, i])

    def next(self) -> Batch:
        return self.batchers[int(self.rng.choice(len(self.batchers), p=self.p))].next()


class BatchStream(torch.utils.data.IterableDataset):
    """Endless batches for a DataLoader (batch_size=None); each worker draws its own seeded stream."""

    def __init__(self, batcher: MixedBatcher, seed: int):
        super().__init__()
        self.batcher, self.seed = batcher, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        self.batcher.reseed(self.seed * 1009 + (info.id + 1 if info else 0))
        while True:
            yield self.batcher.next()
