"""The ELPV solar-cell data set as a class-per-folder tree, and its benchmark split.

ELPV (Buerhop-Lutz et al., EU PVSEC 2018; Deitsch et al., Solar Energy 2019 and Machine Vision and
Applications 2021): 2,624 grayscale 300x300 electroluminescence images of solar cells from 44
modules, each labelled with a defect probability in {0, 1/3, 2/3, 1} and the cell type
(``mono`` / ``poly``). The images come from the PyPI package ``elpv-dataset`` (files
``elpv_dataset/data/labels.csv`` and ``elpv_dataset/data/images/*.png``), licensed CC BY-NC-SA 4.0
(images) and Apache-2.0 (code); every tree written here carries an ``ATTRIBUTION.md``.

Tasks (class folder names):

- ``binary``: ``defective`` (probability >= 0.5) / ``functional`` (otherwise), the two-class
  setting of Deitsch et al. 2019.
- ``4class``: ``p000``, ``p033``, ``p067``, ``p100`` (the four annotated probabilities).

Splits are mappings ``key -> 'train' | 'val' | 'test'`` where ``key`` is the record's path as
written in ``labels.csv`` (``images/cell0001.png``); :func:`materialise` also accepts the absolute
image path as key. Images left out of a split mapping (e.g. by :func:`few_shot`) are not written.

A benchmark recipe for a non-commercial data set, so it lives beside the benchmarks, not in the
``vptcli`` package. Run as a script: ``python benchmarks/elpv_data.py OUT [--task binary|4class]
[--link symlink|copy|hardlink] [--split none|paper] [--val-fraction F] [--per-class N]``;
``python benchmarks/elpv_data.py OUT --sample`` rebuilds the small ``sample_data/`` subset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vptcli.errors import VptError
from vptcli.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

TASKS: dict[str, tuple[str, ...]] = {
    "binary": ("defective", "functional"),
    "4class": ("p000", "p033", "p067", "p100"),
}
"""Class folder names per task, in label-index order (alphabetical)."""

LINK_MODES = ("symlink", "copy", "hardlink")
SPLIT_NAMES = ("train", "val", "test")
CELL_TYPES = ("mono", "poly")

MARKER_NAME = ".vptcli-elpv.json"
"""Hidden marker that :func:`materialise` writes into its output folder (ingest ignores hidden files)."""

ATTRIBUTION_NAME = "ATTRIBUTION.md"
PACKAGE_HINT = "pip install elpv-dataset"
_MARKER_TOOL = "vptcli.elpv"  # recorded in trees already written: kept as it was
_LEVEL_TOL = 1e-6  # labels.csv writes 1/3 as 0.3333333333333333

ATTRIBUTION_TEXT = """\
# Attribution: ELPV data set

