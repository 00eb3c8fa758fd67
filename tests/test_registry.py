"""`vpt registry`: publish, list, show, promote (the gate), rollback, log, verify; the append-only
audit log; parallel publishers; a copied registry; `vpt predict --registry`.

Tiny backbone (timm's `test_vit`, random weights) on the synthetic two-class tree of conftest.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import build_tree

REPO = Path(__file__).resolve().parents[1]
TINY = {"backbone": "test_vit", "weights": "random", "img_size": 32, "epochs": 6, "lr": 3e-2, "batch_size": 4, "augment": False,
            "device": "cpu", "workers": 0}


def _train(data_root: Path, run: Path, seed: int = 0) -> Path:
    """Train a tiny VPT run on ``data_root`` (ingested in place of a raw tree); returns the run folder."""
    from vptcli.backbones import load_backbone
    from vptcli.datasets import with_resize
    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    manifest = ingest_folder(data_root, val_fraction=0.25, test_fraction=0.0, progress=False).manifest
    cfg = TrainConfig(seed=seed, **TINY)
    bb = load_backbone("test_vit", weights="random", img_size=32)
    bb.data_config = with_resize(bb.data_config, "crop")  # see test_cli_train_eval: the crop offsets the class boundary
    train(manifest, bb, cfg, run)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two good runs (seeds 0, 1), one run trained with the class names swapped (it predicts the opposite
    class: a worse candidate), and a held-out acceptance folder of new images."""
    root = tmp_path_factory.mktemp("registry")
    good = build_tree(root / "src", names=("good", "scratch"))
    swapped = build_tree(root / "swapped", names=("scratch", "good"))
    accept = build_tree(root / "accept", n_per_class=6, seed=1, names=("good", "scratch"))
    return {"good": _train(good, root / "run_good"), "good2": _train(good, root / "run_good2", seed=1),
            "bad": _train(swapped, root / "run_bad"), "accept": accept, "root": root}


def flat(text: str) -> str:
    """``text`` with line breaks (console wrapping) as single spaces."""
    return " ".join(text.split())


def _log(reg: Path) -> list[dict]:
    con = sqlite3.connect(reg / "registry.sqlite")
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM audit ORDER BY id")]
    con.close()
    return rows


