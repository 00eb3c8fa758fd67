"""Visual prompt tuning on a frozen timm Vision Transformer.

:class:`PromptedViT` keeps the frozen backbone and the tuned tensors apart (like Hugging Face PEFT's
tuners): the backbone is a timm ``VisionTransformer`` whose weights never change; the adapter is a
prompt-token tensor ``[depth, n_prompts, dim]`` plus a linear head on pooled features (the final normed
class token, optionally with the mean patch token and earlier blocks' class tokens:
:data:`vptcli.methods.HEAD_INPUTS`).

Methods (one flag; declared in :mod:`vptcli.methods`, which this module asks):

- ``vpt-shallow`` / ``vpt-deep``: Jia et al., "Visual Prompt Tuning", ECCV 2022 (github KMnP/vpt).
  Prompt tokens sit after the prefix tokens (class token and any register tokens) and before the patch
  tokens. Shallow: one set, inserted at the input of the first prompted block. Deep: one set per
  prompted block, each replacing the previous block's prompt outputs.
- ``da-vpt``: VPT-deep whose prompts at a guided block also serve as class proxies for metric-learning
  losses (Distribution-Aware VPT, CVPR 2025; see :mod:`vptcli.losses`). The model only exposes the
  tensors the losses need (:class:`GuidedFeatures`).
- ``linear-probe``: no prompts, head only. ``full-finetune``: no prompts, every weight tuned.

Late prompts (``prompt_start_block = k``): prompts only in blocks ``>= k``. Everything before block k
is then frozen and prompt-free, so the hidden states entering block k can be cached
(:meth:`PromptedViT.embed` + :meth:`PromptedViT.forward_from`); see :mod:`vptcli.feature_cache`.

Input contract: images ``[B, 3, H, W]`` float RGB in ``[0, 1]``; normalisation (mean/std of the
backbone's data config) happens inside the model, so PyTorch and ONNX take the same input.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from vptcli.methods import DEFAULT_METHOD, HEAD_INPUTS, MethodSpec, spec
from vptcli.tta import dihedral_views, mean_over_views, tta_views


def head_input_dim(head_input: str, embed_dim: int) -> int:
    """Feature width ``F`` the head reads for ``head_input`` (:data:`vptcli.methods.HEAD_INPUTS`).

    Raises:
        ValueError: an unknown head input.
    """
    if head_input not in HEAD_INPUTS:
        raise ValueError(f"unknown head input {head_input!r}; choose one of {', '.join(HEAD_INPUTS)}")
    return embed_dim * HEAD_INPUTS[head_input].width


@dataclass(frozen=True)
class PromptConfig:
    """Prompt settings of a :class:`PromptedViT` (stored in every prompt file).

    Attributes:
        method: one of :data:`vptcli.methods.METHODS`.
        num_prompts: prompt tokens per prompted block (0 for linear probe / full fine-tuning).
        prompt_start_block: first block that sees prompts (0 = classic VPT).
        prompt_dropout: dropout probability on prompt tokens, training only.
        head_input: what the head reads (:data:`vptcli.methods.HEAD_INPUTS`); files without it mean ``cls``.
        tta: test-time augmentation of :meth:`PromptedViT.features` (:data:`vptcli.tta.TTA_MODES`);
            files without it mean ``none``.
    """

    method: str = DEFAULT_METHOD.value
    num_prompts: int = 10
    prompt_start_block: int = 0
    prompt_dropout: float = 0.0
    head_input: str = "cls"
    tta: str = "none"

    @property
    def spec(self) -> MethodSpec:
        """The method's :class:`vptcli.methods.MethodSpec` (ValueError for an unknown method)."""
        return spec(self.method)

    @property
    def deep(self) -> bool:
        """True for a set of prompts per block (VPT-deep, DA-VPT)."""
        return self.spec.deep

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "num_prompts": self.num_prompts,
            "prompt_start_block": self.prompt_start_block,
            "prompt_dropout": self.prompt_dropout,
            "head_input": self.head_input,
            "tta": self.tta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PromptConfig:
        return cls(
            method=str(d["method"]),
            num_prompts=int(d["num_prompts"]),
            prompt_start_block=int(d.get("prompt_start_block", 0)),
            prompt_dropout=float(d.get("prompt_dropout", 0.0)),
            head_input=str(d.get("head_input", "cls")),
            tta=str(d.get("tta", "none")),
        )


