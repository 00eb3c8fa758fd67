"""`vpt ingest` and vptcli.ingest / vptcli.manifest: layouts, skipped files, duplicates, splits, errors."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import struct
import unicodedata
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vptcli.errors import VptError
from vptcli.ingest import ingest_folder, load_or_ingest, write_ingest_outputs
from vptcli.manifest import MANIFEST_COLUMNS, Manifest, resolve_image_path

# --------------------------------------------------------------------------------------------------
# helpers


def save_image(path: Path, seed: int, size: tuple[int, int] = (12, 10), fmt: str | None = None) -> Path:
    """A small random RGB image (distinct pixels per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt or ("PNG" if path.suffix.lower() != ".jpg" else "JPEG"))
    return path


def make_class(root: Path, name: str, n: int, start: int) -> None:
    for i in range(n):
        save_image(root / name / f"img_{i:03d}.png", seed=start + i)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under root (files hashed, folders marked), links not followed."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            state[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                state[rel] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    state[rel] = hashlib.sha256(fh.read()).hexdigest()
    return state


def read_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def flat(text: str) -> str:
    return " ".join(text.split())


NFD_CLASS = unicodedata.normalize("NFD", "éclat")  # as copied from a Mac
LEAD_CLASS = "  rayure ü"  # leading spaces must survive


