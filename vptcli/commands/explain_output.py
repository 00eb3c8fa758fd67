"""Explanations written by `vpt predict --explain` and `vpt eval --explain`, with terminal feedback
(its own module so that those commands and `vpt explain` share it without importing each other)."""

from __future__ import annotations

from pathlib import Path


def write_explanations(predictor, selection: list, out: Path, *, method: str, title: str, batch_size: int = 8,
                       bit_depth: int | None = None, max_pixels: int | None = None) -> None:
    """The overlays and gallery of ``vpt predict --explain`` / ``vpt eval --explain`` (``selection``:
    ``(path, group, note)`` rows, :mod:`vptcli.explain_report`); prints where the gallery is."""
    from vptcli.console import console, warn
    from vptcli.console import out as stdout
    from vptcli.explain_report import ExplainWriter, explain_files

    writer = ExplainWriter(out, title=title)
    with console.status(f"explaining {len(selection)} image(s) ({method})..."):
        n = explain_files(predictor, selection, writer, method=method, batch_size=batch_size, bit_depth=bit_depth,
                          max_pixels=max_pixels)
    gallery = writer.close()
    for src, reason in writer.failures[:10]:
        warn(f"not explained: {src}: {reason}")
    stdout.print(f"explained {n} image(s) ({method}); gallery: {gallery}", soft_wrap=True, markup=False)
