"""mvic-train on tiny data: config checks, joint augmentation, a short run whose distortion falls, resume, export."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from mvic.shared.codec.registry import load_model, sha256_of
from mvic.tools.training.config import load_config
from mvic.tools.training.data import FolderGroups, GroupBatcher
from mvic.tools.training.train import main

CONFIG = """
model: test-tiny-fast
log_every: 1
checkpoint_every: 1000
data: {kind: synthetic, cameras: 3, frames: 3, scenes: 1, height: 96, width: 128, k_min: 1, k_max: 3}
optim: {batch_size: 2, crop: 64, lr: 1.0e-3, max_steps: 40}
"""


def _rows(run):
    with open(run / "log.csv") as f:
        return list(csv.DictReader(f))


def _short_run(tmp_path, steps):
    """(config file, run folder) of a finished run of ``steps`` steps of CONFIG."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("max_steps: 40", f"max_steps: {steps}"))
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(cfg), "--quiet"]) == 0
    return cfg, run


def test_unknown_keys_are_rejected_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {batch_sise: 3}\n")
    with pytest.raises(ValueError, match="optim.batch_sise"):
        load_config(bad)
    assert main(["--run", str(tmp_path / "r"), "--config", str(bad), "--validate-config"]) == 2


def test_views_of_a_group_share_crop_and_flips(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    for cam in ("A", "B", "C"):
        (tmp_path / cam).mkdir()
        for f in range(3):
            cv2.imwrite(str(tmp_path / cam / f"{f:04d}.png"), base)
    (tmp_path / "C" / "extra.png").write_bytes(b"")  # a frame not every camera has is ignored
    source = FolderGroups(tmp_path)
    assert source.cameras == ["A", "B", "C"] and len(source) == 3
    batcher = GroupBatcher(source, batch_size=4, crop=64, k_min=1, k_max=3, num_rates=5, seed=1)
    ks = set()
    for _ in range(10):
        batch = batcher.next()
        b, k = batch.images.shape[:2]
        ks.add(k)
        assert batch.images.shape[2:] == (3, 64, 64) and batch.rate.max() < 5
        for i in range(1, k):  # identical cameras: identical crops only if window and flips are shared
            assert torch.equal(batch.images[:, 0], batch.images[:, i])
    assert 1 in ks and len(ks) > 1


def test_short_run_learns_resumes_and_exports(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    run = tmp_path / "run"
    assert main(["--run", str(run), "--config", str(cfg)]) == 0
    rows = _rows(run)
    mse = [float(r["mse"]) for r in rows]
    assert len(rows) == 40
    assert np.mean(mse[-10:]) < 0.5 * np.mean(mse[:3])  # the distortion falls
    cfg.write_text(CONFIG.replace("max_steps: 40", "max_steps: 45"))
    assert main(["--run", str(run), "--config", str(cfg)]) == 0
    assert [int(r["step"]) for r in _rows(run)][-6:] == [40, 41, 42, 43, 44, 45]  # resumed, not restarted
    weights = tmp_path / "w.safetensors"
    assert main(["--run", str(run), "--export", str(weights)]) == 0
    record = json.loads((tmp_path / "w.safetensors.record.json").read_text())
    assert record["sha256"] == sha256_of(weights) and record["model"] == "test-tiny-fast" and "step 45" in record["recipe"]
    model = load_model(weights)
    view = model.compress_view(np.zeros((64, 64, 3), np.uint8), 2)
    assert model.decompress([view])[0].image.shape == (64, 64, 3)


def test_weights_travel_in_pieces_and_start_a_new_run(tmp_path):
    _, run = _short_run(tmp_path, 2)
    pieces = tmp_path / "pieces"
    assert main(["--run", str(run), "--export-pieces", str(pieces), "--piece-mib", "0.25"]) == 0
    files = sorted(pieces.glob("piece-*.safetensors"))
    assert len(files) > 2 and all(f.stat().st_size <= 0.25 * 2**20 for f in files)
    direct, joined = tmp_path / "direct.safetensors", tmp_path / "joined.safetensors"
    assert main(["--run", str(run), "--export", str(direct)]) == 0
    assert main(["--run", str(pieces), "--export", str(joined)]) == 0
    assert direct.read_bytes() == joined.read_bytes()  # the pieces hold exactly the run's weights
    record = json.loads((tmp_path / "joined.safetensors.record.json").read_text())
    assert "step 2" in record["recipe"] and "test-tiny-fast" in record["recipe"]  # the pieces carry step and config
    # a new run of the autoregressive sibling starts from them (all but the context mask pattern carries over)
    cfg2 = tmp_path / "ar.yaml"
    cfg2.write_text(CONFIG.replace("test-tiny-fast", "test-tiny-ar").replace("max_steps: 40", "max_steps: 1")
                    + f"init_from: {pieces}\n")
    assert main(["--run", str(tmp_path / "ar"), "--config", str(cfg2), "--quiet"]) == 0


def test_a_branch_starts_from_a_run_at_the_lr_and_steps_given_on_the_command_line(tmp_path):
    cfg, run = _short_run(tmp_path, 3)
    branch = tmp_path / "branch"
    for bad in (["--lr", "0"], ["--lr", "nan"], ["--max-steps", "0"]):  # refused before anything is made
        assert main(["--run", str(branch), "--config", str(cfg), "--init-from", str(run), *bad]) == 2
        assert not branch.exists()
    args = ["--run", str(branch), "--config", str(cfg), "--init-from", str(run), "--lr", "1e-5", "--quiet"]
    assert main([*args, "--max-steps", "2"]) == 0
    assert [(r["step"], float(r["lr"])) for r in _rows(branch)] == [("1", 1e-5), ("2", 1e-5)]
    assert main([*args, "--max-steps", "4"]) == 0  # resumed to the new end, still at the branch's lr
    assert [(r["step"], float(r["lr"])) for r in _rows(branch)][-2:] == [("3", 1e-5), ("4", 1e-5)]
    assert [r["lr"] for r in _rows(run)] == ["0.001"] * 3  # the run it started from is untouched


def test_sources_mix_by_weight_and_glob_many_scene_folders(tmp_path):
    from mvic.shared.scene import SceneConfig, write_scene
    from mvic.tools.training.config import DataConfig, RunConfig
    from mvic.tools.training.train import make_batches

    for seed in (0, 1):
        write_scene(SceneConfig(seed=seed, cameras=2, height=64, width=96), 2, tmp_path / f"s{seed}")
    cfg = RunConfig(model="test-tiny-fast",
                    data=DataConfig(kind="folder", root=str(tmp_path / "s*"), k_min=2, k_max=2, weight=1.0),
                    extra_data=(DataConfig(kind="synthetic", cameras=3, frames=2, scenes=1, height=64, width=96,
                                           k_min=3, k_max=3, weight=3.0),))
    batches = make_batches(cfg, num_rates=5, seed=0)
    ks = [next(batches).images.shape[1] for _ in range(40)]
    assert 5 <= ks.count(2) <= 18 and ks.count(2) + ks.count(3) == 40  # ~1:3, one source per batch


def test_rd_loss_mse_and_msssim_weigh_distortion_by_the_groups_lambda():
    from mvic.shared.codec.model import RDOutput
    from mvic.tools.training.train import rd_loss

    torch.manual_seed(0)
    x = torch.rand(2, 2, 3, 192, 192)  # (B, V, 3, H, W); MS-SSIM's 5 scales need > 160 px
    lik_y, lik_z = torch.full((2, 2, 4, 12, 12), 0.5), torch.full((2, 2, 4, 3, 3), 0.5)
    lambdas, rate = torch.tensor([256.0, 4096.0]), torch.tensor([0, 1])
    for metric in ("mse", "ms-ssim"):
        near = rd_loss(RDOutput((x + 0.01 * torch.randn_like(x)).clamp(0, 1), lik_y, lik_z), x, rate, lambdas, metric)
        far = rd_loss(RDOutput((x + 0.2 * torch.randn_like(x)).clamp(0, 1), lik_y, lik_z), x, rate, lambdas, metric)
        assert far[0] > near[0] > near[1] > 0  # more distortion costs more; the rate term is in the loss
        assert torch.isclose(near[1], far[1])  # same likelihoods, same bpp: (4*144 + 4*9) bits / (2 views * 192^2)
        assert abs(float(near[1]) - (4 * 144 + 4 * 9) * 2 / (2 * 192 * 192)) < 1e-6
    with pytest.raises(ValueError, match="metric"):
        rd_loss(RDOutput(x, lik_y, lik_z), x, rate, lambdas, "l1")


def test_init_from_the_other_context_model_keeps_its_own_mask(tmp_path):
    from mvic.shared.codec.model import LDMIC
    from mvic.shared.codec.registry import export_weights
    from mvic.shared.model_table import spec_by_name
    from mvic.tools.training.train import init_weights

    fast = LDMIC(spec_by_name("test-tiny-fast"))
    export_weights(fast, tmp_path / "fast.safetensors")
    ar = LDMIC(spec_by_name("test-tiny-ar"))
    causal = ar.context.context_prediction.mask.clone()
    init_weights(ar, tmp_path / "fast.safetensors")
    assert torch.equal(ar.context.context_prediction.mask, causal)  # still raster-causal, not checkerboard
    assert torch.equal(ar.g_a[0].weight, fast.g_a[0].weight)  # everything else carried over
