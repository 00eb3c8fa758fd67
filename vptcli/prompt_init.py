"""Prompt tokens initialised from the data: prototypes of the training images' patch tokens.

Self-Prompt Tuning (SPT; Wang et al., "Revisiting the Power of Prompt for Visual Tuning", ICML 2024,
arXiv 2402.02382, github WangYZ1608/Self-Prompt-Tuning) observes that trained prompt tokens end up
close to the patch tokens they attend with, and starts them there: the prompts of a block are the
k-means centres of the patch tokens entering that block, computed on the downstream training images
with the frozen backbone. Random prompts (VPT's uniform initialisation) start far from that
distribution; the paper reports the largest gains over VPT on self-supervised backbones (MAE, MoCo v3),
and DINOv2 is one too (an expectation here, measured on ELPV in docs/benchmarks.md).

Here: ``prompt_init="patch-kmeans"`` (``vpt train --prompt-init``, :data:`vptcli.train_config.PROMPT_INITS`).
The hidden states entering the first prompted block ``k`` (plain images, no prompts: the feature
cache's view 0 when there is one) are run through the frozen blocks ``k .. depth-1`` without prompts; at each prompted block the patch
tokens of those images are sampled (at most :data:`MAX_TOKENS`) and clustered with scikit-learn's
``KMeans`` into ``num_prompts`` centres. VPT-shallow uses block k's centres only.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_IMAGES = 256
"""Training images whose patch tokens are clustered (a seeded sample of the plain views)."""

MAX_TOKENS = 20_000
"""Patch tokens clustered per prompted block (a seeded sample): k-means in about a second."""


@torch.no_grad()
def patch_prototypes(model, hidden: torch.Tensor, start_block: int, seed: int = 0, max_tokens: int = MAX_TOKENS,
                     batch_size: int = 32) -> torch.Tensor:
    """The k-means centres of the patch tokens entering every prompted block of ``model``.

    Args:
        model: a :class:`vptcli.prompting.PromptedViT` with prompts (``num_prompts = n >= 1``,
            first prompted block ``k``).
        hidden: ``[B, P + N, D]`` hidden states entering block ``start_block`` without prompts
            (:meth:`PromptedViT.embed`, or a feature cache), on the model's device.
        start_block: the block ``hidden`` enters, ``<= k``; blocks before k run without prompts.
        seed: seeds the token sample and k-means (same seed, same prompts).
        max_tokens: patch tokens sampled per block for k-means.
        batch_size: images per forward pass through a frozen block.

    Returns:
        ``[depth, n, D]`` float32 on ``hidden``'s device, the shape of ``model.prompts``: row ``j``
        holds the centres for block ``k + j`` (VPT-deep, DA-VPT), or for block k alone (VPT-shallow).

    Raises:
        ValueError: a model without prompts, ``start_block`` past k, or fewer patch tokens than prompts.
    """
    from sklearn.cluster import KMeans

    if model.prompts is None:
        raise ValueError("patch_prototypes needs a model with prompt tokens")
    depth, n, _ = model.prompts.shape
    P, k = model.num_prefix_tokens, model.config.prompt_start_block
    if start_block > k:
        raise ValueError(f"hidden states entering block {start_block} are past the first prompted block {k}")
    blocks = model.backbone.blocks

    def run(block: int, x: torch.Tensor) -> torch.Tensor:  # a frozen block without prompts, in batches
        return torch.cat([blocks[block](c) for c in x.split(batch_size)])

    rng = np.random.default_rng(seed)
    x = hidden.float()
    for i in range(start_block, k):
        x = run(i, x)
    centres = []
    for j in range(depth):
        tokens = x[:, P:].reshape(-1, x.shape[-1]).cpu().numpy()
        if len(tokens) < n:
            raise ValueError(f"{len(tokens)} patch tokens cannot give {n} prompt prototypes")
        if len(tokens) > max_tokens:
            tokens = tokens[rng.choice(len(tokens), max_tokens, replace=False)]
        km = KMeans(n_clusters=n, n_init=1, random_state=seed + j).fit(tokens)
        centres.append(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
        if j + 1 < depth:
            x = run(k + j, x)  # the next block's input
    return torch.stack(centres).to(hidden.device)


def sample_indices(n_images: int, seed: int, max_images: int = MAX_IMAGES) -> torch.Tensor:
    """A seeded sample of ``min(n_images, max_images)`` image indices ``[M]`` (int64, sorted)."""
    if n_images <= max_images:
        return torch.arange(n_images)
    return torch.as_tensor(np.sort(np.random.default_rng(seed).choice(n_images, max_images, replace=False)))
