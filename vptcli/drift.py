"""Drift of a folder of recent images against a run's training reference (``vpt drift``).

Three measures, each against the reference the run keeps (:mod:`vptcli.ood`):

- a kernel two-sample test on the features (:func:`vptcli.ood.mmd_test`: RBF MMD, median-heuristic
  bandwidth, permutation p-value; Gretton et al., JMLR 2012) between the reference's validation
  features and the new images' features (at most ``max_rows`` of each, a seeded random subsample);
  drift is declared when its p-value is below ``alpha``;
- the share of unfamiliar images (score above the reference's threshold), beside the share expected
  of familiar images (:attr:`vptcli.ood.OodReference.expected_false_alarm`, about ``1 - level``);
- the shift of predicted class shares: the shares predicted on the new images against those
  predicted on the validation images, and their total variation distance.

Outputs (:func:`write_report`): ``drift_report.json``, ``drift_report.md`` and ``drift_scores.png``
(histograms of the scores, reference vs new, with the threshold), all written atomically.
"""

from __future__ import annotations

import datetime as _dt
import io
from pathlib import Path

import numpy as np

from vptcli.errors import VptError
from vptcli.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from vptcli.inference import Predictor, forward_files
from vptcli.ood import SCORE_NAME, class_shares, mmd_test

REPORT_JSON = "drift_report.json"
REPORT_MD = "drift_report.md"
SCORES_PNG = "drift_scores.png"
DRIFT_EXIT_CODE = 3
"""Exit code of ``vpt drift`` when drift is detected (2 stays the code of usage errors)."""

MAX_ROWS = 512
"""At most this many new images enter the two-sample test (a seeded random subsample)."""

MAX_LISTED_ERRORS = 50
"""Unreadable files listed by name in the drift report (all are counted)."""


def measure_drift(predictor: Predictor, paths: list[Path], *, alpha: float = 0.05, permutations: int = 1000,
                  max_rows: int = MAX_ROWS, seed: int = 0, batch_size: int = 32, workers: int | None = None,
                  max_pixels: int | None = None, bit_depth: int | None = None, on_batch=None) -> tuple[dict, np.ndarray]:
    """Compare the images at ``paths`` with ``predictor``'s reference.

    Returns:
        ``(report, scores [N])``: the report dict written as ``drift_report.json`` (see the module
        docstring) and the new images' scores (for the histogram).

    Raises:
        VptError: no reference beside the model, a graph without a features output, ``alpha`` outside
            (0, 1), fewer than 2 readable images.
    """
    ref = predictor.ood
    if ref is None:
        raise VptError(f"{predictor.source}: no unfamiliar-image reference (ood_reference.safetensors) beside the model"
                       + ("; " + "; ".join(predictor.warnings) if predictor.warnings else "")
                       + "; runs trained by this vpt have one (for an older run: `vpt train DATA --out RUN --resume` "
                       "adds it), and `vpt export` copies it")
    if not 0.0 < alpha < 1.0:
        raise VptError(f"--alpha must be in (0, 1), got {alpha}")
    if permutations < 1:
        raise VptError(f"--permutations must be at least 1, got {permutations}")
    feats, probs, errors = [], [], []
    for res in forward_files(predictor, paths, batch_size=batch_size, workers=workers, max_pixels=max_pixels,
                             bit_depth=bit_depth, on_batch=on_batch):
        if res.error is not None:
            errors.append({"path": str(res.path), "reason": res.error})
        else:
            feats.append(res.features)
            probs.append(res.probabilities)
    if len(feats) < 2:
        bad = "; ".join(f"{e['path']}: {e['reason']}" for e in errors[:3]) + ("; ..." if len(errors) > 3 else "")
        raise VptError(f"fewer than 2 readable images ({len(feats)} of {len(paths)}); a drift test needs more"
                       + (f" (unreadable: {bad})" if errors else ""))
    x_new = np.stack(feats)
    scores = ref.score(x_new)
    rng = np.random.default_rng(seed)
    sub = x_new[np.sort(rng.permutation(len(x_new))[:max_rows])]
    test = mmd_test(ref.features, sub, permutations=permutations, seed=seed)
    predicted = np.stack(probs).argmax(1)
    new_shares = class_shares(predicted, len(ref.classes))
    unfamiliar = int(ref.unfamiliar(scores).sum())
    report = {
        "format": "vptcli-drift-report",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": predictor.source, "backend": predictor.backend, "device": predictor.device,
        "n_images": len(x_new), "n_errors": len(errors), "errors": errors[:MAX_LISTED_ERRORS],
        "drift": bool(test.p_value < alpha), "alpha": alpha,
        "mmd": {"mmd2": test.mmd2, "p_value": test.p_value, "bandwidth": test.bandwidth, "permutations": test.permutations,
                "n_reference": test.n_x, "n_new": test.n_y, "kernel": "rbf, median heuristic (Gretton et al. 2012)"},
        "unfamiliar": {"count": unfamiliar, "share": unfamiliar / len(x_new), "expected_share": round(ref.expected_false_alarm, 6),
                       "threshold": ref.threshold, "level": ref.level},
        "ood_score": {"score": SCORE_NAME, "feature": ref.feature,
                      "reference_median": float(np.median(ref.val_scores)), "new_median": float(np.median(scores))},
        "class_shares": [{"class": c, "training": float(ref.train_shares[i]),
                          "reference_predicted": float(ref.val_predicted_shares[i]), "new_predicted": float(new_shares[i])}
                         for i, c in enumerate(ref.classes)],
        "class_shift_total_variation": float(0.5 * np.abs(new_shares - ref.val_predicted_shares).sum()),
    }
    return report, scores


