"""Weights files: hash verified, strict loading, records, no pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvic.shared.codec import registry
from mvic.shared.errors import NoTrainedWeightsError, WeightsError
from tests.conftest import make_tiny_model


def test_export_then_load_is_identical(tmp_path):
    model = make_tiny_model("test-tiny-ar", seed=4)
    digest = registry.export_weights(model, tmp_path / "w.safetensors")
    loaded = registry.load_model(tmp_path / "w.safetensors", sha256=digest)
    assert loaded.weights_hash == bytes.fromhex(digest)[:8] == model.weights_hash
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.gaussian_conditional._quantized_cdf.numel() > 0  # CDF tables travel with the weights
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644  # readable by a service's own user


def test_hash_mismatch_is_refused(tmp_path):
    registry.export_weights(make_tiny_model("test-tiny-fast"), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match="damaged"):
        registry.load_model(tmp_path / "w.safetensors", sha256="0" * 64)


def test_strict_loading(tmp_path):
    path = tmp_path / "w.safetensors"
    registry.export_weights(make_tiny_model("test-tiny-fast"), path)
    state = load_file(str(path))
    state.pop("g_a.0.weight")
    meta = json.dumps({"format": registry.FORMAT_TAG, "model": "test-tiny-fast", "model_id": 0xF001})
    save_file(state, str(tmp_path / "missing.safetensors"), metadata={"mvic": meta})
    with pytest.raises(WeightsError, match="does not match"):
        registry.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="not for the requested model"):
        registry.load_model(path, model="test-tiny-ar")


def test_export_is_byte_reproducible(tmp_path):
    a = registry.export_weights(make_tiny_model("test-tiny-ar", seed=2), tmp_path / "a.safetensors")
    b = registry.export_weights(make_tiny_model("test-tiny-ar", seed=2), tmp_path / "b.safetensors")
    assert a == b


def test_not_a_weights_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError):
        registry.load_model(tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="does not exist"):
        registry.load_model(tmp_path / "nope.safetensors")


def test_registry_refuses_duplicates_and_reports_missing_weights():
    rec = registry.WeightsRecord("unit-test-weights", "none.safetensors", "0" * 64, "test-tiny-fast")
    registry.register_weights(rec)
    try:
        with pytest.raises(ValueError, match="twice"):
            registry.register_weights(rec)
        assert registry.default_weights("test-tiny-fast") is rec
    finally:
        registry._REGISTRY.pop("unit-test-weights")
    with pytest.raises(NoTrainedWeightsError, match="--weights"):
        registry.default_weights("test-tiny-ar")


def test_shipped_records_point_at_real_files():
    for rec in json.loads((registry.WEIGHTS_DIR / "records.json").read_text()):
        assert (registry.WEIGHTS_DIR / rec["file"]).is_file()


def test_fp16_kernels_halve_the_file_and_code_like_the_file(tmp_path):
    import numpy as np

    from tests.conftest import random_image

    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    registry.export_weights(make_tiny_model("test-tiny-fast", seed=5), full)
    model = make_tiny_model("test-tiny-fast", seed=5)
    registry.export_weights(model, half, fp16_kernels=True)
    kernel_elements = sum(v.numel() for v in model.state_dict().values() if v.dim() == 4)
    saved = full.stat().st_size - half.stat().st_size
    assert abs(saved - 2 * kernel_elements) < 1024  # two bytes less per kernel element (headers differ slightly)
    stored = load_file(str(half))
    assert stored["g_a.0.weight"].dtype == torch.float16 and stored["g_a.0.bias"].dtype == torch.float32
    loaded = registry.load_model(half)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k  # the exporter now holds what the file holds
    image = random_image(np.random.default_rng(3), 64, 96)
    view = model.compress_view(image, 2)
    assert torch.equal(loaded.decode_latents([view]), model.decode_latents([view]))
    reference = registry.load_model(full).decompress([registry.load_model(full).compress_view(image, 2)])[0]
    halved = loaded.decompress([view])[0]
    assert np.abs(reference.image.astype(int) - halved.image.astype(int)).mean() < 1.0  # float16 kernels cost ~nothing


def test_the_records_and_the_compatibility_rule_need_no_torch():
    """--validate-config asks the registry which weights are installed, and must not wait for torch to load."""
    import subprocess
    import sys

    code = ("import sys, mvic.shared.codec, mvic.shared.codec.compat, mvic.shared.codec.registry as r; "
            "r.default_weights('ldmic-fast-lite'); "
            "print(sorted(m for m in ('torch', 'compressai') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "[]\n", "")


def test_weights_source_is_the_named_file_or_the_installed_weights(tmp_path):
    assert registry.weights_source(str(tmp_path / "w.safetensors"), "test-tiny-ar") == tmp_path / "w.safetensors"
    assert registry.weights_source("", "ldmic-fast-lite") == registry.default_weights("ldmic-fast-lite")
    with pytest.raises(NoTrainedWeightsError):
        registry.weights_source(None, "test-tiny-ar")
