"""Unfamiliar images: a Mahalanobis score on the head's input features, and a kernel two-sample test.

**Per image** (:class:`OodReference`): the score of an image is its smallest squared Mahalanobis
distance to a class mean, with one covariance shared by all classes — the detector of Lee et al., "A
Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS
2018 (class-conditional Gaussians with a tied covariance on a trained classifier's features). The
features are the head's input (:meth:`vptcli.prompting.PromptedViT.features`, ``[N, F]``): the same
forward pass that classifies the image gives its score, in PyTorch and in an exported ONNX graph (its
``features`` output), and for a linear probe they are the frozen backbone's own features. The shared
covariance is estimated with Ledoit-Wolf shrinkage (:class:`sklearn.covariance.LedoitWolf`) on the
class-centred training features, so it stays invertible and stable when there are fewer images than
feature dimensions. The threshold is taken on the validation images' scores (images the model was
not fitted on) at the split-conformal rank ``k = ceil((n + 1) * level)`` of ``n`` sorted scores
(Vovk et al., "Algorithmic Learning in a Random World", 2005; Angelopoulos & Bates, "A Gentle
Introduction to Conformal Prediction", 2021), so that a new image from the training distribution
scores above it with probability at most ``(n + 1 - k) / (n + 1)`` (about ``1 - level``, default
:data:`DEFAULT_LEVEL`). With fewer than ``level / (1 - level)`` validation images that rank does not
exist; the largest validation score is used and the rate is ``1 / (n + 1)``
(:attr:`OodReference.expected_false_alarm` says which).

**Per batch** (:func:`mmd_test`): the kernel maximum mean discrepancy two-sample test of Gretton et
al., "A Kernel Two-Sample Test", JMLR 2012 — Gaussian (RBF) kernel with the median heuristic
bandwidth, the biased statistic ``MMD²_b``, and a permutation p-value.

Why this and not a library detector: scikit-learn (already a dependency) gives the shrunk covariance;
pytorch-ood's Mahalanobis detector fits an unshrunk empirical covariance (pseudo-inverse) through a
model in the loop, which does not serve the ONNX path, and the maintained drift libraries
(alibi-detect) bring a TensorFlow stack. The score and the test are a few lines of numpy each.

The reference is a small safetensors file, :data:`OOD_FILE`, beside the prompt file (run folder and
export folder), so the prompt file itself stays as small as before. It records the digest of the
prompt tensors it was computed with; a reference beside another prompt file is not used.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vptcli.errors import VptError

OOD_FILE = "ood_reference.safetensors"
"""The reference's file name, beside ``prompts.safetensors``."""

FORMAT = "vptcli-ood-reference"
DEFAULT_LEVEL = 0.95
"""Level of the threshold: about 5 % of familiar images are flagged. On ELPV (docs/operations.md)
the validation scores have a long upper tail, so a 99 % threshold sits at their largest values and
flags far fewer images of another cell type (17 % against 98 % at 95 %); ``vpt predict --ood-level``
picks another level from the same reference."""

REFERENCE_ROWS = 512
"""At most this many validation feature rows are kept for the two-sample test."""

SCORE_RTOL = 1e-5
"""Relative tolerance of the threshold comparison (ONNX Runtime and PyTorch features differ by ~1e-6)."""

SCORE_NAME = "mahalanobis (min over classes, shared Ledoit-Wolf covariance; Lee et al. 2018)"