def test_publish_list_show_promote_rollback_log_verify(runs, tmp_path, vpt):
    reg = tmp_path / "reg"
    # a first publish that cannot work leaves no registry folder behind
    (tmp_path / "not-a-run").mkdir()
    for source, task in ((tmp_path / "not-a-run", "line1"), (runs["good"], "bad name!"), (runs["good"], "-x")):
        code, _, err = vpt("registry", "publish", source, "--registry", reg, "--task", task)
        assert code == 2 and not reg.exists(), err
    # a file, or a folder of other files, is not made into a registry
    (tmp_path / "a-file.txt").write_text("x")
    for where, message in ((tmp_path / "a-file.txt", "a file"), (tmp_path / "not-a-run", "holds other files")):
        (tmp_path / "not-a-run" / "keep.txt").write_text("keep")
        code, _, err = vpt("registry", "publish", runs["good"], "--registry", where, "--task", "line1")
        assert code == 2 and message in flat(err) and "--registry" in flat(err)
    assert sorted(p.name for p in (tmp_path / "not-a-run").iterdir()) == ["keep.txt"]
    code, out, err = vpt("registry", "publish", runs["good"], "--registry", reg, "--task", "line1", "--note", "first")
    assert code == 0, err
    assert "published line1 version 1" in out and "first" in out
    assert (reg / "registry.sqlite").is_file() and list((reg / "objects").glob("*/prompts.safetensors"))
    code, out, err = vpt("registry", "publish", runs["good"], "--registry", reg, "--task", "line1")
    assert code == 2 and "already version 1" in flat(err)
    assert vpt("registry", "publish", runs["good2"] / "prompts.safetensors", "--registry", reg, "--task", "line1")[0] == 0
    code, out, _ = vpt("registry", "list", "--registry", reg)
    assert code == 0 and "line1" in out and "2" in out

    # no acceptance set: promote refuses, unless forced with a reason
    code, _, err = vpt("registry", "promote", "line1", "1", "--registry", reg, "--device", "cpu")
    assert code == 2 and "no acceptance set" in flat(err)
    code, out, err = vpt("registry", "set-acceptance", "line1", runs["accept"], "--registry", reg)
    assert code == 0, err
    assert "12 images" in out and "warning" not in flat(err)
    code, out, err = vpt("registry", "promote", "line1", "1", "--registry", reg, "--device", "cpu")
    assert code == 0, err
    assert "gate passed" in out and "production version 1" in out
    code, out, err = vpt("registry", "promote", "line1", "2", "--registry", reg, "--device", "cpu", "--max-drop", "1")
    assert code == 0, err
    code, out, _ = vpt("registry", "show", "line1", "--registry", reg)
    assert code == 0 and "production" in out
    code, out, _ = vpt("registry", "show", "line1", "2", "--registry", reg)
    assert code == 0 and "line1 version 2" in out and "good, scratch" in out

    code, out, err = vpt("registry", "rollback", "line1", "--registry", reg, "--reason", "operator report")
    assert code == 0, err
    assert "from version 2 to version 1" in out
    code, _, err = vpt("registry", "rollback", "line1", "--registry", reg)
    assert code == 2 and "nothing to roll back" in flat(err)
    code, out, _ = vpt("registry", "log", "--registry", reg)
    actions = [line.split()[3] for line in out.strip().splitlines()]
    assert actions == ["publish", "publish", "promote-refused", "set-acceptance", "promote", "promote", "rollback"]
    assert "operator report" in out
    code, out, err = vpt("registry", "verify", "--registry", reg)
    assert code == 0 and "registry ok: 2 version(s)" in out, err
    # the runs' unfamiliar-image references are stored beside the versions' prompt files (not taken for them)
    assert len(list(Path(reg, "objects").rglob("ood_reference.safetensors"))) == 2
    code, _, err = vpt("registry", "show", "nope", "--registry", reg)
    assert code == 2 and "no task 'nope'" in flat(err)


def test_gate_refuses_a_worse_candidate_and_logs_a_forced_promotion(runs, tmp_path, vpt):
    reg = tmp_path / "reg"
    for run in ("good", "bad"):
        assert vpt("registry", "publish", runs[run], "--registry", reg, "--task", "t")[0] == 0
    # an acceptance set of images version 1 was trained on is refused before any scoring
    assert vpt("registry", "set-acceptance", "t", runs["root"] / "src", "--registry", reg)[0] == 0
    code, _, err = vpt("registry", "promote", "t", "1", "--registry", reg, "--device", "cpu")
    assert code == 2 and "were used to train or select version 1" in flat(err)
    refused = _log(reg)[-1]  # a refusal without scores is logged too
    assert refused["action"] == "promote-refused" and "were used to train" in json.loads(refused["detail"])["message"]
    # a class that no version knows (a misnamed folder?) is pinned with a warning
    misnamed = tmp_path / "misnamed"
    shutil.copytree(runs["accept"], misnamed)
    (misnamed / "scratch").rename(misnamed / "Scratch")
    code, _, err = vpt("registry", "set-acceptance", "t", misnamed, "--registry", reg)
    assert code == 0 and "Scratch of the acceptance set: no published version of t knows them yet" in flat(err)
    assert vpt("registry", "set-acceptance", "t", runs["accept"], "--registry", reg, "--reason", "held out")[0] == 0
    assert vpt("registry", "promote", "t", "1", "--registry", reg, "--device", "cpu")[0] == 0
    code, _, err = vpt("registry", "promote", "t", "2", "--registry", reg, "--device", "cpu")
    assert code == 2 and "gate refused version 2" in flat(err)
    code, _, err = vpt("registry", "promote", "t", "2", "--registry", reg, "--force", "--device", "cpu")
    assert code == 2 and "--reason" in flat(err)
    code, out, err = vpt("registry", "promote", "t", "2", "--registry", reg, "--force", "--reason", "line stop test",
                         "--device", "cpu")
    assert code == 0 and "production version 2" in out
    log = _log(reg)
    assert [r["action"] for r in log[-3:]] == ["promote", "promote-refused", "force-promote"]
    code, out, _ = vpt("registry", "log", "--registry", reg)
    assert code == 0 and "reason: held out" in out and "were used to train or select version 1" in flat(out)
    last = log[-1]
    assert last["action"] == "force-promote" and last["version"] == 2
    detail = json.loads(last["detail"])
    assert detail["reason"] == "line stop test"
    assert detail["gate"]["candidate_score"] < detail["gate"]["production_score"]  # the refusal's scores are kept
    assert detail["gate"]["passed"] is False


