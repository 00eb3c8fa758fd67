"""Evaluation metrics and reports for ``vpt eval``.

Metrics come from scikit-learn (accuracy, balanced accuracy, precision / recall / F1, confusion matrix,
ROC-AUC, average precision) except the expected calibration error, which scikit-learn lacks and which is
written here after Guo et al., "On Calibration of Modern Neural Networks", ICML 2017.

All rates are fractions in [0, 1], never percentages. The report is a plain JSON-serialisable dict;
:func:`write_report` saves it as ``report.json`` + ``report.md`` + ``confusion_matrix.png`` (atomic writes
through :mod:`vptcli.fsutil`);
``vpt eval`` prints it as tables (:mod:`vptcli.commands.render`).

matplotlib, scikit-learn and rich are imported inside the functions so that importing this module (and
starting the CLI) stays cheap.
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vptcli import fsutil
from vptcli.errors import VptError

__all__ = [
    "CONFUSION_PNG",
    "DEFAULT_N_BINS",
    "REPORT_FILES",
    "REPORT_JSON",
    "REPORT_MD",
    "EmptyEvaluationError",
    "classification_report",
    "confusion_matrix_png",
    "expected_calibration_error",
    "report_markdown",
    "write_report",
]

DEFAULT_N_BINS = 15
"""Number of equal-width confidence bins for the ECE (Guo et al. 2017 use 15)."""

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion_matrix.png"
REPORT_FILES = (REPORT_JSON, REPORT_MD, CONFUSION_PNG)
"""File names :func:`write_report` writes inside ``out_dir`` (also the keys of the dict it returns)."""

_PROB_SUM_ATOL = 1e-3
"""How far a row of ``probs`` may sum from 1 (float16/bf16 softmax cast to float32 stays well inside)."""


class EmptyEvaluationError(VptError, ValueError):
    """Raised when there is nothing to evaluate (N == 0).

    Both a :class:`~vptcli.errors.VptError` (the CLI prints it and exits 2: an empty split is a user
    situation) and a :class:`ValueError` (what a library caller expects for empty input).
    """


# --------------------------------------------------------------------------------------------------
# metrics


def expected_calibration_error(confidences: Any, correct: Any, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error (ECE) of top-1 predictions, equal-width binning.

    Following Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (eq. 3), with ``M``
    equal-width bins ``B_m = {i : conf_i in ((m-1)/M, m/M]}`` (a confidence of exactly 0 goes into the
    first bin, so every confidence in [0, 1] lands in exactly one bin)::

        ECE = sum_m |B_m| / N * | acc(B_m) - conf(B_m) |
        acc(B_m)  = mean of correct_i over i in B_m
        conf(B_m) = mean of conf_i   over i in B_m

    Empty bins contribute nothing. A bin edge belongs to the lower bin (``0.5`` with two bins is in
    ``(0, 0.5]``).

    Args:
        confidences: ``[N]`` top-1 confidence of each prediction (the max softmax probability),
            fractions in [0, 1].
        correct: ``[N]`` whether each top-1 prediction was right (bool or 0/1).
        n_bins: number of bins ``M`` (>= 1).

    Returns:
        The ECE, a fraction in [0, 1] (0 = perfectly calibrated).

    Raises:
        ValueError: N == 0, shapes differ or are not 1-D, ``n_bins`` < 1, a confidence is not finite or
            outside [0, 1], or ``correct`` holds something other than 0/1.
    """
    conf = np.asarray(confidences, dtype=np.float64)
    corr_raw = np.asarray(correct)
    if conf.ndim != 1 or corr_raw.ndim != 1:
        raise ValueError(
            f"confidences and correct must be 1-D [N]; got shapes {conf.shape} and {corr_raw.shape}"
        )
    if conf.shape != corr_raw.shape:
        raise ValueError(f"confidences {conf.shape} and correct {corr_raw.shape} differ in length")
    if conf.size == 0:
        raise ValueError("cannot compute ECE of zero predictions (N == 0)")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    if not np.all(np.isfinite(conf)) or conf.min() < 0.0 or conf.max() > 1.0:
        raise ValueError("confidences must be finite fractions in [0, 1]")
    corr = corr_raw.astype(np.float64)
    if not np.all((corr == 0.0) | (corr == 1.0)):
        raise ValueError("correct must hold booleans or 0/1")

    n_bins = int(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # index of the bin (lo, hi] holding each confidence: the number of inner edges strictly below it
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_corr = np.bincount(idx, weights=corr, minlength=n_bins)
    # sum_m |B_m|/N * |acc_m - conf_m| == sum_m |sum_corr_m - sum_conf_m| / N (empty bins give 0)
    ece = float(np.abs(sum_corr - sum_conf).sum() / conf.size)
    return min(max(ece, 0.0), 1.0)


def _check_inputs(y_true: Any, probs: Any, classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D [N] class indices; got shape {y.shape}")
    if p.ndim != 2:
        raise ValueError(f"probs must be 2-D [N, C] probabilities; got shape {p.shape}")
    if y.shape[0] == 0 or p.shape[0] == 0:
        raise EmptyEvaluationError("no images to evaluate (N == 0): check that the chosen split holds images")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} labels but probs has {p.shape[0]} rows")
    classes = [str(c) for c in classes]
    if p.shape[1] != len(classes):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(classes)} class names were given")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes; got {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique; got {classes}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise ValueError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"y_true holds class indices outside [0, {len(classes) - 1}]")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs holds NaN or infinite values")
    if p.min() < 0.0 or p.max() > 1.0 + _PROB_SUM_ATOL:
        raise ValueError("probs must be probabilities in [0, 1] (softmax outputs, not logits)")
    sums = p.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_PROB_SUM_ATOL):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(
            f"each row of probs must sum to 1 (softmax outputs, not logits); row {worst} sums to "
            f"{sums[worst]:.6f}"
        )
    return y, np.clip(p, 0.0, 1.0), classes


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, n_bins: int = DEFAULT_N_BINS,
    present_only: bool = False,
) -> dict:
    """All evaluation metrics of one split, as a JSON-serialisable dict.

    The prediction of each image is the top-1 class ``argmax(probs[i])`` (ties go to the lower index)
    and its confidence is ``max(probs[i])``.

    Args:
        y_true: ``[N]`` integer true class indices in ``[0, C)``.
        probs: ``[N, C]`` softmax probabilities (each row sums to 1 within 1e-3).
        classes: the ``C`` class names, index ``i`` naming column ``i`` (unique).
        n_bins: equal-width confidence bins for the ECE.
        present_only: ``per_class`` and ``macro_f1`` cover only the classes present in ``y_true`` (a
            held-out lot that holds some of the model's classes); the confusion matrix keeps all ``C``.

    Returns:
        A dict with exactly these keys (rates are fractions in [0, 1]):

        - ``accuracy``: top-1 accuracy (``sklearn.metrics.accuracy_score``).
        - ``balanced_accuracy``: mean per-class recall over the classes present in ``y_true``
          (``sklearn.metrics.balanced_accuracy_score``).
        - ``macro_f1``: unweighted mean of the per-class F1 over all ``C`` classes (a class with no
          support and no predictions counts as F1 = 0, like in ``per_class``), i.e. the mean of
          ``per_class[*]["f1"]``.
        - ``per_class``: class name -> ``{"precision", "recall", "f1", "support"}``
          (``sklearn.metrics.precision_recall_fscore_support``, ``zero_division=0``; support is the
          number of true images of that class).
        - ``confusion_matrix``: ``C x C`` list of lists of counts, rows = true class, columns =
          predicted class, every class has a row and column even when absent.
        - ``ece``: expected calibration error of the top-1 confidence (:func:`expected_calibration_error`).
        - ``roc_auc``, ``pr_auc``: only when ``C == 2``; positive class = index 1, score = ``probs[:, 1]``
          (``roc_auc_score`` and ``average_precision_score``). Both are ``None`` when ``y_true`` holds a
          single class (the curves are undefined); then an extra key ``auc_note`` says why.
        - ``n_images``: N.
        - ``classes``: the class names.

    Raises:
        EmptyEvaluationError: N == 0 (a ``ValueError`` and a ``VptError``).
        ValueError: shapes disagree, labels out of range, probabilities not in [0, 1] or rows not
            summing to 1, fewer than 2 or duplicate class names.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y, p, classes = _check_inputs(y_true, probs, classes)
    n, c = p.shape
    labels = list(range(c))
    y_pred = np.argmax(p, axis=1)
    conf = p[np.arange(n), y_pred]

    with warnings.catch_warnings():
        # balanced_accuracy_score warns when a predicted class is absent from y_true; the result is
        # still the documented mean recall over the present classes.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y, y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    scored = sorted({int(v) for v in y}) if present_only else labels
    macro_f1 = float(f1_score(y, y_pred, labels=scored, average="macro", zero_division=0))
    report: dict[str, Any] = {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes) if i in scored
        },
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).astype(int).tolist(),
        "ece": expected_calibration_error(conf, y_pred == y, n_bins=n_bins),
    }
    if c == 2:
        present = np.unique(y)
        if present.size < 2:
            only = classes[int(present[0])]
            report["roc_auc"] = None
            report["pr_auc"] = None
            report["auc_note"] = (
                f"ROC-AUC and PR-AUC are undefined: every image in this split is of class {only!r}; "
                "both classes must be present"
            )
        else:
            score = p[:, 1]
            report["roc_auc"] = float(roc_auc_score(y, score))
            report["pr_auc"] = float(average_precision_score(y, score))
    report["n_images"] = int(n)
    report["classes"] = list(classes)
    return report


# --------------------------------------------------------------------------------------------------
# confusion-matrix figure


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


_FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "Droid Sans Fallback",
    "Microsoft YaHei",
    "Yu Gothic",
    "Malgun Gothic",
    "Hiragino Sans",
    "Arial Unicode MS",
    "Noto Sans",
)
"""Fonts tried, when installed, for glyphs DejaVu Sans lacks (CJK class names)."""


@functools.lru_cache(maxsize=1)
def _font_family() -> list[str]:
    """DejaVu Sans first, then whichever fallback fonts are installed (matplotlib >= 3.6 falls back per glyph)."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *[name for name in _FALLBACK_FONTS if name in installed]]


