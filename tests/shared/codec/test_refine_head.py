"""The decoder-only refinement head (ldmic-fast-lite-r): the cameras' bitstream is the head-less weights', the head
starts adding nothing, and once trained it changes the pictures alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import export_weights, load_model
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.train import init_weights
from tests.conftest import make_tiny_model, random_image


def _coded(model: LDMIC, seed: int = 5, count: int = 3):
    rng = np.random.default_rng(seed)
    return [unpack(pack(model.compress_view(random_image(rng, 72, 104), i % model.spec.num_rates,
                                            camera_id=f"C{i + 1}"))) for i in range(count)]


@pytest.fixture
def pair(tmp_path) -> tuple[LDMIC, LDMIC]:
    """(head-less weights, the same weights with a zero head), both loaded from their exported files."""
    export_weights(make_tiny_model("test-tiny-fast", seed=7), tmp_path / "fast.safetensors")
    headed = LDMIC(spec_by_name("test-tiny-fast-r"))
    init_weights(headed, tmp_path / "fast.safetensors")
    export_weights(headed, tmp_path / "fast-r.safetensors")
    return load_model(tmp_path / "fast.safetensors"), load_model(tmp_path / "fast-r.safetensors")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_zero_head_codes_and_decodes_exactly_as_the_weights_it_started_from(pair, precision):
    plain, headed = pair
    assert headed.spec.model_id != plain.spec.model_id and headed.refine_head is not None
    a, b = _coded(plain), _coded(headed)
    assert [v.streams for v in a] == [v.streams for v in b]  # the cameras' bits do not depend on the head
    for x, y in zip(plain.decompress(a, precision=precision), headed.decompress(b, precision=precision)):
        assert np.array_equal(x.image, y.image)


def test_a_trained_head_moves_the_pictures_and_nothing_else(pair, tmp_path):
    plain, headed = pair
    with torch.no_grad():
        last = headed.refine_head.layers[-2]
        last.weight.normal_(0, 0.01)  # a correction of a few grey levels, as trained heads make
        last.bias.fill_(0.01)
    export_weights(headed, tmp_path / "trained.safetensors")
    trained = load_model(tmp_path / "trained.safetensors")  # strict: the head's tensors travel with the weights
    views = _coded(trained)
    assert [v.streams for v in views] == [v.streams for v in _coded(plain)]
    for precision in ("fp32", "bf16"):
        moved = trained.decompress(views, precision=precision)
        kept = plain.decompress(_coded(plain), precision=precision)
        assert any(not np.array_equal(x.image, y.image) for x, y in zip(moved, kept))
    fp32, bf16 = trained.decompress(views, precision="fp32"), trained.decompress(views, precision="bf16")
    before = plain.decompress(_coded(plain), precision="fp32")
    for x, y, z in zip(fp32, bf16, before):  # the bf16 copy includes the head: it keeps the head's correction
        error, correction = _mean_abs(x.image, y.image), _mean_abs(x.image, z.image)
        assert error < min(1.0, correction / 2), (error, correction)


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
