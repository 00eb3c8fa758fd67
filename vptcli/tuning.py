"""`vpt train --tune`: a few training settings tried on the validation split, the best one kept.

Each candidate is one full :func:`vptcli.training.train` run into ``RUN/trials/<name>/``; the
frozen blocks' feature cache is computed once and shared by every candidate with the same start
block (an in-memory memo keyed like :meth:`FeatureCache.make_key`). The winner is the candidate
with the best validation macro-F1 (ties: lower validation loss, then the earlier candidate); its
run files are copied into ``RUN/`` so that ``vpt eval / export / predict RUN`` use it as any run,
and ``RUN/tune.json`` lists every candidate with its validation figures. The test split is never
read. This is plain grid search with selection on a held-out validation split (as in the VPT paper's
per-task learning-rate and weight-decay search, Jia et al., ECCV 2022, section 4.1).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vptcli.errors import VptError
from vptcli.fsutil import atomic_write_all, atomic_write_json
from vptcli.train_config import PROMPT_INITS, TrainConfig
from vptcli.train_report import TrainReporter
from vptcli.tta import TTA_MODES

TUNABLE = {"lr": "lr", "head-lr-scale": "head_lr_scale", "prompts": "num_prompts", "prompt-start-block": "prompt_start_block",
           "epochs": "epochs", "weight-decay": "weight_decay", "batch-size": "batch_size", "prompt-dropout": "prompt_dropout",
           "label-smoothing": "label_smoothing", "warmup-epochs": "warmup_epochs", "probe-c": "probe_c"}
"""Numeric settings a candidate may change: flag name (without ``--``) -> :class:`TrainConfig` field."""

TUNABLE_CHOICES = {"prompt-init": ("prompt_init", PROMPT_INITS), "tta": ("tta", tuple(TTA_MODES))}
"""Settings with named values a candidate may change: flag name -> (field, allowed values)."""

SETTINGS = [*TUNABLE, *TUNABLE_CHOICES]
"""Every setting a candidate may change, as ``vpt train`` spells it."""

TRIALS_DIR = "trials"
TUNE_JSON = "tune.json"


@dataclass(frozen=True)
class Candidate:
    """One setting to try: ``name`` (the text it was parsed from) and the TrainConfig overrides."""

    name: str
    overrides: dict

    @property
    def folder(self) -> str:
        """A file-system-safe folder name for the candidate's run."""
        return re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.name) or "base"


def parse_candidate(text: str) -> Candidate:
    """``"lr=1e-3,head-lr-scale=0.1"`` -> :class:`Candidate` (flags as ``vpt train`` spells them).

    Raises:
        VptError: an unknown setting, a value that is not a number, or a name not allowed (prompt-init).
    """
    overrides = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().removeprefix("--")
        if not sep or name not in SETTINGS:
            raise VptError(f"--tune-try {text!r}: each part must be SETTING=VALUE with SETTING one of {', '.join(SETTINGS)}")
        if name in TUNABLE_CHOICES:
            field, allowed = TUNABLE_CHOICES[name]
            if value.strip() not in allowed:
                raise VptError(f"--tune-try {text!r}: {name} must be one of {', '.join(allowed)}, got {value.strip()!r}")
            overrides[field] = value.strip()
            continue
        try:
            number = float(value)
        except ValueError:
            raise VptError(f"--tune-try {text!r}: {name} must be a number, got {value.strip()!r}") from None
        overrides[TUNABLE[name]] = int(number) if number.is_integer() and name not in ("lr", "head-lr-scale", "weight-decay", "probe-c") else number
    if not overrides:
        raise VptError(f"--tune-try {text!r}: give at least one SETTING=VALUE (settings: {', '.join(SETTINGS)})")
    return Candidate(text.strip(), overrides)


def default_candidates(cfg: TrainConfig) -> list[Candidate]:
    """``--tune`` without ``--tune-try``, relative to the run's settings (lr, head lr scale: the
    given ones or the method's): as given; the head at a tenth of its rate (after the warm start the
    head is already a converged probe); and both at a third of the learning rate with that head rate.

    Raises:
        VptError: a method whose head is fitted, not trained (the linear probe chooses its L2
            strength on validation unless ``--probe-c`` fixes it).
    """
    if cfg.spec.head_fit:
        raise VptError(f"--tune: {cfg.method} is fitted to convergence with its L2 strength chosen on validation; "
                       "there is no learning rate to tune (compare fixed strengths with --tune-try probe-c=A --tune-try probe-c=B)")
    lr, hls = cfg.resolved_lr(), cfg.resolved_head_lr_scale()
    return [parse_candidate(t) for t in (f"lr={lr:g}", f"lr={lr:g},head-lr-scale={hls / 10:g}",
                                         f"lr={lr / 3:.3g},head-lr-scale={hls / 10:g}")]



