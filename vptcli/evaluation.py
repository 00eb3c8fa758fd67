"""Evaluate a trained prompt file (or run) on a manifest split: predictions -> metrics report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vptcli.errors import VptError
from vptcli.tta import describe_tta, mean_over_views, tta_views


@torch.no_grad()
def predict_probs(model, batches, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  progress=None) -> tuple[np.ndarray, np.ndarray, float]:
    """The one probability loop: run ``model`` over ``(inputs, labels, from_block)`` batches.

    Args:
        model: :class:`vptcli.prompting.PromptedViT`.
        batches: iterable of ``(inputs, labels [B] or None, from_block)``; ``from_block=None``: inputs
            are images ``[B, 3, H, W]`` in ``[0, 1]`` (the model applies its test-time augmentation);
            an int k: hidden states entering block k (a feature cache, see
            :meth:`PromptedViT.forward_from`), ``[V, B, L, D]`` for V views of each image (1, or the
            views test-time augmentation averages: :func:`vptcli.tta.mean_over_views`).
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
                    feats = model.forward_from(inputs.to(device).flatten(0, 1), from_block)[0]
                    logits = model.head(mean_over_views(feats, inputs.shape[0]))
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


SPLIT_CHOICES = ("test", "val", "train", "all")
"""``vpt eval --split`` of an ingested data set (``all``: every usable image)."""

MAX_LISTED_SKIPPED = 20
"""Skipped files of a raw folder named one by one."""


@dataclass
class EvalData:
    """What is evaluated: the manifest (read, or a raw folder scanned in memory), the images to score,
    the split (``all`` for a raw folder) and whether ``data`` was a raw folder."""

    manifest: object
    records: list
    split: str
    raw: bool


def load_eval_data(data: str | Path, split: str | None, reporter) -> EvalData:
    """The images to evaluate: ``split`` (default ``test``, or ``all``) of an ingested data set, or
    every usable image of a raw class-per-folder tree (a held-out lot; it may hold a single class).

    Raises:
        VptError: a split asked of a raw folder, an unknown split, no usable images.
    """
    from vptcli.ingest import ingest_folder
    from vptcli.manifest import Manifest, is_manifest_dir

    data = Path(data)
    if split is not None and split not in SPLIT_CHOICES:
        raise VptError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if is_manifest_dir(data):
        manifest = Manifest.read(data if data.is_dir() else data.parent)
        split = split or "test"
        return EvalData(manifest, manifest.usable(None if split == "all" else split), split, raw=False)
    if split not in (None, "all"):
        raise VptError(f"--split {split}: {data} is a plain image folder, not an ingested data set, so it has no "
                       "splits; omit --split to score every image in it")
    result = ingest_folder(data, val_fraction=0.0, test_fraction=0.0, progress=False, held_out=True)
    for line in result.warnings:
        reporter.warn(line)
    for rec in result.skipped[:MAX_LISTED_SKIPPED]:
        reporter.warn(f"skipped {rec.path}: {rec.reason}")
    if len(result.skipped) > MAX_LISTED_SKIPPED:
        reporter.warn(f"... and {len(result.skipped) - MAX_LISTED_SKIPPED} more skipped files")
    return EvalData(result.manifest, result.manifest.usable(), "all", raw=True)


def split_by_class(records: list, model_classes: list[str], data, unknown: bool) -> tuple[list, list]:
    """``(images of the model's classes, images of other classes)``, matched by class name.

    Raises:
        VptError: a class the model does not know, unless ``unknown`` (its images are then scored
            in an ``unknown`` row).
    """
    foreign = sorted({r.label for r in records} - set(model_classes))
    if foreign and not unknown:
        raise VptError(
            f"class {foreign[0]!r} in {data} is not one of the model's classes ({', '.join(model_classes)})"
            f"{f' ({len(foreign) - 1} more)' if len(foreign) > 1 else ''}; rename or remove that folder, or pass "
            "--unknown-classes to score its images in an 'unknown' row"
        )
    return [r for r in records if r.label in model_classes], [r for r in records if r.label not in model_classes]


