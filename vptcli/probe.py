"""A converged linear probe: multinomial logistic regression on frozen (cached) features.

The linear head of every method can start from it, and the ``linear-probe`` method *is* it: on cached
features an L-BFGS fit converges in seconds, where a few epochs of AdamW leave the head under-trained.
Features are standardised (mean/std of the training features) for the fit, and the standardisation is
folded back into the returned weight and bias, so the head applies to raw features.

Regularisation: the inverse strength ``C`` is chosen on the validation split from :data:`C_GRID`, by
validation macro-F1, then top-1 accuracy, then log loss (the same order the training loop uses to
pick its best epoch), unless the caller gives one value (``vpt train --probe-c``). Method: scikit-learn ``LogisticRegression`` (lbfgs, multinomial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
"""Inverse L2 strengths tried (scikit-learn's ``C``, on standardised features)."""


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe.

    Attributes:
        weight: ``[C, F]`` head weight for raw features. bias: ``[C]``.
        c: the chosen inverse regularisation strength.
        val_top1, val_macro_f1, val_loss: the chosen fit on the validation features.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    c: float
    val_top1: float
    val_macro_f1: float
    val_loss: float


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    n_classes: int,
    *,
    sample_weight: np.ndarray | None = None,
    c_grid: tuple[float, ...] = C_GRID,
    max_iter: int = 2000,
) -> ProbeFit:
    """Fit the head on frozen features, with ``C`` chosen on validation.

    Args:
        train_x: ``[N, F]`` float features; train_y: ``[N]`` class indices in ``[0, n_classes)``.
        val_x: ``[M, F]``; val_y: ``[M]``.
        n_classes: C (a class absent from ``train_y`` gets a zero row and a very low bias).
        sample_weight: ``[N]`` per-sample weights (class balance), or None.
        c_grid: the ``C`` values tried; one value fixes ``C`` (``vpt train --probe-c``).
        max_iter: L-BFGS iterations per fit.

    Returns:
        :class:`ProbeFit`.

    Raises:
        ValueError: fewer than two classes in ``train_y``, or mismatched lengths.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, log_loss

    X, Xv = train_x.double().numpy(), val_x.double().numpy()
    y, yv = train_y.numpy(), val_y.numpy()
    if len(X) != len(y) or len(Xv) != len(yv):
        raise ValueError("features and labels differ in length")
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError("a linear probe needs at least two classes in the training split")
    mu, sd = X.mean(0), X.std(0) + 1e-6
    A, Av = (X - mu) / sd, (Xv - mu) / sd
    best = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=max_iter).fit(A, y, sample_weight=sample_weight)
        w, b = _full_rows(clf, present, n_classes)
        logits = Av @ w.T + b
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        pred = prob.argmax(1)
        f1 = float(f1_score(yv, pred, average="macro", labels=list(range(n_classes)), zero_division=0))
        top1 = float((pred == yv).mean())
        loss = float(log_loss(yv, prob, labels=list(range(n_classes))))
        score = (f1, top1, -loss)
        if best is None or score > best[0]:
            best = (score, c, w, b)
    (f1, top1, neg_loss), c, w, b = best
    weight = w / sd  # fold the standardisation into the head
    bias = b - weight @ mu
    return ProbeFit(torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32), c, top1, f1, -neg_loss)


def _full_rows(clf, present: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as ``[C, F]`` / ``[C]`` over all classes (binary: ±coef/2)."""
    coef, icpt = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: one row for the positive class
        coef = np.concatenate([-coef / 2, coef / 2])
        icpt = np.concatenate([-icpt / 2, icpt / 2])
    w = np.zeros((n_classes, coef.shape[1]))
    b = np.full(n_classes, -1e4)
    w[present], b[present] = coef, icpt
    return w, b