@pytest.fixture()
def messy_src(tmp_path) -> Path:
    """A realistic messy tree: nested folders, junk, bad files, unicode names, a cross-class duplicate."""
    src = tmp_path / "src data"
    make_class(src, "bon", 6, start=0)
    for i in range(4):
        save_image(src / NFD_CLASS / "lot 1" / "deep" / f"é {i}.png", seed=100 + i)
    for i in range(3):
        save_image(src / LEAD_CLASS / f" {i}.jpg", seed=200 + i)
    # bad files inside classes (skipped, named, counted)
    (src / "bon" / "zero.png").write_bytes(b"")
    (src / "bon" / "page.jpg").write_text("<html><body>login required</body></html>")
    good = (src / "bon" / "img_000.png").read_bytes()
    jpeg = save_image(tmp_path / "tmp.jpg", seed=7, size=(64, 64)).read_bytes()
    (src / "bon" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (src / "bon" / "notes.txt").write_text("camera 3, lot 7")
    # a PNG named .jpg is fine; an exact duplicate of a 'bon' image filed under the é class
    save_image(src / "bon" / "png_named.jpg", seed=50, fmt="PNG")
    (src / NFD_CLASS / "copy of bon 0.png").write_bytes(good)
    # ignored: hidden files/folders, __MACOSX, Thumbs.db, desktop.ini
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "bon" / "._img_000.png").write_bytes(b"\0\5\26\7")
    (src / "bon" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (src / "bon" / "desktop.ini").write_text("[.ShellClassInfo]")
    save_image(src / ".ipynb_checkpoints" / "x.png", seed=300)
    save_image(src / "__MACOSX" / "bon" / "._x.png", seed=301)
    save_image(src / "bon" / ".cache" / "y.png", seed=302)
    # a loose file in SRC
    (src / "README.txt").write_text("labels by QA")
    return src


# --------------------------------------------------------------------------------------------------
# the command end to end


def test_cli_ingest_messy_tree(messy_src, tmp_path, monkeypatch, capsys, vpt):
    before = snapshot(messy_src)
    out = tmp_path / "out"
    code, stdout, stderr = vpt("ingest", messy_src, "--out", out, "--workers", "2")
    assert code == 0, stderr
    assert snapshot(messy_src) == before  # SRC byte-identical, nothing added or removed
    assert stdout.strip().splitlines()[-1] == str(out / "manifest.csv")
    assert sorted(os.listdir(out)) == ["classes.json", "ingest_report.md", "manifest.csv", "manifest.json"]

    nfc = unicodedata.normalize("NFC", NFD_CLASS)
    classes = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    assert classes == sorted(["bon", nfc, LEAD_CLASS]) and classes[0] == LEAD_CLASS

    header = (out / "manifest.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("path,label,split,sha256,width,height,mode,status,reason")
    rows = {r["path"]: r for r in read_rows(out)}
    ok = {p: r for p, r in rows.items() if r["status"] == "ok"}
    assert len(ok) == 6 + 1 + 4 + 1 + 3  # bon + png_named + é + its copy + rayure
    assert Counter(r["label"] for r in ok.values()) == {"bon": 7, nfc: 5, LEAD_CLASS: 3}
    assert all(unicodedata.is_normalized("NFC", p) for p in rows)
    assert f"{nfc}/lot 1/deep/é 0.png" in ok
    assert f"{LEAD_CLASS}/ 0.jpg" in ok  # leading spaces kept in folder and file names
    assert ok["bon/png_named.jpg"]["mode"] == "RGB" and ok["bon/png_named.jpg"]["width"] == "12"
    assert all(r["split"] in ("train", "val", "test") and len(r["sha256"]) == 64 for r in ok.values())

    skipped = {p: r for p, r in rows.items() if r["status"] == "skipped"}
    assert set(skipped) == {"bon/zero.png", "bon/page.jpg", "bon/cut.jpg", "bon/notes.txt", "README.txt"}
    assert skipped["bon/zero.png"]["reason"].startswith("empty file")
    assert skipped["bon/page.jpg"]["reason"].startswith("not an image") and "HTML" in skipped["bon/page.jpg"]["reason"]
    assert skipped["bon/cut.jpg"]["reason"].startswith("truncated or corrupt")
    assert skipped["bon/notes.txt"]["reason"].startswith("not an image")
    assert skipped["README.txt"]["reason"].startswith("outside class folders")
    assert all(r["split"] == "" and r["sha256"] == "" for r in skipped.values())
    assert not any(".DS_Store" in p or "MACOSX" in p or "Thumbs" in p or "ipynb" in p or ".cache" in p
                   or "desktop.ini" in p or "._" in p for p in rows)

    # the duplicate across classes: one group, a label conflict, one split
    dup = [ok["bon/img_000.png"], ok[f"{nfc}/copy of bon 0.png"]]
    assert dup[0]["sha256"] == dup[1]["sha256"] and dup[0]["split"] == dup[1]["split"]

    meta = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert meta["root"] == str(messy_src.resolve()) and meta["settings"]["seed"] == 0
    assert meta["fingerprint"] == hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()

    text = flat(stderr)
    assert nfc in text and LEAD_CLASS in stderr  # exact names (NFC, leading spaces) on the console
    assert NFD_CLASS not in stderr
    assert "label conflicts: 1" in text and "1 group(s) of identical images" in text
    assert "skipped files: 5" in text
    report = (out / "ingest_report.md").read_text(encoding="utf-8")
    assert "bon/cut.jpg" in report and "Label conflicts" in report and nfc in report
    assert "hidden files: 2" in report and "__MACOSX folders: 1" in report and "hidden folders: 2" in report


def test_cli_strict_fails_and_writes_nothing(messy_src, tmp_path, monkeypatch, capsys, vpt):
    before = snapshot(messy_src)
    out = tmp_path / "out"
    code, stdout, stderr = vpt("ingest", messy_src, "--out", out, "--strict")
    assert code == 2
    assert "--strict: 5 file(s) could not be used" in flat(stderr)
    assert not out.exists() and stdout == ""
    assert snapshot(messy_src) == before


def test_cli_help_lists_options():
    from typer.testing import CliRunner

    from vptcli.cli import app

    result = CliRunner().invoke(app, ["ingest", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--out", "--val-fraction", "--test-fraction", "--seed", "--strict", "--max-pixels",
                   "--bit-depth", "--workers"):
        assert option in result.output


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("missing", [], "no such folder"),
        ("file", [], "is not a folder"),
        ("no_classes", [], "has no class folders"),
        ("one_class", [], "only 1 class folder ('ok')"),
        ("empty_class", [], "class 'vide' (folder vide) has no usable images (it is empty)"),
        ("bad_only_class", [], "class 'cassé' (folder cassé) has no usable images (1 file(s) skipped"),
        ("small_class", [], "class 'rare' has 2 usable image(s), too few to split"),
        ("two_classes", ["--val-fraction", "0.6", "--test-fraction", "0.5"], "must leave images for training"),
        ("out_inside", [], "is inside the source folder"),
        ("mixed_layout", [], "mixes split folders (train) with other folders (ok)"),
        ("conflict", ["--strict"], "carry different labels"),
    ],
)
def test_cli_errors_exit_2_with_one_message_and_write_nothing(tmp_path, monkeypatch, capsys, setup, args, message, vpt):
    src = tmp_path / "src"
    out = tmp_path / "out"
    if setup == "file":
        src.write_text("x")
    elif setup == "no_classes":
        save_image(src / "a.png", 1)
    elif setup != "missing":
        make_class(src, "ok", 4, start=0)
        if setup == "empty_class":
            (src / "vide").mkdir()
        elif setup == "bad_only_class":
            (src / "cassé").mkdir()
            (src / "cassé" / "x.png").write_text("not png")
        elif setup == "small_class":
            make_class(src, "rare", 2, start=10)
        elif setup in ("two_classes", "out_inside"):
            make_class(src, "nok", 4, start=10)
            if setup == "out_inside":
                out = src / "ok" / "manifest"
        elif setup == "mixed_layout":
            make_class(src / "train", "nok", 4, start=10)
        elif setup == "conflict":
            make_class(src, "nok", 4, start=10)
            (src / "nok" / "dup.png").write_bytes((src / "ok" / "img_000.png").read_bytes())
    before = snapshot(src) if src.is_dir() else None
    code, stdout, stderr = vpt("ingest", src, "--out", out, *args)
    assert code == 2, stderr
    assert message in flat(stderr)
    assert "Traceback" not in stderr and stdout == ""
    assert not out.exists()
    if before is not None:
        assert snapshot(src) == before


def test_cli_refuses_out_inside_src_before_decoding(tmp_path, monkeypatch, capsys, vpt):
    import vptcli.ingest

    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)

    def no_ingest(*args, **kwargs):
        raise AssertionError("ingest_folder must not run when --out is inside SRC")

    monkeypatch.setattr(vptcli.ingest, "ingest_folder", no_ingest)
    code, _, stderr = vpt("ingest", src, "--out", src / "b" / "out")
    assert code == 2 and "is inside the source folder" in flat(stderr)
    assert not (src / "b" / "out").exists()


