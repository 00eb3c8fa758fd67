"""Export graph hygiene (strict shape inference) and `vpt export --int8` / `vpt predict --int8`, on
timm's tiny test_vit (random weights, 32 px) trained for one epoch on a tiny two-class tree."""

from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest

from vptcli import quantize
from vptcli.backbones import load_backbone
from vptcli.errors import VptError
from vptcli.export import INT8_ONNX_FILE, ONNX_FILE, export_onnx
from vptcli.quantize import QuantizeError

IMG = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of `vpt train` (train_images.json lists its validation images) and its data."""
    from conftest import build_tree

    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    root = tmp_path_factory.mktemp("int8")
    build_tree(root / "src", n_per_class=10, size=36)
    manifest = ingest_folder(root / "src", val_fraction=0.3, test_fraction=0.0, seed=0, progress=False).manifest
    manifest.write(root / "data")
    cfg = TrainConfig(method="vpt-deep", num_prompts=2, epochs=1, batch_size=8, lr=1e-2, backbone="test_vit",
                      weights="random", img_size=IMG, augment=False, cache="off", seed=0)
    train(manifest, load_backbone("test_vit", weights="random", img_size=IMG), cfg, root / "run")
    return root


def test_exported_graph_passes_strict_shape_inference(run, tmp_path):
    r = export_onnx(run / "run", tmp_path / "exp")
    proto = onnx.load(r.onnx_path)
    assert len(proto.graph.value_info) == 0  # the exporter's stale annotations are gone
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)  # raises on a contradiction
    assert r.int8_path is None and not (tmp_path / "exp" / INT8_ONNX_FILE).exists()


def test_int8_export_is_checked_and_predict_uses_it(run, tmp_path, vpt):
    code, out, err = vpt("export", run / "run", "--out", tmp_path / "exp", "--int8")
    assert code == 0, err
    graph = tmp_path / "exp" / INT8_ONNX_FILE
    assert graph.is_file() and (tmp_path / "exp" / ONNX_FILE).is_file()
    assert "int8 check on 6 validation images" in out
    proto = onnx.load(graph)
    ops = {n.op_type for n in proto.graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}  # really quantised
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["vptcli.precision"] == "int8" and "vptcli.classes" in props
    code, out, err = vpt("predict", tmp_path / "exp", run / "src", "--int8", "--out", tmp_path / "p8.csv")
    assert code == 0, err
    assert INT8_ONNX_FILE in err  # the source line names the graph used
    code, out, err = vpt("predict", tmp_path / "exp", run / "src", "--out", tmp_path / "p32.csv")
    assert code == 0, err
    rows8, rows32 = (list(csv.DictReader(tmp_path.joinpath(n).read_text().splitlines())) for n in ("p8.csv", "p32.csv"))
    assert [r["path"] for r in rows8] == [r["path"] for r in rows32] and len(rows8) == 20
    agree = np.mean([a["label"] == b["label"] for a, b in zip(rows8, rows32)])
    assert agree >= 0.9

    # A later export without --int8 into the same folder removes the int8 graph of the earlier model.
    code, _, err = vpt("export", run / "run", "--out", tmp_path / "exp")
    assert code == 0, err
    assert not graph.exists()
    code, _, err = vpt("predict", tmp_path / "exp", run / "src", "--int8")
    assert code == 2 and INT8_ONNX_FILE in err


def test_int8_failing_its_check_writes_nothing(run, tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "MIN_TOP1_AGREEMENT", 1.01)  # no graph can pass
    with pytest.raises(QuantizeError, match=r"top-1 agrees with PyTorch on \d+/6 .*nothing was written"):
        export_onnx(run / "run", tmp_path / "exp", int8=True)
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())


def test_int8_check_data_and_refusals(run, tmp_path):
    r = export_onnx(run / "run" / "prompts.safetensors", tmp_path / "a", int8=True, int8_data=run / "data")
    assert r.int8_check.images == 6 and r.int8_check.source.startswith(str(run / "data"))
    r = export_onnx(run / "run", tmp_path / "b", int8=True, int8_data=run / "src")  # a plain tree: every image
    assert r.int8_check.images == 20 and "left out" not in r.int8_check.source
    import shutil

    shutil.copytree(run / "src", tmp_path / "renamed")
    first = min(p for p in (tmp_path / "renamed").iterdir() if p.is_dir())
    first.rename(first.with_name("Renamed"))
    r = export_onnx(run / "run", tmp_path / "b2", int8=True, int8_data=tmp_path / "renamed")
    assert r.int8_check.images == 10 and "left out: class(es) Renamed, not the model's" in r.int8_check.source
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((run / "run" / "prompts.safetensors").read_bytes())
    with pytest.raises(QuantizeError, match="train_images.json"):
        export_onnx(lone, tmp_path / "c", int8=True)
    with pytest.raises(QuantizeError, match="--fp16"):
        export_onnx(run / "run", tmp_path / "d", int8=True, fp16=True)
    with pytest.raises(QuantizeError, match="pass --int8"):
        export_onnx(run / "run", tmp_path / "e", int8_data=run / "data")
    with pytest.raises(VptError, match="--int8"):
        from vptcli.inference import open_predictor

        open_predictor(run / "run", backend="torch", int8=True)


def test_int8_check_names_missing_and_unreadable_images(run, tmp_path):
    import json
    import shutil

    # the data set moved since training: refused before quantising, naming a listed image
    shutil.copytree(run / "run", tmp_path / "moved")
    listing = tmp_path / "moved" / "train_images.json"
    info = json.loads(listing.read_text())
    listing.write_text(json.dumps({**info, "manifest_root": str(tmp_path / "gone")}))
    with pytest.raises(QuantizeError, match=r"6 of the 6 validation images .* are missing, e.g. .*gone"):
        export_onnx(tmp_path / "moved", tmp_path / "exp", int8=True)
    # a file that cannot be decoded is named; images are read one batch at a time
    good = sorted((run / "src").rglob("*.png"))[:3]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    data_config = load_backbone("test_vit", weights="random", img_size=IMG).data_config
    batches = quantize.image_batches([*good, bad], data_config, batch_size=2)
    first = next(batches)
    assert first.shape == (2, 3, IMG, IMG) and first.dtype == np.float32
    with pytest.raises(QuantizeError, match="bad.png: cannot read"):
        next(batches)
