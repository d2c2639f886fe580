"""RGB uint8 images <-> padded float tensors, with clear errors for what the codec cannot take."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mvic.shared.bitstream import MAX_SIDE, padding_for
from mvic.shared.errors import ImageError


def read_rgb(path: str | Path, advice: str = "") -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB; OSError naming the file (and ``advice``) when it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"cannot read image {path}{'; ' + advice if advice else ''}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array (H, W, 3) of uint8, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an RGB image of shape (H, W, 3), got {image.shape}; convert grey or RGBA first")
    if image.dtype != np.uint8:
        raise ImageError(f"expected uint8 pixels, got {image.dtype}; scale to 0..255 and cast to uint8")
    h, w = image.shape[:2]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ImageError(f"image size {h}x{w} is outside 1..{MAX_SIDE} per side; resize or tile it")


def to_padded_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H + pad_bottom, W + pad_right) float in [0, 1], edges replicated."""
    check_image(image)
    h, w = image.shape[:2]
    pad_b, pad_r = padding_for(h, w)
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)
    x = x.unsqueeze(0)  # (1, 3, H, W)
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b), mode="replicate")
    return x


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (inf when equal)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def to_pixels(x: Tensor) -> np.ndarray:
    """(..., 3, Hp, Wp) float in [0, 1] -> (..., Hp, Wp, 3) uint8 on the host, rounded as the metrics expect.

    Converted where x lives, then copied to the host once (a whole batch of views in one transfer).
    """
    x = x.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(Hp, Wp, 3) -> (height, width, 3): drop the padding, as an array of its own."""
    return np.ascontiguousarray(pixels[:height, :width])
