"""Shared rich console (stderr for messages, so that stdout stays machine-readable)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
"""Console for progress, tables and messages (stderr)."""

out = Console(highlight=False)
"""Console for a command's primary output (stdout)."""


def warn(message: str) -> None:
    """Print one warning to stderr as one line: line breaks in ``message`` become spaces and rich
    does not wrap it at the console width (a terminal may still fold a long line visually)."""
    console.print(f"[yellow]warning:[/yellow] {' '.join(message.split())}", markup=True, soft_wrap=True)
