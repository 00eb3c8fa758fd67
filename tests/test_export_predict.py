"""ONNX export (parity, dynamic batch, shared backbone, fp16) and `vpt predict` with both backends,
on timm's tiny test_vit (random weights, 32 px)."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageOps

from vptcli import export as export_mod
from vptcli.artifacts import (
    PROMPT_FILE,
    ArtifactError,
    check_compatible,
    load_model,
    make_meta,
    read_prompt_file,
    save_prompt_file,
)
from vptcli.backbones import load_backbone
from vptcli.commands.predict import is_output_folder
from vptcli.errors import VptError
from vptcli.export import ExportError, export_onnx, synthetic_images
from vptcli.inference import (
    OnnxPredictor,
    Predictor,
    PredictorError,
    TorchPredictor,
    create_session,
    expand_inputs,
    open_predictor,
    predict_files,
)
from vptcli.prompting import PromptConfig, PromptedViT

IMG = 32


# ----------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def bb():
    return load_backbone("test_vit", weights="random", img_size=IMG)


def make_prompt_file(path, backbone, classes, *, seed=0, method="vpt-deep", n=4):
    """A prompt file with random prompts and head (strong enough to make predictions differ)."""
    torch.manual_seed(seed)
    dc = backbone.data_config
    m = PromptedViT(backbone.model, len(classes), PromptConfig(method, n), dc["mean"], dc["std"]).eval()
    with torch.no_grad():
        if m.prompts is not None:
            m.prompts.normal_(0, 1.0)
        m.head.weight.normal_(0, 0.3)
        m.head.bias.normal_(0, 0.1)
    save_prompt_file(path, m, make_meta(m, backbone, classes))
    return path


def write_images(folder, n, *, seed=0, sizes=((40, 40), (48, 36), (30, 52))):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        arr[:, : w // 2] //= 1 + (i % 3)
        p = folder / f"img_{i:02d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def run_cli(args, capsys, monkeypatch):
    """Run `vpt ARGS` through the real entry point; returns (exit code, stdout, stderr)."""
    from vptcli.cli import main

    monkeypatch.setattr(sys, "argv", ["vpt", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def read_rows(path):
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def prompt_a(bb, tmp_path_factory):
    return make_prompt_file(tmp_path_factory.mktemp("a") / "a.safetensors", bb, ["crack", "ok", "scratch"], seed=1)


@pytest.fixture(scope="module")
def prompt_b(bb, tmp_path_factory):
    return make_prompt_file(tmp_path_factory.mktemp("b") / "b.safetensors", bb, ["good", "bad"], seed=2)


@pytest.fixture(scope="module")
def export_a(prompt_a, tmp_path_factory):
    """Single graph of prompt file A (traced at batch 1, dynamo exporter)."""
    out = tmp_path_factory.mktemp("exp") / "export"
    return export_onnx(prompt_a, out)


@pytest.fixture(scope="module")
def shared_a(prompt_a, tmp_path_factory):
    out = tmp_path_factory.mktemp("shared") / "export"
    return export_onnx(prompt_a, out, shared_backbone=True)


# ------------------------------------------------------------------------------------------- export


def test_export_is_one_checked_self_contained_graph(export_a, prompt_a):
    r = export_a
    assert sorted(p.name for p in r.out_dir.iterdir()) == ["model.onnx", "prompts.safetensors"]  # no .onnx.data
    assert r.prompt_path.read_bytes() == prompt_a.read_bytes()
    assert r.exporter == "dynamo" and r.opset == export_mod.DEFAULT_OPSET and not r.external_data
    assert [c.batch for c in r.parity] == [1, 3]
    assert r.max_abs_logits <= 1e-4 and all(c.top1_agree == c.batch for c in r.parity)
    m = onnx.load(r.onnx_path)
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == ["logits", "probabilities", "features"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, IMG, IMG]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["vptcli.classes"]) == ["crack", "ok", "scratch"]
    pre = json.loads(props["vptcli.preprocessing"])
    assert pre["img_size"] == IMG and pre["mean"] == [0.5, 0.5, 0.5] and pre["interpolation"] == "bicubic"
    assert json.loads(props["vptcli.backbone"])["name"] == "test_vit"
    assert props["vptcli.method"] == "vpt-deep" and props["vptcli.version"]


def test_onnx_equals_torch_at_batches_1_3_8_softmax_once(export_a):
    onnx_p = open_predictor(export_a.out_dir)
    torch_p = open_predictor(export_a.out_dir, backend="torch")
    assert isinstance(onnx_p, OnnxPredictor) and onnx_p.device == "CPUExecutionProvider"
    assert isinstance(torch_p, TorchPredictor) and torch_p.device == "cpu"
    for b in (1, 3, 8):
        x = synthetic_images(b, IMG, seed=100 + b).numpy()
        lo, po = onnx_p.predict_batch(x)
        lt, pt = torch_p.predict_batch(x)
        assert lo.shape == (b, 3) and po.shape == (b, 3)
        assert np.abs(lo - lt).max() <= 1e-4
        assert np.abs(po - pt).max() <= 1e-4
        assert (po.argmax(1) == pt.argmax(1)).all()
        # softmax exactly once: probabilities are softmax(logits), not the logits and not softmax twice
        sm = np.exp(lo - lo.max(1, keepdims=True))
        np.testing.assert_allclose(po, sm / sm.sum(1, keepdims=True), atol=1e-6)
        assert lo.std() > 0.1  # random head: logits spread, so softmax(softmax) would differ clearly


def test_parity_failure_refuses_export(prompt_a, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "FP32_LOGIT_TOL", 0.0)
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(prompt_a, tmp_path / "out", exporter="torchscript")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_opset_the_dynamo_exporter_cannot_give_falls_back_to_torchscript(prompt_a, tmp_path):
    r = export_onnx(prompt_a, tmp_path / "op17", opset=17)
    assert r.exporter == "torchscript" and r.opset == 17 and r.max_abs_logits <= 1e-4
    assert any("dynamo exporter produced opset 18 instead of 17" in w for w in r.warnings)
    m = onnx.load(r.onnx_path)
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert m.ir_version == r.ir_version == 8 and r.min_onnxruntime == "1.13"  # not the IR 10 of onnx today
    assert {p.key: p.value for p in m.metadata_props}["vptcli.min_onnxruntime"] == "1.13"
    with pytest.raises(ExportError, match="dynamo exporter produced opset 18 instead of 17"):
        export_onnx(prompt_a, tmp_path / "op17b", opset=17, exporter="dynamo")


def test_fp16_graph_float32_io_within_documented_tolerance(prompt_a, tmp_path):
    r = export_onnx(prompt_a, tmp_path / "fp16", fp16=True)
    assert r.precision == "fp16" and r.tolerance == export_mod.FP16_LOGIT_TOL == 5e-2
    assert r.max_abs_logits <= 5e-2
    m = onnx.load(r.onnx_path)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    p16, p32 = open_predictor(tmp_path / "fp16"), open_predictor(prompt_a)
    x = synthetic_images(8, IMG, seed=7).numpy()
    l16, _ = p16.predict_batch(x)
    l32, _ = p32.predict_batch(x)
    assert np.abs(l16 - l32).max() <= 5e-2 and (l16.argmax(1) == l32.argmax(1)).all()


def test_external_data_only_when_too_large(prompt_a, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)  # pretend the weights exceed 2 GB
    r = export_onnx(prompt_a, tmp_path / "big")
    assert r.external_data and (tmp_path / "big" / "model.onnx.data").is_file()
    assert any("2 GB" in w for w in r.warnings)
    assert sorted(p.name for p in (tmp_path / "big").iterdir()) == ["model.onnx", "model.onnx.data", "prompts.safetensors"]
    x = synthetic_images(3, IMG).numpy()
    assert np.abs(open_predictor(tmp_path / "big").predict_batch(x)[1] - open_predictor(prompt_a).predict_batch(x)[1]).max() <= 1e-4


# ----------------------------------------------------------------------------------- shared backbone


def test_shared_backbone_graph_serves_two_prompt_files(shared_a, prompt_a, prompt_b):
    assert shared_a.graph == "shared-backbone" and shared_a.onnx_path.name == "shared.onnx"
    assert shared_a.inputs == ["images", "prompts", "head_weight", "head_bias"]
    x = synthetic_images(5, IMG, seed=11).numpy()
    got = {}
    for pf in (prompt_a, prompt_b):
        po = open_predictor(None, onnx=shared_a.onnx_path, prompts=pf)
        assert po.graph == "shared-backbone"
        _, probs_onnx = po.predict_batch(x)
        _, probs_torch = TorchPredictor(pf).predict_batch(x)
        assert probs_onnx.shape == probs_torch.shape == (5, len(po.classes))  # C is dynamic (3 and 2)
        assert np.abs(probs_onnx - probs_torch).max() <= 1e-4
        assert (probs_onnx.argmax(1) == probs_torch.argmax(1)).all()
        got[pf] = probs_onnx
    # the prompts are really inputs: feeding A's prompts with B's head differs from B
    po_b = open_predictor(None, onnx=shared_a.onnx_path, prompts=prompt_b)
    tensors_a, _ = read_prompt_file(prompt_a)
    po_b._extra["prompts"] = tensors_a["prompts"].numpy()
    assert np.abs(po_b.predict_batch(x)[1] - got[prompt_b]).max() > 1e-3


def test_shared_backbone_cli_and_linear_probe_and_full_model(bb, prompt_b, tmp_path, capsys, monkeypatch):
    lp = make_prompt_file(tmp_path / "lp.safetensors", bb, ["x", "y"], seed=3, method="linear-probe", n=0)
    code, out, err = run_cli(["export", lp, "--out", tmp_path / "lp", "--shared-backbone"], capsys, monkeypatch)
    assert code == 0, err
    assert "parity batch 3" in out and "shared-backbone graph" in out and "shared.onnx" in out
    m = onnx.load(tmp_path / "lp" / "shared.onnx")
    assert [i.name for i in m.graph.input] == ["images", "head_weight", "head_bias"]
    lp2 = make_prompt_file(tmp_path / "lp2.safetensors", bb, ["u", "v", "w"], seed=4, method="linear-probe", n=0)
    x = synthetic_images(3, IMG).numpy()
    po = open_predictor(None, onnx=tmp_path / "lp" / "shared.onnx", prompts=lp2)
    assert np.abs(po.predict_batch(x)[1] - TorchPredictor(lp2).predict_batch(x)[1]).max() <= 1e-4
    # a VPT-deep file does not fit a linear-probe graph (prompt structure differs)
    with pytest.raises(PredictorError, match="prompt structure"):
        open_predictor(None, onnx=tmp_path / "lp" / "shared.onnx", prompts=prompt_b)
    # full fine-tuning: a whole model, no shared backbone
    ff = make_prompt_file(tmp_path / "ff.safetensors", bb, ["x", "y"], method="full-finetune", n=0)
    with pytest.raises(ExportError, match="full fine-tuning"):
        export_onnx(ff, tmp_path / "ff", shared_backbone=True)


def test_graph_refuses_prompt_file_of_other_backbone(shared_a, export_a, prompt_b, bb, tmp_path):
    # other weights of the same architecture
    from safetensors.torch import save_file

    sd = {k: v.clone() + 0.01 for k, v in bb.model.state_dict().items()}
    save_file(sd, tmp_path / "other.safetensors")
    other = load_backbone("test_vit", weights=str(tmp_path / "other.safetensors"), img_size=IMG)
    pf_other = make_prompt_file(tmp_path / "other_w.safetensors", other, ["good", "bad"])
    with pytest.raises(PredictorError, match="backbone weights sha256"):
        open_predictor(None, onnx=shared_a.onnx_path, prompts=pf_other)
    # another architecture
    arch2 = load_backbone("test_vit2", weights="random", img_size=IMG)
    pf_arch = make_prompt_file(tmp_path / "arch.safetensors", arch2, ["good", "bad"])
    with pytest.raises(PredictorError, match="backbone name: graph=test_vit prompt file=test_vit2.*depth"):
        open_predictor(None, onnx=shared_a.onnx_path, prompts=pf_arch)
    # a single graph only runs with the prompt file it was exported from
    with pytest.raises(PredictorError, match="was not exported from.*prompt tensors sha256"):
        open_predictor(None, onnx=export_a.onnx_path, prompts=prompt_b)


# --------------------------------------------------------------------------------- prompt-file checks


def test_prompt_file_refused_on_other_backbone(bb, prompt_a, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.clone() * 1.01 for k, v in bb.model.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(ArtifactError, match="weights sha256"):
        TorchPredictor(prompt_a, weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(ArtifactError, match="weights sha256"):
        export_onnx(prompt_a, tmp_path / "out", weights=str(tmp_path / "w.safetensors"))
    forced = TorchPredictor(prompt_a, weights=str(tmp_path / "w.safetensors"), force=True)
    assert forced.warnings and "--force" in forced.warnings[0]
    _, meta = read_prompt_file(prompt_a)
    with pytest.raises(ArtifactError, match="depth: file=6 loaded=8"):
        check_compatible(meta, load_backbone("test_vit2", weights="random", img_size=IMG), force=True)
    with pytest.raises(ArtifactError, match="image size: file=32 loaded=64"):
        check_compatible(meta, load_backbone("test_vit", weights="random", img_size=64), force=True)


def test_truncated_and_tampered_prompt_files(prompt_a, tmp_path, capsys, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = prompt_a.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        export_onnx(trunc, tmp_path / "o1")
    img = write_images(tmp_path / "imgs", 1)[0]
    code, _, err = run_cli(["predict", trunc, img], capsys, monkeypatch)
    assert code == 2 and "trunc.safetensors" in err and "truncated" in err

    tensors, _ = read_prompt_file(prompt_a)
    with safe_open(str(prompt_a), framework="pt") as fh:
        md = fh.metadata()
    missing = {k: v for k, v in tensors.items() if k != "prompts"}
    save_file(missing, tmp_path / "missing.safetensors", metadata=md)
    with pytest.raises(ArtifactError, match=r"missing tensors \['prompts'\]"):
        TorchPredictor(tmp_path / "missing.safetensors")
    extra = dict(tensors, extra=torch.zeros(2))
    save_file(extra, tmp_path / "extra.safetensors", metadata=md)
    with pytest.raises(ArtifactError, match=r"unexpected tensors \['extra'\]"):
        export_onnx(tmp_path / "extra.safetensors", tmp_path / "o2")
    tampered = dict(tensors)
    tampered["head.bias"] = tampered["head.bias"] + 1
    save_file(tampered, tmp_path / "tampered.safetensors", metadata=md)
    with pytest.raises(ArtifactError, match="does not match the digest"):
        open_predictor(tmp_path / "tampered.safetensors")


# ------------------------------------------------------------------------------------------ predict


def test_train_export_predict_round_trip_both_backends(tmp_path, capsys, monkeypatch):
    """vpt train -> vpt export -> vpt predict (torch and onnx) agree on every file."""
    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    rng = np.random.default_rng(0)
    for c, name in enumerate(["left", "right"]):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 60, size=(36, 36, 3), dtype=np.uint8)
            arr[:, :18] += 150 if c == 0 else 0
            arr[:, 18:] += 150 if c == 1 else 0
            Image.fromarray(arr).save(tmp_path / "src" / name / f"{i}.png")
    manifest = ingest_folder(tmp_path / "src", val_fraction=0.2, test_fraction=0.2, seed=0, progress=False).manifest
    cfg = TrainConfig(method="vpt-deep", num_prompts=3, epochs=1, batch_size=4, lr=1e-2, backbone="test_vit",
                      weights="random", img_size=IMG, augment=False, cache="off", seed=0)
    train(manifest, load_backbone("test_vit", weights="random", img_size=IMG), cfg, tmp_path / "run")

    code, out, err = run_cli(["export", tmp_path / "run", "--out", tmp_path / "exp"], capsys, monkeypatch)
    assert code == 0, err
    assert "parity batch 1" in out and "model.onnx" in out
    results = {}
    for backend, name in (("torch", "t.csv"), ("onnx", "o.jsonl")):
        model = tmp_path / ("run" if backend == "torch" else "exp")
        code, out, err = run_cli(["predict", model, tmp_path / "src", "--backend", backend, "--out", tmp_path / name,
                                  "--batch-size", "5", "--top-k", "2"], capsys, monkeypatch)
        assert code == 0, err
        assert "12 files:" in out and "0 error" in out
        results[backend] = read_rows(tmp_path / name)
    assert "CPUExecutionProvider" in err
    t_rows, o_rows = results["torch"], results["onnx"]
    assert [r["path"] for r in t_rows] == [r["path"] for r in o_rows] and len(t_rows) == 12
    for t, o in zip(t_rows, o_rows):
        # 'unfamiliar': over the threshold of a 2-image validation split (the largest of its scores)
        assert t["status"] == o["status"] in ("ok", "unfamiliar") and (t["label"] or None) == o["label"]
        assert float(t["ood_score"]) == pytest.approx(o["ood_score"], rel=1e-3)
        assert abs(float(t["confidence"]) - o["confidence"]) <= 1e-4
        assert [t["top1_label"], t["top2_label"]] == [k["label"] for k in o["top_k"]]
        assert abs(float(t["top2_probability"]) - o["top_k"][1]["probability"]) <= 1e-4


def test_predict_folder_with_bad_files_reports_them_and_continues(export_a, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "lot"
    good = write_images(folder, 5)
    png = good[0].read_bytes()
    (folder / "img_02_truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "sub").mkdir()
    (folder / "sub" / "page.jpg").write_text("<html><body>not an image</body></html>")
    write_images(folder / "sub", 1, seed=5)
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._img_00.png").write_bytes(b"junk")
    (folder / "labels.csv").write_text("path,label\n")  # not an image name: skipped, not an error
    write_images(folder / "run1", 2)  # a run folder trained into the image folder: skipped whole
    (folder / "run1" / PROMPT_FILE).write_bytes(b"x")
    write_images(folder / "eval-test", 1)  # so is a `vpt eval` report with its confusion matrix
    (folder / "eval-test" / "img_00.png").rename(folder / "eval-test" / "confusion_matrix.png")
    (folder / "eval-test" / "report.json").write_text("{}")
    out_file = tmp_path / "pred.csv"
    code, out, err = run_cli(["predict", export_a.out_dir, folder, "--out", out_file, "--batch-size", "3"], capsys, monkeypatch)
    assert code == 1
    rows = read_rows(out_file)
    by_name = {r["path"].replace(str(folder) + "/", ""): r for r in rows}
    assert set(by_name) == {*(p.name for p in good), "img_02_truncated.png", "sub/page.jpg", "sub/img_00.png"}
    assert by_name["img_02_truncated.png"]["status"] == "error" and "truncated or corrupt" in by_name["img_02_truncated.png"]["reason"]
    assert by_name["sub/page.jpg"]["status"] == "error" and "not an image" in by_name["sub/page.jpg"]["reason"]
    oks = [r for r in rows if r["status"] == "ok"]
    assert len(oks) == 6 and all(r["label"] in ("crack", "ok", "scratch") and float(r["confidence"]) > 0 for r in oks)
    assert "8 files: 6 ok, 0 review, 2 error" in out and "skipped 1 file(s) without an image suffix" in err
    assert "skipped 2 folder(s) written by vpt" in err and "(eval-test, run1)" in err
    # the failing files and their reasons are said on stderr too, not only in the rows
    assert f"error: {folder / 'img_02_truncated.png'}: truncated or corrupt" in err
    assert f"error: {folder / 'sub' / 'page.jpg'}: not an image" in err
    # the same without --out: CSV rows on stdout (not a terminal), summary on stderr
    code, out, err = run_cli(["predict", export_a.out_dir, folder / "sub"], capsys, monkeypatch)
    assert code == 1 and out.splitlines()[0].startswith("path,label,confidence,top1_label")
    assert len(out.splitlines()) == 3 and "1 error" in err


def test_reject_below_marks_review_and_missing_paths_are_errors(export_a, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "imgs", 6)
    p = open_predictor(export_a.out_dir)
    conf = sorted(r.confidence for r in predict_files(p, sorted((tmp_path / "imgs").iterdir())))
    threshold = (conf[2] + conf[3]) / 2
    assert conf[2] < conf[3]
    out_file = tmp_path / "p.jsonl"
    code, out, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs" / "*.png", "--reject-below", threshold,
                              "--out", out_file, "--top-k", "5"], capsys, monkeypatch)
    assert code == 0, err
    rows = read_rows(out_file)
    review = [r for r in rows if r["status"] == "review"]
    assert len(rows) == 6 and len(review) == 3
    assert all(r["label"] is None and r["confidence"] < threshold and "confidence" in r["reason"] for r in review)
    assert all(r["label"] == r["top_k"][0]["label"] for r in rows if r["status"] == "ok")
    assert all(len(r["top_k"]) == 3 for r in rows)  # top-k capped at C
    code, out, _ = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", tmp_path / "nope.png", "--out", out_file],
                           capsys, monkeypatch)
    assert code == 1 and "7 files: 6 ok, 0 review, 1 error" in out
    rows = read_rows(out_file)
    assert len(rows) == 7 and rows[-1]["status"] == "error" and rows[-1]["reason"].startswith("missing")


def test_exif_rotated_image_predicted_like_its_upright_twin(export_a, tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(48, 32, 3), dtype=np.uint8)
    arr[:8] = 255  # a bright band at the top of the upright picture: orientation matters
    stored = Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    jpg = tmp_path / "rotated.jpg"
    stored.save(jpg, quality=100, exif=exif.tobytes())
    twin = tmp_path / "upright.png"
    with Image.open(jpg) as im:
        upright = ImageOps.exif_transpose(im)
        assert upright.size == (32, 48)
        upright.save(twin)  # lossless copy of the displayed pixels
    with Image.open(jpg) as im:
        plain = tmp_path / "ignored_exif.png"
        im.convert("RGB").save(plain)  # the same pixels without the rotation
    for p in (open_predictor(export_a.out_dir), open_predictor(export_a.out_dir, backend="torch")):
        rows = {r.path: r for r in predict_files(p, [jpg, twin, plain], top_k=3)}
        r_jpg, r_twin, r_plain = rows[str(jpg)], rows[str(twin)], rows[str(plain)]
        assert r_jpg.label == r_twin.label
        assert max(abs(a[1] - b[1]) for a, b in zip(r_jpg.top_k, r_twin.top_k)) <= 1e-6
        assert max(abs(a[1] - b[1]) for a, b in zip(r_jpg.top_k, r_plain.top_k)) > 1e-4  # rotation does change it


def test_predict_streams_in_batches(export_a, tmp_path):
    """Rows come out batch by batch: decoding runs at most one batch ahead of the model."""
    base = open_predictor(export_a.out_dir)
    paths = write_images(tmp_path / "many", 3) * 1  # 3 distinct files
    paths = [paths[i % 3] for i in range(40)]
    calls = {"pre": 0, "batches": []}

    class Counting(Predictor):
        backend, device, source = "onnx", "cpu", "test"

        def __init__(self):
            super().__init__()
            self.meta = base.meta

        def preprocess(self, pixels):
            calls["pre"] += 1
            return base.preprocess(pixels)

        def predict_batch(self, images):
            calls["batches"].append(len(images))
            return base.predict_batch(images)

    gen = predict_files(Counting(), paths, batch_size=4, workers=2)
    first = next(gen)
    assert first.status == "ok" and calls["pre"] <= 8 and calls["batches"] == [4]
    rest = list(gen)
    assert len(rest) == 39 and calls["batches"] == [4] * 10 and calls["pre"] == 40


def test_expand_inputs_files_folders_globs(tmp_path):
    write_images(tmp_path / "a" / "b", 2)
    (tmp_path / "a" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"x")
    (tmp_path / "a" / "labels.csv").write_text("path,label\n")
    (tmp_path / "c.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("named explicitly: attempted")
    files, problems, skipped = expand_inputs([tmp_path / "a", str(tmp_path / "*.png"), tmp_path / "a" / "b" / "img_00.png",
                                              tmp_path / "zzz", str(tmp_path / "q*.tif"), tmp_path / "notes.txt"])
    assert [f.name for f in files] == ["img_00.png", "img_01.png", "c.png", "notes.txt"]  # no duplicates, no hidden
    assert [f.name for f in skipped] == ["labels.csv"]
    assert [p[1].split(":")[0] for p in problems] == ["missing", "missing"]


def test_expand_inputs_skips_run_folders_found_inside_a_folder(tmp_path):
    """A run or export folder inside a PATH folder (or matched by a glob) is skipped once, whole: its
    plots and heatmaps are not line images. A folder with only a ``report.json`` is the user's."""
    write_images(tmp_path / "line" / "cam1", 2)
    for run in ("run-a", "run-b"):
        write_images(tmp_path / "line" / run / "heatmaps", 2)
        (tmp_path / "line" / run / PROMPT_FILE).write_bytes(b"x")
    write_images(tmp_path / "line" / "run-c", 1)  # no prompt file: an ordinary image folder
    (tmp_path / "line" / "run-c" / "report.json").write_text("{}")  # not a vpt eval report alone
    files, problems, skipped = expand_inputs([tmp_path / "line", str(tmp_path / "line" / "run-*")],
                                             skip_folder=is_output_folder)
    assert [f.relative_to(tmp_path / "line").as_posix() for f in files] == [
        "cam1/img_00.png", "cam1/img_01.png", "run-c/img_00.png"]
    assert [p.name for p in skipped] == ["run-a", "run-b", "report.json"] and problems == []


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_requested_without_cuda_is_a_clear_error(export_a, prompt_a, monkeypatch):
    import onnxruntime as ort

    with pytest.raises(PredictorError, match="--device cuda.*CUDAExecutionProvider"):
        create_session(export_a.onnx_path, "cuda")
    with pytest.raises(VptError, match="--device cuda.*no CUDA GPU"):
        TorchPredictor(prompt_a, device="cuda")
    session, provider, warns = create_session(export_a.onnx_path, "auto")
    assert provider == "CPUExecutionProvider" and session.get_providers() == ["CPUExecutionProvider"]
    assert len(warns) == 1 and "CUDA not used" in warns[0] and "CPUExecutionProvider" in warns[0]
    # an onnxruntime without the CUDA provider at all: the message says so
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(PredictorError, match="does not have.*onnxruntime-gpu"):
        open_predictor(export_a.out_dir, device="cuda")


