"""ONNX export of a prompt file (or run) and its parity check against PyTorch (``vpt export``).

Two graphs:

- **single** (``model.onnx``): input ``images`` float32 ``[N, 3, H, W]`` RGB in ``[0, 1]``;
  normalisation (the backbone's mean/std) happens inside the graph; outputs ``logits`` ``[N, C]`` and
  ``probabilities`` ``[N, C]`` (``softmax(logits)``, applied exactly once, inside the graph) and
  ``features`` ``[N, F]`` (the head's input, from which :mod:`vptcli.ood` scores unfamiliar images;
  checked against PyTorch too, relative to the largest feature). The prompt tokens and the head are
  initializers of the graph. The run's unfamiliar-image reference (:data:`vptcli.ood.OOD_FILE`) is
  copied beside the prompt file when it belongs to it.
- **shared backbone** (``shared.onnx``, ``--shared-backbone``): the same, but the prompt tokens
  (``prompts`` ``[depth, n_prompts, D]``, absent for a linear probe) and the head (``head_weight``
  ``[C, D]``, ``head_bias`` ``[C]``, ``C`` dynamic) are graph inputs, so one file serves every prompt
  file of the same backbone and prompt structure (deep or shallow, prompt count, first prompted
  block); ``vpt predict --onnx shared.onnx --prompt-file task.safetensors`` feeds them. The graph records
  the backbone identity, so a prompt file of another backbone is refused. A linear-probe file gives a
  graph without ``prompts`` that serves every linear-probe file of that backbone. Full fine-tuning
  artefacts carry their own backbone and cannot use a shared graph.

Both graphs have a dynamic batch axis: the export traces a batch of 1 and the prompt tokens are
expanded to the runtime batch (``expand`` on the batch dimension read from the input's shape), never
repeated with a Python integer. Metadata (``metadata_props``, keys under :data:`META_PREFIX`): class
names (JSON; single graphs), preprocessing (image size, interpolation, crop, mean, std), method, prompt
settings, backbone identity, architecture, precision, tool version, graph kind, and the prompt-file
tensor digest (single graphs: lets ``vpt predict`` refuse a ``prompts.safetensors`` that is not the one
the graph was made from). The graph is one self-contained file unless its weights exceed
:data:`EXTERNAL_DATA_BYTES` (ONNX's 2 GB protobuf limit), in which case ``model.onnx.data`` is written
beside it and the result says so.

Exporter: ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, default since PyTorch
2.9, with onnxscript), at opset :data:`DEFAULT_OPSET`. timm's fused attention
(``F.scaled_dot_product_attention``) is decomposed into MatMul/Softmax by both exporters at this opset;
with torch 2.14 / timm 1.0.31 both the dynamo and the legacy TorchScript exporter (``dynamo=False``)
give graphs that pass the parity check, and dynamo is preferred because the TorchScript exporter is
deprecated (PyTorch warns that it will be removed) and warns that its trace converts tensors to Python
numbers. ``exporter="auto"`` falls back to TorchScript only when the dynamo path raises, with a
warning naming the error.

Parity check, at every export: ``onnx.checker.check_model`` (full check), then ONNX Runtime (CPU) and
PyTorch (fp32, CPU) on deterministic synthetic images in batches of :data:`PARITY_BATCHES`. The export
fails (:class:`ExportError`, nothing written) when the largest absolute logit difference exceeds the
tolerance (:data:`FP32_LOGIT_TOL` = 1e-4; :data:`FP16_LOGIT_TOL` = 5e-2 for ``--fp16``) or when top-1
differs on any image (a difference is tolerated only for an image whose PyTorch top-1/top-2 logit
margin is itself below the tolerance, i.e. a tie within the precision checked).

Graph hygiene: the exporter's intermediate shape annotations (``graph.value_info``, hundreds, traced
at batch 1, some contradicting strict inference) are dropped and the graph must pass
``onnx.shape_inference.infer_shapes(strict_mode=True)`` (:func:`clean_value_info`), so tools that
re-run shape inference (ONNX Runtime's quantiser) accept it.

``--int8``: ``model.int8.onnx`` beside ``model.onnx``, ONNX Runtime dynamic int8 quantisation with
per-channel weights of the weight ``MatMul`` nodes (the first block's kept fp32), checked on validation images against PyTorch (top-1
agreement >= 99 %, accuracy within 0.5 point); see :mod:`vptcli.quantize` for the choice and the check.

``--fp16``: weights and computation in float16; the graph's inputs (``images`` and, for shared graphs,
``prompts``/``head_weight``/``head_bias``) and outputs stay float32, with ``Cast`` nodes inside, so a
caller feeds the same arrays to either graph. Softmax is taken on the float32 logits. The reference for
its parity check is the fp32 PyTorch model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from vptcli import __version__
from vptcli.artifacts import ArtifactError, PromptFileMeta, read_prompt_file, resolve_prompt_path
from vptcli.errors import VptError, one_line
from vptcli.fsutil import apply_umask_mode, atomic_write_all, atomic_write_bytes, check_free_space
from vptcli.ood import OOD_FILE, reference_for

DEFAULT_OPSET = 20
"""ONNX opset of exported graphs (PyTorch 2.14's default for both exporters)."""

MIN_OPSET = 14
"""Lowest ONNX opset an export is made at (below it PyTorch's exporters cannot express the attention
of timm's ViTs); ``vpt export --opset`` refuses lower values before loading anything."""

ORT_FOR_OPSET: dict[int, str] = {
    14: "1.8", 15: "1.10", 16: "1.11", 17: "1.13", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18",
}
"""Oldest ONNX Runtime release that implements each ``ai.onnx`` opset (source: the version matrix of
ONNX Runtime's compatibility notes, docs/Versioning.md / onnxruntime.ai "Compatibility")."""

ORT_FOR_IR: dict[int, str] = {7: "1.6", 8: "1.10", 9: "1.15", 10: "1.18"}
"""Oldest ONNX Runtime release that loads each ONNX IR version (same source)."""

FP32_LOGIT_TOL = 1e-4
"""Largest absolute logit difference ONNX Runtime vs PyTorch accepted for an fp32 graph."""

FP16_LOGIT_TOL = 5e-2
"""Largest absolute logit difference accepted for an ``--fp16`` graph (vs the fp32 PyTorch model)."""

PARITY_BATCHES = (1, 3)
"""Batch sizes of synthetic images run through both runtimes at export."""

EXTERNAL_DATA_BYTES = 1_900_000_000
"""Above this many bytes of weights the graph's tensors go to ``<name>.onnx.data`` (protobuf 2 GB cap)."""

ONNX_FILE = "model.onnx"
SHARED_ONNX_FILE = "shared.onnx"
INT8_ONNX_FILE = "model.int8.onnx"
"""``vpt export --int8``: the int8 graph beside ``model.onnx`` (:mod:`vptcli.quantize`)."""
META_PREFIX = "vptcli."
GRAPH_OUTPUTS = ("logits", "probabilities", "features")
"""Outputs of every exported graph (``features``: the head's input ``[N, F]``; graphs exported before
it have only the first two)."""
GRAPH_SINGLE = "single"
GRAPH_SHARED = "shared-backbone"
EXPORTERS = ("auto", "dynamo", "torchscript")


class ExportError(VptError):
    """The export could not be made or failed its parity check (nothing was written)."""


@dataclass
class ParityCheck:
    """ONNX Runtime vs PyTorch on one batch of synthetic images.

    ``max_abs_logits`` / ``max_abs_probabilities``: largest absolute difference over the batch;
    ``top1_agree``: number of images whose top-1 class agrees (out of ``batch``);
    ``max_abs_heatmap``: the same for the ``heatmap`` output (``--heatmap`` graphs; else None).
    ``max_rel_features``: largest absolute difference of the ``features`` output divided by
    ``max(1, largest absolute PyTorch feature)``.
    """

    batch: int
    max_abs_logits: float
    max_abs_probabilities: float
    top1_agree: int
    max_abs_heatmap: float | None = None
    max_rel_features: float = 0.0


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    ``onnx_path``: the graph (``model.onnx`` or ``shared.onnx``); ``prompt_path``: the copied prompt
    file; ``graph``: :data:`GRAPH_SINGLE` | :data:`GRAPH_SHARED`; ``precision``: ``fp32`` | ``fp16``;
    ``exporter``: ``dynamo`` | ``torchscript``; ``tolerance``: the logit tolerance checked;
    ``export_seconds``: trace + conversion time; ``total_seconds``: everything incl. loading and the
    parity check; ``external_data``: a ``.onnx.data`` file was written (weights > 2 GB);
    ``ir_version``: the graph's ONNX IR version (the lowest its opset allows, see
    :func:`stamp_ir_version`); ``min_onnxruntime``: the oldest ONNX Runtime release that can load it
    (:func:`min_onnxruntime`).
    """

    out_dir: Path
    onnx_path: Path
    prompt_path: Path
    graph: str
    precision: str
    opset: int
    exporter: str
    tolerance: float
    parity: list[ParityCheck]
    export_seconds: float
    total_seconds: float
    onnx_bytes: int
    prompt_bytes: int
    external_data: bool = False
    ir_version: int = 0
    min_onnxruntime: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    int8_path: Path | None = None
    """``model.int8.onnx`` (``--int8``), else None."""
    int8_bytes: int = 0
    int8_check: object = None
    """:class:`vptcli.quantize.Int8Check` of the int8 graph (``--int8``), else None."""
    tta: str = "none"
    """The graph's test-time augmentation (:data:`vptcli.tta.TTA_MODES`)."""

    @property
    def max_abs_logits(self) -> float:
        return max((c.max_abs_logits for c in self.parity), default=float("nan"))

    @property
    def max_abs_probabilities(self) -> float:
        return max((c.max_abs_probabilities for c in self.parity), default=float("nan"))


