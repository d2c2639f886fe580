"""Files that appear whole or not at all: write to ``name.part`` beside the target, then rename.

``name.part`` is created exclusively: when it exists, another writer of the same name is at work (two fusion servers
of a cluster writing one frame during a group move, over a shared output store) or one died mid-write, and this
write goes to ``name.<random>.part`` instead, so that each renames its own whole file (the last one stays); it then
removes a ``name.part`` older than itself, the leftover of a dead writer.

With ``durable=True`` the data and the rename are also flushed to the disk (fsync of the file, then of its
folder), so the file survives a power loss once the call returns: the fusion server acknowledges a frame only
after such a write, and the node's spool (``mvic.node.spool``) stores every packet and its state.json this way
before the packet may be sent. This is the one atomic writer; nothing else in MVIC calls fsync. A failed write (a full disk, say) removes its partial file and raises the OSError with the
path in its message; the target keeps its previous content, if any.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from contextlib import suppress
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
    tmp = shared = path.with_name(path.name + ".part")
    started_ns = time.time_ns()
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # another writer of this name, or a dead one's leftover
            tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions "
                                 "and retry (nothing was lost: the previous content, if any, is intact)") from exc
    if tmp != shared:
        with suppress(OSError):  # a writer still at work on it loses its rename, and retries
            if shared.stat().st_mtime_ns < started_ns:
                shared.unlink()
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path
