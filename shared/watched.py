"""Files that a running process re-reads when they change: TLS certificates, keys, CA bundles, revocation lists.

One rule for the node and the server: a file set has changed when the (mtime_ns, size) of one of its files differs
from the last time it was read, looked at no more often than every ``interval_s`` (``stat`` only; the files are read
again only when they changed). Rotation tools replace files by renaming a new one over the old, which changes both.

Pure ``os`` calls; no gRPC and no cryptography.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: Default seconds between two looks at a watched file set.
DEFAULT_INTERVAL_S = 2.0

Fingerprint = tuple[tuple[int, int] | None, ...]


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """(mtime_ns, size) of each file, None for one that cannot be stat'ed."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


def read_all(paths: Sequence[str]) -> tuple[bytes, ...]:
    """The bytes of each file (OSError names the first that cannot be read)."""
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return tuple(out)


class WatchedFiles:
    """A file set and the fingerprint it had when last taken. ``changed()`` is cheap and rate-limited."""

    def __init__(self, paths: Sequence[str], interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.paths = tuple(paths)
        self.interval_s = interval_s
        self._clock = clock
        self._taken: Fingerprint = fingerprint(self.paths)
        self._looked_at = clock()

    def changed(self) -> bool:
        """True when, at a look due now, the files differ from the ones last taken (``take`` marks them taken)."""
        now = self._clock()
        if now - self._looked_at < self.interval_s:
            return False
        self._looked_at = now
        return fingerprint(self.paths) != self._taken

    def take(self) -> tuple[bytes, ...]:
        """Read the files and remember their fingerprint (also when reading fails: a bad file is not re-read until
        it changes again). OSError when one cannot be read."""
        self._taken = fingerprint(self.paths)
        return read_all(self.paths)


class WatchedTable(Generic[T]):
    """One file parsed into a value (a revocation list, a token table), parsed again when it changes.

    ``path`` "" means not configured: ``enabled`` is False and ``current()`` is ``empty``. At start a file that cannot
    be read or parsed raises (OSError, ValueError); later, such a file keeps the last good value and logs an ERROR
    ("cannot re-read <what> <path> (<why>); keeping <kept>") on ``log``, the caller's logger."""

    def __init__(self, path: str, parse: Callable[[bytes], T], empty: T, *, what: str, kept: str,
                 log: logging.Logger, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path, self._parse, self._what, self._kept, self._log = path, parse, what, kept, log
        self._watch = WatchedFiles([path], interval_s, clock) if path else None
        self._value = parse(self._watch.take()[0]) if self._watch is not None else empty

    @property
    def enabled(self) -> bool:
        return self._watch is not None

    def current(self) -> T:
        """The value, parsed again first when a look is due and the file changed."""
        if self._watch is not None and self._watch.changed():
            try:
                self._value = self._parse(self._watch.take()[0])
            except (OSError, ValueError) as exc:
                self._log.error("cannot re-read %s %s (%s); keeping %s", self._what, self.path,
                                getattr(exc, "strerror", None) or exc, self._kept)
        return self._value