# ------------------------------------------------------------------------------------------ graphs


def _graph_modules():
    """The wrapper modules (defined lazily so that importing this module does not import torch)."""
    import torch
    from torch import nn

    class SingleGraph(nn.Module):
        """``images [N, 3, H, W]`` float32 in [0, 1] -> ``(logits [N, C], probabilities [N, C],
        features [N, F])`` (features: the head's input, for the unfamiliar-image score)."""

        def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
            super().__init__()
            self.model = model
            self.dtype = dtype

        def forward(self, images: torch.Tensor):
            feats = self.model.features(images.to(self.dtype))
            logits = self.model.head(feats).float()
            return logits, torch.softmax(logits, dim=-1), feats.float()

    class SharedGraph(nn.Module):
        """``images, [prompts [depth, n, D]], head_weight [C, F], head_bias [C]`` -> logits, probabilities,
        features ``[N, F]``.

        The prompt tokens are passed to :meth:`~vptcli.prompting.PromptedViT.features`, so the block
        loop stays the one in ``PromptedViT.forward_from``.
        """

        def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
            super().__init__()
            self.model = model
            self.dtype = dtype

        def _run(self, images, prompts, head_weight, head_bias):
            p = prompts.to(self.dtype) if prompts is not None else None
            feats = self.model.features(images.to(self.dtype), prompts=p)
            logits = torch.nn.functional.linear(feats.float(), head_weight, head_bias)
            return logits, torch.softmax(logits, dim=-1), feats.float()

        def forward(self, images, prompts, head_weight, head_bias):
            return self._run(images, prompts, head_weight, head_bias)

    class SharedHeadGraph(SharedGraph):
        """Linear probe: ``images, head_weight [C, F], head_bias [C]`` -> logits, probabilities."""

        def forward(self, images, head_weight, head_bias):
            return self._run(images, None, head_weight, head_bias)

    return SingleGraph, SharedGraph, SharedHeadGraph


