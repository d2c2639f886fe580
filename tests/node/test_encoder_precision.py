"""encode.precision: the node's choice of arithmetic for the analysis transforms reaches the codec, and is checked."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mvic.node.config import PRECISIONS, ConfigError, load_config
from mvic.node.encoder import EncoderWorker
from mvic.node.handoff import Frame
from mvic.node.metrics import NodeMetrics
from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.transforms import Precision, resolve_precision
from tests.conftest import random_image


class _Spool:
    def __init__(self):
        self.packets: list[bytes] = []

    def next_sequence(self) -> int:
        return len(self.packets) + 1

    def put(self, sequence, capture_ns, data, stop) -> bool:
        self.packets.append(data)
        return True


def test_config_names_are_the_codec_precisions():
    assert PRECISIONS == tuple(p.value for p in Precision)


def test_precision_defaults_to_auto_and_bad_values_name_the_key():
    assert load_config(None, {"camera": "C1"}).encode.precision == "auto"
    assert load_config(None, {"camera": "C1", "encode.precision": "bf16"}).encode.precision == "bf16"
    with pytest.raises(ConfigError, match="^encode.precision: must be one of auto, fp32, bf16"):
        load_config(None, {"camera": "C1", "encode.precision": "fp16"})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_worker_codes_with_the_configured_precision(tiny_weights, monkeypatch, precision):
    model = load_model(tiny_weights["test-tiny-fast"])
    seen = []
    compress = model.compress_view

    def spy(*args, **kwargs):
        seen.append(kwargs["precision"])
        return compress(*args, **kwargs)

    monkeypatch.setattr(model, "compress_view", spy)
    spool = _Spool()
    worker = EncoderWorker(model, None, spool, "C1", 2, NodeMetrics("C1"), threading.Event(), precision=precision)
    image = random_image(np.random.default_rng(0), 48, 64)
    assert worker.encode(Frame(0, 123, image))
    assert seen == [resolve_precision(precision)]
    view = unpack(spool.packets[0])
    assert load_model(tiny_weights["test-tiny-fast"]).decompress([view])[0].image.shape == image.shape
