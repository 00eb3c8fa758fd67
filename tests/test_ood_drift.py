"""Unfamiliar images and drift (issue 15, part 1): the Mahalanobis reference written by training,
`vpt predict`'s ood_score / 'unfamiliar' rows with both backends, and `vpt drift`'s report and exit code,
on timm's tiny test_vit (random weights, 32 px)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vptcli.errors import VptError
from vptcli.ood import (
    OOD_FILE,
    fit_reference,
    load_reference,
    mahalanobis_scores,
    mmd_test,
    reference_for,
    save_reference,
)

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


def stripes(folder, n: int, size: int = 40):
    """``n`` grating images (another texture than the training images) in ``folder``."""
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        a = 127 + 120 * np.sin(2 * np.pi * (xx * np.cos(i) + yy * np.sin(i)) / 5)
        Image.fromarray(np.repeat(a[..., None], 3, 2).astype(np.uint8)).save(folder / f"s{i:02d}.png")
    return folder


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------------ library


def test_mahalanobis_scores_match_the_definition():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 5))
    a = rng.normal(size=(5, 5))
    precision = a @ a.T + np.eye(5)
    x = rng.normal(size=(7, 5))
    expected = [min(float((xi - m) @ precision @ (xi - m)) for m in means) for xi in x]
    np.testing.assert_allclose(mahalanobis_scores(x, means, precision), expected, rtol=1e-9)
    with pytest.raises(VptError, match="width"):
        mahalanobis_scores(x[:, :4], means, precision)


def test_reference_threshold_and_shifted_scores(tmp_path):
    rng = np.random.default_rng(1)
    centres = np.array([[0.0] * 8, [3.0] * 8])
    y = np.arange(400) % 2
    x = centres[y] + rng.normal(size=(400, 8))
    xv = centres[np.arange(200) % 2] + rng.normal(size=(200, 8))
    ref = fit_reference(x, y, xv, ["a", "b"], val_predicted=np.arange(200) % 2, level=0.95, max_rows=50, prompt_sha256="abc")
    assert ref.features.shape == (50, 8) and len(ref.val_scores) == 200
    assert (ref.val_scores > ref.threshold).mean() <= 0.05  # the calibration level holds on its own sample
    far = centres[np.arange(100) % 2] + rng.normal(size=(100, 8)) + 6.0
    near = centres[np.arange(100) % 2] + rng.normal(size=(100, 8))
    assert ref.unfamiliar(ref.score(far)).mean() > 0.9
    assert ref.unfamiliar(ref.score(near)).mean() < 0.2
    np.testing.assert_allclose(ref.val_predicted_shares, [0.5, 0.5])
    # the file round-trips, and is refused for other prompt tensors
    save_reference(tmp_path / OOD_FILE, ref)
    back = load_reference(tmp_path / OOD_FILE)
    np.testing.assert_allclose(back.score(far), ref.score(far), rtol=1e-5)
    assert back.threshold == ref.threshold and back.classes == ["a", "b"]
    assert reference_for(tmp_path, "abc")[0] is not None
    none, why = reference_for(tmp_path, "other")
    assert none is None and "other prompt tensors" in why
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / OOD_FILE).write_bytes(b"not safetensors")
    assert reference_for(tmp_path / "bad", "abc")[0] is None
    with pytest.raises(VptError, match=OOD_FILE):
        load_reference(tmp_path / "bad" / OOD_FILE)


def test_mmd_test_separates_shifted_samples():
    rng = np.random.default_rng(2)
    same = [mmd_test(rng.normal(size=(40, 6)), rng.normal(size=(40, 6)), permutations=200, seed=s).p_value for s in range(20)]
    shifted = mmd_test(rng.normal(size=(40, 6)), rng.normal(size=(40, 6)) + 1.0, permutations=200)
    assert shifted.p_value < 0.01 and shifted.mmd2 > 0
    assert sum(p < 0.05 for p in same) <= 4  # about 5 % false alarms (binomial 20 x 0.05: P(>4) < 2 %)
    with pytest.raises(VptError):
        mmd_test(np.zeros((1, 6)), np.zeros((5, 6)))


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A linear probe on the tiny backbone, trained through the CLI, with an in-distribution folder
    (new images of the same generator) and a shifted one (another texture)."""
    import sys

    from conftest import build_tree

    from vptcli.cli import main

    root = tmp_path_factory.mktemp("ood")

    def vpt(*args):
        old = sys.argv
        sys.argv = ["vpt", *map(str, args)]
        try:
            with pytest.raises(SystemExit) as info:
                main()
        finally:
            sys.argv = old
        return info.value.code

    build_tree(root / "src", n_per_class=40, names=("good", "scratch"))
    assert vpt("ingest", root / "src", "--out", root / "data", "--val-fraction", "0.4", "--test-fraction", "0.1") == 0
    assert vpt("train", root / "data", "--out", root / "run", *TINY, "--method", "linear-probe") == 0
    build_tree(root / "same", n_per_class=15, seed=7, names=("good", "scratch"))
    stripes(root / "shifted", 20)
    return root