def shared_structure(meta: PromptFileMeta) -> dict:
    """What a shared-backbone graph fixes besides the backbone: deep or shallow prompts, prompt count,
    first prompted block (VPT-deep and DA-VPT have the same structure) and, when they are not the
    defaults, the head input and the test-time augmentation (so graphs exported before those options
    still match)."""
    cfg = meta.prompt_config
    n = int(cfg.num_prompts) if cfg.spec.has_prompts else 0
    structure = {
        "prompts": n > 0,
        "deep": bool(cfg.deep) if n else False,
        "num_prompts": n,
        "prompt_start_block": int(cfg.prompt_start_block) if n else 0,
    }
    if cfg.head_input != "cls":
        structure["head_input"] = cfg.head_input
    if cfg.tta != "none":
        structure["tta"] = cfg.tta
    return structure


def graph_metadata(meta: PromptFileMeta, *, graph: str, precision: str, exporter: str, opset: int) -> dict[str, str]:
    """``metadata_props`` of an exported graph (keys prefixed with :data:`META_PREFIX`; values strings).
    The preprocessing entry names the resize policy (``squash`` | ``letterbox`` | ``crop``) beside the
    timm ``crop_mode``/``crop_pct`` it is stored as."""
    from vptcli.datasets import resize_policy

    preprocessing = {
        "input": "images float32 [N, 3, H, W], RGB, values in [0, 1]; normalisation is inside the graph",
        "img_size": meta.img_size,
        "interpolation": meta.interpolation,
        "crop_pct": meta.crop_pct,
        "crop_mode": meta.crop_mode,
        "resize": resize_policy(meta.data_config),
        "mean": list(meta.mean),
        "std": list(meta.std),
    }
    props = {
        "format": "1",
        "graph": graph,
        "precision": precision,
        "method": meta.method,
        "prompt": json.dumps(meta.prompt),
        "prompt_structure": json.dumps(shared_structure(meta)),
        "backbone": json.dumps(meta.backbone),
        "architecture": json.dumps(
            {"embed_dim": meta.embed_dim, "depth": meta.depth, "num_prefix_tokens": meta.num_prefix_tokens}
        ),
        "preprocessing": json.dumps(preprocessing),
        "outputs": "logits [N, C]; probabilities [N, C] = softmax(logits), applied once inside the graph; "
                   "features [N, F] = the head's input (unfamiliar-image score)",
        "version": __version__,
        "exporter": f"torch.onnx.export ({exporter}), opset {opset}",
    }
    if graph == GRAPH_SINGLE:
        props["classes"] = json.dumps(meta.classes, ensure_ascii=False)
        props["prompt_tensors_sha256"] = meta.tensors_sha256
        props["data_fingerprint"] = meta.data_fingerprint
    return {META_PREFIX + k: str(v) for k, v in props.items()}


def synthetic_images(n: int, size: int, seed: int = 0):
    """``n`` deterministic synthetic images ``[n, 3, size, size]`` float32 in [0, 1]: smooth random
    fields (upsampled coarse noise) plus fine noise, so both low and high frequencies are exercised."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size // 8), max(2, size // 8), generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    fine = torch.rand(n, 3, size, size, generator=g)
    return (0.8 * smooth + 0.2 * fine).clamp(0, 1)


# ------------------------------------------------------------------------------------------ export


def _torch_export(module, args, *, input_names, dynamic_shapes, dynamic_axes, opset, exporter, large_path,
                  output_names=GRAPH_OUTPUTS):
    """Run one exporter. Returns the ``onnx.ModelProto``; with ``large_path`` (weights over 2 GB) the
    graph is saved there with its tensors in ``<large_path>.data`` and the proto returned references
    them (not loaded). Raises whatever the exporter raises."""
    import onnx
    import torch

    out_names = list(output_names)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), _quiet_loggers():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            prog = torch.onnx.export(
                module, args, None, input_names=input_names, output_names=out_names, opset_version=opset,
                dynamo=True, dynamic_shapes=dynamic_shapes, external_data=large_path is not None,
                verbose=False, optimize=True,
            )
            if large_path is not None:
                prog.save(large_path, external_data=True)
                return onnx.load(large_path, load_external_data=False)
            return prog.model_proto
        if large_path is not None:
            raise NotImplementedError("the TorchScript exporter path cannot write graphs over 2 GB here")
        buf = io.BytesIO()
        torch.onnx.export(
            module, args, buf, input_names=input_names, output_names=out_names, opset_version=opset,
            dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True,
        )
        return onnx.load_from_string(buf.getvalue())


@contextlib.contextmanager
def _quiet_loggers(names=("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")):
    """Silence the exporters' log chatter (progress, version-converter tracebacks) for one export;
    real failures still raise."""
    import logging

    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def _default_opset(proto) -> int:
    """The graph's default-domain (``ai.onnx``) opset version."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


def stamp_ir_version(proto) -> int:
    """Set ``proto.ir_version`` to the lowest IR version its opset imports allow
    (``onnx.helper.find_min_ir_version_for``; e.g. opset 17 -> IR 8, opset 20 -> IR 9), never higher
    than what the exporter wrote. Exporters stamp the IR version of the installed ``onnx`` package (IR
    10 and up), which older ONNX Runtime releases refuse although nothing in the graph needs it; the
    graph is checked (``onnx.checker``) and run (parity) after stamping. Returns the IR version."""
    from onnx import helper

    imports = [helper.make_opsetid(o.domain, o.version) for o in proto.opset_import]
    try:
        needed = int(helper.find_min_ir_version_for(imports, ignore_unknown=True))
    except Exception:  # noqa: BLE001 - an opset the installed onnx does not know: keep the exporter's
        return int(proto.ir_version)
    if 0 < needed < proto.ir_version:
        proto.ir_version = needed
    return int(proto.ir_version)


