"""Test-time augmentation (``--tta dihedral``): the views, the model, training selection, export, explain."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vptcli.explain import attention_heatmaps, explain_batch
from vptcli.prompting import PromptConfig, PromptedViT
from vptcli.tta import dihedral_view, dihedral_views, mean_over_views, tta_views

IMG = 32  # test_vit: patch 16 -> 2x2 patch tokens


def tiny_pair(method: str = "vpt-deep", k: int = 2, head_input: str = "cls") -> tuple[PromptedViT, PromptedViT]:
    """The same random model twice: without and with dihedral test-time augmentation."""
    torch.manual_seed(0)
    bb = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=IMG).eval()
    n = 3 if method != "linear-probe" else 0
    plain = PromptedViT(bb, 3, PromptConfig(method, n, k, head_input=head_input)).eval()
    with torch.no_grad():
        plain.head.weight.normal_(0, 0.5)
        if plain.prompts is not None:
            plain.prompts.normal_()
    tta = PromptedViT(bb, 3, PromptConfig(method, n, k, head_input=head_input, tta="dihedral")).eval()
    tta.load_tuned_state(plain.tuned_state())
    return plain, tta


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    ours = [dihedral_view(x, v) for v in range(8)]
    rotations = [torch.rot90(y, r, (-2, -1)) for y in (x, x.flip(-1)) for r in range(4)]
    assert torch.equal(ours[0], x)
    key = lambda t: tuple(t.flatten().tolist())
    assert {key(t) for t in ours} == {key(t) for t in rotations} and len({key(t) for t in ours}) == 8
    batch = torch.rand(3, 2, 5, 5)
    stacked = dihedral_views(batch)
    assert stacked.shape == (24, 2, 5, 5)
    for v in range(8):  # view-major
        assert torch.equal(stacked[3 * v : 3 * v + 3], dihedral_view(batch, v))
    assert torch.equal(mean_over_views(torch.arange(6.0).view(6, 1), 2), torch.tensor([[1.5], [2.5], [3.5]]))
    with pytest.raises(ValueError, match="square"):
        dihedral_view(torch.rand(1, 3, 4, 6), 5)
    assert dihedral_view(torch.rand(1, 3, 4, 6), 3).shape == (1, 3, 4, 6)  # a half turn needs no square
    with pytest.raises(ValueError, match="0..7"):
        dihedral_view(x, 8)
    with pytest.raises(ValueError, match="dihedral"):
        tta_views("flips")


@pytest.mark.parametrize(("method", "k", "head_input"),
                         [("vpt-deep", 2, "cls"), ("vpt-shallow", 0, "cls"), ("linear-probe", 0, "last4+mean")])
def test_tta_model_averages_the_views_and_is_invariant_to_rotation_and_mirroring(method, k, head_input):
    plain, tta = tiny_pair(method, k, head_input)
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = torch.stack([plain.features(torch.rot90(y, r, (-2, -1))) for y in (x, x.flip(-2)) for r in range(4)]).mean(0)
        torch.testing.assert_close(tta.features(x), expected, atol=1e-5, rtol=1e-5)
        for turned in (torch.rot90(x, 1, (-2, -1)), x.flip(-1), x.transpose(-2, -1)):
            torch.testing.assert_close(tta(turned), tta(x), atol=1e-5, rtol=1e-5)
        assert (plain(torch.rot90(x, 1, (-2, -1))) - plain(x)).abs().max() > 1e-3  # the plain model is not invariant


def test_tta_refuses_unknown_settings_and_non_square_inputs():
    bb = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=(32, 48)).eval()
    with pytest.raises(ValueError, match="square"):
        PromptedViT(bb, 2, PromptConfig("linear-probe", 0, tta="dihedral"))
    PromptedViT(bb, 2, PromptConfig("linear-probe", 0))  # no TTA: any input size
    with pytest.raises(ValueError, match="test-time augmentation"):
        PromptedViT(bb, 2, PromptConfig("linear-probe", 0, tta="d8"))
    assert PromptConfig.from_dict({"method": "vpt-deep", "num_prompts": 2}).tta == "none"  # files made before the option


@pytest.mark.parametrize("explain", ["rollout", "prompt-attention", "gradcam"])
def test_explanations_map_the_plain_view_and_give_the_models_prediction(explain):
    plain, tta = tiny_pair()
    x = torch.rand(3, 3, IMG, IMG)
    with torch.no_grad():
        probs = tta(x).softmax(-1).numpy()
    e = explain_batch(tta, x, explain)
    np.testing.assert_allclose(e.probabilities, probs, atol=1e-5)
    assert e.maps.shape == (3, 2, 2)
    if explain != "gradcam":  # gradient-free maps are the plain view's, unchanged by the averaging
        with torch.no_grad():
            _, maps, feats = attention_heatmaps(tta, x, explain)
            _, plain_maps, _ = attention_heatmaps(plain, x, explain)
        torch.testing.assert_close(maps, plain_maps)
        torch.testing.assert_close(feats, tta.features(x))


def test_the_cache_plan_counts_the_validation_views_and_files_say_tta():
    from types import SimpleNamespace

    from vptcli.artifacts import format_version_of
    from vptcli.errors import VptError
    from vptcli.export import shared_structure
    from vptcli.train_config import TrainConfig
    from vptcli.training import plan_cache

    _, model = tiny_pair("vpt-deep", 4)
    per_view = 5 * 64 * 4  # test_vit at 32 px: 5 tokens of width 64, float32
    budget = 40 * per_view / 1024**3  # 10 training + 10 validation images fit once, not with 8 views of the latter
    for tta, fits in (("none", True), ("dihedral", False)):
        cfg = TrainConfig(method="vpt-deep", cache="on", cache_views=1, cache_max_gb=budget, tta=tta)
        if fits:
            assert plan_cache(cfg, model, (3, IMG, IMG), 4, 10, 10, torch.device("cpu"), None)
        else:
            with pytest.raises(VptError, match="cache-max-gb"):
                plan_cache(cfg, model, (3, IMG, IMG), 4, 10, 10, torch.device("cpu"), None)
    assert [format_version_of(PromptConfig(head_input=h, tta=t)) for h, t in
            (("cls", "none"), ("last4+mean", "none"), ("cls", "dihedral"))] == [1, 2, 3]
    # a shared-backbone graph fixes TTA: a file with another setting is refused by the structure check
    structure = lambda cfg: shared_structure(SimpleNamespace(prompt_config=cfg))
    assert structure(model.config)["tta"] == "dihedral" and "tta" not in structure(PromptConfig("vpt-deep", 3, 4))


def _invariant_tree(root, n=8, size=40):
    """Two classes that do not depend on orientation: dark noise and bright noise."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("dark", "bright")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8) + 120 * c
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


