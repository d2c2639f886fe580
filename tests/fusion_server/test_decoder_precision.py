"""decode.precision and entropy threads in the decode stage (issue 16): the same frames, the same failures."""

from __future__ import annotations

import numpy as np
import pytest

from mvic.fusion_server.config import ConfigError, load_config
from mvic.fusion_server.decoder import GroupDecoder
from mvic.shared.codec.registry import load_model
from mvic.shared.codec.transforms import Precision
from tests.fusion_server.conftest import CAMERAS
from tests.fusion_server.test_decoder_and_sinks import _group


def test_config_takes_a_precision_and_refuses_others(tmp_path):
    assert load_config(None, {"device": "cpu"}).decode.precision == "auto"
    assert load_config(None, {"decode.precision": "bf16"}).decode.precision == "bf16"
    with pytest.raises(ConfigError, match=r"decode\.precision"):
        load_config(None, {"decode.precision": "fp16"})


def test_bf16_and_shared_entropy_threads_decode_every_view(weights, views):
    fp32 = GroupDecoder(load_model(weights))
    fast = GroupDecoder(load_model(weights), precision="bf16", entropy_threads=2)
    assert fp32.synthesis_precision is Precision.FP32 and fast.synthesis_precision is Precision.BF16
    a, b = fp32.decode(_group(views, 0)), fast.decode(_group(views, 0))
    assert [f.source.camera_id for f in b.frames] == CAMERAS and not b.failed
    for x, y in zip(a.frames, b.frames):
        assert x.image.shape == y.image.shape
        assert np.abs(x.image.astype(np.int16) - y.image.astype(np.int16)).mean() < 2  # a tiny random model


def test_a_desynchronised_view_is_still_dropped_alone_with_entropy_threads(weights, views):
    decoder = GroupDecoder(load_model(weights), precision="bf16", entropy_threads=3)
    result = decoder.decode(_group(views, 1, damage="C2"))
    assert [f.source.camera_id for f in result.frames] == ["C1", "C3"]
    ((view, _),) = result.failed
    assert view.camera_id == "C2"
