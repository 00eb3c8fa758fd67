"""Evaluate a trained prompt file (or run) on a manifest split: predictions -> metrics report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vptcli.errors import VptError


@torch.no_grad()
def predict_probs(model, batches, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  progress=None) -> tuple[np.ndarray, np.ndarray, float]:
    """The one probability loop: run ``model`` over ``(inputs, labels, from_block)`` batches.

    Args:
        model: :class:`vptcli.prompting.PromptedViT`.
        batches: iterable of ``(inputs, labels [B] or None, from_block)``; ``from_block=None``: inputs
            are images ``[B, 3, H, W]`` in ``[0, 1]``; an int k: hidden states entering block k
            (a feature cache, see :meth:`PromptedViT.forward_from`).
        dtype: autocast dtype (AMP on CUDA) or None for fp32.
        progress: optional ``progress(n_done)`` callback.

    Returns:
        ``(probs [N, C] float32, labels [N] (empty without labels), mean cross-entropy loss (nan
        without labels))``.
    """
    device = torch.device(device)
    model.eval()
    probs, labels, loss_sum, n = [], [], 0.0, 0
    with torch.inference_mode():
        for inputs, y, from_block in batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                if from_block is None:
                    logits = model(inputs.to(device))
                else:
                    logits = model.head(model.forward_from(inputs.to(device), from_block)[0])
            logits = logits.float()
            if y is not None:
                y = y.to(device)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                labels.append(y.cpu().numpy())
            n += len(logits)
            probs.append(logits.softmax(-1).cpu().numpy())
            if progress is not None:
                progress(n)
    if not probs:
        return np.zeros((0, model.num_classes), dtype=np.float32), np.zeros(0, dtype=np.int64), float("nan")
    ys = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    return np.concatenate(probs), ys, (loss_sum / n if labels else float("nan"))


def predict_split(model, dataset, *, batch_size: int = 32, device: str | torch.device = "cpu", progress=None) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` of ``model`` on every image of ``dataset`` (eval transforms).

    Args:
        model: :class:`vptcli.prompting.PromptedViT` (input ``[B, 3, H, W]`` in ``[0, 1]``).
        dataset: :class:`vptcli.datasets.ManifestDataset` without augmentation.
        progress: optional ``progress(n_done)`` callback.
    """
    batches = ((torch.stack([dataset[i][0] for i in ix]), None, None) for ix in chunks(range(len(dataset)), batch_size))
    return predict_probs(model, batches, device, progress=progress)[0]


def chunks(seq, size: int):
    """Consecutive lists of at most ``size`` items of ``seq``."""
    seq = list(seq)
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def evaluate(model_path: str | Path, data: str | Path, *, split: str = "test", weights: str | None = None, force: bool = False,
             device: str = "auto", batch_size: int = 32, reporter=None) -> tuple[dict, dict]:
    """Evaluate a prompt file / run dir on ``split`` of an ingested data set.

    ``reporter``: a :class:`vptcli.train_report.Reporter` for warnings and progress (default: silent).

    Returns:
        ``(report, context)``: the :func:`vptcli.metrics.classification_report` dict and what was
        evaluated (model path, backbone, data, split).

    Raises:
        VptError: class names of the data and the file differ, the split is empty, or the prompt
            file does not fit the backbone (see :func:`vptcli.artifacts.check_compatible`).
    """
    from vptcli.artifacts import load_model, resolve_prompt_path
    from vptcli.datasets import ManifestDataset
    from vptcli.device import resolve_device
    from vptcli.ingest import load_or_ingest
    from vptcli.metrics import classification_report
    from vptcli.train_report import Reporter

    reporter = reporter or Reporter()
    model, meta, _backbone, warnings = load_model(model_path, weights=weights, force=force)
    for w in warnings:
        reporter.warn(w)
    manifest = load_or_ingest(Path(data))
    if list(manifest.classes) != list(meta.classes):
        raise VptError(f"classes differ: data has {manifest.classes}, the model was trained on {meta.classes}")
    ds = ManifestDataset(manifest, split, meta.data_config, augment=False)
    if len(ds) == 0:
        raise VptError(f"split {split!r} of {data} has no usable images")
    dev = resolve_device(device)
    model.to(dev)
    with reporter.task(f"evaluating {split}", len(ds)) as update:
        probs = predict_split(model, ds, batch_size=batch_size, device=dev, progress=update)
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
        reporter.warn(f"evaluating on the {split} split the model was trained/selected on: the figures are optimistic")
    return report, context
