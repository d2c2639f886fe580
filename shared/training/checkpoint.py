"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON beside them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: dict) -> Path:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    groups = {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        for idx, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"{name}/{idx}/{slot}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups[name] = state["param_groups"]
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    meta = run_dir / "checkpoint.json.tmp"
    meta.write_text(json.dumps({"step": step, "config": config, "param_groups": groups}, indent=1))
    tmp.replace(run_dir / "checkpoint.safetensors")
    meta.replace(run_dir / "checkpoint.json")
    return run_dir / "checkpoint.safetensors"


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> int:
    """Restore model and optimizers in place; returns the step to continue from."""
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
    for name, opt in optimizers.items():
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            parts = key.split("/")
            if parts[0] == name:
                state.setdefault(int(parts[1]), {})[parts[2]] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    return int(meta["step"])