def trained_hashes(prompt_path: Path, meta, manifest) -> tuple[set[str] | None, str]:
    """The pixel hashes of the images the model was trained or selected on, and where they come from:
    the run's ``train_images.json`` next to the prompt file, else the data set itself when it is the
    one the model was trained on (same manifest fingerprint). ``(None, "")`` when unknown."""
    from vptcli.train_config import read_train_images

    try:
        listed = read_train_images(Path(prompt_path).parent)
    except VptError as exc:
        raise VptError(f"{exc}; leakage cannot be checked: restore the file") from None
    if listed is not None:
        return {r.sha256 for r in listed[2]}, str(listed[0])
    if manifest.fingerprint() == meta.data_fingerprint:
        return {r.sha256 for r in manifest.usable() if r.split in ("train", "val")}, "the data set's own train/val splits"
    return None, ""


def check_leakage(records: list, hashes: set[str] | None, exclude: bool, data, reporter) -> tuple[list, int]:
    """``(records to score, number excluded)``: images whose pixels match a training or validation
    image (any file name) are refused, or with ``exclude`` left out with a warning.

    Raises:
        VptError: such images without ``exclude``, or nothing left after excluding them.
    """
    if hashes is None:
        reporter.warn("this run does not list its training images (made before train_images.json): leakage "
                      "between training and evaluated images cannot be checked")
        return records, 0
    leaked = [r for r in records if r.sha256 in hashes]
    if not leaked:
        return records, 0
    kept = [r for r in records if r.sha256 not in hashes]
    if not kept:
        raise VptError(f"all {len(records)} images in {data} were used to train or select this model (same pixels); "
                       "nothing is held out: evaluate the test split or a folder of new images")
    if not exclude:
        raise VptError(
            f"{len(leaked)} of {len(records)} images in {data} were used to train or select this model (same "
            f"pixels, e.g. {leaked[0].path}); their scores would be optimistic: evaluate held-out images, or pass "
            f"--exclude-trained to score the other {len(kept)}"
        )
    reporter.warn(f"--exclude-trained: left out {len(leaked)} of {len(records)} images used to train or select the model")
    return kept, len(leaked)


EXPORT_GRAPHS = ("model.onnx", "shared.onnx")
"""Files that mark an export (deployment) folder."""


def is_export_dir(folder: str | Path) -> bool:
    """Whether ``folder`` is a ``vpt export`` output (it holds an exported graph)."""
    return any((Path(folder) / name).is_file() for name in EXPORT_GRAPHS)


def default_eval_dir(model_path: str | Path, split: str) -> Path:
    """Where ``vpt eval`` writes without ``--out``: ``RUN/eval-SPLIT`` for a run folder (or a prompt
    file in one); next to an export folder, never inside it (``EXPORT-eval-SPLIT``); for a loose prompt
    file, ``eval-SPLIT`` beside it."""
    p = Path(model_path)
    folder = p if p.is_dir() else p.parent
    if is_export_dir(folder):
        return folder.parent / f"{folder.resolve().name}-eval-{split}"
    return folder / f"eval-{split}"


