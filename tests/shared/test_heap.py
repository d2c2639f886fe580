"""glibc's mmap threshold: pinned where glibc is, left to the environment when it names one."""

from __future__ import annotations

import platform

import pytest

from mvic.shared import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_pinned_on_glibc(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert heap.pin_mmap_threshold() is True


def test_the_environments_threshold_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert heap.pin_mmap_threshold() is False


@pytest.mark.parametrize("threshold", [0, 64 << 20])
def test_a_threshold_glibc_would_not_keep_is_refused(threshold):
    with pytest.raises(ValueError, match="outside 4 KiB..32 MiB"):
        heap.pin_mmap_threshold(threshold)
