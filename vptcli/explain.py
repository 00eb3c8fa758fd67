"""Where a :class:`~vptcli.prompting.PromptedViT` looks: heatmaps at patch-grid resolution.

Three methods (``--method``), each giving ``[N, h, w]`` float maps normalised to ``[0, 1]`` per image
(min-max; a constant map becomes all zeros), where ``h x w`` is the backbone's patch grid:

- ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017) on the token grid, following the recipe that
  pytorch-grad-cam documents for ViTs: the target layer is a block's ``norm1`` output, the tokens are
  reshaped to the patch grid after dropping every prefix token (class and register tokens) and every
  prompt token, channel weights are the gradients averaged over the grid, the map is
  ``ReLU(sum_c weight_c * activation_c)``; with several target layers the normalised maps are averaged
  (as that package does). The class explained is the predicted one unless a target is given.
  Target layers: ``norm1`` of the 4th, 3rd and 2nd last blocks (:data:`GRADCAM_BLOCKS`). pytorch-grad-cam
  suggests the last block's ``norm1`` (the last block's *output* patch tokens get a zero gradient when
  the head reads the class token, which is the zero-gradient problem its issues describe); on DINOv2
  ViT-S/14 that layer points at the synthetic defects no better than chance, while the three before it
  do (measured in ``benchmarks/explain_pointing.py``, see docs/explain.md; DINOv2 without registers
  carries high-norm artefact tokens in its late blocks, Darcet et al., ICLR 2024).
  We compute these few lines on forward hooks rather than with the ``grad-cam`` package: it resizes
  every map with OpenCV to the input size (we keep the patch grid, the unit the ``.npy`` files and the
  ONNX ``heatmap`` output share), it would add ``opencv-python-headless`` and ``ttach`` as
  dependencies, and its hooks record nothing for a head-only model (frozen activations do not require
  grad) unless the input is made to require grad; the hooks here make the first target activations a
  grad leaf instead.
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers",
  ACL 2020): per block the head-averaged attention plus the identity (residual), ``0.5 A + 0.5 I``,
  multiplied through the blocks; the map is the class token's row over the patch tokens. The prompt
  tokens are in the graph: where prompts enter a block (VPT-shallow once, VPT-deep / DA-VPT in every
  prompted block, replacing the previous outputs) their rows point to one extra "parameters" source,
  so attention that flows through prompts is counted there and not on any patch.
- ``prompt-attention``: where the tuned prompt tokens attend among the patches: the attention from the
  prompt queries to the patch keys in every block that holds prompts, averaged over heads, prompts and
  blocks (methods without prompts have no such map).

timm's fused attention (``F.scaled_dot_product_attention``) never materialises the attention weights,
so the two attention methods recompute them from each block's ``qkv`` projection on a forward hook
(:func:`capture_attention`): ``softmax(q_norm(q) k_norm(k)^T * scale)``, the same weights the block
used. Both are gradient-free and exportable to ONNX (:class:`HeatmapModel`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vptcli.errors import VptError

EXPLAIN_METHODS = ("gradcam", "rollout", "prompt-attention")
"""Heatmap methods (``vpt explain --method``)."""
DEFAULT_EXPLAIN_METHOD = "gradcam"
GRADIENT_FREE_METHODS = ("rollout", "prompt-attention")
"""Methods without a backward pass: the ones ``vpt export --heatmap`` can put in a graph."""
GRADCAM_BLOCKS = (-4, -3, -2)
"""Grad-CAM's target layers: ``norm1`` of these blocks (the maps averaged). Not the last block: on
DINOv2 ViT-S/14 its input is dominated by the high-norm artefact tokens of ViTs without registers
(Darcet et al., "Vision Transformers Need Registers", ICLR 2024) and Grad-CAM there points at chance
level on synthetic defects (``benchmarks/explain_pointing.py``, docs/explain.md)."""
ROLLOUT_RESIDUAL = 0.5
"""Weight of the identity in each rollout step (Abnar & Zuidema: 0.5 A + 0.5 I)."""


class ExplainError(VptError):
    """A heatmap method that does not apply to this model (e.g. prompt attention without prompts)."""


@dataclass
class Explanation:
    """Heatmaps of a batch.

    Attributes:
        maps: ``[N, h, w]`` float32 in ``[0, 1]`` at patch-grid resolution.
        probabilities: ``[N, C]`` float32 softmax of the logits.
        targets: ``[N]`` int64: the class each map explains (Grad-CAM: the predicted class or the
            target given; the attention methods are class-agnostic and report the predicted class).
        method: the method used.
    """

    maps: np.ndarray
    probabilities: np.ndarray
    targets: np.ndarray
    method: str


def check_method(method: str, model=None, flag: str = "--method") -> str:
    """Return ``method`` if known (and, with ``model``, applicable to it); ``flag``: the option named
    in the error.

    Raises:
        ExplainError: unknown method, or ``prompt-attention`` for a model without prompt tokens.
    """
    if method not in EXPLAIN_METHODS:
        raise ExplainError(f"{flag} {method!r}: choose one of {', '.join(EXPLAIN_METHODS)}")
    if method == "prompt-attention" and model is not None and model.prompts is None:
        raise ExplainError(f"{flag} prompt-attention needs prompt tokens; this model ({model.config.method}) has none: "
                           "use rollout or gradcam")
    return method


def patch_grid(model) -> tuple[int, int]:
    """``(h, w)``: the patch grid of ``model``'s backbone at its image size."""
    g = model.backbone.patch_embed.grid_size
    return int(g[0]), int(g[1])