def evaluate(model_path: str | Path, data: str | Path, *, split: str | None = None, weights: str | None = None,
             force: bool = False, device: str = "auto", batch_size: int = 32, reporter=None,
             exclude_trained: bool = False, unknown_classes: bool = False) -> tuple[dict, dict]:
    """Evaluate a prompt file / run dir on held-out images.

    ``data``: an ingested data set (``split``: ``test`` by default, ``val``, ``train`` or ``all``) or a
    raw class-per-folder tree (every usable image; it may hold some of the model's classes). Classes are
    matched by name. Images used to train or select the model (by pixel hash) are refused, or left out
    with ``exclude_trained``. ``unknown_classes``: images of classes the model does not know are scored
    in an ``unknown`` row instead of being an error. ``reporter``: a
    :class:`vptcli.train_report.Reporter` for warnings and progress (default: silent).

    Returns:
        ``(report, context)``: the :func:`vptcli.metrics.classification_report` dict plus ``images``
        (one row per image: path, true, predicted, confidence, correct) and ``unknown`` (or None), and
        what was evaluated (model, backbone, data identity, split, excluded images).

    Raises:
        VptError: see :func:`load_eval_data`, :func:`split_by_class`, :func:`check_leakage`; no images
            of the model's classes; the prompt file does not fit the backbone.
    """
    from vptcli.artifacts import load_model, resolve_prompt_path
    from vptcli.datasets import ManifestDataset
    from vptcli.device import resolve_device
    from vptcli.manifest import resolve_image_path
    from vptcli.metrics import classification_report
    from vptcli.train_report import Reporter

    reporter = reporter or Reporter()
    prompt_path = resolve_prompt_path(model_path)
    ev = load_eval_data(data, split, reporter)
    model, meta, _backbone, warnings = load_model(model_path, weights=weights, force=force)
    for w in warnings:
        reporter.warn(w)
    classes = list(meta.classes)
    hashes, hashes_from = trained_hashes(prompt_path, meta, ev.manifest)
    records, excluded = check_leakage(ev.records, hashes, exclude_trained, data, reporter)
    known, foreign = split_by_class(records, classes, data, unknown_classes)
    if not known:
        where = f"split {ev.split!r} of {data}" if not ev.raw else str(data)
        raise VptError(f"{where} has no usable images of the model's classes ({', '.join(classes)})")
    ds = ManifestDataset(ev.manifest, None, meta.data_config, records=known + foreign,
                         classes=classes + sorted({r.label for r in foreign}))
    dev = resolve_device(device)
    model.to(dev)
    views = tta_views(model.config.tta)
    with reporter.task(f"evaluating {len(ds)} images" + (f" x {views} test-time views" if views > 1 else ""), len(ds)) as update:
        probs = predict_split(model, ds, batch_size=batch_size, device=dev, progress=update)
    n_known = len(known)
    report = classification_report(np.asarray(ds.labels[:n_known]), probs[:n_known], classes, present_only=True)
    pred = probs.argmax(1)
    report["images"] = [
        {"path": str(Path(data) / r.path if ev.raw else resolve_image_path(ev.manifest, r)), "true": r.label, "predicted": classes[int(p)],
         "confidence": round(float(probs[i, p]), 6), "correct": r.label == classes[int(p)]}
        for i, (r, p) in enumerate(zip(ds.records, pred))
    ]
    report["unknown"] = ({"classes": sorted({r.label for r in foreign}), "n_images": len(foreign),
                          "predicted": {c: int((pred[n_known:] == j).sum()) for j, c in enumerate(classes)}}
                         if foreign else None)
    context = {
        "model": str(prompt_path),
        "method": meta.method,
        "backbone": f"{meta.backbone.get('name')} ({meta.backbone.get('source')})",
        "backbone sha256": meta.backbone.get("sha256"),
        "classes": classes,
        "data": str(data),
        "data kind": "raw folder (every image)" if ev.raw else "ingested data set",
        "split": ev.split,
        "test-time augmentation": describe_tta(model.config.tta),
        "data fingerprint (manifest sha256)": ev.manifest.fingerprint(),
        "trained on (manifest sha256)": meta.data_fingerprint,
        "leakage check": (f"against {hashes_from}: {excluded} image(s) used in training left out" if hashes is not None
                          else "not possible (the run does not list its training images)"),
        "images scored": len(ds),
    }
    return report, context


EVAL_FOLDER_FILES = frozenset({"report.json", "report.md", "confusion_matrix.png", "explain"})
"""What ``vpt eval`` writes into its ``--out`` folder (see :func:`vptcli.metrics.write_report`; ``explain``:
the overlays of ``--explain N``)."""


def check_eval_out(out: Path | None, exist_ok: bool = False) -> None:
    """Refuse an ``--out`` folder that holds other files than a previous report (an image folder, a
    run), unless ``exist_ok``: the report is then written beside them and they are left as they are.

    Raises:
        VptError: ``out`` is a file, or a folder of other files without ``exist_ok``.
    """
    if out is None or not Path(out).exists():
        return
    out = Path(out)
    if not out.is_dir():
        raise VptError(f"{out}: exists and is not a folder; pass a folder for --out")
    other = sorted(p.name for p in out.iterdir() if p.name not in EVAL_FOLDER_FILES and not p.name.startswith("."))
    if other and not exist_ok:
        raise VptError(f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                       "write the report into an empty folder or a previous report folder, or pass --exist-ok to write "
                       "beside them (they are left as they are)")