@dataclass
class OodReference:
    """What a run keeps about its training images in feature space.

    Attributes:
        means: ``[C, F]`` class means of the training features.
        precision: ``[F, F]`` inverse of the shared (Ledoit-Wolf shrunk) covariance.
        threshold: scores above it are unfamiliar.
        level: the validation quantile the threshold was taken at.
        features: ``[M, F]`` validation features (a random subsample of at most :data:`REFERENCE_ROWS`)
            for the two-sample test.
        val_scores: ``[N_val]`` float64 scores of every validation image (the calibration sample; the
            threshold is one of them).
        train_shares: ``[C]`` class shares of the training images.
        val_predicted_shares: ``[C]`` shares of the classes the model predicts on the validation images.
        classes: class names, index order.
        prompt_sha256: digest of the prompt tensors the features were computed with.
        feature: what the features are (the head input's name).
        n_train: training feature rows (all cached views) the means and covariance come from.
        shrinkage: the Ledoit-Wolf shrinkage coefficient.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    level: float
    features: np.ndarray
    val_scores: np.ndarray
    train_shares: np.ndarray
    val_predicted_shares: np.ndarray
    classes: list[str]
    prompt_sha256: str = ""
    feature: str = "head input"
    n_train: int = 0
    shrinkage: float = 0.0
    extra: dict = field(default_factory=dict)

    def at_level(self, level: float) -> OodReference:
        """The same reference with its threshold at another ``level`` (conformal rank of the stored
        validation scores; nothing is recomputed).

        Raises:
            VptError: ``level`` outside (0, 1).
        """
        import dataclasses

        if not 0.0 < level < 1.0:
            raise VptError(f"--ood-level must be in (0, 1), got {level}")
        scores = np.sort(self.val_scores)
        return dataclasses.replace(self, level=level, threshold=float(scores[conformal_rank(len(scores), level) - 1]))

    @property
    def expected_false_alarm(self) -> float:
        """Share of familiar images expected above the threshold: ``(n + 1 - k) / (n + 1)`` for the
        conformal rank ``k`` (capped at ``n``) of ``n`` validation scores."""
        n = len(self.val_scores)
        return (n + 1 - conformal_rank(n, self.level)) / (n + 1)

    @property
    def dim(self) -> int:
        """Feature width ``F``."""
        return int(self.means.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """``[N, F]`` features -> ``[N]`` float64 scores (:func:`mahalanobis_scores`)."""
        return mahalanobis_scores(features, self.means, self.precision)

    def unfamiliar(self, scores: np.ndarray) -> np.ndarray:
        """``[N]`` bool: score above the threshold by more than a relative :data:`SCORE_RTOL` (so the
        validation image whose score is the threshold is not flagged by either backend's rounding)."""
        return np.asarray(scores) > self.threshold * (1.0 + SCORE_RTOL)


def mahalanobis_scores(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``min_c (x - mu_c)^T P (x - mu_c)`` for each row ``x`` of ``features``.

    Args:
        features: ``[N, F]``; means: ``[C, F]``; precision: ``[F, F]`` (symmetric).

    Returns:
        ``[N]`` float64, the smallest squared Mahalanobis distance to a class mean (Lee et al. 2018).

    Raises:
        VptError: a feature width that is not the reference's.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != means.shape[1]:
        raise VptError(f"features of shape {tuple(x.shape)} do not fit the reference (width {means.shape[1]})")
    mu = np.asarray(means, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    xp = x @ p
    d = (xp * x).sum(1, keepdims=True) - 2.0 * xp @ mu.T + ((mu @ p) * mu).sum(1)[None, :]
    return np.maximum(d.min(1), 0.0)


def fit_reference(train_features, train_labels, val_features, classes: list[str], *, val_predicted=None,
                  level: float = DEFAULT_LEVEL, max_rows: int = REFERENCE_ROWS, seed: int = 0,
                  prompt_sha256: str = "", feature: str = "head input") -> OodReference:
    """Fit the reference: class means and a shared Ledoit-Wolf covariance on the training features,
    the threshold at the ``level`` quantile of the validation scores.

    Args:
        train_features: ``[N, F]`` (every view of every training image); train_labels: ``[N]`` int.
        val_features: ``[N_val, F]`` the validation images as the model predicts them (plain, or the
            mean over the test-time augmented views).
        val_predicted: ``[N_val]`` int classes the model predicts on them (for the class-share shift).
        level: threshold quantile in (0, 1).

    Raises:
        VptError: no training or validation features, a class without training features, a level
            outside (0, 1).
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, dtype=np.float64)
    y = np.asarray(train_labels, dtype=np.int64)
    xv = np.asarray(val_features, dtype=np.float64)
    if not 0.0 < level < 1.0:
        raise VptError(f"the unfamiliar-image level must be in (0, 1), got {level}")
    if len(x) < 2 or len(xv) == 0:
        raise VptError("the unfamiliar-image reference needs training and validation images")
    n_classes = len(classes)
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        raise VptError(f"no training features for class(es) {[classes[i] for i in np.flatnonzero(counts == 0)]}")
    means = np.stack([x[y == c].mean(0) for c in range(n_classes)])
    lw = LedoitWolf(assume_centered=True).fit(x - means[y])
    precision = lw.precision_
    precision = 0.5 * (precision + precision.T)
    val_scores = mahalanobis_scores(xv, means, precision)
    threshold = float(np.sort(val_scores)[conformal_rank(len(val_scores), level) - 1])
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(xv))[:max_rows])
    predicted = np.asarray(val_predicted if val_predicted is not None else [], dtype=np.int64)
    return OodReference(
        means=means.astype(np.float32), precision=precision.astype(np.float32), threshold=threshold, level=level,
        features=xv[keep].astype(np.float32), val_scores=val_scores,
        train_shares=(counts / counts.sum()).astype(np.float32),
        val_predicted_shares=class_shares(predicted, n_classes).astype(np.float32),
        classes=list(classes), prompt_sha256=prompt_sha256, feature=feature, n_train=len(x),
        shrinkage=float(lw.shrinkage_),
    )


def conformal_rank(n: int, level: float) -> int:
    """The 1-based rank ``min(n, ceil((n + 1) * level))`` of the threshold among ``n`` sorted
    calibration scores (split conformal; see the module docstring)."""
    import math

    return max(1, min(n, math.ceil((n + 1) * level - 1e-9)))


def class_shares(predicted, n_classes: int) -> np.ndarray:
    """``[C]`` share of each class among ``predicted`` (``[N]`` int); zeros when empty."""
    predicted = np.asarray(predicted, dtype=np.int64)
    counts = np.bincount(predicted, minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


# --------------------------------------------------------------------------------------- the file


def save_reference(path: str | os.PathLike, ref: OodReference) -> Path:
    """Write ``ref`` as safetensors (tensors + JSON metadata), atomically."""
    from safetensors.numpy import save

    from vptcli.fsutil import atomic_write_bytes

    tensors = {
        "means": ref.means, "precision": ref.precision, "features": ref.features, "val_scores": ref.val_scores,
        "train_shares": ref.train_shares, "val_predicted_shares": ref.val_predicted_shares,
    }
    meta = {
        "format": FORMAT, "version": "1", "score": SCORE_NAME, "feature": ref.feature,
        "threshold": repr(float(ref.threshold)), "level": repr(float(ref.level)), "classes": json.dumps(ref.classes),
        "prompt_tensors_sha256": ref.prompt_sha256, "n_train": str(ref.n_train), "n_val": str(len(ref.val_scores)),
        "shrinkage": repr(float(ref.shrinkage)),
    }
    return atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta))


def load_reference(path: str | os.PathLike) -> OodReference:
    """Read a reference written by :func:`save_reference`.

    Raises:
        VptError: unreadable, not a reference, or inconsistent shapes (the message names the file).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = fh.metadata() or {}
            t = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        if meta.get("format") != FORMAT:
            raise ValueError("not an unfamiliar-image reference")
        ref = OodReference(
            means=t["means"], precision=t["precision"], threshold=float(meta["threshold"]), level=float(meta["level"]),
            features=t["features"], val_scores=t["val_scores"], train_shares=t["train_shares"],
            val_predicted_shares=t["val_predicted_shares"], classes=json.loads(meta["classes"]),
            prompt_sha256=meta.get("prompt_tensors_sha256", ""), feature=meta.get("feature", ""),
            n_train=int(meta.get("n_train", 0)), shrinkage=float(meta.get("shrinkage", 0.0)),
        )
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise VptError(f"{path}: cannot read the unfamiliar-image reference ({exc})") from None
    f = ref.dim
    if ref.precision.shape != (f, f) or ref.features.shape[1:] != (f,) or len(ref.classes) != len(ref.means):
        raise VptError(f"{path}: the unfamiliar-image reference is inconsistent (shapes do not agree)")
    return ref


def reference_for(folder: str | os.PathLike, prompt_sha256: str) -> tuple[OodReference | None, str | None]:
    """The reference in ``folder`` (:data:`OOD_FILE`) when it was made with the prompt tensors of
    digest ``prompt_sha256``.

    Returns:
        ``(reference or None, warning or None)``: no file -> ``(None, None)``; a file made for other
        prompt tensors, or unreadable -> ``(None, why)`` (the caller shows it; images are then not scored).
    """
    path = Path(folder) / OOD_FILE
    if not path.is_file():
        return None, None
    try:
        ref = load_reference(path)
    except VptError as exc:
        return None, f"{exc}; ood_score not computed"
    if prompt_sha256 and ref.prompt_sha256 and ref.prompt_sha256 != prompt_sha256:
        return None, (f"{path} was made for other prompt tensors ({ref.prompt_sha256[:12]}, prompt file "
                      f"{prompt_sha256[:12]}); ood_score not computed")
    return ref, None


# ----------------------------------------------------------------------------------- two samples


@dataclass
class MMDResult:
    """Outcome of :func:`mmd_test`: ``mmd2`` (biased MMD², kernel units), ``p_value`` (permutation),
    ``bandwidth`` (RBF sigma, feature units), ``permutations``, ``n_x``, ``n_y`` (rows compared)."""

    mmd2: float
    p_value: float
    bandwidth: float
    permutations: int
    n_x: int
    n_y: int


def mmd_test(x: np.ndarray, y: np.ndarray, *, permutations: int = 1000, seed: int = 0) -> MMDResult:
    """Kernel two-sample test of ``x`` ``[m, F]`` against ``y`` ``[n, F]`` (Gretton et al., JMLR 2012).

    Gaussian kernel ``exp(-|a - b|² / (2 sigma²))`` with ``sigma`` the median distance between
    distinct rows of the pooled sample (median heuristic); statistic ``MMD²_b = w^T K w`` with
    ``w = (1/m, ..., -1/n, ...)``; p-value ``(1 + #{permuted >= observed}) / (1 + permutations)``
    over random relabellings of the pooled rows.

    Raises:
        VptError: fewer than 2 rows on a side, or widths that differ.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2 or x.shape[1:] != y.shape[1:]:
        raise VptError(f"the two-sample test needs at least 2 rows of the same width on each side, got {x.shape} and {y.shape}")
    z = np.concatenate([x, y])
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
    off = d2[~np.eye(m + n, dtype=bool)]
    sigma2 = float(np.median(off))
    if sigma2 <= 0:
        sigma2 = float(off.mean()) or 1.0
    k = np.exp(-d2 / (2.0 * sigma2))
    w0 = np.concatenate([np.full(m, 1.0 / m), np.full(n, -1.0 / n)])
    observed = float(w0 @ k @ w0)
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    while done < permutations:
        b = min(256, permutations - done)
        w = np.stack([w0[rng.permutation(m + n)] for _ in range(b)])
        stats = ((w @ k) * w).sum(1)
        exceed += int((stats >= observed - 1e-12).sum())
        done += b
    return MMDResult(mmd2=observed, p_value=(1 + exceed) / (1 + permutations), bandwidth=float(np.sqrt(sigma2)),
                     permutations=permutations, n_x=m, n_y=n)


__all__ = [
    "DEFAULT_LEVEL",
    "OOD_FILE",
    "MMDResult",
    "OodReference",
    "class_shares",
    "conformal_rank",
    "fit_reference",
    "load_reference",
    "mahalanobis_scores",
    "mmd_test",
    "reference_for",
    "save_reference",
]
