"""`vpt ingest SRC --out DIR`: scan a labelled image folder into a manifest (see :mod:`vptcli.ingest`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vptcli.images import DEFAULT_MAX_PIXELS


def ingest(
    src: Annotated[
        Path,
        typer.Argument(
            help="Labelled image folder: SRC/<class>/**/<image>, or pre-split "
            "SRC/{train,val,test}/<class>/**/<image>. Only read, never modified.",
            metavar="SRC",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o",
            help="Output folder for manifest.csv, classes.json, manifest.json and ingest_report.md "
            "(outside SRC).",
            metavar="DIR",
            show_default=False,
        ),
    ],
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of each class's images for validation.")
    ] = 0.15,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of each class's images for test.")
    ] = 0.15,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (same files + seed = same split).")] = 0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on any skipped file or label conflict instead of reporting it.")
    ] = False,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels (width × height) than this.")
    ] = DEFAULT_MAX_PIXELS,
    bit_depth: Annotated[
        int | None,
        typer.Option(
            "--bit-depth", min=8, max=16, show_default=False,
            help="Sensor bit depth of 16-bit files (e.g. 12): scale values by 2^bits-1 instead of each "
            "image's used range.",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, show_default=False, help="Decoding threads (default: min(8, CPU count))."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", metavar="CSV", show_default=False,
            help="A CSV with a header that gives each image's class (e.g. filename,label; paths relative to "
            "SRC) instead of class folders; images it does not list are skipped as unlabelled.",
        ),
    ] = None,
    file_column: Annotated[
        str | None,
        typer.Option("--file-column", metavar="NAME", show_default=False,
                     help="--labels: header of the file-name column (default: filename, file, path, image, ...)."),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", metavar="NAME", show_default=False,
                     help="--labels: header of the label column (default: label, class, category, ...)."),
    ] = None,
) -> None:
    """Scan SRC into a manifest: decode every image once, hash pixels, find duplicates and label
    conflicts, and split train/val/test (stratified, duplicates kept together). Writes into --out only."""
    from vptcli.console import console, warn
    from vptcli.console import out as stdout
    from vptcli.errors import VptError
    from vptcli.ingest import check_out_dir, ingest_folder, write_ingest_outputs

    if (file_column or label_column) and labels is None:
        raise VptError("--file-column/--label-column choose columns of a --labels CSV; pass --labels FILE too")
    check_out_dir(src, out)  # fail before decoding anything
    result = ingest_folder(
        src,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        strict=strict,
        max_pixels=max_pixels,
        bit_depth=bit_depth,
        workers=workers,
        progress=True,
        labels=labels,
        file_column=file_column,
        label_column=label_column,
    )
    write_ingest_outputs(result, out)
    from vptcli.commands.render import print_ingest_summary

    print_ingest_summary(result, console)
    for line in result.warnings:
        warn(_escape(line))
    stdout.print(str(Path(out) / "manifest.csv"), markup=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def register(app: typer.Typer) -> None:
    """Add ``vpt ingest`` to the app."""
    app.command("ingest")(ingest)
