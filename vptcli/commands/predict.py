"""`vpt predict MODEL PATH...`: classify image files with PyTorch or ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TABLE_ROWS = 50
"""Rows shown in the terminal table (all rows go to --out)."""


def predict(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run folder, prompt file (.safetensors) or export folder. With --onnx, omit it: every argument is a PATH.")],
    paths: Annotated[list[str] | None, typer.Argument(metavar="PATH...", help="Image files, folders (recursive: image files only) or glob patterns.")] = None,
    backend: Annotated[str, typer.Option(help="torch | onnx | auto (onnx for an export folder or --onnx, else torch).")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (onnx: cuda requires CUDAExecutionProvider).")] = "auto",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write all rows to FILE: .csv or .jsonl (default: CSV on stdout when it is not a terminal).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Class probabilities per row, best first.")] = 3,
    reject_below: Annotated[float | None, typer.Option("--reject-below", help="Mark predictions whose confidence is under P as 'review' instead of a class.")] = None,
    ood_level: Annotated[float | None, typer.Option("--ood-level", help="Level of the 'unfamiliar' threshold, e.g. 0.99 flags about 1 % of images like the training ones (default: the run's, 0.95).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="An ONNX graph from `vpt export`: a single graph predicts on its own; a shared-backbone graph needs --prompt-file.")] = None,
    prompt_file: Annotated[Path | None, typer.Option("--prompt-file", help="The prompt file to use (classes, preprocessing; prompts and head for a shared graph; not needed with a single graph).")] = None,
    weights: Annotated[str | None, typer.Option(help="torch backend: backbone weights instead of the file's own source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="torch backend: accept other weights of the same architecture (warns).")] = False,
    bit_depth: Annotated[int | None, typer.Option(help="Sensor bit depth of 16-bit files (as in `vpt ingest --bit-depth`).")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Refuse images with more pixels than this (default: Pillow's limit, 89,478,485).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding threads (default: the CPUs this process may use, at most 8).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads and PyTorch threads (default: the CPUs this process may use, container limits and affinity included).")] = None,
) -> None:
    """Predict classes of image files; one row per file (path, label, confidence, top-k, ood_score, status, reason). Status 'unfamiliar': unlike the training images (the run's ood_reference.safetensors). Exit code 1 when any file failed."""
    from vptcli.commands.render import print_predictions
    from vptcli.console import console, warn
    from vptcli.inference import check_predict_options, open_predictor

    check_predict_options(batch_size=batch_size, top_k=top_k, reject_below=reject_below, out=out, ood_level=ood_level)
    model_arg, files, problems = _inputs(model, paths, onnx, prompt_file)
    predictor = open_predictor(model_arg, backend=backend, device=device, onnx=onnx, prompts=prompt_file, weights=weights,
                               force=force, threads=threads)
    predictor.set_ood_level(ood_level)
    for w in predictor.warnings:
        warn(w)
    console.print(f"{predictor.backend} backend on {predictor.device}: {predictor.source} ({len(predictor.classes)} classes)",
                  soft_wrap=True)
    settings = {"batch_size": batch_size, "top_k": top_k, "reject_below": reject_below, "bit_depth": bit_depth,
                "max_pixels": max_pixels, "workers": workers, "problems": problems}
    counts, shown = _predict_rows(predictor, files, out, settings)
    print_predictions(predictor, counts, shown, out)
    if counts["error"]:
        raise typer.Exit(code=1)


def _inputs(model: str, paths: list[str] | None, onnx: Path | None, prompt_file: Path | None = None):
    """``(MODEL or None, image files, problems)`` from the arguments (with ``--onnx`` MODEL is a PATH).

    Raises:
        VptError: no PATH, a MODEL / --onnx / --prompt-file that does not exist (said before any
            folder is scanned), or no image file in the PATHs given.
    """
    from vptcli.console import console
    from vptcli.errors import VptError
    from vptcli.inference import expand_inputs

    args = list(paths or [])
    model_arg: str | None = model
    if onnx is not None:  # MODEL is optional with --onnx: the first argument is then a PATH
        args.insert(0, model)
        model_arg = None
    if not args:
        raise VptError("no PATH given: pass image files, folders or glob patterns after MODEL")
    for what, given in (("MODEL", model_arg), ("--onnx", onnx), ("--prompt-file", prompt_file)):
        if given is not None and not Path(given).exists():  # before any folder is scanned
            raise VptError(f"{what} {given}: no such file or folder; pass a run folder, export folder, prompt "
                           "file or .onnx graph")
    files, problems, skipped = expand_inputs(args)
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        console.print(f"skipped {len(skipped)} file(s) without an image suffix in the folders given ({names})", soft_wrap=True)
    if not files and not problems:
        raise VptError(f"no image files found in {', '.join(args)}")
    return model_arg, files, problems


def _predict_rows(predictor, files, out: Path | None, settings: dict):
    """Predict every file, streaming rows to ``out`` (or to stdout when it is not a terminal).

    Returns:
        ``(counts by status, the first TABLE_ROWS rows when stdout is a terminal)``.
    """
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from vptcli.console import console
    from vptcli.console import out as stdout
    from vptcli.inference import RowWriter, predict_files

    top_k = settings["top_k"]
    to_stdout = out is None and not stdout.is_terminal
    writer = None
    if out is not None or to_stdout:
        writer = RowWriter(out, min(top_k, len(predictor.classes)) if top_k > 0 else top_k, stream=sys.stdout if to_stdout else None)
    counts = {"ok": 0, "review": 0, "unfamiliar": 0, "error": 0}
    shown = []
    try:
        with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as progress:
            task = progress.add_task("predict", total=len(files), rate="")

            def advance(n: int) -> None:
                progress.advance(task, n)
                t = progress.tasks[0]
                if t.elapsed:
                    progress.update(task, rate=f"{t.completed / t.elapsed:.1f} img/s")

            for row in predict_files(predictor, files, on_batch=advance, **settings):
                counts[row.status] += 1
                if writer is not None:
                    writer.write(row)
                if stdout.is_terminal and len(shown) < TABLE_ROWS:
                    shown.append(row)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return counts, shown


def register(app: typer.Typer) -> None:
    """Add `vpt predict`."""
    app.command("predict")(predict)
