"""`vpt eval MODEL DATA`: metrics of a trained prompt file on held-out images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def eval_command(
    model: Annotated[Path, typer.Argument(help="A run folder of `vpt train`, an export folder or a prompt file (.safetensors).")],
    data: Annotated[Path, typer.Argument(help="An ingest output folder, or a plain class-per-folder tree (a held-out lot: every image in it is scored; it may hold some of the model's classes).")],
    split: Annotated[str | None, typer.Option(help="Ingested data set only: test (default) | val | train | all. On the model's own data set val, train and all "
                                                        "are refused (those images trained or selected it) unless --exclude-trained.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.json, report.md, confusion_matrix.png (default: RUN/eval-SPLIT for a run folder, ./eval-SPLIT otherwise; never inside an export folder).")] = None,
    exclude_trained: Annotated[bool, typer.Option("--exclude-trained", help="Leave out images used to train or select the model (same pixels) and say how many, instead of refusing.")] = False,
    unknown_classes: Annotated[bool, typer.Option("--unknown-classes", help="Score images of classes the model does not know in an 'unknown' row instead of refusing.")] = False,
    weights: Annotated[str | None, typer.Option(help="Backbone weights to use instead of the file's own source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Accept other weights of the same architecture (warns).")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Write into an --out folder that holds other files (they are left as they are; by default only an empty folder or a previous report folder is accepted).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="PyTorch CPU threads (default: the CPUs this process may use, container limits and affinity included).")] = None,
    explain: Annotated[int, typer.Option("--explain", metavar="N", min=0, help="Also write heatmap overlays into OUT/explain/ (index.html): the N most confident mistakes and the N most confident correct images of each class.")] = 0,
    explain_method: Annotated[str, typer.Option("--explain-method", help="With --explain: gradcam | rollout | prompt-attention.")] = "gradcam",
) -> None:
    """Evaluate: top-1, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, ROC/PR-AUC (binary), ECE; refuses images the model was trained on."""
    from vptcli.commands.render import ConsoleReporter, print_eval_report, print_written
    from vptcli.console import console
    from vptcli.console import out as stdout
    from vptcli.cpus import apply_torch_threads
    from vptcli.evaluation import check_eval_out, default_eval_dir, evaluate
    from vptcli.metrics import write_report

    apply_torch_threads(threads)
    check_eval_out(out, exist_ok)  # before any model is loaded
    if explain:
        from vptcli.explain import check_method
        from vptcli.explain_report import check_explain_dir

        check_method(explain_method)
        if out is not None:
            check_explain_dir(out / "explain")

    report, context = evaluate(model, data, split=split, weights=weights, force=force, device=device, batch_size=batch_size,
                               reporter=ConsoleReporter(), exclude_trained=exclude_trained, unknown_classes=unknown_classes)
    if context["test-time augmentation"] != "none":
        console.print(f"test-time augmentation {context['test-time augmentation']}", markup=False, soft_wrap=True)
    print_eval_report(report, console)
    if out is None:
        out = default_eval_dir(model, context["split"])
    paths = write_report(report, out, title=f"vpt eval — {context['split']} images", context=context)
    stdout.print(f"top-1 accuracy {100 * report['accuracy']:.2f}%  balanced accuracy {100 * report['balanced_accuracy']:.2f}%  "
                 f"macro-F1 {report['macro_f1']:.3f}  ECE {report['ece']:.3f}  ({report['n_images']} images)")
    print_written(list(paths.values()))
    if explain:
        _explain(model, report, Path(out), explain, explain_method, weights=weights, force=force, device=device)


def _explain(model: Path, report: dict, out: Path, n: int, method: str, **load) -> None:
    """``--explain N``: overlays of the report's most confident mistakes and correct images per class
    (:func:`vptcli.explain_report.eval_selection`) in ``out/explain``, explaining the predicted class."""
    from vptcli.commands.explain_output import write_explanations
    from vptcli.explain_report import eval_selection, resolve_method
    from vptcli.inference import TorchPredictor

    predictor = TorchPredictor(model, **load)
    method = resolve_method(predictor, method, None)
    write_explanations(predictor, eval_selection(report["images"], n), out / "explain", method=method,
                       title=f"vpt eval --explain {n} — {predictor.source}")


def register(app: typer.Typer) -> None:
    """Add `vpt eval`."""
    app.command("eval")(eval_command)
