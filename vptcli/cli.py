"""The `vpt` command line: a thin Typer app.

Each command lives in ``vptcli/commands/<name>.py`` as a plain typed function plus a
``register(app)`` hook; the heavy modules (torch, timm, onnx) are imported inside the command
bodies so that ``vpt --help`` stays fast. Errors of type :class:`vptcli.errors.VptError` are printed
as one line and turn into a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from vptcli import __version__
from vptcli.console import console
from vptcli.errors import VptError


def _no_type_for_flags() -> None:
    """Show boolean flags as flags in ``--help`` (``--force``), not with a ``<bool>`` type column."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_no_type_for_flags()

# In the order of the data flow: data -> backbone -> train / evaluate -> export / predict.
COMMAND_MODULES = ("ingest", "backbones", "train", "evaluate", "info", "export", "predict", "drift", "explain", "registry")

app = typer.Typer(
    name="vpt",
    help="Visual prompt tuning (VPT / DA-VPT) of a frozen Vision Transformer for defect classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vpt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_version_callback, is_eager=True
    )] = False,
) -> None:
    """vpt: ingest a labelled image folder, tune prompt tokens on a frozen ViT, evaluate, export, predict."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"vptcli.commands.{_name}").register(app)


def main() -> None:
    """Entry point of the ``vpt`` console script.

    Typer runs in standalone mode, so usage errors get Typer's own message and exit code 2 (whichever
    click Typer bundles); errors of ours are one line, and so are OS errors on the user's paths.
    """
    try:
        app()
    except VptError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
        sys.exit(exc.exit_code)
    except OSError as exc:  # e.g. --out names an existing file, a folder is not writable
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[bold red]error:[/bold red] {where}{exc.strerror or exc}", markup=True, highlight=False)
        sys.exit(2)
