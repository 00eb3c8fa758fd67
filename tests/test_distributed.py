"""Data-parallel training under torchrun: 2 gloo processes on the CPU train the same prompts and head as
one process with the same global batch, and only rank 0 writes the run folder (timm's tiny test_vit)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vptcli.distributed import DistContext, env_context
from vptcli.errors import VptError

REPO = Path(__file__).resolve().parents[1]
TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def test_two_gloo_processes_train_what_one_process_trains(tmp_path, make_tree):
    from vptcli.ingest import ingest_folder

    make_tree(tmp_path / "src", n_per_class=9, size=36)  # 18 images: 13 train (odd: a last global batch of 1)
    ingest_folder(tmp_path / "src", val_fraction=0.25, test_fraction=0.0, seed=0, progress=False).manifest.write(tmp_path / "data")
    # Cached (each rank caches its share of the images), 4 cached views with augmentation, class-weighted
    # loss off (balanced), probe warm start then 2 epochs; batch 4 over 13 images: 3 full global batches + 1 of 1.
    train = ["train", "data", *TINY, "--method", "vpt-deep", "--prompts", "2", "--epochs", "2", "--batch-size", "4",
             "--lr", "3e-2", "--cache", "on", "--cache-views", "2", "--seed", "3", "--workers", "0",
             "--prompt-init", "patch-kmeans"]  # k-means on rank 0, broadcast
    one = _run(["-m", "vptcli", *train, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = _run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                str(_free_port()), "-m", "vptcli", *train, "--out", "two"], tmp_path)
    assert two.returncode == 0, two.stderr + two.stdout

    a = load_file(str(tmp_path / "one" / "prompts.safetensors"))
    b = load_file(str(tmp_path / "two" / "prompts.safetensors"))
    assert set(a) == set(b) == {"prompts", "head.weight", "head.bias"}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
    # the last checkpoint too (tuned tensors and AdamW moments after the final step)
    ca = load_file(str(tmp_path / "one" / "last.ckpt.safetensors"))
    cb = load_file(str(tmp_path / "two" / "last.ckpt.safetensors"))
    assert set(ca) == set(cb)
    for k in ca:
        assert torch.allclose(ca[k], cb[k], atol=1e-5, rtol=1e-3), (k, (ca[k] - cb[k]).abs().max())
    # one set of files: the same names, and the metrics agree (validation reduced across the ranks)
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    rows_a = (tmp_path / "one" / "metrics.csv").read_text().splitlines()
    rows_b = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 4  # header, epoch 0 (probe), 2 epochs
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        va, vb = ra.split(","), rb.split(",")
        for col in (1, 3, 4, 5):  # train loss, val loss, val top-1, val macro-F1
            assert abs(float(va[col]) - float(vb[col])) < 1e-4, (ra, rb)
    assert two.stdout.count("prompt file:") == 1  # rank 0 alone prints

    # Resume: a one-process run stopped after epoch 1, resumed by 2 processes, ends where "one" ended.
    _interrupted_after_epoch_1(tmp_path / "data", tmp_path / "one", tmp_path / "part")
    resumed = _run(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                    str(_free_port()), "-m", "vptcli", "train", "data", "--out", "part", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert (resumed.stdout + resumed.stderr).count("resuming part after epoch 1 of 2") == 1  # from epoch 1, said once
    c = load_file(str(tmp_path / "part" / "last.ckpt.safetensors"))
    for k in ca:
        assert torch.allclose(ca[k], c[k], atol=1e-5, rtol=1e-3), (k, (ca[k] - c[k]).abs().max())


def _interrupted_after_epoch_1(data: Path, like: Path, out: Path) -> None:
    """Train ``like``'s saved settings in this process and stop (as Ctrl-C does) after epoch 1."""
    from vptcli.backbones import load_backbone
    from vptcli.datasets import with_resize
    from vptcli.manifest import Manifest
    from vptcli.train_report import TrainReporter
    from vptcli.training import load_run_config, train

    class StopAfterEpoch1(TrainReporter):
        def epoch_done(self, row, improved):
            if row["epoch"] == 1:
                raise KeyboardInterrupt

    cfg = load_run_config(like)
    bb = load_backbone(cfg.backbone, weights=cfg.weights, img_size=32)
    bb.data_config = with_resize(bb.data_config, "squash")
    with pytest.raises(KeyboardInterrupt):
        train(Manifest.read(data), bb, cfg, out, reporter=StopAfterEpoch1())