def test_training_writes_the_reference(trained):
    from vptcli.artifacts import read_prompt_file

    ref = load_reference(trained / "run" / OOD_FILE)
    _, meta = read_prompt_file(trained / "run" / "prompts.safetensors")
    assert ref.prompt_sha256 == meta.tensors_sha256 and ref.classes == ["good", "scratch"]
    assert len(ref.val_scores) == 32 and ref.features.shape == (32, ref.dim) and ref.n_train == 40
    assert (trained / "run" / OOD_FILE).stat().st_size < 64_000


def test_predict_scores_and_flags_unfamiliar_images(trained, vpt, tmp_path):
    out = tmp_path / "p.csv"
    code, stdout, err = vpt("predict", trained / "run", trained / "same", trained / "shifted", "--out", out)
    assert code == 0, err
    rows = read_csv(out)
    assert len(rows) == 50 and all(r["ood_score"] for r in rows)
    same = [r for r in rows if "/same/" in r["path"].replace("\\", "/")]
    shifted = [r for r in rows if "/shifted/" in r["path"].replace("\\", "/")]
    assert sum(r["status"] == "unfamiliar" for r in shifted) >= 15
    assert sum(r["status"] == "unfamiliar" for r in same) <= 3
    flagged = [r for r in rows if r["status"] == "unfamiliar"]
    assert all(r["label"] == "" and r["top1_label"] and "ood_score" in r["reason"] for r in flagged)
    ref = load_reference(trained / "run" / OOD_FILE)
    assert all(bool(ref.unfamiliar(float(r["ood_score"]))) == (r["status"] == "unfamiliar") for r in rows)
    assert f"{len(flagged)} unfamiliar" in stdout + err


def test_ood_level_moves_the_threshold(trained, vpt, tmp_path):
    ref = load_reference(trained / "run" / OOD_FILE)
    assert ref.level == 0.95 and ref.at_level(0.5).threshold < ref.threshold <= ref.at_level(0.99).threshold
    code, _, err = vpt("predict", trained / "run", trained / "same", "--out", tmp_path / "p.csv", "--ood-level", "0.5")
    assert code == 0, err
    rows = read_csv(tmp_path / "p.csv")
    assert 5 <= sum(r["status"] == "unfamiliar" for r in rows) <= 25  # about half of familiar images
    code, out, err = vpt("predict", trained / "run", trained / "same", "--ood-level", "1.5")
    assert code == 2 and "--ood-level" in out + err


def test_drift_in_distribution_and_shifted(trained, vpt, tmp_path):
    code, out, err = vpt("drift", trained / "run", trained / "same", "--out", tmp_path / "d0")
    assert code == 0, out + err
    rep = json.loads((tmp_path / "d0" / "drift_report.json").read_text())
    assert rep["drift"] is False and rep["mmd"]["p_value"] >= 0.05 and rep["n_images"] == 30
    code, out, err = vpt("drift", trained / "run", trained / "shifted", "--out", tmp_path / "d1", "--alpha", "0.01")
    assert code == 3, out + err
    rep = json.loads((tmp_path / "d1" / "drift_report.json").read_text())
    assert rep["drift"] is True and rep["mmd"]["p_value"] < 0.01 and rep["unfamiliar"]["share"] > 0.5
    assert {c["class"] for c in rep["class_shares"]} == {"good", "scratch"}
    md = (tmp_path / "d1" / "drift_report.md").read_text()
    assert "drift detected" in md and "drift_scores.png" in md
    assert (tmp_path / "d1" / "drift_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "drift detected" in out
    # Again into the same report folder: fine. Into the image folder: refused, nothing written there.
    assert vpt("drift", trained / "run", trained / "shifted", "--out", tmp_path / "d1", "--alpha", "0.01")[0] == 3
    before = sorted(p.name for p in (trained / "same").iterdir())
    code, out, err = vpt("drift", trained / "run", trained / "same", "--out", trained / "same")
    assert code == 2 and "inside" in " ".join((out + err).split())
    shifted = sorted(p.name for p in (trained / "shifted").iterdir())
    code, out, err = vpt("drift", trained / "run", trained / "same", "--out", trained / "shifted")  # another image folder
    assert code == 2 and "holds other files" in " ".join((out + err).split())
    assert sorted(p.name for p in (trained / "same").iterdir()) == before
    assert sorted(p.name for p in (trained / "shifted").iterdir()) == shifted


def test_drift_names_unreadable_files_and_leaves_them_alone(trained, vpt, tmp_path, monkeypatch):
    folder = tmp_path / "recent"
    shutil.copytree(trained / "same", folder)
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = vpt("drift", trained / "run", folder, "--out", tmp_path / "d")
    assert code == 0, out + err
    assert "broken.png" in " ".join(err.split()) and "1 unreadable file(s) left out" in out
    rep = json.loads((tmp_path / "d" / "drift_report.json").read_text())
    assert rep["n_errors"] == 1 and rep["errors"][0]["path"].endswith("broken.png") and rep["n_images"] == 30
    assert bad.read_bytes() == b"\x89PNG\r\n\x1a\n truncated"
    # the report never lands inside the folder it checks (explicitly, or by default from inside it)
    code, out, err = vpt("drift", trained / "run", folder, "--out", folder / "report")
    assert code == 2 and "inside" in " ".join((out + err).split()) and not (folder / "report").exists()
    monkeypatch.chdir(folder)
    code, out, err = vpt("drift", trained / "run", ".")
    assert code == 2 and "--out outside" in " ".join((out + err).split())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(p.name for p in (trained / "same").iterdir()), "broken.png"])
    # too few readable images: the unreadable ones are named
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    shutil.copy(bad, only_bad / "broken.png")
    code, out, err = vpt("drift", trained / "run", only_bad, "--out", tmp_path / "d2")
    assert code == 2 and "broken.png" in "".join((out + err).split())  # rich may wrap inside a long path


