"""The one error type that the CLI turns into a clear one-line message and a non-zero exit code."""

from __future__ import annotations


class VptError(Exception):
    """A user-facing error: bad input, missing file, refused artefact.

    The message must say what is wrong and, where possible, what to do. The CLI prints it as one
    line and exits with ``exit_code`` (2 unless a subclass says otherwise).
    """

    exit_code: int = 2