@pytest.mark.parametrize(("method", "extra"), [
    ("vpt-deep", ["--prompt-start-block", "4", "--cache", "on", "--cache-views", "2"]),
    ("vpt-deep", ["--prompt-start-block", "4", "--cache", "off"]),
    ("linear-probe", []),
])
def test_training_selects_on_the_tta_model_and_the_export_keeps_it(tmp_path, vpt, method, extra):
    import onnxruntime as ort

    from vptcli.artifacts import load_model, read_prompt_file
    from vptcli.datasets import ManifestDataset
    from vptcli.evaluation import predict_split
    from vptcli.manifest import Manifest

    src = _invariant_tree(tmp_path / "src")
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.25", "--test-fraction", "0.25")
    assert code == 0, err
    run = tmp_path / "run"
    code, out, err = vpt("train", tmp_path / "data", "--out", run, "--method", method, "--backbone", "test_vit",
                         "--weights", "random", "--img-size", str(IMG), "--prompts", "2", "--epochs", "2",
                         "--batch-size", "4", "--tta", "dihedral", *extra)
    assert code == 0, err
    assert "test-time augmentation dihedral" in out + err
    assert ("feature cache off (--cache off): every epoch decodes the images and runs the frozen blocks 0..3 again"
            in err) == ("off" in extra)
    _, meta = read_prompt_file(run / "prompts.safetensors")
    assert meta.prompt["tta"] == "dihedral" and meta.format_version == 3
    # The validation figures the saved model was selected by are its own, views averaged
    model, meta, _bb, _ = load_model(run)
    val = ManifestDataset(Manifest.read(tmp_path / "data"), "val", meta.data_config)
    probs = predict_split(model, val, batch_size=3)
    labels = np.asarray(val.labels)
    loss = float(-np.log(probs[np.arange(len(labels)), labels]).mean())
    assert loss == pytest.approx(meta.metrics["val_loss"], rel=1e-3, abs=2e-6)
    assert loss != pytest.approx(_plain_val_loss(model, val, labels), rel=1e-2)  # which one view would not give
    # The exported graph averages the views too: a turned image gets the same logits
    code, out, err = vpt("export", run, "--out", tmp_path / "exp")
    assert code == 0, err
    said = "test-time augmentation dihedral: the mean over the 8 rotations and mirror images of each image (8x the compute)"
    assert said in out
    # eval, its report and predict say so too: 8x the time has a reason
    code, _, err = vpt("eval", run, tmp_path / "data", "--split", "test", "--out", tmp_path / "eval")
    assert code == 0, err
    assert said in err
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["context"]["test-time augmentation"] == said.removeprefix("test-time augmentation ")
    code, _, err = vpt("predict", tmp_path / "exp", src / "dark" / "00.png")
    assert code == 0, err
    assert "; " + said in err
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((2, 3, IMG, IMG), dtype=np.float32)
    a = session.run(["logits"], {"images": x})[0]
    b = session.run(["logits"], {"images": np.ascontiguousarray(np.rot90(x, 1, (-2, -1)))})[0]
    np.testing.assert_allclose(a, b, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(a, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def _plain_val_loss(model, val, labels) -> float:
    from dataclasses import replace

    plain = PromptedViT(model.backbone, model.num_classes, replace(model.config, tta="none"),
                        tuple(model.mean.flatten().tolist()), tuple(model.std.flatten().tolist())).eval()
    plain.load_tuned_state(model.tuned_state())
    with torch.no_grad():
        probs = plain(torch.stack([val[i][0] for i in range(len(val))])).softmax(-1).numpy()
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


def test_tune_try_can_compare_tta_settings():
    from vptcli.errors import VptError
    from vptcli.tuning import parse_candidate

    assert parse_candidate("tta=dihedral,lr=1e-3").overrides == {"tta": "dihedral", "lr": 1e-3}
    with pytest.raises(VptError, match="tta must be one of none, dihedral"):
        parse_candidate("tta=rot90")


def test_benchmark_memo_serves_the_dihedral_views_the_feature_cache_builds(tmp_path, vpt):
    """benchmarks/elpv.py validates and tests a TTA model from its shared memo: the same hidden states."""
    from _common import HiddenMemo

    from vptcli.backbones import load_backbone
    from vptcli.datasets import ManifestDataset
    from vptcli.feature_cache import FeatureCache
    from vptcli.manifest import Manifest

    src = _invariant_tree(tmp_path / "src", n=3)
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.0", "--test-fraction", "0.0")
    assert code == 0, err
    bb = load_backbone("test_vit", weights="random", img_size=IMG)
    model = PromptedViT(bb.model, 2, PromptConfig("vpt-deep", 2, 3, tta="dihedral")).eval()
    ds = ManifestDataset(Manifest.read(tmp_path / "data"), "train", bb.data_config)
    args = {"start_block": 3, "views": 8, "augment": False, "key": "k", "dihedral": True}
    ours = FeatureCache.build(model, ds, **args).hidden
    memo = HiddenMemo(bb, base_k=2)
    torch.testing.assert_close(memo.build(model, ds, **args).hidden, ours, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours[0], ours[5])  # the views differ
    torch.testing.assert_close(memo.get(model, ds, 3, 0, False), ours[0])  # view 0 is the plain image


@pytest.mark.parametrize("dihedral", [False, True])
def test_feature_cache_holds_each_image_in_each_view_across_batches(tmp_path, vpt, dihedral):
    """``FeatureCache.build`` decodes a batch once and embeds every view of it: row ``[v, i]`` is view v of
    image i, also when the last batch is partial (augmented views: ``dataset.view(i, v, True)``)."""
    from vptcli.backbones import load_backbone
    from vptcli.datasets import ManifestDataset
    from vptcli.feature_cache import FeatureCache
    from vptcli.manifest import Manifest

    src = _invariant_tree(tmp_path / "src", n=3)
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.0", "--test-fraction", "0.0")
    assert code == 0, err
    bb = load_backbone("test_vit", weights="random", img_size=IMG)
    model = PromptedViT(bb.model, 2, PromptConfig("vpt-deep", 2, 3)).eval()
    ds = ManifestDataset(Manifest.read(tmp_path / "data"), "train", bb.data_config, augment=True, seed=4)
    n, views = len(ds), 3
    assert n % 4
    cache = FeatureCache.build(model, ds, start_block=3, views=views, augment=True, key="k", batch_size=4,
                               dihedral=dihedral).hidden
    assert cache.shape[:2] == (views, n)
    with torch.no_grad():
        for v in range(views):
            for i in (0, n - 1):
                image = dihedral_view(ds.view(i, 0, False)[None], v) if dihedral else ds.view(i, v, v > 0)[None]
                torch.testing.assert_close(cache[v, i], model.embed(image, 3)[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cache[1], cache[2])


def test_head_features_without_a_cache_decode_each_image_once_for_all_its_views(tmp_path, vpt):
    """``training.head_features(..., average_views=True)`` with no feature cache (``--cache off``): the mean
    head input over the 8 dihedral views of each image, from one decode per image (not one per view)."""
    from types import SimpleNamespace

    from vptcli.backbones import load_backbone
    from vptcli.datasets import ManifestDataset
    from vptcli.manifest import Manifest
    from vptcli.training import head_features

    src = _invariant_tree(tmp_path / "src", n=3)
    code, _, err = vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.0", "--test-fraction", "0.0")
    assert code == 0, err
    bb = load_backbone("test_vit", weights="random", img_size=IMG)
    torch.manual_seed(0)
    model = PromptedViT(bb.model, 2, PromptConfig("vpt-deep", 2, 3, tta="dihedral")).eval()
    ds = ManifestDataset(Manifest.read(tmp_path / "data"), "train", bb.data_config)
    decoded = []
    view = ds.view
    ds.view = lambda i, v, augment: decoded.append(i) or view(i, v, augment)
    s = SimpleNamespace(model=model, start_block=3, cfg=SimpleNamespace(batch_size=4), device=torch.device("cpu"),
                        dtype=None)
    x, y = head_features(s, ds, None, average_views=True)
    assert sorted(decoded) == list(range(len(ds)))  # once each
    assert x.shape == (len(ds), model.head.in_features) and y.tolist() == list(ds.labels)
    with torch.no_grad():
        image = view(len(ds) - 1, 0, False)[None]
        expected = torch.stack([model.forward_from(model.embed(dihedral_view(image, v), 3), 3)[0][0]
                                for v in range(8)]).mean(0)
    torch.testing.assert_close(x[-1], expected, atol=1e-5, rtol=1e-5)
