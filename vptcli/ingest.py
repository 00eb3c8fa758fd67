"""Scan a labelled image folder into a :class:`~vptcli.manifest.Manifest` (``vpt ingest``).

Layouts (decided from SRC's top-level folders):

- ``SRC/<class>/**/<image>``: one folder per class, nested folders allowed; splits are drawn here.
- ``SRC/{train,val,test}/<class>/**/<image>`` (``valid``/``validation`` are read as ``val``, case
  ignored): pre-split; the given splits are kept.
- ``SRC/**/<image>`` plus a ``filename,label`` CSV (``labels=``, ``vpt ingest --labels FILE``): the
  labels come from the CSV (see :func:`read_labels_csv`); images under SRC that the CSV does not list
  are skipped as "unlabelled".

Ignored and counted (never classes, never records): hidden files and folders (names starting with
``.``: ``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints/``), ``__MACOSX/``, ``Thumbs.db``,
``desktop.ini``. Every other file is decoded once with :func:`vptcli.images.decode_image` (in a thread
pool; symbolic links to files and folders are followed) and becomes a record: ``ok`` with its pixel
hash, or ``skipped`` with the reason (not an image, truncated, too many pixels, ...). Files directly in
SRC (or directly in a split folder) are skipped as "outside class folders".

Duplicates: records with the same pixel hash form a group; a group whose files carry different labels
is a *label conflict* (reported; ``strict`` makes it an error). Groups never straddle splits.

Split (when not pre-split), per class, on duplicate groups:

1. every group is counted in the class of its most frequent label (ties: the first in sorted order);
2. the class's groups are sorted by pixel hash and shuffled with ``random.Random`` seeded by
   SHA-256 of ``"<seed>\\0<class>"`` (so the result depends only on the files' pixels, labels and the
   seed, not on listing order, and adding a class leaves the other classes' splits unchanged);
3. targets are ``round(n * test_fraction)`` and ``round(n * val_fraction)`` images (``n`` = images of the
   class, halves round up), at least 1 each when the fraction is above 0, leaving at least 1 for
   train; groups are taken in shuffled order for test, then val, while under target; the rest is train.

A class needs at least 1 + (val_fraction > 0) + (test_fraction > 0) distinct images (3 with the
defaults), otherwise ingest fails with a message naming it.

SRC is only read: nothing is written, moved or renamed inside it.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from vptcli import fsutil
from vptcli.errors import VptError, one_line
from vptcli.files import list_dir, walk_files
from vptcli.images import (
    DEFAULT_MAX_PIXELS,
    LOW_BIT_FRACTION,
    ImageDecodeError,
    decode_image,
    low_bit_usage,
    pixel_sha256,
)
from vptcli.manifest import (
    CLASSES_FILE,
    MANIFEST_CSV,
    MANIFEST_JSON,
    SPLITS,
    STATUS_OK,
    STATUS_SKIPPED,
    ImageRecord,
    Manifest,
)

__all__ = [
    "IMBALANCE_WARN_RATIO",
    "DuplicateGroup",
    "IngestResult",
    "check_out_dir",
    "check_outside_source",
    "ingest_folder",
    "load_or_ingest",
    "render_report",
    "write_ingest_outputs",
]

REPORT_FILE = "ingest_report.md"
IMBALANCE_WARN_RATIO = 10.0
SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
OUTSIDE_CLASS_REASON = "outside class folders: files directly in {where} belong to no class and are not used (images among them: move them into a class folder)"



@dataclass
class DuplicateGroup:
    """Files with identical decoded pixels (``sha256``); ``records`` sorted by path."""

    sha256: str
    records: list[ImageRecord]

    @property
    def labels(self) -> list[str]:
        """The distinct labels in the group, sorted (more than one = a label conflict)."""
        return sorted({r.label for r in self.records})

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})


@dataclass
class IngestResult:
    """What :func:`ingest_folder` found.

    ``manifest``: the records (ok and skipped), classes and settings. ``duplicate_groups``: every
    group of 2+ files with identical pixels. ``conflicts``: the groups among them with 2+ labels.
    ``skipped``: the skipped records. ``warnings``: one line each (imbalance, 16-bit range, ...).
    ``ignored``: counts of ignored entries by kind (hidden files, ``__MACOSX``...). ``layout``:
    ``'class-folders'`` or ``'pre-split'``. ``class_dirs``: the scanned class folders (resolved).
    """

    manifest: Manifest
    duplicate_groups: list[DuplicateGroup]
    conflicts: list[DuplicateGroup]
    skipped: list[ImageRecord]
    warnings: list[str]
    ignored: dict[str, int] = field(default_factory=dict)
    src: Path = Path(".")
    layout: str = "class-folders"
    class_dirs: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class _Candidate:
    path: Path
    rel: str
    label: str  # '' when outside a class folder
    split: str  # the given split (pre-split layout) or ''
    preset_reason: str = ""  # skipped without decoding (outside class folders, unreadable folder)


@dataclass
class _Probe:
    sha256: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    notes: tuple[str, ...] = ()
    source_max: int | None = None
    low_bits: bool = False
    error: str = ""


# --------------------------------------------------------------------------------------------------
# public API


def ingest_folder(
    src: str | os.PathLike,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    strict: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    bit_depth: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    labels: str | os.PathLike | None = None,
    file_column: str | None = None,
    label_column: str | None = None,
    held_out: bool = False,
) -> IngestResult:
    """Scan ``src``, decode every file once, find duplicates and conflicts, split; write nothing.

    ``held_out``: the folder is evaluated, not trained on (``vpt eval`` on a raw folder): it may hold
    one class or more, no split is made (every usable image gets split ``test``) and the class checks
    only require one usable image.

    ``labels``: a CSV file (with a header) giving each image's class instead of class folders;
    ``file_column``/``label_column`` pick its columns by header name (default: detected, see
    :func:`read_labels_csv`).

    ``val_fraction``/``test_fraction``: shares of each class's images (0 ≤ each, sum < 1; ignored for
    a pre-split layout). ``seed``: split seed. ``strict``: any skipped file or label conflict is an
    error. ``max_pixels``/``bit_depth``: passed to :func:`~vptcli.images.decode_image`. ``workers``:
    decoding threads (default: the CPUs this process may use, at most 8). ``progress``: show a progress bar on stderr.

    Raises :class:`VptError` (one line, naming the folder/class/file and what to do) when SRC is
    missing or not a folder, has no class folders, has fewer than 2 classes, a class has no usable
    images, a class is too small to split as asked, or (``strict``) a file was skipped or labels
    conflict.
    """
    started = time.perf_counter()
    _check_settings(val_fraction, test_fraction, max_pixels, bit_depth, workers)
    src = Path(src)
    if not src.exists():
        raise VptError(f"{src}: no such folder; give the folder that holds one sub-folder per class")
    if not src.is_dir():
        raise VptError(f"{src} is not a folder; give the folder that holds one sub-folder per class")

    ignored: Counter = Counter()
    if labels is not None:
        layout, class_dirs, candidates = _scan_labels(src, Path(labels), ignored, file_column, label_column)
    else:
        layout, class_dirs, candidates = _scan(src, ignored)
    case_pairs = case_clashes(label for label, _ in class_dirs)
    if strict and case_pairs:
        raise VptError(
            f"--strict: class folders whose names differ only by case in {src}: {_case_text(case_pairs)}; "
            "they merge when the tree is copied to Windows or macOS; rename or merge them, or run without "
            "--strict to keep them as separate classes"
        )
    probes = _decode_all(candidates, max_pixels=max_pixels, bit_depth=bit_depth, workers=workers,
                         progress=progress)

    records, wide, low_bit = _records(candidates, probes)
    skipped = [r for r in records if r.status == STATUS_SKIPPED]
    usable = [r for r in records if r.status == STATUS_OK]

    # label conflicts and duplicate groups
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in usable:
        by_hash[r.sha256].append(r)
    groups = [DuplicateGroup(h, rs) for h, rs in sorted(by_hash.items()) if len(rs) > 1]
    conflicts = [g for g in groups if len(g.labels) > 1]

    if strict:
        _check_strict(src, skipped, conflicts)

    class_names = sorted({label for label, _ in class_dirs})
    warnings: list[str] = []
    if held_out:
        _mark_held_out(src, usable)
    else:
        _check_classes(src, class_names, class_dirs, usable, skipped)
        if layout == "pre-split":
            _check_pre_split(class_names, usable, groups, warnings)
        else:
            _assign_splits(by_hash, class_names, val_fraction, test_fraction, seed)

    warnings += _imbalance_warnings(usable, class_names) + _bit_depth_warnings(wide, low_bit, bit_depth)
    if case_pairs:
        warnings.append(
            f"class names that differ only by case: {_case_text(case_pairs)}; almost always a labelling "
            "slip, and they merge into one folder when the tree is copied to Windows or macOS; kept as "
            "separate classes (rename or merge the folders; --strict refuses them)"
        )
    warnings.extend(_shape_warnings(usable))
    nfc_clash = _nfc_clashes(class_dirs)
    if nfc_clash:
        warnings.append(nfc_clash)
    if conflicts:
        warnings.append(
            f"{len(conflicts)} group(s) of identical images carry different labels (label conflicts); "
            "they are kept, each group in one split; see ingest_report.md (`vpt ingest`), or use --strict to refuse them"
        )

    manifest = Manifest(
        root=Path(os.path.abspath(src)),
        classes=class_names,
        records=records,
        settings={
            "layout": layout,
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "max_pixels": max_pixels,
            "bit_depth": bit_depth,
            "strict": strict,
            **({"labels": str(labels)} if labels is not None else {}),
        },
    )
    for g in groups:  # records changed split in place; keep group lists sorted for reports
        g.records.sort(key=lambda r: r.path)
    return IngestResult(
        manifest=manifest,
        duplicate_groups=groups,
        conflicts=conflicts,
        skipped=skipped,
        warnings=warnings,
        ignored=dict(ignored),
        src=Path(os.path.abspath(src)),
        layout=layout,
        class_dirs=[Path(os.path.realpath(d)) for _, d in class_dirs],
        elapsed_s=time.perf_counter() - started,
    )


def _records(candidates: list[_Candidate], probes: list[_Probe]) -> tuple[list[ImageRecord], list[_Probe], list[_Probe]]:
    """``(records sorted by path, probes of 16-bit images, those of them with low bits only)``."""
    records: list[ImageRecord] = []
    low_bit: list[_Probe] = []
    wide: list[_Probe] = []
    for cand, probe in zip(candidates, probes):
        if cand.preset_reason:
            records.append(_skipped(cand, cand.preset_reason))
        elif probe.error:
            records.append(_skipped(cand, probe.error))
        else:
            records.append(ImageRecord(
                path=cand.rel, label=cand.label, split=cand.split, sha256=probe.sha256,
                width=probe.width, height=probe.height, mode=probe.mode, status=STATUS_OK, reason="",
                notes="; ".join(probe.notes),
            ))
            if probe.source_max is not None:
                wide.append(probe)
                if probe.low_bits:
                    low_bit.append(probe)
    records.sort(key=lambda r: r.path)
    return records, wide, low_bit


def _check_strict(src: Path, skipped: list[ImageRecord], conflicts: list[DuplicateGroup]) -> None:
    """``--strict``: a skipped file or a label conflict is an error (VptError naming the first)."""
    if skipped:
        first = skipped[0]
        raise VptError(
            f"--strict: {len(skipped)} file(s) could not be used, first {src / first.path}: {first.reason}"
            "; fix or remove them, or run without --strict to skip them"
        )
    if conflicts:
        g = conflicts[0]
        raise VptError(
            f"--strict: {len(conflicts)} group(s) of identical images carry different labels, first "
            f"{' vs '.join(repr(r.path) for r in g.records)}; keep each picture in one class folder"
        )


def _imbalance_warnings(usable: list[ImageRecord], class_names: list[str]) -> list[str]:
    """A warning when the largest class has more than :data:`IMBALANCE_WARN_RATIO` x the smallest's images."""
    counts = Counter(r.label for r in usable)
    most, least = max(counts.values()), min(counts.values())
    if not (least and most / least > IMBALANCE_WARN_RATIO):
        return []
    big = max(class_names, key=lambda c: counts[c])
    small = min(class_names, key=lambda c: counts[c])
    return [(
        f"class imbalance {most / least:.1f}:1 ({big!r} {most} vs {small!r} {least} images), above "
        f"{IMBALANCE_WARN_RATIO:g}:1; expect the small class to be learnt poorly (training balances "
        "the loss, but more images of it help most)"
    )]


