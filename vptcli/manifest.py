"""The manifest: one record per file found by ``vpt ingest``, the class map and the ingest settings.

On disk (one folder, written by :meth:`Manifest.write`, every file atomically via :mod:`vptcli.fsutil`):

- ``manifest.csv``: UTF-8, ``\\n`` line ends, columns ``path,label,split,sha256,width,height,mode,status,
  reason,notes``, one row per file sorted by path. ``path`` is relative to the source root, with ``/``
  separators and NFC-normalised Unicode (spaces, leading spaces included, kept exactly); ``sha256`` is
  :func:`vptcli.images.pixel_sha256` of the decoded pixels; ``status`` is ``ok`` or ``skipped`` (then
  ``split`` is empty and ``reason`` says why).
- ``classes.json``: the class names in index order (sorted), a JSON list.
- ``manifest.json``: format marker, the source root (absolute, and relative to this folder), the
  classes, the settings (seed, fractions, max_pixels, bit_depth, layout, ...), counts and the
  fingerprint. It is written last, so a folder with ``manifest.json`` holds a complete manifest.

The images themselves are never moved, renamed or deleted; :func:`resolve_image_path` finds them.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass, field, fields
from pathlib import Path

from vptcli import fsutil
from vptcli.errors import VptError

__all__ = [
    "CLASSES_FILE",
    "MANIFEST_COLUMNS",
    "MANIFEST_CSV",
    "MANIFEST_JSON",
    "SPLITS",
    "ImageRecord",
    "Manifest",
    "is_manifest_dir",
    "resolve_image_path",
]

MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
CLASSES_FILE = "classes.json"
FORMAT_NAME = "vptcli-manifest"
FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = (
    "path", "label", "split", "sha256", "width", "height", "mode", "status", "reason",
)
MANIFEST_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + ("notes",)
STATUS_OK = "ok"
STATUS_SKIPPED = "skipped"


@dataclass
class ImageRecord:
    """One file under the source root.

    ``path``: relative to the root, POSIX separators, NFC. ``label``: class name ('' when the file is
    outside any class folder). ``split``: ``'train'``/``'val'``/``'test'`` ('' when skipped).
    ``sha256``: pixel hash ('' when skipped). ``width``/``height``: decoded size in pixels (0 when
    skipped). ``mode``: the file's Pillow mode. ``status``: ``'ok'`` or ``'skipped'``. ``reason``: why
    skipped (``"<kind>: <detail>"``). ``notes``: decoding notes joined by ``'; '``.
    """

    path: str
    label: str
    split: str
    sha256: str
    width: int
    height: int
    mode: str
    status: str
    reason: str
    notes: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


@dataclass
class Manifest:
    """Records + class map + settings of one ingest (see the module docstring for the files)."""

    root: Path
    classes: list[str]
    records: list[ImageRecord]
    settings: dict = field(default_factory=dict)

    def usable(self, split: str | None = None) -> list[ImageRecord]:
        """Records with status ``ok``, optionally only those of one split (``train``/``val``/``test``).

        Raises :class:`VptError` for an unknown split name."""
        if split is not None and split not in SPLITS:
            raise VptError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.status == STATUS_OK and (split is None or r.split == split)]

    def label_index(self, label: str) -> int:
        """Index of ``label`` in :attr:`classes` (the model's output index). VptError if unknown."""
        try:
            return self.classes.index(label)
        except ValueError:
            raise VptError(
                f"unknown class {label!r}; the manifest's classes are {', '.join(map(repr, self.classes))}"
            ) from None

    def counts(self) -> dict[str, dict[str, int]]:
        """Usable images per class and split: ``{class: {'train': n, 'val': n, 'test': n}}``."""
        table = {c: {s: 0 for s in SPLITS} for c in self.classes}
        for r in self.usable():
            if r.label in table and r.split in table[r.label]:
                table[r.label][r.split] += 1
        return table

    def csv_bytes(self) -> bytes:
        """``manifest.csv`` exactly as :meth:`write` writes it (records sorted by path)."""
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for r in sorted(self.records, key=lambda rec: rec.path):
            writer.writerow([getattr(r, name) for name in MANIFEST_COLUMNS])
        return buf.getvalue().encode("utf-8")

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the ``manifest.csv`` bytes: identifies the training data exactly."""
        return hashlib.sha256(self.csv_bytes()).hexdigest()

    def train_val_fingerprint(self) -> str:
        """SHA-256 (hex) of the training and validation images (split, class, pixel hash; sorted): the
        data a run learns from and is selected on, independent of file names and of the test split."""
        rows = sorted(f"{r.split}\t{r.label}\t{r.sha256}" for r in self.usable() if r.split in ("train", "val"))
        return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()

    def write(self, folder: str | os.PathLike) -> None:
        """Write ``manifest.csv``, ``classes.json`` and (last) ``manifest.json`` into ``folder``.

        Each file is written atomically; the folder is created if needed. OSError if not writable."""
        folder = Path(folder)
        data = self.csv_bytes()
        fsutil.atomic_write_bytes(folder / MANIFEST_CSV, data)
        fsutil.atomic_write_json(folder / CLASSES_FILE, list(self.classes))
        root = Path(os.path.abspath(self.root))
        try:
            root_relative = Path(os.path.relpath(root, os.path.abspath(folder))).as_posix()
        except ValueError:  # another drive on Windows
            root_relative = None
        from vptcli import __version__

        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "vptcli_version": __version__,
            "root": str(root),
            "root_relative": root_relative,
            "classes": list(self.classes),
            "settings": self.settings,
            "counts": self.counts(),
            "n_records": len(self.records),
            "n_usable": len(self.usable()),
            "fingerprint": hashlib.sha256(data).hexdigest(),
        }
        fsutil.atomic_write_json(folder / MANIFEST_JSON, meta)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Manifest:
        """Read a manifest folder written by :meth:`write` (or the path of its ``manifest.csv``/
        ``manifest.json``). Raises :class:`VptError` naming the folder when it is not an ingest
        output, or naming the file and line when a file is damaged."""
        folder = Path(folder)
        if folder.is_file() and folder.name in (MANIFEST_CSV, MANIFEST_JSON):
            folder = folder.parent
        hint = f"run `vpt ingest SRC --out {folder}` to create it"
        if not folder.exists():
            raise VptError(f"{folder}: no such folder; {hint}")
        if not folder.is_dir():
            raise VptError(f"{folder} is not a manifest folder (it is a file); {hint}")
        meta_path, csv_path = folder / MANIFEST_JSON, folder / MANIFEST_CSV
        if not meta_path.is_file() or not csv_path.is_file():
            missing = MANIFEST_JSON if not meta_path.is_file() else MANIFEST_CSV
            raise VptError(f"{folder} is not a `vpt ingest` output ({missing} missing); {hint}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VptError(f"{meta_path}: unreadable ({exc}); rerun `vpt ingest`") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise VptError(f"{meta_path} is not a vptcli manifest; {hint}")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise VptError(
                f"{meta_path}: manifest format {meta.get('format_version')} is newer than this vptcli "
                f"understands ({FORMAT_VERSION}); upgrade vptcli or rerun `vpt ingest`"
            )
        records = _read_records(csv_path)
        classes = _read_classes(folder / CLASSES_FILE, meta)
        known = set(classes)
        for i, r in enumerate(records, start=2):
            if r.status == STATUS_OK and r.label not in known:
                raise VptError(f"{csv_path}: line {i}: label {r.label!r} is not in {CLASSES_FILE}; rerun `vpt ingest`")
        return cls(
            root=_resolve_root(folder, meta),
            classes=classes,
            records=records,
            settings=dict(meta.get("settings") or {}),
        )


def is_manifest_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by :meth:`Manifest.write` (or one of its two files)."""
    path = Path(path)
    if path.is_file() and path.name in (MANIFEST_CSV, MANIFEST_JSON):
        path = path.parent
    return (path / MANIFEST_JSON).is_file() and (path / MANIFEST_CSV).is_file()


def resolve_image_path(manifest: Manifest, record: ImageRecord) -> Path:
    """The file behind ``record``: ``manifest.root / record.path``.

    Paths are stored NFC; when the file system holds the name in another normalisation (NFD names
    copied from macOS onto Linux), the matching entry on disk is returned instead. When nothing
    matches, the plain joined path is returned (decoding it then names the missing file)."""
    parts = record.path.split("/")
    direct = Path(manifest.root).joinpath(*parts)
    if direct.exists():
        return direct
    current = Path(manifest.root)
    for part in parts:
        candidate = current / part
        if not candidate.exists():
            actual = _nfc_listing(str(current)).get(unicodedata.normalize("NFC", part))
            if actual is None:
                return direct
            candidate = current / actual
        current = candidate
    return current


# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _nfc_listing(folder: str) -> dict[str, str]:
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    return {unicodedata.normalize("NFC", n): n for n in names}


def _read_records(csv_path: Path) -> list[ImageRecord]:
    try:
        text = csv_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VptError(f"{csv_path}: unreadable ({exc}); rerun `vpt ingest`") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(header[: len(REQUIRED_COLUMNS)]) != REQUIRED_COLUMNS:
        raise VptError(
            f"{csv_path}: columns must start with {','.join(REQUIRED_COLUMNS)}; rerun `vpt ingest`"
        )
    index = {name: i for i, name in enumerate(header)}
    names = [f.name for f in fields(ImageRecord)]
    records = []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise VptError(f"{csv_path}: line {line_no} has {len(row)} fields, expected {len(header)}")
        values = {name: row[index[name]] for name in names if name in index}
        try:
            values["width"] = int(values["width"] or 0)
            values["height"] = int(values["height"] or 0)
        except ValueError:
            raise VptError(f"{csv_path}: line {line_no}: width/height are not integers") from None
        rec = ImageRecord(**values)
        if rec.status not in (STATUS_OK, STATUS_SKIPPED):
            raise VptError(f"{csv_path}: line {line_no}: status {rec.status!r} is not ok/skipped")
        if rec.status == STATUS_OK and rec.split not in SPLITS:
            raise VptError(f"{csv_path}: line {line_no}: split {rec.split!r} is not train/val/test")
        parts = rec.path.split("/")
        if not rec.path or rec.path.startswith("/") or ".." in parts:
            raise VptError(f"{csv_path}: line {line_no}: path {rec.path!r} is not relative to the root")
        records.append(rec)
    return records


def _read_classes(classes_path: Path, meta: dict) -> list[str]:
    if classes_path.is_file():
        try:
            classes = json.loads(classes_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VptError(f"{classes_path}: unreadable ({exc}); rerun `vpt ingest`") from None
    else:
        classes = meta.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise VptError(f"{classes_path}: expected a JSON list of class names; rerun `vpt ingest`")
    return classes


def _resolve_root(folder: Path, meta: dict) -> Path:
    if not meta.get("root"):
        raise VptError(f"{folder / MANIFEST_JSON}: the source root is missing; rerun `vpt ingest`")
    root = Path(str(meta["root"]))
    if root.is_dir():
        return root
    relative = meta.get("root_relative")
    if relative:
        moved = Path(os.path.normpath(folder.resolve() / relative))
        if moved.is_dir():
            return moved
    return root
