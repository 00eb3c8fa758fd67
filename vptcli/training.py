"""The training loop: prompt tuning (VPT, DA-VPT), linear probe or full fine-tuning on a manifest.

AdamW with linear warm-up then cosine decay per step (torch ``LambdaLR``), class-weighted loss or
balanced sampling against imbalance, optional AMP on CUDA (bf16 where supported, else fp16 with a
grad scaler), validation every epoch, best-by-validation prompt file, early stopping, and an exact
resume: every random draw of an epoch (order, augmentation, dropout) is seeded by ``(seed, epoch)``,
so a run interrupted after epoch k and resumed ends where an uninterrupted run ends.

In parts, as timm's ``train.py`` separates ``train_one_epoch`` / ``validate`` / checkpointing and
Ultralytics' trainer separates setup from the loop: :func:`setup` (data, model, class balance, cache
plan, optimiser), :func:`build_caches`, :func:`train_one_epoch`, :func:`validate`,
:func:`save_checkpoint` / :func:`load_checkpoint`, and :func:`train` tying them together. The library
prints nothing: progress and messages go to a :class:`TrainReporter` (silent by default; the CLI's
console reporter lives in :mod:`vptcli.commands.render`).

Run directory: ``config.json`` (every resolved setting), ``metrics.csv`` (one row per epoch),
``prompts.safetensors`` (best epoch, see :mod:`vptcli.artifacts`), ``last.ckpt.safetensors`` (tuned
tensors and optimiser tensors, with the optimiser, scheduler, grad-scaler and loop state as JSON in
its metadata: one file, so it is never half-updated) — all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vptcli import __version__
from vptcli.artifacts import PROMPT_FILE, make_meta, save_prompt_file
from vptcli.datasets import ManifestDataset, class_counts, sample_rng
from vptcli.device import amp_dtype, resolve_device
from vptcli.distributed import SINGLE, DistContext
from vptcli.errors import VptError
from vptcli.evaluation import chunks, predict_probs
from vptcli.feature_cache import FeatureCache, estimate_bytes
from vptcli.fsutil import atomic_save_safetensors, atomic_write_json, atomic_write_text
from vptcli.losses import DAVPTLossConfig, class_to_proxy, da_vpt_metric_loss
from vptcli.metrics import training_curves_png
from vptcli.ood import OOD_FILE
from vptcli.prompting import PromptConfig, PromptedViT
from vptcli.train_config import CONFIG_JSON, TRAIN_IMAGES, TrainConfig, load_run_config
from vptcli.train_report import TrainReporter
from vptcli.tta import dihedral_view, mean_over_views, tta_views
from vptcli.warm_start import InitSource

LAST_CKPT = "last.ckpt.safetensors"
LEGACY_LAST_STATE = "last.state.json"  # runs written before the one-file checkpoint
METRICS_CSV = "metrics.csv"
CURVES_PNG = "training_curves.png"
CKPT_FORMAT = "vptcli-last"

__all__ = ["CONFIG_JSON", "CURVES_PNG", "LAST_CKPT", "METRICS_CSV", "TRAIN_IMAGES", "TrainConfig", "TrainReporter", "TrainResult", "load_run_config", "train"]


@dataclass
class TrainResult:
    """Outcome of :func:`train`: paths and the best validation metrics."""

    run_dir: Path
    prompt_file: Path
    best_epoch: int
    best_metrics: dict
    tuned_parameters: int
    backbone_parameters: int
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    files: list[Path] = field(default_factory=list)
    """Every file in the run folder after training (config, image list, metrics, curves, prompt file, checkpoint)."""


@dataclass
class LoopState:
    """What the epoch loop carries from one epoch to the next (saved in the last checkpoint)."""

    next_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: list | None = None
    best_epoch: int = -1
    bad_epochs: int = 0


@dataclass
class Setup:
    """Everything :func:`setup` resolved before the first step (no file written yet)."""

    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype | None
    classes: list[str]
    train_ds: ManifestDataset
    val_ds: ManifestDataset
    model: PromptedViT
    start_block: int  # k: first block a training step computes
    guided_block: int | None
    balance: str
    imbalance: float
    counts: list[int]
    class_weight: torch.Tensor | None
    sample_weights: np.ndarray | None
    use_cache: bool
    proxy_of_class: torch.Tensor | None = None
    dist: DistContext = SINGLE
    """This process's rank in a ``torchrun`` job (:mod:`vptcli.distributed`); one process: ``SINGLE``."""
    init: InitSource | None = None
    """``--init-from``'s prompt file as read when the run started, or None."""


