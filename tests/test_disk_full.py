"""A full disk loses nothing and says what it needed: vptcli.fsutil, train, predict rows (synthetic
disk-full conditions: a patched free-space figure or ENOSPC raised by the OS calls)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from vptcli import fsutil
from vptcli.fsutil import DiskFullError, atomic_write_all, atomic_write_bytes

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def small_disk(monkeypatch, free: int) -> None:
    usage = type("Usage", (), {"total": 10 * free + 1, "used": 9 * free, "free": free})
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda _p: usage)


def test_write_refused_before_writing_when_space_is_short(tmp_path, monkeypatch):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    small_disk(monkeypatch, 3_000_000)
    with pytest.raises(DiskFullError) as info:
        atomic_write_bytes(target, b"x" * 5_000_000)
    msg = str(info.value)
    assert str(target) in msg and "5,000,000 bytes needed" in msg and "3,000,000 free" in msg
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_in", ["write", "fsync", "close"])
def test_disk_filling_up_while_writing_leaves_old_file_and_no_temp(tmp_path, monkeypatch, fail_in):
    target = tmp_path / "state.json"
    target.write_text("old")
    if fail_in == "fsync":
        monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
        with pytest.raises(DiskFullError, match="state.json: not enough disk space"):
            atomic_write_bytes(target, b"new")
    else:
        # the write fails, and so does the final flush when the file is closed (as on a full disk)
        class Full:
            def __init__(self, real):
                self.real = real

            def write(self, _data):
                raise ENOSPC

            def close(self):
                self.real.close()
                if fail_in == "close":
                    raise ENOSPC

            def __getattr__(self, name):
                return getattr(self.real, name)

        f = fsutil.AtomicFile(target, "wb")
        f.file = Full(f.file)
        with pytest.raises(DiskFullError), f as fh:
            fh.write(b"new")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_write_all_is_all_or_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "model.onnx", tmp_path / "prompts.safetensors"
    a.write_bytes(b"old graph")
    b.write_bytes(b"old prompts")
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync_second_fails(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ENOSPC
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync_second_fails)
    with pytest.raises(DiskFullError, match="prompts.safetensors"):
        atomic_write_all({a: b"new graph", b: b"new prompts"})
    assert a.read_bytes() == b"old graph" and b.read_bytes() == b"old prompts" and leftovers(tmp_path) == []
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    atomic_write_all({a: b"new graph", b: b"new prompts"})
    assert a.read_bytes() == b"new graph" and b.read_bytes() == b"new prompts"


def test_train_on_a_full_disk_says_so_and_leaves_no_temp_file(tmp_path, monkeypatch, vpt, make_tree):
    from test_cli_train_eval import TINY

    src = make_tree(tmp_path / "src", n_per_class=4, size=32)
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    code, _out, err = vpt("train", src, "--out", tmp_path / "run", *TINY,
                              "--epochs", "1", "--batch-size", "4", "--no-augment")
    assert code == 2
    assert "not enough disk space" in err and str(tmp_path / "run") in " ".join(err.split())
    assert leftovers(tmp_path) == []


def test_prediction_rows_survive_a_full_disk(tmp_path):
    from vptcli.inference import PredictionRow, RowWriter

    out = tmp_path / "predictions.csv"
    out.write_text("previous run\n")
    w = RowWriter(out, 2)
    for i in range(3):
        w.write(PredictionRow(f"img_{i}.png", "ok", 0.9, [("ok", 0.9), ("crack", 0.1)]))
    real = w._fh

    class Full:
        def write(self, text):
            return real.write(text)

        def flush(self):
            raise ENOSPC

        def __getattr__(self, name):
            return getattr(real, name)

    w._fh = Full()
    with pytest.raises(DiskFullError) as info:
        w.write(PredictionRow("img_3.png", "ok", 0.9, [("ok", 0.9), ("crack", 0.1)]))
    w.abort()  # what the command does on the way out: nothing left to remove
    partial = tmp_path / "predictions.partial.csv"
    assert "after 3 row(s)" in str(info.value) and str(partial) in str(info.value)
    lines = partial.read_text().splitlines()
    assert lines[0].startswith("path,label,confidence") and [ln.split(",")[0] for ln in lines[1:]] == [
        "img_0.png", "img_1.png", "img_2.png"]
    assert out.read_text() == "previous run\n" and leftovers(tmp_path) == []
