"""Files that appear whole or not at all: write to ``name.part`` beside the target, then rename.

With ``durable=True`` the data and the rename are also flushed to the disk (fsync of the file, then of its
folder), so the file survives a power loss once the call returns: the fusion server acknowledges a frame only
after such a write, and the node's spool (``mvic.node.spool``) stores every packet and its state.json this way
before the packet may be sent. This is the one atomic writer; nothing else in MVIC calls fsync. A failed write (a full disk, say) removes its partial file and raises the OSError with the
path in its message; the target keeps its previous content, if any.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(text: str) -> str:
    """A file-system-safe file or folder name for client-supplied text (camera ids follow ``mvic.shared.ids``:
    printable UTF-8, not necessarily path-safe): other characters become ``_``; a leading dot or an empty result gets
    a ``_`` prefix. The server's output folders and the node's spool folders are named with it."""
    safe = _UNSAFE.sub("_", text)
    return "_" + safe if safe.startswith(".") or not safe else safe


def write_atomic(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions "
                                 "and retry (nothing was lost: the previous content, if any, is intact)") from exc
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path
