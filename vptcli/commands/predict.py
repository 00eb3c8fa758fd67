"""`vpt predict MODEL PATH...`: classify image files with PyTorch or ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

TABLE_ROWS = 50
"""Rows shown in the terminal table (all rows go to --out)."""
ERROR_LINES = 5
"""Error rows also said on stderr, with the file and the reason (all of them are in the rows)."""


def predict(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(metavar="MODEL", show_default=False, help="A run folder, prompt file (.safetensors) or export folder. With --onnx or --registry/--task, omit it: every argument is a PATH.")] = None,
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
    shard: Annotated[str | None, typer.Option("--shard", metavar="I/N", help="Predict only block I (0-based) of N of the sorted file list, e.g. 0/4 on the first of four machines; `vpt predict-merge` joins the N outputs into the rows of one run.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="ONNX backend on an export folder: use its model.int8.onnx (`vpt export --int8`) instead of model.onnx.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads and PyTorch threads (default: the CPUs this process may use, container limits and affinity included).")] = None,
    registry: Annotated[Path | None, typer.Option("--registry", envvar="VPT_REGISTRY", help="A prompt registry (`vpt registry`; or the environment variable VPT_REGISTRY, used with --task): --task's version predicts; omit MODEL (every argument is a PATH); rows record task, version and prompt sha256.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="With --registry: TASK (its production version predicts) or TASK@VERSION.")] = None,
    explain: Annotated[Path | None, typer.Option("--explain", metavar="DIR", help="Write heatmap overlays and index.html into DIR for every row flagged for review or as unfamiliar and every row predicted as an --explain-class (default: every predicted row).")] = None,
    explain_class: Annotated[list[str] | None, typer.Option("--explain-class", metavar="CLASS", help="With --explain: the predicted classes to explain besides review and unfamiliar rows (repeatable), e.g. the defect classes.")] = None,
    explain_method: Annotated[str | None, typer.Option("--explain-method", help="With --explain: gradcam (torch default) | rollout | prompt-attention; ONNX: the graph's own (`vpt export --heatmap`).")] = None,
) -> None:
    """Predict classes of image files; one row per file (path, label, confidence, top-k, ood_score, status, reason). Status 'unfamiliar': unlike the training images (the run's ood_reference.safetensors). Exit code 1 when any file failed."""
    from vptcli.commands import param_source
    from vptcli.commands.render import print_predictions
    from vptcli.console import console, warn
    from vptcli.inference import check_predict_options, open_predictor
    from vptcli.shards import parse_shard, take_shard
    from vptcli.tta import describe_tta

    check_predict_options(batch_size=batch_size, top_k=top_k, reject_below=reject_below, out=out, ood_level=ood_level)
    provenance = None
    if task is not None or (registry is not None and param_source(ctx, "registry") != "ENVIRONMENT"):
        # registry mode (a VPT_REGISTRY in the environment alone does not switch it on): MODEL is then the first PATH
        prompt_file, provenance, backend = _registry_model(registry, task, onnx, prompt_file, backend)
        paths, model = [*([model] if model is not None else []), *(paths or [])], str(prompt_file)
    part = parse_shard(shard) if shard is not None else None
    model_arg, files, problems = _inputs(model, paths, onnx, prompt_file, registry_mode=provenance is not None)
    if part is not None:
        n_all = len(files)
        files, problems = take_shard(files, problems, *part)
        console.print(f"shard {part[0]}/{part[1]}: {len(files)} of {n_all} files", soft_wrap=True)
    predictor = open_predictor(model_arg, backend=backend, device=device, onnx=onnx, prompts=prompt_file, weights=weights,
                               force=force, threads=threads, int8=int8)
    predictor.set_ood_level(ood_level)
    for w in predictor.warnings:
        warn(w)
    method = _explain_method(predictor, explain, explain_class, explain_method)
    tta = predictor.meta.prompt_config.tta
    console.print(f"{predictor.backend} backend on {predictor.device}: {predictor.source} ({len(predictor.classes)} classes)"
                  + (f"; test-time augmentation {describe_tta(tta)}" if tta != "none" else ""), soft_wrap=True, markup=False)
    settings = {"batch_size": batch_size, "top_k": top_k, "reject_below": reject_below, "bit_depth": bit_depth,
                "max_pixels": max_pixels, "workers": workers, "problems": problems}
    selected: list = []
    keep = None if explain is None else _explain_keeper(selected, explain_class)
    counts, shown, failed = _predict_rows(predictor, files, out, settings, provenance, keep)
    print_predictions(predictor, counts, shown, out, failed)
    if explain is not None:
        from vptcli.commands.explain_output import write_explanations

        write_explanations(predictor, selected, explain, method=method, title=f"vpt predict --explain — {predictor.source}",
                           bit_depth=bit_depth, max_pixels=max_pixels)
    if counts["error"]:
        raise typer.Exit(code=1)


def _explain_method(predictor, explain, classes, method) -> str | None:
    """The heatmap method for ``--explain`` (None without it), checked before any image is read."""
    from vptcli.errors import VptError
    from vptcli.explain_report import check_explain_dir, resolve_method

    if explain is None:
        if classes or method:
            raise VptError("--explain-class / --explain-method need --explain DIR")
        return None
    check_explain_dir(explain)
    unknown = [c for c in classes or [] if c not in predictor.classes]
    if unknown:
        raise VptError(f"--explain-class {unknown[0]!r}: not a class of this model ({', '.join(predictor.classes)})")
    return resolve_method(predictor, method, None)


def _explain_keeper(selected: list, classes: list[str] | None):
    """A callback that appends each row ``--explain`` shows to ``selected``
    (:func:`vptcli.explain_report.predict_selection`)."""
    from vptcli.explain_report import predict_selection

    return lambda row: selected.extend(predict_selection([row], classes or None))


def is_output_folder(folder: Path) -> bool:
    """True for a folder that vpt wrote: a run or export folder (it holds a prompt file), a ``vpt eval``
    report (``report.json`` with ``confusion_matrix.png``), a ``vpt drift`` report or a ``vpt explain``
    gallery. Its plots and heatmaps are not images to judge (:func:`vptcli.inference.expand_inputs`
    skips it)."""
    from vptcli.artifacts import PROMPT_FILE
    from vptcli.drift import REPORT_JSON
    from vptcli.explain_report import INDEX_JSON

    markers = ((PROMPT_FILE,), ("report.json", "confusion_matrix.png"), (REPORT_JSON,), (INDEX_JSON,))
    return any(all((folder / name).is_file() for name in names) for names in markers)


def _inputs(model: str | None, paths: list[str] | None, onnx: Path | None, prompt_file: Path | None = None,
            registry_mode: bool = False):
    """``(MODEL or None, image files, problems)`` from the arguments (with ``--onnx`` MODEL is a PATH;
    in registry mode ``model`` is the registry version's prompt file and ``paths`` are all PATHs).

    Raises:
        VptError: no MODEL, no PATH, a MODEL / --onnx / --prompt-file that does not exist (said before
            any folder is scanned), a PATH that is a run or export folder (it would be read as images),
            or no image file in the PATHs given.
    """
    from vptcli.artifacts import PROMPT_FILE
    from vptcli.console import console
    from vptcli.errors import VptError
    from vptcli.inference import expand_inputs

    args = list(paths or [])
    model_arg: str | None = model
    if onnx is not None:  # MODEL is optional with --onnx: the first argument is then a PATH
        args[:0] = [model] if model is not None else []
        model_arg = None
    elif model is None:
        raise VptError("no MODEL given: pass a run folder, export folder or prompt file, then image PATHs "
                       "(or --onnx GRAPH, or --registry DIR --task TASK, then only PATHs)")
    if not args:
        where = "with --task TASK" if registry_mode else "with --onnx GRAPH" if onnx is not None else "after MODEL"
        raise VptError(f"no PATH given: pass image files, folders or glob patterns {where}")
    for a in args:  # a model folder given as a PATH (one found inside a PATH is skipped): not images
        if Path(a).is_dir() and (Path(a) / PROMPT_FILE).is_file():
            hint = ("with --registry/--task the registry's version predicts: every argument is an image PATH"
                    if registry_mode else "with --onnx the graph predicts: every argument is an image PATH"
                    if onnx is not None else "a model goes first, as MODEL, and only once")
            raise VptError(f"PATH {a} is a run or export folder (it holds {PROMPT_FILE}), not images: {hint}")
    for what, given in (("MODEL", model_arg), ("--onnx", onnx), ("--prompt-file", prompt_file)):
        if given is not None and not Path(given).exists():  # before any folder is scanned
            raise VptError(f"{what} {given}: no such file or folder; pass a run folder, export folder, prompt "
                           "file or .onnx graph")
    files, problems, skipped = expand_inputs(args, skip_folder=is_output_folder)
    written = "folder(s) written by vpt (run, export, eval, drift or explain: their plots are not images to judge)"
    for what, found in ((written, [p for p in skipped if p.is_dir()]),
                        ("file(s) without an image suffix", [p for p in skipped if not p.is_dir()])):
        if found:
            names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
            console.print(f"skipped {len(found)} {what} in the folders given ({names})", soft_wrap=True)
    if not files and not problems:
        raise VptError(f"no image files found in {', '.join(args)}")
    return model_arg, files, problems


def _registry_model(registry: Path | None, task: str | None, onnx: Path | None, prompt_file: Path | None, backend: str):
    """``--registry DIR --task TASK[@VERSION]``: ``(the prompt file, row provenance, backend)``.

    Raises:
        VptError: one option without the other, with --onnx/--prompt-file or --backend onnx, a
            malformed TASK@VERSION (:func:`vptcli.registry.parse_task_ref`); see
            :meth:`vptcli.registry.Registry.version`.
    """
    from vptcli.errors import VptError
    from vptcli.registry import open_registry, parse_task_ref

    if registry is None or task is None:
        raise VptError("--registry (or VPT_REGISTRY) and --task go together: the task's production version predicts")
    if onnx is not None or prompt_file is not None or backend == "onnx":
        raise VptError("--registry predicts with the task's stored prompt file (PyTorch backend); drop --onnx, "
                       "--prompt-file and --backend onnx")
    name, version = parse_task_ref(task, "--task")
    reg = open_registry(registry)
    v = reg.version(name, version)
    return v.prompt_path(reg.root), {"task": name, "version": v.version, "prompt_sha256": v.digest}, "torch"


def _predict_rows(predictor, files, out: Path | None, settings: dict, provenance: dict | None = None, keep=None):
    """Predict every file, streaming rows to ``out`` (or to stdout when it is not a terminal);
    ``provenance``: constant columns added to every row (registry task, version, prompt sha256);
    ``keep(row)``, when given, sees every row.

    Returns:
        ``(counts by status, the first TABLE_ROWS rows when stdout is a terminal, the first
        ERROR_LINES error rows)``.
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
        writer = RowWriter(out, min(top_k, len(predictor.classes)) if top_k > 0 else top_k, stream=sys.stdout if to_stdout else None,
                           extra=provenance)
    counts = {"ok": 0, "review": 0, "unfamiliar": 0, "error": 0}
    shown, failed = [], []
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
                if keep is not None:
                    keep(row)
                if writer is not None:
                    writer.write(row)
                if stdout.is_terminal and len(shown) < TABLE_ROWS:
                    shown.append(row)
                if row.status == "error" and len(failed) < ERROR_LINES:
                    failed.append(row)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return counts, shown, failed


def predict_merge(
    out: Annotated[Path, typer.Option("--out", "-o", help="The merged file: .csv or .jsonl, as the shards.")],
    parts: Annotated[list[Path], typer.Argument(metavar="SHARD_OUTPUT...", help="The --out files of `vpt predict --shard 0/N` ... `N-1/N`, in shard order.")],
) -> None:
    """Join the outputs of `vpt predict --shard I/N` (given in shard order) into the rows one run writes."""
    from vptcli.console import out as stdout
    from vptcli.shards import merge_predictions

    rows = merge_predictions(parts, out)
    stdout.print(f"{rows} rows from {len(parts)} shard output(s): {out}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `vpt predict` and `vpt predict-merge`."""
    app.command("predict")(predict)
    app.command("predict-merge")(predict_merge)
