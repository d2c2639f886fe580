"""The paper's datasets as view-group sources (same interface as data.FolderGroups), and WildTrack extraction.

Layouts (../shared/reference/ldmic-notes.md, Sec. 3):
* WildTrack frames: ``root/images/C1..C7/<n>.png``, n an integer; the first 2000 frames per camera train, the next
  51 test (App. 6.5). ``extract_wildtrack`` makes this layout from the seven synchronized videos at 1 frame/s.
* WildTrack annotated subset: ``root/Image_subsets/C1..C7/<8 digits>.png`` (400 frames, 2 fps).
* InStereo2K: ``root/train/**/<scene>/{left,right}.png`` (any depth), ``root/test/<scene>/{left,right}.png``.
* Cityscapes: ``root/leftImg8bit/<split>/<city>/*_leftImg8bit.png``, the right view at the same path with
  ``leftImg8bit`` -> ``rightImg8bit``; every image gets the standard artefact crop (left 128, top 64, right 128,
  bottom 256: 2048x1024 -> 1792x704).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mvic.shared.codec.images import read_rgb
from mvic.shared.fileio import write_atomic

WILDTRACK_CAMERAS = tuple(f"C{i}" for i in range(1, 8))
WILDTRACK_TRAIN, WILDTRACK_TEST = 2000, 51
CITYSCAPES_CROP = (64, 256, 128, 128)  # top, bottom, left, right


class _PathGroups:
    """A list of groups, each a list of image paths in camera order."""

    cameras: tuple[str, ...]
    groups: list[list[Path]]

    def __len__(self) -> int:
        return len(self.groups)

    def group(self, index: int) -> np.ndarray:
        return np.stack([self._load(p) for p in self.groups[index]])

    def _load(self, path: Path) -> np.ndarray:
        return read_rgb(path)


class WildTrackFrames(_PathGroups):
    def __init__(self, root: str | Path, split: str = "train", cameras: tuple[str, ...] = WILDTRACK_CAMERAS):
        root = Path(root) / "images"
        if not root.is_dir():
            raise FileNotFoundError(f"{root} does not exist; run `mvic-wildtrack` to extract frames from the videos")
        frames = None
        for cam in cameras:
            stems = {int(p.stem) for p in (root / cam).glob("*.png") if p.stem.isdigit()}
            frames = stems if frames is None else frames & stems
        ordered = sorted(frames or ())
        if split == "train":
            chosen = ordered[:WILDTRACK_TRAIN]
        elif split == "test":
            chosen = ordered[WILDTRACK_TRAIN:WILDTRACK_TRAIN + WILDTRACK_TEST]
        else:
            raise ValueError(f"split must be train or test, got {split!r}")
        if not chosen:
            raise ValueError(f"no {split} frames under {root} (found {len(ordered)} frames common to all cameras)")
        self.cameras = tuple(cameras)
        self.groups = [[root / cam / f"{n}.png" for cam in cameras] for n in chosen]


class WildTrackSubsets(_PathGroups):
    def __init__(self, root: str | Path, cameras: tuple[str, ...] = WILDTRACK_CAMERAS):
        root = Path(root) / "Image_subsets"
        names = sorted(p.name for p in (root / cameras[0]).glob("*.png"))
        if not names:
            raise FileNotFoundError(f"no frames in {root / cameras[0]}; expected Image_subsets/C1..C7/<frame>.png")
        self.cameras = tuple(cameras)
        self.groups = [[root / cam / n for cam in cameras] for n in names if all((root / c / n).is_file()
                                                                                 for c in cameras)]


class InStereo2K(_PathGroups):
    def __init__(self, root: str | Path, split: str = "train"):
        base = Path(root) / split
        lefts = sorted(base.rglob("left.png"))
        self.groups = [[p, p.with_name("right.png")] for p in lefts if p.with_name("right.png").is_file()]
        if not self.groups:
            raise FileNotFoundError(f"no left.png/right.png pairs under {base}")
        self.cameras = ("left", "right")


class Cityscapes(_PathGroups):
    def __init__(self, root: str | Path, split: str = "train"):
        base = Path(root) / "leftImg8bit" / split
        self.groups = []
        for left in sorted(base.glob("*/*_leftImg8bit.png")):
            right = Path(str(left).replace("leftImg8bit", "rightImg8bit"))
            if right.is_file():
                self.groups.append([left, right])
        if not self.groups:
            raise FileNotFoundError(f"no left/right pairs under {base} (and its rightImg8bit twin)")
        self.cameras = ("left", "right")

    def _load(self, path: Path) -> np.ndarray:
        top, bottom, left, right = CITYSCAPES_CROP
        img = read_rgb(path)
        return np.ascontiguousarray(img[top: img.shape[0] - bottom, left: img.shape[1] - right])


def extract_wildtrack(videos: list[Path], out_root: Path, every_seconds: float = 1.0,
                      max_frames: int = WILDTRACK_TRAIN + WILDTRACK_TEST) -> dict[str, int]:
    """Decode one frame per ``every_seconds`` from each camera video (given in C1..C7 order) into
    ``out_root/images/Ck/<n>.png``; returns frames written per camera. Existing frames are kept (resumable)."""
    counts = {}
    for k, video in enumerate(videos, start=1):
        cam = f"C{k}"
        cap = cv2.VideoCapture(str(video))
        if not cap.isOpened():
            raise OSError(f"cannot open video {video}; check the path and that OpenCV can decode it")
        fps = cap.get(cv2.CAP_PROP_FPS) or 60.0
        step = max(1, round(fps * every_seconds))
        out = out_root / "images" / cam
        out.mkdir(parents=True, exist_ok=True)
        index = written = 0
        try:
            while written < max_frames:
                ok, frame = cap.read()
                if not ok:
                    break
                if index % step == 0:
                    path = out / f"{written}.png"
                    if not path.is_file():
                        ok, png = cv2.imencode(".png", frame)
                        write_atomic(path, png.tobytes())
                    written += 1
                index += 1
        finally:
            cap.release()
        counts[cam] = written
    return counts


def main(argv: list[str] | None = None) -> int:
    """``mvic-wildtrack``: extract the WildTrack frames (1 per second) from the seven camera videos."""
    import argparse

    p = argparse.ArgumentParser(prog="mvic-wildtrack", description=main.__doc__)
    p.add_argument("videos", type=Path, nargs=7, help="the seven videos, in camera order C1..C7")
    p.add_argument("-o", "--output", type=Path, required=True, help="dataset root (images/C1..C7 are written)")
    p.add_argument("--every-seconds", type=float, default=1.0)
    p.add_argument("--max-frames", type=int, default=WILDTRACK_TRAIN + WILDTRACK_TEST)
    args = p.parse_args(argv)
    counts = extract_wildtrack(args.videos, args.output, args.every_seconds, args.max_frames)
    print(", ".join(f"{cam}: {n} frames" for cam, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
