"""Preprocessing and augmentation of decoded images."""

from __future__ import annotations

import numpy as np
import torch

from vptcli.datasets import augment_pixels, eval_transform, jitter, sample_rng

CONFIG = {"input_size": (3, 28, 28), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}


def test_eval_transform_gives_float_rgb_in_unit_range():
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[..., 0] = 255  # pure red
    out = eval_transform(CONFIG)(pixels)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 28, 28)
    assert torch.allclose(out[0], torch.ones(28, 28)) and out[1:].abs().max() == 0


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    pixels = np.zeros((28, 56, 3), dtype=np.uint8)
    pixels[:, :14] = 255  # only the left quarter is white: cropped away by the centre crop
    out = eval_transform(CONFIG)(pixels)
    assert out.max() <= 1e-6


def test_augmentation_is_a_dihedral_transform_and_reproducible():
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    outs = {augment_pixels(pixels, sample_rng(0, 0, i)).tobytes() for i in range(64)}
    dihedral = set()
    for k in range(4):
        r = np.rot90(pixels, k)
        dihedral |= {np.ascontiguousarray(r).tobytes(), np.ascontiguousarray(r[:, ::-1]).tobytes()}
    assert outs <= dihedral and len(outs) == 8
    a = augment_pixels(pixels, sample_rng(3, 1, 5))
    assert np.array_equal(a, augment_pixels(pixels, sample_rng(3, 1, 5)))


def test_jitter_is_light():
    img = torch.full((3, 8, 8), 0.5)
    out = jitter(img, sample_rng(0, 0, 0))
    assert (out - img).abs().max() <= 0.5 * 0.1 * 2 + 1e-6
    assert out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------------------------------
# resize policies: the whole product is seen


def strip(h: int, w: int, defect_at_end: bool) -> np.ndarray:
    """A grey line-scan strip, optionally with a bright defect in its last 2 % of length."""
    pixels = np.full((h, w, 3), 90, dtype=np.uint8)
    if defect_at_end:
        pixels[:, int(w * 0.98) :] = 250
    return pixels


def test_defect_at_the_end_of_a_strip_reaches_the_model_unless_cropped():
    from vptcli.datasets import with_resize

    for policy, visible in (("squash", True), ("letterbox", True), ("crop", False)):
        tf = eval_transform(with_resize(CONFIG, policy))
        plain, defect = tf(strip(4, 8000, False)), tf(strip(4, 8000, True))
        assert tuple(plain.shape) == (3, 28, 28)
        assert (not torch.equal(plain, defect)) == visible, policy


def test_no_policy_builds_a_huge_intermediate(monkeypatch):
    from PIL import Image

    from vptcli.datasets import RESIZE_POLICIES, with_resize

    sizes = []
    real_resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    for policy in RESIZE_POLICIES:
        sizes.clear()
        out = eval_transform(with_resize(CONFIG, policy))(strip(2, 20000, True))
        assert tuple(out.shape) == (3, 28, 28)
        assert sizes and max(max(s) for s in sizes) <= 2 * 28, (policy, sizes)


def test_letterbox_keeps_proportions_and_pads_with_the_mean():
    from vptcli.datasets import with_resize

    cfg = with_resize({**CONFIG, "mean": (0.5, 0.5, 0.5)}, "letterbox")
    pixels = np.full((10, 40, 3), 255, dtype=np.uint8)  # 4:1 white -> 28 × 7 band, the rest padding
    out = eval_transform(cfg)(pixels)
    rows_white = int((out[0].min(dim=1).values > 0.99).sum())
    assert rows_white == 7
    assert torch.allclose(out[:, 0, 0], torch.full((3,), 128 / 255))


def test_crop_policy_matches_timm_for_ordinary_images_and_policies_round_trip():
    from PIL import Image
    from timm.data.transforms_factory import transforms_imagenet_eval

    from vptcli.datasets import RESIZE_POLICIES, resize_policy, with_resize
    from vptcli.errors import VptError

    cfg = {**CONFIG, "crop_pct": 0.875}
    pixels = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    tf = transforms_imagenet_eval(img_size=(28, 28), crop_pct=0.875, crop_mode="center", interpolation="bicubic",
                                  normalize=False)
    expected = tf(Image.fromarray(pixels)).float() / 255  # as for prompt files made before --resize
    assert torch.allclose(eval_transform(cfg)(pixels), expected)
    for policy in RESIZE_POLICIES:
        assert resize_policy(with_resize(cfg, policy)) == policy
    assert with_resize(cfg, "crop")["crop_pct"] == 0.875 and with_resize(cfg, "squash")["crop_pct"] == 1.0
    try:
        with_resize(cfg, "stretch")
    except VptError as exc:
        assert "squash, letterbox, crop" in str(exc)
    else:
        raise AssertionError("an unknown policy must be refused")
