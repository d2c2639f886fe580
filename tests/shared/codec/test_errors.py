"""Bad input gets a named error that says what to do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import ViewBitstream, pack, unpack
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import default_weights, export_weights, load_model
from mvic.shared.errors import (
    BitstreamError,
    ConfigError,
    CorruptBitstreamError,
    DesyncError,
    GroupError,
    ImageError,
    ModelMismatchError,
    WeightsError,
)
from mvic.shared.model_table import spec_by_name
from tests.conftest import make_tiny_model, random_image


@pytest.fixture
def fast(tiny_weights):
    return load_model(tiny_weights["test-tiny-fast"])


def _view(model, seed=0, **header):
    v = model.compress_view(random_image(np.random.default_rng(seed), 64, 64), 2, camera_id="C3", sequence=9)
    return ViewBitstream(dataclasses.replace(v.header, **header), v.streams) if header else v


def test_desync_is_detected_not_decoded(fast):
    good = _view(fast, 1)
    bad = _view(fast, 2, symbol_crc=_view(fast, 2).header.symbol_crc ^ 1)
    with pytest.raises(DesyncError, match="C3#9") as info:
        fast.decompress([good, unpack(pack(bad))])
    assert info.value.failed == [1]
    assert fast.decompress([good])[0].image.shape == (64, 64, 3)  # the others still decode


def test_weights_that_differ_by_one_value_desync_or_refuse(tiny_weights, tmp_path):
    enc = load_model(tiny_weights["test-tiny-fast"])
    other = make_tiny_model("test-tiny-fast")
    with torch.no_grad():
        other.context.entropy_parameters[-1].bias[0] += 0.5  # decoder-side parameter drift
    export_weights(other, tmp_path / "drift.safetensors")
    dec = load_model(tmp_path / "drift.safetensors")
    view = _view(enc, 3)
    with pytest.raises(ModelMismatchError, match="same weights"):
        dec.decompress([view])
    dec.weights_hash = enc.weights_hash  # pretend the hashes collide: the symbol CRC still catches it
    with pytest.raises(DesyncError):
        dec.decompress([view])


def test_wrong_model_is_refused(tiny_weights, fast):
    ar = load_model(tiny_weights["test-tiny-ar"])
    with pytest.raises(ModelMismatchError, match="--model test-tiny-fast"):
        ar.decompress([_view(fast)])
    with pytest.raises(ModelMismatchError, match="upgrade MVIC"):
        fast.decompress([_view(fast, model_id=0x7777)])


def test_rate_out_of_range(fast):
    with pytest.raises(CorruptBitstreamError, match="rate point"):
        fast.decompress([_view(fast, rate_index=17)])
    with pytest.raises(ValueError, match="rate index"):
        fast.compress_view(random_image(np.random.default_rng(0), 64, 64), 5)


def test_truncated_stream_inside_a_valid_packet(fast):
    v = _view(fast)
    with pytest.raises((CorruptBitstreamError, DesyncError)):
        fast.decompress([ViewBitstream(v.header, (v.streams[0][:-4],))])


@pytest.mark.parametrize("image,match", [
    (np.zeros((64, 64), np.uint8), "RGB"),
    (np.zeros((64, 64, 4), np.uint8), "RGB"),
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((0, 64, 3), np.uint8), "size"),
    ([[0]], "numpy"),
])
def test_bad_images(fast, image, match):
    with pytest.raises(ImageError, match=match):
        fast.compress_view(image, 0)


def test_empty_group(fast):
    with pytest.raises(GroupError):
        fast.decompress([])


def test_model_without_identity_cannot_encode():
    with pytest.raises(WeightsError, match="load it with"):
        LDMIC(spec_by_name("test-tiny-fast")).compress_view(np.zeros((64, 64, 3), np.uint8), 0)


def test_a_damaged_stream_says_it_may_be_damaged(fast):
    view = _view(fast)
    stream = bytearray(view.streams[0])
    for i in range(4, len(stream), 7):
        stream[i] ^= 0x5A
    with pytest.raises(DesyncError, match="damaged"):  # caught by the rANS decoder or by the symbol CRC
        fast.decompress([ViewBitstream(view.header, (bytes(stream),))])
    crc_off = ViewBitstream(dataclasses.replace(view.header, symbol_crc=view.header.symbol_crc ^ 1), view.streams)
    with pytest.raises(DesyncError) as err:  # decodes, but not to the symbols the encoder coded
        fast.decompress([crc_off])
    message = str(err.value)
    assert "C3#9" in message and "damaged" in message and "re-encode" in message
    assert "the weights file the views were encoded with" in message and "drop these and decode the rest" in message


def test_an_unknown_model_name_is_a_configuration_error(tiny_weights):
    with pytest.raises(ConfigError, match="unknown model 'ldmic-huge'; choose one of: ldmic-fast, "):
        spec_by_name("ldmic-huge")
    with pytest.raises(ConfigError, match="unknown model 'ldmic-huge'"):
        default_weights("ldmic-huge")
    with pytest.raises(ConfigError, match="unknown model 'ldmic-huge'"):
        load_model(tiny_weights["test-tiny-fast"], model="ldmic-huge")
    assert not issubclass(ConfigError, BitstreamError)