def clean_value_info(proto, src: Path | str = "graph") -> int:
    """Drop the intermediate shape annotations (``graph.value_info``) the exporter leaves and check that
    the graph passes ONNX's strict shape inference (``onnx.shape_inference.infer_shapes(strict_mode=True)``).

    The annotations are optional hints; the dynamo exporter writes hundreds of them, traced at batch 1,
    and some contradict what strict inference derives for a dynamic batch (e.g. ``384`` vs ``2`` in
    dimension 0), which makes tools that re-run inference (ONNX Runtime's quantisation) fail. Inputs,
    outputs and initializers keep their declared types. Returns the number of annotations removed.

    Raises:
        ExportError: strict shape inference fails on the cleaned graph (message names ``src``).
    """
    import onnx

    removed = len(proto.graph.value_info)
    del proto.graph.value_info[:]
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises InferenceError and others
        raise ExportError(f"{src}: the exported graph fails strict ONNX shape inference: {one_line(exc, 300)}") from None
    return removed


def min_onnxruntime(opset: int, ir_version: int) -> str:
    """The oldest ONNX Runtime release that can load a graph of ``opset`` (``ai.onnx``) and
    ``ir_version`` (:data:`ORT_FOR_OPSET`, :data:`ORT_FOR_IR`), e.g. ``"1.13"`` for opset 17 / IR 8;
    ``""`` when the opset or IR version is newer than the table."""
    need = [ORT_FOR_OPSET.get(int(opset)), ORT_FOR_IR.get(int(ir_version))]
    if any(v is None for v in need):
        return ""
    return max(need, key=lambda v: tuple(int(x) for x in v.split(".")))


