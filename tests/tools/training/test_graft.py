"""python -m mvic.tools.training.graft: one file's tensors with another's entropy model, checked to be one lineage;
the result starts a run of the other architecture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import export_weights, load_model
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.blend import REBUILT
from mvic.tools.training.graft import ENTROPY_MODEL, main
from mvic.tools.training.train import init_weights


def _weights(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    path = tmp_path / f"{name}-{seed}.safetensors"
    export_weights(LDMIC(spec_by_name(name)).eval(), path)
    return path


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_the_entropy_model_comes_from_one_file_the_rest_from_the_other(tmp_path):
    fast, ar = _weights(tmp_path, "test-tiny-fast", 1), _weights(tmp_path, "test-tiny-ar", 2)
    out = tmp_path / "start.safetensors"
    assert main(["--base", str(fast), "--take", str(ar), "-o", str(out)]) == 0
    got, meta = _tensors(out)
    (base, _), (take, take_meta) = _tensors(fast), _tensors(ar)
    assert got.keys() == base.keys()
    for key, tensor in got.items():
        assert torch.equal(tensor, (take if key.startswith(ENTROPY_MODEL) else base)[key]), key
    assert meta == take_meta and json.loads(meta["mvic"])["model"] == "test-tiny-ar"
    model = LDMIC(spec_by_name("test-tiny-ar"))
    init_weights(model, out)  # what refresh-ar's new run does with it
    assert torch.equal(model.g_a[0].weight, base["g_a.0.weight"].float())


def test_files_of_other_lineages_or_unknown_prefixes_are_refused(tmp_path, capsys):
    fast, ar = _weights(tmp_path, "test-tiny-fast", 1), _weights(tmp_path, "test-tiny-ar", 2)
    state, meta = _tensors(ar)
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("gains.")}, str(short), metadata=meta)
    reshaped = tmp_path / "reshaped.safetensors"
    save_file({**state, "g_a.0.weight": state["g_a.0.weight"][:1].contiguous()}, str(reshaped), metadata=meta)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    out = tmp_path / "out.safetensors"
    for argv, said in ((["--take", str(short)], "different tensors"),
                       (["--take", str(reshaped)], "g_a.0.weight"),
                       (["--take", str(ar), "--prefixes", "nothing."], "name no tensor"),
                       (["--take", str(junk)], "graft:"),
                       (["--take", str(tmp_path / "missing.safetensors")], "graft:")):
        assert main(["--base", str(fast), "-o", str(out), *argv]) == 2, argv
        assert said in capsys.readouterr().err
    assert not out.exists()


def test_a_head_trained_on_fast_weights_joins_the_autoregressive_ones(tmp_path):
    """AR weights + the refinement head of fast weights with the same transforms = weights to ship of the AR model
    with a head: every tensor but the head's is the AR file's, and the record waits beside it for mvic-publish."""
    torch.manual_seed(2)
    model = LDMIC(spec_by_name("test-tiny-ar")).eval()
    with torch.no_grad():  # a refreshed entropy model: its CDF tables have another length than the fast file's
        model.entropy_bottleneck.quantiles[:, :, 0] -= 7.0
    ar = tmp_path / "ar.safetensors"
    export_weights(model, ar)
    fast_r = _weights(tmp_path, "test-tiny-fast-r", 3)
    out = tmp_path / "ar-r.safetensors"
    assert main(["--base", str(ar), "--take", str(fast_r), "--prefixes", "refine_head.", "--model", "test-tiny-ar-r",
                 "--record", "-o", str(out)]) == 0
    got, meta = _tensors(out)
    (base, _), (take, _) = _tensors(ar), _tensors(fast_r)
    assert json.loads(meta["mvic"])["model"] == "test-tiny-ar-r"
    head = [k for k in got if k.startswith("refine_head.")]
    assert head and all(_shipped(got[k], take[k]) for k in head)
    assert base["entropy_bottleneck._quantized_cdf"].shape != take["entropy_bottleneck._quantized_cdf"].shape
    assert all(_shipped(got[k], base[k]) for k in got if k not in head and not k.endswith(REBUILT))
    assert got["entropy_bottleneck._quantized_cdf"].shape == base["entropy_bottleneck._quantized_cdf"].shape
    record = json.loads((tmp_path / "ar-r.safetensors.record.json").read_text())
    assert record["model"] == "test-tiny-ar-r" and record["name"] == "ar-r"
    model = load_model(out, sha256=record["sha256"])  # strict, the hash the record names
    assert model.spec.context.value == "autoregressive" and model.refine_head is not None


def _shipped(got: torch.Tensor, source: torch.Tensor) -> bool:
    """``got`` is ``source`` as shipped weights store it (convolution kernels in float16)."""
    return torch.equal(got, source.half() if source.dim() == 4 and source.is_floating_point() else source)


def test_a_graft_must_make_the_architecture_it_names(tmp_path, capsys):
    ar, fast_r = _weights(tmp_path, "test-tiny-ar", 2), _weights(tmp_path, "test-tiny-fast-r", 3)
    out = tmp_path / "out.safetensors"
    for argv, said in ((["--prefixes", "refine_head.", "--model", "test-tiny-ar"], "not those of test-tiny-ar"),
                       (["--prefixes", "refine_head.", "--model", "no-such-model"], "unknown model"),
                       (["--prefixes", "context."], "different tensors")):  # a head outside the prefixes
        assert main(["--base", str(ar), "--take", str(fast_r), "-o", str(out), *argv]) == 2, argv
        assert said in capsys.readouterr().err
    assert not out.exists()
