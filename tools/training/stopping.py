"""A training run stopped by a signal finishes its step, checkpoints and returns, instead of losing the work since
its last checkpoint (``scripts/campaign.sh stop``, a session's end, ``timeout``, Ctrl-C).

    with StopSignals() as stop:
        while ... and not stop.requested:
            ...

The first SIGTERM or SIGINT sets ``requested``; a second one raises KeyboardInterrupt at once (a stuck step can still
be interrupted). Handlers are installed only in the main thread (Python allows no other) and restored on exit.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint (again: at once)",
              file=sys.stderr)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
