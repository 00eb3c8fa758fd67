"""sha256 digests of tensors and files: one loop over sorted tensors, two stored header formats.

Both header formats are recorded in files already written (backbone identities and prompt-file
metadata), so they stay byte-for-byte what they were:

- :func:`state_dict_sha256` (backbone weights): ``name NUL dtype NUL shape-with-commas NUL`` + bytes.
- :func:`tensors_digest` (a prompt file's tensors): ``name|dtype|(shape tuple)|`` + bytes.

The tensor bytes are the raw little-endian bytes in C-contiguous order in both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch


def _digest(tensors: dict[str, torch.Tensor], header: Callable[[str, torch.Tensor], str]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(header(name, t).encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Canonical sha256 (hex) of a state dict, independent of file format and key order.

    For each key in sorted order: the key (UTF-8), the dtype name (e.g. ``torch.float32``), the shape
    (comma-separated), each followed by a NUL byte, then the tensor's raw little-endian bytes in
    C-contiguous order.
    """
    return _digest(state_dict, lambda name, t: f"{name}\0{t.dtype}\0{','.join(map(str, t.shape))}\0")


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes, in sorted name order (a prompt file's
    ``tensors_sha256``)."""
    return _digest(tensors, lambda name, t: f"{name}|{t.dtype}|{tuple(t.shape)}|")


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
