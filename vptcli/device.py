"""Device choice, checked once for every command: ``auto | cpu | cuda`` -> a ``torch.device``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vptcli.errors import VptError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
"""The ``--device`` values every command takes."""


def check_device(device: str) -> None:
    """Raise VptError unless ``device`` is one of :data:`DEVICES` (no torch import: checks options early)."""
    if device not in DEVICES:
        raise VptError(f"--device must be auto, cpu or cuda, got {device!r}")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. ``cuda`` without a GPU -> VptError.

    Also accepts ``cuda:N`` (library callers).
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VptError("--device cuda asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise VptError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, fp16 on older ones, None (fp32) on CPU or when disabled."""
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
