"""Bjøntegaard delta rate and delta quality with piecewise cubic (PCHIP) interpolation.

BD-rate: the average bitrate difference of a test curve against an anchor at equal quality, over the quality range
both curves cover: log-rate is interpolated as a function of quality with PCHIP (monotone piecewise cubic, the
interpolation of the common VCEG/JVET spreadsheets' piecewise-cubic variant), integrated over the overlap, and
exp(mean difference) - 1 is returned as a percentage. Negative means the test codec needs fewer bits.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator


def _curve(rate, quality):
    rate, quality = np.asarray(rate, float), np.asarray(quality, float)
    if rate.shape != quality.shape or rate.size < 2:
        raise ValueError("a rate-quality curve needs at least two (rate, quality) points of equal count")
    if (rate <= 0).any():
        raise ValueError("rates must be positive")
    order = np.argsort(quality)
    q, r = quality[order], np.log(rate[order])
    if np.any(np.diff(q) <= 0):
        raise ValueError("quality values must be distinct")
    return q, r


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality) -> float:
    """Percent bitrate change of the test curve vs the anchor at equal quality (PCHIP in log-rate)."""
    qa, ra = _curve(anchor_rate, anchor_quality)
    qt, rt = _curve(test_rate, test_quality)
    lo, hi = max(qa[0], qt[0]), min(qa[-1], qt[-1])
    if lo >= hi:
        raise ValueError(f"the curves do not overlap in quality ({qa[0]:.2f}..{qa[-1]:.2f} vs {qt[0]:.2f}..{qt[-1]:.2f})")
    ia = PchipInterpolator(qa, ra).integrate(lo, hi)
    it = PchipInterpolator(qt, rt).integrate(lo, hi)
    return float((np.exp((it - ia) / (hi - lo)) - 1) * 100)


def bd_quality(anchor_rate, anchor_quality, test_rate, test_quality) -> float:
    """Average quality difference (e.g. dB) of the test curve vs the anchor at equal log-rate."""
    _curve(anchor_rate, anchor_quality)  # validation only
    _curve(test_rate, test_quality)
    la, lt = np.log(anchor_rate), np.log(test_rate)
    oa, ot = np.argsort(la), np.argsort(lt)
    xa, ya = la[oa], np.asarray(anchor_quality, float)[oa]
    xt, yt = lt[ot], np.asarray(test_quality, float)[ot]
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if lo >= hi:
        raise ValueError("the curves do not overlap in rate")
    return float((PchipInterpolator(xt, yt).integrate(lo, hi) - PchipInterpolator(xa, ya).integrate(lo, hi))
                 / (hi - lo))
