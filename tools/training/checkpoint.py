"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON beside them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mvic.tools.training.ema import WeightsEMA


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    config: dict, ema: WeightsEMA | None = None) -> Path:
    """Writes the checkpoint atomically (tensors, then the JSON that names the step). With ``ema``, its average is
    stored under ``ema/`` and is what ``load_state`` (export, pieces, init_from) reads from the run."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.averaged().items()})
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
    meta.write_text(json.dumps({"step": step, "config": config, "param_groups": groups,
                                "ema_updates": ema.updates if ema is not None else None}, indent=1))
    tmp.replace(run_dir / "checkpoint.safetensors")
    meta.replace(run_dir / "checkpoint.json")
    return run_dir / "checkpoint.safetensors"


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    ema: WeightsEMA | None = None) -> int:
    """Restore model, optimizers and the weights' average in place; returns the step to continue from.

    A checkpoint written without an average starts ``ema`` from the restored weights."""
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    tensors = load_file(str(run_dir / "checkpoint.safetensors"))
    model.load_state_dict(_prefixed(tensors, "model/"), strict=True)
    if ema is not None:
        averaged = _prefixed(tensors, "ema/")
        if averaged:
            ema.load(averaged, int(meta.get("ema_updates") or 0))
        else:
            ema.load(dict(model.named_parameters()), 0)
    for name, opt in optimizers.items():
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            parts = key.split("/")
            if parts[0] == name:
                state.setdefault(int(parts[1]), {})[parts[2]] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][name]})
    return int(meta["step"])


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


PIECES_INDEX = "pieces.json"


def save_pieces(state: dict[str, torch.Tensor], out_dir: Path, max_bytes: int = 16 << 20,
                info: dict | None = None) -> list[Path]:
    """Model weights as safetensors files of at most ``max_bytes`` each (whole tensors), plus an index.

    For moving a run's weights between machines whose transfers are limited in size (e.g. a GPU machine's
    16 MiB per file); ``load_state`` reads the folder back. A tensor larger than ``max_bytes`` is refused.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    overhead = 1024  # safetensors header room per tensor, generous
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        n = t.numel() * t.element_size() + overhead
        if n > max_bytes:
            raise ValueError(f"tensor {name} alone is {n} bytes, over the piece limit {max_bytes}")
        if size + n > max_bytes and pieces[-1]:
            pieces.append({})
            size = 0
        pieces[-1][name] = t
        size += n
    paths = []
    for i, piece in enumerate(pieces):
        path = out_dir / f"piece-{i:03d}.safetensors"
        save_file(piece, str(path))
        paths.append(path)
    index = {"pieces": [p.name for p in paths], "tensors": sum(len(p) for p in pieces), **(info or {})}
    (out_dir / PIECES_INDEX).write_text(json.dumps(index, indent=1))
    return paths


def load_state(source: Path) -> dict[str, torch.Tensor]:
    """Model weights from a .safetensors file, a folder written by ``save_pieces``, or a run folder."""
    if source.is_dir() and (source / PIECES_INDEX).is_file():
        index = json.loads((source / PIECES_INDEX).read_text())
        state: dict[str, torch.Tensor] = {}
        for name in index["pieces"]:
            state.update(load_file(str(source / name)))
        if len(state) != index["tensors"]:
            raise ValueError(f"{source}: pieces hold {len(state)} tensors, the index says {index['tensors']}")
        return state
    if source.is_dir() and (source / "checkpoint.safetensors").is_file():
        tensors = load_file(str(source / "checkpoint.safetensors"))
        return {**_prefixed(tensors, "model/"), **_prefixed(tensors, "ema/")}  # the average where the run kept one
    if source.is_file():
        return load_file(str(source))
    raise FileNotFoundError(f"{source}: not a weights file, a pieces folder or a run folder")
