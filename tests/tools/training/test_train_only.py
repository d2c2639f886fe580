"""optim.train_only: a run that trains some parameters only; the entropy model alone trains on the bits."""

from __future__ import annotations

import math

import pytest
import torch

from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import export_weights
from mvic.shared.model_table import spec_by_name
from mvic.tools.training.checkpoint import load_state
from mvic.shared.codec.records import RDOutput
from mvic.tools.training.train import ENTROPY_MODEL_PREFIXES, check_metric, main, param_groups, rd_loss, train_only

CONFIG = """
model: test-tiny-ar
log_every: 1
checkpoint_every: 1000
init_from: {init}
data: {{kind: synthetic, cameras: 2, frames: 2, scenes: 1, height: 64, width: 64, k_min: 1, k_max: 2}}
optim: {{batch_size: 2, crop: 64, lr: 1.0e-2, max_steps: 4, train_only: {prefixes}}}
"""


def test_only_the_named_parameters_train():
    model = LDMIC(spec_by_name("test-tiny-ar"))
    assert train_only(model, ()) is False and all(p.requires_grad for p in model.parameters())
    assert train_only(model, ("context.", "gains.")) is False  # the gains move the distortion: a full run
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("context.", "gains.")) or n.endswith("quantiles") for n in trainable)
    assert any(n.startswith("gains.") for n in trainable)
    assert train_only(model, ENTROPY_MODEL_PREFIXES) is True
    (group,) = param_groups(model, 1.0)
    assert len(group["params"]) == sum(1 for n, p in model.named_parameters()
                                       if n.startswith(ENTROPY_MODEL_PREFIXES) and not n.endswith("quantiles"))
    with pytest.raises(ValueError, match=r"\['g_s'\] name no parameter.*g_a"):
        train_only(model, ("g_s",))


def test_a_rate_only_forward_gives_the_same_bits_without_a_picture():
    torch.manual_seed(0)
    model = LDMIC(spec_by_name("test-tiny-ar")).eval()
    model.update(force=True)
    x = torch.rand(2, 2, 3, 64, 64)
    rate = torch.tensor([0, 4])
    with torch.no_grad():
        full, bits = model(x, rate), model(x, rate, synthesize=False)
    assert bits.x_hat is None and full.x_hat is not None
    assert torch.equal(full.likelihoods_y, bits.likelihoods_y) and torch.equal(full.likelihoods_z, bits.likelihoods_z)
    lambdas = torch.tensor([1.0, 2, 3, 4, 5])
    loss, bpp, mse = rd_loss(bits, x, rate, lambdas, "mse")
    assert loss == bpp and math.isnan(float(mse))  # the bits alone; no distortion is claimed
    full_loss, full_bpp, _ = rd_loss(full, x, rate, lambdas, "mse")
    assert full_bpp == bpp and full_loss > loss


def test_an_entropy_model_run_leaves_the_transforms_as_they_came(tmp_path):
    fast = LDMIC(spec_by_name("test-tiny-fast"))
    export_weights(fast, tmp_path / "fast.safetensors")
    start = {k: v.clone() for k, v in fast.state_dict().items()}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.format(init=tmp_path / "fast.safetensors", prefixes=list(ENTROPY_MODEL_PREFIXES)))
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(cfg), "--quiet"]) == 0
    after = load_state(run)
    frozen = [k for k in start if k.startswith(("g_a.", "gains.", "jct_1.", "synthesis_1.", "jct_2.", "synthesis_2."))]
    assert frozen and all(torch.equal(after[k], start[k]) for k in frozen)
    moved = [k for k in start if k.startswith(ENTROPY_MODEL_PREFIXES) and k.endswith("weight") and "mask" not in k]
    assert any(not torch.equal(after[k], start[k]) for k in moved if k in after)
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(r.split(",")[3] == "nan" for r in rows)  # loss = bpp, no mse claimed
    assert all(r.split(",")[1] == r.split(",")[2] for r in rows)


def test_the_second_context_pass_is_for_autoregressive_models_only(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    body = CONFIG.replace("init_from: {init}\n", "").format(prefixes="[context.]")
    cfg.write_text(body.replace("train_only: [context.]", "train_only: [context.], ar_two_pass: true"))
    assert main(["--run", str(tmp_path / "ar"), "--config", str(cfg), "--quiet"]) == 0
    cfg.write_text(cfg.read_text().replace("test-tiny-ar", "test-tiny-fast"))
    with pytest.raises(ValueError, match="ar_two_pass is for autoregressive models"):
        main(["--run", str(tmp_path / "fast"), "--config", str(cfg), "--quiet"])


def test_a_head_run_from_head_less_weights_trains_the_head_alone(tmp_path):
    """configs/refine-head-fast-lite.yaml's recipe: fast weights start ldmic-fast-lite-r; only its head moves, so the
    cameras' bits and every other decoder module stay the starting weights'."""
    fast = LDMIC(spec_by_name("test-tiny-fast"))
    export_weights(fast, tmp_path / "fast.safetensors")
    start = {k: v.clone() for k, v in fast.state_dict().items()}
    cfg = tmp_path / "cfg.yaml"
    body = CONFIG.replace("model: test-tiny-ar", "model: test-tiny-fast-r")
    cfg.write_text(body.format(init=tmp_path / "fast.safetensors", prefixes="[refine_head.]"))
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(cfg), "--quiet"]) == 0
    after = load_state(run)
    mask = after["context.context_prediction.mask"]  # a fresh model's masked convolution is masked at its 1st step
    start["context.context_prediction.weight"] *= mask
    same = [k for k in start if k in after and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length"))]
    assert len(same) > 100 and all(torch.equal(after[k], start[k]) for k in same)
    head = [k for k in after if k.startswith("refine_head.") and k.endswith("weight")]
    assert head and torch.count_nonzero(after[head[-1]]) > 0  # the zero output layer has learnt something
    rows = (run / "log.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(r.split(",")[3] != "nan" for r in rows)  # the distortion is the loss


def test_the_psnr_metric_is_for_runs_that_cannot_move_the_bits():
    model = LDMIC(spec_by_name("test-tiny-fast-r"))
    train_only(model, ("refine_head.",))
    check_metric(model, "psnr")  # the head alone: allowed
    train_only(model, ("refine_head.", "gains."))
    with pytest.raises(ValueError, match=r"gains\.\S+ trains and moves the bits"):
        check_metric(model, "psnr")
    check_metric(model, "mse")  # the rate term is there: anything may train
    x = torch.full((2, 1, 3, 64, 64), 0.5)
    x_hat = x + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1, 1)  # PSNR 20 and 40 dB
    out = RDOutput(x_hat, torch.full((2, 1, 24, 4, 4), 0.5), torch.full((2, 1, 16, 1, 1), 0.5))
    loss, _, _ = rd_loss(out, x, torch.tensor([0, 4]), torch.tensor([1.0, 2, 3, 4, 1000]), "psnr")
    assert abs(float(loss) + 30.0) < 1e-3  # -(20 + 40) / 2, whatever the lambdas
