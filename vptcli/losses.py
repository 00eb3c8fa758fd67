"""DA-VPT metric-learning losses.

Sources:
- Proxy-Anchor loss: Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.
- DA-VPT: "Distribution-Aware Visual Prompt Tuning", CVPR 2025 (github Noahsark/DA-VPT):
  ``loss = CE + beta * PA(mean patch token, prompts) + lambda * PA(class-token query, prompts)``
  at a guided block, whose prompt tokens act as the class proxies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vptcli.prompting import GuidedFeatures

DEFAULT_ALPHA = 32.0
DEFAULT_MARGIN = 0.1


def _log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log(1 + sum_i exp(z_i))`` over dim 0 where ``mask`` is true, computed stably. ``[B, P] -> [P]``."""
    z = z.masked_fill(~mask, float("-inf"))
    zeros = torch.zeros(1, z.shape[1], dtype=z.dtype, device=z.device)
    return torch.logsumexp(torch.cat((zeros, z), dim=0), dim=0)


def proxy_anchor_loss(
    embeddings: torch.Tensor,
    proxy_labels: torch.Tensor,
    proxies: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    margin: float = DEFAULT_MARGIN,
) -> torch.Tensor:
    """Proxy-Anchor loss (Kim et al., CVPR 2020) with cosine similarity.

    For each proxy p with similarity ``s(x, p)`` on L2-normalised vectors:
    positives ``log(1 + sum_{x in X_p+} exp(-alpha (s - margin)))`` averaged over the proxies that have
    positives in the batch; negatives ``log(1 + sum_{x in X_p-} exp(alpha (s + margin)))`` averaged over
    all proxies.

    Args:
        embeddings: ``[B, D]`` features (any scale; normalised here).
        proxy_labels: ``[B]`` int64, the proxy index of each sample's class, in ``[0, P)``.
        proxies: ``[P, D]`` (normalised here).

    Returns:
        A scalar tensor (0 <= loss; differentiable w.r.t. embeddings and proxies).

    Raises:
        ValueError: when dims differ or a label is out of range.
    """
    if embeddings.shape[-1] != proxies.shape[-1]:
        raise ValueError(f"embedding dim {embeddings.shape[-1]} != proxy dim {proxies.shape[-1]}")
    n_proxies = proxies.shape[0]
    if proxy_labels.numel() and (int(proxy_labels.min()) < 0 or int(proxy_labels.max()) >= n_proxies):
        raise ValueError(f"proxy labels must be in [0, {n_proxies})")
    sim = F.normalize(embeddings.float(), dim=-1) @ F.normalize(proxies.float(), dim=-1).T  # [B, P]
    pos = F.one_hot(proxy_labels, n_proxies).bool()
    with_pos = pos.any(dim=0)
    pos_term = _log1p_sum_exp(-alpha * (sim - margin), pos)[with_pos].sum() / with_pos.sum().clamp(min=1)
    neg_term = _log1p_sum_exp(alpha * (sim + margin), ~pos).sum() / n_proxies
    return pos_term + neg_term


def class_to_proxy(num_classes: int, num_prompts: int, class_features: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Map each class to a proxy prompt at the guided block.

    With ``num_classes <= num_prompts`` class c owns prompt c. Otherwise classes are grouped into
    ``num_prompts`` groups by cosine k-means (spherical k-means, scikit-learn ``KMeans`` on
    L2-normalised vectors) on their mean frozen class-token features, and each group shares a prompt.

    Args:
        class_features: ``[C, D]`` mean frozen class-token feature per class (needed only when
            ``num_classes > num_prompts``).

    Returns:
        ``[C]`` int64 proxy index per class.

    Raises:
        ValueError: ``num_prompts < 1``, or grouping needed but ``class_features`` missing.
    """
    if num_prompts < 1:
        raise ValueError("DA-VPT needs at least one prompt per guided block")
    if num_classes <= num_prompts:
        return torch.arange(num_classes, dtype=torch.long)
    if class_features is None:
        raise ValueError(f"{num_classes} classes > {num_prompts} prompts: class features are needed to group classes")
    from sklearn.cluster import KMeans

    feats = F.normalize(class_features.float(), dim=-1).cpu().numpy()
    groups = KMeans(n_clusters=num_prompts, n_init=10, random_state=seed).fit_predict(feats)
    return torch.as_tensor(groups, dtype=torch.long)


@dataclass(frozen=True)
class DAVPTLossConfig:
    """Weights of the DA-VPT metric losses.

    Attributes:
        beta: weight of PA(mean patch token, prompts).
        lam: weight of PA(class-token query, prompts).
        alpha: Proxy-Anchor scale (32 in the paper). margin: Proxy-Anchor margin delta (0.1).
    """

    beta: float = 0.1
    lam: float = 0.1
    alpha: float = DEFAULT_ALPHA
    margin: float = DEFAULT_MARGIN


def da_vpt_metric_loss(
    guided: GuidedFeatures, labels: torch.Tensor, proxy_of_class: torch.Tensor, cfg: DAVPTLossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """``beta * PA(patch_mean, prompts) + lam * PA(cls_query, prompts)`` for one batch.

    Args:
        guided: features read at the guided block (:class:`vptcli.prompting.GuidedFeatures`).
        labels: ``[B]`` class indices. proxy_of_class: ``[C]`` from :func:`class_to_proxy`.

    Returns:
        ``(loss, parts)`` where parts holds the unweighted ``pa_patch`` and ``pa_query`` values.
        With ``beta == lam == 0`` the loss is exactly zero (no graph work is done).
    """
    zero = guided.patch_mean.new_zeros(())
    if cfg.beta == 0 and cfg.lam == 0:
        return zero, {"pa_patch": 0.0, "pa_query": 0.0}
    n_proxies = int(proxy_of_class.max()) + 1
    proxies = guided.prompts[:n_proxies]
    plabels = proxy_of_class.to(labels.device)[labels]
    pa_patch = proxy_anchor_loss(guided.patch_mean, plabels, proxies, cfg.alpha, cfg.margin) if cfg.beta else zero
    pa_query = proxy_anchor_loss(guided.cls_query, plabels, proxies, cfg.alpha, cfg.margin) if cfg.lam else zero
    loss = cfg.beta * pa_patch + cfg.lam * pa_query
    return loss, {"pa_patch": float(pa_patch.detach()), "pa_query": float(pa_query.detach())}
