"""Atomic (and durable) file writes: whole or absent, and a failed write leaves no partial file behind."""

from __future__ import annotations

import pytest

from mvic.shared.fileio import write_atomic


def test_write_is_whole_and_durable_write_works(tmp_path):
    target = write_atomic(tmp_path / "a" / "f.bin", b"one", durable=True)
    assert target.read_bytes() == b"one" and not (tmp_path / "a" / "f.bin.part").exists()
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"


def test_failed_write_keeps_old_content_and_says_what_to_do(tmp_path, monkeypatch):
    target = write_atomic(tmp_path / "f.bin", b"old")

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pathlib.Path.replace", full_disk)
    with pytest.raises(OSError, match="free space"):
        write_atomic(target, b"new", durable=True)
    assert target.read_bytes() == b"old" and not (tmp_path / "f.bin.part").exists()


def test_one_atomic_writer():
    """The node's spool and the server's sinks and ack journal write through write_atomic; nobody else fsyncs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for folder in ("node", "fusion_server", "shared"):
        for path in (root / folder).rglob("*.py"):
            if path.name != "fileio.py":
                assert "fsync(" not in path.read_text(), f"{path} writes files durably on its own"
    assert "write_atomic(" in (root / "node" / "spool.py").read_text()
