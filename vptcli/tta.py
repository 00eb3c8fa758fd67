"""Test-time augmentation (TTA) over the dihedral group: the eight rotations and mirror images of an image.

Inspection images have no preferred orientation: a crack in a solar cell is a crack whichever way the
cell was photographed, and training already draws a random element of the same group (the dihedral
group D4 of the square, :mod:`vptcli.datasets`). With ``tta = "dihedral"`` a model's head input is the
mean over the eight views, so every prediction agrees with itself under rotation and mirroring. For a
linear head the mean of the features is also the mean of the logits, the usual form of TTA (Krizhevsky et
al., NeurIPS 2012, averaged ten crops; Simonyan and Zisserman, ICLR 2015, averaged flips). It costs eight
forward passes per image.

The views are made of transposes and flips of the last two axes only, so the same code runs in
PyTorch and in an exported ONNX graph (``Transpose`` and ``Slice``), and it needs a square input
(``H == W``), which every vptcli model has.
"""

from __future__ import annotations

import torch

TTA_MODES = {"none": 1, "dihedral": 8}
"""Test-time augmentation settings and the number of views each averages over."""


def tta_views(mode: str) -> int:
    """Views averaged by ``mode`` (:data:`TTA_MODES`).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return TTA_MODES[mode]


def describe_tta(mode: str) -> str:
    """``mode`` in words, with its cost, for what ``vpt train``, ``eval``, ``export`` and ``predict`` print:
    ``"none"``, the dihedral mode's 8 views, or an unknown mode (a graph from a newer vptcli) as given."""
    if mode == "dihedral":
        return f"{mode}: the mean over the 8 rotations and mirror images of each image (8x the compute)"
    return mode


def dihedral_view(images: torch.Tensor, index: int) -> torch.Tensor:
    """Element ``index`` (0..7) of the dihedral group applied to the last two axes of ``images``.

    Args:
        images: ``[..., H, W]`` with ``H == W`` when ``index >= 4`` (a transpose).
        index: bit 2 transposes, bit 0 mirrors left-right, bit 1 mirrors top-bottom; 0 is the identity,
            3 a half turn, 5 and 6 the quarter turns.

    Returns:
        a tensor of the same shape.

    Raises:
        ValueError: ``index`` outside 0..7, or a transpose of a non-square image.
    """
    if not 0 <= index < 8:
        raise ValueError(f"dihedral view index must be in 0..7, got {index}")
    if index >= 4:
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"dihedral views need square images, got {tuple(images.shape[-2:])}")
        images = images.transpose(-2, -1)
    if index & 1:
        images = images.flip(-1)
    if index & 2:
        images = images.flip(-2)
    return images


def dihedral_views(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` (``H == W``) -> ``[8 * B, C, H, W]``, view-major: row ``v * B + b`` is
    :func:`dihedral_view` ``v`` of image ``b``.

    Raises:
        ValueError: non-square images.
    """
    return torch.cat([dihedral_view(images, v) for v in range(8)])


def mean_over_views(features: torch.Tensor, views: int) -> torch.Tensor:
    """``[V * B, F]`` view-major -> ``[B, F]``, the mean over the ``V = views`` views of each image.

    Raises:
        RuntimeError: a row count that is not a multiple of ``views`` (from ``reshape``).
    """
    if views == 1:
        return features
    return features.reshape(views, -1, features.shape[-1]).mean(dim=0)
