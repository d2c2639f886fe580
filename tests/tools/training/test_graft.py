"""python -m mvic.tools.training.graft: one file's tensors with another's entropy model, checked to be one lineage;
the result starts a run of the other architecture."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import export_weights
from mvic.shared.model_table import spec_by_name
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
