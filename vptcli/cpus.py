"""How many CPUs this process may use, and the thread settings derived from it.

``os.cpu_count()`` counts the machine's CPUs, not the ones a container or a ``taskset`` leaves to the
process, so pools sized by it oversubscribe a small container. :func:`usable_cpus` takes the smallest
of: the CPU affinity mask (``os.sched_getaffinity``), the cgroup CPU quota (cgroup v2
``/sys/fs/cgroup/cpu.max``; cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; rounded up), and
``os.cpu_count()``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from vptcli.errors import VptError

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the cgroup CPU limits are read (tests point it elsewhere)."""


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), or ``None`` when there is none or it cannot be read."""
    root = CGROUP_ROOT if root is None else Path(root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def usable_cpus() -> int:
    """CPUs this process may use: min(affinity mask, cgroup quota rounded up, ``os.cpu_count()``), >= 1."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        try:
            counts.append(len(os.sched_getaffinity(0)))
        except OSError:
            pass
    limit = cgroup_cpu_limit()
    if limit is not None:
        counts.append(max(1, math.ceil(limit)))
    return max(1, min(counts))


def default_workers(cap: int = 8) -> int:
    """Decoding / loader threads when not given: :func:`usable_cpus`, at most ``cap``."""
    return max(1, min(cap, usable_cpus()))


def check_threads(threads: int | None) -> None:
    """Raise :class:`VptError` unless ``threads`` is ``None`` or at least 1."""
    if threads is not None and threads < 1:
        raise VptError(f"--threads must be at least 1, got {threads}")


def apply_torch_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op threads to ``threads``, or, when ``None``, cap its default at
    :func:`usable_cpus` (PyTorch counts the machine's cores). Returns the number set."""
    import torch

    check_threads(threads)
    n = threads if threads is not None else min(torch.get_num_threads(), usable_cpus())
    torch.set_num_threads(n)
    return n


def ort_intra_op_threads(threads: int | None) -> int:
    """ONNX Runtime ``intra_op_num_threads`` for ``threads``: the number given, else
    :func:`usable_cpus` when the process may use fewer CPUs than the machine has, else 0 (the
    runtime's own default)."""
    check_threads(threads)
    if threads is not None:
        return threads
    usable = usable_cpus()
    return usable if usable < (os.cpu_count() or usable) else 0
