"""Fixtures of the end-to-end tests: a Cluster of real processes, killed in the finalizer even when a test fails."""

from __future__ import annotations

import pytest

from tests.e2e.harness import MODEL, Cluster


@pytest.fixture
def cluster(tmp_path, tiny_weights):
    c = Cluster(tmp_path, tiny_weights[MODEL])
    yield c
    c.close()
