"""From a ``data:`` config section to its view-group source: the one place that knows every source kind.

Used by the training loop (mvic.tools.training.train) and by evaluation (mvic.tools.evaluation.evaluate).
"""

from __future__ import annotations

import glob
from pathlib import Path

from mvic.shared.scene import SceneConfig
from mvic.tools.training.config import DataConfig
from mvic.tools.training.data import ConcatGroups, FolderGroups, GroupSource, SyntheticGroups
from mvic.tools.training.datasets import Cityscapes, InStereo2K, WildTrackFrames, WildTrackSubsets
from mvic.tools.training.photo_views import PhotoWarpGroups


def make_source(d: DataConfig, seed: int) -> GroupSource:
    if d.kind == "synthetic":
        scene = SceneConfig(seed=seed, cameras=d.cameras, height=d.height, width=d.width, textures=d.textures)
        return SyntheticGroups(scene, d.frames, d.scenes)
    if d.kind == "folder":
        if any(c in d.root for c in "*?["):  # many folders of the generic layout, e.g. one per scene
            roots = sorted(Path(p) for p in glob.glob(d.root) if Path(p).is_dir())
            if not roots:
                raise FileNotFoundError(f"data.root {d.root!r} matches no folder")
            return ConcatGroups([FolderGroups(r) for r in roots])
        return FolderGroups(d.root)
    if d.kind == "photos":
        # many distinct warps per photo: a group is a pure function of (seed, index), so variety is in the index
        return PhotoWarpGroups(d.root, split=d.split, cameras=d.cameras, size=d.height, seed=seed,
                               groups_per_photo=1000)
    if d.kind == "wildtrack-subsets":
        return WildTrackSubsets(d.root)
    kinds = {"wildtrack": WildTrackFrames, "instereo2k": InStereo2K, "cityscapes": Cityscapes}
    if d.kind in kinds:
        return kinds[d.kind](d.root, d.split)
    raise ValueError(f"data.kind must be one of synthetic, folder, photos, wildtrack-subsets, {', '.join(kinds)}; "
                     f"got {d.kind!r}")