def _bit_depth_warnings(wide: list[_Probe], low_bit: list[_Probe], bit_depth: int | None) -> list[str]:
    """Warnings about 16-bit images that use only the low bits (probably 10-14-bit sensor data)."""
    if wide and bit_depth is None and len(low_bit) == len(wide):
        largest = max(p.source_max or 0 for p in wide)
        bits = max(8, largest.bit_length())
        return [(
            f"{len(wide)} image(s) hold 16-bit data that never exceeds 1/{round(1 / LOW_BIT_FRACTION)} of "
            f"the 16-bit range (largest value {largest}, fits in {bits} bits): probably {bits + bits % 2}-bit "
            f"sensor data; each image was scaled by its own used range, pass --bit-depth {bits + bits % 2} "
            "to scale all images the same way"
        )]
    if low_bit and bit_depth is None:
        return [(
            f"{len(low_bit)} of {len(wide)} 16-bit image(s) never exceed 1/{round(1 / LOW_BIT_FRACTION)} of "
            "the 16-bit range while others do; each image was scaled by its own used range; pass "
            "--bit-depth to scale all images the same way"
        )]
    return []


def check_outside_source(src: str | os.PathLike, out_dir: str | os.PathLike, class_dirs: list[Path] | None = None) -> Path:
    """Refuse an output folder inside SRC (vpt never writes there, and it would be scanned as a class)
    or inside a scanned class folder. Returns ``out_dir``. Raises :class:`VptError`."""
    out = Path(out_dir)
    out_real = Path(os.path.realpath(out))
    src_real = Path(os.path.realpath(src))
    inside = [src_real, *(Path(os.path.realpath(d)) for d in (class_dirs or []))]
    for folder in inside:
        if out_real == folder or folder in out_real.parents:
            suggestion = src_real.parent / f"{src_real.name}-ingest"
            raise VptError(
                f"--out {out} is inside the source folder {src}; vpt never writes into it (and "
                f"the output would be read as a class); choose a folder outside it, e.g. {suggestion}"
            )
    return out


