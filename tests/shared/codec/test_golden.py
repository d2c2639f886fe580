"""Golden bitstreams: files coded by an earlier build must still decode to the same latents.

They were made by ``make_tiny_model(name, seed=0)`` (the ``tiny_weights`` fixture) from
``random_image(np.random.default_rng(2024), 70, 90)`` at rate 3. A change to the container, the coding order, the
context models, the fixed-point arithmetic or the CDF tables makes them fail (as a DesyncError or a hash change):
if the change is intended, bump FORMAT_VERSION or the model id and regenerate them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model

GOLDEN = Path(__file__).with_name("golden")
EXPECTED = {  # weights hash prefix, sha256 prefix of the decoded latent (float64 bytes)
    "test-tiny-fast": ("8cb827c64b802d33", "d69a3cbd951166dd"),
    "test-tiny-ar": ("e0234cc702f7501d", "fa2be9e419044db8"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_file_decodes_to_the_same_latents(tiny_weights, name):
    view = unpack((GOLDEN / f"{name}.mvic").read_bytes())
    h = view.header
    assert (h.camera_id, h.sequence, h.rate_index, h.height, h.width) == ("C7", 1, 3, 70, 90)
    assert h.weights_hash.hex() == EXPECTED[name][0], "the test model's weights changed: see the module docstring"
    model = load_model(tiny_weights[name])
    latents = model.decode_latents([view])
    assert hashlib.sha256(latents.numpy().tobytes()).hexdigest()[:16] == EXPECTED[name][1]
    assert model.decompress([view])[0].image.shape == (70, 90, 3)
