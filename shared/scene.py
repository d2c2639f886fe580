"""Synthetic multi-camera scenes: a 3-D plaza textured with real photographs, seen by K overlapping cameras.

The embedded default data of the demo and the tests, and a training source: no download needed. A scene is a
textured ground, a back wall and a side building, and moving textured boxes ("people/objects"), rendered by K
pinhole cameras placed on an arc around the plaza at seeded random heights, distances and aims, so their fields of
view overlap like the WildTrack rig. Everything is deterministic given the seed.

Rendering is exact planar projection: each textured rectangle maps to the image by a homography (cv2
warpPerspective), masked by its polygon clipped to the camera's near plane, drawn far to near. Textures are the
photographs bundled with scikit-image (public-domain NASA images, CC0/BSD sample photos; see its data README),
plus the Middlebury motorcycle for the side building.

    scene = Scene(SceneConfig(seed=0, cameras=7, height=270, width=480))
    views = scene.render(frame=0)          # (K, H, W, 3) uint8, one row per camera
    view = scene.render_view(0, camera=2)  # (H, W, 3) uint8, camera C3 only (what a camera node renders)
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mvic.shared.fileio import write_atomic
from mvic.shared.rig import CameraCalibration, Rig, rig_to_yaml

NEAR = 0.1  # m


@dataclass(frozen=True)
class SceneConfig:
    seed: int = 0
    cameras: int = 7
    height: int = 270  # pixels per view
    width: int = 480
    objects: int = 6
    fps: float = 5.0
    plaza: float = 10.0  # half-size of the ground square, m
    fov_deg: tuple[float, float] = (55.0, 75.0)  # horizontal field of view range
    textures: str = ""  # folder of photographs (e.g. the mvic-corpus output) for the building, wall and objects

    def __post_init__(self):
        if not 1 <= self.cameras <= 64:
            raise ValueError(f"cameras must be 1..64, got {self.cameras}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"view size {self.height}x{self.width} is too small; use at least 8x8")


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: x_img ~ K (R X + t)."""

    name: str
    intrinsics: np.ndarray  # (3, 3)
    rotation: np.ndarray  # (3, 3) world -> camera
    translation: np.ndarray  # (3,)

    @property
    def center(self) -> np.ndarray:
        return -self.rotation.T @ self.translation

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 3) camera coordinates (z forward)."""
        return points @ self.rotation.T + self.translation

    def plane_to_image(self, plane: np.ndarray) -> np.ndarray:
        """(3, 3) homography from a plane's coordinates (a, b, 1) to pixels; ``plane``'s columns are its two axes
        and its origin in the world (p = a * axis_a + b * axis_b + origin)."""
        return self.intrinsics @ (self.rotation @ plane + np.outer(self.translation, [0, 0, 1]))

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world -> (N, 2) pixels (points must be in front of the camera)."""
        cam = self.to_camera(points) @ self.intrinsics.T
        return cam[:, :2] / cam[:, 2:3]


@dataclass(frozen=True)
class Quad:
    """A textured rectangle: corner origin + a*u + b*v for a in [0, size_u], b in [0, size_v] (m)."""

    origin: np.ndarray
    u: np.ndarray  # unit vector along the texture's columns
    v: np.ndarray  # unit vector along the texture's rows
    size_u: float
    size_v: float
    texture: np.ndarray = field(repr=False)  # (th, tw, 3) uint8
    shade: float = 1.0

    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.u * self.size_u, self.v * self.size_v
        return np.stack([o, o + u, o + u + v, o + v])


def look_at(center: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World -> camera rotation for a camera at center looking at target, z up in the world, y down in the image."""
    forward = target - center
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


@lru_cache(maxsize=1)
def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    def grey_to_rgb(img, tint):
        return np.clip(img[..., None].astype(np.float32) * np.array(tint, np.float32), 0, 255).astype(np.uint8)

    left, _, _ = data.stereo_motorcycle()
    return {
        "ground": grey_to_rgb(data.gravel(), (1.0, 0.95, 0.85)),
        "grass": grey_to_rgb(data.grass(), (0.75, 1.0, 0.6)),
        "wall": grey_to_rgb(data.brick(), (1.0, 0.8, 0.7)),
        "building": left,
        "sky": data.hubble_deep_field(),
        "objects": [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina(),
                    data.colorwheel()],
    }


@lru_cache(maxsize=2)
def _texture_pool(root: str) -> tuple[np.ndarray, ...]:
    """Every photograph under ``root`` (jpg/png), RGB, long side at most 640 px."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no .jpg/.png photographs under {root}; build them with `mvic-corpus build -o DIR`")
    pool = []
    for path in files:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read texture {path}")
        scale = min(1.0, 640 / max(bgr.shape[:2]))
        if scale < 1:
            bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        pool.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return tuple(pool)