The images in this folder are unchanged copies of (or links to) images of the **ELPV data set**
("A Benchmark for Visual Identification of Defective Solar Cells in Electroluminescence Imagery"),
as shipped in the PyPI package `elpv-dataset` (https://pypi.org/project/elpv-dataset,
source https://github.com/zae-bayern/elpv-dataset, by Sergiu Deitsch and co-authors).
The data set holds 2,624 grayscale 300x300 solar-cell images extracted from electroluminescence
images of 44 photovoltaic modules, each annotated with a defect probability (0, 1/3, 2/3, 1) and
the cell type (mono- or polycrystalline).

Only the folder arrangement is ours (vptcli): `defective` = defect probability >= 0.5 and
`functional` otherwise (binary task, as in Deitsch et al. 2019), or `p000`/`p033`/`p067`/`p100`
(four-class task: probability 0, 1/3, 2/3, 1).

## Licence

- Images: Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International
  (CC BY-NC-SA 4.0), https://creativecommons.org/licenses/by-nc-sa/4.0/ . Attribution is required,
  use is non-commercial only, and adapted material must be shared under the same licence.
  For commercial use, contact the data set's authors.
- The package's code: Apache-2.0.

## Citing

If you use this data set (or numbers derived from it) in a scientific context, cite:

> Buerhop-Lutz, C.; Deitsch, S.; Maier, A.; Gallwitz, F.; Berger, S.; Doll, B.; Hauch, J.; Camus, C. & Brabec, C. J. A Benchmark for Visual Identification of Defective Solar Cells in Electroluminescence Imagery. European PV Solar Energy Conference and Exhibition (EU PVSEC), 2018. DOI: 10.4229/35thEUPVSEC20182018-5CV.3.15

> Deitsch, S., Buerhop-Lutz, C., Sovetkin, E., Steland, A., Maier, A., Gallwitz, F., & Riess, C. (2021). Segmentation of photovoltaic module cells in uncalibrated electroluminescence images. Machine Vision and Applications, 32(4). DOI: 10.1007/s00138-021-01191-9

> Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & Riess, C. Automatic classification of defective photovoltaic module cells in electroluminescence images. Solar Energy, Elsevier BV, 2019, 185, 455-468. DOI: 10.1016/j.solener.2019.02.067
"""


@dataclass(frozen=True)
class ElpvRecord:
    """One ELPV image.

    ``key``: the path as written in ``labels.csv`` (``images/cell0001.png``), the portable id used
    in split mappings. ``path``: absolute path of the PNG. ``probability``: annotated defect
    probability, one of 0, 1/3, 2/3, 1. ``cell_type``: ``'mono'`` or ``'poly'``.
    """

    key: str
    path: Path
    probability: float
    cell_type: str

    @property
    def level(self) -> int:
        """The probability as an index 0..3 (0, 1/3, 2/3, 1)."""
        return _level(self.probability)

    def label(self, task: str) -> str:
        """Class folder name of this image for ``task`` (see :func:`class_name`)."""
        return class_name(self.probability, task)


# ----------------------------------------------------------------------------------------- reading


def package_data_dir() -> Path:
    """Folder ``elpv_dataset/data`` of the installed ``elpv-dataset`` package.

    Raises VptError (saying ``pip install elpv-dataset``) when the package is not installed or
    its ``labels.csv`` is missing.
    """
    try:
        import elpv_dataset
    except ImportError as exc:
        raise VptError(
            f"the ELPV data set is not installed (Python package elpv_dataset not found); run: {PACKAGE_HINT}"
        ) from exc
    data = Path(elpv_dataset.__file__).resolve().parent / "data"
    if not (data / "labels.csv").is_file():
        raise VptError(f"{data / 'labels.csv'} is missing; reinstall the data set: {PACKAGE_HINT}")
    return data


def elpv_records(labels_csv: str | os.PathLike | None = None) -> list[ElpvRecord]:
    """Read the ELPV annotations: one :class:`ElpvRecord` per image, in ``labels.csv`` order.

    ``labels_csv``: defaults to the installed package's ``elpv_dataset/data/labels.csv``
    (whitespace-separated columns: path, probability, type); image paths are resolved relative to
    its folder. Raises VptError when the package is missing or a line is malformed (naming the
    file and line).
    """
    csv = Path(labels_csv) if labels_csv is not None else package_data_dir() / "labels.csv"
    try:
        lines = csv.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise VptError(f"cannot read ELPV labels {csv}: {exc.strerror or exc}") from exc
    root = csv.resolve().parent
    records: list[ElpvRecord] = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        bad = f"{csv}:{lineno}: expected 'path probability mono|poly', got {line.strip()!r}"
        if len(fields) != 3:
            raise VptError(bad)
        key, prob_text, cell_type = fields
        try:
            prob = float(prob_text)
            _level(prob)
        except (ValueError, VptError) as exc:
            raise VptError(bad) from exc
        if cell_type not in CELL_TYPES:
            raise VptError(bad)
        records.append(ElpvRecord(key=key, path=root / key, probability=prob, cell_type=cell_type))
    if not records:
        raise VptError(f"{csv} lists no images; reinstall the data set: {PACKAGE_HINT}")
    return records


# ---------------------------------------------------------------------------------------- labels


def _level(probability: float) -> int:
    """Index 0..3 of an ELPV probability (0, 1/3, 2/3, 1); VptError for anything else."""
    p = float(probability)
    if not (0.0 <= p <= 1.0):
        raise VptError(f"defect probability {probability!r} is outside [0, 1]")
    level = round(p * 3)
    if abs(p * 3 - level) > _LEVEL_TOL * 3:
        raise VptError(f"defect probability {probability!r} is not one of ELPV's levels 0, 1/3, 2/3, 1")
    return level


def class_name(probability: float, task: str = "binary") -> str:
    """Class folder name of an image with defect ``probability`` for ``task``.

    ``binary``: ``'defective'`` when probability >= 0.5, else ``'functional'`` (Deitsch et al.
    2019). ``4class``: ``'p000'``, ``'p033'``, ``'p067'``, ``'p100'`` for 0, 1/3, 2/3, 1.
    Raises VptError for an unknown task, a probability outside [0, 1], or (4class) a probability
    that is not one of the four levels.
    """
    _check_task(task)
    if task == "binary":
        p = float(probability)
        if not (0.0 <= p <= 1.0):
            raise VptError(f"defect probability {probability!r} is outside [0, 1]")
        return "defective" if p >= 0.5 else "functional"
    return TASKS["4class"][_level(probability)]


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise VptError(f"unknown ELPV task {task!r}; use one of: {', '.join(TASKS)}")


def _stratum(record: ElpvRecord) -> str:
    """Joint stratum of the benchmark protocol: 4-level label x cell type."""
    return f"{TASKS['4class'][record.level]}-{record.cell_type}"


# ---------------------------------------------------------------------------------------- splits


def _stratified_pick(
    keys: Sequence[str], strata: Sequence[str], fraction: float, seed: int, what: str
) -> set[str]:
    """Keys of a stratified random part of size ``fraction`` (sklearn ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    if not (0.0 < fraction < 1.0):
        raise VptError(f"{what} fraction must be between 0 and 1 (exclusive), got {fraction}")
    counts = Counter(strata)
    rare = sorted(s for s, n in counts.items() if n < 2)
    if rare:
        raise VptError(
            f"cannot make a stratified {what} split: stratum {', '.join(rare)} has fewer than 2 images"
        )
    try:
        _, picked = train_test_split(
            list(keys), test_size=fraction, stratify=list(strata), random_state=seed, shuffle=True
        )
    except ValueError as exc:
        raise VptError(f"cannot make a stratified {what} split of {len(keys)} images: {exc}") from exc
    return set(picked)


def paper_split(
    records: Sequence[ElpvRecord], *, test_fraction: float = 0.25, seed: int = 0
) -> dict[str, str]:
    """The ELPV benchmark protocol: a stratified train/test split.

    Stratified jointly by the 4-level label and the cell type (8 strata), ``test_fraction`` of the
    images go to ``'test'``, the rest to ``'train'`` (sklearn ``train_test_split`` with
    ``stratify``, ``random_state=seed``; records are sorted by key first, so the result does not
    depend on their order). On the full data set with the defaults: 1,968 train / 656 test, the
    sizes of Deitsch et al. 2019 (their exact image assignment is not shipped with the package, so
    this is the same protocol, not the same images).

    Returns ``{record.key: 'train' | 'test'}``. Raises VptError when a stratum has fewer than 2
    images or the fraction is out of (0, 1).
    """
    ordered = sorted(records, key=lambda r: r.key)
    _check_unique(ordered)
    test = _stratified_pick(
        [r.key for r in ordered], [_stratum(r) for r in ordered], test_fraction, seed, "test"
    )
    return {r.key: ("test" if r.key in test else "train") for r in ordered}


def carve_val(
    split: Mapping[str, str], records: Sequence[ElpvRecord], *, val_fraction: float = 0.15, seed: int = 0
) -> dict[str, str]:
    """Move a stratified ``val_fraction`` of the training images to ``'val'``.

    Stratified by 4-level label x cell type like :func:`paper_split`; test images are unchanged.
    On the default paper split: ceil(0.15 * 1968) = 296 images move to val (1,672 train remain).
    Returns a new mapping; ``split`` is not modified. Raises VptError when a stratum of the
    training part has fewer than 2 images.
    """
    by_key = _records_by_key(records)
    train = sorted(k for k, s in split.items() if s == "train")
    _check_split_keys(split, by_key)
    val = _stratified_pick(train, [_stratum(by_key[k]) for k in train], val_fraction, seed, "validation")
    return {k: ("val" if k in val else s) for k, s in split.items()}


def few_shot(
    split: Mapping[str, str],
    records: Sequence[ElpvRecord],
    *,
    per_class: int,
    task: str = "binary",
    seed: int = 0,
) -> dict[str, str]:
    """Keep ``per_class`` training images per class of ``task``; drop the other training images.

    Per class, the training keys (sorted) are shuffled with ``numpy.random.default_rng(seed)`` and
    the first ``per_class`` are kept, so a smaller budget is a subset of a larger one with the same
    seed. Val and test entries are unchanged; dropped images are absent from the returned mapping
    (``split`` itself is not modified). Raises VptError when ``per_class < 1`` or a class has fewer
    than ``per_class`` training images.
    """
    import numpy as np

    _check_task(task)
    if per_class < 1:
        raise VptError(f"few-shot budget must be at least 1 image per class, got {per_class}")
    by_key = _records_by_key(records)
    _check_split_keys(split, by_key)
    per_cls: dict[str, list[str]] = {c: [] for c in TASKS[task]}
    for key in sorted(k for k, s in split.items() if s == "train"):
        per_cls[by_key[key].label(task)].append(key)
    keep: set[str] = set()
    for i, cls in enumerate(TASKS[task]):
        keys = per_cls[cls]
        if len(keys) < per_class:
            raise VptError(
                f"class {cls!r} has {len(keys)} training images, fewer than the few-shot budget {per_class}"
            )
        rng = np.random.default_rng([seed, i])
        order = rng.permutation(len(keys))
        keep.update(keys[j] for j in order[:per_class])
    return {k: s for k, s in split.items() if s != "train" or k in keep}


def _records_by_key(records: Sequence[ElpvRecord]) -> dict[str, ElpvRecord]:
    _check_unique(records)
    return {r.key: r for r in records}


def _check_unique(records: Sequence[ElpvRecord]) -> None:
    counts = Counter(r.key for r in records)
    dup = [k for k, n in counts.items() if n > 1]
    if dup:
        raise VptError(f"ELPV records list {dup[0]} more than once")


def _check_split_keys(split: Mapping[str, str], by_key: Mapping[str, ElpvRecord]) -> None:
    for key, name in split.items():
        if key not in by_key:
            raise VptError(f"split names {key!r}, which is not among the given ELPV records")
        if name not in SPLIT_NAMES:
            raise VptError(f"split of {key!r} is {name!r}; use one of: {', '.join(SPLIT_NAMES)}")


# ----------------------------------------------------------------------------------- materialise


def _read_marker(out: Path) -> dict | None:
    marker = out / MARKER_NAME
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VptError(f"{marker} is unreadable; remove {out} and run again") from exc
    if (
        not isinstance(data, dict)
        or data.get("tool") != _MARKER_TOOL
        or not isinstance(data.get("files"), list)
    ):
        raise VptError(f"{marker} was not written by benchmarks/elpv_data.py; remove {out} and run again")
    return data


def _is_same(dest: Path, src: Path, link: str) -> bool:
    """Whether ``dest`` already is what ``link`` mode would make of ``src``."""
    try:
        if link == "symlink":
            return dest.is_symlink() and Path(os.readlink(dest)) == src
        if dest.is_symlink() or not dest.is_file():
            return False
        if link == "hardlink":
            return os.path.samefile(dest, src)
        if dest.stat().st_size != src.stat().st_size or os.path.samefile(dest, src):
            return False
        return dest.read_bytes() == src.read_bytes()
    except OSError:
        return False


def _place(dest: Path, src: Path, link: str) -> None:
    """Create ``dest`` from ``src`` (symlink / hardlink / byte copy) atomically; src is only read."""
    if link == "copy":
        atomic_write_bytes(dest, src.read_bytes())
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        if link == "symlink":
            os.symlink(src, tmp)
        else:
            os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise VptError(f"cannot {link} {src} to {dest}: {exc.strerror or exc}; try --link copy") from exc


def materialise(
    out_dir: str | os.PathLike,
    *,
    task: str = "binary",
    link: str = "symlink",
    records: Sequence[ElpvRecord] | None = None,
    split: Mapping[str, str] | None = None,
) -> Path:
    """Write ELPV as a class-per-folder tree; returns the output folder.

    Layout: ``out_dir/<class>/<file>.png`` or, with ``split`` (``{key: 'train'|'val'|'test'}``,
    keys as in :class:`ElpvRecord` ``.key`` or absolute image paths), ``out_dir/<split>/<class>/
    <file>.png``; records absent from ``split`` are left out. ``link``: ``'symlink'`` (absolute
    links, default), ``'copy'`` (byte copies) or ``'hardlink'``. The package's files are only read;
    note that editing a symlinked or hard-linked image in place would edit the package's copy.
    ``records`` defaults to :func:`elpv_records`.

    Also writes ``ATTRIBUTION.md`` (data set, authors, papers, licence) and a hidden marker
    ``.vptcli-elpv.json`` listing the files written. Idempotent: a second run with the same
    arguments changes nothing; with other arguments it replaces the files it wrote before and
    removes those no longer wanted. Raises VptError when ``out_dir`` is a non-empty folder without
    the marker, would overwrite a file it did not write, lies inside the package's data folder,
    or a source image is missing.
    """
    _check_task(task)
    if link not in LINK_MODES:
        raise VptError(f"unknown link mode {link!r}; use one of: {', '.join(LINK_MODES)}")
    if records is None:
        records = elpv_records()
    _check_unique(records)
    out = Path(out_dir).absolute()

    # Never write into the data set itself (the images' folders, the installed package).
    protected = {r.path.resolve().parent for r in records}
    try:
        protected.add(package_data_dir().parent)
    except VptError:
        pass
    rp = out.resolve()
    for root in protected:
        if rp == root or root in rp.parents or rp in root.parents:
            raise VptError(f"output folder {out} overlaps the ELPV source folder {root}; pick another")

    if out.exists() and not out.is_dir():
        raise VptError(f"{out} exists and is not a folder; pick another output folder")
    marker = _read_marker(out) if out.is_dir() else None
    if out.is_dir() and marker is None and any(out.iterdir()):
        raise VptError(
            f"{out} is not empty and was not written by benchmarks/elpv_data.py (no {MARKER_NAME}); "
            "pick an empty or new folder"
        )
    previous: set[str] = set(marker["files"]) if marker else set()

    # What to write: relative destination -> source image.
    wanted: dict[str, Path] = {}
    if split is not None:
        lookup: dict[str, ElpvRecord] = {}
        for r in records:
            lookup[r.key] = r
            lookup[str(r.path)] = r
        assigned: dict[str, str] = {}
        for key, name in split.items():
            rec = lookup.get(str(key))
            if rec is None:
                raise VptError(f"split names {str(key)!r}, which is not among the ELPV records")
            if name not in SPLIT_NAMES:
                raise VptError(f"split of {str(key)!r} is {name!r}; use one of: {', '.join(SPLIT_NAMES)}")
            assigned[rec.key] = name
    for r in records:
        if split is not None:
            if r.key not in assigned:
                continue
            rel = f"{assigned[r.key]}/{r.label(task)}/{r.path.name}"
        else:
            rel = f"{r.label(task)}/{r.path.name}"
        if rel in wanted:
            raise VptError(f"two ELPV images would both be written to {out / rel}")
        if not r.path.is_file():
            raise VptError(f"ELPV image {r.path} is missing; reinstall the data set: {PACKAGE_HINT}")
        wanted[rel] = r.path.resolve()

    out.mkdir(parents=True, exist_ok=True)
    header = {"tool": _MARKER_TOOL, "version": 1, "task": task, "link": link, "split": split is not None}
    # Record the union first so that an interrupted run can still be cleaned up by the next one.
    atomic_write_json(out / MARKER_NAME, {**header, "files": sorted(previous | set(wanted))})

    for rel, src in wanted.items():
        dest = out / rel
        if dest.is_symlink() or dest.exists():
            if _is_same(dest, src, link):
                continue
            if rel not in previous:
                raise VptError(f"{dest} exists and was not written by benchmarks/elpv_data.py; remove it and run again")
            if dest.is_dir() and not dest.is_symlink():
                raise VptError(f"{dest} is a folder; remove it and run again")
            dest.unlink()
        _place(dest, src, link)

    for rel in sorted(previous - set(wanted)):
        dest = out / rel
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        for parent in dest.parents:  # remove folders left empty (never out itself)
            if parent == out or out not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    attribution = out / ATTRIBUTION_NAME
    if not (attribution.is_file() and attribution.read_text(encoding="utf-8") == ATTRIBUTION_TEXT):
        atomic_write_text(attribution, ATTRIBUTION_TEXT)
    atomic_write_json(out / MARKER_NAME, {**header, "files": sorted(wanted)})
    return out


# ----------------------------------------------------------------------------------- sample_data


def sample_selection(
    records: Sequence[ElpvRecord], *, per_class: int = 40, seed: int = 0
) -> dict[str, list[ElpvRecord]]:
    """The deterministic subset behind ``sample_data/`` (binary task).

    ``defective``: clear cases (probability 1.0); ``functional``: probability 0.0. Drawn only from
    the training part of :func:`paper_split` (``seed``), so that the sample never overlaps the
    benchmark's test images; within each class stratified by cell type (sklearn
    ``train_test_split``, ``random_state=seed``), so both mono and poly appear in proportion.
    Returns ``{class: records sorted by key}``.
    """
    from sklearn.model_selection import train_test_split

    split = paper_split(records, seed=seed)
    chosen: dict[str, list[ElpvRecord]] = {}
    for cls, level in (("defective", 3), ("functional", 0)):
        pool = sorted(
            (r for r in records if r.level == level and split[r.key] == "train"), key=lambda r: r.key
        )
        if len(pool) <= per_class:
            raise VptError(f"only {len(pool)} candidate images for {cls!r}; ask for fewer than {per_class}")
        picked, _ = train_test_split(
            pool, train_size=per_class, stratify=[r.cell_type for r in pool], random_state=seed
        )
        chosen[cls] = sorted(picked, key=lambda r: r.key)
    return chosen


def _licence_text(cells: Sequence[str] = ()) -> str:
    """Notice (naming ``cells``) plus the CC BY-NC-SA 4.0 legal code as shipped in the package."""
    notice = (
        "The images under defective/ and functional/ in this folder are unchanged copies of images\n"
        "of the ELPV data set (Buerhop-Lutz et al. 2018; Deitsch et al. 2019, 2021), taken from the\n"
        "PyPI package elpv-dataset (https://github.com/zae-bayern/elpv-dataset). They are licensed\n"
        "under the Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International License\n"
        "(CC BY-NC-SA 4.0), https://creativecommons.org/licenses/by-nc-sa/4.0/legalcode .\n"
        "The same licence applies to labels.csv (derived from the data set's annotations).\n"
        "See ATTRIBUTION.md for the authors and the citations. For commercial use, contact the\n"
        "data set's authors. (vptcli's own code is Apache-2.0; this licence covers only this folder.)\n"
    )
    if cells:
        notice += "\nThe images (ELPV file names, elpv_dataset/data/images/):\n" + "".join(
            f"  {line}\n" for line in textwrap.wrap(" ".join(cells), 76)
        )
    legal = ""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution("elpv-dataset")
        for f in dist.files or ():
            if f.name.upper().startswith("LICENSE"):
                legal = Path(dist.locate_file(f)).read_text(encoding="utf-8")
                break
    except (ImportError, PackageNotFoundError, OSError):
        legal = ""
    if not legal:
        return notice
    return (
        notice
        + "\nThe licence text below is copied verbatim from the elpv-dataset package (LICENSE.md).\n\n"
        + "-" * 78
        + "\n\n"
        + legal
    )


def build_sample(out_dir: str | os.PathLike, *, per_class: int = 40, seed: int = 0) -> Path:
    """Write ``sample_data/``: :func:`sample_selection` copied byte for byte, plus labels and notices.

    Writes ``defective/*.png``, ``functional/*.png`` (original file names), ``labels.csv``
    (columns file, class, probability, cell_type), ``ATTRIBUTION.md`` and ``LICENSE``. PNGs in the
    class folders that are not in the selection are removed. Raises VptError when ``out_dir``
    holds anything else, or when the ELPV package is missing.
    """
    out = Path(out_dir)
    allowed = {"defective", "functional", "labels.csv", ATTRIBUTION_NAME, "LICENSE"}
    if out.is_dir():
        extra = sorted(p.name for p in out.iterdir() if p.name not in allowed)
        if extra:
            raise VptError(f"{out} holds {extra[0]}, which is not part of the sample; pick an empty folder")
    chosen = sample_selection(elpv_records(), per_class=per_class, seed=seed)
    rows = ["file,class,probability,cell_type"]
    for cls, recs in chosen.items():
        names = {r.path.name for r in recs}
        if (out / cls).is_dir():
            for old in (out / cls).iterdir():
                if old.suffix.lower() == ".png" and old.name not in names:
                    old.unlink()
        for r in recs:
            data = r.path.read_bytes()
            dest = out / cls / r.path.name
            if not (dest.is_file() and dest.read_bytes() == data):
                atomic_write_bytes(dest, data)
            rows.append(f"{cls}/{r.path.name},{cls},{r.probability!r},{r.cell_type}")
    atomic_write_text(out / "labels.csv", "\n".join(rows) + "\n")
    counts = ", ".join(
        f"{cls}: {len(recs)} ({sum(r.cell_type == 'mono' for r in recs)} mono, "
        f"{sum(r.cell_type == 'poly' for r in recs)} poly)"
        for cls, recs in chosen.items()
    )
    sample_note = (
        "\n## This sample\n\n"
        f"{per_class} images per class ({counts}), chosen with `python benchmarks/elpv_data.py {out.name} --sample`\n"
        f"(seed {seed}): `defective` = probability 1.0 and `functional` = probability 0.0 only (clear cases),\n"
        "drawn from the training part of the 75/25 benchmark split (so never from its test images),\n"
        "stratified by cell type. The files are byte-for-byte copies with their original names\n"
        "(`cellNNNN.png`); `labels.csv` lists file, class, probability and cell type.\n"
    )
    atomic_write_text(out / ATTRIBUTION_NAME, ATTRIBUTION_TEXT + sample_note)
    atomic_write_text(out / "LICENSE", _licence_text([r.path.name for rs in chosen.values() for r in rs]))
    return out


# ------------------------------------------------------------------------------------------- script


def _summary(out: Path, files: Iterable[str]) -> str:
    counts = Counter(str(Path(f).parent) for f in files)
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/elpv_data.py OUT ...``: materialise ELPV (or rebuild sample_data with --sample)."""
    ap = argparse.ArgumentParser(
        prog="python benchmarks/elpv_data.py",
        description="Write the ELPV data set (pip install elpv-dataset) as a class-per-folder tree.",
    )
    ap.add_argument("out", help="output folder (new, empty, or written by this tool before)")
    ap.add_argument("--task", choices=list(TASKS), default="binary")
    ap.add_argument("--link", choices=list(LINK_MODES), default="symlink")
    ap.add_argument(
        "--split",
        choices=["none", "paper"],
        default="none",
        help="paper: out/{train,val,test}/<class>/ with the 75/25 stratified benchmark split",
    )
    ap.add_argument("--val-fraction", type=float, default=0.15, help="with --split paper; 0 for no val")
    ap.add_argument(
        "--per-class", type=int, default=None, help="with --split paper: few-shot training budget"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", action="store_true", help="write the sample_data subset (copies) instead")
    args = ap.parse_args(argv)
    try:
        if args.sample:
            out = build_sample(args.out, seed=args.seed)
            print(f"wrote sample to {out}")
            return 0
        records = elpv_records()
        split = None
        if args.split == "paper":
            split = paper_split(records, seed=args.seed)
            if args.val_fraction > 0:
                split = carve_val(split, records, val_fraction=args.val_fraction, seed=args.seed)
            if args.per_class is not None:
                split = few_shot(split, records, per_class=args.per_class, task=args.task, seed=args.seed)
        elif args.per_class is not None:
            raise VptError("--per-class needs --split paper")
        out = materialise(args.out, task=args.task, link=args.link, records=records, split=split)
        marker = _read_marker(out) or {"files": []}
        print(f"{out}  ({_summary(out, marker['files'])})")
        return 0
    except VptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
