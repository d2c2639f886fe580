"""Sample multi-view images that need no download: the Middlebury 'motorcycle' stereo pair bundled with
scikit-image (real photographs of one scene from two cameras), downscaled so a CPU round trip takes seconds.
Built on demand, never committed. The demo's default data is the synthetic scene (mvic.shared.scene); this real
pair serves the determinism tests and ``mvic-codec demo --source stereo``.
"""

from __future__ import annotations

import cv2
import numpy as np


def stereo_pair(scale: float = 0.5) -> list[tuple[str, np.ndarray]]:
    """[(camera id, (H, W, 3) uint8 RGB)] for the two views; sizes are deliberately not multiples of 64."""
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    views = []
    for name, img in (("left", left), ("right", right)):
        h, w = img.shape[:2]
        small = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        views.append((name, np.ascontiguousarray(small, dtype=np.uint8)))
    return views
