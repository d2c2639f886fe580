"""Fixtures for the fusion server tests: the tiny fast model (CPU) and views coded with it."""

from __future__ import annotations

import pytest

from mvic.shared.codec.registry import load_model
from tests.fusion_server.harness import coded_views

CAMERAS = ["C1", "C2", "C3"]


@pytest.fixture(scope="session")
def weights(tiny_weights):
    return tiny_weights["test-tiny-fast"]


@pytest.fixture(scope="session")
def encoder(weights):
    return load_model(weights)


@pytest.fixture(scope="session")
def views(encoder):
    """6 frames of 3 cameras, 64x96."""
    return coded_views(encoder, CAMERAS, 6)
