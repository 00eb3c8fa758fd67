"""Runs that survive a person: --resume checks what it continues, Ctrl-C, output folders, what a
finished run leaves; through the real entry point on the tiny test_vit."""

from __future__ import annotations

import pytest

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


@pytest.fixture()
def ingested(tmp_path, vpt, make_tree):
    src = make_tree(tmp_path / "src", names=("good", "scratch"))
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.2", "--test-fraction", "0.2")
    assert code == 0, err
    return tmp_path / "data"


def test_resume_refuses_other_options_and_other_data(ingested, tmp_path, vpt, make_tree):
    run = tmp_path / "run"
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "2", "--batch-size", "4")
    assert code == 0, err
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--resume", "--method", "linear-probe")
    flat = " ".join(err.split())
    assert code == 2 and "--method linear-probe differs from the run's vpt-deep" in flat
    code, _, err = vpt("train", ingested, "--out", run, "--resume", "--lr", "0.5")
    assert code == 2 and "--lr 0.5 differs from the run's None" in " ".join(err.split())
    other = make_tree(tmp_path / "other", seed=4, names=("good", "scratch"))
    assert vpt("ingest", other, "--out", tmp_path / "data2", "--val-fraction", "0.2", "--test-fraction", "0.2")[0] == 0
    code, _, err = vpt("train", tmp_path / "data2", "--out", run, "--resume")
    assert code == 2 and "the data differs from the run's" in " ".join(err.split())
    # the same options and data, or none at all: it continues (here: nothing left)
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "2", "--batch-size", "4", "--resume")
    assert code == 0 and "already finished its 2 epochs" in " ".join(err.split())