@dataclass
class GuidedFeatures:
    """What the DA-VPT losses read at the guided block (all taken at that block's input).

    Attributes:
        patch_mean: ``[B, D]`` mean of each image's patch tokens.
        cls_query: ``[B, D_attn]`` the class token's query projection in the block's attention.
        prompts: ``[n_prompts, D]`` the block's prompt tokens (before dropout): the class proxies.
    """

    patch_mean: torch.Tensor
    cls_query: torch.Tensor
    prompts: torch.Tensor


def _patch_area(backbone: nn.Module) -> int:
    ps = backbone.patch_embed.patch_size
    ps = ps if isinstance(ps, (tuple, list)) else (ps, ps)
    return int(ps[0]) * int(ps[1])


def _img_size(backbone: nn.Module) -> tuple[int, ...]:
    """The backbone's input size ``(H, W)`` in pixels (``(0, 0)`` when the patch embedding does not say)."""
    size = getattr(backbone.patch_embed, "img_size", None) or (0, 0)
    return tuple(int(v) for v in (size if isinstance(size, (tuple, list)) else (size, size)))


class PromptedViT(nn.Module):
    """A frozen timm ``VisionTransformer`` with VPT prompt tokens and a linear head.

    Args:
        backbone: a timm ``VisionTransformer`` with ``num_classes=0``. Its parameters are frozen here
            (``requires_grad=False``); for a method that tunes the backbone a copy is tuned and
            the given module is left untouched.
        num_classes: C, the head's outputs.
        config: :class:`PromptConfig`.
        mean, std: per-channel normalisation applied to ``[0, 1]`` input (the backbone's data config).

    Shapes: ``forward(images [B, 3, H, W] in [0, 1]) -> logits [B, C]``. Inside, the token sequence is
    ``num_prefix_tokens + num_prompts + num_patches`` long in every prompted block.

    Parameters: ``prompts`` ``[depth, num_prompts, D]`` (``depth = blocks - k`` for deep, 1 for shallow,
    absent when ``num_prompts == 0``); ``head`` ``Linear(F, C)`` with ``F = head_input_dim(head_input, D)``.

    Test-time augmentation (``config.tta``, :mod:`vptcli.tta`) is part of :meth:`features`, hence of
    ``forward`` and of an exported graph; training steps and feature caches call :meth:`embed` and
    :meth:`forward_from`, which see one view.

    Raises:
        ValueError: unknown method, head input or test-time augmentation, ``prompt_start_block`` outside
            ``[0, len(blocks))``, negative prompts, a head input that reads more blocks than the backbone
            has, or dihedral test-time augmentation on a non-square input size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        config: PromptConfig = PromptConfig(),
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.5, 0.5, 0.5),
    ) -> None:
        super().__init__()
        method = config.spec  # ValueError for an unknown method
        n_blocks = len(backbone.blocks)
        if not 0 <= config.prompt_start_block < n_blocks:
            raise ValueError(f"prompt_start_block must be in [0, {n_blocks - 1}], got {config.prompt_start_block}")
        if config.num_prompts < 0:
            raise ValueError("num_prompts must be >= 0")
        head_dim = head_input_dim(config.head_input, int(backbone.embed_dim))  # ValueError if unknown
        if HEAD_INPUTS[config.head_input].blocks > n_blocks:
            raise ValueError(f"head input {config.head_input!r} reads more blocks than the backbone's {n_blocks}")
        if tta_views(config.tta) > 1 and len(set(_img_size(backbone))) != 1:  # ValueError if unknown
            raise ValueError(f"test-time augmentation {config.tta!r} needs a square input, got {_img_size(backbone)}")
        if not method.has_prompts and config.num_prompts:
            config = dataclasses.replace(config, num_prompts=0, prompt_dropout=0.0)
        self.config = config
        # Full fine-tuning changes the weights: tune a copy, so that the caller's frozen backbone (and
        # the sha256 that identifies it) stays what it is.
        self.backbone = copy.deepcopy(backbone) if method.tunes_backbone else backbone
        backbone = self.backbone
        self.num_classes = num_classes
        self.embed_dim = int(backbone.embed_dim)
        self.num_prefix_tokens = int(backbone.num_prefix_tokens)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

        full = method.tunes_backbone
        for p in backbone.parameters():
            p.requires_grad_(full)
        if not full:
            backbone.eval()

        depth = (n_blocks - config.prompt_start_block) if config.deep else 1
        if config.num_prompts > 0:
            # Xavier-uniform as in VPT: bound = sqrt(6 / (3 * patch_area + dim)).
            bound = math.sqrt(6.0 / float(3 * _patch_area(backbone) + self.embed_dim))
            self.prompts = nn.Parameter(torch.empty(depth, config.num_prompts, self.embed_dim).uniform_(-bound, bound))
        else:
            self.register_parameter("prompts", None)
        self.prompt_dropout = nn.Dropout(config.prompt_dropout)
        self.head = nn.Linear(head_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    # -- bookkeeping -------------------------------------------------------------------------------
    @property
    def frozen_blocks(self) -> int:
        """How many leading blocks are frozen and prompt-free, so their output can be cached: up to
        the first prompted block (all blocks without prompts), and before the first block whose class
        token the head reads. A method that tunes the backbone has none."""
        n_blocks = len(self.backbone.blocks)
        if self.config.spec.tunes_backbone:
            return 0
        k = self.config.prompt_start_block if self.prompts is not None else n_blocks
        return min(k, n_blocks - HEAD_INPUTS[self.config.head_input].blocks)

    def train(self, mode: bool = True) -> PromptedViT:
        """Set training mode; the frozen backbone stays in eval mode (no dropout/drop-path in it)."""
        super().train(mode)
        if not self.config.spec.tunes_backbone:
            self.backbone.eval()
        return self

    def tuned_parameters(self) -> list[nn.Parameter]:
        """The parameters this method trains (prompts + head, head only, or everything)."""
        return [p for p in self.parameters() if p.requires_grad]

    def num_tuned(self) -> int:
        """Number of tuned scalars."""
        return sum(p.numel() for p in self.tuned_parameters())

    def num_backbone(self) -> int:
        """Number of scalars in the backbone (frozen or not)."""
        return sum(p.numel() for p in self.backbone.parameters())

    # -- forward -----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, until_block: int = 0) -> torch.Tensor:
        """Frozen part: normalise, patch-embed, add positions, then run blocks ``[0, until_block)``.

        Args:
            images: ``[B, 3, H, W]`` float in ``[0, 1]``.
            until_block: run this many blocks (must be ``<= prompt_start_block`` so no prompt is
                involved).

        Returns:
            ``[B, num_prefix_tokens + num_patches, D]`` hidden states entering block ``until_block``.
        """
        if until_block > self.config.prompt_start_block and self.prompts is not None:
            raise ValueError("embed() may only run blocks before the first prompted block")
        bb = self.backbone
        x = (images - self.mean) / self.std
        x = bb.patch_embed(x)
        x = bb._pos_embed(x)
        x = bb.patch_drop(x)
        x = bb.norm_pre(x)
        for blk in bb.blocks[:until_block]:
            x = blk(x)
        return x

    def _prompts_for(self, index: int, batch: int, prompts: torch.Tensor | None) -> torch.Tensor:
        p = self.prompt_dropout((self.prompts if prompts is None else prompts)[index])
        return p.unsqueeze(0).expand(batch, -1, -1)  # expanded per batch: no batch size baked in

    def forward_from(
        self,
        hidden: torch.Tensor,
        start_block: int = 0,
        guided_block: int | None = None,
        prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, GuidedFeatures | None]:
        """Run blocks ``[start_block, depth)`` with prompts, the final norm and pooling.

        Args:
            hidden: ``[B, P + N, D]`` hidden states entering ``start_block`` (from :meth:`embed`),
                without prompts; ``start_block <= prompt_start_block``.
            guided_block: when set, also return :class:`GuidedFeatures` read at that block's input.
            prompts: ``[depth, n_prompts, D]`` to use instead of the model's own (the shared-backbone
                ONNX graph takes them as an input).

        Returns:
            ``(features [B, F], guided or None)``: the head's input (:data:`vptcli.methods.HEAD_INPUTS`; for ``cls``
            timm's ``forward_head`` with ``pre_logits=True``, the final normed class token).

        Raises:
            ValueError: ``start_block`` past the first prompted block, or past the first block whose
                class token the head reads (see :attr:`frozen_blocks`).
        """
        bb = self.backbone
        P, n, k = self.num_prefix_tokens, self.config.num_prompts, self.config.prompt_start_block
        if start_block > k and self.prompts is not None:
            raise ValueError(f"start_block {start_block} is past the first prompted block {k}")
        n_blocks, n_taps = len(bb.blocks), HEAD_INPUTS[self.config.head_input].blocks
        if start_block > n_blocks - n_taps:
            raise ValueError(f"start_block {start_block} is past block {n_blocks - n_taps}, whose class token the head reads")
        B = hidden.shape[0]
        x = hidden
        guided = None
        has_prompts = False
        taps = []  # class tokens after the blocks the head reads (all but the last)
        for i in range(start_block, n_blocks):
            blk = bb.blocks[i]
            if self.prompts is not None and i >= k and (self.config.deep or i == k):
                p = self._prompts_for(i - k if self.config.deep else 0, B, prompts)
                if has_prompts:  # deep: replace the previous block's prompt outputs
                    x = torch.cat((x[:, :P], p, x[:, P + n :]), dim=1)
                else:  # first prompted block: insert after the prefix tokens
                    x = torch.cat((x[:, :P], p, x[:, P:]), dim=1)
                    has_prompts = True
            if guided_block is not None and i == guided_block:
                guided = self._guided_features(blk, x, i)
            x = blk(x)
            if n_blocks - n_taps <= i < n_blocks - 1:
                taps.append(x[:, 0])
        if has_prompts:
            x = torch.cat((x[:, :P], x[:, P + n :]), dim=1)
        return self._head_input(bb.norm(x), taps), guided

    def _head_input(self, x: torch.Tensor, taps: list[torch.Tensor]) -> torch.Tensor:
        """Pool the final normed tokens ``[B, P + N, D]`` (no prompts) and the earlier class tokens
        ``taps`` (each ``[B, D]``, not yet normed) into the head's input ``[B, F]``."""
        bb = self.backbone
        cls = bb.forward_head(x, pre_logits=True)
        if self.config.head_input == "cls":
            return cls
        mean = x[:, self.num_prefix_tokens :].mean(dim=1)
        return torch.cat([bb.norm(t) for t in taps] + [cls, mean], dim=-1)

    def _guided_features(self, blk: nn.Module, x: torch.Tensor, index: int) -> GuidedFeatures:
        if self.prompts is None or not self.config.deep or index < self.config.prompt_start_block:
            raise ValueError(f"guided block {index} has no prompts of its own (DA-VPT needs a deep-prompted block)")
        P, n = self.num_prefix_tokens, self.config.num_prompts
        attn = blk.attn
        cls = blk.norm1(x[:, :1])  # LayerNorm is per token: norm the class token alone
        B = x.shape[0]
        q = attn.qkv(cls)[..., : attn.num_heads * attn.head_dim]
        q = attn.q_norm(q.view(B, 1, attn.num_heads, attn.head_dim)).reshape(B, -1)
        return GuidedFeatures(
            patch_mean=x[:, P + n :].mean(dim=1),
            cls_query=q,
            prompts=self.prompts[index - self.config.prompt_start_block],
        )

    def features(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, 3, H, W]`` in ``[0, 1]`` -> the head's input ``[B, F]`` (``prompts``: see :meth:`forward_from`).

        With test-time augmentation (``config.tta``) the features are the mean over the views
        (:func:`vptcli.tta.dihedral_views`: ``V * B`` images through the backbone, view-major, so rows
        ``[0, B)`` of every block's input are the plain images).
        """
        k = self.frozen_blocks
        views = tta_views(self.config.tta)
        if views > 1:
            images = dihedral_views(images)
        return mean_over_views(self.forward_from(self.embed(images, k), k, prompts=prompts)[0], views)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` float RGB in ``[0, 1]`` -> logits ``[B, C]``."""
        return self.head(self.features(images))

    # -- tuned state ---------------------------------------------------------------------------
    def tuned_state(self) -> dict[str, torch.Tensor]:
        """The tensors a prompt file stores: ``prompts`` (if any), ``head.weight``, ``head.bias``;
        for full fine-tuning also every backbone tensor under ``backbone.``."""
        state: dict[str, torch.Tensor] = {}
        if self.prompts is not None:
            state["prompts"] = self.prompts.detach()
        state["head.weight"] = self.head.weight.detach()
        state["head.bias"] = self.head.bias.detach()
        if self.config.spec.tunes_backbone:
            for name, t in self.backbone.state_dict().items():
                state[f"backbone.{name}"] = t.detach()
        return state

    def load_tuned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`tuned_state`.

        Raises:
            KeyError: a tensor is missing or unexpected. ValueError: a shape differs.
        """
        expected = self.tuned_state()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        if missing or extra:
            raise KeyError(f"missing tensors {missing[:5]} / unexpected tensors {extra[:5]}")
        for name, t in state.items():
            if tuple(t.shape) != tuple(expected[name].shape):
                raise ValueError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}")
        with torch.no_grad():
            if self.prompts is not None:
                self.prompts.copy_(state["prompts"])
            self.head.weight.copy_(state["head.weight"])
            self.head.bias.copy_(state["head.bias"])
            if self.config.spec.tunes_backbone:
                self.backbone.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
