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
