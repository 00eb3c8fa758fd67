"""Synthetic defects with known positions: the pointing game and the randomisation check for heatmaps.

A textured background (smooth random field + fine noise, grey like an electroluminescence image) for
every image; images of the ``defect`` class also carry one dark disc at a random position. The disc's
mask is known, so a heatmap can be scored:

- pointing game (Zhang et al., ECCV 2016): a hit when the heatmap's maximum lies in the defect,
  dilated by one patch on the patch grid; chance = the dilated area / the grid area;
- model randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): re-initialise
  the tuned tensors (head, prompts) and compare the maps before and after with Spearman's rank
  correlation; a map that barely changes does not depend on what was learnt.

Used by ``tests/test_explain.py`` (tiny random ViT) and ``benchmarks/explain_pointing.py`` (DINOv2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("defect", "good")


def defect_image(rng: np.random.Generator, size: int, defect: bool, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels [size, size, 3] uint8, mask [size, size] bool)``; the mask is empty without a defect."""
    coarse = rng.random((max(2, size // 12), max(2, size // 12)))
    smooth = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255
    grey = 0.45 + 0.25 * smooth + 0.12 * rng.standard_normal((size, size))
    mask = np.zeros((size, size), dtype=bool)
    if defect:
        m = int(np.ceil(radius)) + 1
        cy, cx = rng.integers(m, size - m, size=2)
        yy, xx = np.mgrid[:size, :size]
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask = d <= radius
        grey = np.where(mask, 0.05 + 0.05 * rng.random((size, size)), grey)
    pixels = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
    return np.repeat(pixels[..., None], 3, axis=2), mask


def write_defect_set(root: str | Path, n_per_class: int, size: int, seed: int = 0, radius: float | None = None) -> dict[str, np.ndarray]:
    """Write ``root/defect/*.png`` and ``root/good/*.png``. Returns ``{relative path: mask}`` for the
    defect images (radius default: ``size / 16``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    radius = size / 16 if radius is None else radius
    masks = {}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels, mask = defect_image(rng, size, name == "defect", radius)
            rel = f"{name}/{i:03d}.png"
            Image.fromarray(pixels).save(root / rel)
            if name == "defect":
                masks[rel] = mask
    return masks


def grid_mask(mask: np.ndarray, transform, grid: tuple[int, int], dilate: int = 1) -> np.ndarray:
    """The defect on the patch grid, as the model sees it: ``mask`` ``[H, W]`` (source pixels) through
    the model's eval ``transform`` (resize, crop), then every patch it touches, dilated by ``dilate``
    patches. Returns ``[h, w]`` bool."""
    img = np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    seen = transform(img).numpy()[0] > 0.25  # [S, S]
    h, w = grid
    S = seen.shape[0]
    cells = seen.reshape(h, S // h, w, S // w).any(axis=(1, 3))
    out = cells.copy()
    for dy in range(-dilate, dilate + 1):
        for dx in range(-dilate, dilate + 1):
            out |= np.roll(np.roll(cells, dy, axis=0), dx, axis=1) & _valid_shift(h, w, dy, dx)
    return out


def _valid_shift(h: int, w: int, dy: int, dx: int) -> np.ndarray:
    """Where ``np.roll`` by ``(dy, dx)`` did not wrap around."""
    v = np.ones((h, w), dtype=bool)
    if dy > 0:
        v[:dy] = False
    elif dy < 0:
        v[dy:] = False
    if dx > 0:
        v[:, :dx] = False
    elif dx < 0:
        v[:, dx:] = False
    return v


def load_inputs(root: str | Path, masks: dict[str, np.ndarray], transform, grid: tuple[int, int]):
    """``(images [N, 3, S, S] float32, grid masks [N, h, w] bool)`` of the defect images, as the
    model sees them."""
    images, cells = [], []
    for rel, mask in sorted(masks.items()):
        pixels = np.asarray(Image.open(Path(root) / rel).convert("RGB"))
        images.append(transform(pixels).numpy())
        cells.append(grid_mask(mask, transform, grid))
    return np.stack(images).astype(np.float32), np.stack(cells)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened; scipy.stats.spearmanr). NaN for a constant map."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def randomised_copy(model, seed: int = 1234):
    """A :class:`vptcli.prompting.PromptedViT` on the same frozen backbone whose tuned tensors (head,
    prompts) are freshly initialised, as before training (Adebayo et al.'s randomisation of the
    learnt top layers)."""
    import torch

    from vptcli.prompting import PromptedViT

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rnd = PromptedViT(model.backbone, model.num_classes, model.config, tuple(model.mean.flatten().tolist()),
                          tuple(model.std.flatten().tolist()))
    return rnd.to(model.head.weight.device).eval()