def test_shares_cover_every_item_once():
    for world in (1, 2, 3):
        ranks = [DistContext(r, world) for r in range(world)]
        for n in (0, 1, 5, 13):
            spans = [list(c.span(n)) for c in ranks]
            assert sorted(i for sp in spans for i in sp) == list(range(n)) and max(map(len, spans)) - min(map(len, spans)) <= 1
            shards = [c.shard(list(range(n))) for c in ranks]
            assert sorted(i for sh in shards for i in sh) == list(range(n))


def test_env_context():
    assert not env_context({}).enabled
    ctx = env_context({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert ctx.enabled and not ctx.is_main and ctx.local_rank == 1
    with pytest.raises(VptError, match="RANK"):
        env_context({"RANK": "2", "WORLD_SIZE": "2"})


def test_predict_shards_merged_equal_one_run(tmp_path, vpt):
    """--shard 0/2 and 1/2 merged (CSV and JSONL) give the rows of one run, in its order; errors go once."""
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_export_predict import make_prompt_file, write_images

    from vptcli.backbones import load_backbone

    prompt = make_prompt_file(tmp_path / "p.safetensors", load_backbone("test_vit", weights="random", img_size=32),
                              ["a", "b", "c"], seed=1)
    write_images(tmp_path / "imgs" / "x", 4)
    write_images(tmp_path / "imgs" / "y", 3, seed=1)
    (tmp_path / "imgs" / "y" / "broken.png").write_bytes(b"not an image")
    args = ["predict", prompt, tmp_path / "imgs", tmp_path / "missing.png", "--backend", "torch", "--batch-size", "2"]
    for ext in ("csv", "jsonl"):
        assert vpt(*args, "--out", tmp_path / f"one.{ext}")[0] == 1  # a broken file and a missing path: exit 1
        parts = []
        for i in range(2):
            code, _, err = vpt(*args, "--shard", f"{i}/2", "--out", tmp_path / f"s{i}.{ext}")
            assert code in (0, 1), err
            assert f"shard {i}/2" in err
            parts.append(tmp_path / f"s{i}.{ext}")
        code, _, err = vpt("predict-merge", "--out", tmp_path / f"merged.{ext}", *parts)
        assert code == 0, err
        one, merged = (tmp_path / f"one.{ext}").read_text(), (tmp_path / f"merged.{ext}").read_text()
        assert merged == one and len(one.splitlines()) == 9 + (ext == "csv")
        assert "missing.png" in (tmp_path / f"s1.{ext}").read_text() and "missing.png" not in (tmp_path / f"s0.{ext}").read_text()
    code, _, err = vpt(*args, "--shard", "2/2")
    assert code == 2 and "--shard" in err
    code, _, err = vpt("predict-merge", "--out", tmp_path / "m.csv", tmp_path / "s0.jsonl")
    assert code == 2 and ".csv" in err
    for ext in ("csv", "jsonl"):  # a part given twice: the same image in two parts
        code, _, err = vpt("predict-merge", "--out", tmp_path / f"twice.{ext}", tmp_path / f"s0.{ext}", tmp_path / f"s0.{ext}")
        assert code == 2 and "also in" in " ".join(err.split()) and not (tmp_path / f"twice.{ext}").exists()
    (tmp_path / "labels.csv").write_text("file,label\na.png,good\n")
    code, _, err = vpt("predict-merge", "--out", tmp_path / "m2.csv", tmp_path / "labels.csv")
    assert code == 2 and "not an output of vpt predict" in " ".join(err.split())
    code, _, err = vpt("predict-merge", "--out", tmp_path / "labels.csv", tmp_path / "s0.csv")  # not replaced
    assert code == 2 and "not an earlier output of vpt predict" in " ".join(err.split())
    assert (tmp_path / "labels.csv").read_text() == "file,label\na.png,good\n"
    code, _, err = vpt(*args, "--shard", "0/0")
    assert code == 2 and "at least 1" in " ".join(err.split())
