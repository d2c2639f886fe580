"""Classical codecs measured on the same view groups as MVIC: real files, real bytes, decoded pixels.

* ``jpeg`` / ``webp``: OpenCV's encoders, each view alone.
* ``x265-intra-444``: HEVC intra in YUV 4:4:4 (the BPG-class anchor), each view a one-frame stream.
* ``x265-video-444``: the views of a group as consecutive frames of one HEVC stream in YUV 4:4:4 (the paper's
  joint-coding anchor: the encoder sees every view, unlike MVIC's cameras).
* ``av1-intra-444``: libaom AV1 still pictures in 4:4:4 (the AVIF-class anchor), each view alone.
* ``vvc-intra-420``: VVenC H.266 intra, each view alone; VVenC has no 4:4:4, so 4:2:0 10-bit (odd sides edge-padded).
* ``jpegxl``: libjxl lossy, each view a .jxl file.

The ffmpeg ones run the binary shipped in the imageio-ffmpeg wheel; nothing is installed system-wide. A baseline
whose encoder that binary lacks raises ``BaselineUnavailable``; ``unavailable(name)`` says so up front, and mvic-eval
reports it and goes on. Byte counts are whole streams (sequence headers / file headers included); RGB <-> YUV
conversions are ffmpeg's defaults (BT.601), the same on both sides.
"""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from typing import Callable

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


class BaselineUnavailable(RuntimeError):
    """The encoder a baseline needs is not in this installation; mvic-eval reports it and goes on."""


