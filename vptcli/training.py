"""The training loop: prompt tuning (VPT, DA-VPT), linear probe or full fine-tuning on a manifest.

AdamW with linear warm-up then cosine decay per step (torch ``LambdaLR``), class-weighted loss or
balanced sampling against imbalance, optional AMP on CUDA (bf16 where supported, else fp16 with a
grad scaler), validation every epoch, best-by-validation prompt file, early stopping, and an exact
resume: every random draw of an epoch (order, augmentation, dropout) is seeded by ``(seed, epoch)``,
so a run interrupted after epoch k and resumed ends where an uninterrupted run ends.

Run directory: ``config.json`` (every resolved setting), ``metrics.csv`` (one row per epoch),
``prompts.safetensors`` (best epoch, see :mod:`vptcli.artifacts`), ``last.ckpt.safetensors`` +
``last.state.json`` (tuned tensors, optimiser and scheduler state, epoch) — all written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vptcli import __version__
from vptcli.artifacts import PROMPT_FILE, make_meta, save_prompt_file
from vptcli.console import console, warn
from vptcli.datasets import ManifestDataset, class_counts, sample_rng
from vptcli.errors import VptError
from vptcli.feature_cache import DTYPES, FeatureCache, estimate_bytes
from vptcli.fsutil import atomic_save_safetensors, atomic_write_json, atomic_write_text
from vptcli.losses import DAVPTLossConfig, class_to_proxy, da_vpt_metric_loss
from vptcli.prompting import METHODS, PROMPT_METHODS, PromptConfig, PromptedViT

DEFAULT_LR = {"vpt-shallow": 3e-3, "vpt-deep": 3e-3, "da-vpt": 3e-3, "linear-probe": 3e-3, "full-finetune": 3e-5}
"""AdamW learning rate per method (prompts and head; full fine-tuning: the backbone, head x 30)."""

LAST_CKPT = "last.ckpt.safetensors"
LAST_STATE = "last.state.json"
METRICS_CSV = "metrics.csv"
CONFIG_JSON = "config.json"


@dataclass
class TrainConfig:
    """Every setting of a training run (saved resolved in ``config.json``)."""

    method: str = "vpt-deep"
    num_prompts: int = 10
    prompt_start_block: int = 0
    prompt_dropout: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    workers: int = 0
    patience: int = 0
    class_balance: str = "auto"  # auto | weighted | sampler | off
    augment: bool = True
    cache: str = "auto"  # auto | on | off
    cache_views: int = 4
    cache_dtype: str = "float32"
    cache_max_gb: float = 8.0
    cache_dir: str | None = None
    beta: float = 0.1
    lam: float = 0.1
    guided_block: int | None = None
    backbone: str = ""
    weights: str | None = None
    img_size: int | None = None

    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.method])

    def validate(self) -> None:
        """Raise VptError on settings that cannot work."""
        if self.method not in METHODS:
            raise VptError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise VptError("--epochs and --batch-size must be >= 1")
        if self.method in PROMPT_METHODS and self.num_prompts < 1:
            raise VptError(f"--method {self.method} needs --prompts >= 1 (use linear-probe for none)")
        if self.class_balance not in ("auto", "weighted", "sampler", "off"):
            raise VptError("--class-balance must be auto, weighted, sampler or off")
        if self.cache not in ("auto", "on", "off"):
            raise VptError("--cache must be auto, on or off")
        if self.cache_dtype not in DTYPES:
            raise VptError(f"--cache-dtype must be one of {', '.join(DTYPES)}")
        if self.lr is not None and not self.lr > 0:
            raise VptError(f"--lr must be > 0 (got {self.lr})")
        if self.weight_decay < 0 or not 0 <= self.prompt_dropout < 1 or self.label_smoothing < 0:
            raise VptError("--weight-decay must be >= 0 and --prompt-dropout in [0, 1)")
        if self.cache_views < 1 or self.cache_max_gb <= 0:
            raise VptError("--cache-views must be >= 1 and --cache-max-gb > 0")
        if self.workers < 0:
            raise VptError("--workers must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The settings a run was started with (its ``config.json``).

    Raises:
        VptError: the file is missing or unreadable.
    """
    path = Path(run_dir) / CONFIG_JSON
    try:
        return TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VptError(f"{path}: cannot read the run's settings ({exc})") from None


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. ``cuda`` without a GPU -> VptError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VptError("--device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise VptError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (fp32) on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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


def _metrics_row_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _save_last(run_dir: Path, model: PromptedViT, optimizer, scheduler, epoch: int, state: dict) -> None:
    tensors = {f"model.{k}": v for k, v in model.tuned_state().items()}
    opt_state = optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{name}"] = val
    scalars = {str(pid): {n: float(v) for n, v in st.items() if not torch.is_tensor(v)} for pid, st in opt_state["state"].items()}
    atomic_save_safetensors(run_dir / LAST_CKPT, tensors, {"format": "vptcli-last", "epoch": str(epoch)})
    atomic_write_json(
        run_dir / LAST_STATE,
        {
            "epoch": epoch,
            "optimizer_param_groups": opt_state["param_groups"],
            "optimizer_scalars": scalars,
            "scheduler": scheduler.state_dict(),
            **state,
        },
    )


def _load_last(run_dir: Path, model: PromptedViT, optimizer, scheduler) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(run_dir / LAST_CKPT))
        state = json.loads((run_dir / LAST_STATE).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise VptError(f"{run_dir}: cannot resume, the last checkpoint is unreadable ({exc})") from None
    model.load_tuned_state({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state = {"state": {}, "param_groups": state["optimizer_param_groups"]}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = val
    for pid, sc in state.get("optimizer_scalars", {}).items():
        for name, v in sc.items():
            opt_state["state"].setdefault(int(pid), {})[name] = torch.tensor(v)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(state["scheduler"])
    return state


@torch.no_grad()
def predict_probs(model: PromptedViT, batches, device: torch.device, dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Run ``model`` over ``(inputs, labels, from_block)`` batches -> ``(probs [N, C], labels [N], mean CE loss)``."""
    model.eval()
    probs, labels, loss_sum, n = [], [], 0.0, 0
    with torch.inference_mode():
        for inputs, y, from_block in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if from_block is None:
                    logits = model(inputs.to(device))
                else:
                    logits = model.head(model.forward_from(inputs, from_block)[0])
            logits = logits.float()
            y = y.to(device)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
            probs.append(logits.softmax(-1).cpu().numpy())
            labels.append(y.cpu().numpy())
    if n == 0:
        raise VptError("validation split is empty")
    return np.concatenate(probs), np.concatenate(labels), loss_sum / n


def train(manifest, backbone, cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train ``cfg.method`` on ``manifest``'s train split, validate on its val split.

    Args:
        manifest: :class:`vptcli.manifest.Manifest` with ``train`` and ``val`` images.
        backbone: :class:`vptcli.backbones.LoadedBackbone` (frozen).
        run_dir: output folder; must be empty or absent unless ``resume``.

    Returns:
        :class:`TrainResult`.

    Raises:
        VptError: bad settings, empty splits, non-finite loss (names epoch and step; nothing written
            for that epoch), an existing run without ``resume``, or a resume of another config.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from sklearn.metrics import f1_score

    cfg.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise VptError(f"{run_dir}: folder exists and is not empty; choose another --out or pass --resume")
    if resume:
        if not (run_dir / LAST_STATE).is_file():
            raise VptError(f"{run_dir}: nothing to resume (no {LAST_STATE}); start without --resume")
        cfg = load_run_config(run_dir)

    device = resolve_device(cfg.device)
    dtype = amp_dtype(device, cfg.amp)
    torch.manual_seed(cfg.seed)
    classes = list(manifest.classes)
    n_classes = len(classes)
    train_ds = ManifestDataset(manifest, "train", backbone.data_config, augment=cfg.augment, seed=cfg.seed)
    val_ds = ManifestDataset(manifest, "val", backbone.data_config, augment=False, seed=cfg.seed)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise VptError(f"need images in both train and val splits (train={len(train_ds)}, val={len(val_ds)}); re-run `vpt ingest` with a --val-fraction > 0")

    pcfg = PromptConfig(cfg.method, cfg.num_prompts if cfg.method in PROMPT_METHODS else 0, cfg.prompt_start_block, cfg.prompt_dropout)
    n_blocks = len(backbone.model.blocks)
    if not 0 <= cfg.prompt_start_block < n_blocks:
        raise VptError(f"--prompt-start-block must be in [0, {n_blocks - 1}] for this backbone")
    model = PromptedViT(backbone.model, n_classes, pcfg, tuple(backbone.data_config["mean"]), tuple(backbone.data_config["std"])).to(device)
    guided_block = None
    if cfg.method == "da-vpt":
        guided_block = n_blocks - 1 if cfg.guided_block is None else cfg.guided_block
        if not cfg.prompt_start_block <= guided_block < n_blocks:
            raise VptError(f"--guided-block must be in [{cfg.prompt_start_block}, {n_blocks - 1}]")

    # Class balance.
    counts = class_counts(train_ds.labels, n_classes)
    if min(counts) == 0:
        empty = [classes[i] for i, c in enumerate(counts) if c == 0]
        raise VptError(f"class(es) with no training image: {', '.join(empty)}")
    imbalance = max(counts) / min(counts)
    balance = cfg.class_balance if cfg.class_balance != "auto" else ("weighted" if imbalance > 3 else "off")
    class_weight = None
    sample_weights = None
    if balance == "weighted":
        class_weight = torch.tensor([len(train_ds) / (n_classes * c) for c in counts], dtype=torch.float32, device=device)
    elif balance == "sampler":
        sample_weights = np.array([1.0 / counts[y] for y in train_ds.labels])

    # Frozen-computation cache (late prompts).
    # k: first block computed during training. Linear probe: none (cache the last block's output).
    k = pcfg.prompt_start_block if pcfg.num_prompts > 0 else (n_blocks if cfg.method == "linear-probe" else 0)
    if cfg.method == "full-finetune":
        use_cache = False
        if cfg.cache == "on":
            warn("--cache on ignored: full fine-tuning changes every block")
    else:
        views = cfg.cache_views if cfg.augment else 1
        seq_len = model.embed(torch.zeros(1, *backbone.data_config["input_size"], device=device), k).shape[1]
        need = estimate_bytes(len(train_ds), views, seq_len, model.embed_dim, cfg.cache_dtype) + estimate_bytes(len(val_ds), 1, seq_len, model.embed_dim, cfg.cache_dtype)
        fits = need <= cfg.cache_max_gb * 1024**3
        use_cache = cfg.cache == "on" or (cfg.cache == "auto" and fits)
        if cfg.cache == "on" and not fits:
            raise VptError(f"the feature cache needs {need / 1024**3:.1f} GiB > --cache-max-gb {cfg.cache_max_gb}; use --cache-dtype float16, fewer --cache-views or --cache off")
        if cfg.cache == "auto" and not fits:
            warn(f"feature cache off: it would need {need / 1024**3:.1f} GiB > --cache-max-gb {cfg.cache_max_gb}")

    base_lr = cfg.resolved_lr()
    if cfg.method == "full-finetune":
        groups = [
            {"params": [p for p in model.backbone.parameters()], "lr": base_lr},
            {"params": list(model.head.parameters()), "lr": base_lr * 30},
        ]
    else:
        groups = [{"params": model.tuned_parameters(), "lr": base_lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, int(cfg.warmup_epochs * steps_per_epoch)))
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    tuned, nb = model.num_tuned(), model.num_backbone()
    console.print(
        f"method [bold]{cfg.method}[/bold] on {backbone.identity.name} ({backbone.identity.source}); device {device}"
        + (f" with AMP {str(dtype).replace('torch.', '')}" if dtype else "")
        + f"; tuned parameters {tuned:,} = {100 * tuned / nb:.3f}% of the backbone ({nb:,})",
        markup=True,
    )
    if balance != "off":
        console.print(f"class balance: {balance} (imbalance {imbalance:.1f}:1)")
    if device.type == "cpu" and pcfg.num_prompts and k == 0 and n_blocks > 3:
        console.print(f"hint: on a CPU, late prompts (--prompt-start-block {n_blocks - 3}) train about 5x faster, "
                      "with prompts in the last 3 blocks only (a different model; see docs/benchmarks.md)")

    proxy_of_class = None
    loss_cfg = DAVPTLossConfig(beta=cfg.beta, lam=cfg.lam)
    if cfg.method == "da-vpt":
        class_feats = None
        if n_classes > pcfg.num_prompts:
            class_feats = _mean_class_features(model, train_ds, n_classes, device, cfg.batch_size)
        proxy_of_class = class_to_proxy(n_classes, pcfg.num_prompts, class_feats, seed=cfg.seed).to(device)

    resolved = {"train": asdict(cfg), "resolved": {
        "lr": base_lr, "device": str(device), "amp_dtype": str(dtype).replace("torch.", "") if dtype else None,
        "class_balance": balance, "class_counts": dict(zip(classes, counts)), "cache": use_cache,
        "cache_views": (cfg.cache_views if cfg.augment else 1) if use_cache else 0, "guided_block": guided_block,
        "tuned_parameters": tuned, "backbone_parameters": nb, "tuned_percent": 100 * tuned / nb,
        "backbone": backbone.identity.to_dict(), "data_config": {k_: list(v) if isinstance(v, tuple) else v for k_, v in backbone.data_config.items()},
        "manifest_root": str(manifest.root), "manifest_fingerprint": manifest.fingerprint(),
        "n_train": len(train_ds), "n_val": len(val_ds), "tool_version": __version__,
    }}

    start_epoch, history, best, best_epoch, bad_epochs = 0, [], None, -1, 0
    if resume:
        state = _load_last(run_dir, model, optimizer, scheduler)
        start_epoch = state["epoch"] + 1
        history, best, best_epoch, bad_epochs = state["history"], state["best"], state["best_epoch"], state["bad_epochs"]
        if start_epoch >= cfg.epochs:
            console.print(f"{run_dir} already finished its {cfg.epochs} epochs; nothing to resume "
                          "(start a new run to train longer: the learning-rate schedule depends on --epochs)")
        else:
            console.print(f"resuming {run_dir} after epoch {start_epoch} of {cfg.epochs}, with the run's saved settings")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_JSON, resolved)

    train_cache = val_cache = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, disable=not show_progress, transient=True)
    with progress:
        if use_cache and start_epoch < cfg.epochs:
            views = cfg.cache_views if cfg.augment else 1
            t0 = time.perf_counter()
            task = progress.add_task("caching frozen blocks", total=views * len(train_ds) + len(val_ds), info="")
            common = {"backbone_identity": backbone.identity.to_dict(), "img_size": int(backbone.data_config["input_size"][-1]),
                          "start_block": k, "augment_seed": cfg.seed, "dtype": cfg.cache_dtype}
            train_cache = FeatureCache.build(model, train_ds, start_block=k, views=views, augment=cfg.augment, dtype=cfg.cache_dtype, device=device,
                                             batch_size=cfg.batch_size, key=FeatureCache.make_key([r.sha256 for r in train_ds.records], views=views, **common),
                                             progress=lambda d: progress.update(task, completed=d), cache_dir=cfg.cache_dir)
            val_cache = FeatureCache.build(model, val_ds, start_block=k, views=1, augment=False, dtype=cfg.cache_dtype, device=device, batch_size=cfg.batch_size,
                                           key=FeatureCache.make_key([r.sha256 for r in val_ds.records], views=1, **common),
                                           progress=lambda d: progress.update(task, completed=views * len(train_ds) + d), cache_dir=cfg.cache_dir)
            progress.remove_task(task)
            console.print(f"feature cache: {'embeddings' if k == 0 else f'blocks 0..{k - 1}'} computed once, {views} view(s)/image, "
                          f"{(train_cache.nbytes + val_cache.nbytes) / 1024**2:.0f} MiB, built in {time.perf_counter() - t0:.1f}s")

        labels_t = torch.tensor(train_ds.labels, dtype=torch.long)
        if start_epoch < cfg.epochs:
            console.print(_epoch_cells(EPOCH_COLUMNS), style="bold", markup=False)
        stopped_early = False
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout draws of this epoch
            order = epoch_order(len(train_ds), cfg.seed, epoch, sample_weights)
            model.train()
            t0 = time.perf_counter()
            task = progress.add_task(f"epoch {epoch + 1}/{cfg.epochs}", total=len(order), info="")
            loss_sum, seen, ml_sum = 0.0, 0, 0.0
            for step, batch in enumerate(_train_batches(train_ds, order, cfg, train_cache, epoch, labels_t)):
                inputs, y = batch
                y = y.to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    if train_cache is not None:
                        feats, guided = model.forward_from(inputs.to(device), k, guided_block)
                    else:
                        feats, guided = model.forward_from(model.embed(inputs.to(device), k), k, guided_block)
                    logits = model.head(feats)
                    loss = F.cross_entropy(logits.float(), y, weight=class_weight, label_smoothing=cfg.label_smoothing)
                    if guided is not None:
                        ml, _ = da_vpt_metric_loss(guided, y, proxy_of_class, loss_cfg)
                        loss = loss + ml
                        ml_sum += float(ml.detach()) * len(y)
                if not torch.isfinite(loss):
                    raise VptError(f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step + 1}; nothing was saved for this epoch "
                                   "(try a lower --lr" + (" or --no-amp" if dtype else "") + ")")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
                elapsed = time.perf_counter() - t0
                progress.update(task, advance=len(y), info=f"loss {loss_sum / seen:.4f}  {seen / elapsed:.1f} img/s")
            progress.remove_task(task)
            train_time = time.perf_counter() - t0

            if val_cache is not None:
                vb = ((val_cache.batch(torch.zeros(len(ix), dtype=torch.long), torch.as_tensor(ix), device), torch.as_tensor([val_ds.labels[i] for i in ix]), k)
                      for ix in _chunks(range(len(val_ds)), cfg.batch_size))
            else:
                vb = ((torch.stack([val_ds[i][0] for i in ix]), torch.as_tensor([val_ds.labels[i] for i in ix]), None)
                      for ix in _chunks(range(len(val_ds)), cfg.batch_size))
            probs, yv, val_loss = predict_probs(model, vb, device, dtype)
            pred = probs.argmax(1)
            row = {
                "epoch": epoch + 1,
                "train_loss": round(loss_sum / seen, 6),
                "metric_loss": round(ml_sum / seen, 6) if cfg.method == "da-vpt" else "",
                "val_loss": round(val_loss, 6),
                "val_top1": round(float((pred == yv).mean()), 6),
                "val_macro_f1": round(float(f1_score(yv, pred, average="macro", labels=list(range(n_classes)), zero_division=0)), 6),
                "lr": f"{scheduler.get_last_lr()[0]:.3e}",
                "train_seconds": round(train_time, 2),
                "train_img_per_s": round(seen / train_time, 2),
            }
            history.append(row)
            score = (row["val_macro_f1"], -row["val_loss"])
            improved = best is None or tuple(score) > tuple(best)
            if improved:
                best, best_epoch, bad_epochs = list(score), epoch + 1, 0
                meta = make_meta(model, backbone, classes, data_fingerprint=manifest.fingerprint(),
                                 metrics={"epoch": epoch + 1, "val_top1": row["val_top1"], "val_macro_f1": row["val_macro_f1"], "val_loss": row["val_loss"]})
                save_prompt_file(run_dir / PROMPT_FILE, model, meta)
            else:
                bad_epochs += 1
            atomic_write_text(run_dir / METRICS_CSV, _metrics_row_csv(history))
            _save_last(run_dir, model, optimizer, scheduler, epoch, {"history": history, "best": best, "best_epoch": best_epoch, "bad_epochs": bad_epochs})
            _print_epoch(row, improved)
            if cfg.patience and bad_epochs >= cfg.patience:
                console.print(f"early stop: val macro-F1 did not improve for {cfg.patience} epochs (best epoch {best_epoch})")
                stopped_early = True
                break

    best_row = history[best_epoch - 1] if best_epoch >= 1 and best_epoch - 1 < len(history) else {}
    return TrainResult(run_dir, run_dir / PROMPT_FILE, best_epoch, best_row, tuned, nb, history, stopped_early)


def _chunks(seq, size: int):
    seq = list(seq)
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _train_batches(ds: ManifestDataset, order: np.ndarray, cfg: TrainConfig, cache: FeatureCache | None, epoch: int, labels: torch.Tensor):
    """Yield ``(inputs, labels)``: cached hidden states (one view per image drawn for this epoch) or
    decoded, augmented images via a DataLoader whose workers are seeded."""
    if cache is not None:
        views = cache.hidden.shape[0]
        rng = sample_rng(cfg.seed, 2_000_003, epoch)
        view_of = torch.as_tensor(rng.integers(views, size=len(order)), dtype=torch.long)
        order_t = torch.as_tensor(order, dtype=torch.long)
        for s in range(0, len(order), cfg.batch_size):
            ix = order_t[s : s + cfg.batch_size]
            yield cache.batch(view_of[s : s + cfg.batch_size], ix, "cpu"), labels[ix]
        return
    from torch.utils.data import DataLoader

    ds.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=order.tolist(), num_workers=cfg.workers,
                        persistent_workers=False, pin_memory=torch.cuda.is_available())
    yield from loader


@torch.no_grad()
def _mean_class_features(model: PromptedViT, ds: ManifestDataset, n_classes: int, device, batch_size: int) -> torch.Tensor:
    """``[C, D]`` mean frozen class-token feature per class (for DA-VPT's class grouping)."""
    sums = torch.zeros(n_classes, model.embed_dim)
    counts = torch.zeros(n_classes)
    bb = model.backbone
    for ix in _chunks(range(len(ds)), batch_size):
        x = torch.stack([ds.view(i, 0, False) for i in ix]).to(device)
        feats = bb.forward_head(bb.forward_features((x - model.mean) / model.std), pre_logits=True).cpu()
        y = torch.as_tensor([ds.labels[i] for i in ix])
        sums.index_add_(0, y, feats)
        counts.index_add_(0, y, torch.ones(len(ix)))
    return sums / counts.clamp(min=1).unsqueeze(1)


EPOCH_COLUMNS = ("epoch", "train loss", "val loss", "val top-1", "val macro-F1", "img/s")


def _epoch_cells(cells) -> str:
    return "  ".join(str(c).rjust(len(h)) for c, h in zip(cells, EPOCH_COLUMNS))


def _print_epoch(row: dict, improved: bool) -> None:
    """One line per epoch under the header (:data:`EPOCH_COLUMNS`)."""
    cells = (row["epoch"], f"{row['train_loss']:.4f}", f"{row['val_loss']:.4f}", f"{100 * row['val_top1']:.1f}%",
             f"{row['val_macro_f1']:.3f}", f"{row['train_img_per_s']:.1f}")
    console.print(_epoch_cells(cells) + ("  best" if improved else ""), markup=False)


def default_workers() -> int:
    """Loader workers: half the CPU cores, at most 8 (0 on a 2-core machine, where they only compete)."""
    n = os.cpu_count() or 1
    return 0 if n <= 2 else min(8, n // 2)
