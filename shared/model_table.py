"""The explicit table of model architectures a bitstream can name.

A bitstream stores the ``model_id`` below, never a name or a position in a dict, so the mapping is stable across
releases: ids are never reused or renumbered, retired ids stay listed with ``retired=True``. The table holds only
architecture facts (widths, context model, number of rate points); weights are identified separately by the hash
prefix in each packet. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mvic.shared.errors import ConfigError, ModelMismatchError


class ContextModel(str, Enum):
    """How the latent y of one view is entropy coded given its hyperprior."""

    CHECKERBOARD = "checkerboard"  # LDMIC-fast: anchors, then non-anchors; two parallel passes
    AUTOREGRESSIVE = "autoregressive"  # LDMIC: masked 5x5 raster scan; serial, best rate


#: The paper's MSE rate-distortion trade-offs (images in [0, 1]); one variable-rate model covers all of them.
PAPER_LAMBDAS: tuple[float, ...] = (256.0, 512.0, 1024.0, 2048.0, 4096.0)


@dataclass(frozen=True)
class ModelSpec:
    """One architecture: what an encoder and a decoder must agree on besides the weights."""

    model_id: int
    name: str
    n: int  # channels of the transforms and of the hyper latent z
    m: int  # channels of the latent y
    context: ContextModel
    lambdas: tuple[float, ...] = PAPER_LAMBDAS  # one rate point per lambda, index 0 = lowest rate
    refine: int = 0  # channels of the decoder-only refinement head (refine_head.py); 0: none

    @property
    def num_rates(self) -> int:
        return len(self.lambdas)


_SPECS: tuple[ModelSpec, ...] = (
    # The paper's width (N = M = 192, ~20 M parameters with both JCTs).
    ModelSpec(1, "ldmic-fast", 192, 192, ContextModel.CHECKERBOARD),
    ModelSpec(2, "ldmic", 192, 192, ContextModel.AUTOREGRESSIVE),
    # Lighter encoders for CPU cameras: about a quarter of the paper's analysis cost at the same resolution.
    ModelSpec(3, "ldmic-fast-lite", 96, 128, ContextModel.CHECKERBOARD),
    ModelSpec(4, "ldmic-lite", 96, 128, ContextModel.AUTOREGRESSIVE),
    # The lite models' cameras and bitstreams with more synthesis on the server (a refinement head of 64 channels).
    ModelSpec(5, "ldmic-fast-lite-r", 96, 128, ContextModel.CHECKERBOARD, refine=64),
    ModelSpec(6, "ldmic-lite-r", 96, 128, ContextModel.AUTOREGRESSIVE, refine=64),
    # Tiny architectures for tests and CI (randomly initialised; never shipped).
    ModelSpec(0xF001, "test-tiny-fast", 16, 24, ContextModel.CHECKERBOARD),
    ModelSpec(0xF002, "test-tiny-ar", 16, 24, ContextModel.AUTOREGRESSIVE),
    ModelSpec(0xF003, "test-tiny-fast-r", 16, 24, ContextModel.CHECKERBOARD, refine=8),
    ModelSpec(0xF004, "test-tiny-ar-r", 16, 24, ContextModel.AUTOREGRESSIVE, refine=8),
)

#: The architecture every tool uses when none is named: the camera-friendly checkerboard model whose trained weights
#: ship with MVIC.
DEFAULT_MODEL = "ldmic-fast-lite"

MODELS_BY_ID: dict[int, ModelSpec] = {}
MODELS_BY_NAME: dict[str, ModelSpec] = {}
for _spec in _SPECS:
    if _spec.model_id in MODELS_BY_ID or _spec.name in MODELS_BY_NAME:
        raise RuntimeError(f"model table lists {_spec.model_id} / {_spec.name!r} twice")
    MODELS_BY_ID[_spec.model_id] = _spec
    MODELS_BY_NAME[_spec.name] = _spec


def spec_by_id(model_id: int) -> ModelSpec:
    """The architecture a bitstream or a Hello names; ModelMismatchError for an id this build does not know."""
    try:
        return MODELS_BY_ID[model_id]
    except KeyError:
        raise ModelMismatchError(
            f"model id {model_id:#06x} is not in this build's model table; upgrade MVIC on the decoder "
            f"(known: {', '.join(f'{s.model_id:#06x}={s.name}' for s in _SPECS)})"
        ) from None


def spec_by_name(name: str) -> ModelSpec:
    """The architecture a name (a --model flag, a config key, a weights file's metadata) stands for.

    An unknown name is a configuration error, not a bitstream one: ConfigError, listing the names there are.
    """
    try:
        return MODELS_BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS_BY_NAME)}") from None
