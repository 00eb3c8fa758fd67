"""Issue 11's recipe pieces on the tiny test_vit: head inputs, the converged linear probe and the warm
start, auto image size and the auto prompt start block, and an export of a richer head input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from vptcli.backbones import load_backbone
from vptcli.datasets import auto_img_size
from vptcli.ingest import ingest_folder
from vptcli.manifest import Manifest
from vptcli.methods import HEAD_INPUTS
from vptcli.probe import fit_linear_probe
from vptcli.prompting import PromptConfig, PromptedViT, head_input_dim
from vptcli.train_config import CPU_PROMPTED_BLOCKS, TrainConfig
from vptcli.training import train

IMG = 32  # test_vit: patch 16, 6 blocks, dim 64


def tiny(img=IMG):
    return load_backbone("test_vit", weights="random", img_size=img)


# --------------------------------------------------------------------------------------- head input


def test_head_inputs_are_declared_once():
    assert list(HEAD_INPUTS) == ["cls", "cls+mean", "last4+mean"]
    assert [head_input_dim(h, 64) for h in HEAD_INPUTS] == [64, 128, 320]


@pytest.mark.parametrize("head_input,width", [("cls", 1), ("cls+mean", 2), ("last4+mean", 5)])
def test_head_input_widths_and_cached_path_agree(head_input, width):
    bb = tiny().model
    torch.manual_seed(0)
    model = PromptedViT(bb, 3, PromptConfig("vpt-deep", 4, 5, head_input=head_input)).eval()
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        direct = model.features(x)
        k = model.frozen_blocks  # last4+mean reads blocks 2..5: the cache stops before block 2
        cached = model.forward_from(model.embed(x, k), k)[0]
    assert direct.shape == (2, width * 64)
    assert model.head.in_features == width * 64
    assert k == (2 if head_input == "last4+mean" else 5)
    assert (direct - cached).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="class token the head reads"):
        if head_input == "last4+mean":
            model.forward_from(model.embed(x, 2), 3)
        else:
            raise ValueError("class token the head reads")  # nothing to refuse for the final-token inputs


def test_cls_head_input_is_timms_pre_logits_and_last4_is_dinov2s_linear_input():
    bb = tiny().model
    model = PromptedViT(bb, 2, PromptConfig("linear-probe", 0, head_input="last4+mean")).eval()
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        xn = (x - 0.5) / 0.5
        outs = bb.get_intermediate_layers(xn, n=4, return_prefix_tokens=True, norm=True)
        expected = torch.cat([cls[:, 0] for _, cls in outs] + [outs[-1][0].mean(1)], dim=-1)
        got = model.features(x)
        plain = PromptedViT(bb, 2, PromptConfig("linear-probe", 0)).eval().features(x)
        pre_logits = bb.forward_head(bb.forward_features(xn), pre_logits=True)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(plain, pre_logits)


def test_old_prompt_configs_read_as_cls():
    cfg = PromptConfig.from_dict({"method": "vpt-deep", "num_prompts": 4})
    assert cfg.head_input == "cls"
    assert PromptConfig.from_dict(PromptConfig("vpt-deep", 4, head_input="cls+mean").to_dict()).head_input == "cls+mean"
    with pytest.raises(ValueError, match="unknown head input"):
        PromptedViT(tiny().model, 2, PromptConfig("vpt-deep", 4, head_input="avg"))


# ------------------------------------------------------------------------------------------ probe


def test_probe_separates_and_folds_the_standardisation():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(200, 8)) * 5 + 100, dtype=torch.float32)  # far from standardised
    y = torch.tensor((x[:, 0] - 100 + 0.3 * (x[:, 1] - 100) > 0).long().numpy())
    fit = fit_linear_probe(x[:150], y[:150], x[150:], y[150:], 2)
    pred = (x[150:] @ fit.weight.T + fit.bias).argmax(1)
    assert fit.weight.shape == (2, 8) and fit.bias.shape == (2,)
    assert float((pred == y[150:]).float().mean()) == pytest.approx(fit.val_top1)
    assert fit.val_top1 >= 0.95
    with pytest.raises(ValueError, match="two classes"):
        fit_linear_probe(x[:10], torch.zeros(10, dtype=torch.long), x[10:20], y[10:20], 2)


def test_probe_picks_the_regularisation_on_validation():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(80, 5)), dtype=torch.float32)
    y = torch.tensor(np.r_[np.zeros(50), np.ones(30)].astype(np.int64))  # imbalanced: a flat head says "0"
    x[:, 0] += 2.0 * (2 * y - 1)
    idx = torch.tensor(rng.permutation(80))
    x, y = x[idx], y[idx]
    crushed = fit_linear_probe(x[:50], y[:50], x[50:], y[50:], 2, c_grid=(1e-6,))
    fit = fit_linear_probe(x[:50], y[:50], x[50:], y[50:], 2, c_grid=(1e-6, 1.0))
    assert fit.c == 1.0 and fit.val_macro_f1 > crushed.val_macro_f1


# ------------------------------------------------------------------------------- training recipe


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, make_tree):
    root = make_tree(tmp_path_factory.mktemp("data") / "src")
    return ingest_folder(root, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False).manifest


def cfg(**kw):
    base = {"method": "vpt-deep", "num_prompts": 4, "epochs": 2, "batch_size": 4, "lr": 1e-2, "backbone": "test_vit",
            "weights": "random", "img_size": IMG, "augment": False, "cache": "auto", "seed": 0}
    return TrainConfig(**{**base, **kw})


def rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_linear_probe_is_fitted_not_trained_and_resume_has_nothing_left(tiny_data, tmp_path, capsys):
    from vptcli.commands.render import ConsoleTrainReporter

    res = train(tiny_data, tiny(), cfg(method="linear-probe", epochs=5, augment=True, cache_views=2), tmp_path / "lp",
                reporter=ConsoleTrainReporter())
    assert [int(r["epoch"]) for r in rows(tmp_path / "lp")] == [0]  # one fit, no epochs
    assert res.best_epoch == 0 and res.best_metrics["val_top1"] == 1.0  # separable task
    err = capsys.readouterr().err
    assert "fitted on 24 feature rows" in err  # 12 training images x 2 cached views
    again = train(tiny_data, tiny(), cfg(), tmp_path / "lp", resume=True)
    assert again.best_epoch == 0 and len(again.history) == 1


def test_probe_c_fixes_the_warm_starts_regularisation(tiny_data, tmp_path, capsys):
    from vptcli.artifacts import read_prompt_file
    from vptcli.commands.render import ConsoleTrainReporter
    from vptcli.errors import VptError

    norms = {}
    for c in (1e-4, 10.0):
        run = tmp_path / f"c{c:g}"
        train(tiny_data, tiny(), cfg(method="linear-probe", probe_c=c), run, reporter=ConsoleTrainReporter())
        assert f"C={c:g} from --probe-c" in " ".join(capsys.readouterr().err.split())
        norms[c] = float(read_prompt_file(run / "prompts.safetensors")[0]["head.weight"].norm())
        assert float(rows(run)[0]["probe_c"]) == c  # the run records the C it used
    assert norms[1e-4] < norms[10.0] / 10  # a smaller C: a smaller head
    # without --probe-c the C chosen on validation is recorded in row 0 (and only there) and printed
    from vptcli.probe import C_GRID

    class StopAfterFirstEpoch(ConsoleTrainReporter):
        def epoch_done(self, row, improved):
            super().epoch_done(row, improved)
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    run = tmp_path / "chosen"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_data, tiny(), cfg(epochs=2), run, reporter=StopAfterFirstEpoch())
    chosen = rows(run)[0]["probe_c"]
    assert float(chosen) in C_GRID and rows(run)[1]["probe_c"] == ""
    assert f"C={float(chosen):g}" in " ".join(capsys.readouterr().err.split())
    train(tiny_data, tiny(), cfg(epochs=2), run, resume=True)  # the resumed run keeps it in row 0
    assert [r["probe_c"] for r in rows(run)] == [chosen, "", ""]
    for bad in (0.0, 1e-320, 1e7, float("inf"), float("nan")):
        with pytest.raises(VptError, match="--probe-c must be a number from 1e-06 to 1e"):
            cfg(probe_c=bad)
    with pytest.raises(VptError, match="needs --head-init probe"):
        cfg(probe_c=0.1, head_init="random")


def test_random_head_init_keeps_the_epoch_loop_for_the_probe(tiny_data, tmp_path):
    train(tiny_data, tiny(), cfg(method="linear-probe", epochs=3, head_init="random"), tmp_path / "lp")
    assert [int(r["epoch"]) for r in rows(tmp_path / "lp")] == [1, 2, 3]


def test_warm_start_is_epoch_zero_and_never_lost(tiny_data, tmp_path):
    res = train(tiny_data, tiny(), cfg(prompt_start_block=4, lr=1e-9, head_input="cls+mean"), tmp_path / "run")
    r = rows(tmp_path / "run")
    assert [int(x["epoch"]) for x in r] == [0, 1, 2]
    assert float(r[0]["val_top1"]) == 1.0  # the fitted head alone solves the separable task
    assert res.best_metrics["val_top1"] == 1.0  # a useless learning rate cannot lose it


def test_auto_start_block_cpu_and_cuda():
    c = cfg()
    assert c.prompt_start_block is None
    assert c.resolved_start_block(12, "cpu") == 12 - CPU_PROMPTED_BLOCKS
    assert c.resolved_start_block(12, "cuda") == 0
    assert cfg(prompt_start_block=3).resolved_start_block(12, "cuda") == 3


def test_auto_img_size_follows_the_training_images(tiny_data):
    from dataclasses import replace

    def sized(w, h):
        recs = [replace(r, width=w, height=h) for r in tiny_data.records]
        return Manifest(root=tiny_data.root, classes=list(tiny_data.classes), records=recs, settings=dict(tiny_data.settings))

    assert auto_img_size(sized(300, 300), 14, 224) == 308  # ELPV cells with DINOv2's 14 px patches: never shrunk
    assert auto_img_size(sized(300, 300), 16, 32) == 64  # capped at twice the default side
    assert auto_img_size(sized(40, 20), 16, 224) == 64  # at least 4 patches a side


def test_bad_recipe_options_name_the_flag():
    from vptcli.errors import VptError

    for kw, flag in (({"head_input": "avg"}, "--head-input"), ({"head_init": "zeros"}, "--head-init"),
                     ({"img_size": "big"}, "--img-size"), ({"prompt_start_block": -1}, "--prompt-start-block")):
        with pytest.raises(VptError, match=flag):
            cfg(**kw)


def test_cli_auto_options_and_richer_head_export_with_parity(tiny_data, tmp_path, vpt, make_tree):
    src = make_tree(tmp_path / "src")
    code, out, err = vpt("train", src, "--out", tmp_path / "run", "--backbone", "test_vit", "--weights", "random",
                         "--img-size", "auto", "--head-input", "cls+mean", "--epochs", "1", "--batch-size", "4")
    assert code == 0, err
    assert "prompt start block 5 (auto: the last 1 block on a CPU" in err
    assert "image size 64 px" in err  # the 40 px test images -> 48, raised to 4 patches of 16 px
    code, out, err = vpt("export", tmp_path / "run", "--out", tmp_path / "exp")
    assert code == 0, err
    assert "top-1 agrees 3/3" in out + err
    code, out, err = vpt("train", src, "--out", tmp_path / "bad", "--prompt-start-block", "late")
    assert code == 2 and "--prompt-start-block must be a whole number or auto" in err


def test_resume_keeps_what_auto_resolved_to(tiny_data, tmp_path):
    import json

    from vptcli.train_config import load_run_config

    train(tiny_data, tiny(), cfg(epochs=1), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["prompt_start_block"] is None and saved["resolved"]["prompt_start_block"] == 5
    again = load_run_config(tmp_path / "run")
    assert again.prompt_start_block == 5  # not re-resolved on another device (CUDA would say 0)
    assert again.resolved_start_block(6, "cuda") == 5


def test_auto_start_block_is_zero_for_methods_without_prompts():
    assert cfg(method="linear-probe").resolved_start_block(12, "cpu") == 0
    assert cfg(method="full-finetune").resolved_start_block(12, "cpu") == 0


def test_prompt_file_format_stays_1_for_the_class_token_head(tmp_path):
    from vptcli.artifacts import FORMAT_VERSION, make_meta

    bb = tiny()
    for head_input, version in (("cls", 1), ("cls+mean", 2)):
        m = PromptedViT(bb.model, 2, PromptConfig("vpt-deep", 4, 5, head_input=head_input))
        assert make_meta(m, bb, ["a", "b"]).format_version == version <= FORMAT_VERSION


def test_auto_cache_views_cpu_and_cuda():
    from vptcli.train_config import CPU_CACHE_VIEWS

    assert cfg(augment=True).resolved_views("cpu") == CPU_CACHE_VIEWS
    assert cfg(augment=True).resolved_views("cuda") == 4
    assert cfg(augment=True, cache_views=3).resolved_views("cpu") == 3
    assert cfg(augment=False, cache_views=3).resolved_views("cuda") == 1