def _root_cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause of an exporter exception (the exporters wrap the
    real error in a banner)."""
    while exc.__cause__ is not None and exc.__cause__ is not exc:
        exc = exc.__cause__
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {one_line(lines[0] if lines else '', 300)}"


def export_onnx(
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    opset: int | None = None,
    fp16: bool = False,
    shared_backbone: bool = False,
    weights: str | None = None,
    force: bool = False,
    exporter: str = "auto",
    exist_ok: bool = False,
    heatmap: str | None = None,
    int8: bool = False,
    int8_data: str | os.PathLike | None = None,
) -> ExportResult:
    """Export a prompt file (or a run / export folder) to ONNX and check it against PyTorch.

    Writes ``out_dir/prompts.safetensors`` (a byte copy of the prompt file, metadata included) and
    ``out_dir/model.onnx`` (``out_dir/shared.onnx`` with ``shared_backbone``); both atomically and only
    after the parity check passed. See the module docstring for the graphs, metadata and tolerances.

    Args:
        model_path: run folder, export folder or ``.safetensors`` prompt file.
        out_dir: folder to write (created; existing files of the same names are replaced). A folder
            that holds other files (an image folder, a run) is refused unless ``exist_ok`` (then the
            other files are left as they are).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).
        fp16: float16 weights and compute (inputs/outputs stay float32); tolerance
            :data:`FP16_LOGIT_TOL`.
        shared_backbone: prompts and head become graph inputs (not for full fine-tuning artefacts).
        weights: backbone weights to use instead of the file's own source (path or ``"random"``).
        force: accept other weights of the same architecture (see :func:`vptcli.artifacts.check_compatible`).
        exporter: ``auto`` (dynamo; TorchScript when dynamo raises or cannot give the requested
            opset, e.g. below 18) | ``dynamo`` | ``torchscript``.
        heatmap: a gradient-free method of :mod:`vptcli.explain` (``rollout`` | ``prompt-attention``):
            the single graph gets a third output ``heatmap`` ``[N, h, w]`` in ``[0, 1]``, parity-checked
            like the logits (tolerance :data:`HEATMAP_TOL`, fp16 :data:`FP16_HEATMAP_TOL`).
        int8: also write ``model.int8.onnx`` (:mod:`vptcli.quantize`: dynamic int8, per-channel weights),
            checked on validation images (the run's, or ``int8_data``'s) against PyTorch; single fp32
            graphs only.
        int8_data: the images of that check (an ingested data set: its val split; or a class-per-folder
            tree); default: the run's validation images (``train_images.json`` beside the prompt file).

    Returns:
        :class:`ExportResult` with paths, sizes, timings and the parity figures.

    Raises:
        ArtifactError: unreadable / tampered prompt file, or a backbone that does not fit.
        ExportError: shared backbone asked for a full model, exporter failure, checker failure, or
            parity beyond tolerance.
        QuantizeError: ``int8`` with ``fp16`` / a shared graph / no validation images, or the int8 graph
            fails its check.
    """
    import torch

    from vptcli.artifacts import load_model

    t_start = time.perf_counter()
    opset = int(opset) if opset is not None else DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise ExportError(
            f"--opset {opset}: the lowest opset vpt can export is {MIN_OPSET} (ONNX Runtime "
            f"{ORT_FOR_OPSET[MIN_OPSET]} and later load it); pass --opset {MIN_OPSET} or higher"
        )
    if heatmap is not None and shared_backbone:
        raise ExportError("--heatmap applies to a single graph; leave out --shared-backbone")
    src, out = _check_request(model_path, out_dir, exporter, shared_backbone, exist_ok)
    int8_set = _int8_request(src, int8, int8_data, fp16, shared_backbone)
    model, meta, _backbone, warn_list = load_model(src, weights=weights, force=force)
    model = model.float().eval().cpu()

    graph = GRAPH_SHARED if shared_backbone else GRAPH_SINGLE
    precision = "fp16" if fp16 else "fp32"
    tol = FP16_LOGIT_TOL if fp16 else FP32_LOGIT_TOL

    # Reference logits and features (fp32 PyTorch) before anything is converted.
    parity_images = {b: synthetic_images(b, int(meta.img_size), seed=b) for b in PARITY_BATCHES}
    with torch.inference_mode():
        ref_features = {b: model.features(x) for b, x in parity_images.items()}
        reference = {b: model.head(f).numpy().astype("float64") for b, f in ref_features.items()}
        ref_features = {b: f.numpy().astype("float64") for b, f in ref_features.items()}
    ref_maps = _heatmap_reference(model, heatmap, parity_images)
    tuned = {k: v.detach().float().cpu() for k, v in model.tuned_state().items() if not k.startswith("backbone.")}

    export_model = model
    if fp16:
        import copy

        export_model = copy.deepcopy(model).half().eval()
    spec = _graph_spec(graph, export_model, tuned, torch.float16 if fp16 else torch.float32, int(meta.img_size), heatmap)
    onnx_name = SHARED_ONNX_FILE if graph == GRAPH_SHARED else ONNX_FILE
    weight_bytes = sum(p.numel() * p.element_size() for p in export_model.parameters())
    # The graph holds every weight: refuse a disk without room for it before the (slow) export.
    check_free_space(out / onnx_name, weight_bytes + src.stat().st_size)
    large_path = None
    if weight_bytes > EXTERNAL_DATA_BYTES:
        import tempfile

        out.mkdir(parents=True, exist_ok=True)
        large_path = os.path.join(tempfile.mkdtemp(prefix=".vpt-export-", dir=out), onnx_name)
    try:
        t_export = time.perf_counter()
        proto, used, failures = _export_with_fallback(spec, opset, exporter, large_path, src)
        export_seconds = time.perf_counter() - t_export
        warn_list = list(warn_list) + [f"{f}; used the {used} exporter instead" for f in failures]
        data = _stamp_and_check(proto, meta, graph, precision, used, opset, large_path, src, heatmap)
        parity = _parity(data if data is not None else large_path, parity_images, (reference, ref_features), tuned,
                         spec["input_names"], graph, len(meta.classes), tol, precision, src, ref_maps)
        int8_graph, int8_check = _int8_graph(int8_set, data, model, meta, src) if int8_set else (None, None)
        prompt_out, onnx_path, onnx_bytes, prompt_bytes = _write_export(src, out, onnx_name, data, large_path, warn_list,
                                                                        _ood_reference_bytes(src, meta, warn_list), int8_graph)
    except BaseException:
        if large_path is not None:
            import shutil

            shutil.rmtree(os.path.dirname(large_path), ignore_errors=True)
        raise
    return ExportResult(
        out_dir=out, onnx_path=onnx_path, prompt_path=prompt_out, graph=graph, precision=precision, opset=opset,
        exporter=used, tolerance=tol, parity=parity, export_seconds=export_seconds,
        total_seconds=time.perf_counter() - t_start, onnx_bytes=onnx_bytes, prompt_bytes=prompt_bytes,
        external_data=data is None, ir_version=int(proto.ir_version),
        min_onnxruntime=min_onnxruntime(opset, int(proto.ir_version)),
        inputs=list(spec["input_names"]), outputs=list(spec.get("output_names", GRAPH_OUTPUTS)),
        warnings=warn_list, int8_path=out / INT8_ONNX_FILE if int8_graph else None,
        int8_bytes=len(int8_graph or b""), int8_check=int8_check, tta=model.config.tta,
    )


def _int8_request(src: Path, int8: bool, int8_data, fp16: bool, shared_backbone: bool):
    """``(check image paths, labels, source)`` for ``--int8`` (None without it), found before the model loads.

    Raises:
        QuantizeError: ``--int8`` with ``--fp16`` or ``--shared-backbone``, ``--int8-data`` without
            ``--int8``, or no validation images (see :func:`vptcli.quantize.check_images`).
    """
    from vptcli.quantize import QuantizeError, check_images

    if not int8:
        if int8_data is not None:
            raise QuantizeError("--int8-data is the data the int8 graph is checked on; pass --int8 with it")
        return None
    if fp16 or shared_backbone:
        raise QuantizeError("--int8 quantises the single fp32 graph; drop --fp16 / --shared-backbone")
    _, meta = read_prompt_file(src)
    return check_images(src, int8_data, list(meta.classes))


def _int8_graph(int8_set, fp32_graph: bytes | None, model, meta: PromptFileMeta, src: Path):
    """``(int8 graph bytes, Int8Check)``: the fp32 graph quantised (:func:`vptcli.quantize.quantize_int8`),
    stamped ``precision: int8`` and checked against PyTorch on the validation images.

    Raises:
        QuantizeError: a graph over 2 GB, the quantiser fails, an unreadable validation image, or the check fails.
    """
    import onnx

    from vptcli.quantize import QuantizeError, check_int8, quantize_int8

    if fp32_graph is None:
        raise QuantizeError(f"{src}: --int8 is not made for graphs over 2 GB (external data)")
    paths, labels, source = int8_set
    proto = onnx.load_from_string(quantize_int8(fp32_graph))
    for entry in proto.metadata_props:
        if entry.key == META_PREFIX + "precision":
            entry.value = "int8"
    proto.doc_string = proto.doc_string.replace("fp32)", "int8: dynamic, per-channel weights, first block fp32)")
    graph = proto.SerializeToString()
    return graph, check_int8(graph, model, paths, labels, meta.data_config, source, what=f"{src}: the int8 graph")


EXPORT_FOLDER_FILES = ("prompts.safetensors", OOD_FILE, ONNX_FILE, SHARED_ONNX_FILE, f"{ONNX_FILE}.data", f"{SHARED_ONNX_FILE}.data",
                       INT8_ONNX_FILE)
"""What a previous export leaves in its folder: ``--out`` may hold these (they are replaced)."""


def _check_request(model_path, out_dir, exporter: str, shared_backbone: bool, exist_ok: bool = False) -> tuple[Path, Path]:
    """The prompt file's path and the output folder, checked before any model is loaded.

    Raises:
        ExportError: unknown exporter, a shared backbone for a full model, ``out_dir`` is a file.
        ArtifactError: a truncated or tampered prompt file.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    src = resolve_prompt_path(model_path)
    _, file_meta = read_prompt_file(src)  # clear errors for truncated / tampered files before anything else
    if shared_backbone and file_meta.kind == "full-model":
        raise ExportError(
            f"{src}: a full fine-tuning artefact is a whole model (its backbone weights are tuned), so it "
            "cannot use a shared backbone graph; export it without --shared-backbone"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; pass a folder for --out")
    other = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FOLDER_FILES
                   and not (p.name.startswith(".") and p.name.endswith(".tmp"))) if out.is_dir() else []
    if other and not exist_ok:
        raise ExportError(
            f"--out {out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); export into an "
            "empty folder or a previous export folder, or pass --exist-ok to write beside them (they are left as they are)"
        )
    return src, out


