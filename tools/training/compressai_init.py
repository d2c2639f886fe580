"""Start a paper-width model (``ldmic`` / ``ldmic-fast``, N = M = 192) from CompressAI's pretrained ``mbt2018``.

Hop before: ``init_from`` in a training config (or ``mvic-train --init-from``) names a CompressAI source:

    compressai:mbt2018:4                      the zoo's MSE model of quality 4 (torch.hub cache, else downloaded)
    compressai:mbt2018:4:ms-ssim              the MS-SSIM one
    compressai:mbt2018:4=/data/x.pth.tar      that quality's weights from a local file
    /data/mbt2018-4-456e2af9.pth.tar          a file named as the zoo names them (quality and metric from the name)

Hop after: ``train.train`` optimises the model this module filled in. Files are read with
``torch.load(weights_only=True)`` (plain state dicts, or CompressAI training checkpoints holding ``state_dict``).

LDMIC's per-view path is the Minnen et al. 2018 joint autoregressive hyperprior, CompressAI's
``JointAutoregressiveHierarchicalPriors``, whose qualities 1..4 have our widths. The mapping (CompressAI -> MVIC)::

    g_a.*                          -> g_a.*                         same layers
    h_a.*, h_s.*                   -> h_a.*, h_s.*                  same layers (h_s: N -> M -> 3M/2 -> 2M; N = M)
    entropy_bottleneck.*           -> entropy_bottleneck.*          quantiles (medians) included; CDF tables are
                                                                     rebuilt by update() at export
    entropy_parameters.*           -> context.entropy_parameters.*  same input order cat(params, ctx), same output
                                                                     order (scales, means)
    context_prediction.*           -> context.context_prediction.*  the 5x5 weights with CompressAI's causal mask
                                                                     applied; our own mask buffer is kept
    g_s.0..3 / g_s.4..6            -> synthesis_1.* / synthesis_2.* the two halves around the second JCT

What has no counterpart starts so that the imported rate point q0 (the rate point whose lambda is nearest, on a log
scale, to the one CompressAI trained that quality with: MSE lambda * 255**2, MS-SSIM lambda * 32) codes like the
single-image model: the four gain rows of q0 are exactly 1 (the other rows keep the model's own ladder, divided by
q0's row, so the order of the rates is kept), and both JCTs are the identity (the refine branch's residual
convolutions and its 1x1 skip are zero, so ``out = x + 0``; the gradients into those convolutions are not zero, so
training moves them).

Exact, for ``ldmic`` (autoregressive) at q0, up to float rounding:
g_a, h_a, h_s, the context convolution, the entropy parameters, the synthesis (JCTs included), and the training
forward's likelihoods given the same noise (tests/tools/training/test_compressai_init.py checks each).

What differs, and why:

* LeakyReLU slope: ours is the dyadic 655 / 2**16 = 0.0099945 (so the integer entropy model matches the float one),
  CompressAI's 0.01. Negative activations of h_a, h_s and the entropy parameters differ by 5.5e-4 relative.
* The entropy model codes in exact integer arithmetic (fixedpoint.py): means to 2**-8, weights to 17 bits per
  channel. Real bitstreams are within a fraction of a percent of CompressAI's ``compress`` on the same image, not
  byte-identical. The eval-mode forward's likelihoods use the table scales the coder uses; CompressAI's forward
  uses unquantized scales and, in eval mode, a context on round(y) rather than on the decoded y.
* Training forward: h_s sees z rounded straight-through around the medians (LDMIC's mixed quantization) where
  CompressAI's sees z plus noise; the likelihoods of z and y are the same functions of the same noise otherwise.
* ``ldmic-fast``: the checkerboard context cannot be mbt2018's. The 5x5 weights are re-masked: of mbt2018's 12
  causal taps, the 6 at odd offsets (the anchors a non-anchor sees) keep their weights, the 6 at even offsets are
  dropped by the checkerboard mask, and the 6 non-causal odd taps (below and right, which mbt2018 never saw) start
  at zero. Anchors are coded from the hyperprior with a zero context. So g_a, h_a, h_s, the entropy parameters and
  the synthesis are mbt2018's; the y rate at the start is not, and fine-tuning relearns the context.
* Other rate points than q0 start from the gain ladder alone; the variable-rate training learns them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch import Tensor

from mvic.shared.codec.fixedpoint import exact_form
from mvic.shared.codec.model import LDMIC
from mvic.shared.errors import ConfigError, WeightsError

PREFIX = "compressai:"
ARCHITECTURES = ("mbt2018",)  # JointAutoregressiveHierarchicalPriors; mbt2018-mean has no context model to map
#: The lambdas CompressAI trained its zoo models with, by quality (MSE: of MSE on [0, 255] images).
ZOO_LAMBDAS: dict[str, tuple[float, ...]] = {
    "mse": (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800),
    "ms-ssim": (2.40, 4.58, 8.73, 16.64, 31.73, 60.50, 115.37, 220.00),
}
_SOURCE = re.compile(r"(?P<arch>[\w-]+?):(?P<quality>\d+)(?::(?P<metric>mse|ms-ssim))?(?:=(?P<path>.+))?")
_ZOO_FILE = re.compile(r"(?P<arch>mbt2018)(?P<msssim>-ms-ssim)?-(?P<quality>\d+)-[0-9a-f]{8}\.pth\.tar")
# Our tensors without a CompressAI counterpart: initialised here (gains, JCTs) or rebuilt by update() (CDF tables).
_OWN_ONLY = ("gains.", "jct_1.", "jct_2.", "gaussian_conditional.")
_CDF_TABLES = ("._quantized_cdf", "._offset", "._cdf_length")


@dataclass(frozen=True)
class CompressAISource:
    """One pretrained CompressAI single-image model: the zoo's (``path`` None) or a local file."""

    architecture: str
    quality: int
    metric: str = "mse"
    path: Path | None = None

    def __str__(self) -> str:
        text = f"{PREFIX}{self.architecture}:{self.quality}" + (f":{self.metric}" if self.metric != "mse" else "")
        return text + (f"={self.path}" if self.path else "")

    @property
    def lambda_mvic(self) -> float:
        """The quality's lambda in MVIC's units (``optim.lambdas``: MSE on [0, 1] images; MS-SSIM uses lambda/32)."""
        lam = ZOO_LAMBDAS[self.metric][self.quality - 1]
        return lam * 255**2 if self.metric == "mse" else lam * 32

    @property
    def url(self) -> str:
        from compressai.zoo.image import model_urls  # CompressAI is imported (quietly) by the codec by now

        return model_urls[self.architecture][self.metric][self.quality]


