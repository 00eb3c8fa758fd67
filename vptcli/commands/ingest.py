"""`vpt ingest SRC --out DIR`: scan a labelled image folder into a manifest (see :mod:`vptcli.ingest`)."""

from __future__ import annotations

from collections import Counter
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
) -> None:
    """Scan SRC into a manifest: decode every image once, hash pixels, find duplicates and label
    conflicts, and split train/val/test (stratified, duplicates kept together). Writes into --out only."""
    from vptcli.console import console, warn
    from vptcli.console import out as stdout
    from vptcli.ingest import check_out_dir, ingest_folder, write_ingest_outputs

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
    )
    write_ingest_outputs(result, out)
    print_summary(result, console)
    for line in result.warnings:
        warn(_escape(line))
    stdout.print(str(Path(out) / "manifest.csv"), markup=False, soft_wrap=True)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def print_summary(result, console) -> None:
    """Rich tables on ``console``: images per class × split, skipped files by reason, duplicates,
    label conflicts, ignored entries."""
    from rich.table import Table
    from rich.text import Text

    from vptcli.ingest import skipped_by_kind

    m = result.manifest
    counts = m.counts()
    console.print(
        f"vpt ingest: {len(m.usable())} usable images in {len(m.classes)} classes "
        f"({result.layout} layout, {len(m.records)} files, {result.elapsed_s:.1f} s)",
        markup=False,
    )
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("class")
    for split in ("train", "val", "test", "total"):
        table.add_column(split, justify="right")
    totals: Counter = Counter()
    for i, c in enumerate(m.classes):
        row = counts[c]
        totals.update(row)
        table.add_row(str(i), Text(c), *(str(row[s]) for s in ("train", "val", "test")), str(sum(row.values())))
    table.add_row("", Text("total", style="bold"), *(str(totals[s]) for s in ("train", "val", "test")),
                  str(sum(totals.values())), end_section=True)
    console.print(table)

    if result.skipped:
        skipped = Table(title=f"skipped files: {len(result.skipped)} (listed in ingest_report.md)",
                        title_justify="left")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        skipped.add_column("example")
        by_kind = skipped_by_kind(result.skipped)
        for kind, n in sorted(by_kind.items()):
            example = next(r for r in result.skipped if r.reason.split(":", 1)[0] == kind)
            skipped.add_row(Text(kind), str(n), Text(f"{example.path}: {example.reason}"))
        console.print(skipped)
    else:
        console.print("skipped files: none", markup=False)
    if result.ignored:
        console.print(
            "ignored: " + ", ".join(f"{n} {k}" for k, n in sorted(result.ignored.items())), markup=False
        )
    n_dup_files = sum(len(g.records) for g in result.duplicate_groups)
    console.print(
        f"duplicates: {len(result.duplicate_groups)} group(s) of identical images ({n_dup_files} files)"
        if result.duplicate_groups else "duplicates: none",
        markup=False,
    )
    if result.conflicts:
        conflicts = Table(title=f"label conflicts: {len(result.conflicts)}", title_justify="left")
        conflicts.add_column("labels")
        conflicts.add_column("files")
        for g in result.conflicts[:20]:
            conflicts.add_row(Text(", ".join(g.labels)), Text("\n".join(f"{r.path} [{r.label}]" for r in g.records)))
        console.print(conflicts)
        if len(result.conflicts) > 20:
            console.print(f"... {len(result.conflicts) - 20} more in ingest_report.md", markup=False)
    else:
        console.print("label conflicts: none", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``vpt ingest`` to the app."""
    app.command("ingest")(ingest)
