"""Evaluate a trained prompt file (or run) on a manifest split: predictions -> metrics report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vptcli.errors import VptError


@torch.no_grad()
def predict_split(model, dataset, *, batch_size: int = 32, device: str | torch.device = "cpu", progress=None) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` of ``model`` on every image of ``dataset`` (eval transforms).

    Args:
        model: :class:`vptcli.prompting.PromptedViT` (input ``[B, 3, H, W]`` in ``[0, 1]``).
        dataset: :class:`vptcli.datasets.ManifestDataset` without augmentation.
        progress: optional ``progress(n_done)`` callback.
    """
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            idx = range(start, min(len(dataset), start + batch_size))
            x = torch.stack([dataset[i][0] for i in idx]).to(device)
            out.append(model(x).float().softmax(-1).cpu().numpy())
            if progress is not None:
                progress(idx.stop)
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), dtype=np.float32)


def evaluate(model_path: str | Path, data: str | Path, *, split: str = "test", weights: str | None = None, force: bool = False,
             device: str = "auto", batch_size: int = 32, show_progress: bool = True) -> tuple[dict, dict]:
    """Evaluate a prompt file / run dir on ``split`` of an ingested data set.

    Returns:
        ``(report, context)``: the :func:`vptcli.metrics.classification_report` dict and what was
        evaluated (model path, backbone, data, split).

    Raises:
        VptError: class names of the data and the file differ, the split is empty, or the prompt
            file does not fit the backbone (see :func:`vptcli.artifacts.check_compatible`).
    """
    from rich.progress import Progress

    from vptcli.artifacts import load_model, resolve_prompt_path
    from vptcli.console import console, warn
    from vptcli.datasets import ManifestDataset
    from vptcli.ingest import load_or_ingest
    from vptcli.metrics import classification_report
    from vptcli.training import resolve_device

    model, meta, _backbone, warnings = load_model(model_path, weights=weights, force=force)
    for w in warnings:
        warn(w)
    manifest = load_or_ingest(Path(data))
    if list(manifest.classes) != list(meta.classes):
        raise VptError(f"classes differ: data has {manifest.classes}, the model was trained on {meta.classes}")
    ds = ManifestDataset(manifest, split, meta.data_config, augment=False)
    if len(ds) == 0:
        raise VptError(f"split {split!r} of {data} has no usable images")
    dev = resolve_device(device)
    model.to(dev)
    with Progress(console=console, transient=True, disable=not show_progress) as progress:
        task = progress.add_task(f"evaluating {split}", total=len(ds))
        probs = predict_split(model, ds, batch_size=batch_size, device=dev, progress=lambda n: progress.update(task, completed=n))
    report = classification_report(np.asarray(ds.labels), probs, list(meta.classes))
    context = {
        "model": str(resolve_prompt_path(model_path)),
        "method": meta.method,
        "backbone": meta.backbone,
        "data": str(data),
        "split": split,
        "data_fingerprint": manifest.fingerprint(),
        "trained_on_fingerprint": meta.data_fingerprint,
    }
    if manifest.fingerprint() == meta.data_fingerprint and split in ("train", "val"):
        warn(f"evaluating on the {split} split the model was trained/selected on: the figures are optimistic")
    return report, context