def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise BaselineUnavailable("ffmpeg baselines need the imageio-ffmpeg package: "
                                  "pip install imageio-ffmpeg") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_encoders() -> frozenset[str]:
    """Names of the video encoders the imageio-ffmpeg binary was built with (``ffmpeg -encoders``)."""
    out = subprocess.run([_ffmpeg(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=False).stdout
    return frozenset(line.split()[1] for line in out.splitlines() if line.startswith(" V") and len(line.split()) > 1)


def _require(encoder: str) -> None:
    if encoder not in ffmpeg_encoders():
        raise BaselineUnavailable(f"this ffmpeg ({_ffmpeg()}) has no {encoder} encoder; "
                                  "install an imageio-ffmpeg release built with it")


def _run(cmd: list[str], data: bytes, what: str) -> bytes:
    proc = subprocess.run([_ffmpeg(), "-hide_banner", "-loglevel", "error", *cmd], input=data, capture_output=True,
                          check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"{what} failed: {proc.stderr.decode(errors='replace')[-400:]}")
    return proc.stdout


def _roundtrip(frames: list[np.ndarray], codec: list[str], pix_fmt: str, mux: str, demux: str,
               even: bool = False) -> tuple[bytes, list[np.ndarray]]:
    """Frames (H, W, 3) RGB -> one ffmpeg stream -> decoded RGB frames. ``even``: edge-pad to even sides first
    (4:2:0 encoders refuse odd sizes; the padding is coded and counted, then cropped off)."""
    h, w = frames[0].shape[:2]
    ph, pw = (h + h % 2, w + w % 2) if even else (h, w)
    raw = b"".join(np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge").tobytes() for f in frames)
    stream = _run(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{pw}x{ph}", "-r", "1", "-i", "-", *codec,
                   "-pix_fmt", pix_fmt, "-f", mux, "-"], raw, f"{codec[1]} encoding")
    dec = np.frombuffer(_run(["-f", demux, "-i", "-", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], stream,
                             f"{demux} decoding"), np.uint8)
    if dec.size != len(frames) * ph * pw * 3:
        raise RuntimeError(f"{demux} decoder returned {dec.size} bytes for {len(frames)} frames of {pw}x{ph}")
    return stream, [f[:h, :w] for f in dec.reshape(len(frames), ph, pw, 3)]


def _x265(frames: list[np.ndarray], crf: float, intra: bool) -> tuple[bytes, list[np.ndarray]]:
    n = len(frames)
    params = "log-level=error" + (":keyint=1" if intra else f":keyint={n}:min-keyint={n}")
    codec = ["-c:v", "libx265", "-preset", "medium", "-crf", str(crf), "-x265-params", params]
    return _roundtrip(frames, codec, "yuv444p", "hevc", "hevc")


def _per_view(name: str, setting: float, views: list[np.ndarray],
              code_one: Callable[[np.ndarray], tuple[bytes, list[np.ndarray]]]) -> Coded:
    total, decoded = 0, []
    for v in views:
        stream, frames = code_one(v)
        total += len(stream)
        decoded += frames
    return Coded(name, setting, total, decoded)


def x265_intra(views: list[np.ndarray], crf: float) -> Coded:
    _require("libx265")
    return _per_view("x265-intra-444", crf, views, lambda v: _x265([v], crf, intra=True))


def x265_video(views: list[np.ndarray], crf: float) -> Coded:
    _require("libx265")
    if len({v.shape for v in views}) != 1:
        raise ValueError("x265 as video needs views of one size")
    stream, frames = _x265(views, crf, intra=False)
    return Coded("x265-video-444", crf, len(stream), frames)


def av1_intra(views: list[np.ndarray], crf: float) -> Coded:
    """libaom AV1 still pictures in 4:4:4 (profile 1, AVIF-class), all-intra tuning at speed 6, raw OBU stream."""
    _require("libaom-av1")
    codec = ["-c:v", "libaom-av1", "-usage", "allintra", "-cpu-used", "6", "-still-picture", "1", "-crf", str(crf)]
    return _per_view("av1-intra-444", crf, views, lambda v: _roundtrip([v], codec, "yuv444p", "obu", "obu"))


def vvc_intra(views: list[np.ndarray], qp: float) -> Coded:
    """VVenC H.266 intra at its fastest preset, no perceptual QP adaptation; VVenC codes 4:2:0 10-bit only (Main 10),
    raw VVC stream."""
    _require("libvvenc")
    codec = ["-c:v", "libvvenc", "-preset", "0", "-qp", str(qp), "-qpa", "0"]  # qpa off: tuned for PSNR
    return _per_view("vvc-intra-420", qp, views,
                     lambda v: _roundtrip([v], codec, "yuv420p10le", "vvc", "vvc", even=True))


def jpegxl(views: list[np.ndarray], distance: float) -> Coded:
    """libjxl lossy (VarDCT, XYB from RGB) at effort 7, the .jxl file; ``distance`` is Butteraugli (lower = better)."""
    _require("libjxl")
    codec = ["-c:v", "libjxl", "-distance", str(distance), "-effort", "7"]
    return _per_view("jpegxl", distance, views, lambda v: _roundtrip([v], codec, "rgb24", "image2pipe", "jpegxl_pipe"))


@dataclass(frozen=True)
class Baseline:
    """A registered baseline: how to code a group at one setting, and the sweep, lowest quality first."""

    code: Callable[[list[np.ndarray], float], Coded]
    settings: tuple[float, ...]
    encoder: str = ""  # the ffmpeg encoder it needs; "" for OpenCV


# Sweeps measured on the Middlebury motorcycle (741x500): AV1 1.2..0.1 bpp, VVC 1.8..0.05, x265 1.9..0.27.
# JPEG XL stops near 0.3 bpp (libjxl's largest distance is 15); JPEG/WebP cannot go much below 0.2.
BASELINES: dict[str, Baseline] = {
    "jpeg": Baseline(jpeg, (10, 25, 45, 65, 85)),
    "webp": Baseline(webp, (10, 25, 45, 65, 85)),
    "x265-intra-444": Baseline(x265_intra, (51, 46, 42, 37, 32, 27, 22), "libx265"),
    "x265-video-444": Baseline(x265_video, (51, 46, 42, 37, 32, 27, 22), "libx265"),
    "av1-intra-444": Baseline(av1_intra, (60, 52, 44, 34, 24), "libaom-av1"),
    "vvc-intra-420": Baseline(vvc_intra, (52, 46, 40, 34, 28, 22), "libvvenc"),
    "jpegxl": Baseline(jpegxl, (15, 7, 4, 2.5, 1.5), "libjxl"),
}


def unavailable(name: str) -> str | None:
    """Why baseline ``name`` cannot run here, or None when it can."""
    encoder = BASELINES[name].encoder
    if not encoder:
        return None
    try:
        _require(encoder)
    except BaselineUnavailable as e:
        return str(e)
    return None


psnr = images.psnr  # one definition for the codec tools and the baselines