def _graph_spec(graph: str, export_model, tuned: dict, dtype, size: int, heatmap: str | None = None) -> dict:
    """The module to export with its example args, input names, dynamic shapes (dynamo) and axes
    (TorchScript); with ``heatmap`` (single graph) a third output ``heatmap`` ``[N, h, w]``
    (:class:`vptcli.explain.HeatmapModel`)."""
    import torch

    SingleGraph, SharedGraph, SharedHeadGraph = _graph_modules()
    x1 = synthetic_images(1, size, seed=1)
    if graph == GRAPH_SINGLE and heatmap is not None:
        from vptcli.explain import HeatmapModel

        x2 = synthetic_images(2, size, seed=1)  # traced at batch 2: at 1 torch.export specialises the rollout's batch axis
        return {"module": HeatmapModel(export_model, heatmap, dtype).eval(), "args": (x2,), "input_names": ["images"],
                "output_names": [*GRAPH_OUTPUTS, "heatmap"],
                "dynamic_shapes": {"images": {0: torch.export.Dim("batch")}},
                "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"},
                                 "features": {0: "batch"}, "heatmap": {0: "batch"}}}
    if graph == GRAPH_SINGLE:
        return {"module": SingleGraph(export_model, dtype).eval(), "args": (x1,), "input_names": ["images"],
                "dynamic_shapes": {"images": {0: torch.export.Dim("batch")}},
                "dynamic_axes": {"images": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"},
                                 "features": {0: "batch"}}}
    has_prompts = export_model.prompts is not None
    module = (SharedGraph if has_prompts else SharedHeadGraph)(export_model, dtype).eval()
    batch, classes = torch.export.Dim("batch"), torch.export.Dim("classes")
    head = (tuned["head.weight"], tuned["head.bias"])
    if has_prompts:
        args = (x1, tuned["prompts"], *head)
        input_names = ["images", "prompts", "head_weight", "head_bias"]
        dyn_shapes = {"images": {0: batch}, "prompts": None, "head_weight": {0: classes}, "head_bias": {0: classes}}
    else:
        args = (x1, *head)
        input_names = ["images", "head_weight", "head_bias"]
        dyn_shapes = {"images": {0: batch}, "head_weight": {0: classes}, "head_bias": {0: classes}}
    dyn_axes = {
        "images": {0: "batch"}, "head_weight": {0: "classes"}, "head_bias": {0: "classes"},
        "logits": {0: "batch", 1: "classes"}, "probabilities": {0: "batch", 1: "classes"}, "features": {0: "batch"},
    }
    return {"module": module, "args": args, "input_names": input_names, "dynamic_shapes": dyn_shapes, "dynamic_axes": dyn_axes}


def _export_with_fallback(spec: dict, opset: int, exporter: str, large_path, src: Path):
    """``(proto, exporter used, failures of the ones tried before)``: dynamo, then TorchScript for ``auto``.

    Raises:
        ExportError: every exporter tried failed (each failure named).
    """
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    failures = []
    for name in order:
        try:
            proto = _torch_export(
                spec["module"], spec["args"], input_names=spec["input_names"], dynamic_shapes=spec["dynamic_shapes"],
                dynamic_axes=spec["dynamic_axes"], opset=opset, exporter=name, large_path=large_path,
                output_names=spec.get("output_names", GRAPH_OUTPUTS),
            )
        except Exception as exc:  # noqa: BLE001 - exporter internals raise many types; reported by name
            failures.append(f"{name} exporter failed: {_root_cause(exc)}")
            continue
        got = _default_opset(proto)
        if got != opset:  # the dynamo exporter builds opset >= 18 and keeps it when down-conversion fails
            failures.append(f"{name} exporter produced opset {got} instead of {opset} (its version conversion failed)")
            continue
        return proto, name, failures
    raise ExportError(f"{src}: ONNX export failed at opset {opset}: " + " | ".join(failures))


def _stamp_and_check(proto, meta: PromptFileMeta, graph: str, precision: str, used: str, opset: int, large_path, src: Path,
                     heatmap: str | None = None):
    """Stamp the IR version the opset needs (:func:`stamp_ir_version`), write the metadata (with the
    oldest ONNX Runtime that loads the graph) into ``proto`` and run ``onnx.checker`` on exactly what
    will be written.

    Returns:
        The serialised graph (bytes), or None when it was saved to ``large_path`` (external data).

    Raises:
        ExportError: the checker fails, or the batch axis is not dynamic.
    """
    import onnx

    ir_version = stamp_ir_version(proto)
    clean_value_info(proto, src)
    oldest_ort = min_onnxruntime(opset, ir_version)
    del proto.metadata_props[:]
    props = graph_metadata(meta, graph=graph, precision=precision, exporter=used, opset=opset)
    props[META_PREFIX + "min_onnxruntime"] = oldest_ort or f"newer than 1.18 (opset {opset}, IR {ir_version})"
    if heatmap is not None:
        props[META_PREFIX + "heatmap"] = heatmap
        props[META_PREFIX + "outputs"] += f"; heatmap [N, h, w] = {heatmap} on the patch grid, min-max normalised to [0, 1]"
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = (
        f"vptcli {__version__}: {meta.method} on {meta.backbone.get('name')} ({graph} graph, {precision}); "
        "input images float32 [N,3,H,W] RGB in [0,1]"
    )
    try:
        if large_path is not None:
            onnx.save_model(proto, large_path)  # the tensors stay in <large_path>.data
            onnx.checker.check_model(large_path, full_check=True)
            data = None
        else:
            data = proto.SerializeToString()
            onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker errors come in several types
        raise ExportError(f"{src}: the exported graph fails onnx.checker: {one_line(exc, 300)}") from None
    _check_dynamic_batch(proto, src)
    return data


