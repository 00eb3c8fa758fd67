"""Evaluation metrics against values computed by hand (no sklearn in the expectations)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from vptcli import metrics
from vptcli.errors import VptError

REQUIRED_KEYS = {
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "per_class",
    "confusion_matrix",
    "ece",
    "n_images",
    "classes",
}

# --- a tiny fixed 3-class case ------------------------------------------------------------------
# classes 0 "ok", 1 "crack", 2 "finger"
#   image  true  pred  top-1 conf  correct   ECE bin (15 bins of width 1/15 = 0.0667)
#   0      0     0     0.95        yes       (0.9333, 1.0000]
#   1      0     0     0.95        yes       (0.9333, 1.0000]
#   2      0     1     0.55        no        (0.5333, 0.6000]
#   3      1     1     0.55        yes       (0.5333, 0.6000]
#   4      1     2     0.75        no        (0.7333, 0.8000]
#   5      2     2     0.75        yes       (0.7333, 0.8000]
CLASSES3 = ["ok", "crack", "finger"]
Y3 = np.array([0, 0, 0, 1, 1, 2])
P3 = np.array(
    [
        [0.95, 0.03, 0.02],
        [0.95, 0.02, 0.03],
        [0.25, 0.55, 0.20],
        [0.20, 0.55, 0.25],
        [0.15, 0.10, 0.75],
        [0.10, 0.15, 0.75],
    ]
)
# confusion matrix (rows true, cols predicted):
#   ok:     2 1 0
#   crack:  0 1 1
#   finger: 0 0 1
CM3 = [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
# accuracy = correct / N = (2 + 1 + 1) / 6
ACC3 = 4 / 6
# recall = diagonal / row sum: ok 2/3, crack 1/2, finger 1/1
# precision = diagonal / column sum: ok 2/2, crack 1/2, finger 1/2
# F1 = 2PR/(P+R): ok 2*1*(2/3)/(5/3) = 4/5, crack 2*(1/4)/1 = 1/2, finger 2*(1/2)/(3/2) = 2/3
PER3 = {
    "ok": {"precision": 1.0, "recall": 2 / 3, "f1": 4 / 5, "support": 3},
    "crack": {"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2},
    "finger": {"precision": 1 / 2, "recall": 1.0, "f1": 2 / 3, "support": 1},
}
# balanced accuracy = mean recall = (2/3 + 1/2 + 1) / 3 = (4/6 + 3/6 + 6/6) / 3 = 13/18
BAL3 = 13 / 18
# macro-F1 = mean F1 = (4/5 + 1/2 + 2/3) / 3 = (24/30 + 15/30 + 20/30) / 3 = 59/90
MACRO_F1_3 = 59 / 90
# ECE: three bins of 2 images each (weight 2/6):
#   conf 0.95: acc 2/2 = 1.0, gap |1.00 - 0.95| = 0.05
#   conf 0.55: acc 1/2 = 0.5, gap |0.50 - 0.55| = 0.05
#   conf 0.75: acc 1/2 = 0.5, gap |0.50 - 0.75| = 0.25
#   ECE = 2/6 * (0.05 + 0.05 + 0.25) = 0.35 / 3
ECE3 = 0.35 / 3


def test_three_class_metrics_match_hand_computation():
    r = metrics.classification_report(Y3, P3, CLASSES3)
    assert set(r) == REQUIRED_KEYS  # no roc_auc / pr_auc for 3 classes
    assert r["accuracy"] == pytest.approx(ACC3)
    assert r["balanced_accuracy"] == pytest.approx(BAL3)
    assert r["macro_f1"] == pytest.approx(MACRO_F1_3)
    assert r["confusion_matrix"] == CM3
    assert r["ece"] == pytest.approx(ECE3)
    assert r["n_images"] == 6
    assert r["classes"] == CLASSES3
    assert list(r["per_class"]) == CLASSES3
    for name, expected in PER3.items():
        got = r["per_class"][name]
        assert set(got) == {"precision", "recall", "f1", "support"}
        for key in ("precision", "recall", "f1"):
            assert got[key] == pytest.approx(expected[key]), (name, key)
        assert got["support"] == expected["support"]
        assert type(got["support"]) is int
    # plain JSON types only, no NaN
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_absent_class_keeps_its_row_and_zero_scores():
    # class 2 never occurs nor is predicted: its row/column are zeros, P/R/F1 = 0 (zero_division=0)
    y = np.array([0, 1, 1])
    p = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.7, 0.3, 0.0]])
    r = metrics.classification_report(y, p, ["a", "b", "c"])
    assert r["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # recall a = 1/1, b = 1/2; balanced accuracy over present classes = (1 + 1/2) / 2 = 3/4
    assert r["balanced_accuracy"] == pytest.approx(0.75)
    # F1 a = 2*(1/2)*1/(3/2) = 2/3, b = 2*1*(1/2)/(3/2) = 2/3, c = 0 -> macro (2/3+2/3+0)/3 = 4/9
    assert r["macro_f1"] == pytest.approx(4 / 9)


# --- binary case ----------------------------------------------------------------------------------
# y = [0, 0, 1, 1], P(class 1) = [0.1, 0.6, 0.4, 0.8]
# ROC-AUC = fraction of (positive, negative) pairs ranked correctly:
#   (0.4 > 0.1) yes, (0.4 > 0.6) no, (0.8 > 0.1) yes, (0.8 > 0.6) yes -> 3/4
# PR-AUC (average precision, sum over ranks of (R_k - R_{k-1}) * P_k), sorted by score:
#   0.8 pos: P = 1/1, R = 1/2 -> + 1/2 * 1
#   0.6 neg: P = 1/2, R = 1/2 -> + 0
#   0.4 pos: P = 2/3, R = 2/2 -> + 1/2 * 2/3
#   0.1 neg: recall unchanged  -> + 0          => AP = 1/2 + 1/3 = 5/6
# top-1 predictions [0, 1, 0, 1] -> accuracy 2/4
YB = np.array([0, 0, 1, 1])
SB = np.array([0.1, 0.6, 0.4, 0.8])
PB = np.stack([1 - SB, SB], axis=1)


def test_binary_roc_and_pr_auc_match_hand_computation():
    r = metrics.classification_report(YB, PB, ["good", "defect"])
    assert set(r) == REQUIRED_KEYS | {"roc_auc", "pr_auc"}
    assert r["roc_auc"] == pytest.approx(3 / 4)
    assert r["pr_auc"] == pytest.approx(5 / 6)
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["confusion_matrix"] == [[1, 1], [1, 1]]


def test_binary_single_class_gives_none_auc_with_reason():
    y = np.array([1, 1, 1])
    p = np.array([[0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    r = metrics.classification_report(y, p, ["good", "defect"])
    assert r["roc_auc"] is None and r["pr_auc"] is None
    assert "defect" in r["auc_note"]
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["confusion_matrix"] == [[0, 0], [1, 2]]
    json.dumps(r, allow_nan=False)


def test_empty_input_raises():
    with pytest.raises(ValueError, match="N == 0"):
        metrics.classification_report(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(VptError):  # the CLI turns it into a clear message
        metrics.classification_report(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([], [])


@pytest.mark.parametrize(
    ("y", "p", "classes"),
    [
        (np.array([0, 1]), np.array([[0.5, 0.5]]), ["a", "b"]),  # N differs
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"]),  # label out of range
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), ["a", "b"]),  # logits, not probs
        (np.array([0, 1]), np.array([[0.6, 0.6], [0.5, 0.5]]), ["a", "b"]),  # row sums to 1.2
        (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b", "c"]),  # C mismatch
        (np.array([0.0, 1.0]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"]),  # float labels
    ],
)
def test_bad_inputs_raise_value_error(y, p, classes):
    with pytest.raises(ValueError):
        metrics.classification_report(y, p, classes)


# --- ECE on its own -------------------------------------------------------------------------------
def test_ece_hand_values():
    # one bin: mean conf 0.9, accuracy 3/4 -> |0.75 - 0.9| = 0.15
    assert metrics.expected_calibration_error([0.9] * 4, [1, 1, 1, 0]) == pytest.approx(0.15)
    # perfectly calibrated bins: conf 0.5 with 1/2 right, conf 1.0 always right -> 0
    assert metrics.expected_calibration_error([0.5, 0.5, 1.0], [1, 0, 1]) == pytest.approx(0.0)
    # bin edges belong to the lower bin: with 2 bins, 0.5 is in (0, 0.5] and 0.9 in (0.5, 1]
    #   -> 1/2 * |1 - 0.5| + 1/2 * |0 - 0.9| = 0.25 + 0.45 = 0.7
    #   (had 0.5 gone to the upper bin: one bin, |1/2 - 0.7| = 0.2)
    assert metrics.expected_calibration_error([0.5, 0.9], [True, False], n_bins=2) == pytest.approx(0.7)
    # confidence exactly 0 goes into the first bin: |0 - 0| = 0
    assert metrics.expected_calibration_error([0.0], [0], n_bins=15) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError):
        metrics.expected_calibration_error([0.5], [1], n_bins=0)


# --- artefacts ------------------------------------------------------------------------------------
def test_write_report_files(tmp_path):
    r = metrics.classification_report(Y3, P3, CLASSES3)
    context = {"prompt file": "runs/x/prompts.safetensors", "data": "data|split=test"}
    paths = metrics.write_report(r, tmp_path / "eval", title="ELPV test split", context=context)
    assert set(paths) == {"report.json", "report.md", "confusion_matrix.png"}
    assert all(p.parent == tmp_path / "eval" and p.name == name for name, p in paths.items())

    saved = json.loads(paths["report.json"].read_text(encoding="utf-8"))
    assert REQUIRED_KEYS <= set(saved)
    assert saved["confusion_matrix"] == CM3
    assert saved["ece"] == pytest.approx(ECE3)

    with Image.open(paths["confusion_matrix.png"]) as im:
        assert im.format == "PNG"
        assert im.size[0] > 0 and im.size[1] > 0

    md = paths["report.md"].read_text(encoding="utf-8")
    assert md.startswith("# ELPV test split\n")
    assert "runs/x/prompts.safetensors" in md and "data\\|split=test" in md  # pipe escaped
    assert f"| top-1 accuracy | {ACC3:.4f} |" in md
    assert "| ok | 1.0000 | 0.6667 | 0.8000 | 3 |" in md
    assert "| crack | 0 | 1 | 1 |" in md  # confusion-matrix row of the true class "crack"
    assert "confusion_matrix.png" in md
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "confusion_matrix.png",
        "report.json",
        "report.md",
    ]


def test_png_with_long_unicode_and_dollar_names(tmp_path):
    names = ["gut", "Riss – Mikroriss über Busbar", "$cost$ 50% [bold]", "裂纹"]
    cm = [[5, 0, 1, 0], [0, 3, 0, 0], [0, 0, 0, 0], [2, 0, 0, 7]]
    path = metrics.confusion_matrix_png(cm, names, tmp_path / "sub" / "cm.png", title="Prüfung $x$")
    with Image.open(path) as im:
        im.verify()
    with pytest.raises(ValueError):
        metrics.confusion_matrix_png([[1, 2]], ["a", "b"], tmp_path / "bad.png")


def test_render_report_prints_tables_literally():
    names = ["ok", "[bold]crack[/bold]"]
    r = metrics.classification_report(YB, PB, names)
    buf = io.StringIO()
    from vptcli.commands.render import print_eval_report

    print_eval_report(r, Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert "[bold]crack[/bold]" in text  # no markup interpretation of class names
    assert "ROC-AUC" in text and "0.7500" in text
    assert "balanced accuracy" in text and "support" in text


def test_report_markdown_without_context_and_binary_note():
    y = np.array([0, 0])
    p = np.array([[0.9, 0.1], [0.4, 0.6]])
    r = metrics.classification_report(y, p, ["good", "defect"])
    md = metrics.report_markdown(r, title="t")
    assert "| ROC-AUC | n/a |" in md and "undefined" in md
    assert not math.isnan(r["ece"])
