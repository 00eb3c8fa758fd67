"""Training loop on a tiny random ViT: frozen backbone, run dir, resume equivalence, cache exactness, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from vptcli.artifacts import read_prompt_file
from vptcli.backbones import load_backbone
from vptcli.ingest import ingest_folder
from vptcli.methods import METHODS, spec
from vptcli.training import TrainConfig, train

IMG = 32


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, make_tree):
    root = make_tree(tmp_path_factory.mktemp("data") / "src")
    return ingest_folder(root, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False).manifest


def backbone():
    return load_backbone("test_vit", weights="random", img_size=IMG)


def cfg(**kw):
    base = {"method": "vpt-deep", "num_prompts": 4, "epochs": 2, "batch_size": 4, "lr": 1e-2, "backbone": "test_vit", "weights": "random",
                "img_size": IMG, "augment": False, "cache": "off", "seed": 0, "prompt_start_block": 0}
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_run_dir_and_keeps_backbone_frozen(tiny_data, tmp_path):
    bb = backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    result = train(tiny_data, bb, cfg(epochs=3, augment=True, cache="auto", cache_views=2), tmp_path / "run")
    after = bb.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for name in ("config.json", "metrics.csv", "prompts.safetensors", "last.ckpt.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not (tmp_path / "run" / "last.state.json").exists()  # one checkpoint file, never half-updated
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # row 0: the head fitted before any epoch
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    tensors, meta = read_prompt_file(tmp_path / "run" / "prompts.safetensors")
    assert tuple(tensors["prompts"].shape) == (6, 4, 64)
    assert meta.classes == ["bright_left", "bright_right"] and meta.method == "vpt-deep"
    assert meta.data_fingerprint == tiny_data.fingerprint()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["cache"] is True and config["resolved"]["cache_views"] == 2
    assert result.tuned_parameters == 6 * 4 * 64 + 2 * 64 + 2


def test_refuses_non_empty_run_dir(tiny_data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    from vptcli.errors import VptError

    with pytest.raises(VptError, match="not empty"):
        train(tiny_data, backbone(), cfg(epochs=1), tmp_path / "run")
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("cache", ["off", "on"])
def test_resume_ends_with_the_same_prompts(tiny_data, tmp_path, cache):
    from vptcli.training import TrainReporter

    kw = {"epochs": 3, "augment": True, "cache": cache, "cache_views": 2, "prompt_dropout": 0.1}
    full = train(tiny_data, backbone(), cfg(**kw), tmp_path / "full")

    class CrashAfterFirst(TrainReporter):
        def epoch_done(self, row, improved):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, backbone(), cfg(**kw), tmp_path / "cut", reporter=CrashAfterFirst())
    resumed = train(tiny_data, backbone(), cfg(**kw), tmp_path / "cut", resume=True)
    a, _ = read_prompt_file(full.prompt_file)
    b, _ = read_prompt_file(resumed.prompt_file)
    assert resumed.best_epoch == full.best_epoch
    for name in a:
        assert torch.equal(a[name], b[name]), name
    last_a = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    last_b = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [",".join(line.split(",")[:6]) for line in lines]
    assert strip(last_a) == strip(last_b)


def test_cached_training_equals_uncached_at_k0(tiny_data, tmp_path):
    a = train(tiny_data, backbone(), cfg(cache="off"), tmp_path / "a")
    b = train(tiny_data, backbone(), cfg(cache="on"), tmp_path / "b")
    ta, _ = read_prompt_file(a.prompt_file)
    tb, _ = read_prompt_file(b.prompt_file)
    for name in ta:
        assert (ta[name] - tb[name]).abs().max() <= 1e-5, name


def test_same_seed_same_result(tiny_data, tmp_path):
    a = train(tiny_data, backbone(), cfg(augment=True), tmp_path / "a")
    b = train(tiny_data, backbone(), cfg(augment=True), tmp_path / "b")
    ta, _ = read_prompt_file(a.prompt_file)
    tb, _ = read_prompt_file(b.prompt_file)
    assert all(torch.equal(ta[n], tb[n]) for n in ta)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "vpt-deep"])  # vpt-deep: every other test
def test_every_method_trains(tiny_data, tmp_path, method):
    bb = backbone()
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    result = train(tiny_data, bb, cfg(method=method, epochs=1, lr=None), tmp_path / "run")
    tensors, meta = read_prompt_file(result.prompt_file)
    # The caller's backbone never changes, not even for full fine-tuning (which tunes a copy).
    assert all(torch.equal(before[k], v) for k, v in bb.model.state_dict().items())
    if method == "full-finetune":
        assert any(not torch.equal(before[n[len("backbone."):]], t) for n, t in tensors.items() if n.startswith("backbone."))
    assert ("prompts" in tensors) == (method in ("vpt-shallow", "da-vpt")) == spec(method).has_prompts
    assert meta.kind == ("full-model" if method == "full-finetune" else "prompts")
    if method == "da-vpt":
        rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
        assert [int(r["epoch"]) for r in rows] == [0, 1]  # 0: the head fitted before any epoch
        assert float(rows[1]["metric_loss"]) > 0


def test_learns_a_separable_task(tiny_data, tmp_path):
    result = train(tiny_data, backbone(), cfg(method="vpt-deep", epochs=8, lr=3e-2), tmp_path / "run")
    assert result.best_metrics["val_top1"] == 1.0


def test_non_finite_loss_stops_without_checkpoint(tiny_data, tmp_path):
    from vptcli.errors import VptError

    with pytest.raises(VptError, match="non-finite loss"):
        train(tiny_data, backbone(), cfg(lr=float("inf"), head_init="random"), tmp_path / "run")
    assert not (tmp_path / "run" / "prompts.safetensors").exists()


def test_disk_cache_is_reused_and_keyed(tiny_data, tmp_path, monkeypatch):
    from vptcli.prompting import PromptedViT

    kw = {"cache": "on", "cache_dir": str(tmp_path / "cache"), "prompt_start_block": 2, "epochs": 1}
    first = train(tiny_data, backbone(), cfg(**kw), tmp_path / "a")
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2  # train and val

    real_embed = PromptedViT.embed

    def embed_only_for_probing(self, images, until_block=0):
        if images.shape[0] > 1:  # the cache build; a single zero image probes the sequence length
            raise AssertionError("the frozen blocks were recomputed although a disk cache exists")
        return real_embed(self, images, until_block)

    monkeypatch.setattr(PromptedViT, "embed", embed_only_for_probing)
    second = train(tiny_data, backbone(), cfg(**kw), tmp_path / "b")
    ta, _ = read_prompt_file(first.prompt_file)
    tb, _ = read_prompt_file(second.prompt_file)
    assert all(torch.equal(ta[n], tb[n]) for n in ta)
    monkeypatch.setattr(PromptedViT, "embed", real_embed)
    train(tiny_data, backbone(), cfg(**{**kw, "prompt_start_block": 3}), tmp_path / "c")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4  # another k, other files


def test_head_lr_scale_zero_keeps_the_fitted_head(tiny_data, tmp_path):
    """--head-lr-scale 0: the head stays the epoch-0 probe fit while the prompts train; the
    optimiser puts the head in its own group at scale x lr."""
    from safetensors.torch import load_file

    from vptcli.training import build_model, make_optimisation

    bb = backbone()
    c = cfg(head_lr_scale=0.25)
    opt = make_optimisation(c, build_model(c, bb, 2, torch.device("cpu"))[0], 8, None).optimizer
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-2, 2.5e-3]  # "lr": after warm-up scaling
    ckpts = {}
    for epochs in (1, 3):
        train(tiny_data, backbone(), cfg(head_lr_scale=0.0, epochs=epochs), tmp_path / f"e{epochs}")
        ckpts[epochs] = load_file(tmp_path / f"e{epochs}" / "last.ckpt.safetensors")
    heads = [n for n in ckpts[1] if "head" in n and "optim" not in n]
    prompts = [n for n in ckpts[1] if n.endswith("prompts")]
    assert heads and prompts
    assert all(torch.equal(ckpts[1][n], ckpts[3][n]) for n in heads)
    assert not all(torch.equal(ckpts[1][n], ckpts[3][n]) for n in prompts)
