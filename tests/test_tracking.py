"""MLflow tracking of `vpt train` against a local file store (skipped where mlflow is not installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", "32")


@pytest.fixture()
def data(tmp_path, vpt, make_tree):
    src = make_tree(tmp_path / "src", names=("good", "scratch"))
    assert vpt("ingest", src, "--out", tmp_path / "data", "--val-fraction", "0.25", "--test-fraction", "0")[0] == 0
    return tmp_path / "data"


def test_train_logs_params_epoch_metrics_and_the_prompt_file(data, tmp_path, vpt, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in
    run_dir = tmp_path / "run"
    code, _, err = vpt("train", data, "--out", run_dir, *TINY, "--epochs", "2", "--batch-size", "4", "--no-augment")
    assert code == 0, err
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["epochs"] == "2" and run.data.params["backbone"] == "test_vit"
    assert run.data.params["info.device"] == "cpu"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
    assert steps == [0, 1, 2]  # epoch 0 (the fitted head) and both epochs
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"prompts.safetensors", "config.json", "metrics.csv"}
    logged = client.download_artifacts(run.info.run_id, "prompts.safetensors", str(tmp_path / "dl"))
    assert Path(logged).read_bytes() == (run_dir / "prompts.safetensors").read_bytes()


def test_tracking_without_mlflow_warns_and_trains(data, tmp_path, vpt, monkeypatch):
    import vptcli.tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setattr(vptcli.tracking, "mlflow_installed", lambda: False)
    code, _, err = vpt("train", data, "--out", tmp_path / "run", *TINY, "--epochs", "1", "--batch-size", "4")
    assert code == 0, err
    assert "mlflow is not installed" in " ".join(err.split())
    assert not (tmp_path / "mlruns").exists()