def confusion_matrix_png(
    cm: Any,
    classes: list[str],
    path: str | os.PathLike,
    *,
    title: str = "Confusion matrix (rows: true class, colour: fraction of row)",
) -> Path:
    """Save a confusion matrix as a PNG image, atomically.

    Cells show the counts; their colour is the row-normalised fraction (recall of the true class on the
    diagonal), so rare classes stay readable. Rows are true classes (y axis), columns predicted classes
    (x axis). Long class names are rotated; names are drawn as plain text (no mathtext, so ``$`` is safe);
    glyphs the font lacks are drawn as boxes rather than failing. Uses the Agg canvas directly, so it
    changes no global matplotlib state and needs no display.

    Args:
        cm: ``[C, C]`` counts, rows = true, columns = predicted (list of lists or array).
        classes: the ``C`` class names.
        path: destination file (parent folders are created).
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: ``cm`` is not square ``[C, C]`` with ``C == len(classes)``, or holds negative counts.
        OSError: the file cannot be written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(cm)
    classes = [str(c) for c in classes]
    c = len(classes)
    if counts.shape != (c, c):
        raise ValueError(f"confusion matrix must be [{c}, {c}] for {c} classes; got shape {counts.shape}")
    if c and counts.min() < 0:
        raise ValueError("confusion matrix holds negative counts")
    frac = _row_normalised(counts)

    longest = max((len(s) for s in classes), default=1)
    rotate = longest > 6 or c > 8
    cell = 0.55 if c <= 20 else 0.3
    label_space = min(0.09 * longest, 3.5)
    width = max(4.5, c * cell + label_space + 2.0)
    height = max(3.8, c * cell + (label_space if rotate else 0.4) + 1.2)
    tick_size = 10 if c <= 10 else (8 if c <= 25 else 6)

    family = _font_family()
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of true class", parse_math=False)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(
        classes,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=tick_size,
        fontfamily=family,
        parse_math=False,
    )
    ax.set_yticklabels(classes, fontsize=tick_size, fontfamily=family, parse_math=False)
    ax.set_xlabel("predicted class", parse_math=False)
    ax.set_ylabel("true class", parse_math=False)
    ax.set_title(str(title), fontsize=10, fontfamily=family, parse_math=False)
    if c <= 30:
        cell_font = 10 if c <= 10 else (8 if c <= 20 else 6)
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=cell_font,
                    color="white" if frac[i, j] > 0.5 else "black",
                    parse_math=False,
                )
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # "Glyph ... missing from font(s)": drawn as a box, not an error.
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph.*missing", category=UserWarning)
        fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.15)
    return fsutil.atomic_write_bytes(path, buf.getvalue())


def training_curves_png(rows: list[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Save a run's training curves as a PNG, atomically: loss (training and validation) and the
    validation top-1 and macro-F1 per epoch, from ``metrics.csv`` rows (epoch 0, the head fitted before
    any epoch, included). Agg canvas, no global matplotlib state.

    Args:
        rows: ``metrics.csv`` rows with ``epoch``, ``train_loss``, ``val_loss``, ``val_top1``,
            ``val_macro_f1``.
        path: destination file.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(9, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    loss_ax, score_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", label="train loss")
    loss_ax.plot(epochs, [float(r["val_loss"]) for r in rows], marker="o", label="val loss")
    loss_ax.set_title("loss")
    score_ax.plot(epochs, [float(r["val_top1"]) for r in rows], marker="o", label="val top-1")
    score_ax.plot(epochs, [float(r["val_macro_f1"]) for r in rows], marker="o", label="val macro-F1")
    score_ax.set_ylim(-0.02, 1.02)
    score_ax.set_title("validation")
    for ax in (loss_ax, score_ax):
        ax.set_xlabel("epoch (0: head fitted before training)" if epochs and epochs[0] == 0 else "epoch")
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return fsutil.atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# markdown


def _md(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    return text.replace("\\", "\\\\").replace("|", "\\|")


def format_value(value: Any) -> str:
    """A metric as text: 4 decimals, ``n/a`` for None / NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def headline_metrics(report: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, value)`` of the headline metrics, in display order."""
    rows: list[tuple[str, Any]] = [
        ("top-1 accuracy", report["accuracy"]),
        ("balanced accuracy", report["balanced_accuracy"]),
        ("macro-F1", report["macro_f1"]),
        ("ECE (top-1 confidence)", report["ece"]),
    ]
    if "roc_auc" in report:
        rows.append(("ROC-AUC", report["roc_auc"]))
    if "pr_auc" in report:
        rows.append(("PR-AUC (average precision)", report["pr_auc"]))
    rows.append(("images", report["n_images"]))
    return rows


def plain_value(value: Any) -> str:
    """A context value as text a person reads: mappings as ``key: value; ...``, lists comma-joined,
    numbers and strings as they are (never a Python repr)."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_value(v) for v in value)
    if value is None:
        return "n/a"
    return str(value)