def test_cpu_device_uses_cpu_provider_without_warning(export_a):
    p = open_predictor(export_a.out_dir, backend="onnx", device="cpu")
    assert p.device == "CPUExecutionProvider" and p.warnings == []


def test_run_dir_without_graph_needs_export_for_onnx(prompt_a):
    with pytest.raises(PredictorError, match="vpt export"):
        open_predictor(prompt_a, backend="onnx")
    model, *_ = load_model(prompt_a)
    assert model.num_classes == 3


# ------------------------------------------------------------------------ a single graph on its own


def test_single_graph_predicts_without_its_prompt_file(export_a, shared_a, tmp_path, capsys, monkeypatch):
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(export_a.onnx_path, alone / "line3.onnx")  # the graph only: no prompts.safetensors anywhere
    x = synthetic_images(3, IMG, seed=5).numpy()
    for p in (open_predictor(None, onnx=alone / "line3.onnx"), open_predictor(alone / "line3.onnx")):
        assert isinstance(p, OnnxPredictor) and p.prompt_path is None
        assert p.classes == ["crack", "ok", "scratch"] and p.img_size == IMG
        _, probs = p.predict_batch(x)
        _, ref = TorchPredictor(export_a.prompt_path).predict_batch(x)
        assert np.abs(probs - ref).max() <= 1e-4
    images = write_images(tmp_path / "imgs", 3, seed=9)
    code, _out, err = run_cli(["predict", "--onnx", alone / "line3.onnx", tmp_path / "imgs", "--out",
                              tmp_path / "p.csv"], capsys, monkeypatch)
    assert code == 0, err
    rows = read_rows(tmp_path / "p.csv")
    assert [r["status"] for r in rows] == ["ok"] * 3 and {r["label"] for r in rows} <= {"crack", "ok", "scratch"}
    # the same rows as with the prompt file: preprocessing really comes from the graph's metadata
    expected = [r.label for r in predict_files(open_predictor(export_a.out_dir), images)]
    assert [r["label"] for r in rows] == expected
    # a shared-backbone graph still needs the prompt file, and says so
    with pytest.raises(PredictorError, match="shared-backbone graph.*--prompt-file"):
        open_predictor(None, onnx=shared_a.onnx_path)


