"""`vpt train --init-from`: a run starts from an earlier prompt file (same classes, an added class, a
registry version) and refuses one that does not fit. Tiny backbone (timm's `test_vit`, random weights)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture()
def source(tmp_path, vpt, make_tree):
    """An ingested two-class set and a run trained on it (the source of the warm starts)."""
    src = make_tree(tmp_path / "src", names=("good", "scratch"))
    data = tmp_path / "data"
    assert vpt("ingest", src, "--out", data, "--val-fraction", "0.25", "--test-fraction", "0")[0] == 0
    run = tmp_path / "run"
    code, _, err = vpt("train", data, "--out", run, *TINY, "--epochs", "4", "--lr", "3e-2", "--batch-size", "4",
                       "--no-augment", "--resize", "crop")
    assert code == 0, err
    return {"src": src, "data": data, "run": run}


def _epoch_rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def _tensors(path):
    from vptcli.artifacts import read_prompt_file

    return read_prompt_file(path)


def test_same_classes_start_where_the_source_ends(source, tmp_path, vpt):
    _, meta = _tensors(source["run"] / "prompts.safetensors")
    run = tmp_path / "warm"
    # the backbone, weights, image size, prompt settings and resize policy come from the file
    code, _, err = vpt("train", source["data"], "--out", run, "--init-from", source["run"], "--epochs", "1",
                       "--batch-size", "4", "--no-augment")
    assert code == 0, err
    assert "warm start from" in flat(err) and "2 head row(s) copied" in flat(err)
    first = _epoch_rows(run)[0]
    assert first["epoch"] == "0"
    # epoch 0 validates the copied model: the source's own validation figures
    assert float(first["val_top1"]) == pytest.approx(meta.metrics["val_top1"])
    assert float(first["val_macro_f1"]) == pytest.approx(meta.metrics["val_macro_f1"])
    assert float(first["val_loss"]) == pytest.approx(meta.metrics["val_loss"], abs=1e-5)
    cfg = json.loads((run / "config.json").read_text())["train"]
    assert cfg["init_from"].endswith("prompts.safetensors") and cfg["backbone"] == "test_vit"
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "other", "--init-from", source["run"], "--prompts", "3")
    assert code == 2 and "--prompts 10 in the file, 3 here" in flat(err)
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "lp", "--init-from", source["run"], "--method", "linear-probe")
    assert code == 2 and "--init-from needs a prompt method" in flat(err)


def test_an_added_class_gets_a_new_head_row_the_others_are_copied(source, tmp_path, vpt):
    src3 = tmp_path / "src3"
    import shutil

    shutil.copytree(source["src"], src3)
    rng = np.random.default_rng(3)
    (src3 / "dent").mkdir()
    for i in range(10):
        img = rng.integers(0, 60, size=(40, 40, 3), dtype=np.uint8)
        img[:20] += 150  # bright top half
        Image.fromarray(img).save(src3 / "dent" / f"{i:03d}.png")
    data3 = tmp_path / "data3"
    assert vpt("ingest", src3, "--out", data3, "--val-fraction", "0.25", "--test-fraction", "0")[0] == 0
    run = tmp_path / "warm3"
    # a learning rate so small that the saved tensors are the warm start's
    code, _, err = vpt("train", data3, "--out", run, "--init-from", source["run"] / "prompts.safetensors",
                       "--epochs", "1", "--lr", "1e-12", "--batch-size", "4", "--no-augment")
    assert code == 0, err
    assert "new class(es) imprinted: dent" in flat(err)
    t_src, m_src = _tensors(source["run"] / "prompts.safetensors")
    t_new, m_new = _tensors(run / "prompts.safetensors")
    assert m_new.classes == ["dent", "good", "scratch"]
    assert torch.allclose(t_new["prompts"], t_src["prompts"], atol=1e-6)
    for c in ("good", "scratch"):
        i, j = m_new.classes.index(c), m_src.classes.index(c)
        assert torch.allclose(t_new["head.weight"][i], t_src["head.weight"][j], atol=1e-6)
        assert torch.allclose(t_new["head.bias"][i], t_src["head.bias"][j], atol=1e-6)
    dent = t_new["head.weight"][0]
    assert torch.isfinite(dent).all()
    assert float(dent.norm()) == pytest.approx(float(t_src["head.weight"].norm(dim=1).mean()), rel=1e-4)


def test_init_from_a_registry_version(source, tmp_path, vpt, monkeypatch):
    reg = tmp_path / "reg"
    assert vpt("registry", "publish", source["run"], "--registry", reg, "--task", "line")[0] == 0
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "w0", "--init-from", "line", "--registry", reg)
    assert code == 2 and "no production version" in flat(err)
    run = tmp_path / "w1"
    code, _, err = vpt("train", source["data"], "--out", run, "--init-from", "line@1", "--registry", reg, "--epochs", "1",
                       "--batch-size", "4", "--no-augment")
    assert code == 0, err
    stored = json.loads((run / "config.json").read_text())["train"]["init_from"]
    assert str(reg.resolve()) in stored and "objects" in stored
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "w2", "--init-from", "line@7", "--registry", reg)
    assert code == 2 and "no version 7" in flat(err)
    # VPT_REGISTRY in the environment: a task name goes to the registry, an existing run folder stays a folder
    monkeypatch.setenv("VPT_REGISTRY", str(reg))
    common = ("--epochs", "1", "--batch-size", "4", "--no-augment")
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "w3", "--init-from", "line@1", *common)
    assert code == 0, err
    code, _, err = vpt("train", source["data"], "--out", tmp_path / "w4", "--init-from", source["run"], *common)
    assert code == 0, err
    assert json.loads((tmp_path / "w4" / "config.json").read_text())["train"]["init_from"].startswith(str(source["run"].resolve()))
