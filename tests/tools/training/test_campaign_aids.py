"""The convergence aids and run controls of issues 10/11: weights' average, time-based checkpoints, an absolute
stop time, the lambda ladder, bf16 on CPU and channels-last, MS-SSIM under bf16."""

from __future__ import annotations

import csv
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from mvic.shared.codec.model import LDMIC, RDOutput
from mvic.shared.model_table import spec_by_name
from mvic.tools.training import train as train_module
from mvic.tools.training.checkpoint import load_state
from mvic.tools.training.config import load_config
from mvic.tools.training.ema import WeightsEMA
from mvic.tools.training.train import main, rd_loss, training_lambdas, use_bf16, use_channels_last

CONFIG = """
model: test-tiny-fast
log_every: 1
checkpoint_every: 1000
data: {kind: synthetic, cameras: 2, frames: 2, scenes: 1, height: 64, width: 64, k_min: 1, k_max: 2}
optim: {batch_size: 2, crop: 64, lr: 1.0e-3, max_steps: 6, ema: 0.9}
"""


def _config(tmp_path, text=CONFIG):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_average_follows_the_weights_with_a_warm_up():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = WeightsEMA(model, 0.999)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()  # first update: decay min(0.999, 1/10) = 0.1, so 90 % of the way
    assert torch.allclose(ema.averaged()["weight"], start + 0.9)
    for _ in range(200):
        ema.update()
    assert torch.allclose(ema.averaged()["weight"], model.weight, atol=1e-3)
    assert ema.state_dict()["bias"] is not model.bias  # the average's own tensors
    with pytest.raises(ValueError, match="optim.ema"):
        WeightsEMA(model, 1.0)


def test_run_keeps_and_exports_the_average_and_resumes_it(tmp_path):
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(_config(tmp_path)), "--quiet"]) == 0
    tensors = load_file(str(run / "checkpoint.safetensors"))
    meta = json.loads((run / "checkpoint.json").read_text())
    assert meta["ema_updates"] == 6
    name = "g_a.0.weight"
    assert not torch.equal(tensors[f"ema/{name}"], tensors[f"model/{name}"])  # an average, not a copy
    assert torch.equal(load_state(run)[name], tensors[f"ema/{name}"])  # export, pieces and init_from read it
    # resuming restores the average with its update count
    assert main(["--run", str(run), "--config", str(_config(tmp_path, CONFIG.replace("max_steps: 6", "max_steps: 8"))),
                 "--quiet"]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["ema_updates"] == 8


def test_checkpoints_by_time_as_well_as_by_steps(tmp_path, monkeypatch):
    saved = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", lambda run_dir, step, *a, **k: (saved.append(step),
                                                                                         real(run_dir, step, *a, **k)))
    cfg = CONFIG.replace("checkpoint_every: 1000", "checkpoint_every: 1000\ncheckpoint_minutes: 0.00001")
    assert main(["--run", str(tmp_path / "run"), "--config", str(_config(tmp_path, cfg)), "--quiet"]) == 0
    assert saved[:6] == [1, 2, 3, 4, 5, 6]  # every step is "minutes" apart here; then the final checkpoint
    saved.clear()
    assert main(["--run", str(tmp_path / "run2"), "--config", str(_config(tmp_path)), "--quiet"]) == 0
    assert saved == [6]  # by steps (1000) only: just the final one


def test_stop_at_ends_the_run_at_that_moment_with_a_checkpoint(tmp_path):
    cfg = _config(tmp_path, CONFIG.replace("max_steps: 6", "max_steps: 100000"))
    run = tmp_path / "run"
    t0 = time.time()
    assert main(["--run", str(run), "--config", str(cfg), "--quiet", "--stop-at", str(t0 + 3)]) == 0
    assert time.time() - t0 < 60
    step = json.loads((run / "checkpoint.json").read_text())["step"]
    assert 0 < step < 100000
    assert main(["--run", str(run), "--config", str(cfg), "--quiet", "--stop-at", str(time.time() - 1)]) == 0
    assert json.loads((run / "checkpoint.json").read_text())["step"] == step  # a past moment: no step at all


def test_lambda_ladder_overrides_the_table_and_is_checked(tmp_path):
    cfg = load_config(_config(tmp_path, CONFIG.replace("ema: 0.9", "ema: 0.9, lambdas: [96, 206, 443, 952, 2048]")))
    assert training_lambdas(cfg, 5, (256.0,) * 5) == (96.0, 206.0, 443.0, 952.0, 2048.0)
    assert training_lambdas(load_config(_config(tmp_path)), 5, (1.0, 2.0, 3.0, 4.0, 5.0)) == (1.0, 2.0, 3.0, 4.0, 5.0)
    for bad in ("[1, 2, 3]", "[5, 4, 3, 2, 1]", "[0, 1, 2, 3, 4]"):
        bad_cfg = load_config(_config(tmp_path, CONFIG.replace("ema: 0.9", f"ema: 0.9, lambdas: {bad}")))
        with pytest.raises(ValueError, match="optim.lambdas"):
            training_lambdas(bad_cfg, 5, (1.0, 2.0, 3.0, 4.0, 5.0))


