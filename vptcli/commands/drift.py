"""`vpt drift MODEL FOLDER`: is a folder of recent images still like the training images?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def drift(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run folder, export folder or prompt file with its ood_reference.safetensors beside it.")],
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="Recent images (recursive: image files only).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for drift_report.md/.json and drift_scores.png (default: drift-FOLDER-TIME here).")] = None,
    alpha: Annotated[float, typer.Option(help="Drift when the MMD test's p-value is below this.")] = 0.05,
    permutations: Annotated[int, typer.Option(help="Permutations of the MMD test (p-value resolution 1/(n+1)).")] = 1000,
    ood_level: Annotated[float | None, typer.Option("--ood-level", help="Level of the 'unfamiliar' threshold (default: the run's, 0.95).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subsample and the permutations.")] = 0,
    backend: Annotated[str, typer.Option(help="torch | onnx | auto (onnx for an export folder, else torch).")] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="ONNX Runtime intra-op threads and PyTorch threads.")] = None,
) -> None:
    """Compare FOLDER with the training reference: MMD two-sample test on the features, share of unfamiliar images, shift of predicted class shares. Writes drift_report.md/.json and a score histogram. Exit code 3 when drift is detected."""
    from vptcli.commands.predict import is_output_folder
    from vptcli.commands.render import print_drift
    from vptcli.console import warn
    from vptcli.drift import DRIFT_EXIT_CODE, check_report_dir, default_out, measure_drift, write_report
    from vptcli.errors import VptError
    from vptcli.inference import check_predict_options, expand_inputs, open_predictor

    check_predict_options(batch_size=batch_size, ood_level=ood_level)
    for what, given in (("MODEL", Path(model)), ("FOLDER", folder)):
        if not given.exists():
            raise VptError(f"{what} {given}: no such file or folder")
    if not folder.is_dir():
        raise VptError(f"FOLDER {folder}: not a folder; pass the folder of recent images")
    out = out if out is not None else default_out(folder)
    check_report_dir(out, folder)  # before any image is read
    files, _problems, skipped = expand_inputs([folder], skip_folder=is_output_folder)
    if not files:
        written = [str(p) for p in skipped if p.is_dir()]
        raise VptError(f"no image files found in {folder}"
                       + (f" (skipped, written by vpt: {', '.join(written[:3])})" if written else ""))
    predictor = open_predictor(model, backend=backend, device=device, threads=threads)
    predictor.set_ood_level(ood_level)
    for w in predictor.warnings:
        warn(w)
    report, scores = measure_drift(predictor, files, alpha=alpha, permutations=permutations, seed=seed, batch_size=batch_size)
    written = write_report(out, report, predictor.ood.val_scores, scores, folder=str(folder))
    print_drift(report, written)
    if report["drift"]:
        raise typer.Exit(code=DRIFT_EXIT_CODE)


def register(app: typer.Typer) -> None:
    """Add `vpt drift`."""
    app.command("drift")(drift)
