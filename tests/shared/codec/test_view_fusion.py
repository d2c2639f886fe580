"""The joint decoder's view fusion: views that show the same content lend each other detail; others are left alone."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mvic.shared.codec.images import psnr
from mvic.shared.codec.view_fusion import NO_FUSION, FusionOptions, fuse_views
from mvic.shared.scene import Scene, SceneConfig


def _texture(seed: int, h: int = 224, w: int = 288) -> np.ndarray:
    """A photo-like texture: noise at several scales, (h, w, 3) float32 in 0..255."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w, 3), np.float32)
    for sigma, amp in ((12, 60), (4, 30), (1.5, 15)):
        out += amp * cv2.GaussianBlur(rng.standard_normal((h, w, 3)).astype(np.float32), (0, 0), sigma) * sigma
    return np.clip(128 + out, 0, 255)


def _coded(clean: np.ndarray, seed: int, noise: float = 6.0) -> np.ndarray:
    """A stand-in for a decoded view: the clean view with independent coding noise."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(clean + rng.normal(0, noise, clean.shape)), 0, 255).astype(np.uint8)


def _pair(shift=(9, 4), gain: float = 1.0, size=(192, 256)):
    """Two views of one scene seen from places ``shift`` pixels apart, the second with another exposure."""
    h, w = size
    scene = _texture(0)
    dx, dy = shift
    a = scene[:h, :w]
    b = np.clip(scene[dy:dy + h, dx:dx + w] * gain, 0, 255)
    return [np.rint(a).astype(np.uint8), np.rint(b).astype(np.uint8)]


def test_two_views_of_one_scene_both_come_out_closer_to_the_truth():
    clean = _pair()
    coded = [_coded(c, seed=i) for i, c in enumerate(clean)]
    fused = fuse_views(coded, [0.3, 0.3])
    for c, before, after in zip(clean, coded, fused):
        assert psnr(after, c) > psnr(before, c) + 1.5  # two independent codings of most pixels averaged


def test_exposure_differences_are_matched_not_averaged_in():
    clean = _pair(gain=1.15)
    coded = [_coded(c, seed=i) for i, c in enumerate(clean)]
    fused = fuse_views(coded, [0.3, 0.3])
    for before, after in zip(coded, fused):
        assert abs(float(after.mean()) - float(before.mean())) < 1.0  # each view keeps its own exposure
    assert psnr(fused[1], clean[1]) > psnr(coded[1], clean[1]) + 1.0


class _Shift:
    """A given alignment: every pixel of view i lies ``shift`` pixels further along in view j (and back)."""

    def __init__(self, shift, size):
        self.shift, self.size = np.float32(shift), size

    def pair(self, i: int, j: int) -> np.ndarray:
        sign = 1 if i < j else -1
        return np.broadcast_to(sign * self.shift, (*self.size, 2)).astype(np.float32)


def test_a_given_alignment_replaces_the_estimated_one():
    clean = _pair(shift=(9, 4))
    coded = [_coded(c, seed=i) for i, c in enumerate(clean)]
    # view 0's pixel (x, y) is view 1's (x - 9, y - 4)
    true = fuse_views(coded, [0.3, 0.3], alignment=_Shift((-9, -4), (192, 256)))
    assert all(psnr(a, c) > psnr(b, c) + 1.5 for a, b, c in zip(true, coded, clean))
    wrong = fuse_views(coded, [0.3, 0.3], alignment=_Shift((40, 0), (192, 256)))  # the flows would have found it
    assert all(np.abs(a.astype(np.int16) - b).mean() < 0.3 for a, b in zip(wrong, coded))


def _plaza():
    """Two neighbouring cameras of a rendered plaza (wide baseline), JPEG-coded as stand-ins for decoded views;
    their rig, and which pixels show the ground."""
    scene = Scene(SceneConfig(seed=0, cameras=4, height=192, width=320))
    clean = list(scene.render(0)[1:3])
    coded = [cv2.imdecode(cv2.imencode(".jpg", v, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], cv2.IMREAD_COLOR) for v in clean]
    ground = [np.isin(scene.surfaces(0, c)[1], [1, 2]) for c in (1, 2)]
    return clean, coded, scene.rig(), ground


def _ground_psnr(images, clean, ground) -> list[float]:
    return [psnr(im[g], c[g]) for im, c, g in zip(images, clean, ground)]


def test_a_calibrated_pair_aligns_its_ground_where_the_features_cannot():
    clean, coded, rig, ground = _plaza()
    before = _ground_psnr(coded, clean, ground)
    estimated = _ground_psnr(fuse_views(coded, [0.5, 0.5]), clean, ground)
    calibrated = _ground_psnr(fuse_views(coded, [0.5, 0.5], ground=[rig.ground(c, 192, 320) for c in ("C2", "C3")]),
                              clean, ground)
    assert all(abs(e - b) < 0.1 for e, b in zip(estimated, before))  # the feature homography finds no ground
    assert all(c > b + 0.3 for c, b in zip(calibrated, before))


def test_a_wrong_or_partial_calibration_lends_nothing_and_harms_nothing():
    clean, coded, rig, ground = _plaza()
    estimated = fuse_views(coded, [0.5, 0.5])
    swapped = fuse_views(coded, [0.5, 0.5], ground=[rig.ground(c, 192, 320) for c in ("C3", "C2")])
    for s, e, c, g in zip(swapped, estimated, clean, ground):
        assert abs(psnr(s[g], c[g]) - psnr(e[g], c[g])) < 0.05
    one = fuse_views(coded, [0.5, 0.5], ground=[rig.ground("C2", 192, 320), None])  # one camera uncalibrated
    assert all(np.array_equal(a, b) for a, b in zip(one, estimated))


def test_views_of_different_scenes_come_out_as_they_went_in():
    coded = [_coded(_texture(1)[:192, :256], seed=0), _coded(_texture(2)[:192, :256], seed=1)]
    fused = fuse_views(coded, [0.3, 0.3])
    for before, after in zip(coded, fused):
        change = np.abs(after.astype(np.int16) - before.astype(np.int16))
        assert change.mean() < 0.3 and psnr(after, before) > 40


def test_a_lone_view_and_fusion_off_leave_the_images_untouched():
    coded = [_coded(c, seed=i) for i, c in enumerate(_pair())]
    assert fuse_views(coded[:1], [0.3])[0] is coded[0]
    assert all(a is b for a, b in zip(fuse_views(coded, [0.3, 0.3], NO_FUSION), coded))


def test_the_same_views_fuse_to_the_same_pixels():
    coded = [_coded(c, seed=i) for i, c in enumerate(_pair())]
    first, second = fuse_views(coded, [0.2, 0.5]), fuse_views(coded, [0.2, 0.5])
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_large_views_estimate_flow_at_a_reduced_size_and_still_gain():
    clean = _pair(shift=(14, 6))
    coded = [_coded(c, seed=i) for i, c in enumerate(clean)]
    fused = fuse_views(coded, [0.3, 0.3], FusionOptions(max_side=96))
    assert psnr(fused[0], clean[0]) > psnr(coded[0], clean[0]) + 1.0


def test_a_higher_rate_trusts_a_partner_less():
    """The threshold follows the view's bits: the same disagreement counts for more at a high rate."""
    clean = _pair()
    coded = [_coded(c, seed=i, noise=10.0) for i, c in enumerate(clean)]
    low, high = fuse_views(coded, [0.1, 0.1]), fuse_views(coded, [20.0, 20.0])
    moved = [np.abs(f[0].astype(np.int16) - coded[0].astype(np.int16)).mean() for f in (low, high)]
    assert moved[1] < 0.5 * moved[0]


