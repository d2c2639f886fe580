"""The one model/weights compatibility rule: who may decode what, and what the refusal says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mvic.shared.codec.compat import CodecIdentity, check_compatible, incompatibility
from mvic.shared.codec.registry import load_model
from mvic.shared.errors import ModelMismatchError
from tests.conftest import random_image

FAST = CodecIdentity(0xF001, bytes.fromhex("0011223344556677"))
AR = CodecIdentity(0xF002, bytes.fromhex("8899aabbccddeeff"))


def _why(coded, local=FAST):
    return incompatibility(coded, local, coded_by="camera C4", decoded_by="this server")


def test_the_same_identity_is_compatible():
    assert _why(CodecIdentity(0xF001, bytes.fromhex("0011223344556677"))) is None
    check_compatible(FAST, FAST, coded_by="view C1#1", decoded_by="this decoder")  # returns quietly


def test_other_weights_name_both_hashes_and_the_fix():
    why = _why(dataclasses.replace(FAST, weights_hash=bytes(8)))
    assert why.startswith("camera C4 was coded with model 'test-tiny-fast' (id 0xf001), weights 0000000000000000, "
                          "but this server holds model 'test-tiny-fast' (id 0xf001), weights 0011223344556677")
    assert "load the same weights file on both ends" in why
    assert "this server's weights have sha256 prefix 0011223344556677" in why


def test_another_model_names_both_models_and_both_flags():
    why = _why(AR)
    assert "coded with model 'test-tiny-ar' (id 0xf002), weights 8899aabbccddeeff" in why
    assert "holds model 'test-tiny-fast'" in why
    assert "--model test-tiny-ar" in why and "--model test-tiny-fast" in why


def test_an_unknown_model_id_asks_for_an_upgrade_where_it_is_decoded():
    why = _why(CodecIdentity(0x7777, bytes(8)))
    assert "unknown model id 0x7777" in why and "upgrade MVIC on this server" in why


def test_check_compatible_raises_the_same_message():
    with pytest.raises(ModelMismatchError) as err:
        check_compatible(AR, FAST, coded_by="camera C4", decoded_by="this server")
    assert str(err.value) == _why(AR)


def test_a_model_writes_its_identity_and_refuses_another(tiny_weights):
    fast = load_model(tiny_weights["test-tiny-fast"])
    ar = load_model(tiny_weights["test-tiny-ar"])
    view = fast.compress_view(random_image(np.random.default_rng(0), 64, 64), 1, camera_id="C2", sequence=4)
    assert CodecIdentity.of(view.header) == fast.identity != ar.identity
    fast.check_header(view.header)
    with pytest.raises(ModelMismatchError) as err:
        ar.check_header(view.header, decoded_by="this server")
    assert str(err.value) == incompatibility(fast.identity, ar.identity, coded_by="view C2#4",
                                             decoded_by="this server")