def parse_source(text: str) -> CompressAISource | None:
    """The CompressAI source ``init_from`` names, or None when it names MVIC weights. ConfigError if malformed."""
    name = Path(text).name
    if not text.startswith(PREFIX):
        if not text.endswith((".pth.tar", ".pth")):
            return None
        zoo = _ZOO_FILE.fullmatch(name)
        if zoo is None:
            raise ConfigError(f"init_from: {text!r} is a PyTorch file whose name does not say which CompressAI model "
                              "it holds; write init_from: compressai:mbt2018:<quality>[:ms-ssim]=<path>")
        return _checked(zoo["arch"], int(zoo["quality"]), "ms-ssim" if zoo["msssim"] else "mse", Path(text))
    match = _SOURCE.fullmatch(text[len(PREFIX):])
    if match is None:
        raise ConfigError(f"init_from: {text!r} is not a CompressAI source; write compressai:mbt2018:<quality>, "
                          "compressai:mbt2018:<quality>:ms-ssim or compressai:mbt2018:<quality>=<file.pth.tar>")
    path = Path(match["path"]) if match["path"] else None
    return _checked(match["arch"], int(match["quality"]), match["metric"] or "mse", path)


def _checked(arch: str, quality: int, metric: str, path: Path | None) -> CompressAISource:
    if arch not in ARCHITECTURES:
        raise ConfigError(f"init_from: CompressAI architecture {arch!r} cannot start an LDMIC; use "
                          f"{' or '.join(ARCHITECTURES)} (Minnen et al. 2018, LDMIC's per-view path)")
    if not 1 <= quality <= len(ZOO_LAMBDAS[metric]):
        raise ConfigError(f"init_from: {arch} quality {quality} does not exist; CompressAI has 1..8 "
                          "(1..4 have N = M = 192, the width of ldmic / ldmic-fast)")
    return CompressAISource(arch, quality, metric, path)


def load_source(source: CompressAISource, progress: bool = False) -> dict[str, Tensor]:
    """The source's state dict with CompressAI's key names of today (old zoo names and ``module.`` prefixes fixed)."""
    from compressai.models.utils import remap_old_keys
    from compressai.zoo.pretrained import load_pretrained

    if source.path is not None:
        if not source.path.is_file():
            raise WeightsError(f"init_from: {source.path} does not exist")
        state = torch.load(source.path, map_location="cpu", weights_only=True)
    else:
        state = _download(source, progress)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # CompressAI's examples/train.py
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"init_from: {source} holds no state dict of tensors")
    return dict(remap_old_keys("entropy_bottleneck", load_pretrained(state)))


def _download(source: CompressAISource, progress: bool) -> dict[str, Tensor]:
    """The zoo file from torch.hub's cache, downloaded there first if missing (the sha256 prefix is checked)."""
    url = source.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, check_hash=True,
                                                  weights_only=True)
    except (URLError, OSError) as exc:
        raise WeightsError(
            f"init_from: cannot download {url} ({exc}). On a machine without internet, download that file "
            f"elsewhere and either copy it to {cached} (torch.hub's cache, where it is looked for first; TORCH_HOME "
            f"moves it) or name it: init_from: compressai:{source.architecture}:{source.quality}"
            f"{':ms-ssim' if source.metric == 'ms-ssim' else ''}=/path/to/{cached.name}"
        ) from exc


