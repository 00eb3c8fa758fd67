"""How the library reports progress without printing: :class:`Reporter` (warnings, progress tasks)
and :class:`TrainReporter` (what :func:`vptcli.training.train` adds). No torch import.

The silent base classes serve library use and tests; the CLI's console implementations live in
:mod:`vptcli.commands.render`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path


class Reporter:
    """Where a library call reports warnings and progress; this base class is silent."""

    def warn(self, message: str) -> None:
        """A warning (one line)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        """A progress task; yields ``update(completed, info="")``."""
        yield lambda completed, info="": None


class TrainReporter(Reporter):
    """Where :func:`vptcli.training.train` reports progress; this base class is silent (library use,
    tests). The CLI passes :class:`vptcli.commands.render.ConsoleTrainReporter`. Subclasses override
    what they show; every method has a no-op default.
    """

    def candidate_started(self, name: str, index: int, total: int) -> None:
        """``vpt train --tune``: candidate ``index`` (0-based) of ``total``, named by its settings, starts."""

    def run_started(self, info: dict) -> None:
        """After setup: ``info`` holds method, backbone name/source, device, amp dtype, tuned and
        backbone parameter counts, class balance and imbalance, and ``cpu_hint_block`` (or None)."""

    def resumed(self, run_dir: Path, next_epoch: int, epochs: int) -> None:
        """A resume continues after epoch ``next_epoch`` (``>= epochs``: nothing left to do)."""

    def cache_built(self, start_block: int, views: int, nbytes: int, seconds: float) -> None:
        """The feature cache is ready (``start_block`` k: blocks ``0..k-1`` were computed once)."""

    def prompts_initialised(self, info: dict) -> None:
        """``--prompt-init``: the prompts were set from the data (:mod:`vptcli.prompt_init`): ``info``
        holds ``method``, ``images`` (sampled), ``blocks`` and ``prompts`` (per block), ``seconds``."""

    def head_fitted(self, info: dict) -> None:
        """The head was fitted on the run's initial features (:mod:`vptcli.probe`): ``info`` holds
        ``features`` (rows fitted), ``dim``, ``c`` (the inverse L2 strength), ``c_fixed`` (True: ``c`` came
        from ``--probe-c``; False: chosen on validation), ``seconds``."""

    def warm_started(self, info: dict) -> None:
        """``--init-from``: prompts and head came from ``info["source"]``; ``copied`` / ``new`` / ``dropped``
        list the classes whose head rows were copied, imprinted, or left out."""

    def epochs_started(self) -> None:
        """Before the first epoch row of this call."""

    def epoch_done(self, row: dict, improved: bool) -> None:
        """One epoch's metrics row (see :data:`METRICS_CSV`; epoch 0: the fitted head before any
        epoch); ``improved``: a new best prompt file."""

    def early_stop(self, patience: int, best_epoch: int) -> None:
        """Validation did not improve for ``patience`` epochs."""
