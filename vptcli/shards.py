"""Prediction split over several machines (``vpt predict --shard I/N``) and merged back (``vpt predict-merge``).

Splitting: the file list ``vpt predict`` expands from its PATH arguments (folders walked in sorted
order, see :func:`vptcli.inference.expand_inputs`) is cut into N contiguous blocks of near-equal size
(the first ``len % N`` blocks one file longer); shard I (0-based) predicts block I. Every machine
expands the same arguments over the same files, so the blocks are the same everywhere without any
coordination. Error rows for PATH arguments that match nothing go with the last shard, where one run
writes them (at the end).

Merging: the shards' ``.csv`` (or ``.jsonl``) files concatenated in shard order -- one header for CSV
-- are the rows one run writes, in its order (:func:`merge_predictions`). The files must be given in
shard order, all in one format, with the same columns.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from vptcli.errors import VptError
from vptcli.fsutil import AtomicFile

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``.

    Raises:
        VptError: not of the form ``I/N`` or out of range.
    """
    m = _SHARD.match(text or "")
    if not m:
        raise VptError(f"--shard {text!r}: write it as I/N, e.g. 0/4 for the first of four machines (I counts from 0)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise VptError(f"--shard {text}: N is the number of shards, at least 1")
    if not 0 <= i < n:
        raise VptError(f"--shard {text}: I must be in [0, {n - 1}] for N = {n} (I counts from 0)")
    return i, n


def shard_block(n_items: int, index: int, count: int) -> range:
    """Positions ``[start, stop)`` of block ``index`` of ``count`` contiguous near-equal blocks of ``n_items``."""
    base, extra = divmod(n_items, count)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


def take_shard(files: list, problems: list, index: int, count: int) -> tuple[list, list]:
    """``(this shard's files, its problems)``: block ``index`` of ``files``; the problems (error rows
    for arguments that matched nothing) only in the last shard."""
    block = shard_block(len(files), index, count)
    return files[block.start : block.stop], (list(problems) if index == count - 1 else [])


def _check_parts(parts: list, out: Path, suffix: str) -> None:
    """Raise VptError unless every part exists, has ``suffix``, is not ``out`` and is a ``vpt predict``
    output (:func:`vptcli.inference.is_predict_output`, the test that also guards ``out``)."""
    from vptcli.inference import check_replaceable, is_predict_output

    if not parts:
        raise VptError("give the shard outputs to merge, in shard order (0/N first)")
    if suffix not in (".csv", ".jsonl"):
        raise VptError(f"{out}: use a .csv or .jsonl file name (the shards' format)")
    for p in map(Path, parts):
        if p.suffix.lower() != suffix:
            raise VptError(f"{p}: every shard output must be {suffix} like {out.name}")
        if not p.is_file():
            raise VptError(f"{p}: no such file")
        if p.resolve() == out.resolve():
            raise VptError(f"{out} is also one of the parts; write the merge to another file")
        if not is_predict_output(p):
            raise VptError(f"{p}: not an output of vpt predict (no path and status columns)")
    check_replaceable(out)


def merge_predictions(parts: list[str | os.PathLike], out: str | os.PathLike) -> int:
    """Concatenate the shard outputs ``parts`` (in shard order) into ``out`` (same format; one CSV header).
    Streams row by row; ``out`` is written atomically. Returns the number of rows.

    Raises:
        VptError: no parts, a missing part, mixed or unsupported formats, ``out`` among the parts or an
            existing file that is not a ``vpt predict`` output,
            CSV parts whose header differs (other ``--top-k``) or that are not ``vpt predict`` outputs
            (:func:`vptcli.inference.is_predict_output`), or an image path in two parts (a part given twice, overlapping shards).
    """
    import json

    out = Path(out)
    suffix = out.suffix.lower()
    _check_parts(parts, out, suffix)
    rows = 0
    seen: dict[str, str] = {}

    def once(path, part) -> None:
        if path in seen:
            raise VptError(f"{part}: {path} is also in {seen[path]}; give each shard's output once (vpt predict --shard I/N, I = 0..N-1)")
        seen[path] = str(part)

    with AtomicFile(out, "w", encoding="utf-8", newline="") as fh:
        if suffix == ".jsonl":
            for p in parts:
                with open(p, encoding="utf-8") as src:
                    for line in src:
                        if line.strip():
                            try:
                                once(json.loads(line)["path"], p)
                            except (ValueError, KeyError, TypeError):
                                raise VptError(f"{p}: not an output of vpt predict (a JSON row with a path)") from None
                            fh.write(line if line.endswith("\n") else line + "\n")
                            rows += 1
            return rows
        writer, header = csv.writer(fh, lineterminator="\n"), None
        for p in parts:
            with open(p, encoding="utf-8", newline="") as src:
                reader = csv.reader(src)
                first = next(reader, None)
                if first is None:
                    raise VptError(f"{p}: empty (not an output of vpt predict)")
                if header is None:
                    header = first
                    writer.writerow(header)
                elif first != header:
                    raise VptError(f"{p}: its columns differ from {parts[0]}'s (another --top-k?); merge outputs of one setting")
                col = first.index("path")
                for row in reader:
                    once(row[col] if col < len(row) else "", p)
                    writer.writerow(row)
                    rows += 1
    return rows


__all__ = ["merge_predictions", "parse_shard", "shard_block", "take_shard"]