def check_out_dir(src: str | os.PathLike, out_dir: str | os.PathLike,
                  class_dirs: list[Path] | None = None) -> Path:
    """Refuse an output folder inside SRC or a scanned class folder (:func:`check_outside_source`),
    one that is an existing file, or one that holds other files than an earlier ingest's (they would
    be mixed with or replace someone else's ``manifest.csv``). Returns ``out_dir``."""
    out = check_outside_source(src, out_dir, class_dirs)
    if out.exists() and not out.is_dir():
        raise VptError(f"--out {out} is a file; give a folder for manifest.csv and its companions")
    own = {MANIFEST_CSV, MANIFEST_JSON, CLASSES_FILE, REPORT_FILE}
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and p.name not in own) if out.is_dir() else []
    if other:
        raise VptError(f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); "
                       "give a new or empty folder, or an earlier ingest's to replace it")
    return out


def write_ingest_outputs(result: IngestResult, out_dir: str | os.PathLike) -> None:
    """Write ``ingest_report.md`` then the manifest files (``manifest.json`` last) into ``out_dir``,
    each atomically. Raises :class:`VptError` if ``out_dir`` is inside SRC (see :func:`check_out_dir`)
    or cannot be written."""
    out = check_out_dir(result.src, out_dir, result.class_dirs)
    try:
        fsutil.atomic_write_text(out / REPORT_FILE, render_report(result))
        result.manifest.write(out)
    except OSError as exc:
        raise VptError(f"cannot write to {out}: {exc.strerror or exc}; choose a writable --out folder") from None