# ------------------------------------------------------------------ IR version for older runtimes


def test_ir_version_follows_the_opset():
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for opset, ir in ((14, 7), (17, 8), (18, 8), (19, 9), (20, 9), (21, 10)):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 10 if opset < 21 else 11  # what a current exporter stamps
        assert export_mod.stamp_ir_version(m) == ir == m.ir_version
        onnx.checker.check_model(m, full_check=True)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 7  # never raised
    assert export_mod.stamp_ir_version(m) == 7
    assert export_mod.min_onnxruntime(17, 8) == "1.13"
    assert export_mod.min_onnxruntime(20, 9) == "1.17"
    assert export_mod.min_onnxruntime(20, 10) == "1.18"  # an IR 10 graph needs 1.18 whatever its opset
    assert export_mod.min_onnxruntime(99, 9) == ""


def test_lowest_supported_opset_exports_with_parity(prompt_a, tmp_path, capsys, monkeypatch):
    low = export_mod.MIN_OPSET
    code, out, err = run_cli(["export", prompt_a, "--out", tmp_path / "low", "--opset", low], capsys, monkeypatch)
    assert code == 0, err
    m = onnx.load(tmp_path / "low" / "model.onnx")
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == low
    assert m.ir_version == 7
    oldest = export_mod.ORT_FOR_OPSET[low]
    assert f"opset {low} (IR 7, loads in ONNX Runtime {oldest} or later)" in " ".join(out.split())
    assert {p.key: p.value for p in m.metadata_props}["vptcli.min_onnxruntime"] == oldest
    x = synthetic_images(4, IMG, seed=21).numpy()
    lo, _ = open_predictor(tmp_path / "low").predict_batch(x)  # the current runtime
    lt, _ = open_predictor(prompt_a).predict_batch(x)
    assert np.abs(lo - lt).max() <= 1e-4 and (lo.argmax(1) == lt.argmax(1)).all()
    with pytest.raises(ExportError, match=f"lowest opset vpt can export is {low}"):
        export_onnx(prompt_a, tmp_path / "lower", opset=low - 1)
    assert not (tmp_path / "lower").exists()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("VPT_OLD_ORT_PYTHON"),
                    reason="set VPT_OLD_ORT_PYTHON to a Python with an older onnxruntime (e.g. 1.17)")
