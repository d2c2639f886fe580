"""Weights: safetensors files, verified by sha256, loaded strictly, described by frozen records.

``export_weights(model, path)`` runs ``update(force=True)`` (so the CDF tables travel with the weights and are never
recomputed on another machine), writes a safetensors file whose metadata names the architecture, and returns its
sha256. ``load_model(path_or_record)`` verifies the hash (when known), rebuilds the architecture named in the file
and loads with ``strict=True``. Shipped weights are listed in ``weights/records.json``; each entry becomes a
``WeightsRecord``, and registering a name twice raises. No pickle anywhere.

The records need no torch: torch, safetensors and the model are imported by the two functions that move tensors, so
``--validate-config`` and other checks that only ask which weights are installed start fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mvic.shared.errors import ConfigError, NoTrainedWeightsError, WeightsError
from mvic.shared.model_table import spec_by_name

if TYPE_CHECKING:
    import torch

    from mvic.shared.codec.model import LDMIC

WEIGHTS_DIR = Path(__file__).with_name("weights")
FORMAT_TAG = "mvic-weights-1"
#: Name endings of the tables ``update()`` sizes and fills from the entropy models (an export writes them; loading
#: resizes them): they belong to the entropy model beside them, whatever their size in another file.
CDF_TABLES = ("._quantized_cdf", "._offset", "._cdf_length", ".scale_table")


@dataclass(frozen=True)
class RDPoint:
    """One measured rate point of shipped weights."""

    rate_index: int
    bpp: float
    psnr_db: float
    ms_ssim: float
    dataset: str


@dataclass(frozen=True)
class WeightsRecord:
    name: str  # unique, e.g. "ldmic-fast-lite-mse-v1"
    file: str  # file name in WEIGHTS_DIR
    sha256: str
    model: str  # architecture name from mvic.shared.model_table
    metric: str = "mse"
    measured: tuple[RDPoint, ...] = field(default=())
    recipe: str = ""  # config file and command that produced the weights

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @classmethod
    def from_json(cls, entry: dict) -> WeightsRecord:
        """A record from its records.json entry (TypeError for unknown or missing keys)."""
        entry = dict(entry)
        measured = tuple(RDPoint(**p) for p in entry.pop("measured", ()))
        return cls(measured=measured, **entry)


_REGISTRY: dict[str, WeightsRecord] = {}


def register_weights(record: WeightsRecord) -> WeightsRecord:
    if record.name in _REGISTRY:
        raise ValueError(f"weights {record.name!r} are registered twice")
    spec_by_name(record.model)  # the architecture must exist
    _REGISTRY[record.name] = record
    return record


def registered_weights() -> dict[str, WeightsRecord]:
    return dict(_REGISTRY)


def default_weights(model: str) -> WeightsRecord:
    """The first registered weights for an architecture, or NoTrainedWeightsError saying what to do (ConfigError
    for a name that is no architecture)."""
    spec_by_name(model)
    for record in _REGISTRY.values():
        if record.model == model:
            return record
    raise NoTrainedWeightsError(
        f"no trained weights are installed for model {model!r}. Pass --weights FILE.safetensors "
        "(made by registry.export_weights or mvic-train), or train them; the codec cannot compress well without"
    )


def weights_source(weights: str | Path | None, model: str) -> Path | WeightsRecord:
    """What a node or a server loads: the file ``weights`` names when it names one, else the installed weights of
    ``model`` (NoTrainedWeightsError when none are; ConfigError for an unknown model). Needs no torch, so
    ``--validate-config`` can ask it."""
    return Path(weights) if weights else default_weights(model)


def sidecar_record_path(weights: Path) -> Path:
    """Where an exported weights file's record waits until mvic-publish moves it into records.json."""
    return weights.with_name(weights.name + ".record.json")


def write_sidecar_record(weights: Path, digest: str, model: str, metric: str, recipe: str) -> Path:
    """Write the registry record (nothing measured yet) of an exported weights file beside it; returns its path."""
    record = {"name": weights.stem, "file": weights.name, "sha256": digest, "model": model, "metric": metric,
              "measured": [], "recipe": recipe}
    path = sidecar_record_path(weights)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_weights(model: LDMIC, path: str | Path, *, fp16_kernels: bool = False) -> str:
    """Write the model's weights (CDF tables updated) as safetensors; returns the file's sha256.

    ``fp16_kernels`` stores the convolution kernels (the 4-D float tensors, nearly all the bytes) in float16 and
    everything else (biases, GDN, entropy bottleneck, gains, CDF tables) as it is. A loaded model is float32 either
    way, and every machine widens the same float16 values, so decoding stays bit-exact across devices. The exporting
    model is given the rounded kernels too, so it codes exactly like the file it wrote.
    """
    from safetensors.torch import save_file

    path = Path(path)
    model.update(force=True)
    state = {}
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu")
        if fp16_kernels and value.is_floating_point() and value.dim() == 4:
            value = value.half()
        state[name] = value.contiguous()
    if fp16_kernels:
        model.load_state_dict(state, strict=True)  # copies (and widens) into the model's own float32 tensors
    # One metadata key: safetensors stores the metadata map in arbitrary order, and the file hash must be stable.
    metadata = {"mvic": json.dumps({"format": FORMAT_TAG, "model": model.spec.name,
                                    "model_id": model.spec.model_id}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.chmod(0o644)  # safetensors writes 0600; weights are read by other users (a container's non-root user)
    tmp.replace(path)  # never leave a half-written weights file under the real name
    digest = sha256_of(path)
    model.weights_hash = bytes.fromhex(digest)[:8]
    return digest


def load_model(source: str | Path | WeightsRecord, *, sha256: str | None = None, model: str | None = None,
               device: str | torch.device = "cpu") -> LDMIC:
    """Load weights into the architecture their file names; verify the hash; strict; eval mode.

    ``model`` (a name) must be the architecture the file holds: ConfigError for an unknown name, WeightsError for
    another architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from mvic.shared.codec.model import LDMIC

    if isinstance(source, WeightsRecord):
        sha256, model, path = source.sha256, source.model, source.path
    else:
        path = Path(source)
    if model is not None:
        spec_by_name(model)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist; check the path or reinstall MVIC")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        raise WeightsError(
            f"weights file {path} has sha256 {digest}, expected {sha256}: the file is damaged or another version; "
            "restore it from the release"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mvic", "{}"))
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors weights file ({exc})") from exc
    if meta.get("format") != FORMAT_TAG or "model" not in meta:
        raise WeightsError(f"{path} is not an MVIC weights file (metadata {meta}); export it with export_weights")
    try:
        spec = spec_by_name(meta["model"])
    except ConfigError as exc:
        raise WeightsError(f"{path} names an architecture this build does not know ({exc}); upgrade MVIC") from None
    if model is not None and model != spec.name:
        raise WeightsError(f"{path} holds weights for {spec.name!r}, not for the requested model {model!r}")
    net = LDMIC(spec)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not match architecture {spec.name!r}: {exc}") from None
    net.weights_hash = bytes.fromhex(digest)[:8]
    return net.to(device).eval()


def _load_shipped_records() -> None:
    listing = WEIGHTS_DIR / "records.json"
    if not listing.is_file():
        return
    for entry in json.loads(listing.read_text()):
        register_weights(WeightsRecord.from_json(entry))


_load_shipped_records()