MAX_LISTED_SKIPPED = 20
"""Skipped files named one by one when a raw folder is ingested in memory."""


def load_or_ingest(data: str | os.PathLike, **ingest_kwargs) -> Manifest:
    """The manifest for ``data``: read it when ``data`` is a ``vpt ingest`` output folder (it holds
    ``manifest.json``) or the path of its ``manifest.csv``/``manifest.json``, otherwise ingest the raw image folder in memory with
    :func:`ingest_folder` (``ingest_kwargs`` passed on; warnings printed). Raises :class:`VptError`."""
    data = Path(data)
    if data.is_file() and data.name in (MANIFEST_CSV, MANIFEST_JSON):
        return Manifest.read(data.parent)
    if (data / MANIFEST_JSON).exists():
        return Manifest.read(data)
    from vptcli.console import console, warn

    result = ingest_folder(data, **ingest_kwargs)
    for line in result.warnings:
        warn(line)
    for rec in result.skipped[:MAX_LISTED_SKIPPED]:
        warn(f"skipped {rec.path}: {rec.reason}")
    if len(result.skipped) > MAX_LISTED_SKIPPED:
        warn(f"... and {len(result.skipped) - MAX_LISTED_SKIPPED} more skipped files (`vpt ingest {data} --out DIR` lists them all)")
    console.print(
        f"{len(result.manifest.usable())} usable images in {len(result.manifest.classes)} classes from "
        f"{data} (ingested in memory; `vpt ingest {data} --out DIR` saves the manifest)",
        markup=False,
    )
    return result.manifest


# --------------------------------------------------------------------------------------------------
# scanning


def _check_settings(val_fraction, test_fraction, max_pixels, bit_depth, workers) -> None:
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise VptError(f"{name} must be at least 0 and below 1 (got {value})")
    if val_fraction + test_fraction >= 1.0:
        raise VptError(
            f"--val-fraction + --test-fraction must leave images for training (got "
            f"{val_fraction} + {test_fraction} >= 1)"
        )
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 1):
        raise VptError(f"--max-pixels must be a positive integer (got {max_pixels})")
    if bit_depth is not None and (not isinstance(bit_depth, int) or not 8 <= bit_depth <= 16):
        raise VptError(f"--bit-depth must be an integer from 8 to 16 (got {bit_depth})")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise VptError(f"--workers must be at least 1 (got {workers})")


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _rel(src: Path, path: Path) -> str:
    return _nfc(Path(os.path.relpath(path, src)).as_posix())


def _list_top(folder: Path, ignored: Counter) -> tuple[list[Path], list[Path]]:
    try:
        return list_dir(folder, ignored)
    except OSError as exc:
        raise VptError(f"cannot list {folder}: {exc.strerror or exc}; check its permissions") from None


def _walk_class(src: Path, folder: Path, label: str, split: str, ignored: Counter) -> list[_Candidate]:
    """A candidate for every non-ignored file under ``folder`` (see :func:`walk_files`), sorted by
    path; an unreadable sub-folder becomes one skipped candidate."""
    out = []
    for path, error in walk_files(folder, ignored):
        if error is None:
            out.append(_Candidate(path, _rel(src, path), label, split))
        else:
            reason = f"unreadable: cannot list this folder ({error.strerror or error})"
            out.append(_Candidate(path, _rel(src, path), label, "", reason))
    return sorted(out, key=lambda c: c.rel)


def _scan(src: Path, ignored: Counter) -> tuple[str, list[tuple[str, Path]], list[_Candidate]]:
    """-> (layout, [(label, class folder)], candidates)."""
    top_dirs, top_files = _list_top(src, ignored)
    split_dirs = {d: SPLIT_FOLDER_NAMES[d.name.lower()] for d in top_dirs if d.name.lower() in SPLIT_FOLDER_NAMES}
    candidates: list[_Candidate] = []
    outside = OUTSIDE_CLASS_REASON.format(where="the source folder")
    for f in top_files:
        candidates.append(_Candidate(f, _rel(src, f), "", "", outside))

    class_dirs: list[tuple[str, Path]] = []
    if split_dirs and len(split_dirs) == len(top_dirs):
        layout = "pre-split"
        by_split = defaultdict(list)
        for d, split in split_dirs.items():
            by_split[split].append(d)
        for split, folders in by_split.items():
            if len(folders) > 1:
                names = ", ".join(sorted(f.name for f in folders))
                raise VptError(f"{src} has several folders for the {split} split ({names}); keep one")
        if "train" not in by_split:
            raise VptError(
                f"{src} looks pre-split ({', '.join(sorted(d.name for d in top_dirs))}) but has no train "
                "folder; add SRC/train/<class>/ or use the SRC/<class>/ layout"
            )
        for split in SPLITS:
            for split_dir in by_split.get(split, []):
                sub_dirs, sub_files = _list_top(split_dir, ignored)
                where = f"the split folder {split_dir.name}"
                for f in sub_files:
                    candidates.append(_Candidate(f, _rel(src, f), "", "", OUTSIDE_CLASS_REASON.format(where=where)))
                for d in sub_dirs:
                    label = _nfc(d.name)
                    class_dirs.append((label, d))
                    candidates.extend(_walk_class(src, d, label, split, ignored))
    elif split_dirs:
        names = ", ".join(sorted(d.name for d in split_dirs))
        others = ", ".join(sorted(d.name for d in top_dirs if d not in split_dirs))
        raise VptError(
            f"{src} mixes split folders ({names}) with other folders ({others}); use either "
            "SRC/<class>/<images> or SRC/{train,val,test}/<class>/<images>"
        )
    else:
        layout = "class-folders"
        for d in top_dirs:
            label = _nfc(d.name)
            class_dirs.append((label, d))
            candidates.extend(_walk_class(src, d, label, "", ignored))

    if not class_dirs:
        found = f" (it holds {len(top_files)} file(s) directly)" if top_files else ""
        hint = "SRC/train/<class>/<images>" if layout == "pre-split" else "SRC/<class>/<images>"
        tables = sorted(f for f in top_files if f.suffix.lower() in LABEL_TABLE_SUFFIXES)
        if tables:
            raise VptError(
                f"{src} has no class folders{found}, but holds {tables[0].name}: if it lists each image's "
                f"class (columns such as filename,label), run `vpt ingest {src} --labels {tables[0]} --out DIR`; "
                f"otherwise put each class's images in its own sub-folder: {hint}"
            )
        raise VptError(
            f"{src} has no class folders{found}; put each class's images in its own sub-folder: {hint}"
        )
    return layout, class_dirs, candidates


