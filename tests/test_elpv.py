"""ELPV helpers (benchmarks/elpv_data.py) and the committed sample_data/ subset.

Tests marked ``needs_elpv`` use the real data set from the ``elpv-dataset`` package and are skipped
when it is not installed; the rest (labels, materialise on synthetic images, sample_data) are not.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path

import elpv_data as elpv
import pytest
from elpv_data import ElpvRecord, carve_val, class_name, few_shot, materialise, paper_split

from vptcli.errors import VptError

HAVE_ELPV = importlib.util.find_spec("elpv_dataset") is not None
needs_elpv = pytest.mark.skipif(not HAVE_ELPV, reason="elpv-dataset not installed (pip install elpv-dataset)")

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def records() -> list[ElpvRecord]:
    if not HAVE_ELPV:
        pytest.skip("elpv-dataset not installed")
    return elpv.elpv_records()


def _fake_records(root: Path, probs_types: list[tuple[float, str]]) -> list[ElpvRecord]:
    """Small synthetic PNG-named files (distinct bytes) standing in for ELPV images."""
    img = root / "images"
    img.mkdir(parents=True)
    out = []
    for i, (p, t) in enumerate(probs_types, 1):
        path = img / f"cell{i:04d}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([i]) * 32)
        out.append(ElpvRecord(key=f"images/{path.name}", path=path, probability=p, cell_type=t))
    return out


def _digest(paths) -> dict[str, tuple[str, float]]:
    return {str(p): (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime) for p in paths}


# ------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize(
    ("p", "binary", "four"),
    [
        (0.0, "functional", "p000"),
        (1 / 3, "functional", "p033"),
        (0.3333333333333333, "functional", "p033"),
        (2 / 3, "defective", "p067"),
        (0.6666666666666666, "defective", "p067"),
        (1.0, "defective", "p100"),
    ],
)
def test_class_name_levels(p, binary, four):
    assert class_name(p, "binary") == binary
    assert class_name(p, "4class") == four


def test_class_name_threshold_and_errors():
    assert class_name(0.5, "binary") == "defective"  # >= 0.5 is defective
    assert class_name(0.4999, "binary") == "functional"
    with pytest.raises(VptError, match="not one of ELPV's levels"):
        class_name(0.5, "4class")
    with pytest.raises(VptError, match="outside"):
        class_name(1.5, "binary")
    with pytest.raises(VptError, match="unknown ELPV task"):
        class_name(0.0, "3class")


def test_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # makes `import elpv_dataset` fail
    with pytest.raises(VptError, match="pip install elpv-dataset"):
        elpv.elpv_records()


def test_labels_parsing_and_bad_line(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("images/a.png  1.0  mono\nimages/b.png 0.3333333333333333 poly\n")
    recs = elpv.elpv_records(csv_path)
    assert [(r.key, r.level, r.cell_type) for r in recs] == [
        ("images/a.png", 3, "mono"),
        ("images/b.png", 1, "poly"),
    ]
    assert recs[0].path == tmp_path.resolve() / "images" / "a.png" and recs[0].path.is_absolute()
    csv_path.write_text("images/a.png 1.0 mono\nimages/b.png 0.5 quasi\n")
    with pytest.raises(VptError, match=r"labels\.csv:2"):
        elpv.elpv_records(csv_path)


# ---------------------------------------------------------------------------------------- splits


@needs_elpv
def test_records_match_published_counts(records):
    assert len(records) == 2624
    assert Counter(r.level for r in records) == {0: 1508, 1: 295, 2: 106, 3: 715}
    assert Counter(r.cell_type for r in records) == {"mono": 1074, "poly": 1550}
    assert all(r.path.is_absolute() for r in records[:10]) and records[0].path.is_file()


@needs_elpv
def test_paper_split_sizes_stratification_determinism(records):
    split = paper_split(records)
    assert Counter(split.values()) == {"train": 1968, "test": 656}
    strata = Counter((r.level, r.cell_type) for r in records)
    test = Counter((r.level, r.cell_type) for r in records if split[r.key] == "test")
    assert len(strata) == 8
    for stratum, n in strata.items():
        assert abs(test[stratum] - 0.25 * n) <= 1, stratum
    # Same result whatever the order of the records; another seed gives another split.
    assert paper_split(list(reversed(records))) == split
    assert paper_split(records, seed=1) != split


@needs_elpv
def test_carve_val_and_few_shot(records):
    split = carve_val(paper_split(records), records)
    counts = Counter(split.values())
    assert counts == {"train": 1672, "val": 296, "test": 656}
    by_key = {r.key: r for r in records}
    val = Counter((by_key[k].level, by_key[k].cell_type) for k, s in split.items() if s == "val")
    train_all = Counter((by_key[k].level, by_key[k].cell_type) for k, s in split.items() if s != "test")
    for stratum, n in train_all.items():
        assert abs(val[stratum] - 296 / 1968 * n) <= 1, stratum

    for task, per_class in (("binary", 16), ("4class", 8)):
        fs = few_shot(split, records, per_class=per_class, task=task)
        train = Counter(by_key[k].label(task) for k, s in fs.items() if s == "train")
        assert train == {c: per_class for c in elpv.TASKS[task]}
        assert {k: s for k, s in fs.items() if s != "train"} == {
            k: s for k, s in split.items() if s != "train"
        }
    small = {k for k, s in few_shot(split, records, per_class=16).items() if s == "train"}
    large = {k for k, s in few_shot(split, records, per_class=64).items() if s == "train"}
    assert small < large  # nested budgets with the same seed
    assert few_shot(split, records, per_class=16) == few_shot(split, records, per_class=16)
    with pytest.raises(VptError, match="fewer than the few-shot budget"):
        few_shot(split, records, per_class=10_000)


# ----------------------------------------------------------------------------------- materialise


PROBS = [(0.0, "mono"), (0.0, "poly"), (1 / 3, "mono"), (2 / 3, "poly"), (1.0, "mono"), (1.0, "poly")]


@pytest.mark.parametrize("link", ["symlink", "copy"])
def test_materialise_layout_idempotent_source_untouched(tmp_path, link):
    recs = _fake_records(tmp_path / "src", PROBS)
    before = _digest(r.path for r in recs)
    out = materialise(tmp_path / "out", task="binary", link=link, records=recs)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        "defective/cell0004.png", "defective/cell0005.png", "defective/cell0006.png",
        "functional/cell0001.png", "functional/cell0002.png", "functional/cell0003.png",
    ]  # fmt: skip
    for r in recs:
        dest = out / r.label("binary") / r.path.name
        assert dest.is_symlink() == (link == "symlink")
        assert dest.read_bytes() == r.path.read_bytes()
    assert "CC BY-NC-SA 4.0" in (out / "ATTRIBUTION.md").read_text()
    assert "Deitsch" in (out / "ATTRIBUTION.md").read_text()
    assert (out / elpv.MARKER_NAME).is_file()

    materialise(tmp_path / "out", task="binary", link=link, records=recs)  # idempotent
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == files

    # Switch to the 4-class split layout: old files go, new ones come, sources stay untouched.
    split = {r.key: s for r, s in zip(recs, ["train", "test", "train", "val", "train", "test"])}
    del split[recs[2].key]  # left out of the split -> not written
    materialise(out, task="4class", link=link, records=recs, split=split)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == [
        "test/p000/cell0002.png", "test/p100/cell0006.png", "train/p000/cell0001.png",
        "train/p100/cell0005.png", "val/p067/cell0004.png",
    ]  # fmt: skip
    assert not (out / "defective").exists() and not (out / "functional").exists()
    assert _digest(r.path for r in recs) == before


def test_materialise_refusals(tmp_path):
    recs = _fake_records(tmp_path / "src", PROBS)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(VptError, match="not empty"):
        materialise(foreign, records=recs)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(VptError, match="overlaps"):
        materialise(tmp_path / "src" / "images" / "out", records=recs)
    with pytest.raises(VptError, match="link mode"):
        materialise(tmp_path / "o1", records=recs, link="move")
    with pytest.raises(VptError, match="not among"):
        materialise(tmp_path / "o2", records=recs, split={"images/nope.png": "train"})
    # A file the tool did not write is never overwritten.
    out = materialise(tmp_path / "o3", records=recs)
    (out / "functional" / "cell0001.png").unlink()
    (out / "functional" / "cell0001.png").write_bytes(b"user data")
    materialise(out, records=recs)  # the marker lists it: replaced by the link again
    assert (out / "functional" / "cell0001.png").read_bytes() == recs[0].path.read_bytes()
    (out / "functional" / "extra.png").write_bytes(b"user data")
    materialise(out, records=recs)  # unknown extra file is left alone
    assert (out / "functional" / "extra.png").read_bytes() == b"user data"


@needs_elpv
def test_materialise_real_records(tmp_path, records):
    few = [r for r in records if r.key in {"images/cell0001.png", "images/cell0004.png"}]
    before = _digest(r.path for r in few)
    out = materialise(tmp_path / "real", link="copy", records=few)
    assert (out / "defective" / "cell0001.png").read_bytes() == few[0].path.read_bytes()
    assert (out / "functional" / "cell0004.png").is_file()
    assert _digest(r.path for r in few) == before


@needs_elpv
def test_script_paper_split_few_shot(tmp_path, capsys):
    assert elpv.main([str(tmp_path / "fs"), "--split", "paper", "--per-class", "4"]) == 0
    out = tmp_path / "fs"
    assert {p.name for p in out.iterdir()} == {"train", "val", "test", "ATTRIBUTION.md", elpv.MARKER_NAME}
    assert len(list((out / "train" / "defective").iterdir())) == 4
    assert len(list(out.glob("test/*/*.png"))) == 656
    assert len(list(out.glob("val/*/*.png"))) == 296


# ----------------------------------------------------------------------------------- sample_data


def test_sample_data_matches_labels():
    rows = list(csv.DictReader((SAMPLE / "labels.csv").open(encoding="utf-8")))
    assert {p.name for p in SAMPLE.iterdir() if p.is_dir()} == {"defective", "functional"}
    assert all((SAMPLE / name).is_file() for name in ("labels.csv", "ATTRIBUTION.md", "LICENSE"))
    on_disk = sorted(p.relative_to(SAMPLE).as_posix() for p in SAMPLE.glob("*/*"))
    assert on_disk == sorted(r["file"] for r in rows)
    assert Counter(r["class"] for r in rows) == {"defective": 40, "functional": 40}
    for r in rows:
        assert r["file"].split("/")[0] == r["class"]
        assert float(r["probability"]) == (1.0 if r["class"] == "defective" else 0.0)
        assert (SAMPLE / r["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["class"], r["cell_type"]) for r in rows} == {
        (c, t) for c in ("defective", "functional") for t in ("mono", "poly")
    }
    assert sum(p.stat().st_size for p in SAMPLE.glob("*/*.png")) < 5_000_000
    assert "CC BY-NC-SA 4.0" in (SAMPLE / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "Attribution-NonCommercial-ShareAlike 4.0" in (SAMPLE / "LICENSE").read_text(encoding="utf-8")


@needs_elpv
def test_sample_data_is_the_documented_selection(records):
    chosen = elpv.sample_selection(records)
    want = {f"{c}/{r.path.name}": r for c, rs in chosen.items() for r in rs}
    assert sorted(want) == sorted(p.relative_to(SAMPLE).as_posix() for p in SAMPLE.glob("*/*.png"))
    for rel, r in want.items():
        assert (SAMPLE / rel).read_bytes() == r.path.read_bytes()  # byte-for-byte copies
    split = paper_split(records)
    assert all(split[r.key] == "train" for r in want.values())  # never a benchmark test image
