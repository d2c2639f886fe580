"""python -m mvic.tools.training.blend: a point between two weights files of one model, written like shipped
weights (CDF tables rebuilt, float16 kernels), loadable strictly; other models and bad weights are refused."""

from __future__ import annotations

import json

import pytest
import torch

from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import export_weights, load_model
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.blend import main


def _weights(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    model = LDMIC(spec_by_name(name))
    with torch.no_grad():  # distinct gains too (they start as a fixed ladder)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / f"{name}-{seed}.safetensors"
    export_weights(model.eval(), path, fp16_kernels=True)
    return path


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_every_learned_tensor_lies_weight_of_the_way(tmp_path, weight):
    a, b = _weights(tmp_path, "test-tiny-fast", 1), _weights(tmp_path, "test-tiny-fast", 2)
    out = tmp_path / "blend.safetensors"
    assert main(["--from", str(a), "--to", str(b), "--weight", str(weight), "-o", str(out)]) == 0
    got, sa, sb = (load_model(p).state_dict() for p in (out, a, b))
    learned = [k for k, v in sa.items() if v.is_floating_point() and "cdf" not in k and not k.endswith(".mask")]
    assert any(k.startswith("g_a.") for k in learned) and any(k.startswith("gains") for k in learned)
    for key in learned:
        want = (1 - weight) * sa[key] + weight * sb[key]
        kernel = sa[key].dim() == 4  # stored in float16
        torch.testing.assert_close(got[key], want, rtol=1e-3 if kernel else 1e-6, atol=1e-4 if kernel else 1e-6)
    if weight in (0.0, 1.0):  # an end reproduces that file's tables, the CDFs rebuilt from its parameters
        end = sa if weight == 0.0 else sb
        for key in (k for k in end if k.endswith("_quantized_cdf")):
            assert torch.equal(got[key], end[key]), key
    record = json.loads(out.with_name(out.name + ".record.json").read_text())
    assert record["model"] == "test-tiny-fast" and record["file"] == out.name and len(record["sha256"]) == 64


def test_other_models_bad_weights_and_files_are_refused(tmp_path, capsys):
    a, ar = _weights(tmp_path, "test-tiny-fast", 1), _weights(tmp_path, "test-tiny-ar", 2)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    out = tmp_path / "out.safetensors"
    for argv, said in ((["--to", str(ar), "--weight", "0.5"], "test-tiny-ar"),
                       (["--to", str(a), "--weight", "1.5"], "between 0 and 1"),
                       (["--to", str(a), "--weight", "nan"], "between 0 and 1"),
                       (["--to", str(junk), "--weight", "0.5"], "not a readable safetensors"),
                       (["--to", str(tmp_path / "missing.safetensors"), "--weight", "0.5"], "does not exist")):
        assert main(["--from", str(a), "-o", str(out), *argv]) == 2, argv
        assert said in capsys.readouterr().err
    assert not out.exists()
