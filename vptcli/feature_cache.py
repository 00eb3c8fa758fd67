"""Cache of the frozen computation before the first prompted block.

With late prompts (prompts only in blocks ``>= k``, see :class:`vptcli.prompting.PromptedViT`) the
hidden states entering block k depend only on the image and the frozen backbone. They are computed
once per image and *view* and reused every epoch, so later epochs run only blocks ``>= k`` forward
and backward. With augmentation on, a fixed number of augmented views per image is cached (view 0 is
the plain image, views 1.. are augmented draws keyed by the view number) and each epoch picks one
view per image: the training data is the cached views, stated in the run's config, never silently
stale. A validation cache for test-time augmentation holds the dihedral views of each image instead
(:mod:`vptcli.tta`).

The cache lives in memory for a run and, with ``cache_dir``, also on disk as one safetensors file
per key, so that later runs on the same data (other learning rates, prompts, methods with the same
k) skip the frozen computation. The key (:meth:`FeatureCache.make_key`) is a sha256 over the image
pixel hashes, the backbone identity, the image size, k, the views, the augmentation seed and the
dtype: any change gives another key, hence another file; a file whose recorded key differs is
ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vptcli.errors import VptError
from vptcli.fsutil import atomic_save_safetensors
from vptcli.tta import dihedral_view

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def estimate_bytes(n_images: int, views: int, seq_len: int, dim: int, dtype: str) -> int:
    """Memory of a cache of ``[views, n_images, seq_len, dim]`` in bytes."""
    return views * n_images * seq_len * dim * torch.empty((), dtype=DTYPES[dtype]).element_size()


@dataclass
class FeatureCache:
    """Hidden states entering block ``start_block`` for every (view, image).

    Attributes:
        hidden: ``[views, N, L, D]`` with ``L = num_prefix_tokens + num_patches`` (no prompts).
        start_block: k. key: see :meth:`key`.
    """

    hidden: torch.Tensor
    start_block: int
    key: str

    @staticmethod
    def make_key(sha256s: list[str], backbone_identity: dict, img_size: int, start_block: int, views: int, augment_seed: int,
                 dtype: str, dihedral: bool = False) -> str:
        """sha256 of everything the cached values depend on (``dihedral``: see :meth:`build`)."""
        h = hashlib.sha256()
        settings = [backbone_identity, img_size, start_block, views, augment_seed, dtype] + (["dihedral"] if dihedral else [])
        h.update(json.dumps(settings, sort_keys=True).encode())
        for s in sha256s:
            h.update(s.encode())
        return h.hexdigest()

    @staticmethod
    def final_key(key: str, dataset) -> str:
        """The key :meth:`build` stores under: ``key`` with the dataset's preprocessing (resize policy,
        interpolation) mixed in, since the cached values depend on it too."""
        dc = getattr(dataset, "data_config", None)
        if dc:
            pre = [dc.get("crop_mode"), dc.get("crop_pct"), dc.get("interpolation")]
            key = hashlib.sha256(json.dumps([key, pre]).encode()).hexdigest()
        return key

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model,
        dataset,
        *,
        start_block: int,
        views: int,
        augment: bool,
        key: str,
        dtype: str = "float32",
        batch_size: int = 32,
        device: torch.device | str = "cpu",
        progress=None,
        cache_dir: str | Path | None = None,
        dihedral: bool = False,
    ) -> FeatureCache:
        """Run the frozen part once for every image and view.

        Args:
            model: :class:`vptcli.prompting.PromptedViT`. dataset: :class:`vptcli.datasets.ManifestDataset`.
            start_block: k, cache the hidden states entering block k (``len(blocks)`` for a linear
                probe: the output of the last block, before the final norm).
            views: number of views per image (view 0 plain, then augmented views when ``augment``).
            progress: optional callable ``progress(done_images)`` for a progress bar.
            cache_dir: folder of on-disk caches; a file for ``key`` is loaded instead of computing,
                and a computed cache is saved there (atomically).
            dihedral: view ``v`` is :func:`vptcli.tta.dihedral_view` ``v`` of the plain image instead
                (``views <= 8``, ``augment`` unused): the views test-time augmentation averages.

        Raises:
            VptError: when ``views < 1``, or ``views > 8`` with ``dihedral``.
        """
        if views < 1 or (dihedral and views > 8):
            raise VptError("--cache-views must be >= 1" + (" (at most 8 dihedral views)" if dihedral else ""))
        key = cls.final_key(key, dataset)
        k = start_block
        path = Path(cache_dir) / f"{key}.safetensors" if cache_dir is not None else None
        if path is not None and path.is_file():
            loaded = cls._load(path, key)
            if loaded is not None and loaded.shape[:2] == (views, len(dataset)):
                if progress is not None:
                    progress(views * len(dataset))
                return cls(hidden=loaded, start_block=k, key=key)
        n = len(dataset)
        out = None
        done = 0
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            plain = torch.stack([dataset.view(i, 0, False) for i in idx])  # view 0, and every dihedral view
            for v in range(views):
                if dihedral:
                    images = dihedral_view(plain, v)
                else:
                    images = torch.stack([dataset.view(i, v, True) for i in idx]) if augment and v > 0 else plain
                hidden = model.embed(images.to(device), k).to("cpu", DTYPES[dtype])
                if out is None:
                    out = torch.empty((views, n, *hidden.shape[1:]), dtype=DTYPES[dtype])
                out[v, idx.start : idx.stop] = hidden
                done += len(idx)
                if progress is not None:
                    progress(done)
        if out is None:
            raise VptError("cannot cache an empty split")
        if path is not None:
            atomic_save_safetensors(path, {"hidden": out}, {"key": key, "start_block": str(k)})
        return cls(hidden=out, start_block=k, key=key)

    @staticmethod
    def _load(path: Path, key: str) -> torch.Tensor | None:
        """The cached tensor in ``path`` when its recorded key is ``key``, else None."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") != key:
                    return None
                return fh.get_tensor("hidden")
        except (SafetensorError, OSError, ValueError):
            return None

    def batch(self, view_of: torch.Tensor, indices: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
        """``[B, L, D]`` hidden states of images ``indices`` in views ``view_of`` (both ``[B]`` int64)."""
        return self.hidden[view_of, indices].to(device=device, dtype=dtype, non_blocking=True)

    def all_views(self, indices: torch.Tensor, device, dtype=torch.float32) -> torch.Tensor:
        """``[V, B, L, D]`` hidden states of images ``indices`` (``[B]`` int64) in every cached view."""
        return self.hidden[:, indices].to(device=device, dtype=dtype, non_blocking=True)

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()