def test_bad_input_is_refused_with_what_was_wrong():
    a = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="one size"):
        fuse_views([a, np.zeros((64, 80, 3), np.uint8)], [0.1, 0.1])
    with pytest.raises(ValueError, match="uint8"):
        fuse_views([a, a.astype(np.float32)], [0.1, 0.1])
    with pytest.raises(ValueError, match="ground needs one"):
        fuse_views([a, a], [0.1, 0.1], ground=[np.eye(3)])
    with pytest.raises(ValueError, match="ground needs one"):
        fuse_views([a, a], [0.1, 0.1], ground=[np.eye(3), np.eye(2)])
    with pytest.raises(ValueError, match="ground needs one"):
        fuse_views([a, a], [0.1, 0.1], ground=[np.eye(3), np.full((3, 3), np.nan)])
    with pytest.raises(ValueError, match="2 images but 1 rates"):
        fuse_views([a, a], [0.1])
    with pytest.raises(ValueError, match="window=0"):
        FusionOptions(window=0)


def test_the_joint_decoder_fuses_each_group_by_its_views_own_rates(codec_pair):
    """decompress = synthesis, then fuse_views with each view's coded bits per pixel; a lone view is never fused."""
    enc, dec = codec_pair
    clean = _pair(size=(128, 192))
    views = [enc.compress_view(im, q, camera_id=f"C{i}") for i, (im, q) in enumerate(zip(clean, (1, 3)))]
    plain = dec.decompress(views, fusion=NO_FUSION)
    bpp = [8 * v.payload_bytes / (128 * 192) for v in views]
    expected = fuse_views([d.image for d in plain], bpp)
    assert all(np.array_equal(d.image, e) for d, e in zip(dec.decompress(views), expected))
    assert np.array_equal(dec.decompress(views[:1])[0].image, dec.decompress(views[:1], fusion=NO_FUSION)[0].image)


def test_the_joint_decoder_finds_each_views_calibration_by_its_camera_id(codec_pair, fusion_grounds):
    enc, dec = codec_pair
    clean, _, rig, _ = _plaza()
    views = [enc.compress_view(clean[1], 2, camera_id="C3"), enc.compress_view(clean[0], 2, camera_id="C2"),
             enc.compress_view(clean[0], 2, camera_id="C9")]  # C9: not in the rig
    given = fusion_grounds
    dec.decompress(views, fusion=FusionOptions(rig=rig))
    assert [None if g is None else g.tolist() for g in given[0]] == [
        rig.ground("C3", 192, 320).tolist(), rig.ground("C2", 192, 320).tolist(), None]
    dec.decompress(views)
    assert given[1] is None  # no rig, no ground


def test_views_of_one_padded_size_but_different_sizes_decode_together(codec_pair):
    enc, dec = codec_pair
    clean = _pair(size=(128, 192))
    views = [enc.compress_view(clean[0][:120, :180], 2, camera_id="C1"),
             enc.compress_view(clean[1], 2, camera_id="C2")]
    decoded = dec.decompress(views)
    assert [d.image.shape for d in decoded] == [(120, 180, 3), (128, 192, 3)]