def prompts_per_block(model) -> list[tuple[int, bool]]:
    """For each block: ``(prompt tokens in its input, True where fresh prompts enter there)``.

    VPT-shallow inserts its prompts at the first prompted block and carries them on; VPT-deep and
    DA-VPT replace them with the block's own in every prompted block (see
    :meth:`vptcli.prompting.PromptedViT.forward_from`)."""
    n_blocks = len(model.backbone.blocks)
    if model.prompts is None:
        return [(0, False)] * n_blocks
    n, k, deep = model.config.num_prompts, model.config.prompt_start_block, model.config.deep
    return [(n if i >= k else 0, i == k or (deep and i > k)) for i in range(n_blocks)]


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max per map: ``[N, ...]`` -> same shape in ``[0, 1]`` (a constant map -> zeros)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def attention_probs(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The attention weights ``[B, heads, T, T]`` a timm ``Attention`` computes on its input ``x``
    ``[B, T, D]`` (the block's ``norm1`` output), written out because the fused kernel hides them."""
    B, T, _ = x.shape
    qkv = attn.qkv(x).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@contextlib.contextmanager
def capture_attention(model, rows: int | None = None) -> Iterator[list[torch.Tensor]]:
    """While active, every forward of ``model`` appends each block's attention weights
    ``[B, heads, T_i, T_i]`` (in block order) to the yielded list; with ``rows`` those of the first
    ``rows`` inputs only (the plain view under test-time augmentation, :mod:`vptcli.tta`).

    Raises:
        ExplainError: a backbone whose blocks have no timm ``Attention`` with a ``qkv`` projection.
    """
    found: list[torch.Tensor] = []
    handles = []
    try:
        for blk in model.backbone.blocks:
            attn = getattr(blk, "attn", None)
            if attn is None or not hasattr(attn, "qkv"):
                raise ExplainError("attention maps need timm ViT blocks with a qkv projection; this backbone has none")
            handles.append(attn.register_forward_hook(lambda mod, args, out: found.append(attention_probs(mod, args[0][:rows]))))
        yield found
    finally:
        for h in handles:
            h.remove()


def rollout_maps(attentions: list[torch.Tensor], model) -> torch.Tensor:
    """Attention rollout from the class token: ``[B, N]`` (raw, not normalised) from the blocks'
    attention weights (:func:`capture_attention`). Sources: prefix tokens, patches and one column for
    the prompt parameters (see the module docstring)."""
    P = model.num_prefix_tokens
    layout = prompts_per_block(model)
    B, _, T0, _ = attentions[0].shape
    n0 = layout[0][0]
    N = T0 - P - n0
    S = P + N + 1  # the last source column stands for every prompt tensor
    dev, dt = attentions[0].device, attentions[0].dtype
    eye = torch.eye(P + N, S, device=dev, dtype=dt)
    R = eye.unsqueeze(0).expand(B, -1, -1)  # rows: tokens (prefix, patches) entering block 0
    param_row = torch.zeros(1, 1, S, device=dev, dtype=dt)
    param_row[..., -1] = 1.0
    prev_n = 0
    for A, (n, fresh) in zip(attentions, layout):
        if fresh:
            prompts = param_row.expand(B, n, -1)
            R = torch.cat((R[:, :P], prompts, R[:, P + prev_n :]), dim=1)
        prev_n = n
        a = A.mean(dim=1)
        T = a.shape[-1]
        a = ROLLOUT_RESIDUAL * a + (1.0 - ROLLOUT_RESIDUAL) * torch.eye(T, device=dev, dtype=dt)
        a = a / a.sum(dim=-1, keepdim=True)
        R = a @ R
    return R[:, 0, P : P + N]


def prompt_attention_maps(attentions: list[torch.Tensor], model) -> torch.Tensor:
    """Prompt-to-patch attention ``[B, N]`` (raw), averaged over heads, prompts and the blocks that
    hold prompts.

    Raises:
        ExplainError: the model has no prompt tokens.
    """
    check_method("prompt-attention", model)
    P = model.num_prefix_tokens
    total = None
    count = 0
    for A, (n, _fresh) in zip(attentions, prompts_per_block(model)):
        if n == 0:
            continue
        m = A[:, :, P : P + n, P + n :].mean(dim=(1, 2))
        total = m if total is None else total + m
        count += 1
    return total / count


def attention_heatmaps(model, images: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward pass: ``(logits [B, C], maps [B, h, w] in [0, 1], features [B, F])`` for a
    gradient-free method (features: the head's input). With test-time augmentation (:mod:`vptcli.tta`)
    logits and features are the model's (the mean over the views) and the maps are the plain view's.

    Raises:
        ExplainError: ``method`` is not gradient-free or does not apply to ``model``.
    """
    check_method(method, model)
    if method not in GRADIENT_FREE_METHODS:
        raise ExplainError(f"{method} needs gradients; gradient-free methods: {', '.join(GRADIENT_FREE_METHODS)}")
    with capture_attention(model, rows=images.shape[0]) as attentions:  # the plain view's (view 0, vptcli.tta)
        feats = model.features(images)  # with test-time augmentation: the mean over the views, as predict gives
        logits = model.head(feats)
    attentions = [a.float() for a in attentions]
    raw = rollout_maps(attentions, model) if method == "rollout" else prompt_attention_maps(attentions, model)
    h, w = patch_grid(model)
    return logits, normalise_maps(raw.reshape(-1, h, w)), feats


def gradcam_maps(model, images: torch.Tensor, targets: torch.Tensor | None = None,
                 blocks: tuple[int, ...] = GRADCAM_BLOCKS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM on the patch grid (see the module docstring), one forward and one backward pass.

    Args:
        images: ``[B, 3, H, W]`` in ``[0, 1]``.
        targets: ``[B]`` class indices to explain; None: the predicted classes.
        blocks: the blocks whose ``norm1`` outputs are the target layers (negative: from the end); the
            per-layer maps are normalised and averaged, as pytorch-grad-cam does for several target
            layers. Default :data:`GRADCAM_BLOCKS`.

    Returns:
        ``(logits [B, C], maps [B, h, w] in [0, 1], targets [B])``. With test-time augmentation
        (:mod:`vptcli.tta`) the logits are the model's (the mean over the views) and the maps are those
        of the plain view, whose share of the gradient they show.
    """
    n_blocks = len(model.backbone.blocks)
    order = sorted({b % n_blocks for b in blocks})  # forward order
    store: dict[int, torch.Tensor] = {}

    def hook_for(index: int):
        def hook(_mod, _args, out):
            if not out.requires_grad:  # frozen and prompt-free so far: make the activations a grad leaf
                out = out.detach().requires_grad_(True)
            store[index] = out
            return out

        return hook

    handles = [model.backbone.blocks[i].norm1.register_forward_hook(hook_for(i)) for i in order]
    try:
        with torch.enable_grad():
            logits = model(images)
            if targets is None:
                targets = logits.argmax(dim=1)
            score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
            grads = torch.autograd.grad(score, [store[i] for i in order], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    h, w = patch_grid(model)
    layout = prompts_per_block(model)
    cams = []
    for i, grad in zip(order, grads):
        act = store[i].detach()[: images.shape[0]]  # the plain view's (view 0 under test-time augmentation)
        grad = torch.zeros_like(act) if grad is None else grad[: images.shape[0]]
        skip = model.num_prefix_tokens + layout[i][0]
        act, grad = act[:, skip:].float(), grad[:, skip:].float()
        weights = grad.mean(dim=1, keepdim=True)  # [B, 1, D]: gradients averaged over the grid
        cams.append(normalise_maps(torch.relu((act * weights).sum(dim=-1)).reshape(-1, h, w)))  # [B, h, w]
    return logits.detach(), normalise_maps(torch.stack(cams).mean(dim=0)), targets


def explain_batch(model, images: torch.Tensor, method: str = DEFAULT_EXPLAIN_METHOD, target: int | None = None) -> Explanation:
    """Heatmaps of ``images`` ``[B, 3, H, W]`` (float in ``[0, 1]``, on the model's device).

    Args:
        method: one of :data:`EXPLAIN_METHODS`.
        target: class index to explain (Grad-CAM); None: the predicted class of each image.

    Raises:
        ExplainError: unknown method, or one that does not apply to ``model``.
    """
    check_method(method, model)
    model.eval()
    if method == "gradcam":
        tgt = None if target is None else torch.full((images.shape[0],), int(target), dtype=torch.long)
        logits, maps, targets = gradcam_maps(model, images, tgt)
    else:
        with torch.no_grad():
            logits, maps, _ = attention_heatmaps(model, images, method)
        targets = logits.argmax(dim=1) if target is None else torch.full((images.shape[0],), int(target), dtype=torch.long)
    probs = logits.float().softmax(dim=-1)
    return Explanation(maps.float().cpu().numpy(), probs.cpu().numpy(), targets.cpu().numpy().astype(np.int64), method)


class HeatmapModel(nn.Module):
    """``images [N, 3, H, W]`` in ``[0, 1]`` -> ``(logits [N, C], probabilities [N, C], features [N, F],
    heatmap [N, h, w])`` for a gradient-free method: the module ``vpt export --heatmap`` traces
    (features: the head's input, as in every exported single graph).

    Raises:
        ExplainError: a method that is not gradient-free or does not apply to ``model``.
    """

    def __init__(self, model: nn.Module, method: str, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_method(method, model)
        if method not in GRADIENT_FREE_METHODS:
            raise ExplainError(f"--heatmap {method}: an ONNX graph has no gradients; choose {' or '.join(GRADIENT_FREE_METHODS)}")
        self.model = model
        self.method = method
        self.dtype = dtype

    def forward(self, images: torch.Tensor):
        logits, maps, feats = attention_heatmaps(self.model, images.to(self.dtype), self.method)
        logits = logits.float()
        return logits, torch.softmax(logits, dim=-1), feats.float(), maps.float()


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016):
    True where the map's maximum falls inside the mask.

    Args:
        maps: ``[N, h, w]`` heatmaps. masks: ``[N, h, w]`` bool masks on the same grid (e.g. the
            defect dilated by one patch).

    Returns:
        ``[N]`` bool.
    """
    n = maps.shape[0]
    idx = maps.reshape(n, -1).argmax(axis=1)
    return masks.reshape(n, -1)[np.arange(n), idx]