def test_audit_log_is_append_only(runs, tmp_path, vpt):
    reg = tmp_path / "reg"
    assert vpt("registry", "publish", runs["good"], "--registry", reg, "--task", "t")[0] == 0
    con = sqlite3.connect(reg / "registry.sqlite")
    for sql in ("UPDATE audit SET user='someone else'", "DELETE FROM audit", "UPDATE versions SET note='x'",
                "DELETE FROM versions"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only|immutable"):
            con.execute(sql)
    # with the triggers dropped, a changed entry still shows: the hash chain breaks
    con.execute("DROP TRIGGER audit_no_update")
    con.execute("UPDATE audit SET user='someone else'")
    con.commit()
    con.close()
    code, _, err = vpt("registry", "verify", "--registry", reg)
    assert code == 1 and "hash chain is broken" in flat(err)


def test_copied_registry_verifies_and_a_changed_file_is_found(runs, tmp_path, vpt):
    reg = tmp_path / "reg"
    assert vpt("registry", "publish", runs["good"], "--registry", reg, "--task", "t")[0] == 0
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(reg, copy)
    shutil.rmtree(reg)
    code, out, err = vpt("registry", "verify", "--registry", copy)
    assert code == 0 and "registry ok" in out, err
    stored = next((copy / "objects").glob("*/prompts.safetensors"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    code, _, err = vpt("registry", "verify", "--registry", copy)
    assert code == 1 and "does not match its sha256" in flat(err)


PUBLISHER = textwrap.dedent("""
    import sys
    from vptcli.registry import RegistryError, open_registry
    reg = open_registry(sys.argv[1], create=True)
    last = None
    for path in sys.argv[3:]:
        last = reg.publish(path, "shared", note=sys.argv[2])
    for attempt in range(50):  # the production version may change while the gate runs: promote again, as told
        try:
            reg.promote("shared", last.version, force=True, reason="parallel test " + sys.argv[2])
            break
        except RegistryError as exc:
            if "changed while the gate ran" not in str(exc):
                raise
""")


def _variant(src: Path, out: Path, i: int) -> Path:
    """A copy of prompt file ``src`` whose bytes differ (another creation time), same tensors."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    m = json.loads(meta["vptcli"])
    m["created"] = f"2026-01-01T00:00:{i:02d}+00:00"
    meta["vptcli"] = json.dumps(m)
    save_file(load_file(str(src)), str(out), metadata=meta)
    return out


def test_parallel_publishers_leave_a_consistent_registry(runs, tmp_path, vpt):
    src = runs["good"] / "prompts.safetensors"
    files = [_variant(src, tmp_path / f"p{i}.safetensors", i) for i in range(12)]
    reg = tmp_path / "reg"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(reg), f"w{w}", *map(str, files[3 * w: 3 * w + 3])],
                              env=env, stderr=subprocess.PIPE, text=True) for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    con = sqlite3.connect(reg / "registry.sqlite")
    versions = sorted(r[0] for r in con.execute("SELECT version FROM versions WHERE task='shared'"))
    promotions = con.execute("SELECT COUNT(*) FROM promotions").fetchone()[0]
    con.close()
    assert versions == list(range(1, 13))
    assert promotions == 4
    log = _log(reg)
    assert [r["id"] for r in log] == list(range(1, 17))
    assert sum(r["action"] == "publish" for r in log) == 12 and sum(r["action"] == "force-promote" for r in log) == 4
    code, out, err = vpt("registry", "verify", "--registry", reg)
    assert code == 0 and "12 version(s)" in out, err


def test_predict_with_registry_records_task_version_and_digest(runs, tmp_path, vpt, monkeypatch):
    reg = tmp_path / "reg"
    assert vpt("registry", "publish", runs["good"], "--registry", reg, "--task", "t")[0] == 0
    assert vpt("registry", "publish", runs["good2"], "--registry", reg, "--task", "t")[0] == 0
    code, _, err = vpt("predict", "--registry", reg, "--task", "t", runs["accept"], "--device", "cpu")
    assert code == 2 and "no production version" in flat(err)
    assert vpt("registry", "promote", "t", "2", "--registry", reg, "--force", "--reason", "no acceptance set yet",
               "--device", "cpu")[0] == 0
    out_csv = tmp_path / "rows.csv"
    code, _, err = vpt("predict", "--registry", reg, "--task", "t", runs["accept"], "--out", out_csv, "--device", "cpu")
    assert code == 0, err
    rows = list(csv.DictReader(out_csv.open()))
    digest = json.loads(_log(reg)[1]["detail"])["digest"]
    assert len(rows) == 12
    assert {(r["task"], r["version"], r["prompt_sha256"]) for r in rows} == {("t", "2", digest)}
    code, _, err = vpt("predict", "--registry", reg, runs["accept"])
    assert code == 2 and "--task" in flat(err)
    # TASK@VERSION picks a version that is not in production; VPT_REGISTRY stands for --registry
    monkeypatch.setenv("VPT_REGISTRY", str(reg))
    code, _, err = vpt("predict", "--task", "t@1", runs["accept"], "--out", tmp_path / "v1.csv", "--device", "cpu")
    assert code == 0, err
    assert {r["version"] for r in csv.DictReader((tmp_path / "v1.csv").open())} == {"1"}
    code, _, err = vpt("predict", runs["good"], runs["accept"], "--out", tmp_path / "plain.csv", "--device", "cpu")
    assert code == 0, err  # VPT_REGISTRY alone leaves a plain predict alone
    assert "task" not in next(csv.DictReader((tmp_path / "plain.csv").open()))
    for bad in ("t@x", "t@0", "@1"):
        code, _, err = vpt("predict", "--registry", reg, "--task", bad, runs["accept"])
        assert code == 2 and "TASK@VERSION" in flat(err)
    # no PATH, or a run folder given as a PATH (its plots would be read as images): said plainly
    code, _, err = vpt("predict", "--task", "t")
    assert code == 2 and "no PATH given" in flat(err) and "with --task TASK" in flat(err)
    code, _, err = vpt("predict", "--task", "t", runs["good"], runs["accept"])
    assert code == 2 and "is a run or export folder" in flat(err) and "--registry/--task" in flat(err)
    code, _, err = vpt("predict")
    assert code == 2 and "no MODEL given" in flat(err)


def test_a_new_registry_is_made_at_its_first_write(tmp_path):
    from vptcli.registry import RegistryError, open_registry

    reg = open_registry(tmp_path / "reg", create=True)
    with pytest.raises(RegistryError, match="no prompt registry here"):
        reg.tasks()
    with pytest.raises(RegistryError, match="no prompt registry here"):
        reg.versions("t")
    assert not (tmp_path / "reg").exists()
