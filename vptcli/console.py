"""Shared rich console (stderr for messages, so that stdout stays machine-readable)."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)
"""Console for progress, tables and messages (stderr)."""

out = Console(highlight=False)
"""Console for a command's primary output (stdout)."""


def warn(message: str) -> None:
    """Print one warning line to stderr."""
    console.print(f"[yellow]warning:[/yellow] {message}", markup=True)