def test_cli_max_pixels_skips_large_image(tmp_path, monkeypatch, capsys, vpt):
    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    save_image(src / "a" / "big.png", 99, size=(100, 100))
    code, _, stderr = vpt("ingest", src, "--out", tmp_path / "o", "--max-pixels", 5000)
    assert code == 0, stderr
    rows = {r["path"]: r for r in read_rows(tmp_path / "o")}
    assert rows["a/big.png"]["status"] == "skipped"
    assert "10,000 pixels (100×100), above the limit of 5,000" in rows["a/big.png"]["reason"]
    assert "too many pixels" in stderr


# --------------------------------------------------------------------------------------------------
# splits


def test_split_sizes_and_small_classes(tmp_path):
    src = tmp_path / "src"
    make_class(src, "big", 20, 0)
    make_class(src, "tiny", 3, 100)
    make_class(src, "mid", 7, 200)
    m = ingest_folder(src, progress=False).manifest
    counts = m.counts()
    assert counts["big"] == {"train": 14, "val": 3, "test": 3}
    assert counts["tiny"] == {"train": 1, "val": 1, "test": 1}
    assert counts["mid"] == {"train": 5, "val": 1, "test": 1}
    assert m.classes == ["big", "mid", "tiny"] and m.label_index("tiny") == 2
    assert len(m.usable("val")) == 5 and len(m.usable()) == 30
    with pytest.raises(VptError, match="unknown class"):
        m.label_index("nope")

    no_val = ingest_folder(src, val_fraction=0.0, test_fraction=0.5, progress=False).manifest
    assert no_val.counts()["tiny"] == {"train": 1, "val": 0, "test": 2}


