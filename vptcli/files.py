"""Walking a folder of images the way ``vpt ingest`` and ``vpt predict`` both do.

Sorted depth-first, links followed, loops cut; hidden files and folders, ``__MACOSX`` and
``Thumbs.db`` / ``desktop.ini`` are ignored and counted by reason (the ``IGNORED_*`` labels).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

IGNORED_FILE_NAMES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini"})
IGNORED_DIR_NAMES = frozenset({"__macosx"})
IGNORED_HIDDEN_FILE = "hidden files"
IGNORED_HIDDEN_DIR = "hidden folders"
IGNORED_MACOSX = "__MACOSX folders"
IGNORED_SYSTEM = "Thumbs.db / desktop.ini files"
IGNORED_LOOP = "folder links already visited (loops)"


def ignore_kind(name: str, is_dir: bool) -> str | None:
    """Why a folder entry is not scanned (one of the ``IGNORED_*`` labels), or None to scan it:
    hidden files and folders, ``__MACOSX``, ``Thumbs.db`` / ``desktop.ini`` and the like."""
    if name.startswith("."):
        return IGNORED_HIDDEN_DIR if is_dir else IGNORED_HIDDEN_FILE
    if is_dir and name.lower() in IGNORED_DIR_NAMES:
        return IGNORED_MACOSX
    if not is_dir and name.lower() in IGNORED_FILE_NAMES:
        return IGNORED_SYSTEM
    return None


def list_dir(folder: Path, ignored: Counter) -> tuple[list[Path], list[Path]]:
    """Non-ignored (sub-folders, files) of ``folder``, sorted by name; links followed.

    Raises OSError when the folder cannot be listed."""
    dirs, files = [], []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symbolic links
        except OSError:
            is_dir = False
        kind = ignore_kind(entry.name, is_dir)
        if kind is not None:
            ignored[kind] += 1
        elif is_dir:
            dirs.append(Path(entry.path))
        else:
            files.append(Path(entry.path))
    return dirs, files


def walk_files(folder: Path, ignored: Counter | None = None) -> Iterator[tuple[Path, OSError | None]]:
    """Every file under ``folder`` that is not ignored (:func:`ignore_kind`), at any depth, in sorted
    depth-first order, following links and cutting loops, as ``(path, None)``; a sub-folder that
    cannot be listed comes as ``(folder, error)``. ``ignored`` counts what was skipped and why."""
    ignored = Counter() if ignored is None else ignored
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            st = current.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            ignored[IGNORED_LOOP] += 1
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            dirs, found = list_dir(current, ignored)
        except OSError as exc:
            yield current, exc
            continue
        for f in found:
            yield f, None
        stack.extend(reversed(dirs))
