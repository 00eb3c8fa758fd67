"""Experiment tracking with MLflow, where users have it: when ``MLFLOW_TRACKING_URI`` is set and
``mlflow`` is importable (``pip install vptcli[mlflow]``: mlflow-skinny), a training run logs its
settings as parameters, every epoch row as metrics (step = epoch, 0: the fitted or warm-started head)
and, when it ends, its prompt file, ``config.json``, ``metrics.csv`` and curves as artefacts.

It hooks in as a :class:`vptcli.train_report.TrainReporter` that forwards every call to the reporter
it wraps (the console's), so the trainer knows nothing of MLflow. The experiment is MLflow's own
choice (``MLFLOW_EXPERIMENT_NAME``, else its default). A failed or interrupted run ends with MLflow's
FAILED status. MLflow 3's local file store (``file:`` URIs) is in maintenance mode and needs
``MLFLOW_ALLOW_FILE_STORE=true``; a tracking server (``http://...``) needs nothing more.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from vptcli.train_report import TrainReporter

TRACKING_ENV = "MLFLOW_TRACKING_URI"
LOGGED_FILES = ("prompts.safetensors", "config.json", "metrics.csv", "training_curves.png")
"""Run-folder files logged as artefacts when the run ends (those present)."""


def tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when set and non-empty, else None."""
    return os.environ.get(TRACKING_ENV) or None


def mlflow_installed() -> bool:
    """Whether ``mlflow`` (or mlflow-skinny) can be imported."""
    return importlib.util.find_spec("mlflow") is not None


class MlflowReporter(TrainReporter):
    """Forwards every call to ``inner`` and logs to the active MLflow run: run info as ``info.*``
    parameters, each epoch row's numbers as metrics at step ``epoch``. Under ``vpt train --tune`` each
    candidate's parameters and metrics get the prefix ``candidate<i>.`` (MLflow parameters are write-once)."""

    def __init__(self, inner: TrainReporter, mlflow) -> None:
        self.inner, self.mlflow = inner, mlflow
        self.prefix = ""

    def candidate_started(self, name: str, index: int, total: int) -> None:
        self.inner.candidate_started(name, index, total)
        self.prefix = f"candidate{index}."
        self.mlflow.set_tag(f"vptcli.{self.prefix}settings", name)

    def warn(self, message: str) -> None:
        self.inner.warn(message)

    @contextlib.contextmanager
    def task(self, description: str, total: int):
        with self.inner.task(description, total) as update:
            yield update

    def run_started(self, info: dict) -> None:
        self.inner.run_started(info)
        self.mlflow.log_params({f"{self.prefix}info.{k}": v for k, v in info.items()})

    def resumed(self, run_dir: Path, next_epoch: int, epochs: int) -> None:
        self.inner.resumed(run_dir, next_epoch, epochs)
        self.mlflow.set_tag("vptcli.resumed_at_epoch", next_epoch)

    def cache_built(self, start_block: int, views: int, nbytes: int, seconds: float) -> None:
        self.inner.cache_built(start_block, views, nbytes, seconds)

    def head_fitted(self, info: dict) -> None:
        self.inner.head_fitted(info)

    def warm_started(self, info: dict) -> None:
        self.inner.warm_started(info)
        self.mlflow.set_tag("vptcli.init_from", info["source"])

    def epochs_started(self) -> None:
        self.inner.epochs_started()

    def epoch_done(self, row: dict, improved: bool) -> None:
        self.inner.epoch_done(row, improved)
        metrics = {}
        for key, value in row.items():
            if key == "epoch":
                continue
            with contextlib.suppress(TypeError, ValueError):
                metrics[self.prefix + key] = float(value)  # "" (no value this epoch) is left out
        self.mlflow.log_metrics(metrics, step=int(row["epoch"]))

    def early_stop(self, patience: int, best_epoch: int) -> None:
        self.inner.early_stop(patience, best_epoch)
        self.mlflow.set_tag("vptcli.early_stop_best_epoch", best_epoch)


@contextlib.contextmanager
def tracked(reporter: TrainReporter, cfg, run_dir: str | Path, data: str | Path | None = None) -> Iterator[TrainReporter]:
    """Yield ``reporter``, wrapped in an :class:`MlflowReporter` inside an MLflow run when tracking is
    on (``MLFLOW_TRACKING_URI`` set and mlflow installed; set but not installed: one warning). The run
    is named after ``run_dir``; ``cfg`` (:class:`vptcli.train_config.TrainConfig`) is logged as
    parameters; the run folder's :data:`LOGGED_FILES` are logged when the block ends without error."""
    uri = tracking_uri()
    if uri is None:
        yield reporter
        return
    if not mlflow_installed():
        reporter.warn(f"{TRACKING_ENV} is set but mlflow is not installed: this run is not tracked "
                      "(pip install 'vptcli[mlflow]')")
        yield reporter
        return
    import mlflow

    mlflow.set_tracking_uri(uri)
    run_dir = Path(run_dir)
    with mlflow.start_run(run_name=run_dir.name):
        mlflow.log_params(asdict(cfg))
        mlflow.set_tags({"vptcli.run_dir": str(run_dir.resolve()), **({"vptcli.data": str(data)} if data else {})})
        yield MlflowReporter(reporter, mlflow)
        for name in LOGGED_FILES:
            if (run_dir / name).is_file():
                mlflow.log_artifact(str(run_dir / name))
