"""`vpt explain MODEL PATH... --out DIR`: heatmaps of where the model looks, as overlays and a gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def explain(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run folder, prompt file (.safetensors) or export folder.")],
    paths: Annotated[list[str], typer.Argument(metavar="PATH...", help="Image files, folders (recursive: image files only) or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlays (NNNN_name.png), raw maps (.npy, patch grid) and index.html.")],
    method: Annotated[str | None, typer.Option(help="gradcam (default, PyTorch) | rollout | prompt-attention; ONNX: the graph's own (export --heatmap).")] = None,
    target: Annotated[str | None, typer.Option(help="Class to explain (gradcam); default: each image's predicted class.")] = None,
    backend: Annotated[str, typer.Option(help="torch (default) | onnx (a graph exported with --heatmap; gradient-free methods only).")] = "torch",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per pass.")] = 8,
    weights: Annotated[str | None, typer.Option(help="torch backend: backbone weights instead of the file's own source.")] = None,
    force: Annotated[bool, typer.Option("--force", help="torch backend: accept other weights of the same architecture (warns).")] = False,
    bit_depth: Annotated[int | None, typer.Option(help="Sensor bit depth of 16-bit files (as in `vpt ingest --bit-depth`).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="PyTorch / ONNX Runtime CPU threads.")] = None,
) -> None:
    """Explain predictions: per image an overlay PNG (the image as the model saw it, heatmap, predicted label and confidence, class explained) and the raw map (.npy), plus an index.html gallery grouped by predicted class."""
    from vptcli.commands.predict import _inputs
    from vptcli.console import console, warn
    from vptcli.cpus import apply_torch_threads
    from vptcli.errors import VptError
    from vptcli.explain_report import ExplainWriter, check_explain_dir, explain_files, resolve_method
    from vptcli.inference import open_predictor

    if backend not in ("torch", "onnx"):
        raise VptError(f"--backend {backend!r}: choose torch or onnx")
    check_explain_dir(out)
    apply_torch_threads(threads)
    model_arg, files, problems = _inputs(model, paths, None)
    predictor = open_predictor(model_arg, backend=backend, device=device, weights=weights, force=force, threads=threads)
    for w in predictor.warnings:
        warn(w)
    used = resolve_method(predictor, method, target)
    console.print(f"{used} heatmaps, {predictor.backend} backend on {predictor.device}: {predictor.source}", soft_wrap=True)
    writer = ExplainWriter(out, title=f"vpt explain — {used} — {predictor.source}")
    for arg, reason in problems:
        writer.fail(arg, reason)
    with console.status(f"explaining {len(files)} image(s)..."):
        n = explain_files(predictor, [(p, None, "") for p in files], writer, method=used, target=target,
                          batch_size=batch_size, bit_depth=bit_depth)
    gallery = writer.close()
    from vptcli.console import out as stdout

    stdout.print(f"explained {n} image(s) ({len(writer.failures)} failed); gallery: {gallery}", soft_wrap=True, markup=False)
    if writer.failures:
        for src, reason in writer.failures[:10]:
            warn(f"{src}: {reason}")
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add `vpt explain`."""
    app.command("explain")(explain)
