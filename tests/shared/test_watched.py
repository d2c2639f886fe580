"""mvic.shared.watched: a file set changes when a file's (mtime, size) does, looked at no more often than asked."""

from __future__ import annotations

import os

from mvic.shared.watched import WatchedFiles


def test_changes_are_seen_at_the_next_look_and_once_taken_are_not_seen_again(tmp_path):
    now = [0.0]
    a, b = tmp_path / "a.pem", tmp_path / "b.pem"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    files = WatchedFiles([str(a), str(b)], interval_s=1.0, clock=lambda: now[0])
    assert files.take() == (b"one", b"two")
    b.write_bytes(b"three")
    os.utime(b, ns=(1, 1))
    assert not files.changed()  # not due yet
    now[0] = 1.5
    assert files.changed()
    assert files.take() == (b"one", b"three")
    now[0] = 3.0
    assert not files.changed()
    b.unlink()  # a missing file is a change too; reading it fails
    now[0] = 4.5
    assert files.changed()
