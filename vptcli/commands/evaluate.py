"""`vpt eval MODEL DATA`: metrics of a trained prompt file on a held-out split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def eval_command(
    model: Annotated[Path, typer.Argument(help="A run folder of `vpt train`, an export folder or a prompt file (.safetensors).")],
    data: Annotated[Path, typer.Argument(help="An ingest output folder (or a raw class-per-folder tree, ingested in memory).")],
    split: Annotated[str, typer.Option(help="Split to evaluate: test | val | train.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.json, report.md, confusion_matrix.png (default: MODEL/eval-SPLIT for a run folder).")] = None,
    weights: Annotated[str | None, typer.Option(help="Backbone weights to use instead of the file's own source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Accept other weights of the same architecture (warns).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="PyTorch CPU threads (default: the CPUs this process may use, container limits and affinity included).")] = None,
) -> None:
    """Evaluate: top-1, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, ROC/PR-AUC (binary), ECE."""
    from vptcli.commands.render import ConsoleReporter, print_eval_report
    from vptcli.console import console
    from vptcli.console import out as stdout
    from vptcli.cpus import apply_torch_threads
    from vptcli.evaluation import evaluate
    from vptcli.metrics import write_report

    apply_torch_threads(threads)

    report, context = evaluate(model, data, split=split, weights=weights, force=force, device=device, batch_size=batch_size,
                               reporter=ConsoleReporter())
    print_eval_report(report, console)
    if out is None:
        out = (model if model.is_dir() else model.parent) / f"eval-{split}"
    paths = write_report(report, out, title=f"vpt eval — {split} split", context=context)
    stdout.print(f"top-1 accuracy {100 * report['accuracy']:.2f}%  balanced accuracy {100 * report['balanced_accuracy']:.2f}%  "
                 f"macro-F1 {report['macro_f1']:.3f}  ECE {report['ece']:.3f}  ({report['n_images']} images)")
    stdout.print(f"report: {paths.get('report.json', out)}")


def register(app: typer.Typer) -> None:
    """Add `vpt eval`."""
    app.command("eval")(eval_command)