def key_map(model: LDMIC) -> dict[str, str]:
    """Our state_dict key -> CompressAI's, for every tensor that has a counterpart (in our state_dict's order)."""
    half = len(model.synthesis_1)
    mapping = {}
    for key in model.state_dict():
        if key.startswith(_OWN_ONLY) or key.endswith(_CDF_TABLES) or key == "context.context_prediction.mask":
            continue
        if key.startswith("context."):
            mapping[key] = key.removeprefix("context.")
        elif key.startswith("synthesis_1."):
            mapping[key] = "g_s." + key.removeprefix("synthesis_1.")
        elif key.startswith("synthesis_2."):
            index, rest = key.removeprefix("synthesis_2.").split(".", 1)
            mapping[key] = f"g_s.{int(index) + half}.{rest}"
        elif key.startswith(("g_a.", "h_a.", "h_s.", "entropy_bottleneck.")):
            mapping[key] = key
        else:
            raise WeightsError(f"{model.spec.name} has {key}, which the CompressAI mapping does not know; "
                               "update mvic.tools.training.compressai_init.key_map")
    return mapping


@dataclass(frozen=True)
class Imported:
    """What ``import_compressai`` did."""

    rate_index: int  # the rate point that codes like the single-image model
    lambda_source: float  # the source's lambda in MVIC's units
    mapped: int  # tensors taken from the source


def import_compressai(model: LDMIC, state: Mapping[str, Tensor], lambda_source: float,
                      lambdas: Sequence[float], name: str = "the CompressAI model") -> Imported:
    """Fill ``model`` from a CompressAI mbt2018 state dict (see the module docstring). ``lambdas``: the rate points'
    lambdas the run trains with. WeightsError naming the first tensor that is missing or of another shape;
    ExactnessError if the integer entropy model (fixedpoint.py) cannot run the imported h_s, context or EP."""
    own = model.state_dict()
    mapping = key_map(model)
    for ours, theirs in mapping.items():
        if theirs not in state:
            raise WeightsError(f"init_from: {name} lacks {theirs} (for {ours} of {model.spec.name}); "
                               "is it a CompressAI mbt2018 state dict?")
        if state[theirs].shape != own[ours].shape:
            raise WeightsError(
                f"init_from: {name} has {theirs} of shape {tuple(state[theirs].shape)} but {model.spec.name} needs "
                f"{ours} of shape {tuple(own[ours].shape)}; CompressAI's mbt2018 qualities 1..4 have N = M = 192, "
                "the widths of ldmic and ldmic-fast")
    new = dict(own)
    for ours, theirs in mapping.items():
        new[ours] = state[theirs].detach().to(own[ours].dtype).clone()
    causal = state.get("context_prediction.mask")
    if causal is not None:  # only the taps mbt2018 used; our mask (causal or checkerboard) then applies
        new["context.context_prediction.weight"] = new["context.context_prediction.weight"] * causal.to(torch.float32)
    q0 = nearest_rate(lambda_source, lambdas)
    for table in ("y_gain", "y_inverse", "z_gain", "z_inverse"):
        gains = own[f"gains.{table}"]
        new[f"gains.{table}"] = gains / gains[q0]  # row q0 exactly 1, the ladder's ratios kept
    model.load_state_dict(new, strict=True)
    for jct in (model.jct_1, model.jct_2):
        zero_refine(jct)
    for module in (model.h_s, model.context.context_prediction, model.context.entropy_parameters):
        exact_form(module)  # ExactnessError now, not at the first export, if the integer entropy model cannot hold it
    return Imported(q0, lambda_source, len(mapping))


def nearest_rate(lam: float, lambdas: Sequence[float]) -> int:
    """The rate index whose lambda is nearest to ``lam`` on a log scale."""
    return min(range(len(lambdas)), key=lambda i: abs(math.log(lambdas[i] / lam)))


@torch.no_grad()
def zero_refine(jct: torch.nn.Module) -> None:
    """Make a JCT the identity, out = x + refine(...) = x: in every residual block of ``refine`` the second
    convolution and the 1x1 skip are zeroed, so the first block (2C -> C, with a skip) maps anything to 0 and each
    later block (identity skip) maps 0 to 0."""
    for block in jct.refine:
        for conv in (block.conv2, block.skip):
            if conv is not None:
                conv.weight.zero_()
                conv.bias.zero_()


def init_from_compressai(model: LDMIC, source: CompressAISource, lambdas: Sequence[float],
                         progress: bool = False) -> Imported:
    """Load ``source`` and map it onto ``model`` (mvic-train's ``init_from`` for CompressAI sources)."""
    return import_compressai(model, load_source(source, progress), source.lambda_mvic, lambdas, str(source))