def test_drift_refuses_a_model_without_reference(trained, vpt, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(trained / "run", run)
    (run / OOD_FILE).unlink()
    code, out, err = vpt("drift", run, trained / "same", "--out", tmp_path / "d")
    assert code == 2 and "no unfamiliar-image reference" in out + err
    assert not (tmp_path / "d").exists()
    # predict still works, without scores
    code, _, err = vpt("predict", run, trained / "same", "--out", tmp_path / "p.csv")
    assert code == 0, err
    assert all(r["ood_score"] == "" and r["status"] == "ok" for r in read_csv(tmp_path / "p.csv"))


def test_resume_of_a_finished_run_adds_a_missing_reference(trained, vpt, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(trained / "run", run)
    before = load_reference(run / OOD_FILE)
    (run / OOD_FILE).unlink()
    code, _, err = vpt("train", trained / "data", "--out", run, "--resume")
    assert code == 0, err
    after = load_reference(run / OOD_FILE)
    # rebuilt from decoded images instead of the cache: the same reference up to float rounding
    np.testing.assert_allclose(after.means, before.means, rtol=1e-4, atol=1e-5)
    assert after.threshold == pytest.approx(before.threshold, rel=1e-3)


def test_onnx_scores_agree_with_torch(trained, vpt, tmp_path):
    import onnx

    exp = tmp_path / "export"
    code, _, err = vpt("export", trained / "run", "--out", exp)
    assert code == 0, err
    assert (exp / OOD_FILE).read_bytes() == (trained / "run" / OOD_FILE).read_bytes()
    assert [o.name for o in onnx.load(exp / "model.onnx").graph.output] == ["logits", "probabilities", "features"]
    for backend, out in (("torch", tmp_path / "t.csv"), ("onnx", tmp_path / "o.csv")):
        code, _, err = vpt("predict", exp, trained / "same", trained / "shifted", "--backend", backend, "--out", out)
        assert code == 0, err
    t, o = read_csv(tmp_path / "t.csv"), read_csv(tmp_path / "o.csv")
    assert [r["path"] for r in t] == [r["path"] for r in o]
    np.testing.assert_allclose([float(r["ood_score"]) for r in o], [float(r["ood_score"]) for r in t], rtol=1e-3)
    assert [r["status"] for r in o] == [r["status"] for r in t]
    code, out, err = vpt("drift", exp, trained / "shifted", "--out", tmp_path / "d", "--backend", "onnx")
    assert code == 3, out + err
    # a shared-backbone graph scores too, with the reference beside its prompt file
    code, _, err = vpt("export", trained / "run", "--out", tmp_path / "shared", "--shared-backbone")
    assert code == 0, err
    code, _, err = vpt("predict", tmp_path / "shared", trained / "shifted", "--out", tmp_path / "s.csv")
    assert code == 0, err
    shared = read_csv(tmp_path / "s.csv")
    np.testing.assert_allclose([float(r["ood_score"]) for r in shared],
                               [float(r["ood_score"]) for r in o if "/shifted/" in r["path"].replace("\\", "/")], rtol=1e-3)
