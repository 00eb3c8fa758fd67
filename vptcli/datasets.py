"""Torch datasets over a manifest split, with the backbone's preprocessing.

Preprocessing comes from the backbone's timm data config (resize, centre crop, interpolation) via
``timm.data.transforms_factory.transforms_imagenet_eval(normalize=False)``: tensors come out as
``[3, H, W]`` float RGB in ``[0, 1]``; the model normalises (see :class:`vptcli.prompting.PromptedViT`).

Training augmentation suited to inspection images: a random element of the dihedral group (rotations
by multiples of 90 degrees, optional horizontal flip) and light photometric jitter (brightness and
contrast, +-10 %). Every random draw comes from a generator seeded by ``(seed, key, index)``, so an
epoch (or a cached view) is reproducible without saving RNG state, and resuming is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vptcli.images import decode_image
from vptcli.manifest import Manifest, resolve_image_path

JITTER = 0.1
"""Maximum relative change of brightness and contrast in training augmentation."""


def eval_transform(data_config: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """The evaluation preprocessing of a backbone, as a function of a decoded image.

    Args:
        data_config: timm data config (``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``).

    Returns:
        ``f(pixels [H, W, 3] uint8) -> [3, h, w]`` float32 in ``[0, 1]`` (no normalisation).
    """
    from timm.data.transforms_factory import transforms_imagenet_eval

    size = tuple(data_config["input_size"][-2:])
    tf = transforms_imagenet_eval(
        img_size=size,
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
        interpolation=data_config.get("interpolation", "bicubic"),
        normalize=False,
    )

    from torchvision.transforms.v2.functional import to_dtype

    def apply(pixels: np.ndarray) -> torch.Tensor:
        # timm's eval transform without normalisation ends in PIL -> uint8 tensor; scale to [0, 1].
        return to_dtype(tf(Image.fromarray(pixels, mode="RGB")), torch.float32, scale=True)

    return apply


def augment_pixels(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random dihedral transform of ``[H, W, 3]`` uint8 pixels (8 equally likely outcomes)."""
    out = np.rot90(pixels, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def jitter(image: torch.Tensor, rng: np.random.Generator, strength: float = JITTER) -> torch.Tensor:
    """Light photometric jitter of ``[3, H, W]`` in ``[0, 1]`` (torchvision brightness/contrast)."""
    from torchvision.transforms.v2 import functional as TF

    b = 1.0 + float(rng.uniform(-strength, strength))
    c = 1.0 + float(rng.uniform(-strength, strength))
    return TF.adjust_contrast(TF.adjust_brightness(image, b), c)


def sample_rng(seed: int, key: int, index: int) -> np.random.Generator:
    """A generator for one sample's random draws, from ``(seed, key, index)`` (key = epoch or view)."""
    return np.random.default_rng([seed, key, index])


class ManifestDataset(Dataset):
    """Images of one manifest split as ``(image [3, H, W] float in [0, 1], label int)``.

    Args:
        manifest: the ingest manifest. split: 'train' | 'val' | 'test' | None (all usable images).
        data_config: the backbone's timm data config.
        augment: apply training augmentation (dihedral + jitter), drawn per ``(seed, key, index)``.
        seed: augmentation seed. The key is the epoch (:meth:`set_epoch`) or a cache view
            (:meth:`view`).

    Raises:
        vptcli.images.ImageDecodeError: a file can no longer be decoded (names the file).
    """

    def __init__(self, manifest: Manifest, split: str | None, data_config: dict, *, augment: bool = False, seed: int = 0):
        self.manifest = manifest
        self.records = manifest.usable(split)
        self.labels = [manifest.label_index(r.label) for r in self.records]
        self.transform = eval_transform(data_config)
        self.augment = augment
        self.seed = seed
        self.key = 0
        self.max_pixels = manifest.settings.get("max_pixels")
        self.bit_depth = manifest.settings.get("bit_depth")

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of this epoch."""
        self.key = epoch

    def _decode(self, index: int) -> np.ndarray:
        path = resolve_image_path(self.manifest, self.records[index])
        kwargs = {"bit_depth": self.bit_depth}
        if self.max_pixels:
            kwargs["max_pixels"] = int(self.max_pixels)
        return decode_image(path, **kwargs).pixels

    def view(self, index: int, key: int, augment: bool) -> torch.Tensor:
        """Image ``index`` under the augmentation draw ``key`` (or plain when ``augment`` is False)."""
        pixels = self._decode(index)
        if not augment:
            return self.transform(pixels)
        rng = sample_rng(self.seed, key, index)
        return jitter(self.transform(augment_pixels(pixels, rng)), rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.view(index, self.key, self.augment), self.labels[index]


def class_counts(labels: list[int], n_classes: int) -> list[int]:
    """Images per class index, ``[C]``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).tolist()
