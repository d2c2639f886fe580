"""Helpers for tests of files a process re-reads when they change (``mvic.shared.watched``)."""

from __future__ import annotations

import os
import time


def rewrite(path, text: str, wait_s: float = 0.0) -> None:
    """Write ``text`` and move the file's mtime a second on, so the change is seen whatever the clock's grain; then
    wait ``wait_s`` (past a real reload interval)."""
    with open(path, "w") as f:
        f.write(text)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    time.sleep(wait_s)
