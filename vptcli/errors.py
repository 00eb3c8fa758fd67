"""The one error type that the CLI turns into a clear one-line message and a non-zero exit code."""

from __future__ import annotations


class VptError(Exception):
    """A user-facing error: bad input, missing file, refused artefact.

    The message must say what is wrong and, where possible, what to do. The CLI prints it as one
    line and exits with ``exit_code`` (2 unless a subclass says otherwise).
    """

    exit_code: int = 2


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` (e.g. an exception) as one line: whitespace runs, newlines included, become one space;
    longer than ``limit`` characters -> cut, ending in "…". An exception with an empty message gives
    its type name. The CLI prints every error as one line."""
    line = " ".join(str(text).split())
    if not line and isinstance(text, BaseException):
        line = type(text).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"
