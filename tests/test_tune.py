"""`vpt train --tune`: candidates trained on one shared feature cache, the best on validation kept."""

from __future__ import annotations

import json

import pytest
import torch

from vptcli.artifacts import read_prompt_file
from vptcli.errors import VptError
from vptcli.tuning import parse_candidate, shared_cache_builder

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")



def test_parse_candidate():
    c = parse_candidate("lr=1e-3, head-lr-scale=0.1,prompts=50,--prompt-start-block=9")
    assert c.overrides == {"lr": 1e-3, "head_lr_scale": 0.1, "num_prompts": 50, "prompt_start_block": 9}
    assert isinstance(c.overrides["num_prompts"], int) and "/" not in c.folder
    assert parse_candidate("probe-c=1").overrides == {"probe_c": 1.0}
    assert isinstance(parse_candidate("probe-c=1").overrides["probe_c"], float)
    for bad in ("lr", "speed=2", "lr=fast", "", " , "):
        with pytest.raises(VptError, match="--tune-try"):
            parse_candidate(bad)


def test_tune_keeps_the_best_candidate_on_validation(ingested, tmp_path, vpt):
    run = tmp_path / "run"
    # A learning rate that cannot move the prompts or head (and one that can): the second must win.
    code, out, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "4", "--batch-size", "4", "--no-augment",
                         "--resize", "crop", "--head-init", "random", "--cache", "on",
                         "--tune-try", "lr=1e-9", "--tune-try", "lr=3e-2")
    assert code == 0, err
    assert "candidate 1/2: lr=1e-9" in err and "chosen" in err and "prompt file:" in out
    tune = json.loads((run / "tune.json").read_text())
    rows = {r["name"]: r for r in tune["candidates"]}
    assert set(rows) == {"lr=1e-9", "lr=3e-2"} and sum(r["chosen"] for r in rows.values()) == 1
    chosen = next(r for r in rows.values() if r["chosen"])
    assert chosen["val_macro_f1"] == max(r["val_macro_f1"] for r in rows.values())
    # The run folder holds the chosen candidate's files: same prompt file, its config.
    tensors, _ = read_prompt_file(run / "prompts.safetensors")
    chosen_tensors, _ = read_prompt_file(run / chosen["folder"] / "prompts.safetensors")
    assert all(torch.equal(tensors[n], chosen_tensors[n]) for n in tensors)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["lr"] == chosen["overrides"]["lr"]
    # ... and works as any run.
    assert vpt("eval", run, ingested, "--out", tmp_path / "eval")[0] == 0


def test_tune_refuses_resume_and_bad_candidates(ingested, tmp_path, vpt):
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r", *TINY, "--tune", "--resume")
    assert code == 2 and "--resume" in err
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r2", *TINY, "--tune-try", "lr=-1")
    assert code == 2 and "--lr must be > 0" in err and not (tmp_path / "r2").exists()
    # --init-from fixes the prompts' shape: a candidate changing it is refused before any training
    code, _, err = vpt("train", ingested, "--out", tmp_path / "first", *TINY, "--epochs", "1", "--prompt-start-block", "4")
    assert code == 0, err
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r3", *TINY, "--init-from", tmp_path / "first",
                       "--tune-try", "lr=1e-3", "--tune-try", "prompts=50")
    assert code == 2 and "shape" in " ".join(err.split()) and not (tmp_path / "r3" / "trials").exists()


def test_shared_cache_builder_builds_each_key_once(monkeypatch):
    from vptcli.feature_cache import FeatureCache

    calls = []
    monkeypatch.setattr(FeatureCache, "build", classmethod(lambda cls, model, ds, key, progress=None, **kw: calls.append(key) or key))
    build = shared_cache_builder()
    seen = []
    assert build(None, [1, 2], key="a", views=2, progress=seen.append) == "a"
    assert build(None, [1, 2], key="a", views=2, progress=seen.append) == "a"
    assert build(None, [1, 2], key="b") == "b"
    assert calls == ["a", "b"] and seen == [4]


def test_default_candidates_follow_the_method():
    from vptcli.train_config import TrainConfig
    from vptcli.tuning import default_candidates

    ft = default_candidates(TrainConfig(method="full-finetune", backbone="test_vit", weights="random"))
    assert [c.overrides for c in ft] == [{"lr": 3e-5}, {"lr": 3e-5, "head_lr_scale": 3.0}, {"lr": 1e-5, "head_lr_scale": 3.0}]
    deep = default_candidates(TrainConfig(method="vpt-deep", lr=1e-2, backbone="test_vit", weights="random"))
    assert [c.overrides for c in deep] == [{"lr": 1e-2}, {"lr": 1e-2, "head_lr_scale": 0.1},
                                           {"lr": pytest.approx(1e-2 / 3, rel=1e-2), "head_lr_scale": 0.1}]
    with pytest.raises(VptError, match="--tune"):
        default_candidates(TrainConfig(method="linear-probe", backbone="test_vit", weights="random"))