LABEL_TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
"""Files in a flat folder that may hold labels (the layout error then points to ``--labels``)."""

FILE_COLUMNS = ("filename", "file_name", "file", "path", "filepath", "file_path", "image", "image_path",
                "img", "image_name", "name")
"""Header names taken as the file column of a labels CSV (case and spaces ignored), in this order."""

LABEL_COLUMNS = ("label", "class", "class_name", "category", "target", "defect", "labels")
"""Header names taken as the label column of a labels CSV (case and spaces ignored), in this order."""

UNLABELLED_REASON = "unlabelled: not listed in {name}"


def _header_key(name: str) -> str:
    return "_".join(name.strip().lower().replace("-", "_").split())


def read_labels_csv(path: str | os.PathLike, file_column: str | None = None,
                    label_column: str | None = None) -> list[tuple[int, str, str]]:
    """Read a labels table: ``[(line number, file, label)]`` in file order.

    The file is UTF-8 (a BOM is accepted) with a header row; the delimiter (``,``, ``;`` or tab) is
    detected. Columns are chosen by header name: ``file_column``/``label_column`` when given (case and
    surrounding spaces ignored), else the first header among :data:`FILE_COLUMNS` /
    :data:`LABEL_COLUMNS`. Cells are stripped; backslashes in file names become ``/``.

    Raises:
        VptError: missing or unreadable file, no header, a column that is not in the header (the
            message lists the header), a row without a file name or without a label (line number
            named), or a file listed twice with different labels.
    """
    path = Path(path)
    header, rows = _read_table(path)
    fi = _pick_column(path, header, file_column, FILE_COLUMNS, "file-name", "--file-column")
    li = _pick_column(path, header, label_column, LABEL_COLUMNS, "label", "--label-column")
    if fi == li:
        raise VptError(f"--labels {path}: the file and label columns are the same ({header[fi]!r})")
    out: list[tuple[int, str, str]] = []
    seen: dict[str, tuple[int, str]] = {}
    for n, row in rows:
        name = row[fi].strip().replace("\\", "/") if fi < len(row) else ""
        label = row[li].strip() if li < len(row) else ""
        if not name:
            raise VptError(f"--labels {path}, line {n}: no file name in column {header[fi]!r}")
        if not label:
            raise VptError(
                f"--labels {path}, line {n}: {name} has no label in column {header[li]!r}; give every "
                "listed file a class, or remove the row"
            )
        key = _nfc(name)
        if key in seen and seen[key][1] != label:
            raise VptError(
                f"--labels {path}: {name} is listed twice with different labels ({seen[key][1]!r} on line "
                f"{seen[key][0]}, {label!r} on line {n}); keep one"
            )
        if key not in seen:
            seen[key] = (n, label)
            out.append((n, name, _nfc(label)))
    if not out:
        raise VptError(f"--labels {path}: no rows after the header")
    return out


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """``(header cells, [(line number, cells)] of the non-blank rows after it)``; VptError when the file
    is missing, unreadable, not UTF-8 or empty."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise VptError(f"--labels {path}: no such file; give the CSV that lists each image's class") from None
    except UnicodeDecodeError:
        raise VptError(f"--labels {path}: not UTF-8 text; save the table as a UTF-8 CSV") from None
    except OSError as exc:
        raise VptError(f"--labels {path}: cannot read it ({exc.strerror or exc})") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    if not first:
        raise VptError(f"--labels {path}: the file is empty; it needs a header such as filename,label")
    delimiter = max((",", ";", "\t"), key=first.count)
    rows = list(csv.reader(lines, delimiter=delimiter))
    start = next(i for i, r in enumerate(rows) if any(c.strip() for c in r))
    body = [(n, r) for n, r in enumerate(rows[start + 1:], start=start + 2) if any(c.strip() for c in r)]
    return [c.strip() for c in rows[start]], body


def _pick_column(path: Path, header: list[str], given: str | None, known: tuple[str, ...], what: str,
                 option: str) -> int:
    """Index of the column named ``given`` (or the first of ``known``) in ``header``; VptError naming
    the header otherwise."""
    keys = [_header_key(h) for h in header]
    if given is not None:
        if _header_key(given) in keys:
            return keys.index(_header_key(given))
        raise VptError(
            f"--labels {path}: no column {given!r}; the header has {', '.join(map(repr, header))}; "
            f"pass one of them as {option}"
        )
    for k in known:
        if k in keys:
            return keys.index(k)
    raise VptError(
        f"--labels {path}: no {what} column found in the header ({', '.join(map(repr, header))}); name "
        f"it with {option} (recognised without it: {', '.join(known[:4])}, ...)"
    )


def _scan_labels(src: Path, labels: Path, ignored: Counter, file_column: str | None,
                 label_column: str | None) -> tuple[str, list[tuple[str, Path]], list[_Candidate]]:
    """Labels from a CSV: -> (``"labels-csv"``, [(label, SRC)], candidates). Files are named relative to
    SRC (or to the CSV's folder, or absolute); every file under SRC that the CSV does not list is a
    skipped "unlabelled" candidate (the CSV itself excepted)."""
    rows = read_labels_csv(labels, file_column, label_column)
    labels_real = os.path.realpath(labels)
    on_disk: dict[str, Path] = {}
    candidates: list[_Candidate] = []
    for path, error in walk_files(src, ignored):
        if error is not None:
            reason = f"unreadable: cannot list this folder ({error.strerror or error})"
            candidates.append(_Candidate(path, _rel(src, path), "", "", reason))
        elif os.path.realpath(path) != labels_real:
            on_disk[_rel(src, path)] = path
    bases = [src, labels.parent]
    listed: set[str] = set()
    missing: list[tuple[int, str]] = []
    for line, name, label in rows:
        rel = None
        for base in bases:
            p = Path(name) if os.path.isabs(name) else base / name
            r = _rel(src, p)
            if r in on_disk:
                rel = r
                break
        if rel is None:
            missing.append((line, name))
            continue
        if rel in listed:
            continue
        listed.add(rel)
        candidates.append(_Candidate(on_disk[rel], rel, label, ""))
    if missing:
        line, name = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise VptError(
            f"--labels {labels}: {len(missing)} listed file(s) not found under {src}, first {name!r} (line "
            f"{line}){more}; file names are read relative to {src} (or to the CSV's folder); check SRC, or "
            "remove the rows of deleted files"
        )
    reason = UNLABELLED_REASON.format(name=labels.name)
    for rel, path in on_disk.items():
        if rel not in listed:
            candidates.append(_Candidate(path, rel, "", "", reason))
    candidates.sort(key=lambda c: c.rel)
    class_dirs = [(label, src) for label in sorted({c.label for c in candidates if c.label})]
    return "labels-csv", class_dirs, candidates


# --------------------------------------------------------------------------------------------------
# decoding


def _probe(path: Path, max_pixels: int | None, bit_depth: int | None) -> _Probe:
    try:
        img = decode_image(path, max_pixels=max_pixels, bit_depth=bit_depth)
    except ImageDecodeError as exc:
        return _Probe(error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a bad file must never stop the run
        return _Probe(error=f"unreadable: unexpected {type(exc).__name__}: {one_line(exc)}")
    return _Probe(
        sha256=pixel_sha256(img), width=img.width, height=img.height, mode=img.mode, notes=img.notes,
        source_max=img.source_max, low_bits=low_bit_usage(img),
    )


def _decode_all(candidates: list[_Candidate], *, max_pixels, bit_depth, workers, progress) -> list[_Probe]:
    todo = [i for i, c in enumerate(candidates) if not c.preset_reason]
    probes = [_Probe() for _ in candidates]
    if not todo:
        return probes
    if workers is None:
        from vptcli.cpus import default_workers

        workers = default_workers()
    n_workers = workers
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vptcli.console import console

    bar = Progress(
        TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not progress,
    )
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="vpt-decode")
    try:
        with bar:
            task = bar.add_task("decoding", total=len(todo))
            futures = {pool.submit(_probe, candidates[i].path, max_pixels, bit_depth): i for i in todo}
            for fut in as_completed(futures):
                probes[futures[fut]] = fut.result()
                bar.advance(task)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return probes


def _skipped(cand: _Candidate, reason: str) -> ImageRecord:
    return ImageRecord(path=cand.rel, label=cand.label, split="", sha256="", width=0, height=0, mode="",
                       status=STATUS_SKIPPED, reason=reason, notes="")


# --------------------------------------------------------------------------------------------------
# checks and splits


def _check_classes(src: Path, class_names: list[str], class_dirs: list[tuple[str, Path]],
                   usable: list[ImageRecord], skipped: list[ImageRecord]) -> None:
    counts = Counter(r.label for r in usable)
    with_images = [c for c in class_names if counts[c]]
    if len(class_names) < 2:
        if class_dirs and all(d == src for _, d in class_dirs):
            raise VptError(f"the labels CSV names only 1 class ({class_names[0]!r}); a classifier needs at least 2")
        raise VptError(
            f"{src} has only 1 class folder ({class_names[0]!r}); a classifier needs at least 2 classes, "
            "each in its own sub-folder"
        )
    empty = [c for c in class_names if not counts[c]]
    if empty:
        c = empty[0]
        folders = sorted({os.path.relpath(d, src) for label, d in class_dirs if label == c})
        bad = [r for r in skipped if r.label == c]
        detail = f" ({len(bad)} file(s) skipped, e.g. {bad[0].path}: {bad[0].reason})" if bad else " (it is empty)"
        more = f"; {len(empty) - 1} more class(es) too" if len(empty) > 1 else ""
        where = "in the labels CSV" if folders == ["."] else f"folder {', '.join(folders)}"
        raise VptError(
            f"class {c!r} ({where}) has no usable images{detail}{more}; add images "
            "or remove the " + ("rows" if folders == ["."] else "folder")
        )
    if len(with_images) < 2:  # pragma: no cover - implied by the two checks above
        raise VptError(f"{src}: fewer than 2 classes with usable images")


def _mark_held_out(src: Path, usable: list[ImageRecord]) -> None:
    """A held-out folder (``vpt eval``): every usable image is a test image; at least one is needed."""
    if not usable:
        raise VptError(f"{src}: no usable images in its class folders; give a folder with one sub-folder per class")
    for r in usable:
        r.split = "test"


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def _class_seed(seed: int, label: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{label}".encode()).digest()[:8], "big")


def _primary_label(records: list[ImageRecord]) -> str:
    counts = Counter(r.label for r in records)
    return min(counts, key=lambda label: (-counts[label], label))


def _assign_splits(by_hash: dict[str, list[ImageRecord]], class_names: list[str],
                   val_fraction: float, test_fraction: float, seed: int) -> None:
    """Set ``split`` on every usable record (in place), per class, keeping duplicate groups together."""
    groups_of: dict[str, list[str]] = defaultdict(list)
    for h in sorted(by_hash):
        groups_of[_primary_label(by_hash[h])].append(h)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    per_label = Counter(r.label for rs in by_hash.values() for r in rs)
    for label in class_names:
        hashes = groups_of[label]
        n = sum(len(by_hash[h]) for h in hashes)
        if len(hashes) < needed:
            distinct = f" ({len(hashes)} distinct)" if len(hashes) != per_label[label] else ""
            elsewhere = sum(1 for h, rs in by_hash.items() if h not in hashes for r in rs if r.label == label)
            if elsewhere:
                distinct += (f"; {elsewhere} of them are identical to images of another class (label conflicts: "
                             "each duplicate group goes to the split of its majority class)")
            raise VptError(
                f"class {label!r} has {per_label[label]} usable image(s){distinct}, too few to split into "
                f"{'/'.join(s for s, f in (('train', 1), ('val', val_fraction), ('test', test_fraction)) if f)} "
                f"as asked (needs at least {needed} distinct images); add images, or set "
                "--val-fraction/--test-fraction to 0"
            )
        n_test = max(int(test_fraction > 0), _round_half_up(n * test_fraction))
        n_val = max(int(val_fraction > 0), _round_half_up(n * val_fraction))
        while n_test + n_val > n - 1:
            if n_val >= n_test and n_val > int(val_fraction > 0):
                n_val -= 1
            elif n_test > int(test_fraction > 0):
                n_test -= 1
            else:  # pragma: no cover - impossible when len(hashes) >= needed
                break
        order = list(hashes)
        random.Random(_class_seed(seed, label)).shuffle(order)
        pos = 0
        plan = (("test", n_test, 1 + int(val_fraction > 0)), ("val", n_val, 1))
        for split, target, keep in plan:
            taken = 0
            while pos < len(order) and taken < target and len(order) - pos > keep:
                for r in by_hash[order[pos]]:
                    r.split = split
                taken += len(by_hash[order[pos]])
                pos += 1
        for h in order[pos:]:
            for r in by_hash[h]:
                r.split = "train"


def _check_pre_split(class_names: list[str], usable: list[ImageRecord], groups: list[DuplicateGroup],
                     warnings: list[str]) -> None:
    present = defaultdict(set)
    for r in usable:
        present[r.split].add(r.label)
    for split in SPLITS:
        missing = [c for c in class_names if c not in present[split]]
        if missing and present[split]:
            warnings.append(
                f"the given {split} split has no images of {', '.join(map(repr, missing))}"
            )
        elif not present[split]:
            warnings.append(f"the given layout has no usable {split} images")
    straddling = [g for g in groups if len(g.splits) > 1]
    if straddling:
        g = straddling[0]
        warnings.append(
            f"{len(straddling)} group(s) of identical images appear in more than one of the given splits "
            f"(e.g. {' and '.join(repr(r.path) for r in g.records[:2])}); evaluation on them is not independent"
        )


ASPECT_WARN_RATIO = 10.0
"""Images at least this elongated (long side / short side) are reported by ingest."""

SMALL_IMAGE_PX = 56
"""Images whose long side is under this many pixels (a quarter of the usual 224 px model input) are
reported by ingest: they are upscaled several times."""


def _shape_warnings(usable: list[ImageRecord]) -> list[str]:
    """Warnings about extreme aspect ratios and images far smaller than the model input."""
    out = []
    elongated = [r for r in usable if min(r.width, r.height) > 0
                 and max(r.width, r.height) / min(r.width, r.height) >= ASPECT_WARN_RATIO]
    if elongated:
        worst = max(elongated, key=lambda r: max(r.width, r.height) / min(r.width, r.height))
        ratio = max(worst.width, worst.height) / min(worst.width, worst.height)
        out.append(
            f"{len(elongated)} image(s) have an aspect ratio of {ASPECT_WARN_RATIO:g}:1 or more (e.g. {worst.path}, "
            f"{worst.width}×{worst.height}, {ratio:.0f}:1, line-scan strips?): `vpt train` shows the model the "
            "whole image (--resize squash, the default, or letterbox); never use --resize crop for them, it "
            "cuts away all but the centre; consider tiling long strips into near-square pieces"
        )
    small = [r for r in usable if 0 < max(r.width, r.height) < SMALL_IMAGE_PX]
    if small:
        least = min(small, key=lambda r: max(r.width, r.height))
        out.append(
            f"{len(small)} image(s) are smaller than {SMALL_IMAGE_PX} px on their long side (e.g. {least.path}, "
            f"{least.width}×{least.height}): they are upscaled several times to the model input (224 px for "
            "the default backbone), which blurs rather than adds detail; a smaller --img-size may suit them"
        )
    return out


def case_clashes(labels) -> list[tuple[str, ...]]:
    """Groups of distinct class names that differ only by case (``str.casefold``, after NFC), e.g.
    ``[('Crack', 'crack')]``; each group sorted, groups sorted; empty when there are none."""
    by_fold: dict[str, set[str]] = defaultdict(set)
    for label in labels:
        by_fold[_nfc(label).casefold()].add(_nfc(label))
    return sorted(tuple(sorted(names)) for names in by_fold.values() if len(names) > 1)


def _case_text(groups: list[tuple[str, ...]]) -> str:
    return ", ".join(" and ".join(repr(n) for n in g) for g in groups)


def _nfc_clashes(class_dirs: list[tuple[str, Path]]) -> str:
    names = defaultdict(set)
    for label, d in class_dirs:
        names[label].add(d.name)
    clash = [label for label, raw in names.items() if len(raw) > 1]
    if clash:
        return (
            f"folders whose names differ only in Unicode normalisation were merged into one class: "
            f"{', '.join(map(repr, clash))}"
        )
    return ""


# --------------------------------------------------------------------------------------------------
# report


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def skipped_by_kind(skipped: list[ImageRecord]) -> Counter:
    """Count skipped records by reason kind (the part of the reason before the first ``:``)."""
    return Counter(r.reason.split(":", 1)[0] for r in skipped)


def render_report(result: IngestResult) -> str:
    """The human-readable ``ingest_report.md`` (Markdown)."""
    m = result.manifest
    counts = m.counts()
    s = m.settings
    lines = [
        "# vpt ingest report",
        "",
        f"- source: `{result.src}`",
        f"- layout: {result.layout}",
        (
            f"- settings: seed {s.get('seed')}, val fraction {s.get('val_fraction')}, test fraction "
            f"{s.get('test_fraction')}, max pixels {s.get('max_pixels')}, bit depth {s.get('bit_depth')}, "
            f"strict {s.get('strict')}"
        ),
        f"- files: {len(m.records)} ({len(m.usable())} usable, {len(result.skipped)} skipped)",
        f"- classes: {len(m.classes)}",
        f"- manifest fingerprint (sha256 of manifest.csv): `{m.fingerprint()}`",
        f"- decoding time: {result.elapsed_s:.1f} s",
        "",
        "## Images per class and split",
        "",
        "| index | class | train | val | test | total |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    totals = Counter()
    for i, c in enumerate(m.classes):
        row = counts[c]
        totals.update(row)
        lines.append(f"| {i} | {_md(c)} | {row['train']} | {row['val']} | {row['test']} | {sum(row.values())} |")
    lines.append(f"| | **total** | {totals['train']} | {totals['val']} | {totals['test']} | {sum(totals.values())} |")
    lines += ["", "## Warnings", ""]
    lines += [f"- {_md(w)}" for w in result.warnings] or ["none"]
    lines += ["", "## Skipped files", ""]
    if result.skipped:
        lines += ["| reason | files |", "|---|---:|"]
        lines += [f"| {_md(k)} | {n} |" for k, n in sorted(skipped_by_kind(result.skipped).items())]
        lines += ["", "| file | reason |", "|---|---|"]
        lines += [f"| {_md(r.path)} | {_md(r.reason)} |" for r in result.skipped]
    else:
        lines.append("none")
    lines += ["", "## Ignored entries", ""]
    lines += [f"- {k}: {n}" for k, n in sorted(result.ignored.items())] or ["none"]
    lines += ["", "## Label conflicts (identical pixels, different labels)", ""]
    if result.conflicts:
        for g in result.conflicts:
            lines.append(f"- `{g.sha256[:12]}` ({', '.join(_md(x) for x in g.labels)}; split "
                         f"{'/'.join(g.splits)}): " + ", ".join(f"{_md(r.path)} [{_md(r.label)}]" for r in g.records))
    else:
        lines.append("none")
    lines += ["", "## Duplicate groups (identical pixels)", ""]
    if result.duplicate_groups:
        lines.append(f"{len(result.duplicate_groups)} group(s), "
                     f"{sum(len(g.records) for g in result.duplicate_groups)} files; each group is in one split"
                     + (" (as given)" if result.layout == "pre-split" else "") + ".")
        lines.append("")
        for g in result.duplicate_groups:
            lines.append(f"- `{g.sha256[:12]}`: " + ", ".join(_md(r.path) for r in g.records))
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"