@dataclass
class Optimisation:
    """Optimiser, per-step schedule and AMP grad scaler of a run."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


# ------------------------------------------------------------------------------------------- setup


def build_model(cfg: TrainConfig, backbone, n_classes: int, device: torch.device) -> tuple[PromptedViT, int | None]:
    """The :class:`PromptedViT` of ``cfg`` on ``backbone`` and its DA-VPT guided block (else None).

    Raises:
        VptError: ``--prompt-start-block`` or ``--guided-block`` outside the backbone's blocks.
    """
    n_blocks = len(backbone.model.blocks)
    k = cfg.resolved_start_block(n_blocks, device.type)
    if not 0 <= k < n_blocks:
        raise VptError(f"--prompt-start-block must be in [0, {n_blocks - 1}] for this backbone")
    pcfg = PromptConfig(cfg.method, cfg.num_prompts_used, k, cfg.prompt_dropout, cfg.head_input, cfg.tta)
    dc = backbone.data_config
    try:
        model = PromptedViT(backbone.model, n_classes, pcfg, tuple(dc["mean"]), tuple(dc["std"])).to(device)
    except ValueError as exc:  # e.g. a head input reading more blocks than the backbone has
        raise VptError(str(exc)) from None
    guided_block = None
    if cfg.spec.metric_loss:
        guided_block = n_blocks - 1 if cfg.guided_block is None else cfg.guided_block
        if not k <= guided_block < n_blocks:
            raise VptError(f"--guided-block must be in [{k}, {n_blocks - 1}]")
    return model, guided_block


def class_balance(cfg: TrainConfig, labels: list[int], classes: list[str], device: torch.device):
    """``(balance, imbalance, counts, class_weight [C] or None, sample_weights [N] or None)``.

    ``auto``: a class-weighted loss when the largest class has more than 3x the smallest one's images.

    Raises:
        VptError: a class without training images.
    """
    n_classes = len(classes)
    counts = class_counts(labels, n_classes)
    if min(counts) == 0:
        empty = [classes[i] for i, c in enumerate(counts) if c == 0]
        raise VptError(f"class(es) with no training image: {', '.join(empty)}")
    imbalance = max(counts) / min(counts)
    balance = cfg.class_balance if cfg.class_balance != "auto" else ("weighted" if imbalance > 3 else "off")
    class_weight = sample_weights = None
    if balance == "weighted":
        class_weight = balanced_class_weights(counts).to(device)
    elif balance == "sampler":
        sample_weights = np.array([1.0 / counts[y] for y in labels])
    return balance, imbalance, counts, class_weight, sample_weights


def balanced_class_weights(counts: list[int]) -> torch.Tensor:
    """``[C]`` weights ``N / (C * count)``: every class weighs as much in total (scikit-learn's "balanced")."""
    n, c = sum(counts), len(counts)
    return torch.tensor([n / (c * k) for k in counts], dtype=torch.float32)


def plan_cache(cfg: TrainConfig, model: PromptedViT, input_size, k: int, n_train: int, n_val: int,
               device: torch.device, reporter: TrainReporter) -> bool:
    """Whether to cache the frozen blocks before block ``k`` (``--cache auto|on|off`` and the memory cap).

    Raises:
        VptError: ``--cache on`` but the cache would exceed ``--cache-max-gb``.
    """
    if not cfg.spec.uses_cache:
        if cfg.cache == "on":
            reporter.warn(f"--cache on ignored: {cfg.method} changes every block")
        return False
    seq_len = model.embed(torch.zeros(1, *input_size, device=device), k).shape[1]
    need = (estimate_bytes(n_train, cfg.resolved_views(device.type), seq_len, model.embed_dim, cfg.cache_dtype)
            + estimate_bytes(n_val, tta_views(cfg.tta), seq_len, model.embed_dim, cfg.cache_dtype))
    fits = need <= cfg.cache_max_gb * 1024**3
    if cfg.cache == "on" and not fits:
        raise VptError(f"the feature cache needs {need / 1024**3:.1f} GiB > --cache-max-gb {cfg.cache_max_gb}; "
                       "use --cache-dtype float16, fewer --cache-views or --cache off")
    if cfg.cache == "auto" and not fits:
        reporter.warn(f"feature cache off: it would need {need / 1024**3:.1f} GiB > --cache-max-gb {cfg.cache_max_gb}")
    return cfg.cache == "on" or (cfg.cache == "auto" and fits)


def setup(manifest, backbone, cfg: TrainConfig, reporter: TrainReporter, dist: DistContext = SINGLE) -> Setup:
    """Device, data sets, model, class balance and cache plan of a run (seeds torch with ``cfg.seed``).
    ``dist``: this process's rank in a ``torchrun`` job (a CUDA job puts rank r on ``cuda:LOCAL_RANK``).

    Raises:
        VptError: empty train or val split, a class without training images, bad block indices, or
            a cache that cannot fit.
    """
    from vptcli.distributed import device_for

    device = device_for(dist, resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    classes = list(manifest.classes)
    train_ds = ManifestDataset(manifest, "train", backbone.data_config, augment=cfg.augment, seed=cfg.seed)
    val_ds = ManifestDataset(manifest, "val", backbone.data_config, augment=False, seed=cfg.seed)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise VptError(f"need images in both train and val splits (train={len(train_ds)}, val={len(val_ds)}); "
                       "re-run `vpt ingest` with a --val-fraction > 0")
    model, guided_block = build_model(cfg, backbone, len(classes), device)
    k = model.frozen_blocks
    balance, imbalance, counts, class_weight, sample_weights = class_balance(cfg, train_ds.labels, classes, device)
    use_cache = plan_cache(cfg, model, backbone.data_config["input_size"], k, len(train_ds), len(val_ds), device, reporter)
    return Setup(cfg, device, amp_dtype(device, cfg.amp), classes, train_ds, val_ds, model, k, guided_block,
                 balance, imbalance, counts, class_weight, sample_weights, use_cache, dist=dist)


def make_optimisation(cfg: TrainConfig, model: PromptedViT, n_train: int, dtype: torch.dtype | None) -> Optimisation:
    """AdamW over the tuned parameters in two groups: the head at ``head_lr_scale`` x lr, the rest
    (prompts, or the backbone for a backbone-tuning method) at lr; warm-up + cosine per step, and a
    grad scaler for fp16 AMP."""
    base_lr = cfg.resolved_lr()
    head_ids = {id(p) for p in model.head.parameters()}
    groups = [
        {"params": [p for p in model.tuned_parameters() if id(p) not in head_ids], "lr": base_lr},
        {"params": list(model.head.parameters()), "lr": base_lr * cfg.resolved_head_lr_scale()},
    ]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, int(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return Optimisation(optimizer, scheduler, scaler)


def da_vpt_proxies(s: Setup) -> torch.Tensor | None:
    """Class -> prompt-proxy assignment ``[C]`` for a metric-loss method (None otherwise)."""
    if not s.cfg.spec.metric_loss:
        return None
    n_classes, n_prompts = len(s.classes), s.model.config.num_prompts
    class_feats = None
    if n_classes > n_prompts:
        class_feats = _mean_class_features(s.model, s.train_ds, n_classes, s.device, s.cfg.batch_size)
    return class_to_proxy(n_classes, n_prompts, class_feats, seed=s.cfg.seed).to(s.device)


def run_info(s: Setup, backbone) -> dict:
    """What :meth:`TrainReporter.run_started` gets."""
    n_blocks = len(backbone.model.blocks)
    pcfg = s.model.config
    auto_block = pcfg.prompt_start_block if (s.cfg.prompt_start_block is None and pcfg.num_prompts) else None
    hint = n_blocks - 3 if (s.device.type == "cpu" and pcfg.num_prompts and s.start_block == 0 and n_blocks > 3) else None
    return {"method": s.cfg.method, "backbone": backbone.identity.name, "source": backbone.identity.source,
            "device": str(s.device), "amp_dtype": _dtype_name(s.dtype), "tuned": s.model.num_tuned(),
            "backbone_parameters": s.model.num_backbone(), "balance": s.balance, "imbalance": s.imbalance,
            "cpu_hint_block": hint, "auto_start_block": auto_block, "n_blocks": n_blocks,
            "img_size": int(backbone.data_config["input_size"][-1]), "head_input": pcfg.head_input, "tta": pcfg.tta,
            "head_init": s.cfg.head_init, "fits_head_only": pcfg.spec.head_fit,
            "views": s.cfg.resolved_views(s.device.type) if s.use_cache else 0, "auto_views": s.cfg.cache_views is None,
            "auto_img_size": s.cfg.img_size == "auto", "init_from": s.cfg.init_from,
            "cache_off": s.cfg.cache == "off" and s.cfg.spec.uses_cache, "start_block": s.start_block}


def resolved_settings(s: Setup, backbone, manifest) -> dict:
    """``config.json``: the config and every value resolved from it."""
    cfg = s.cfg
    tuned, nb = s.model.num_tuned(), s.model.num_backbone()
    return {"train": asdict(cfg), "resolved": {
        "lr": cfg.resolved_lr(), "device": str(s.device), "prompt_start_block": s.model.config.prompt_start_block,
        "img_size": int(backbone.data_config["input_size"][-1]), "first_trained_block": s.start_block, "amp_dtype": _dtype_name(s.dtype),
        "class_balance": s.balance, "class_counts": dict(zip(s.classes, s.counts)), "cache": s.use_cache,
        "cache_views": cfg.resolved_views(s.device.type) if s.use_cache else 0, "guided_block": s.guided_block,
        "tuned_parameters": tuned, "backbone_parameters": nb, "tuned_percent": 100 * tuned / nb,
        "backbone": backbone.identity.to_dict(),
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in backbone.data_config.items()},
        "manifest_root": str(manifest.root), "manifest_fingerprint": manifest.fingerprint(),
        "train_val_fingerprint": manifest.train_val_fingerprint(),
        "n_train": len(s.train_ds), "n_val": len(s.val_ds), "tool_version": __version__,
    }}


def train_images(manifest) -> dict:
    """``train_images.json``: the pixel sha256, path, class and split of every training and validation
    image (the images the run learns from or is selected on)."""
    rows = [{"sha256": r.sha256, "path": r.path, "label": r.label, "split": r.split}
            for r in manifest.usable() if r.split in ("train", "val")]
    return {"format": "vptcli-train-images", "manifest_root": str(manifest.root),
            "manifest_fingerprint": manifest.fingerprint(), "images": rows}


def build_caches(s: Setup, backbone, reporter: TrainReporter, builder=None) -> tuple[FeatureCache, FeatureCache]:
    """The train (``views`` per image) and val (1 view, or with test-time augmentation its dihedral views,
    :mod:`vptcli.tta`) feature caches of the frozen blocks before k.

    Args:
        builder: a callable with :meth:`FeatureCache.build`'s signature (default: that method); the
            benchmarks pass one that shares hidden states across runs.
    """
    builder = builder or FeatureCache.build
    if s.dist.enabled:  # each rank its share of the images, then all-gathered
        from vptcli.distributed import sharded_cache_builder

        builder = sharded_cache_builder(s.dist, builder)
    cfg, k, views = s.cfg, s.start_block, s.cfg.resolved_views(s.device.type)
    n_train, val_views = len(s.train_ds), tta_views(s.model.config.tta)
    common = {"backbone_identity": backbone.identity.to_dict(), "img_size": int(backbone.data_config["input_size"][-1]),
              "start_block": k, "augment_seed": cfg.seed, "dtype": cfg.cache_dtype}
    t0 = time.perf_counter()
    with reporter.task("caching frozen blocks", views * n_train + val_views * len(s.val_ds)) as update:
        train_cache = builder(s.model, s.train_ds, start_block=k, views=views, augment=cfg.augment, dtype=cfg.cache_dtype,
                              device=s.device, batch_size=cfg.batch_size,
                              key=FeatureCache.make_key([r.sha256 for r in s.train_ds.records], views=views, **common),
                              progress=lambda d: update(d), cache_dir=cfg.cache_dir)
        val_cache = builder(s.model, s.val_ds, start_block=k, views=val_views, augment=False, dtype=cfg.cache_dtype,
                            device=s.device, batch_size=cfg.batch_size, dihedral=val_views > 1,
                            key=FeatureCache.make_key([r.sha256 for r in s.val_ds.records], views=val_views,
                                                      dihedral=val_views > 1, **common),
                            progress=lambda d: update(views * n_train + d), cache_dir=cfg.cache_dir)
    reporter.cache_built(k, views, train_cache.nbytes + val_cache.nbytes, time.perf_counter() - t0)
    return train_cache, val_cache


# ------------------------------------------------------------------------------ prompt init, head fit


@torch.no_grad()
def init_prompts(s: Setup, train_cache: FeatureCache | None, reporter: TrainReporter) -> None:
    """``--prompt-init patch-kmeans``: set the prompts to the k-means centres of the training images'
    patch tokens entering each prompted block (:func:`vptcli.prompt_init.patch_prototypes`), from a
    seeded sample of plain images: the cache's view 0, else decoded images. Under torchrun rank 0
    computes them and broadcasts them (:func:`vptcli.distributed.broadcast_`). :func:`train` has
    refused too many prompts for the sampled patch tokens already (:func:`check_prompt_init`)."""
    from vptcli.distributed import broadcast_
    from vptcli.prompt_init import patch_prototypes, sample_indices

    t0 = time.perf_counter()
    ix = sample_indices(len(s.train_ds), s.cfg.seed)
    if s.dist.is_main:
        if train_cache is not None:
            hidden = train_cache.batch(torch.zeros(len(ix), dtype=torch.long), ix, s.device)
        else:
            hidden = torch.cat([_plain_hidden(s, _plain_images(s.train_ds, c)) for c in chunks(ix.tolist(), s.cfg.batch_size)])
        s.model.prompts.copy_(patch_prototypes(s.model, hidden, s.start_block, seed=s.cfg.seed, batch_size=s.cfg.batch_size))
    broadcast_(s.dist, s.model.prompts.data)
    depth, n, _ = s.model.prompts.shape
    reporter.prompts_initialised({"method": s.cfg.prompt_init, "images": len(ix), "blocks": depth, "prompts": n,
                                  "seconds": time.perf_counter() - t0})


def check_prompt_init(s: Setup) -> None:
    """Raise VptError when the sampled training images have fewer patch tokens than ``--prompts``
    (``--prompt-init patch-kmeans`` needs a centre per prompt), before the run writes anything."""
    from vptcli.prompt_init import MAX_IMAGES

    n_tokens = min(len(s.train_ds), MAX_IMAGES) * s.model.backbone.patch_embed.num_patches
    if n_tokens < s.model.config.num_prompts:
        raise VptError(f"--prompt-init {s.cfg.prompt_init}: {n_tokens} patch tokens of the training images cannot give "
                       f"{s.model.config.num_prompts} prompt prototypes; use fewer --prompts or --prompt-init random")


def _plain_images(ds: ManifestDataset, ix) -> torch.Tensor:
    """``[B, 3, H, W]`` the plain (unaugmented) decoded images ``ix`` of ``ds``."""
    return torch.stack([ds.view(i, 0, False) for i in ix])


def _plain_hidden(s: Setup, images: torch.Tensor, view: int = 0) -> torch.Tensor:
    """``[B, L, D]`` hidden states entering ``s.start_block`` of ``images`` ``[B, 3, H, W]``, or of their
    :func:`vptcli.tta.dihedral_view` ``view``."""
    return s.model.embed((dihedral_view(images, view) if view else images).to(s.device), s.start_block)


@torch.no_grad()
def head_features(s: Setup, ds: ManifestDataset, cache: FeatureCache | None,
                  average_views: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input with the model's current prompts, for every view of the cache (V = its views),
    else of decoded plain images (V = 1, or with ``average_views`` the model's test-time augmented
    views, :func:`vptcli.tta.dihedral_view`). One pass per view and batch (``batch_size`` images); each
    batch is decoded once for all its views.

    Returns:
        ``([V * N, F], labels [V * N])`` view-major; with ``average_views`` ``([N, F], labels [N])``, the
        mean over each image's views (a validation cache holds the views test-time augmentation averages).
    """
    model, k, bs = s.model, s.start_block, s.cfg.batch_size
    model.eval()
    views = cache.hidden.shape[0] if cache is not None else (tta_views(model.config.tta) if average_views else 1)
    feats: list[list[torch.Tensor]] = [[] for _ in range(views)]  # per view, per batch: [B, F]
    for ix in chunks(range(len(ds)), bs):
        images = _plain_images(ds, ix) if cache is None else None
        for v in range(views):
            with torch.autocast(s.device.type, dtype=s.dtype, enabled=s.dtype is not None):
                if cache is not None:
                    hidden = cache.batch(torch.full((len(ix),), v, dtype=torch.long), torch.as_tensor(ix), s.device)
                else:
                    hidden = _plain_hidden(s, images, view=v)
                feats[v].append(model.forward_from(hidden, k)[0].float().cpu())
    x = torch.cat([f for per_view in feats for f in per_view])  # [V * N, F], view-major
    y = torch.as_tensor(ds.labels, dtype=torch.long)
    if average_views:
        return mean_over_views(x, views), y
    return x, y.repeat(views)


def fit_head(s: Setup, train_cache: FeatureCache | None, val_cache: FeatureCache | None, reporter: TrainReporter) -> dict:
    """Fit the head to the current features (a converged linear probe, :func:`vptcli.probe.fit_linear_probe`,
    its L2 strength chosen on validation unless ``--probe-c`` fixes it) and load it into the model; the linear probe's whole
    training, and every other method's warm start. Returns the ``fit`` entry of the epoch-0 row (with
    ``probe_c``, the ``C`` used, which that row records)."""
    from vptcli.probe import C_GRID, fit_linear_probe

    t0 = time.perf_counter()
    x, y = head_features(s, s.train_ds, train_cache)
    xv, yv = head_features(s, s.val_ds, val_cache, average_views=True)  # the model's view(s): TTA's mean
    class_weight = balanced_class_weights(s.counts) if s.balance != "off" else None  # as the loss (or sampler) balances
    grid = C_GRID if s.cfg.probe_c is None else (s.cfg.probe_c,)  # --probe-c: this C, no choice on validation
    fit = fit_linear_probe(x, y, xv, yv, len(s.classes), sample_weight=None if class_weight is None else class_weight[y].numpy(),
                           c_grid=grid)
    with torch.no_grad():
        s.model.head.weight.copy_(fit.weight.to(s.device))
        s.model.head.bias.copy_(fit.bias.to(s.device))
        train_loss = float(F.cross_entropy(x @ fit.weight.T + fit.bias, y, weight=class_weight, label_smoothing=s.cfg.label_smoothing))
    seconds = time.perf_counter() - t0
    reporter.head_fitted({"features": len(y), "dim": int(x.shape[1]), "c": fit.c, "c_fixed": s.cfg.probe_c is not None,
                          "seconds": seconds})
    return {"loss": train_loss, "metric_loss": 0.0, "seen": len(y), "seconds": seconds, "probe_c": fit.c}


def warm_start(s: Setup, backbone, train_cache: FeatureCache | None, reporter: TrainReporter) -> dict:
    """``--init-from``: load the source file's prompts, then its head rows by class name, new classes
    imprinted from their mean training feature (:mod:`vptcli.warm_start`). Returns the ``fit`` entry
    of the epoch-0 row (the warm-started head's training loss).

    Raises:
        ArtifactError / VptError: see :func:`vptcli.warm_start.load_init`.
    """
    from vptcli.warm_start import load_init, merge_head

    t0 = time.perf_counter()
    init = s.init if s.init is not None else load_init(s.cfg.init_from, backbone, s.model.config)
    with torch.no_grad():
        if s.model.prompts is not None:
            s.model.prompts.copy_(init.tensors["prompts"].to(s.device))
    x, y = head_features(s, s.train_ds, train_cache)  # with the copied prompts
    new = [c for c in s.classes if c not in init.meta.classes]
    means = {c: x[y == s.classes.index(c)].mean(0) for c in new}
    weight, bias = merge_head(init.tensors["head.weight"], init.tensors["head.bias"], init.meta.classes, s.classes, means)
    class_weight = balanced_class_weights(s.counts) if s.balance != "off" else None
    with torch.no_grad():
        s.model.head.weight.copy_(weight.to(s.device))
        s.model.head.bias.copy_(bias.to(s.device))
        loss = float(F.cross_entropy(x @ weight.T + bias, y, weight=class_weight, label_smoothing=s.cfg.label_smoothing))
    seconds = time.perf_counter() - t0
    reporter.warm_started({"source": str(init.path), "copied": [c for c in s.classes if c not in new], "new": new,
                           "dropped": [c for c in init.meta.classes if c not in s.classes], "seconds": seconds})
    return {"loss": loss, "metric_loss": 0.0, "seen": len(y), "seconds": seconds}


# ------------------------------------------------------------------------------------------ epochs


def train_one_epoch(s: Setup, opt: Optimisation, epoch: int, cache: FeatureCache | None,
                    update: Callable[..., None]) -> dict:
    """One pass over the training split; returns ``{"loss", "metric_loss", "seen", "seconds"}``.

    Raises:
        VptError: a non-finite loss (names the epoch and step; nothing is saved for this epoch).
    """
    cfg, model, device, dtype = s.cfg, s.model, s.device, s.dtype
    loss_cfg = DAVPTLossConfig(beta=cfg.beta, lam=cfg.lam)
    torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout draws of this epoch
    order = epoch_order(len(s.train_ds), cfg.seed, epoch, s.sample_weights)
    labels = torch.tensor(s.train_ds.labels, dtype=torch.long)
    model.train()
    t0 = time.perf_counter()
    loss_sum, seen, ml_sum = 0.0, 0, 0.0
    for step, (inputs, y, denom) in enumerate(_train_batches(s, order, cache, epoch, labels)):
        loss, ml = _step_loss(s, inputs, y.to(device), denom, loss_cfg, cached=cache is not None)
        ml_sum += ml
        if not torch.isfinite(loss):
            raise VptError(f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step + 1}; nothing was saved "
                           "for this epoch (try a lower --lr" + (" or --no-amp" if dtype else "") + ")")
        opt.optimizer.zero_grad(set_to_none=True)
        if len(y):  # a rank may have no share of a last, small global batch: it adds zero gradients
            opt.scaler.scale(loss).backward()
        if denom is not None:
            from vptcli.distributed import all_reduce_grads

            all_reduce_grads(s.dist, model.tuned_parameters())
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        loss_sum += float(loss.detach()) * (len(y) if denom is None else denom[1])
        seen += len(y) if denom is None else denom[1]
        update(seen, f"loss {loss_sum / seen:.4f}  {seen / (time.perf_counter() - t0):.1f} img/s")
    if s.dist.enabled:  # each rank summed its shares' losses over the global batches
        from vptcli.distributed import all_reduce_sum

        loss_sum, ml_sum = all_reduce_sum(s.dist, [loss_sum, ml_sum])
    return {"loss": loss_sum / seen, "metric_loss": ml_sum / seen, "seen": seen, "seconds": time.perf_counter() - t0}


def _step_loss(s: Setup, inputs: torch.Tensor, y: torch.Tensor, denom, loss_cfg, cached: bool) -> tuple[torch.Tensor, float]:
    """``(loss, metric-loss sum for the epoch's figure)`` of one batch. ``denom`` None: one process, the
    batch mean. In a ``torchrun`` job, ``(CE denominator, images)`` of the global batch this rank holds a
    share of: the share's summed loss over it (an empty share: a zero loss without a graph)."""
    cfg, model, dtype, k = s.cfg, s.model, s.dtype, s.start_block
    if not len(y):
        return torch.zeros((), device=s.device), 0.0
    with torch.autocast(s.device.type, dtype=dtype, enabled=dtype is not None):
        hidden = inputs.to(s.device) if cached else model.embed(inputs.to(s.device), k)
        feats, guided = model.forward_from(hidden, k, s.guided_block)
        logits = model.head(feats).float()
        if denom is None:
            loss = F.cross_entropy(logits, y, weight=s.class_weight, label_smoothing=cfg.label_smoothing)
        else:
            loss = F.cross_entropy(logits, y, weight=s.class_weight, label_smoothing=cfg.label_smoothing, reduction="sum") / denom[0]
        if guided is None:
            return loss, 0.0
        ml, _ = da_vpt_metric_loss(guided, y, s.proxy_of_class, loss_cfg)
        share = 1.0 if denom is None else len(y) / denom[1]  # DA-VPT's batch loss per share, weighted by its size
        return loss + ml * share, float(ml.detach()) * len(y)


def validate(s: Setup, cache: FeatureCache | None) -> dict:
    """Validation loss, top-1 and macro-F1 of the model as it predicts (test-time augmentation included),
    from the val cache when there is one."""
    from sklearn.metrics import f1_score

    ds, bs, k = s.val_ds, s.cfg.batch_size, s.start_block
    share = s.dist.span(len(ds))  # the whole split in one process; this rank's share in a torchrun job
    if cache is not None:  # [V, B, L, D]: every view the val cache holds (one, or those TTA averages)
        batches = ((cache.all_views(torch.as_tensor(ix), s.device), torch.as_tensor([ds.labels[i] for i in ix]), k)
                   for ix in chunks(share, bs))
    else:
        batches = ((torch.stack([ds[i][0] for i in ix]), torch.as_tensor([ds.labels[i] for i in ix]), None)
                   for ix in chunks(share, bs))
    probs, y, loss = predict_probs(s.model, batches, s.device, s.dtype)
    if s.dist.enabled:  # every rank gets every share: the same metrics (and early-stopping decision) everywhere
        from vptcli.distributed import all_gather_rows, all_reduce_sum

        loss = all_reduce_sum(s.dist, [loss * len(y) if len(y) else 0.0])[0] / len(ds)
        probs = all_gather_rows(s.dist, torch.from_numpy(probs)).numpy()
        y = all_gather_rows(s.dist, torch.from_numpy(y)).numpy()
    if len(y) == 0:
        raise VptError("validation split is empty")
    pred = probs.argmax(1)
    f1 = f1_score(y, pred, average="macro", labels=list(range(len(s.classes))), zero_division=0)
    return {"val_loss": round(loss, 6), "val_top1": round(float((pred == y).mean()), 6), "val_macro_f1": round(float(f1), 6)}


def epoch_row(s: Setup, opt: Optimisation, epoch: int, fit: dict, val: dict) -> dict:
    """The ``metrics.csv`` row of an epoch (``epoch = -1``: the fitted head before any epoch, row 0; a
    fitted probe's row also has ``probe_c``, its inverse L2 strength, chosen on validation or ``--probe-c``)."""
    return {
        "epoch": epoch + 1,
        "train_loss": round(fit["loss"], 6),
        "metric_loss": round(fit["metric_loss"], 6) if s.cfg.spec.metric_loss else "",
        **val,
        "lr": f"{opt.scheduler.get_last_lr()[0]:.3e}" if epoch >= 0 else "",
        "train_seconds": round(fit["seconds"], 2),
        "train_img_per_s": round(fit["seen"] / fit["seconds"], 2),
        **({"probe_c": fit["probe_c"]} if "probe_c" in fit else {}),
    }


def record_epoch(s: Setup, opt: Optimisation, state: LoopState, row: dict, run_dir: Path, backbone, manifest,
                 next_epoch: int | None = None) -> bool:
    """Update ``state`` with ``row``; write the prompt file when it is a new best, the metrics and
    the last checkpoint (which resumes at ``next_epoch``, default the epoch after ``row``'s).
    Returns whether it improved."""
    state.history.append(row)
    score = [row["val_macro_f1"], -row["val_loss"]]
    improved = state.best is None or tuple(score) > tuple(state.best)
    if improved:
        state.best, state.best_epoch, state.bad_epochs = score, row["epoch"], 0
        metrics = {"epoch": row["epoch"], "val_top1": row["val_top1"], "val_macro_f1": row["val_macro_f1"], "val_loss": row["val_loss"]}
        meta = make_meta(s.model, backbone, s.classes, data_fingerprint=manifest.fingerprint(), metrics=metrics)
        if s.dist.is_main:  # rank 0 alone writes (every rank holds the same tensors)
            save_prompt_file(run_dir / PROMPT_FILE, s.model, meta)
    else:
        state.bad_epochs += 1
    state.next_epoch = row["epoch"] if next_epoch is None else next_epoch
    if s.dist.is_main:
        atomic_write_text(run_dir / METRICS_CSV, _metrics_csv(state.history))
        training_curves_png(state.history, run_dir / CURVES_PNG)
        save_checkpoint(run_dir, s.model, opt, state)
    return improved


# -------------------------------------------------------------------------------------- checkpoint


def save_checkpoint(run_dir: Path, model: PromptedViT, opt: Optimisation, state: LoopState) -> Path:
    """Write ``last.ckpt.safetensors``: tuned and optimiser tensors, plus JSON metadata holding the
    optimiser's param groups and scalars, the scheduler, the grad scaler and ``state`` (one atomic file)."""
    tensors = {f"model.{k}": v for k, v in model.tuned_state().items()}
    opt_state = opt.optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{name}"] = val
    scalars = {str(pid): {n: float(v) for n, v in st.items() if not torch.is_tensor(v)} for pid, st in opt_state["state"].items()}
    meta = {
        "epoch": state.next_epoch - 1,
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(),
        "history": state.history,
        "best": state.best,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
    }
    return atomic_save_safetensors(run_dir / LAST_CKPT, tensors,
                                   {"format": CKPT_FORMAT, "epoch": str(meta["epoch"]), "state": json.dumps(meta)})


def load_checkpoint(run_dir: Path, model: PromptedViT, opt: Optimisation) -> LoopState:
    """Restore what :func:`save_checkpoint` wrote (also a run's older two-file checkpoint).

    Raises:
        VptError: the checkpoint is missing or unreadable.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = run_dir / LAST_CKPT
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("state")
        tensors = load_file(str(path))
        meta = json.loads(raw) if raw is not None else json.loads((run_dir / LEGACY_LAST_STATE).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VptError(f"{run_dir}: cannot resume, the last checkpoint is unreadable ({exc})") from None
    try:
        model.load_tuned_state({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    except (KeyError, ValueError) as exc:
        raise VptError(f"{path}: the checkpoint does not fit the run's model ({exc}); start a new run") from None
    if len(meta["optimizer_param_groups"]) != len(opt.optimizer.param_groups):  # written before the head had its own group
        raise VptError(f"{path}: this checkpoint was written by an older vpt (one optimiser group for prompts and head); "
                       "resume it with that version, or start a new run (--init-from can start from its prompt file)")
    opt_state = {"state": {}, "param_groups": meta["optimizer_param_groups"]}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = val
    for pid, sc in meta.get("optimizer_scalars", {}).items():
        for name, v in sc.items():
            opt_state["state"].setdefault(int(pid), {})[name] = torch.tensor(v)
    opt.optimizer.load_state_dict(opt_state)
    opt.scheduler.load_state_dict(meta["scheduler"])
    if meta.get("scaler"):
        opt.scaler.load_state_dict(meta["scaler"])
    return LoopState(meta["epoch"] + 1, meta["history"], meta["best"], meta["best_epoch"], meta["bad_epochs"])


def check_resume_data(run_dir: Path, manifest) -> None:
    """A resume continues on the data the run started with: the fingerprint of the manifest's train and
    val images (pixel hashes, classes, splits; file names and the test split do not count), or for runs
    made before it was recorded the manifest's own fingerprint.

    Raises:
        VptError: other data, naming both fingerprints.
    """
    try:
        resolved = json.loads((run_dir / CONFIG_JSON).read_text(encoding="utf-8"))["resolved"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VptError(f"{run_dir / CONFIG_JSON}: cannot read the run's settings ({exc})") from None
    if "train_val_fingerprint" in resolved:
        saved, now, what = resolved["train_val_fingerprint"], manifest.train_val_fingerprint(), "train/val images"
    else:
        saved, now, what = resolved.get("manifest_fingerprint"), manifest.fingerprint(), "manifest"
    if saved != now:
        raise VptError(
            f"--resume: the data differs from the run's ({what} fingerprint {now[:12]} here, {str(saved)[:12]} in "
            f"{run_dir / CONFIG_JSON}, data {_shown_path(resolved.get('manifest_root'))}); resume with the data the run started "
            "with, or start a new run with another --out"
        )


def last_saved_epoch(run_dir: Path) -> int | None:
    """The epoch (``metrics.csv`` numbering, 0: the fitted head) the last checkpoint holds, or None
    when there is none (or it is unreadable)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(run_dir) / LAST_CKPT), framework="pt") as fh:
            return int((fh.metadata() or {})["epoch"]) + 1
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a last checkpoint to resume from."""
    return (run_dir / LAST_CKPT).is_file()


# ------------------------------------------------------------------------------------------- train


def start_config(run_dir: Path, cfg: TrainConfig, resume: bool) -> TrainConfig:
    """The config to run: ``cfg`` for a new run (``run_dir`` empty or absent), the run's saved one
    for a resume.

    Raises:
        VptError: a non-empty ``run_dir`` without ``resume``, or nothing to resume.
    """
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise VptError(f"{run_dir}: folder exists and is not empty; choose another --out or pass --resume")
        return cfg
    if not has_checkpoint(run_dir) and not (run_dir / CONFIG_JSON).is_file():
        raise VptError(f"{run_dir}: nothing to resume (no {LAST_CKPT}); start without --resume")
    return load_run_config(run_dir)  # without a checkpoint (stopped before the first epoch ended): from the start


def train(manifest, backbone, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False,
          reporter: TrainReporter | None = None, cache_builder=None) -> TrainResult:
    """Train ``cfg.method`` on ``manifest``'s train split, validate on its val split.

    Args:
        manifest: :class:`vptcli.manifest.Manifest` with ``train`` and ``val`` images.
        backbone: :class:`vptcli.backbones.LoadedBackbone` (frozen).
        run_dir: output folder; must be empty or absent unless ``resume`` (then the run's saved
            settings are used, not ``cfg``).
        reporter: progress and messages (default: silent).
        cache_builder: replaces :meth:`FeatureCache.build` (see :func:`build_caches`).

    Returns:
        :class:`TrainResult`.

    Raises:
        VptError: bad settings, empty splits, non-finite loss (names epoch and step; nothing written
            for that epoch), an existing run without ``resume``, or nothing to resume.
    """
    from vptcli.distributed import init_from_env

    reporter = reporter or TrainReporter()
    run_dir = Path(run_dir)
    cfg = start_config(run_dir, cfg, resume)
    if resume:
        check_resume_data(run_dir, manifest)
    dist = init_from_env(resolve_device(cfg.device).type)  # a torchrun job: join it (one process: nothing)
    if not dist.is_main:
        reporter = TrainReporter()  # rank 0 alone prints
    dist.barrier()  # every rank checked --out before rank 0 writes into it
    s = setup(manifest, backbone, cfg, reporter, dist)
    if cfg.init_from and (not resume or not has_checkpoint(run_dir)):  # a source that does not fit fails before anything is written
        from vptcli.warm_start import load_init

        s.init = load_init(cfg.init_from, backbone, s.model.config)
    if cfg.prompt_init != "random":  # so do too many prompts for the patch tokens (a resume may start over)
        check_prompt_init(s)
    opt = make_optimisation(cfg, s.model, len(s.train_ds), s.dtype)
    reporter.run_started(run_info(s, backbone))
    s.proxy_of_class = da_vpt_proxies(s)
    state = LoopState()
    if resume and has_checkpoint(run_dir):
        state = load_checkpoint(run_dir, s.model, opt)
        reporter.resumed(run_dir, state.next_epoch, cfg.epochs)
    else:  # a new run, or one stopped before its first checkpoint (it starts again, same settings)
        if resume:
            reporter.resumed(run_dir, 0, cfg.epochs)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / TRAIN_IMAGES, train_images(manifest))
            atomic_write_json(run_dir / CONFIG_JSON, resolved_settings(s, backbone, manifest))
    nothing_left = state.next_epoch >= cfg.epochs  # a resume of a finished run writes nothing (but a missing reference)
    stopped_early, caches = _fit(s, opt, state, run_dir, backbone, manifest, reporter, cache_builder)
    if dist.is_main and (run_dir / PROMPT_FILE).is_file() and (not nothing_left or not (run_dir / OOD_FILE).is_file()):
        write_ood_reference(s, run_dir, *caches, reporter=reporter)
    dist.barrier()  # rank 0's last writes are done before any rank lists the folder
    best_row = next((r for r in state.history if r["epoch"] == state.best_epoch), {})
    files = [] if nothing_left else sorted(p for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return TrainResult(run_dir, run_dir / PROMPT_FILE, state.best_epoch, best_row, s.model.num_tuned(),
                       s.model.num_backbone(), state.history, stopped_early, files)


def _fit(s: Setup, opt: Optimisation, state: LoopState, run_dir: Path, backbone, manifest,
         reporter: TrainReporter, cache_builder) -> tuple[bool, tuple]:
    """The epoch loop from ``state.next_epoch``; returns whether it stopped early and the
    ``(train, val)`` feature caches (None when not cached)."""
    cfg = s.cfg
    train_cache = val_cache = None
    if state.next_epoch >= cfg.epochs:
        return False, (None, None)
    if s.use_cache:
        train_cache, val_cache = build_caches(s, backbone, reporter, cache_builder)
    # A warm start of the head (or, for the linear probe, its whole training): row "epoch 0".
    fit = None
    if not state.history and cfg.prompt_init != "random":  # before the head fit: it reads the prompted features
        init_prompts(s, train_cache, reporter)
    if not state.history and cfg.head_init == "probe" and not cfg.init_from:
        fit = fit_head(s, train_cache, val_cache, reporter)
    if cfg.init_from and not state.history:  # --init-from: prompts and head from that file instead
        fit = warm_start(s, backbone, train_cache, reporter)
    reporter.epochs_started()
    if fit is not None:
        row = epoch_row(s, opt, -1, fit, validate(s, val_cache))
        done = cfg.epochs if cfg.spec.head_fit else None  # the probe's fit is its whole training
        reporter.epoch_done(row, record_epoch(s, opt, state, row, run_dir, backbone, manifest, next_epoch=done))
        if done is not None:
            return False, (train_cache, val_cache)
    for epoch in range(state.next_epoch, cfg.epochs):
        with reporter.task(f"epoch {epoch + 1}/{cfg.epochs}", len(s.train_ds)) as update:
            fit = train_one_epoch(s, opt, epoch, train_cache, update)
        row = epoch_row(s, opt, epoch, fit, validate(s, val_cache))
        improved = record_epoch(s, opt, state, row, run_dir, backbone, manifest)
        reporter.epoch_done(row, improved)
        if cfg.patience and state.bad_epochs >= cfg.patience:
            reporter.early_stop(cfg.patience, state.best_epoch)
            return True, (train_cache, val_cache)
    return False, (train_cache, val_cache)


def write_ood_reference(s: Setup, run_dir: Path, train_cache: FeatureCache | None = None,
                        val_cache: FeatureCache | None = None, reporter: TrainReporter | None = None) -> Path:
    """Write the run's unfamiliar-image reference (:data:`vptcli.ood.OOD_FILE`) for its prompt file.

    The best prompt file's tensors are loaded into ``s.model``; its head input
    (:func:`head_features`) on every cached view of the training images gives the class means and the
    shared covariance, the validation images as the model predicts them (plain, or with test-time
    augmentation the mean over their views) give the threshold and the two-sample reference
    (:func:`vptcli.ood.fit_reference`), so the threshold is calibrated on the features ``vpt predict``
    scores. Under test-time augmentation the covariance still comes from single training views, wider
    than the spread of averaged features: scores come out smaller, the threshold with them, and the
    detection is somewhat less sensitive than without it. Without caches the training images are
    decoded (plain views). A validation split too small for the threshold's level is said through
    ``reporter``.
    """
    from vptcli.artifacts import read_prompt_file
    from vptcli.ood import fit_reference, save_reference

    tensors, meta = read_prompt_file(run_dir / PROMPT_FILE)
    s.model.load_tuned_state({k: v.to(s.device) for k, v in tensors.items()})
    x, y = head_features(s, s.train_ds, train_cache)
    xv, _ = head_features(s, s.val_ds, val_cache, average_views=True)
    with torch.no_grad():
        predicted = s.model.head(xv.to(s.device)).argmax(1).cpu().numpy()
    ref = fit_reference(x.numpy(), y.numpy(), xv.numpy(), s.classes, val_predicted=predicted, seed=s.cfg.seed,
                        prompt_sha256=meta.tensors_sha256, feature=f"head input ({s.model.config.head_input})")
    if reporter is not None and ref.expected_false_alarm > 1 - ref.level + 1e-9:
        reporter.warn(f"{len(xv)} validation images are too few for a {100 * (1 - ref.level):g} % unfamiliar-image threshold: "
                      f"it is the largest validation score, so about {100 * ref.expected_false_alarm:.0f} % of familiar "
                      "images will be flagged 'unfamiliar' by vpt predict; more validation images make it tighter")
    return save_reference(run_dir / OOD_FILE, ref)


# ----------------------------------------------------------------------------------------- helpers


def epoch_order(n: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Training order of one epoch: a permutation, or a class-balanced draw with replacement."""
    rng = sample_rng(seed, 1_000_003, epoch)
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _shown_path(path) -> str:
    """``path`` relative to the working folder when it lies under it, else as given."""
    import os

    try:
        rel = os.path.relpath(str(path))
    except (TypeError, ValueError):
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).replace("torch.", "") if dtype else None


def _metrics_csv(rows: list[dict]) -> str:
    """CSV of the rows; the columns are every key of any row in first-seen order (row 0 alone has
    ``probe_c``), a missing value is empty."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _train_batches(s: Setup, order: np.ndarray, cache: FeatureCache | None, epoch: int, labels: torch.Tensor):
    """Yield ``(inputs, labels, denom)`` per global batch of ``--batch-size`` images in ``order``:
    cached hidden states (one view per image drawn for this epoch) or decoded, augmented images via a
    DataLoader whose workers are seeded. ``denom`` is None in one process; in a ``torchrun`` job each
    rank gets its share of every global batch and ``denom = (CE denominator, images)`` of the global
    batch (see :mod:`vptcli.distributed`)."""
    ds, cfg, dist = s.train_ds, s.cfg, s.dist
    global_batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    def denom(batch) -> tuple[float, int] | None:
        if not dist.enabled:
            return None
        w = s.class_weight.cpu()[labels[batch]].sum() if s.class_weight is not None else len(batch)
        return float(w), len(batch)

    if cache is not None:
        views = cache.hidden.shape[0]
        rng = sample_rng(cfg.seed, 2_000_003, epoch)
        view_of = torch.as_tensor(rng.integers(views, size=len(order)), dtype=torch.long)
        for b, batch in enumerate(global_batches):
            pos = dist.shard(torch.arange(b * cfg.batch_size, b * cfg.batch_size + len(batch)))
            ix = torch.as_tensor(order, dtype=torch.long)[pos]
            yield cache.batch(view_of[pos], ix, "cpu"), labels[ix], denom(torch.as_tensor(batch, dtype=torch.long))
        return
    from torch.utils.data import DataLoader

    ds.set_epoch(epoch)
    shares = [dist.shard(batch.tolist()) for batch in global_batches]
    loader = DataLoader(ds, batch_sampler=[sh for sh in shares if sh], num_workers=cfg.workers, persistent_workers=False,
                        pin_memory=torch.cuda.is_available())
    batches = iter(loader)
    for batch, share in zip(global_batches, shares):
        x, y = next(batches) if share else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        yield x, y, denom(torch.as_tensor(batch, dtype=torch.long))


@torch.no_grad()
def _mean_class_features(model: PromptedViT, ds: ManifestDataset, n_classes: int, device, batch_size: int) -> torch.Tensor:
    """``[C, D]`` mean frozen class-token feature per class (for DA-VPT's class grouping)."""
    sums = torch.zeros(n_classes, model.embed_dim)
    counts = torch.zeros(n_classes)
    bb = model.backbone
    for ix in chunks(range(len(ds)), batch_size):
        x = torch.stack([ds.view(i, 0, False) for i in ix]).to(device)
        feats = bb.forward_head(bb.forward_features((x - model.mean) / model.std), pre_logits=True).cpu()
        y = torch.as_tensor([ds.labels[i] for i in ix])
        sums.index_add_(0, y, feats)
        counts.index_add_(0, y, torch.ones(len(ix)))
    return sums / counts.clamp(min=1).unsqueeze(1)
