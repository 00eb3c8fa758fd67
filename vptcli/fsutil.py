"""Atomic file writes (write to a temporary file in the same folder, fsync, then rename).

A full disk loses nothing: the size of a write is checked against the free space of its folder
before anything is written when it is known (:func:`check_free_space`), ``ENOSPC``/``EDQUOT`` while
writing becomes a :class:`DiskFullError` naming the file and the bytes needed, and the temporary file
is removed on every failure path (also when closing or flushing it fails again), so the previous file,
if any, stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vptcli.errors import VptError

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


class DiskFullError(VptError):
    """Not enough space to write a file; the message names the file, the bytes needed (when known)
    and the bytes free, and says that nothing was changed."""


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` that means "no space left" (``ENOSPC``, ``EDQUOT``, ``EFBIG``)."""
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes (for unprivileged users) on the file system of ``folder`` (or of its nearest existing
    parent); ``None`` when it cannot be told."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def disk_full_error(path: str | os.PathLike, needed: int | None = None) -> DiskFullError:
    """The :class:`DiskFullError` for writing ``path`` (``needed`` bytes, when known)."""
    free = free_bytes(Path(path).parent)
    need = f"{needed:,} bytes needed" if needed is not None else "no space left on the device"
    have = f", {free:,} free there" if free is not None else ""
    return DiskFullError(
        f"{path}: not enough disk space to write it ({need}{have}); nothing was changed; free some "
        "space or write to another disk"
    )


def check_free_space(path: str | os.PathLike, needed: int, margin: int = 1 << 20) -> None:
    """Raise :class:`DiskFullError` when the folder of ``path`` has less than ``needed + margin``
    bytes free (``margin``: 1 MiB for the file system's own overhead). Does nothing when the free
    space cannot be told."""
    free = free_bytes(Path(path).parent)
    if free is not None and free < needed + margin:
        raise disk_full_error(path, needed)


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
        self.needed: int | None = None  # bytes to be written, when known (for the error message)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.path) from None
            raise
        self.file = os.fdopen(fd, mode, **open_kwargs)

    def commit(self) -> Path:
        """Flush, fsync and rename over ``path``. On any failure the temporary file is removed and
        the error re-raised (:class:`DiskFullError` for a full disk)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            apply_umask_mode(self._tmp)
            os.replace(self._tmp, self.path)
        except BaseException as exc:
            self.abort()
            if is_disk_full(exc):
                raise disk_full_error(self.path, self.needed) from None
            raise
        return self.path

    def abort(self) -> None:
        """Close (errors ignored: a full disk fails the final flush again) and remove the temporary file."""
        with contextlib.suppress(OSError, ValueError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.abort()
        if exc is not None and is_disk_full(exc):
            raise disk_full_error(self.path, self.needed) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :class:`AtomicFile`). Returns the final path.

    Raises:
        DiskFullError: less than ``len(data)`` (+ 1 MiB) bytes free in the folder (checked before
            writing), or the disk filled up while writing; ``path`` is then unchanged.
        OSError: any other write error (temporary file removed).
    """
    check_free_space(path, len(data))
    f = AtomicFile(path, "wb")
    f.needed = len(data)
    with f as fh:
        fh.write(data)
    return Path(path)


def atomic_write_all(files: dict[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files all-or-nothing: their total size is checked against the free space first,
    every file is written (flushed, fsynced) under a temporary name, and only when all are complete
    are they renamed over their targets, in the given order. On any failure every temporary file is
    removed and no target is touched.

    Raises:
        DiskFullError: not enough free space (checked before writing, naming the first file and the
            bytes needed for all of them), or the disk filled up while writing.
        OSError: any other write error.
    """
    items = [(Path(p), data) for p, data in files.items()]
    if not items:
        return []
    check_free_space(items[0][0], sum(len(d) for _, d in items))
    pending: list[AtomicFile] = []
    try:
        for path, data in items:
            f = AtomicFile(path, "wb")
            f.needed = len(data)
            pending.append(f)
            f.file.write(data)
            f.file.flush()
            os.fsync(f.file.fileno())
    except BaseException as exc:
        for f in pending:
            f.abort()
        if is_disk_full(exc):
            raise disk_full_error(pending[-1].path if pending else items[0][0], sum(len(d) for _, d in items)) from None
        raise
    done = []
    try:
        for f in pending:
            done.append(f.commit())
    except BaseException:
        for f in pending[len(done):]:
            f.abort()
        raise
    return done


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
