"""Classical codecs measured on the same view groups as MVIC: real files, real bytes, decoded pixels.

* ``jpeg`` / ``webp``: OpenCV's encoders, each view alone.
* ``x265_intra``: HEVC intra in YUV 4:4:4 (the BPG-class anchor), each view a one-frame stream.
* ``x265_video``: the views of a group as consecutive frames of one HEVC stream in YUV 4:4:4 (the paper's
  joint-coding anchor: the encoder sees every view, unlike MVIC's cameras).
ffmpeg is the binary shipped in the imageio-ffmpeg wheel (libx265 included); nothing is installed system-wide.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import cv2
import numpy as np

from mvic.shared.codec import images


@dataclass(frozen=True)
class Coded:
    """One group coded by a classical codec at one setting."""

    codec: str
    setting: float  # quality (JPEG/WebP) or CRF (x265)
    num_bytes: int  # total for all views, container/headers included
    images: list[np.ndarray]  # decoded views, (H, W, 3) uint8 RGB


def _cv2_codec(name: str, ext: str, flag: int, views: list[np.ndarray], quality: int) -> Coded:
    total, decoded = 0, []
    for v in views:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(v, cv2.COLOR_RGB2BGR), [flag, int(quality)])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {name}")
        total += len(buf)
        decoded.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return Coded(name, quality, total, decoded)


def jpeg(views: list[np.ndarray], quality: int) -> Coded:
    return _cv2_codec("jpeg", ".jpg", cv2.IMWRITE_JPEG_QUALITY, views, quality)


def webp(views: list[np.ndarray], quality: int) -> Coded:
    return _cv2_codec("webp", ".webp", cv2.IMWRITE_WEBP_QUALITY, views, quality)


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("x265 baselines need the imageio-ffmpeg package: pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def _x265(frames: list[np.ndarray], crf: float, intra: bool) -> tuple[bytes, list[np.ndarray]]:
    h, w = frames[0].shape[:2]
    params = "log-level=error" + (":keyint=1" if intra else f":keyint={len(frames)}:min-keyint={len(frames)}")
    enc = subprocess.run(
        [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
         "-r", "1", "-i", "-", "-c:v", "libx265", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv444p",
         "-x265-params", params, "-f", "hevc", "-"],
        input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), capture_output=True, check=False)
    if enc.returncode != 0:
        raise RuntimeError(f"x265 encoding failed: {enc.stderr.decode(errors='replace')[-400:]}")
    dec = subprocess.run(
        [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", "hevc", "-i", "-", "-f", "rawvideo", "-pix_fmt",
         "rgb24", "-"], input=enc.stdout, capture_output=True, check=False)
    if dec.returncode != 0:
        raise RuntimeError(f"HEVC decoding failed: {dec.stderr.decode(errors='replace')[-400:]}")
    raw = np.frombuffer(dec.stdout, np.uint8)
    if raw.size != len(frames) * h * w * 3:
        raise RuntimeError(f"HEVC decoder returned {raw.size} bytes for {len(frames)} frames of {w}x{h}")
    return enc.stdout, list(raw.reshape(len(frames), h, w, 3))


def x265_intra(views: list[np.ndarray], crf: float) -> Coded:
    total, decoded = 0, []
    for v in views:
        stream, frames = _x265([v], crf, intra=True)
        total += len(stream)
        decoded += frames
    return Coded("x265-intra-444", crf, total, decoded)


def x265_video(views: list[np.ndarray], crf: float) -> Coded:
    if len({v.shape for v in views}) != 1:
        raise ValueError("x265 as video needs views of one size")
    stream, frames = _x265(views, crf, intra=False)
    return Coded("x265-video-444", crf, len(stream), frames)


psnr = images.psnr  # one definition for the codec tools and the baselines