def shared_cache_builder():
    """A ``cache_builder`` for :func:`vptcli.training.train` that computes each feature cache once per
    key (start block, views, seed, images, backbone, size, dtype) and hands the same cache to later runs."""
    from vptcli.feature_cache import FeatureCache

    memo: dict[str, FeatureCache] = {}

    def build(model, dataset, *, key: str, progress=None, **kw):
        if key not in memo:
            memo[key] = FeatureCache.build(model, dataset, key=key, progress=progress, **kw)
        elif progress is not None:
            progress(len(dataset) * kw.get("views", 1))
        return memo[key]

    return build


def _score(row: dict) -> tuple:
    """Sort key: higher val macro-F1 first, then lower val loss (a missing figure sorts last)."""
    f1, loss = row.get("val_macro_f1"), row.get("val_loss")
    return (-f1 if f1 is not None else float("inf"), loss if loss is not None else float("inf"))


def tune(manifest, backbone, cfg: TrainConfig, run_dir: str | Path, candidates: list[Candidate], *,
         reporter: TrainReporter | None = None):
    """Train ``cfg`` with each candidate's overrides, keep the best on validation in ``run_dir``.

    Args:
        manifest, backbone: as for :func:`vptcli.training.train`.
        cfg: the base settings (every candidate starts from them).
        run_dir: a new or empty folder; candidates train into ``run_dir/trials/<name>/``.
        candidates: at least one; names must differ.

    Returns:
        ``(result, rows)``: the winner's :class:`vptcli.training.TrainResult` with paths in ``run_dir``,
        and one dict per candidate (name, overrides, best epoch, validation figures, chosen).

    Raises:
        VptError: no candidate, duplicate names, a candidate's settings that do not validate (or that
            change the prompts' shape of an ``init_from`` file), a non-empty ``run_dir``, or every
            candidate failing.
    """
    from vptcli.training import train

    reporter = reporter or TrainReporter()
    run_dir = Path(run_dir)
    if not candidates or len({c.folder for c in candidates}) != len(candidates):
        raise VptError("--tune: give each --tune-try candidate once (two candidates have the same settings)")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise VptError(f"{run_dir} is not empty; --tune starts a new run folder (choose another --out)")
    cfgs = [dataclasses.replace(cfg, **c.overrides) for c in candidates]  # every candidate checked before any work
    shaped = [c.name for c in candidates if cfg.init_from and {"num_prompts", "prompt_start_block"} & set(c.overrides)]
    if shaped:
        raise VptError(f"--tune-try {shaped[0]!r}: with --init-from the prompts' shape (prompts, prompt-start-block) is the "
                       "file's; tune other settings")
    builder = shared_cache_builder()
    rows, results = [], []
    for i, (cand, ccfg) in enumerate(zip(candidates, cfgs)):
        reporter.candidate_started(cand.name, i, len(candidates))
        res = train(manifest, backbone, ccfg, run_dir / TRIALS_DIR / cand.folder, reporter=reporter, cache_builder=builder)
        results.append(res)
        rows.append({"name": cand.name, "overrides": cand.overrides, "best_epoch": res.best_epoch,
                     **{k: res.best_metrics.get(k) for k in ("val_top1", "val_macro_f1", "val_loss")},
                     "folder": f"{TRIALS_DIR}/{cand.folder}"})
    best = min(range(len(rows)), key=lambda i: (*_score(rows[i]), i))
    for i, row in enumerate(rows):
        row["chosen"] = i == best
    win = results[best]
    copied = atomic_write_all({run_dir / p.name: p.read_bytes() for p in win.files})
    atomic_write_json(run_dir / TUNE_JSON, {"selection": "best validation macro-F1, then lower validation loss",
                                            "base": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
                                            "candidates": rows})
    files = sorted([*copied, run_dir / TUNE_JSON])
    return dataclasses.replace(win, run_dir=run_dir, prompt_file=run_dir / win.prompt_file.name, files=files), rows