MAX_MISCLASSIFIED = 200
"""Misclassified images listed in ``report.md`` (``report.json`` lists every image)."""


def _misclassified_lines(report: Mapping[str, Any]) -> list[str]:
    """The ``Misclassified`` section of ``report.md`` (only when the report has per-image rows)."""
    rows = report.get("images")
    if rows is None:
        return []
    wrong = [r for r in rows if not r["correct"]]
    lines = ["## Misclassified", ""]
    if not wrong:
        return [*lines, "None.", ""]
    lines += ["| path | true | predicted | confidence |", "|---|---|---|---:|"]
    lines += [f"| {_md(r['path'])} | {_md(r['true'])} | {_md(r['predicted'])} | {r['confidence']:.4f} |"
              for r in wrong[:MAX_MISCLASSIFIED]]
    if len(wrong) > MAX_MISCLASSIFIED:
        lines.append(f"\n... {len(wrong) - MAX_MISCLASSIFIED} more in report.json")
    return [*lines, ""]


def report_markdown(
    report: Mapping[str, Any],
    *,
    title: str,
    context: Mapping[str, Any] | None = None,
    image: str | None = None,
) -> str:
    """A human-readable Markdown report of a :func:`classification_report` dict.

    Sections: context (e.g. model / prompt file, data, split, device; as given, in order), headline
    metrics, per-class precision / recall / F1 / support, confusion matrix (rows true, columns
    predicted), and notes defining the metrics. Rates are printed as fractions with 4 decimals.

    Args:
        report: the dict returned by :func:`classification_report` (or read back from ``report.json``).
        title: the level-1 heading.
        context: optional name -> value pairs shown first (values printed with ``str``).
        image: optional relative path of the confusion-matrix PNG to embed.

    Returns:
        The Markdown text (ends with a newline).

    Raises:
        KeyError: a required report key is missing.
    """
    classes = [str(c) for c in report["classes"]]
    lines = [f"# {str(title).strip()}", ""]
    if context:
        lines += ["| | |", "|---|---|"]
        lines += [f"| {_md(k)} | {_md(plain_value(v))} |" for k, v in context.items()]
        lines.append("")

    lines += ["## Headline metrics", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {name} | {format_value(value)} |" for name, value in headline_metrics(report)]
    lines.append("")
    if report.get("auc_note"):
        lines += [f"> {_md(report['auc_note'])}", ""]

    lines += [
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in report["per_class"].items():
        lines.append(
            f"| {_md(name)} | {format_value(m['precision'])} | {format_value(m['recall'])} | {format_value(m['f1'])} "
            f"| {m['support']} |"
        )
    lines.append("")

    lines += ["## Confusion matrix", "", "Rows: true class; columns: predicted class.", ""]
    lines.append("| true \\ predicted | " + " | ".join(_md(c) for c in classes) + " |")
    lines.append("|---|" + "---:|" * len(classes))
    for name, row in zip(classes, report["confusion_matrix"]):
        lines.append(f"| {_md(name)} | " + " | ".join(str(int(v)) for v in row) + " |")
    unknown = report.get("unknown")
    if unknown:
        label = "unknown (" + ", ".join(unknown["classes"]) + ")"
        lines.append(f"| {_md(label)} | " + " | ".join(str(unknown["predicted"].get(c, 0)) for c in classes) + " |")
        lines += ["", (f"> {unknown['n_images']} image(s) of classes the model does not know are counted in the "
                       "unknown row only (always wrong); the metrics above cover the model's classes.")]
    lines.append("")
    if image:
        lines += [f"![confusion matrix]({image})", ""]
    lines += _misclassified_lines(report)

    lines += [
        "## Notes",
        "",
        (
            "- All rates are fractions in [0, 1]; prediction = top-1 class, confidence = its softmax "
            "probability."
        ),
        (
            "- Balanced accuracy: mean recall over the classes present in the data. Macro-F1: unweighted "
            "mean of the per-class F1 over all classes (zero when a class has no true or predicted images)."
        ),
        (
            "- ECE: expected calibration error, equal-width confidence bins, sum over bins of "
            "|bin|/N · |accuracy(bin) − mean confidence(bin)| (Guo et al., ICML 2017)."
        ),
    ]
    if "roc_auc" in report:
        lines.append(
            f"- ROC-AUC and PR-AUC (average precision) treat {_md(classes[1])!r} (index 1) as the positive "
            "class, scored by its probability."
        )
    return "\n".join(lines) + "\n"


def write_report(
    report: Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    title: str,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``confusion_matrix.png`` into ``out_dir``, atomically.

    ``report.json`` is the report dict (UTF-8, indented) with ``context`` added under the key
    ``"context"`` (the model and data identity that ``report.md`` shows).

    Args:
        report: the dict returned by :func:`classification_report`.
        out_dir: destination folder (created if missing).
        title: heading of the Markdown report.
        context: optional name -> value pairs for the Markdown report (model, data, split, ...).

    Returns:
        ``{"report.json": path, "report.md": path, "confusion_matrix.png": path}`` (file name -> path
        written; see :data:`REPORT_FILES`).

    Raises:
        VptError: ``out_dir`` exists and is not a folder, or a file cannot be written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise VptError(f"{out} exists and is not a folder: choose another --out")
    try:
        paths = {
            REPORT_JSON: fsutil.atomic_write_json(out / REPORT_JSON, {**report, "context": dict(context or {})}),
            CONFUSION_PNG: confusion_matrix_png(
                report["confusion_matrix"], list(report["classes"]), out / CONFUSION_PNG
            ),
        }
        md = report_markdown(report, title=title, context=context, image=CONFUSION_PNG)
        paths[REPORT_MD] = fsutil.atomic_write_text(out / REPORT_MD, md)
    except OSError as exc:
        raise VptError(f"cannot write the evaluation report into {out}: {exc}; check the folder") from exc
    return {key: paths[key] for key in REPORT_FILES}