def test_split_is_deterministic_and_independent_of_names_and_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(12):
        save_image(a / "good" / f"{i:02d}.png", seed=i)
        save_image(a / "bad" / f"{i:02d}.png", seed=50 + i)
        # same pictures, other names, created in the opposite order
        save_image(b / "good" / f"x{11 - i:02d}.png", seed=11 - i)
        save_image(b / "bad" / f"zz{i}.png", seed=50 + i)

    def split_by_hash(src, **kw):
        return {r.sha256: r.split for r in ingest_folder(src, progress=False, workers=2, **kw).manifest.usable()}

    first = split_by_hash(a)
    assert split_by_hash(a) == first  # same files, same seed: same split
    assert split_by_hash(b) == first  # listing order and file names do not matter
    assert split_by_hash(a, seed=1) != first  # the seed does
    assert ingest_folder(a, progress=False).manifest.fingerprint() == \
        ingest_folder(a, progress=False, workers=1).manifest.fingerprint()


def test_duplicate_groups_never_straddle_splits(tmp_path):
    src = tmp_path / "src"
    for i in range(10):
        save_image(src / "a" / f"{i}.png", seed=i)
        save_image(src / "b" / f"{i}.png", seed=100 + i)
    for i in range(5):  # five pictures each stored 3 times in class a
        for k in range(2):
            (src / "a" / f"{i}_copy{k}.png").write_bytes((src / "a" / f"{i}.png").read_bytes())
    for seed in range(8):
        result = ingest_folder(src, seed=seed, progress=False)
        assert len(result.duplicate_groups) == 5 and not result.conflicts
        for group in result.duplicate_groups:
            assert len(group.records) == 3 and len(group.splits) == 1
        counts = result.manifest.counts()["a"]
        assert counts["val"] >= 1 and counts["test"] >= 1 and sum(counts.values()) == 20


def test_cross_class_duplicate_is_a_conflict(tmp_path):
    src = tmp_path / "src"
    make_class(src, "ok", 4, 0)
    make_class(src, "nok", 4, 10)
    (src / "nok" / "same.png").write_bytes((src / "ok" / "img_001.png").read_bytes())
    result = ingest_folder(src, progress=False)
    assert len(result.conflicts) == 1
    group = result.conflicts[0]
    assert group.labels == ["nok", "ok"] and len(group.splits) == 1
    assert [r.path for r in group.records] == ["nok/same.png", "ok/img_001.png"]
    assert any("label conflicts" in w for w in result.warnings)
    with pytest.raises(VptError, match="carry different labels"):
        ingest_folder(src, strict=True, progress=False)


def test_pre_split_layout_is_kept(tmp_path, monkeypatch, capsys, vpt):
    src = tmp_path / "src"
    make_class(src / "train", "ok", 4, 0)
    make_class(src / "train", "nok", 4, 10)
    make_class(src / "val", "ok", 1, 20)
    make_class(src / "val", "nok", 1, 30)
    make_class(src / "Test", "ok", 2, 40)
    make_class(src / "Test", "nok", 2, 50)
    (src / "test_notes.txt").write_text("ignored? no: skipped, outside class folders")
    out = tmp_path / "out"
    code, _, stderr = vpt("ingest", src, "--out", out, "--seed", 3)
    assert code == 0, stderr
    rows = [r for r in read_rows(out) if r["status"] == "ok"]
    assert len(rows) == 14
    for r in rows:
        first = r["path"].split("/")[0].lower()
        assert r["split"] == first and r["label"] == r["path"].split("/")[1]
    m = Manifest.read(out)
    assert m.settings["layout"] == "pre-split" and m.classes == ["nok", "ok"]
    assert m.counts()["ok"] == {"train": 4, "val": 1, "test": 2}


