"""Starting ldmic / ldmic-fast from CompressAI's mbt2018, offline: zoo architectures with random weights.

After the mapping our networks compute what CompressAI's compute, the training likelihoods at the imported rate are
CompressAI's, real bitstreams are CompressAI-sized, the integer entropy model accepts the weights, the checkerboard
variant re-masks the context, and bad sources fail with messages that say what to do.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvic.shared.codec.fixedpoint import exact_form
from mvic.shared.codec.model import LDMIC
from mvic.shared.errors import ConfigError, WeightsError
from mvic.shared.model_table import spec_by_name
from mvic.tools.training import compressai_init as ci


def _mbt2018(quality: int, seed: int = 0):
    """CompressAI's zoo architecture (pretrained=False) with random weights scaled so that the latents, hyper
    latents and Gaussian scales have magnitudes like a trained model's (several symbols per latent, scales ~ 1)."""
    from compressai.zoo import mbt2018

    torch.manual_seed(seed)
    model = mbt2018(quality, pretrained=False)
    with torch.no_grad():
        model.g_a[6].weight.mul_(20.0)
        model.h_a[4].weight.mul_(5.0)
        model.entropy_parameters[4].bias[: model.M].add_(1.5)  # the scales half (scales come first)
    return model


def _mapped(name: str, quality: int = 4):
    cai = _mbt2018(quality)
    ours = LDMIC(spec_by_name(name))
    info = ci.import_compressai(ours, cai.state_dict(), ci.CompressAISource("mbt2018", quality).lambda_mvic,
                                ours.spec.lambdas, "mbt2018 q4 (random)")
    return cai, ours, info


@pytest.fixture(scope="module")
def ar():
    return _mapped("ldmic")


@pytest.fixture(scope="module")
def fast():
    return _mapped("ldmic-fast")


@contextlib.contextmanager
def shape_keyed_noise():
    """Uniform noise that is a function of the tensor's shape only, so two models that draw noise for tensors of
    the same shapes in another order still draw the same noise."""
    original = torch.Tensor.uniform_

    def uniform_(self, a=0.0, b=1.0, generator=None):
        g = torch.Generator().manual_seed(hash(tuple(self.shape)) % 2**31)
        return self.copy_(torch.rand(self.shape, generator=g, dtype=self.dtype) * (b - a) + a)

    torch.Tensor.uniform_ = uniform_
    try:
        yield
    finally:
        torch.Tensor.uniform_ = original


def _close(a, b, rel=1e-4):
    scale = float(a.abs().max())
    assert scale > 0 and float((a - b).abs().max()) <= rel * scale


# ------------------------------------------------------------------------------------------------- the mapping
@torch.no_grad()
def test_mapped_networks_compute_what_compressai_computes(ar):
    cai, ours, _ = ar
    x = torch.rand(2, 3, 64, 128)
    y = cai.g_a(x)  # (2, M, 4, 8)
    assert torch.equal(ours.g_a(x), y)
    _close(ours.h_a(y), cai.h_a(y))  # LeakyReLU slopes 0.0099945 vs 0.01: equal to float tolerance
    z_hat = torch.round(cai.h_a(y))
    params = cai.h_s(z_hat)
    _close(ours.h_s(z_hat), params)
    y_hat = torch.round(y)
    ctx = cai.context_prediction(y_hat)
    assert torch.equal(ours.context.context_prediction(y_hat), ctx)
    ep_in = torch.cat([params, ctx], 1)  # (2, 4M, h, w): hyper params first, then context, in both
    _close(ours.context.entropy_parameters(ep_in), cai.entropy_parameters(ep_in))
    # the synthesis halves are g_s, and both JCTs start as the identity (for one view and for several)
    two_views = y.view(1, 2, *y.shape[1:])  # (B=1, V=2, M, h, w)
    assert torch.equal(ours.jct_1(two_views), two_views)
    assert torch.equal(ours._synthesize(y, 1, 2).flatten(0, 1), cai.g_s(y))


def test_training_likelihoods_match_compressai_forward_at_the_imported_rate(ar):
    cai, ours, info = ar
    x = torch.rand(1, 3, 128, 128)
    ours.train()
    cai.train()
    cai.entropy_bottleneck.eval()  # CompressAI's h_s then sees z rounded around the medians, as ours does
    try:
        with torch.no_grad(), shape_keyed_noise():
            out = ours(x[:, None], torch.tensor([info.rate_index]))  # (B, V=1, ...)
            ref = cai(x)
            cai.entropy_bottleneck.train()
            _, lik_z = cai.entropy_bottleneck(cai.h_a(cai.g_a(x)))  # the noisy z likelihoods ours trains with
    finally:
        cai.train()
    # the same bits per element, to float tolerance (LeakyReLU slopes 0.0099945 vs 0.01)
    assert float((out.likelihoods_y[:, 0].log2() - ref["likelihoods"]["y"].log2()).abs().max()) < 1e-3
    assert float((out.likelihoods_z[:, 0].log2() - lik_z.log2()).abs().max()) < 1e-3
    assert float(-ref["likelihoods"]["y"].log2().sum()) > 1000  # real rates, not all-zero latents


