"""Training configuration: frozen dataclasses loaded from YAML by one function; unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mvic.shared.config import build, read_yaml
from mvic.shared.model_table import DEFAULT_MODEL


@dataclass(frozen=True)
class DataConfig:
    kind: str = "synthetic"  # synthetic | folder | photos | wildtrack | wildtrack-subsets | instereo2k | cityscapes
    root: str = ""  # dataset root (folder: root/<camera>/<frame>.png; photos: the mvic-corpus folder)
    split: str = "train"  # wildtrack / instereo2k / cityscapes split
    cameras: int = 7  # synthetic: cameras per scene
    frames: int = 200  # synthetic: timestamps per scene
    scenes: int = 4  # synthetic: scenes (seeds seed .. seed+scenes-1)
    textures: str = ""  # synthetic: photographs to texture the scene with (e.g. corpus/photos)
    height: int = 270  # synthetic: view size
    width: int = 480
    k_min: int = 1  # views per training group, drawn per batch
    k_max: int = 7
    weight: float = 1.0  # share of batches drawn from this source when several are mixed


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 4  # groups per batch
    crop: int = 256  # square crop, multiple of 64, shared by the views of a group
    lr: float = 1e-4
    aux_lr: float = 1e-3
    lr_milestones: tuple[int, ...] = ()  # steps at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.5
    lr_time_fractions: tuple[float, ...] = ()  # with --max-minutes: lr *= lr_gamma once these shares have passed
    clip: float = 1.0  # gradient norm clipping
    max_steps: int = 100_000
    metric: str = "mse"  # mse | ms-ssim (lambda_ms-ssim = lambda_mse / 32: 8..128 as in the paper) | psnr (decoder-
    # only runs: -PSNR per group, no lambda, as the bits cannot move; train.check_metric)
    amp: str = "off"  # off | bf16 | auto (bf16 on CUDA and on CPUs with AMX/AVX-512-BF16); entropy model in float32
    # convolutions in channels-last memory format: off | on | auto (on CUDA and on CPUs with AVX-512, where it was
    # measured faster; not on AVX2-only CPUs, where it was measured slower: benchmarks/results-train-speed-cpu.md)
    channels_last: str = "off"
    workers: int = 0  # DataLoader processes preparing batches (0: in the training process)
    gain_lr_scale: float = 1.0  # the rate gains' lr over the others' (set at a run's start: it adds a param group)
    lambdas: tuple[float, ...] = ()  # the rate points' lambdas, lowest rate first (empty: the model table's)
    # the ladder a weights-file init_from was trained at; its gains are moved to ``lambdas`` (a run or pieces folder
    # says its own, and a resumed run its checkpoint's)
    init_lambdas: tuple[float, ...] = ()
    ema: float = 0.0  # decay of the weights' moving average that checkpoints keep and exports use (0: off)
    # parameter-name prefixes that train (empty: all); the rest stay as init_from left them. Prefixes within the
    # entropy model only (ENTROPY_MODEL_PREFIXES in train.py) make a rate-only run that skips the synthesis
    train_only: tuple[str, ...] = ()
    # autoregressive models: the context's second training pass on the latent rounded around the first pass's means
    ar_two_pass: bool = False
    # rate indexes that train (empty: all, one drawn per group), e.g. [4]: the top lambda alone (a first stage)
    rates: tuple[int, ...] = ()
    # parameter-name prefixes that do not train (e.g. [jct_1., jct_2.]: the JCTs kept as jct_identity made them)
    frozen: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    model: str = DEFAULT_MODEL
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # steps between checkpoints
    checkpoint_minutes: float = 0.0  # and at most this much wall time between them (0: by steps only)
    # start a new run from these weights: .safetensors, a folder of pieces from --export-pieces, or a CompressAI
    # single-image model (compressai:mbt2018:<quality>[:ms-ssim][=<file.pth.tar>], or a zoo-named .pth.tar file)
    init_from: str = ""
    # a new run starts with both JCTs as the identity (out = x, their refine branch's last convolutions zeroed), so
    # joint decoding starts exactly at separate decoding; training moves them unless optim.frozen names them
    jct_identity: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    extra_data: tuple[DataConfig, ...] = ()  # further sources mixed in by weight (one source per batch)
    optim: OptimConfig = field(default_factory=OptimConfig)


def load_config(path: str | Path | None) -> RunConfig:
    return build(RunConfig, read_yaml(path))