def test_pre_split_duplicate_across_splits_is_reported(tmp_path):
    src = tmp_path / "src"
    make_class(src / "train", "ok", 3, 0)
    make_class(src / "train", "nok", 3, 10)
    make_class(src / "test", "ok", 1, 20)
    make_class(src / "test", "nok", 1, 30)
    (src / "test" / "ok" / "leak.png").write_bytes((src / "train" / "ok" / "img_000.png").read_bytes())
    result = ingest_folder(src, progress=False)
    assert any("more than one of the given splits" in w for w in result.warnings)
    assert any("no usable val images" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------
# warnings, links, unicode


def test_imbalance_and_16bit_warnings(tmp_path):
    src = tmp_path / "src"
    make_class(src, "common", 33, 0)
    (src / "rare").mkdir()
    for i in range(3):
        data = np.full((4, 4), 1000 * (i + 1), np.uint16)  # 12-bit data in 16-bit files
        data[0, 0] = 0
        Image.fromarray(data).save(src / "rare" / f"{i}.png")
    result = ingest_folder(src, progress=False)
    text = " ".join(result.warnings)
    assert "class imbalance 11.0:1" in text
    assert "never exceeds 1/8 of the 16-bit range (largest value 3000" in text and "--bit-depth 12" in text
    quiet = ingest_folder(src, bit_depth=12, progress=False)
    assert not any("16-bit" in w for w in quiet.warnings)
    assert quiet.manifest.settings["bit_depth"] == 12


def test_symlinked_files_and_folders_are_followed(tmp_path):
    store = tmp_path / "store"
    src = tmp_path / "src"
    for i in range(3):
        save_image(store / f"a{i}.png", seed=i)
        save_image(store / "bfolder" / f"b{i}.png", seed=10 + i)
    (src / "a").mkdir(parents=True)
    for i in range(3):
        os.symlink(store / f"a{i}.png", src / "a" / f"link{i}.png")
    os.symlink(store / "bfolder", src / "b")
    os.symlink(tmp_path / "missing.png", src / "a" / "dangling.png")
    os.symlink(src / "a", src / "a" / "loop")  # a folder link back to itself
    before = snapshot(src)
    result = ingest_folder(src, progress=False)
    m = result.manifest
    assert Counter(r.label for r in m.usable()) == {"a": 3, "b": 3}
    dangling = [r for r in result.skipped if r.path == "a/dangling.png"]
    assert dangling and "broken symbolic link" in dangling[0].reason
    write_ingest_outputs(result, tmp_path / "out")
    assert snapshot(src) == before


def test_write_refuses_output_inside_src(tmp_path):
    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    before = snapshot(src)
    result = ingest_folder(src, progress=False)
    for inside in (src, src / "a" / "out", src / ".vpt"):
        with pytest.raises(VptError, match="inside the source folder"):
            write_ingest_outputs(result, inside)
    assert snapshot(src) == before


# --------------------------------------------------------------------------------------------------
# manifest files


def test_manifest_roundtrip_and_nfd_files_on_disk(tmp_path):
    src = tmp_path / "src"
    make_class(src, NFD_CLASS, 3, 0)  # the folder on disk is NFD
    make_class(src, 'quote " , comma', 3, 10)
    result = ingest_folder(src, progress=False)
    out = tmp_path / "out"
    write_ingest_outputs(result, out)
    m = Manifest.read(out)
    assert m.records == result.manifest.records and m.classes == result.manifest.classes
    assert m.root == src.resolve() and m.settings == result.manifest.settings
    assert m.fingerprint() == hashlib.sha256((out / "manifest.csv").read_bytes()).hexdigest()
    header = next(csv.reader(io.StringIO((out / "manifest.csv").read_text(encoding="utf-8"))))
    assert header == list(MANIFEST_COLUMNS)
    for record in m.usable():
        path = resolve_image_path(m, record)
        assert path.is_file(), record.path
    assert Manifest.read(out / "manifest.csv").records == m.records  # the csv path works too
    assert load_or_ingest(out).records == m.records
    assert load_or_ingest(src, progress=False).records == m.records


def test_manifest_read_errors_say_to_run_ingest(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(VptError, match=r"not a `vpt ingest` output .*run `vpt ingest SRC --out"):
        Manifest.read(tmp_path / "raw")
    with pytest.raises(VptError, match="no such folder"):
        Manifest.read(tmp_path / "nope")
    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    write_ingest_outputs(ingest_folder(src, progress=False), tmp_path / "out")
    csv_path = tmp_path / "out" / "manifest.csv"
    csv_path.write_text("path,label\nx,y\n", encoding="utf-8")
    with pytest.raises(VptError, match="columns must start with path,label,split"):
        Manifest.read(tmp_path / "out")


def test_manifest_follows_a_moved_tree(tmp_path):
    base = tmp_path / "project"
    src = base / "images"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    write_ingest_outputs(ingest_folder(src, progress=False), base / "data")
    moved = tmp_path / "elsewhere"
    base.rename(moved)
    m = Manifest.read(moved / "data")
    assert m.root == (moved / "images").resolve()
    assert all(resolve_image_path(m, r).is_file() for r in m.usable())


def test_png_header_bomb_is_skipped_not_fatal(tmp_path):
    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    (src / "a" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    result = ingest_folder(src, progress=False)
    (bomb,) = result.skipped
    assert bomb.path == "a/bomb.png" and "10,000,000,000 pixels" in bomb.reason
    assert "89,478,485" in bomb.reason


def test_unsupported_formats_are_skipped_by_name_not_as_corrupt(tmp_path, monkeypatch, capsys, vpt):
    from vptcli import images

    monkeypatch.setattr(images, "_heif_plugin", lambda: False)
    src = tmp_path / "src"
    make_class(src, "a", 3, 0)
    make_class(src, "b", 3, 10)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 1], data[at + 4] = 0xC1, 12  # 12-bit extended sequential frame header
    (src / "a" / "thermal.jpg").write_bytes(bytes(data))
    (src / "b" / "phone.jpg").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    code, out, _err = vpt("ingest", src, "--out", tmp_path / "out")
    assert code == 0
    report = (tmp_path / "out" / "ingest_report.md").read_text(encoding="utf-8")
    assert "12-bit JPEG" in report and "HEIC/HEIF" in report
    assert "corrupt" not in report
    assert "unsupported" in flat(out)


@pytest.mark.parametrize("layout", ["class-folders", "pre-split"])
def test_class_names_differing_only_by_case_warn_and_strict_refuses(tmp_path, monkeypatch, capsys, vpt, layout):
    src = tmp_path / "src"
    if layout == "class-folders":
        make_class(src, "Crack", 3, 0)
        make_class(src, "crack", 3, 10)
        make_class(src, "ok", 3, 20)
    else:
        make_class(src / "train", "Crack", 3, 0)
        make_class(src / "train", "ok", 3, 20)
        make_class(src / "val", "crack", 2, 10)
        make_class(src / "val", "ok", 2, 30)
    if layout == "class-folders" and len(list(src.iterdir())) < 3:
        pytest.skip("case-insensitive file system: 'Crack' and 'crack' cannot coexist")
    result = ingest_folder(src, progress=False)
    (line,) = [w for w in result.warnings if "differ only by case" in w]
    assert "'Crack' and 'crack'" in line and "Windows or macOS" in line
    code, _out, err = vpt("ingest", src, "--out", tmp_path / "out", "--strict")
    assert code == 2 and not (tmp_path / "out").exists()
    assert "'Crack' and 'crack'" in flat(err) and "--strict" in flat(err)


# --------------------------------------------------------------------------------------------------
# labels in a CSV


def flat_folder(root: Path, n: int = 8) -> list[str]:
    """``root/images/img_NNN.png`` (distinct pixels), returns their names relative to root."""
    names = []
    for i in range(n):
        save_image(root / "images" / f"img_{i:03d}.png", seed=100 + i)
        names.append(f"images/img_{i:03d}.png")
    return names


def test_labels_csv_gives_classes_and_unlisted_files_are_skipped(tmp_path, monkeypatch, capsys, vpt):
    src = tmp_path / "flat"
    names = flat_folder(src, 8)
    rows = ["File Name;Defect Class;notes"] + [
        f"{n.replace('/', chr(92)) if i == 0 else n};{'crack' if i % 2 else 'good'};x" for i, n in enumerate(names[:7])
    ]
    (src / "labels.csv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")  # BOM, ';', Windows path
    code, out, err = vpt("ingest", src, "--labels", src / "labels.csv",
                             "--file-column", "file name", "--label-column", "DEFECT CLASS", "--out", tmp_path / "out")
    assert code == 0, err
    got = {r["path"]: (r["label"], r["status"]) for r in read_rows(tmp_path / "out")}
    assert "labels.csv" not in got  # the table itself is not an image record
    assert got[names[0]] == ("good", "ok") and got[names[1]] == ("crack", "ok")
    assert got[names[7]][1] == "skipped"
    report = (tmp_path / "out" / "ingest_report.md").read_text(encoding="utf-8")
    assert "unlabelled: not listed in labels.csv" in report
    assert "labels-csv layout" in flat(err + out)


def test_labels_csv_columns_detected_from_the_header(tmp_path):
    src = tmp_path / "flat"
    names = flat_folder(src, 6)
    (tmp_path / "table.csv").write_text(
        "id,image,class\n" + "".join(f"{i},{n},{'a' if i < 3 else 'b'}\n" for i, n in enumerate(names)), encoding="utf-8"
    )
    result = ingest_folder(src, labels=tmp_path / "table.csv", progress=False)
    assert result.manifest.classes == ["a", "b"] and len(result.manifest.usable()) == 6
    assert result.layout == "labels-csv"


@pytest.mark.parametrize(
    ("table", "kwargs", "message"),
    [
        ("filename,label\n{0},a\nimages/gone.png,b\n", {}, "1 listed file\\(s\\) not found.*'images/gone.png' \\(line 3\\)"),
        ("filename,kind\n{0},a\n", {}, "no label column found in the header \\('filename', 'kind'\\).*--label-column"),
        ("filename,label\n{0},a\n", {"label_column": "defect"}, "no column 'defect'; the header has 'filename', 'label'"),
        ("filename,label\n{0},a\n{1},\n", {}, "line 3: images/img_001.png has no label"),
        ("filename,label\n{0},a\n{0},b\n", {}, "listed twice with different labels"),
        ("", {}, "empty"),
    ],
)
def test_labels_csv_errors_name_the_problem(tmp_path, table, kwargs, message):
    src = tmp_path / "flat"
    names = flat_folder(src, 3)
    (tmp_path / "labels.csv").write_text(table.format(*names), encoding="utf-8")
    with pytest.raises(VptError, match=message):
        ingest_folder(src, labels=tmp_path / "labels.csv", progress=False, **kwargs)
    with pytest.raises(VptError, match="no such file"):
        ingest_folder(src, labels=tmp_path / "missing.csv", progress=False)


def test_flat_folder_with_a_csv_points_to_labels_option(tmp_path, monkeypatch, capsys, vpt):
    src = tmp_path / "flat"
    for i in range(3):
        save_image(src / f"img_{i}.png", seed=i)
    (src / "labels.csv").write_text("filename,label\n", encoding="utf-8")
    code, _out, err = vpt("ingest", src, "--out", tmp_path / "out")
    assert code == 2
    assert "holds labels.csv" in flat(err) and "--labels" in flat(err)


def test_cli_out_with_other_files_is_refused_and_an_earlier_ingest_replaced(tmp_path, vpt):
    src = tmp_path / "src"
    make_class(src, "a", 4, 0)
    make_class(src, "b", 4, 10)
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.csv").write_text("someone else's\n")
    (other / "notes.txt").write_text("keep\n")
    code, _, stderr = vpt("ingest", src, "--out", other)
    assert code == 2 and "holds other files (notes.txt)" in flat(stderr)
    assert (other / "manifest.csv").read_text() == "someone else's\n"
    assert vpt("ingest", src, "--out", tmp_path / "data")[0] == 0
    code, _, stderr = vpt("ingest", src, "--out", tmp_path / "data", "--seed", "1")  # an earlier ingest: replaced
    assert code == 0, stderr
