"""Shared helpers of the benchmark scripts (not part of the vptcli package).

- ELPV data: the paper protocol split (``elpv_data.paper_split`` seed 0, 1,968 / 656) with a
  stratified 15 % validation part carved from train (1,672 / 296 / 656), materialised as a
  pre-split symlink tree and ingested once; few-shot manifests keep ``N`` training images per class
  (``elpv_data.few_shot``) and the same val/test images.
- :class:`HiddenMemo`: a per-image memo of the frozen hidden states entering block k, passed to
  ``train(cache_builder=memo.build)`` in place of ``FeatureCache.build`` so several ``train()`` calls in one benchmark
  process share the frozen computation. Its key holds everything the value depends on (image
  sha256, k, view, augmentation draw, backbone identity); entries at a larger k are derived from a
  stored smaller k by running the missing frozen blocks. The values equal what ``FeatureCache.build``
  computes (same ``PromptedViT.embed`` path; batch composition may differ, ~1e-6).
- Peak RSS per measured section: ``/proc/self/clear_refs`` (write ``5``) resets ``VmHWM``.

The ELPV images are CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("VPT_BENCH_WORK", REPO / "runs" / "bench"))
"""Work folder (data trees, run folders): ``$VPT_BENCH_WORK``, else ``runs/bench`` in the repository (git-ignored)."""


def set_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


# ------------------------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM) of this process since start or the last reset, MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    import timm

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    mem_gb = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gb,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
    }


def provenance() -> dict:
    """What a results file records about how it was made: the git commit and the command line."""
    import subprocess
    import sys

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                                    text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    argv = [Path(sys.argv[0]).resolve().relative_to(REPO).as_posix() if Path(sys.argv[0]).resolve().is_relative_to(REPO)
            else Path(sys.argv[0]).name, *sys.argv[1:]]
    return {"git_commit": commit + ("+uncommitted changes" if dirty else ""), "command": " ".join(["python", *argv])}


def work_relative(path: Path) -> str:
    """``path`` relative to :data:`WORK` (results files hold no machine-specific absolute paths)."""
    try:
        return Path(path).resolve().relative_to(WORK.resolve()).as_posix()
    except ValueError:
        return Path(path).name


# --------------------------------------------------------------------------------------------- data


def start(name: str, args):
    """Common start of a benchmark: threads, a wide stderr console, the results path and the backbone.

    Returns ``(console, date, out_path, backbone)``; ``--smoke`` uses timm's tiny ``test_vit`` with
    random weights at 32 px, otherwise the default backbone (DINOv2 ViT-S/14).
    """
    from rich.console import Console

    from vptcli.backbones import load_backbone

    set_threads(args.threads)
    date = dt.date.today().isoformat()
    tag = "".join(f"-{v}" for v in (getattr(args, "task", None), getattr(args, "img_size", None)) if v not in (None, "binary"))
    out = args.out or Path(__file__).resolve().parent / "results" / f"{name}{tag}-{date}{'-smoke' if args.smoke else ''}.json"
    size = getattr(args, "img_size", None)
    backbone = load_backbone("test_vit", weights="random", img_size=32) if args.smoke else load_backbone(img_size=size)
    return Console(stderr=True, width=200), date, out, backbone


def elpv_protocol(task: str = "binary", seed: int = 0, val_fraction: float = 0.15):
    """``(records, split)``: paper split (1,968 / 656) with val carved from train (1,672 / 296)."""
    from elpv_data import carve_val, elpv_records, paper_split

    records = elpv_records()
    split = carve_val(paper_split(records, seed=seed), records, val_fraction=val_fraction, seed=seed)
    return records, split


def elpv_manifest(task: str = "binary", seed: int = 0, val_fraction: float = 0.15):
    """Materialise (symlinks, under ``$VPT_BENCH_WORK``) and ingest the protocol tree.

    Returns ``(manifest, records, split)``.
    """
    from elpv_data import materialise

    from vptcli.ingest import ingest_folder

    records, split = elpv_protocol(task, seed, val_fraction)
    tree = materialise(WORK / f"elpv-{task}-s{seed}", task=task, link="symlink", split=split)
    res = ingest_folder(tree, progress=False, workers=2)
    m = res.manifest
    assert m.settings["layout"] == "pre-split", m.settings
    return m, records, split


def few_shot_manifest(manifest, records, split, per_class: int, task: str = "binary", seed: int = 0):
    """The manifest with only ``per_class`` training images per class (val/test unchanged)."""
    from elpv_data import few_shot

    from vptcli.manifest import Manifest

    keep = {Path(k).name for k, s in few_shot(split, records, per_class=per_class, task=task, seed=seed).items() if s == "train"}
    recs = [r for r in manifest.records if r.split != "train" or Path(r.path).name in keep]
    out = Manifest(root=manifest.root, classes=list(manifest.classes), records=recs, settings=dict(manifest.settings))
    n = len(out.usable("train"))
    assert n == per_class * len(manifest.classes), n
    return out


def subset_manifest(manifest, n_per_split: dict[str, int]):
    """A small manifest for smoke tests: the first n usable images (per class) of each split."""
    from vptcli.manifest import Manifest

    keep, seen = [], {}
    for r in manifest.usable():
        key = (r.split, r.label)
        if seen.get(key, 0) < n_per_split.get(r.split, 0):
            keep.append(r)
            seen[key] = seen.get(key, 0) + 1
    return Manifest(root=manifest.root, classes=list(manifest.classes), records=keep, settings=dict(manifest.settings))


# --------------------------------------------------------------------------------------- hidden memo


class HiddenMemo:
    """Per-image memo of hidden states ``[L, D]`` (fp32) entering block k; see the module docstring."""

    def __init__(self, backbone, base_k: int | None = None) -> None:
        self.backbone = backbone
        self.base_k = base_k  # images are first embedded to base_k (stored), then derived
        self.ident = json.dumps(backbone.identity.to_dict(), sort_keys=True)
        self.store: dict[tuple, torch.Tensor] = {}
        self.ks: set[int] = set()
        self.computed_from_pixels = 0
        self.derived = 0
        self.seconds = 0.0

    def _key(self, ds, i: int, k: int, v: int, aug: bool, dihedral: bool = False) -> tuple:
        r = ds.records[i]
        # An augmented view depends on (seed, view, index in the dataset) and the pixels; a dihedral
        # view (test-time augmentation) on the pixels and the view alone.
        # Dihedral view 0 is the plain image.
        return (self.ident, r.sha256, k, ("dihedral", v) if dihedral and v else (v, i, ds.seed) if aug else 0)

    @torch.no_grad()
    def get(self, model, ds, k: int, v: int, aug: bool, batch_size: int = 32, dihedral: bool = False) -> torch.Tensor:
        """``[N, L, D]`` hidden states entering block k of view v for every image of ``ds`` (``dihedral``:
        view v is ``vptcli.tta.dihedral_view`` v of the plain image, as ``FeatureCache.build`` makes it)."""
        from vptcli.tta import dihedral_view

        t0 = time.perf_counter()
        n = len(ds)
        keys = [self._key(ds, i, k, v, aug, dihedral) for i in range(n)]
        missing = [i for i in range(n) if keys[i] not in self.store]
        # Derive from the largest stored k0 < k where possible.
        by_src: dict[int, list[int]] = {}
        from_pixels = []
        for i in missing:
            src = None
            for k0 in sorted((x for x in self.ks if x < k), reverse=True):
                if self._key(ds, i, k0, v, aug, dihedral) in self.store:
                    src = k0
                    break
            (by_src.setdefault(src, []) if src is not None else from_pixels).append(i)
        bb = model.backbone
        mean, std = model.mean, model.std
        for s in range(0, len(from_pixels), batch_size):
            idx = from_pixels[s : s + batch_size]
            if dihedral:
                images = dihedral_view(torch.stack([ds.view(i, 0, False) for i in idx]), v)
            else:
                images = torch.stack([ds.view(i, v, aug) for i in idx])
            x = (images - mean) / std
            x = bb.patch_embed(x)
            x = bb._pos_embed(x)
            x = bb.patch_drop(x)
            x = bb.norm_pre(x)
            k0 = k if self.base_k is None or self.base_k >= k else self.base_k
            for blk in bb.blocks[:k0]:
                x = blk(x)
            if k0 < k:
                for j, i in enumerate(idx):
                    self.store[self._key(ds, i, k0, v, aug, dihedral)] = x[j].clone()
                self.ks.add(k0)
                for blk in bb.blocks[k0:k]:
                    x = blk(x)
            for j, i in enumerate(idx):
                self.store[keys[i]] = x[j].clone()
            self.computed_from_pixels += len(idx)
        for k0, items in by_src.items():
            for s in range(0, len(items), batch_size):
                idx = items[s : s + batch_size]
                x = torch.stack([self.store[self._key(ds, i, k0, v, aug, dihedral)] for i in idx])
                for blk in bb.blocks[k0:k]:
                    x = blk(x)
                for j, i in enumerate(idx):
                    self.store[keys[i]] = x[j].clone()
                self.derived += len(idx)
        self.ks.add(k)
        self.seconds += time.perf_counter() - t0
        return torch.stack([self.store[key] for key in keys])

    def build(self, model, dataset, *, start_block, views, augment, key, dtype="float32", batch_size=32, device="cpu",
              progress=None, cache_dir=None, dihedral=False):
        """``FeatureCache.build``'s signature, served from the memo (``train(cache_builder=memo.build)``);
        ignores ``cache_dir`` (the memo replaces the on-disk cache inside one benchmark process)."""
        from vptcli import feature_cache
        from vptcli.errors import VptError

        if views < 1:
            raise VptError("--cache-views must be >= 1")
        if model.backbone is not self.backbone.model:
            raise RuntimeError("HiddenMemo used with another backbone object")
        per_view = [self.get(model, dataset, start_block, v, augment and v > 0, batch_size, dihedral) for v in range(views)]
        hidden = torch.stack(per_view).to(feature_cache.DTYPES[dtype])
        if progress is not None:
            progress(views * len(dataset))
        return feature_cache.FeatureCache(hidden=hidden, start_block=start_block, key=key)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store.values())


# ------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def load_trained(run_dir: Path, backbone):
    """The best-epoch model of a run, on ``backbone`` (full fine-tuning: PromptedViT tunes a copy)."""
    from vptcli.artifacts import build_model, read_prompt_file

    tensors, meta = read_prompt_file(Path(run_dir) / "prompts.safetensors")
    return build_model(meta, tensors, backbone), meta


def predicted_probs(model, ds, memo: HiddenMemo | None, batch_size: int = 32) -> np.ndarray:
    """Softmax probabilities on ``ds`` (plain eval transform) via ``vptcli.evaluation.predict_probs``.
    Methods with a frozen prefix reuse the memo (hidden states entering the method's first trained
    block; with test-time augmentation those of every view it averages); the others run on images."""
    from vptcli.evaluation import chunks, predict_probs
    from vptcli.tta import tta_views

    cfg = model.config
    if not cfg.spec.uses_cache or memo is None:
        batches = ((torch.stack([ds[i][0] for i in ix]), None, None) for ix in chunks(range(len(ds)), batch_size))
    else:
        k, views = model.frozen_blocks, tta_views(cfg.tta)
        hidden = torch.stack([memo.get(model, ds, k, v, False, batch_size, dihedral=views > 1) for v in range(views)])
        batches = ((hidden[:, ix[0] : ix[-1] + 1], None, k) for ix in chunks(range(len(ds)), batch_size))
    return predict_probs(model, batches)[0]


@torch.no_grad()
def inference_img_per_s(model, images: torch.Tensor, reps: int = 1) -> float:
    """Full forward (images -> logits) img/s, torch, inference_mode, after one warm-up batch."""
    model.eval()
    with torch.inference_mode():
        model(images)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(images)
        dt = time.perf_counter() - t0
    return reps * len(images) / dt


def dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)
