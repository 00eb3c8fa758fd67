"""Run the real `vpt` entry point in-process (shared by the CLI tests)."""

from __future__ import annotations

import sys

import pytest


def run_vpt(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run vptcli.cli.main with ``args`` -> (exit code, stdout, stderr)."""
    from vptcli.cli import main

    monkeypatch.setattr(sys, "argv", ["vpt", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err
