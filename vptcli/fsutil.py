"""Atomic file writes (write to a temporary file in the same folder, fsync, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def apply_umask_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the usual ``0666 & ~umask`` mode (temporary files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


class AtomicFile:
    """A file written under a temporary name in the target folder and renamed over ``path`` on
    :meth:`commit` (after flush + fsync), so readers see the old file or the whole new one; the
    temporary file is removed on :meth:`abort`. Used as a context manager it commits on success and
    aborts on an exception. The final file gets the usual ``0666 & ~umask`` mode (not mkstemp's 0600),
    so a service account can read an exported model.

    Raises:
        OSError: the folder cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self.file = os.fdopen(fd, mode, **open_kwargs)

    def commit(self) -> Path:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        apply_umask_mode(self._tmp)
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.file.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`). Returns the final path."""
    with AtomicFile(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (non-ASCII kept as is) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save torch tensors as a safetensors file atomically.

    ``tensors``: name -> torch.Tensor (made contiguous, moved to CPU). ``metadata``: str -> str.
    """
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)