def test_amp_modes(monkeypatch):
    monkeypatch.setattr(train_module, "cpu_bf16_native", lambda: False)
    assert use_bf16("auto", "cuda:0") and use_bf16("bf16", "cpu") and not use_bf16("auto", "cpu")
    assert not use_bf16("off", "cuda")
    monkeypatch.setattr(train_module, "cpu_bf16_native", lambda: True)
    assert use_bf16("auto", "cpu")
    with pytest.raises(ValueError, match="optim.amp"):
        use_bf16("fp16", "cpu")


def test_channels_last_modes(monkeypatch):
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"avx2", "fma"})  # an AVX2-only CPU: slower there
    assert not use_channels_last("auto", "cpu") and use_channels_last("auto", "cuda:0")
    assert use_channels_last("on", "cpu") and not use_channels_last("off", "cuda")
    monkeypatch.setattr(train_module, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert use_channels_last("auto", "cpu")
    with pytest.raises(ValueError, match="optim.channels_last"):
        use_channels_last("true", "cpu")


def test_bf16_channels_last_cpu_run_trains(tmp_path):
    cfg = CONFIG.replace("ema: 0.9", "ema: 0.9, amp: bf16, channels_last: on")
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(_config(tmp_path, cfg)), "--quiet"]) == 0
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)


def test_msssim_loss_accepts_a_bf16_reconstruction():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 3, 192, 192)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    lik_y, lik_z = torch.full((1, 2, 4, 12, 12), 0.5), torch.full((1, 2, 4, 3, 3), 0.5)
    rate, lambdas = torch.tensor([0]), torch.tensor([256.0])
    full = rd_loss(RDOutput(x_hat, lik_y, lik_z), x, rate, lambdas, "ms-ssim")[0]
    half = rd_loss(RDOutput(x_hat.bfloat16(), lik_y, lik_z), x, rate, lambdas, "ms-ssim")[0]
    assert half.dtype == torch.float32 and torch.isclose(full, half, rtol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs a CUDA device")
def test_batches_pin_for_non_blocking_copies():
    from mvic.tools.training.data import Batch

    pinned = Batch(torch.rand(1, 1, 3, 8, 8), torch.zeros(1, dtype=torch.long)).pin_memory()
    assert pinned.images.is_pinned() and pinned.rate.is_pinned()


def test_average_of_a_channels_last_model_holds_the_same_values(tmp_path):
    torch.manual_seed(0)
    model = LDMIC(spec_by_name("test-tiny-fast"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = model.to(memory_format=torch.channels_last)
    ema = WeightsEMA(model, 0.9)
    assert all(torch.equal(ema.state_dict()[k], v) for k, v in state.items())


def test_latents_leave_the_analysis_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = LDMIC(spec_by_name("test-tiny-fast")).train()
    seen = {}
    model.g_a[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("y", o.dtype))
    model.h_a[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("z", o.dtype))
    model.g_a[0].register_forward_hook(lambda m, i, o: seen.__setitem__("first", o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(1, 2, 3, 64, 64), torch.tensor([1]))
    assert seen == {"first": torch.bfloat16, "y": torch.float32, "z": torch.float32}


def test_gains_can_learn_faster_than_the_rest():
    from mvic.tools.training.train import param_groups

    model = LDMIC(spec_by_name("test-tiny-fast"))
    (one,) = param_groups(model, 1.0)
    assert len(one["params"]) == sum(1 for n, _ in model.named_parameters() if not n.endswith("quantiles"))
    rest, gains = param_groups(model, 10.0)
    assert gains["lr_scale"] == 10.0 and len(gains["params"]) == 4  # y/z gains and their inverses
    assert len(rest["params"]) + 4 == len(one["params"])
    with pytest.raises(ValueError, match="gain_lr_scale"):
        param_groups(model, 0.0)


def test_run_with_scaled_gain_lr_trains_and_resumes(tmp_path):
    cfg = CONFIG.replace("ema: 0.9", "ema: 0.9, gain_lr_scale: 10")
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(_config(tmp_path, cfg)), "--quiet"]) == 0
    groups = json.loads((run / "checkpoint.json").read_text())["param_groups"]["main"]
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 10.0] and groups[1]["lr"] == pytest.approx(1e-2)
    assert main(["--run", str(run), "--config", str(_config(tmp_path, cfg.replace("max_steps: 6", "max_steps: 7"))),
                 "--quiet"]) == 0