def _parity(graph_source, parity_images: dict, reference: dict, tuned: dict, input_names: list[str], graph: str,
            n_classes: int, tol: float, precision: str, src: Path, ref_maps: dict | None = None) -> list[ParityCheck]:
    """Run the graph in ONNX Runtime (CPU) on the parity batches and compare with the fp32 reference.

    Raises:
        ExportError: the graph cannot be loaded, returns wrong shapes, or differs beyond ``tol``.
    """
    import numpy as np
    import onnxruntime as ort

    sess_opts = ort.SessionOptions()
    sess_opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(graph_source, sess_opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ExportError(f"{src}: ONNX Runtime cannot load the exported graph: {one_line(exc, 300)}") from None
    parity: list[ParityCheck] = []
    reference, ref_features = reference
    for b, x in parity_images.items():
        feed = {"images": x.numpy()}
        if graph == GRAPH_SHARED:
            if "prompts" in input_names:
                feed["prompts"] = tuned["prompts"].numpy()
            feed["head_weight"] = tuned["head.weight"].numpy()
            feed["head_bias"] = tuned["head.bias"].numpy()
        names = list(GRAPH_OUTPUTS) + (["heatmap"] if ref_maps is not None else [])
        logits, probs, feats, *maps = session.run(names, feed)
        ref = reference[b]
        if logits.shape != (b, n_classes) or probs.shape != (b, n_classes):
            raise ExportError(f"{src}: the graph returned shapes {logits.shape}/{probs.shape} for a batch of {b}, "
                              f"expected ({b}, {n_classes})")
        parity.append(ParityCheck(
            batch=b,
            max_abs_logits=float(np.abs(logits.astype(np.float64) - ref).max()),
            max_abs_probabilities=float(np.abs(probs.astype(np.float64) - _softmax(ref)).max()),
            top1_agree=int((logits.argmax(1) == ref.argmax(1)).sum()),
            max_rel_features=_relative_difference(feats, ref_features[b]),
        ))
        _check_parity(parity[-1], ref, logits, tol, precision, src)
        if ref_maps is not None:
            _check_heatmap_parity(parity[-1], ref_maps[b], maps[0], precision, src)
    return parity


def _ood_reference_bytes(src: Path, meta: PromptFileMeta, warn_list: list[str]) -> bytes | None:
    """The unfamiliar-image reference beside the prompt file (:data:`vptcli.ood.OOD_FILE`) when it was
    made for these prompt tensors, else None (and a warning when one is there but not usable)."""
    ref, why = reference_for(src.parent, meta.tensors_sha256)
    if why:
        warn_list.append(f"not copied into the export: {why}")
    return (src.parent / OOD_FILE).read_bytes() if ref is not None else None


def _write_export(src: Path, out: Path, onnx_name: str, data: bytes | None, large_path, warn_list: list[str],
                  ood_bytes: bytes | None = None, int8_graph: bytes | None = None):
    """Write the graph, the prompt-file copy, the unfamiliar-image reference (when there is one;
    a previous export's is removed otherwise) and ``model.int8.onnx`` (when given; else a stale one is
    removed) all-or-nothing: all are written in full under
    temporary names before any is renamed into place (:func:`vptcli.fsutil.atomic_write_all`), so a
    full disk leaves the folder as it was. Returns ``(prompt path, graph path, graph bytes incl.
    external data, prompt bytes)``."""
    out.mkdir(parents=True, exist_ok=True)
    prompt_bytes = src.read_bytes()
    prompt_out = out / "prompts.safetensors"
    onnx_path = out / onnx_name
    stale_data = out / f"{onnx_name}.data"
    int8_path = out / INT8_ONNX_FILE
    extra = {out / OOD_FILE: ood_bytes} if ood_bytes is not None else {}
    if int8_graph:
        extra[int8_path] = int8_graph
    stale_ood = ood_bytes is None and (out / OOD_FILE).is_file() and out.resolve() != src.parent.resolve()
    if data is not None:
        atomic_write_all({onnx_path: data, prompt_out: prompt_bytes, **extra})
        if stale_ood:  # removed only once the new files are in place (a full disk leaves the folder as it was)
            (out / OOD_FILE).unlink()
        if stale_data.exists():
            stale_data.unlink()
        if int8_graph is None and onnx_name == ONNX_FILE and int8_path.exists():
            int8_path.unlink()  # made from another prompt file
        return prompt_out, onnx_path, len(data), len(prompt_bytes)
    atomic_write_bytes(prompt_out, prompt_bytes)
    for path, blob in extra.items():
        atomic_write_bytes(path, blob)
    os.replace(f"{large_path}.data", stale_data)
    os.replace(large_path, onnx_path)
    os.rmdir(os.path.dirname(large_path))
    apply_umask_mode(stale_data)
    apply_umask_mode(onnx_path)
    if stale_ood:
        (out / OOD_FILE).unlink()
    if int8_graph is None and int8_path.exists():
        int8_path.unlink()  # made from another prompt file
    warn_list.append(f"weights exceed 2 GB: tensors are in {stale_data.name} beside {onnx_name}; keep both files together")
    return prompt_out, onnx_path, onnx_path.stat().st_size + stale_data.stat().st_size, len(prompt_bytes)


def _relative_difference(got, ref) -> float:
    """``max |got - ref| / max(1, max |ref|)``."""
    import numpy as np

    scale = max(1.0, float(np.abs(ref).max()))
    return float(np.abs(got.astype(np.float64) - ref).max()) / scale


def _softmax(logits):
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_dynamic_batch(proto, src: Path) -> None:
    """Refuse a graph whose ``images`` input has a fixed batch size."""
    for inp in proto.graph.input:
        if inp.name == "images":
            dim0 = inp.type.tensor_type.shape.dim[0]
            if not dim0.dim_param:
                raise ExportError(f"{src}: the exported graph has a fixed batch size ({dim0.dim_value}); expected a dynamic batch axis")
            return
    raise ExportError(f"{src}: the exported graph has no 'images' input")


def _check_parity(check: ParityCheck, ref, logits, tol: float, precision: str, src: Path) -> None:
    """Raise ExportError when logits differ by more than ``tol`` or top-1 differs outside a tie."""
    import numpy as np

    if not check.max_abs_logits <= tol:  # also catches NaN
        raise ExportError(
            f"{src}: parity check failed ({precision}, batch {check.batch}): max |logits ONNX - PyTorch| = "
            f"{check.max_abs_logits:.3g} > {tol:g}; the graph was not written"
        )
    top_ref, top_onnx = ref.argmax(1), logits.argmax(1)
    srt = np.sort(ref, axis=1)
    margin = srt[:, -1] - srt[:, -2] if ref.shape[1] > 1 else np.full(ref.shape[0], np.inf)
    bad = (top_ref != top_onnx) & (margin > tol)
    if bad.any():
        raise ExportError(
            f"{src}: parity check failed ({precision}, batch {check.batch}): top-1 differs on "
            f"{int(bad.sum())} of {check.batch} images; the graph was not written"
        )
    if not check.max_rel_features <= tol:  # also catches NaN
        raise ExportError(
            f"{src}: parity check failed ({precision}, batch {check.batch}): max relative |features ONNX - PyTorch| = "
            f"{check.max_rel_features:.3g} > {tol:g}; the graph was not written"
        )


def _heatmap_reference(model, heatmap: str | None, parity_images: dict) -> dict | None:
    """PyTorch's heatmaps ``{batch: [b, h, w] float64}`` for the parity check, or None without ``heatmap``.

    Raises:
        ExportError / ExplainError: a method that needs gradients or does not apply to the model.
    """
    if heatmap is None:
        return None
    import torch

    from vptcli.explain import GRADIENT_FREE_METHODS, attention_heatmaps, check_method

    check_method(heatmap, model, flag="--heatmap")
    if heatmap not in GRADIENT_FREE_METHODS:
        raise ExportError(f"--heatmap {heatmap}: a graph has no gradients; choose {' or '.join(GRADIENT_FREE_METHODS)}")
    with torch.inference_mode():
        return {b: attention_heatmaps(model, x, heatmap)[1].numpy().astype("float64") for b, x in parity_images.items()}


HEATMAP_TOL = 1e-3
"""Largest |heatmap ONNX - PyTorch| accepted (maps in [0, 1]); fp16: :data:`FP16_HEATMAP_TOL`."""
FP16_HEATMAP_TOL = 1e-1


def _check_heatmap_parity(check: ParityCheck, ref, maps, precision: str, src: Path) -> None:
    """Record and check the ``heatmap`` output's difference (ExportError beyond the tolerance)."""
    import numpy as np

    if maps.shape != ref.shape:
        raise ExportError(f"{src}: the graph's heatmap has shape {maps.shape}, PyTorch's {ref.shape}")
    check.max_abs_heatmap = float(np.abs(maps.astype(np.float64) - ref).max())
    tol = FP16_HEATMAP_TOL if precision == "fp16" else HEATMAP_TOL
    if not check.max_abs_heatmap <= tol:
        raise ExportError(f"{src}: heatmap parity check failed ({precision}, batch {check.batch}): max |heatmap ONNX - "
                          f"PyTorch| = {check.max_abs_heatmap:.3g} > {tol:g}; the graph was not written")


def meta_from_graph(gm: dict[str, str], onnx_path: str | os.PathLike) -> PromptFileMeta:
    """A :class:`~vptcli.artifacts.PromptFileMeta` rebuilt from a single graph's metadata
    (:func:`read_graph_metadata`): class names, preprocessing, method, prompt settings, backbone
    identity and architecture, so a single-file ``model.onnx`` predicts without its prompt file.

    Raises:
        ArtifactError: the metadata is not that of a single graph written by ``vpt export`` or lacks
            a field (the message names the graph).
    """
    if gm.get("graph") != GRAPH_SINGLE:
        raise ArtifactError(f"{onnx_path}: not a single graph written by `vpt export`; it cannot predict on its own")
    try:
        pre = json.loads(gm["preprocessing"])
        arch = json.loads(gm["architecture"])
        return PromptFileMeta(
            method=gm["method"],
            prompt=json.loads(gm["prompt"]),
            backbone=json.loads(gm["backbone"]),
            embed_dim=int(arch["embed_dim"]),
            depth=int(arch["depth"]),
            num_prefix_tokens=int(arch["num_prefix_tokens"]),
            img_size=int(pre["img_size"]),
            mean=[float(v) for v in pre["mean"]],
            std=[float(v) for v in pre["std"]],
            interpolation=str(pre["interpolation"]),
            crop_pct=float(pre["crop_pct"]),
            crop_mode=str(pre["crop_mode"]),
            classes=[str(c) for c in json.loads(gm["classes"])],
            data_fingerprint=gm.get("data_fingerprint", ""),
            tool_version=gm.get("version", ""),
            tensors_sha256=gm.get("prompt_tensors_sha256", ""),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(
            f"{onnx_path}: its vptcli metadata is incomplete ({type(exc).__name__}: {exc}); re-export it "
            "with `vpt export`, or pass the prompt file with --prompt-file"
        ) from None


def read_graph_metadata(session) -> dict[str, str]:
    """The ``vptcli.*`` metadata of an ONNX Runtime session's model, keys without the prefix."""
    props = session.get_modelmeta().custom_metadata_map or {}
    return {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}


__all__ = [
    "DEFAULT_OPSET",
    "FP16_LOGIT_TOL",
    "FP32_LOGIT_TOL",
    "GRAPH_SHARED",
    "GRAPH_SINGLE",
    "INT8_ONNX_FILE",
    "MIN_OPSET",
    "ONNX_FILE",
    "ORT_FOR_IR",
    "ORT_FOR_OPSET",
    "SHARED_ONNX_FILE",
    "ArtifactError",
    "ExportError",
    "ExportResult",
    "ParityCheck",
    "clean_value_info",
    "export_onnx",
    "graph_metadata",
    "meta_from_graph",
    "min_onnxruntime",
    "read_graph_metadata",
    "shared_structure",
    "stamp_ir_version",
    "synthetic_images",
]
