"""The training methods, declared once: a name (:class:`Method`) and what it implies (:class:`MethodSpec`).

Every other module asks the spec (``spec(name).has_prompts``, ``.tunes_backbone`` ...) instead of
comparing method names, the way HF PEFT declares its tuner types and timm registers its models. The
CLI's ``--method`` choices and help text come from :data:`SPECS` too.

Sources: VPT-shallow / VPT-deep: Jia et al., "Visual Prompt Tuning", ECCV 2022 (github KMnP/vpt);
DA-VPT: "Distribution-Aware VPT", CVPR 2025 (see :mod:`vptcli.losses`); linear probe and full
fine-tuning are the usual baselines of both papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Method(str, Enum):
    """A training method, in the CLI's (and the prompt file's) spelling."""

    VPT_SHALLOW = "vpt-shallow"
    VPT_DEEP = "vpt-deep"
    DA_VPT = "da-vpt"
    LINEAR_PROBE = "linear-probe"
    FULL_FINETUNE = "full-finetune"

    def __str__(self) -> str:  # f"{method}" prints the CLI spelling
        return self.value


@dataclass(frozen=True)
class MethodSpec:
    """What a method is, as data.

    Attributes:
        method: the :class:`Method`.
        label: the name in tables and reports (e.g. "VPT-deep", "linear probe").
        summary: one line for ``--help``.
        has_prompts: trains prompt tokens (``--prompts`` >= 1 required).
        deep: one prompt set per prompted block (else one set at the first prompted block).
        tunes_backbone: every backbone weight is tuned (on a copy); the artefact is a full model.
        metric_loss: adds DA-VPT's metric-learning losses at a guided block.
        default_lr: AdamW learning rate when ``--lr`` is not given (prompts and head; with
            ``tunes_backbone``: the backbone's, the head gets ``head_lr_scale`` times it).
        head_lr_scale: the head's learning rate relative to ``default_lr``'s group.
        head_fit: the head alone is fitted to convergence on cached features (L-BFGS,
            :mod:`vptcli.probe`) instead of trained for epochs (with ``--head-init random``: epochs).
    """

    method: Method
    label: str
    summary: str
    has_prompts: bool
    deep: bool
    tunes_backbone: bool
    metric_loss: bool
    default_lr: float
    head_lr_scale: float = 1.0
    head_fit: bool = False

    @property
    def name(self) -> str:
        """The CLI spelling, e.g. ``"vpt-deep"``."""
        return self.method.value

    @property
    def artifact_kind(self) -> str:
        """``"full-model"`` when the backbone is tuned, else ``"prompts"`` (the prompt file's ``kind``)."""
        return "full-model" if self.tunes_backbone else "prompts"

    @property
    def uses_cache(self) -> bool:
        """Whether a frozen prefix of the backbone exists that a feature cache can hold (see
        :attr:`vptcli.prompting.PromptedViT.frozen_blocks` for where it ends)."""
        return not self.tunes_backbone


SPECS: dict[Method, MethodSpec] = {
    s.method: s
    for s in (
        MethodSpec(Method.VPT_SHALLOW, "VPT-shallow", "one prompt set at the first prompted block (VPT-shallow)",
                   has_prompts=True, deep=False, tunes_backbone=False, metric_loss=False, default_lr=3e-3),
        MethodSpec(Method.VPT_DEEP, "VPT-deep", "a prompt set per prompted block (VPT-deep)",
                   has_prompts=True, deep=True, tunes_backbone=False, metric_loss=False, default_lr=3e-3),
        MethodSpec(Method.DA_VPT, "DA-VPT", "VPT-deep plus distribution-aware metric losses (DA-VPT)",
                   has_prompts=True, deep=True, tunes_backbone=False, metric_loss=True, default_lr=3e-3),
        MethodSpec(Method.LINEAR_PROBE, "linear probe", "no prompts, the linear head only (fitted to convergence)",
                   has_prompts=False, deep=False, tunes_backbone=False, metric_loss=False, default_lr=3e-3,
                   head_fit=True),
        MethodSpec(Method.FULL_FINETUNE, "full fine-tuning", "every backbone weight tuned (a full model, not a prompt file)",
                   has_prompts=False, deep=False, tunes_backbone=True, metric_loss=False, default_lr=3e-5,
                   head_lr_scale=30.0),
    )
}
"""Every method's spec, in the CLI's order."""

METHODS: tuple[str, ...] = tuple(m.value for m in SPECS)
"""Method names in the CLI's spelling."""

DEFAULT_METHOD = Method.VPT_DEEP


def spec(method: str | Method) -> MethodSpec:
    """The spec of ``method`` (a :class:`Method` or its name).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    try:
        return SPECS[Method(method)]
    except ValueError:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}") from None


def methods_help() -> str:
    """``--method`` help: each name with its one-line summary."""
    return "; ".join(f"{s.name}: {s.summary}" for s in SPECS.values()) + "."


@dataclass(frozen=True)
class HeadInput:
    """What the linear head reads (``--head-input``; see :meth:`vptcli.prompting.PromptedViT.forward_from`).

    Attributes:
        name: the CLI spelling. blocks: how many final blocks' class tokens it reads (0: only the
            final normed class token, as timm's ``forward_head(pre_logits=True)``).
        width: feature width in units of the embedding dimension D. summary: one line for ``--help``.
    """

    name: str
    blocks: int
    width: int
    summary: str


HEAD_INPUTS: dict[str, HeadInput] = {
    h.name: h
    for h in (
        HeadInput("cls", 0, 1, "the final normed class token (VPT's head)"),
        HeadInput("cls+mean", 0, 2, "the final class token and the mean of the final patch tokens"),
        HeadInput("last4+mean", 4, 5, "the normed class tokens of the last 4 blocks and the mean patch token: "
                  "DINOv2's linear-evaluation input (Oquab et al., 2023, github facebookresearch/dinov2, "
                  "create_linear_input with n_last_blocks=4, avgpool=True)"),
    )
}
"""Every head input, by name; ``cls`` is the default and what files without the setting mean."""
