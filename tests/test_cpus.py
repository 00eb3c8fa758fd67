"""vptcli.cpus: thread and pool sizes follow the CPUs the process may use (affinity, cgroup quota)."""

from __future__ import annotations

import os

import pytest

from vptcli import cpus


def fake_cgroup(tmp_path, v2: str | None = None, v1: tuple[str, str] | None = None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    return tmp_path


def test_cgroup_quota_v2_v1_and_none(tmp_path):
    assert cpus.cgroup_cpu_limit(fake_cgroup(tmp_path / "a", v2="150000 100000")) == 1.5
    assert cpus.cgroup_cpu_limit(fake_cgroup(tmp_path / "b", v2="max 100000")) is None
    assert cpus.cgroup_cpu_limit(fake_cgroup(tmp_path / "c", v1=("200000", "100000"))) == 2.0
    assert cpus.cgroup_cpu_limit(fake_cgroup(tmp_path / "d", v1=("-1", "100000"))) is None
    (tmp_path / "e").mkdir()
    assert cpus.cgroup_cpu_limit(tmp_path / "e") is None


def test_usable_cpus_takes_affinity_and_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: set(range(12)), raising=False)
    monkeypatch.setattr(cpus, "CGROUP_ROOT", fake_cgroup(tmp_path / "q", v2="250000 100000"))
    assert cpus.usable_cpus() == 3  # a 2.5-CPU quota, rounded up, below 12 allowed cores of 64
    monkeypatch.setattr(cpus, "CGROUP_ROOT", fake_cgroup(tmp_path / "none", v2="max 100000"))
    assert cpus.usable_cpus() == 12
    assert cpus.default_workers() == 8 and cpus.default_workers(cap=4) == 4
    assert cpus.ort_intra_op_threads(None) == 12 and cpus.ort_intra_op_threads(5) == 5
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda _pid: set(range(64)), raising=False)
    assert cpus.ort_intra_op_threads(None) == 0  # not limited: the runtime's own default
    with pytest.raises(cpus.VptError, match="--threads must be at least 1"):
        cpus.check_threads(0)


def test_pools_and_runtimes_use_the_usable_cpus(tmp_path, monkeypatch):
    import torch

    from vptcli import inference

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 1)
    seen = {}
    real_pool = inference.ThreadPoolExecutor

    def pool(max_workers=None):
        seen["workers"] = max_workers
        return real_pool(max_workers=max_workers)

    monkeypatch.setattr(inference, "ThreadPoolExecutor", pool)

    class Stub(inference.Predictor):
        classes = ("a", "b")

    list(inference.predict_files(Stub(), [], batch_size=2))
    assert seen["workers"] == 1
    before = torch.get_num_threads()
    try:
        assert cpus.apply_torch_threads(None) == 1 == torch.get_num_threads()
        assert cpus.apply_torch_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_onnx_session_gets_the_thread_count(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from vptcli.inference import create_session

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    session, _provider, _warns = create_session(tmp_path / "m.onnx", "cpu", threads=3)
    assert session.get_session_options().intra_op_num_threads == 3
    assert os.path.exists(tmp_path / "m.onnx")