@torch.no_grad()
def test_real_bitstream_is_compressai_sized(ar):
    cai, ours, info = ar
    image = (np.random.default_rng(0).random((64, 128, 3)) * 255).astype(np.uint8)
    cai.eval().update(force=True)
    ours.eval().update(force=True)
    ours.weights_hash = bytes(8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    theirs = sum(len(s[0]) for s in cai.compress(x)["strings"])
    view = ours.compress_view(image, info.rate_index)
    assert theirs > 500
    assert abs(len(view.streams[0]) - theirs) <= 0.02 * theirs + 16  # the integer entropy model: ~0.3 % apart
    assert ours.decompress([view])[0].image.shape == image.shape


@pytest.mark.parametrize("which", ["ar", "fast"])
def test_exact_integer_forms_accept_the_imported_weights(which, request):
    _, ours, info = request.getfixturevalue(which)
    for module in (ours.h_s, ours.context.entropy_parameters, ours.context.context_prediction):
        exact_form(module)  # raises ExactnessError if an accumulator could leave float64's exact integers
    ours.eval().update(force=True)
    with torch.no_grad():
        out = ours(torch.rand(1, 2, 3, 64, 64), torch.tensor([info.rate_index]))
    assert torch.isfinite(out.x_hat).all() and (out.likelihoods_y > 0).all()


def test_imported_rate_point_has_unit_gains_and_keeps_the_ladder(ar):
    _, ours, info = ar
    fresh = LDMIC(spec_by_name("ldmic")).gains
    assert info.rate_index == 2 and info.mapped > 80  # q4: lambda 0.013 * 255^2 = 845 -> 1024 of 256..4096
    for table in ("y_gain", "y_inverse", "z_gain", "z_inverse"):
        gains, own = getattr(ours.gains, table), getattr(fresh, table)
        assert torch.equal(gains[info.rate_index], torch.ones_like(gains[0]))
        assert torch.allclose(gains * own[info.rate_index], own)  # the ratios between the rate points are kept
    assert (ours.gains.y_gain[:, 0].diff() > 0).all()


def test_rate_point_nearest_the_quality_lambda():
    paper = spec_by_name("ldmic").lambdas  # 256 .. 4096
    assert [ci.nearest_rate(ci.CompressAISource("mbt2018", q).lambda_mvic, paper) for q in (1, 2, 3, 4)] == [0, 0, 1, 2]
    assert ci.nearest_rate(ci.CompressAISource("mbt2018", 4, "ms-ssim").lambda_mvic, paper) == 1  # 16.64*32 = 532


# ----------------------------------------------------------------------------------- checkerboard re-masking
@torch.no_grad()
def test_checkerboard_context_is_mbt2018s_weights_re_masked(fast):
    cai, ours, _ = fast
    conv = ours.context.context_prediction
    checkerboard = torch.zeros(5, 5)
    checkerboard[0::2, 1::2] = checkerboard[1::2, 0::2] = 1  # (i + j) odd: the anchors a non-anchor sees
    assert torch.equal(conv.mask[0, 0], checkerboard)  # our own mask, not CompressAI's causal one
    causal = cai.context_prediction.mask
    assert torch.equal(conv.weight * conv.mask, cai.context_prediction.weight * causal * checkerboard)
    kept = (causal[0, 0] * checkerboard).nonzero().tolist()
    assert kept == [[0, 1], [0, 3], [1, 0], [1, 2], [1, 4], [2, 1]]  # 6 of mbt2018's 12 taps; the rest start at 0
    # anchors ((row + col) odd) see nothing; a non-anchor sees only anchors
    y = torch.randn(1, ours.spec.m, 8, 8)
    anchor = ours.context.anchor_mask(8, 8, y.device)
    other = torch.where(anchor, y, torch.randn_like(y))  # non-anchors changed
    ctx, ctx_other = conv(y), conv(other)
    assert torch.equal(ctx[..., ~anchor], ctx_other[..., ~anchor])
    assert not torch.equal(ctx[..., anchor], ctx_other[..., anchor])
    expect = F.conv2d(y * anchor, cai.context_prediction.weight * causal * checkerboard, conv.bias, padding=2)
    assert torch.allclose(conv(y * anchor), expect, atol=1e-6)
    # everything but the context is mbt2018's, as in the autoregressive variant
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(ours.g_a(x), cai.g_a(x))
    z_hat = torch.round(cai.h_a(cai.g_a(x)))
    _close(ours.h_s(z_hat), cai.h_s(z_hat))


# ------------------------------------------------------------------------------------------------ bad sources
def test_sources_parse_and_bad_ones_say_what_to_write(tmp_path):
    assert ci.parse_source("runs/a/weights.safetensors") is None  # MVIC weights: the existing init path
    assert ci.parse_source("compressai:mbt2018:4") == ci.CompressAISource("mbt2018", 4)
    assert ci.parse_source("compressai:mbt2018:2:ms-ssim").metric == "ms-ssim"
    src = ci.parse_source("compressai:mbt2018:3=/d/any name.pth.tar")
    assert (src.quality, src.path) == (3, Path("/d/any name.pth.tar"))
    zoo = ci.parse_source(str(tmp_path / "mbt2018-ms-ssim-4-a120e037.pth.tar"))
    assert (zoo.quality, zoo.metric, zoo.path.name) == (4, "ms-ssim", "mbt2018-ms-ssim-4-a120e037.pth.tar")
    assert ci.CompressAISource("mbt2018", 4).url.endswith("/mbt2018-4-456e2af9.pth.tar")
    for bad, says in [("compressai:mbt2018", "compressai:mbt2018:<quality>"),
                      ("compressai:cheng2020-anchor:3", "mbt2018"),
                      ("compressai:mbt2018:9", "1..8"),
                      ("my-model.pth.tar", "compressai:mbt2018:<quality>")]:
        with pytest.raises(ConfigError, match="init_from") as err:
            ci.parse_source(bad)
        assert says in str(err.value)


def test_other_widths_fail_naming_the_first_mismatch():
    cai = _mbt2018(5)  # N = 192, M = 320
    ours = LDMIC(spec_by_name("ldmic-fast"))
    with pytest.raises(WeightsError, match=r"g_a\.6\.weight of shape \(320, 192, 5, 5\).*\(192, 192, 5, 5\)"):
        ci.import_compressai(ours, cai.state_dict(), 1000.0, ours.spec.lambdas, "mbt2018 q5")
    state = _mbt2018(4).state_dict()
    del state["h_s.2.bias"]
    with pytest.raises(WeightsError, match=r"lacks h_s\.2\.bias"):
        ci.import_compressai(ours, state, 1000.0, ours.spec.lambdas)


def test_local_files_with_old_key_names_and_training_checkpoints_load(tmp_path):
    state = _mbt2018(4).state_dict()
    # an old zoo file / DataParallel training checkpoint: `module.` prefixes, EntropyBottleneck's old names
    old = {"module." + k.replace("entropy_bottleneck.biases.", "entropy_bottleneck._biases."): v
           for k, v in state.items()}
    path = tmp_path / "trained.pth.tar"
    torch.save({"epoch": 3, "state_dict": old}, path)
    loaded = ci.load_source(ci.parse_source(f"compressai:mbt2018:4={path}"))
    assert set(loaded) == set(state) and torch.equal(loaded["entropy_bottleneck.biases.0"],
                                                      state["entropy_bottleneck.biases.0"])
    with pytest.raises(WeightsError, match="does not exist"):
        ci.load_source(ci.parse_source(f"compressai:mbt2018:4={tmp_path / 'missing.pth.tar'}"))


def test_offline_zoo_download_says_how_to_provide_the_file(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsError) as err:
        ci.load_source(ci.parse_source("compressai:mbt2018:4"))
    message = str(err.value)
    assert "https://compressai.s3.amazonaws.com/models/v1/mbt2018-4-456e2af9.pth.tar" in message
    assert str(tmp_path / "hub" / "checkpoints" / "mbt2018-4-456e2af9.pth.tar") in message
    assert "compressai:mbt2018:4=/path/to/mbt2018-4-456e2af9.pth.tar" in message


def test_mvic_train_rejects_a_malformed_source_before_reading_data(tmp_path, capsys):
    from mvic.tools.training.train import main as train_main

    assert train_main(["--run", str(tmp_path / "r"), "--init-from", "compressai:mbt2018", "--validate-config"]) == 2
    assert "init_from" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fine_tune_from_a_mapped_model_exports_and_evaluates(tmp_path):
    from mvic.tools.evaluation.evaluate import main as eval_main
    from mvic.tools.training.train import main as train_main

    file = tmp_path / "mbt2018-4-456e2af9.pth.tar"  # named as the zoo names it: quality and metric from the name
    torch.save(_mbt2018(4).state_dict(), file)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: ldmic-fast\nlog_every: 1\ncheckpoint_every: 1000\n"
                   f"init_from: {file}\n"
                   "data: {kind: synthetic, cameras: 2, frames: 2, scenes: 1, height: 64, width: 128, "
                   "k_min: 1, k_max: 2}\n"
                   "optim: {batch_size: 1, crop: 64, max_steps: 3}\n")
    run, weights = tmp_path / "run", tmp_path / "w.safetensors"
    assert train_main(["--run", str(run), "--config", str(cfg), "--quiet"]) == 0
    assert train_main(["--run", str(run), "--export", str(weights)]) == 0
    out = tmp_path / "eval"
    assert eval_main(["--weights", str(weights), "--data", "synthetic", "--groups", "1", "--cameras", "2",
                      "--size", "64x128", "--baselines", "-o", str(out)]) == 0
    rows = [r for r in json.loads((out / "results.json").read_text())["rows"] if r["codec"] == "mvic-joint"]
    assert [r["setting"] for r in rows] == [0, 1, 2, 3, 4]  # every rate point decodes from real bytes
    assert all(r["bpp"] > 0 and np.isfinite(r["psnr_db"]) for r in rows)