def _scene_photos(config: SceneConfig) -> dict:
    """The bundled scikit-image photos, or with ``config.textures`` a seeded draw from that folder's photographs."""
    photos = _photos()
    if not config.textures:
        return photos
    pool = _texture_pool(str(Path(config.textures).resolve()))
    pick = np.random.default_rng([config.seed, 7]).choice(len(pool), size=8, replace=len(pool) < 8)
    return {**photos, "wall": pool[pick[0]], "building": pool[pick[1]], "objects": [pool[i] for i in pick[2:]]}


class Scene:
    """A seeded plaza with moving boxes and K cameras; ``render(frame)`` gives the K views of one timestamp."""

    def __init__(self, config: SceneConfig = SceneConfig()):
        self.config = config
        rng = np.random.default_rng(config.seed)
        photos = _scene_photos(config)
        L = config.plaza
        self.static = [
            Quad(np.array([-2 * L, -2 * L, 0.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), 4 * L, 4 * L,
                 photos["grass"]),
            Quad(np.array([-L, -L, 0.01]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), 2 * L, 2 * L,
                 photos["ground"]),
            Quad(np.array([-L, L, 6.0]), np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), 2 * L, 6.0,
                 photos["wall"], 0.9),
            Quad(np.array([-L, -L * 0.2, 8.0]), np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), 1.2 * L, 8.0,
                 photos["building"], 0.8),
        ]
        self.sky = cv2.resize(photos["sky"], (config.width, config.height), interpolation=cv2.INTER_AREA)
        self.cameras = self._place_cameras(rng)
        self.objects = []
        for i in range(config.objects):
            tex = photos["objects"][i % len(photos["objects"])]
            size = rng.uniform([0.6, 0.6, 1.5], [1.6, 1.6, 2.4])
            start = rng.uniform(-0.7 * L, 0.7 * L, 2)
            velocity = rng.normal(0, 1.0, 2)
            yaw = rng.uniform(0, np.pi)
            crop = self._random_crop(rng, tex)
            self.objects.append((size, start, velocity, yaw, crop))

    def _place_cameras(self, rng) -> list[Camera]:
        cfg = self.config
        cams = []
        k = cfg.cameras
        span = np.deg2rad(140.0)
        for i in range(k):
            angle = -np.pi / 2 + (span * (i / (k - 1) - 0.5) if k > 1 else 0.0) + rng.normal(0, 0.05)
            radius = rng.uniform(1.5, 1.9) * cfg.plaza
            center = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(3.0, 7.0)])
            target = np.array([*rng.normal(0, 0.15 * cfg.plaza, 2), 0.0])
            fov = np.deg2rad(rng.uniform(*cfg.fov_deg))
            f = cfg.width / (2 * np.tan(fov / 2))
            intr = np.array([[f, 0, cfg.width / 2], [0, f, cfg.height / 2], [0, 0, 1.0]])
            rot = look_at(center, target)
            cams.append(Camera(f"C{i + 1}", intr, rot, -rot @ center))
        return cams

    @staticmethod
    def _random_crop(rng, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 0.9)), int(w * rng.uniform(0.5, 0.9))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        return np.ascontiguousarray(img[y:y + ch, x:x + cw])

    def _object_quads(self, frame: int) -> list[Quad]:
        L = self.config.plaza
        t = frame / self.config.fps
        quads = []
        for size, start, velocity, yaw, tex in self.objects:
            pos = start + velocity * t
            pos = L * 0.8 - np.abs((pos + L * 0.8) % (3.2 * L) - 1.6 * L)  # bounce inside the plaza
            c, s = np.cos(yaw + 0.2 * t), np.sin(yaw + 0.2 * t)
            ax, ay = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
            w, d, h = size
            base = np.array([pos[0], pos[1], 0.0]) - ax * w / 2 - ay * d / 2
            top = np.array([0, 0, h])
            down = np.array([0, 0, -1.0])
            faces = [(base + top, ax, w), (base + ax * w + top, ay, d), (base + ax * w + ay * d + top, -ax, w),
                     (base + ay * d + top, -ay, d)]
            for j, (origin, u, width) in enumerate(faces):
                quads.append(Quad(origin, u, down, width, h, tex, 0.75 + 0.25 * (j % 2)))
            quads.append(Quad(base + top, ax, ay, w, d, tex, 1.05))
        return quads

    def render(self, frame: int = 0) -> np.ndarray:
        """(K, H, W, 3) uint8: every camera's view at this frame."""
        quads = self.static + self._object_quads(frame)
        return np.stack([self._render_view(cam, quads) for cam in self.cameras])

    def render_view(self, frame: int, camera: int) -> np.ndarray:
        """(H, W, 3) uint8: one camera's view at this frame, equal to ``render(frame)[camera]`` at 1/K the cost."""
        return self._render_view(self.cameras[camera], self.static + self._object_quads(frame))

    def rig(self) -> Rig:
        """The cameras' calibration (``mvic.shared.rig``): what a calibrated installation would know of itself."""
        size = (self.config.width, self.config.height)
        return Rig({c.name: CameraCalibration(size, c.intrinsics, c.rotation, c.translation) for c in self.cameras})

    def surfaces(self, frame: int, camera: int) -> tuple[list[Quad], np.ndarray]:
        """What camera ``camera`` sees at this frame: the scene's surfaces and an (H, W) uint8 map of which one
        each pixel shows (k + 1 for surface k, 0 for the sky), for measurements that need the true geometry."""
        quads = self.static + self._object_quads(frame)
        flat = [dataclasses.replace(q, texture=np.full((2, 2, 3), k + 1, np.uint8), shade=1.0)
                for k, q in enumerate(quads)]
        return quads, self._render_view(self.cameras[camera], flat, np.zeros_like(self.sky))[..., 0]

    def _render_view(self, cam: Camera, quads: list[Quad], sky: np.ndarray | None = None) -> np.ndarray:
        img = (self.sky if sky is None else sky).copy()
        ground, rest = quads[:2], quads[2:]  # the two ground layers first, then far to near
        rest = sorted(rest, key=lambda q: -np.linalg.norm(q.corners().mean(0) - cam.center))
        for q in ground + rest:
            self._draw(img, cam, q, self.config)
        return img

    @staticmethod
    def _draw(img: np.ndarray, cam: Camera, q: Quad, cfg: SceneConfig) -> None:
        corners_cam = cam.to_camera(q.corners())
        poly = _clip_near(corners_cam)
        if len(poly) < 3:
            return
        pix = poly @ cam.intrinsics.T
        pix = pix[:, :2] / pix[:, 2:3]
        if (pix[:, 0].max() < 0 or pix[:, 0].min() > cfg.width or pix[:, 1].max() < 0
                or pix[:, 1].min() > cfg.height):
            return
        th, tw = q.texture.shape[:2]
        # texture pixel (col, row) -> world -> image
        hom = cam.plane_to_image(np.stack([q.u * q.size_u / tw, q.v * q.size_v / th, q.origin], axis=1))
        warped = cv2.warpPerspective(q.texture, hom, (cfg.width, cfg.height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((cfg.height, cfg.width), np.uint8)
        cv2.fillPoly(mask, [np.round(pix * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        sel = mask.astype(bool)
        img[sel] = np.clip(warped[sel].astype(np.float32) * q.shade, 0, 255).astype(np.uint8)


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-space polygon to z >= NEAR."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        a_in, b_in = a[2] >= NEAR, b[2] >= NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


def write_scene(config: SceneConfig, frames: int, root, video: bool = False) -> list[str]:
    """Write ``frames`` timestamps as ``root/<camera>/<frame:06d>.png`` (the generic layout) or, with video=True,
    one ``root/<camera>.mp4`` per camera, and the cameras' calibration as ``root/rig.yaml`` (``mvic.shared.rig``).
    Returns the paths written. Files appear whole (written, then renamed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scene = Scene(config)
    written: list[str] = [str(write_atomic(root / "rig.yaml", rig_to_yaml(scene.rig()).encode()))]
    writers = {}
    try:
        for f in range(frames):
            views = scene.render(f)
            for cam, view in zip(scene.cameras, views):
                bgr = cv2.cvtColor(view, cv2.COLOR_RGB2BGR)
                if video:
                    if cam.name not in writers:
                        path = root / f"{cam.name}.mp4"
                        writers[cam.name] = (cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), config.fps,
                                                             (config.width, config.height)), path)
                        if not writers[cam.name][0].isOpened():
                            raise OSError(f"OpenCV cannot write {path}; write PNG frames instead (no --video)")
                    writers[cam.name][0].write(bgr)
                else:
                    ok, png = cv2.imencode(".png", bgr)
                    written.append(str(write_atomic(root / cam.name / f"{f:06d}.png", png.tobytes())))
    finally:
        for writer, path in writers.values():
            writer.release()
            written.append(str(path))
    return written


def main(argv: list[str] | None = None) -> int:
    """``mvic-scene``: write a synthetic multi-camera scene as image groups or videos."""
    p = argparse.ArgumentParser(prog="mvic-scene", description=main.__doc__)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=10, help="timestamps to render (default %(default)s)")
    p.add_argument("--cameras", type=int, default=7, help="number of cameras K (default %(default)s)")
    p.add_argument("--size", default="270x480", help="HxW per view (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="scene seed; same seed, same scene")
    p.add_argument("--objects", type=int, default=6, help="moving boxes (default %(default)s)")
    p.add_argument("--fps", type=float, default=5.0, help="frame rate of the motion and the videos")
    p.add_argument("--video", action="store_true", help="one .mp4 per camera instead of PNG frames")
    p.add_argument("--textures", default="", metavar="DIR",
                   help="photographs for the building, wall and objects (e.g. corpus/photos from mvic-corpus)")
    args = p.parse_args(argv)
    try:
        h, w = (int(s) for s in args.size.lower().split("x"))
        config = SceneConfig(seed=args.seed, cameras=args.cameras, height=h, width=w, objects=args.objects,
                             fps=args.fps, textures=args.textures)
    except ValueError as exc:
        p.error(f"bad scene settings: {exc}")
    paths = write_scene(config, args.frames, args.output, video=args.video)
    print(f"wrote {len(paths)} files for {args.cameras} cameras x {args.frames} frames to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
