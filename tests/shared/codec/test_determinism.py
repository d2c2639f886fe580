"""Cross-device determinism: encode one way, decode another, get the very same symbols.

On this CPU-only machine the 'other device' is simulated by everything that changes float results in practice:
thread count, the convolution algorithm (torch's conv vs unfold+matmul), memory layout. The CUDA test runs where a
GPU exists (-m gpu).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvic.shared.bitstream import pack, unpack
from mvic.shared.codec.fixedpoint import Backend, ExactOptions
from mvic.shared.codec.registry import load_model, registered_weights
from mvic.tools.samples import stereo_pair
from tests.conftest import random_image

SHIPPED = sorted(registered_weights())  # the weights files installed with MVIC (shared/codec/weights/)

DECODE_PATHS = [
    ("2 threads", 2, ExactOptions()),
    ("im2col", 1, ExactOptions(Backend.IM2COL)),
    ("channels-last, 2 threads", 2, ExactOptions(channels_last=True)),
]


def _with_threads(n, fn):
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(prev)


def _images(count: int, seed: int):
    rng = np.random.default_rng(seed)
    imgs = [random_image(rng, int(rng.integers(40, 140)), int(rng.integers(40, 140))) for _ in range(count)]
    for _, real in stereo_pair(scale=0.25):  # real photographs, 125x185
        imgs.append(real)
    return imgs


def _check(weights_path, images):
    enc = load_model(weights_path)
    dec = load_model(weights_path)
    views = _with_threads(1, lambda: [unpack(pack(enc.compress_view(im, i % enc.spec.num_rates, sequence=i)))
                                      for i, im in enumerate(images)])
    reference = [_with_threads(1, lambda v=v: enc.decode_latents([v])) for v in views]
    mismatches = 0
    for _, threads, opts in DECODE_PATHS:
        for v, ref in zip(views, reference):
            got = _with_threads(threads, lambda v=v: dec.decode_latents([v], opts))  # raises DesyncError on CRC
            mismatches += not torch.equal(got, ref)
    return mismatches


def test_fast_model_decodes_identically_on_every_path(tiny_weights):
    assert _check(tiny_weights["test-tiny-fast"], _images(24, seed=11)) == 0


def test_autoregressive_model_decodes_identically_on_every_path(tiny_weights):
    assert _check(tiny_weights["test-tiny-ar"], _images(6, seed=12)) == 0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_decode_identically_on_every_path(name):
    record = registered_weights()[name]
    autoregressive = record.model in ("ldmic", "ldmic-lite")  # serial decoding: fewer images keep the suite fast
    assert _check(record, _images(3 if autoregressive else 8, seed=15)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test-tiny-fast", "test-tiny-ar"])
def test_many_images(tiny_weights, name):
    assert _check(tiny_weights[name], _images(200 if name.endswith("fast") else 40, seed=13)) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["test-tiny-fast", "test-tiny-ar", *SHIPPED])
def test_cpu_encode_cuda_decode(tiny_weights, name):
    source = tiny_weights.get(name) or registered_weights()[name]
    enc = load_model(source)
    dec = load_model(source, device="cuda")
    images = _images(200 if "fast" in name else 30, seed=14)
    desync = 0
    for i, im in enumerate(images):
        view = unpack(pack(enc.compress_view(im, i % enc.spec.num_rates)))
        desync += not torch.equal(dec.decode_latents([view]).cpu(), enc.decode_latents([view]))
    assert desync == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", SHIPPED)
def test_cuda_synthesis_stays_within_one_grey_level_of_the_cpu(name):
    """What the server does on a GPU (float32 synthesis, TF32 off) against the CPU's reconstruction."""
    record = registered_weights()[name]
    cpu, gpu = load_model(record), load_model(record, device="cuda")
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for _, image in stereo_pair(scale=0.5):
            views = [unpack(pack(cpu.compress_view(image, q))) for q in range(cpu.spec.num_rates)]
            for view in views:
                a = cpu.decompress([view])[0].image.astype(np.int16)
                b = gpu.decompress([view])[0].image.astype(np.int16)
                assert np.abs(a - b).max() <= 1
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