def test_graphs_load_in_an_older_onnxruntime(export_a, prompt_a, tmp_path):
    """Optional: run the default and opset-17 graphs in another Python's (older) ONNX Runtime."""
    import os
    import subprocess

    r17 = export_onnx(prompt_a, tmp_path / "op17", opset=17)
    x = synthetic_images(3, IMG, seed=3).numpy()
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "x = np.load(sys.argv[1])\n"
        "for i, p in enumerate(sys.argv[2:]):\n"
        "    s = ort.InferenceSession(p, providers=['CPUExecutionProvider'])\n"
        "    np.save(f'{sys.argv[1]}.{i}.npy', s.run(['logits'], {'images': x})[0])\n"
    )
    graphs = [str(export_a.onnx_path), str(r17.onnx_path)]
    subprocess.run([os.environ["VPT_OLD_ORT_PYTHON"], "-c", script, str(tmp_path / "x.npy"), *graphs], check=True)
    ref, _ = open_predictor(prompt_a).predict_batch(x)
    for i in range(len(graphs)):
        assert np.abs(np.load(tmp_path / f"x.npy.{i}.npy") - ref).max() <= 1e-4


# ------------------------------------------------------------------- one warning means one line


def test_cuda_fallback_is_one_line_of_ours_and_none_of_the_runtimes(export_a, tmp_path, capfd, monkeypatch):
    """ONNX Runtime's own provider noise (written to file descriptor 2 by native code) is captured;
    the user sees exactly one warning line, whatever the console width."""
    import os

    import onnxruntime as ort

    real_session = ort.InferenceSession
    noise = (
        b"2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2251 TryGetProviderInfo_CUDA]\n"
        b"Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.12: cannot open "
        b"shared object file: No such file or directory\n"
        b"[W:onnxruntime:Default, onnxruntime_pybind_state.cc:1024] Failed to create CUDAExecutionProvider. "
        b"Require cuDNN 9.* and CUDA 12.*, and the latest MSVC runtime.\n"
    )

    class NoisySession:
        def __new__(cls, path, opts=None, providers=None):
            os.write(2, noise)  # as the native provider bridge does
            return real_session(path, opts, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", NoisySession)
    monkeypatch.setenv("COLUMNS", "80")
    write_images(tmp_path / "imgs", 2)
    code, _out, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--out", tmp_path / "p.csv"],
                              capfd, monkeypatch)
    assert code == 0, err
    assert "onnxruntime" not in err.lower().replace("onnx runtime", "")  # none of the runtime's own lines
    warnings_ = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "CUDA not used" in warnings_[0] and "CPUExecutionProvider" in warnings_[0]
    following = err.splitlines()[err.splitlines().index(warnings_[0]) + 1]
    assert following.startswith("onnx backend on")  # the warning did not wrap onto a second line


