"""`vpt eval` cannot silently lie: leakage by pixel hash, held-out folders scored whole, classes by name,
per-image rows; through the real entry point on the tiny test_vit."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import build_tree

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


def _cli(*args) -> None:
    """Run `vpt` outside a test's capsys (module fixtures); it must succeed."""
    from vptcli.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["vpt", *map(str, args)])
        with pytest.raises(SystemExit) as info:
            main()
    assert info.value.code == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An ingested tree (10 images per class, 20 % val, 20 % test) and a 1-epoch run on it."""
    base = tmp_path_factory.mktemp("honest")
    build_tree(base / "src", names=("good", "scratch"))
    _cli("ingest", base / "src", "--out", base / "data", "--val-fraction", "0.2", "--test-fraction", "0.2")
    _cli("train", base / "data", "--out", base / "run", *TINY, "--epochs", "1", "--batch-size", "4", "--no-augment")
    return base


def _report(folder):
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def test_run_lists_its_training_images(trained):
    listed = json.loads((trained / "run" / "train_images.json").read_text(encoding="utf-8"))
    assert len(listed["images"]) == 16 and {r["split"] for r in listed["images"]} == {"train", "val"}


def test_reingested_data_with_another_seed_is_refused_or_excluded(trained, tmp_path, vpt):
    code, _, err = vpt("ingest", trained / "src", "--out", tmp_path / "data2", "--val-fraction", "0.2",
                       "--test-fraction", "0.2", "--seed", "7")
    assert code == 0, err
    code, _, err = vpt("eval", trained / "run", tmp_path / "data2", "--out", tmp_path / "e")
    flat = " ".join(err.split())
    assert code == 2 and "were used to train or select this model" in flat and "--exclude-trained" in flat
    assert not (tmp_path / "e").exists()
    code, _out, err = vpt("eval", trained / "run", tmp_path / "data2", "--out", tmp_path / "e", "--exclude-trained")
    assert code == 0, err
    report = _report(tmp_path / "e")
    left_out = int(" ".join(err.split()).split("left out ")[1].split()[0])
    assert left_out >= 1 and report["n_images"] == 4 - left_out
    listed = {r["sha256"] for r in json.loads((trained / "run" / "train_images.json").read_text())["images"]}
    from vptcli.manifest import Manifest

    m = Manifest.read(tmp_path / "data2")
    scored = {r["path"] for r in report["images"]}
    assert all(r.sha256 not in listed for r in m.usable("test") if str(m.root / r.path) in scored)


def test_same_data_held_out_split_passes_and_val_split_is_refused(trained, tmp_path, vpt):
    code, _, err = vpt("eval", trained / "run", trained / "data", "--out", tmp_path / "t")
    assert code == 0, err
    assert _report(tmp_path / "t")["n_images"] == 4
    code, _, err = vpt("eval", trained / "run", trained / "data", "--split", "val", "--out", tmp_path / "v")
    assert code == 2 and "all 4 images in" in " ".join(err.split()) and "nothing is held out" in " ".join(err.split())


def test_renamed_duplicate_of_a_training_image_is_caught(trained, tmp_path, vpt):
    lot = build_tree(tmp_path / "lot", n_per_class=3, seed=11, names=("good", "scratch"))
    first = json.loads((trained / "run" / "train_images.json").read_text())["images"][0]
    shutil.copy(trained / "src" / first["path"], lot / first["label"] / "renamed_copy.png")
    code, _, err = vpt("eval", trained / "run", lot, "--out", tmp_path / "e")
    assert code == 2 and "1 of 7 images" in " ".join(err.split())


def test_external_folder_is_scored_whole(trained, tmp_path, vpt):
    lot = build_tree(tmp_path / "lot", n_per_class=7, seed=5, names=("good", "scratch"))
    code, _out, err = vpt("eval", trained / "run", lot, "--out", tmp_path / "e")
    assert code == 0, err
    report = _report(tmp_path / "e")
    assert report["n_images"] == 14 and report["context"]["split"] == "all"
    code, _, err = vpt("eval", trained / "run", lot, "--split", "test", "--out", tmp_path / "e2")
    assert code == 2 and "omit --split" in " ".join(err.split())


def test_three_image_clean_lot_with_one_class(trained, tmp_path, vpt):
    lot = build_tree(tmp_path / "lot", n_per_class=3, seed=9, names=("good", "scratch"))
    shutil.rmtree(lot / "scratch")
    code, _out, err = vpt("eval", trained / "run", lot, "--out", tmp_path / "e")
    assert code == 0, err
    report = _report(tmp_path / "e")
    assert report["n_images"] == 3 and list(report["per_class"]) == ["good"]
    assert report["classes"] == ["good", "scratch"] and len(report["confusion_matrix"]) == 2
    assert sum(report["confusion_matrix"][0]) == 3 and sum(report["confusion_matrix"][1]) == 0


def test_unknown_class_is_named_or_scored_in_an_unknown_row(trained, tmp_path, vpt):
    lot = build_tree(tmp_path / "lot", n_per_class=2, seed=3, names=("good", "crack"))
    code, _, err = vpt("eval", trained / "run", lot, "--out", tmp_path / "e")
    flat = " ".join(err.split())
    assert code == 2 and "'crack'" in flat and "--unknown-classes" in flat
    code, _, err = vpt("eval", trained / "run", lot, "--out", tmp_path / "e", "--unknown-classes")
    assert code == 0, err
    report = _report(tmp_path / "e")
    assert report["n_images"] == 2 and report["unknown"]["n_images"] == 2
    assert sum(report["unknown"]["predicted"].values()) == 2
    assert len(report["images"]) == 4 and not any(r["correct"] for r in report["images"] if r["true"] == "crack")
    assert "unknown (crack)" in (tmp_path / "e" / "report.md").read_text(encoding="utf-8")


def test_report_rows_identity_and_files_written(trained, tmp_path, vpt):
    code, out, err = vpt("eval", trained / "run", trained / "data", "--out", tmp_path / "e")
    assert code == 0, err
    report = _report(tmp_path / "e")
    rows = report["images"]
    assert len(rows) == 4 and set(rows[0]) == {"path", "true", "predicted", "confidence", "correct"}
    assert all(r["correct"] == (r["true"] == r["predicted"]) for r in rows)
    assert report["context"]["model"].endswith("prompts.safetensors") and report["context"]["backbone sha256"]
    md = (tmp_path / "e" / "report.md").read_text(encoding="utf-8")
    assert "## Misclassified" in md and "{'" not in md and "['" not in md
    for name in ("report.json", "report.md", "confusion_matrix.png"):
        assert f"wrote {tmp_path / 'e' / name}" in " ".join(out.split())
    wrong = [r["path"] for r in rows if not r["correct"]]
    assert all(p in md for p in wrong)


def test_info_shows_values_not_reprs(trained, vpt):
    code, out, err = vpt("info", trained / "run")
    assert code == 0, err
    assert "{" not in out and "val_macro_f1: " in " ".join(out.split())


def test_run_without_its_image_list_warns_or_falls_back_to_the_data(trained, tmp_path, vpt):
    old = tmp_path / "old-run"
    shutil.copytree(trained / "run", old)
    (old / "train_images.json").unlink()
    lot = build_tree(tmp_path / "lot", n_per_class=2, seed=13, names=("good", "scratch"))
    code, _, err = vpt("eval", old, lot, "--out", tmp_path / "e")
    assert code == 0, err
    assert "leakage between training and evaluated images cannot be checked" in " ".join(err.split())
    code, _, err = vpt("eval", old, trained / "data", "--split", "val", "--out", tmp_path / "v")
    assert code == 2 and "were used to train or select this model" in " ".join(err.split())


def test_damaged_image_list_is_named_by_eval_and_the_int8_check(trained, tmp_path, vpt):
    from vptcli.errors import VptError
    from vptcli.train_config import read_train_images

    rows = read_train_images(trained / "run")[2]
    assert {r.split for r in rows} == {"train", "val"} and len({r.sha256 for r in rows}) == len(rows)
    assert read_train_images(tmp_path) is None
    damaged = tmp_path / "damaged"
    shutil.copytree(trained / "run", damaged)
    (damaged / "train_images.json").write_text('{"images": [{"sha256": 1', encoding="utf-8")
    with pytest.raises(VptError, match="train_images.json: unreadable"):
        read_train_images(damaged)
    lot = build_tree(tmp_path / "lot", n_per_class=2, seed=13, names=("good", "scratch"))
    code, _, err = vpt("eval", damaged, lot, "--out", tmp_path / "e")
    err = "".join(err.split())  # rich wraps long paths anywhere
    assert code == 2 and "train_images.json:unreadable" in err and "leakagecannotbechecked" in err
    assert not (tmp_path / "e").exists()
    code, _, err = vpt("export", damaged, "--out", tmp_path / "x", "--int8")
    err = "".join(err.split())
    assert code == 2 and "train_images.json:unreadable" in err and "--int8-data" in err
