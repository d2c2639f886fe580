"""Large temporary buffers straight from the OS, so a long-running coder's resident memory stays flat.

glibc serves an allocation above its mmap threshold with its own mapping and unmaps it on free, but it raises that
threshold (up to 32 MiB) each time such a buffer is freed; from then on the tens-of-MiB activations of every frame
come from the heap, whose freed pages stay resident. A camera encoding 1080p frames measured ~1060 MiB peak that
way and ~915 MiB with the threshold pinned (benchmarks/node_memory.py). Pinning it (``mallopt(M_MMAP_THRESHOLD)``)
turns the adjustment off. Elsewhere (musl, macOS) this does nothing; a ``MALLOC_MMAP_THRESHOLD_`` set in the
environment wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
DEFAULT_THRESHOLD = 256 << 10


def pin_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold at ``threshold`` bytes (4 KiB..32 MiB); True when it was set here."""
    if not 4096 <= threshold <= 32 << 20:
        raise ValueError(f"mmap threshold {threshold} bytes is outside 4 KiB..32 MiB")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
    log.debug("glibc mmap threshold pinned at %d bytes: %s", threshold, done)
    return done
