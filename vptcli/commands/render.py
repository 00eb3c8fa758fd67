"""What the commands show on the terminal: the one place for console rendering (rich).

The library modules return data and report through small interfaces; this module turns them into
lines and tables: :class:`ConsoleTrainReporter` for ``vpt train``, the training summary lines, and
(re-exported) the tables of ``vpt ingest`` and ``vpt eval``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from vptcli.console import console, warn
from vptcli.console import out as stdout
from vptcli.training import TrainReporter, TrainResult

EPOCH_COLUMNS = ("epoch", "train loss", "val loss", "val top-1", "val macro-F1", "img/s")


def epoch_cells(cells) -> str:
    """One line of right-aligned cells under :data:`EPOCH_COLUMNS`."""
    return "  ".join(str(c).rjust(len(h)) for c, h in zip(cells, EPOCH_COLUMNS))


class ConsoleTrainReporter(TrainReporter):
    """``vpt train``'s terminal output on stderr: a summary, progress bars, one row per epoch."""

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress

    def warn(self, message: str) -> None:
        warn(message)

    def run_started(self, info: dict) -> None:
        tuned, nb = info["tuned"], info["backbone_parameters"]
        console.print(
            f"method [bold]{info['method']}[/bold] on {info['backbone']} ({info['source']}); device {info['device']}"
            + (f" with AMP {info['amp_dtype']}" if info["amp_dtype"] else "")
            + f"; tuned parameters {tuned:,} = {100 * tuned / nb:.3f}% of the backbone ({nb:,})",
            markup=True,
        )
        if info["balance"] != "off":
            console.print(f"class balance: {info['balance']} (imbalance {info['imbalance']:.1f}:1)")
        if info["cpu_hint_block"] is not None:
            console.print(f"hint: on a CPU, late prompts (--prompt-start-block {info['cpu_hint_block']}) train about 5x faster, "
                          "with prompts in the last 3 blocks only (a different model; see docs/benchmarks.md)")

    def resumed(self, run_dir: Path, next_epoch: int, epochs: int) -> None:
        if next_epoch >= epochs:
            console.print(f"{run_dir} already finished its {epochs} epochs; nothing to resume "
                          "(start a new run to train longer: the learning-rate schedule depends on --epochs)")
        else:
            console.print(f"resuming {run_dir} after epoch {next_epoch} of {epochs}, with the run's saved settings")

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, disable=not self.show_progress, transient=True)
        with progress:
            task = progress.add_task(description, total=total, info="")
            yield lambda completed, info="": progress.update(task, completed=completed, info=info)

    def cache_built(self, start_block: int, views: int, nbytes: int, seconds: float) -> None:
        console.print(f"feature cache: {'embeddings' if start_block == 0 else f'blocks 0..{start_block - 1}'} computed once, "
                      f"{views} view(s)/image, {nbytes / 1024**2:.0f} MiB, built in {seconds:.1f}s")

    def epochs_started(self) -> None:
        console.print(epoch_cells(EPOCH_COLUMNS), style="bold", markup=False)

    def epoch_done(self, row: dict, improved: bool) -> None:
        cells = (row["epoch"], f"{row['train_loss']:.4f}", f"{row['val_loss']:.4f}", f"{100 * row['val_top1']:.1f}%",
                 f"{row['val_macro_f1']:.3f}", f"{row['train_img_per_s']:.1f}")
        console.print(epoch_cells(cells) + ("  best" if improved else ""), markup=False)

    def early_stop(self, patience: int, best_epoch: int) -> None:
        console.print(f"early stop: val macro-F1 did not improve for {patience} epochs (best epoch {best_epoch})")


def print_train_result(result: TrainResult, full_model: bool) -> None:
    """``vpt train``'s stdout: best epoch, validation figures, tuned share, and the artefact's path."""
    m = result.best_metrics
    stdout.print(
        f"best epoch {result.best_epoch}: val top-1 {100 * m.get('val_top1', float('nan')):.2f}%, "
        f"val macro-F1 {m.get('val_macro_f1', float('nan')):.3f}; tuned {result.tuned_parameters:,} parameters "
        f"({100 * result.tuned_parameters / result.backbone_parameters:.3f}% of the backbone)"
    )
    if full_model:
        stdout.print(f"full model (every backbone weight was tuned; not a prompt file): {result.prompt_file}")
    else:
        stdout.print(f"prompt file: {result.prompt_file}")