# ------------------------------------------------------------------------------------ full disk


def test_export_on_a_full_disk_changes_nothing_and_names_the_bytes(prompt_a, export_a, tmp_path, monkeypatch):
    import errno
    import shutil

    from vptcli import fsutil

    folder = tmp_path / "export"
    shutil.copytree(export_a.out_dir, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    usage = type("Usage", (), {"total": 10**9, "used": 10**9 - 4096, "free": 4096})
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda _p: usage)
    with pytest.raises(fsutil.DiskFullError, match=r"model\.onnx: not enough disk space.*bytes needed, 4,096 free"):
        export_onnx(prompt_a, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    monkeypatch.undo()
    # the disk fills up while the second file is written: neither file changes, no temp file is left
    calls = {"n": 0}
    real_fsync = fsutil.os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    other = make_prompt_file(tmp_path / "other.safetensors", load_backbone("test_vit", weights="random", img_size=IMG),
                             ["x", "y"], seed=8)
    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    with pytest.raises(fsutil.DiskFullError):
        export_onnx(other, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_export_folder_without_its_graph_is_an_error_not_torch(export_a, tmp_path, capsys, monkeypatch):
    import shutil

    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(export_a.prompt_path, folder / "prompts.safetensors")  # as a failed export used to leave it
    (folder / ".model.onnx.abc123.tmp").write_bytes(b"partial")
    with pytest.raises(PredictorError, match="export folder without its graph.*model.onnx is missing.*--backend torch"):
        open_predictor(folder)
    write_images(tmp_path / "imgs", 1)
    code, out, err = run_cli(["predict", folder, tmp_path / "imgs"], capsys, monkeypatch)
    assert code == 2 and "export folder without its graph" in " ".join(err.split()) and out == ""
    assert isinstance(open_predictor(folder, backend="torch"), TorchPredictor)  # asked for explicitly


def test_predict_threads_option(export_a, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "imgs", 2)
    code, _out, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--threads", "1", "--out",
                               tmp_path / "p.csv"], capsys, monkeypatch)
    assert code == 0, err
    assert [r["status"] for r in read_rows(tmp_path / "p.csv")] == ["ok", "ok"]
    p = open_predictor(export_a.out_dir, threads=2)
    assert p.session.get_session_options().intra_op_num_threads == 2
    code, _out, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--threads", "0"], capsys, monkeypatch)
    assert code == 2 and "--threads" in err


