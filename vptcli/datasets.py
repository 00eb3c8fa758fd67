"""Torch datasets over a manifest split, with the backbone's preprocessing.

Preprocessing comes from the data config stored with the model (image size, interpolation and the
*resize policy*); tensors come out as ``[3, H, W]`` float RGB in ``[0, 1]``; the model normalises (see
:class:`vptcli.prompting.PromptedViT`). Resize policies (``vpt train --resize``), stored in the data
config's timm ``crop_mode`` (so in the prompt file and the ONNX metadata) and used alike by train, eval
and predict:

- ``squash`` (default, ``crop_mode="squash"``, ``crop_pct=1``): the whole image resized to the model
  input, aspect ratio not kept. Every pixel of a 4×8000 line-scan strip reaches the model.
- ``letterbox`` (``crop_mode="border"``, ``crop_pct=1``): the whole image resized on its long side,
  aspect ratio kept, padded to a square with the normalisation mean (what the model sees as 0).
- ``crop`` (``crop_mode="center"``, the backbone's ``crop_pct``): timm's ImageNet evaluation: short
  side resized, centre cropped; the ends of elongated images are cut away (ImageNet-style, the
  behaviour of prompt files made before the option existed).

No policy builds a large intermediate image: squash and letterbox resize straight to the model input,
and ``crop`` first cuts an image longer than 2:1 to its central square (the only part the centre crop
can use), so a 2×20000 strip never becomes a 224×2,240,000 intermediate.

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

RESIZE_POLICIES = ("squash", "letterbox", "crop")
"""How an image becomes the square model input (see the module docstring)."""

DEFAULT_RESIZE = "squash"
"""The resize policy of ``vpt train`` unless ``--resize`` says otherwise: keeps the whole image."""

CROP_MODE_OF = {"squash": "squash", "letterbox": "border", "crop": "center"}
"""Resize policy -> timm ``crop_mode`` stored in the data config."""

PRECROP_ASPECT = 2.0
"""``crop`` policy: images longer than this aspect ratio are first cut to their central square."""

_PIL_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING,
}


AUTO_IMG_SIZE_CAP = 2.0
"""``--img-size auto`` never exceeds this multiple of the backbone's default side (memory and time grow
with the square of the side)."""


def auto_img_size(manifest: Manifest, patch: int, default: int, cap: float = AUTO_IMG_SIZE_CAP) -> int:
    """An input side that fits the training images: their median side (the median over images of
    ``(width + height) / 2``), rounded up to a multiple of ``patch`` (so the images are not shrunk: thin
    defects keep their pixels), between ``patch * 4`` and ``cap * default``. ELPV's 300x300 cells
    give 308 with DINOv2's 14 px patches.

    Raises:
        VptError: the manifest has no usable training image with a recorded size.
    """
    from vptcli.errors import VptError

    sides = [(r.width + r.height) / 2 for r in manifest.usable("train") if r.width and r.height]
    if not sides:
        raise VptError("--img-size auto needs the training images' sizes; re-run `vpt ingest`")
    side = int(np.ceil(float(np.median(sides)) / patch)) * patch
    return int(min(max(side, 4 * patch), int(cap * default) // patch * patch))


def resize_policy(data_config: dict) -> str:
    """The resize policy (:data:`RESIZE_POLICIES`) of a data config, from its ``crop_mode``."""
    mode = data_config.get("crop_mode") or "center"
    return {"squash": "squash", "border": "letterbox"}.get(mode, "crop")


def with_resize(data_config: dict, policy: str) -> dict:
    """A copy of ``data_config`` set to the resize ``policy``: ``crop_mode`` from
    :data:`CROP_MODE_OF`, ``crop_pct`` 1.0 for ``squash``/``letterbox`` (the whole image), kept for
    ``crop``.

    Raises:
        VptError: an unknown policy.
    """
    from vptcli.errors import VptError

    if policy not in RESIZE_POLICIES:
        raise VptError(f"--resize must be one of {', '.join(RESIZE_POLICIES)}, got {policy!r}")
    out = dict(data_config)
    out["crop_mode"] = CROP_MODE_OF[policy]
    if policy != "crop":
        out["crop_pct"] = 1.0
    return out


def eval_transform(data_config: dict) -> Callable[[np.ndarray], torch.Tensor]:
    """The evaluation preprocessing of a model, as a function of a decoded image.

    Args:
        data_config: timm data config (``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``,
            ``mean`` for the letterbox fill); the resize policy is :func:`resize_policy` of it.

    Returns:
        ``f(pixels [H, W, 3] uint8) -> [3, h, w]`` float32 in ``[0, 1]`` (no normalisation).
    """
    from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype

    size = tuple(int(v) for v in data_config["input_size"][-2:])
    interpolation = data_config.get("interpolation", "bicubic")
    policy = resize_policy(data_config)
    crop_pct = float(data_config.get("crop_pct") or 1.0)
    if policy in ("squash", "letterbox") and crop_pct == 1.0:
        resample = _PIL_RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)
        fill = tuple(round(255 * float(m)) for m in data_config.get("mean", (0.485, 0.456, 0.406)))
        th, tw = size

        def apply(pixels: np.ndarray) -> torch.Tensor:
            im = Image.fromarray(pixels, mode="RGB")
            if policy == "squash":
                im = im.resize((tw, th), resample)
            else:
                scale = min(tw / im.width, th / im.height)
                w, h = max(1, min(tw, round(im.width * scale))), max(1, min(th, round(im.height * scale)))
                canvas = Image.new("RGB", (tw, th), fill)
                canvas.paste(im.resize((w, h), resample), ((tw - w) // 2, (th - h) // 2))
                im = canvas
            return to_dtype(pil_to_tensor(im), torch.float32, scale=True)

        return apply

    from timm.data.transforms_factory import transforms_imagenet_eval

    tf = transforms_imagenet_eval(
        img_size=size,
        crop_pct=data_config.get("crop_pct"),
        crop_mode=data_config.get("crop_mode"),
        interpolation=interpolation,
        normalize=False,
    )
    precrop = policy == "crop"

    def apply_timm(pixels: np.ndarray) -> torch.Tensor:
        if precrop:
            pixels = _central_square(pixels)
        # timm's eval transform without normalisation ends in PIL -> uint8 tensor; scale to [0, 1].
        return to_dtype(tf(Image.fromarray(pixels, mode="RGB")), torch.float32, scale=True)

    return apply_timm


def _central_square(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` longer than :data:`PRECROP_ASPECT`:1 -> its central ``min(H, W)`` square (all that
    a centre crop after a short-side resize uses), so no huge intermediate is made; else unchanged."""
    h, w = pixels.shape[:2]
    short, long_ = min(h, w), max(h, w)
    if long_ <= PRECROP_ASPECT * short:
        return pixels
    if w > h:
        x = (w - short) // 2
        return np.ascontiguousarray(pixels[:, x : x + short])
    y = (h - short) // 2
    return np.ascontiguousarray(pixels[y : y + short])


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
        records: the images to use instead of ``manifest.usable(split)`` (evaluation picks them).
        classes: the class names whose index is an image's label (default: the manifest's; a model's
            classes when a held-out folder holds only some of them).

    Raises:
        vptcli.images.ImageDecodeError: a file can no longer be decoded (names the file).
    """

    def __init__(self, manifest: Manifest, split: str | None, data_config: dict, *, augment: bool = False, seed: int = 0,
                 records: list | None = None, classes: list[str] | None = None):
        self.manifest = manifest
        self.records = manifest.usable(split) if records is None else list(records)
        self.labels = ([manifest.label_index(r.label) for r in self.records] if classes is None
                       else [list(classes).index(r.label) for r in self.records])
        self.data_config = dict(data_config)
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