def check_report_dir(out_dir: str | Path, folder: str | Path | None = None) -> None:
    """Refuse an ``--out`` that is a file, lies inside the checked ``folder`` (the report's image would
    be read as a new image next time), or is a folder holding anything but an earlier drift report
    (an image folder, an export, a gallery): the report never lands among the user's files.

    Raises:
        VptError: naming the folder and a few of its other files.
    """
    out = Path(out_dir)
    if folder is not None and out.resolve().is_relative_to(Path(folder).resolve()):
        raise VptError(f"the drift report {out} would lie inside {folder}, the folder it checks; "
                       "pass --out outside it (or run vpt drift from another folder)")
    if out.exists() and not out.is_dir():
        raise VptError(f"--out {out}: exists and is not a folder")
    if out.is_dir():
        other = sorted(p.name for p in out.iterdir() if p.name not in (REPORT_JSON, REPORT_MD, SCORES_PNG)
                       and not p.name.startswith("."))
        if other:
            raise VptError(f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                           "write the drift report into a new folder or an earlier drift report's folder")


def write_report(out_dir: str | Path, report: dict, reference_scores: np.ndarray, new_scores: np.ndarray,
                 folder: str = "") -> list[Path]:
    """Write ``drift_report.json``, ``drift_report.md`` and ``drift_scores.png`` into ``out_dir``
    (created), each atomically. Returns the paths."""
    out = Path(out_dir)
    check_report_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {**report, "folder": folder} if folder else report
    png = out / SCORES_PNG
    atomic_write_bytes(png, scores_png(reference_scores, new_scores, report["unfamiliar"]["threshold"]))
    return [atomic_write_json(out / REPORT_JSON, report), atomic_write_text(out / REPORT_MD, report_markdown(report)), png]


def scores_png(reference: np.ndarray, new: np.ndarray, threshold: float) -> bytes:
    """PNG bytes: histograms of the reference (validation) and new images' scores, with the threshold
    (logarithmic score axis when the scores span more than two decades)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    allv = np.concatenate([reference, new, [threshold]]).astype(np.float64)
    lo, hi = max(float(allv.min()), 1e-6), max(float(allv.max()), 1e-6)
    log = hi / lo > 100
    bins = np.geomspace(lo, hi * 1.0001, 40) if log else np.linspace(float(allv.min()), float(allv.max()) + 1e-9, 40)
    fig = Figure(figsize=(7, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(np.clip(reference, lo, None) if log else reference, bins=bins, alpha=0.6, density=True,
            label=f"reference (validation, n={len(reference)})")
    ax.hist(np.clip(new, lo, None) if log else new, bins=bins, alpha=0.6, density=True, label=f"new (n={len(new)})")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("ood_score (squared Mahalanobis distance to the nearest class mean)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def report_markdown(report: dict) -> str:
    """``drift_report.md``: the verdict, the three measures and the class-share table."""
    m, u = report["mmd"], report["unfamiliar"]
    verdict = "**drift detected**" if report["drift"] else "no drift detected"
    lines = [
        "# Drift report", "",
        f"{verdict}: MMD two-sample test p = {m['p_value']:.4g} ({'<' if report['drift'] else '>='} alpha = {report['alpha']:g})",
        "",
        f"- model: `{report['model']}` ({report['backend']} on {report['device']})",
        *([f"- folder: `{report['folder']}`"] if report.get("folder") else []),
        f"- images: {report['n_images']} read, {report['n_errors']} unreadable",
        (f"- MMD²: {m['mmd2']:.4g} (RBF kernel, bandwidth {m['bandwidth']:.4g}; {m['n_reference']} reference vs "
        f"{m['n_new']} new rows; {m['permutations']} permutations)"),
        (f"- unfamiliar images: {u['count']} ({100 * u['share']:.1f} %; {100 * u['expected_share']:.1f} % expected of "
        f"familiar images; threshold {u['threshold']:.4g})"),
        f"- median ood_score: reference {report['ood_score']['reference_median']:.4g}, new {report['ood_score']['new_median']:.4g}",
        f"- predicted class shares, total variation distance: {report['class_shift_total_variation']:.3f}",
        "", "| class | training | predicted (validation) | predicted (new) |", "|---|---:|---:|---:|",
        *[f"| {r['class']} | {100 * r['training']:.1f} % | {100 * r['reference_predicted']:.1f} % | {100 * r['new_predicted']:.1f} % |"
          for r in report["class_shares"]],
        "", f"![ood scores]({SCORES_PNG})", "",
    ]
    if report["errors"]:
        lines += ["## Unreadable files", "", *[f"- `{e['path']}`: {e['reason']}" for e in report["errors"]], ""]
    return "\n".join(lines)


def default_out(folder: str | Path) -> Path:
    """``drift-<FOLDER name>-<UTC time>`` in the working folder (a new folder each run)."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"drift-{Path(folder).resolve().name}-{stamp}")


__all__ = ["DRIFT_EXIT_CODE", "REPORT_JSON", "REPORT_MD", "SCORES_PNG", "default_out", "measure_drift", "report_markdown",
           "write_report"]