# ------------------------------------------------------------------------------ smaller frictions


def test_predict_table_fits_80_columns_with_file_names_ellipsised_from_the_left():
    from rich.console import Console

    from vptcli.commands.render import left_ellipsis, predictions_table
    from vptcli.inference import PredictionRow

    rows = [
        PredictionRow("/data/line-3/2026-05-04/camera-left/very/deep/folder/module_000123_cell_07_el.png", "crack",
                      0.912, [("crack", 0.912), ("ok", 0.088)]),
        PredictionRow("short.png", None, 0.51, [("ok", 0.51)], "review", "confidence 0.510 < 0.8 (top-1 ok)"),
        PredictionRow("gone.png", None, None, [], "error", "missing: no such file or folder"),
    ]
    predictor = type("P", (), {"backend": "onnx", "device": "CPUExecutionProvider"})()
    console = Console(width=80, record=True, force_terminal=False)
    console.print(predictions_table(rows, predictor, 80))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    body = [line for line in lines if "png" in line]
    assert len(body) == 3  # one line per row: nothing wraps or repeats
    assert "module_000123_cell_07_el.png" in body[0] and "…" in body[0] and "0.912" in body[0]
    assert "review" in body[1] and "error" in body[2]
    assert "top" not in console.export_text() and "missing: no such file" not in console.export_text()  # CSV only
    assert left_ellipsis("abcdef", 4) == "…def" and left_ellipsis("abc", 4) == "abc"


