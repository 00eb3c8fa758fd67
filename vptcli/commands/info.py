"""`vpt info FILE`: what a prompt file holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def info(
    path: Annotated[Path, typer.Argument(help="A prompt file (.safetensors), a run folder or an export folder.")],
) -> None:
    """Print a prompt file's metadata, tensor shapes and size on disk (reads it without loading any backbone)."""
    from rich.table import Table

    from vptcli.artifacts import read_prompt_file, resolve_prompt_path
    from vptcli.console import out
    from vptcli.metrics import plain_value

    p = resolve_prompt_path(path)
    tensors, meta = read_prompt_file(p)
    size = p.stat().st_size
    t = Table(title=f"{p} ({size / 1024:.1f} KiB)", show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    kind = "full model (not a prompt file)" if meta.kind == "full-model" else "prompt file"
    rows = [
        ("kind", kind), ("method", meta.method), ("prompt settings", plain_value(meta.prompt)),
        ("backbone", f"{meta.backbone.get('name')} — {meta.backbone.get('source')}"),
        ("backbone sha256", str(meta.backbone.get("sha256"))),
        ("architecture", f"embed dim {meta.embed_dim}, depth {meta.depth}, prefix tokens {meta.num_prefix_tokens}"),
        ("preprocessing", f"{meta.img_size}px, {meta.interpolation}, crop {meta.crop_mode} {meta.crop_pct}, mean {meta.mean}, std {meta.std}"),
        ("classes", ", ".join(meta.classes)), ("validation metrics", plain_value(meta.metrics)),
        ("training data (manifest sha256)", meta.data_fingerprint), ("created", meta.created),
        ("tool version", meta.tool_version), ("format version", str(meta.format_version)),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)
    shapes = Table(title="tensors")
    shapes.add_column("name")
    shapes.add_column("shape")
    shapes.add_column("dtype")
    shown = [n for n in sorted(tensors) if not n.startswith("backbone.")]
    for name in shown:
        shapes.add_row(name, str(list(tensors[name].shape)), str(tensors[name].dtype).replace("torch.", ""))
    if len(shown) < len(tensors):
        n_bb = sum(v.numel() for k, v in tensors.items() if k.startswith("backbone."))
        shapes.add_row(f"backbone.* ({len(tensors) - len(shown)} tensors)", f"{n_bb:,} values", "")
    out.print(shapes)


def register(app: typer.Typer) -> None:
    """Add `vpt info`."""
    app.command("info")(info)