def test_predict_says_the_model_is_missing_before_scanning(tmp_path, capsys, monkeypatch):
    from vptcli import inference

    def never(*_a, **_k):
        raise AssertionError("the folder was scanned before the model was checked")

    monkeypatch.setattr(inference, "expand_inputs", never)
    write_images(tmp_path / "imgs", 1)
    code, _out, err = run_cli(["predict", tmp_path / "no-model", tmp_path / "imgs"], capsys, monkeypatch)
    assert code == 2 and "MODEL" in err and "no-model: no such file or folder" in " ".join(err.split())


def test_summary_says_one_file(export_a, tmp_path, capsys, monkeypatch):
    (path,) = write_images(tmp_path / "imgs", 1)
    code, out, err = run_cli(["predict", export_a.out_dir, path, "--out", tmp_path / "p.csv"], capsys, monkeypatch)
    assert code == 0, err
    assert "1 file: 1 ok" in out and "1 files" not in out


def test_predict_says_what_is_missing_and_refuses_a_model_folder_as_images(export_a, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "imgs", 2)
    cases = (([], "no MODEL given"),
             ([export_a.out_dir], "no PATH given: pass image files, folders or glob patterns after MODEL"),
             (["--onnx", export_a.onnx_path], "no PATH given: pass image files, folders or glob patterns with --onnx GRAPH"),
             ([export_a.out_dir, tmp_path / "imgs", export_a.out_dir], "is a run or export folder"),
             (["--onnx", export_a.onnx_path, export_a.out_dir], "with --onnx the graph predicts"))
    for args, message in cases:
        code, _, err = run_cli(["predict", *args], capsys, monkeypatch)
        assert code == 2 and message in " ".join(err.split()), (args, err)
    code, _, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--out", tmp_path / "p.csv"], capsys, monkeypatch)
    assert code == 0 and len(read_rows(tmp_path / "p.csv")) == 2, err
    # an image given as MODEL is said to be one
    code, _, err = run_cli(["predict", tmp_path / "imgs" / "img_00.png", tmp_path / "imgs"], capsys, monkeypatch)
    assert code == 2 and "an image, not a model" in " ".join(err.split()), err


def test_predict_out_replaces_only_an_earlier_predict_output(export_a, tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "imgs", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,ok\n")
    notes = tmp_path / "notes.jsonl"
    notes.write_text('{"note": 1}\n')
    (tmp_path / "a-folder.csv").mkdir()
    for other in (labels, notes, tmp_path / "a-folder.csv"):
        before = other.read_text() if other.is_file() else None
        code, _, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--out", other], capsys, monkeypatch)
        assert code == 2 and "not an earlier output of vpt predict" in " ".join(err.split()), err
        assert before is None or other.read_text() == before  # kept as it was
    for name in ("p.csv", "p.jsonl"):
        for _ in range(2):  # the second run replaces the first one's rows
            code, _, err = run_cli(["predict", export_a.out_dir, tmp_path / "imgs", "--out", tmp_path / name], capsys, monkeypatch)
            assert code == 0 and len(read_rows(tmp_path / name)) == 2, err


def test_predict_names_the_first_failing_files_and_counts_the_rest(tmp_path, capsys):
    from types import SimpleNamespace

    from vptcli.commands.predict import ERROR_LINES
    from vptcli.commands.render import print_predictions
    from vptcli.inference import PredictionRow

    failed = [PredictionRow(path=f"lot[1]/img_{i}.png", label=None, confidence=None, top_k=[], status="error",
                            reason="truncated or corrupt") for i in range(ERROR_LINES)]
    predictor = SimpleNamespace(backend="onnx", device="cpu", ood=None)
    print_predictions(predictor, {"ok": 3, "review": 0, "unfamiliar": 0, "error": ERROR_LINES + 2}, [],
                      tmp_path / "p[1].csv", failed)
    err = " ".join(capsys.readouterr().err.split())
    assert "error: lot[1]/img_0.png: truncated or corrupt" in err and f"img_{ERROR_LINES - 1}.png" in err
    assert f"… 2 more error rows in {tmp_path / 'p[1].csv'}" in err
