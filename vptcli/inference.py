"""Prediction on image files: one :class:`Predictor` interface, two backends (``vpt predict``).

- :class:`TorchPredictor`: the prompt file (run folder, export folder or ``.safetensors``) loaded on its
  backbone with :func:`vptcli.artifacts.load_model`; device ``auto | cpu | cuda``
  (:func:`vptcli.device.resolve_device`).
- :class:`OnnxPredictor`: ONNX Runtime on ``model.onnx`` of an export folder (single graph), or on a
  shared-backbone graph (``shared.onnx``) fed with the prompt tokens and head of a prompt file
  (``--onnx shared.onnx --prompt-file task.safetensors``). The prompt file's metadata gives the classes and
  the preprocessing; the graph's metadata must name the same backbone (timm name and weights sha256),
  image size, mean/std and prompt structure, and a single graph must have been made from exactly this
  prompt file (tensor digest), otherwise the pair is refused with the difference shown.

Both backends decode with :func:`vptcli.images.decode_image` (content sniffing, EXIF orientation, bit
depth, alpha, CMYK: exactly what ``vpt ingest`` and training see) and preprocess with
:func:`vptcli.datasets.eval_transform` on the artefact's data config, so the same file gives the same
input tensor to either backend.

Execution providers (ONNX Runtime): ``cpu`` -> ``CPUExecutionProvider``. ``cuda`` -> requires
``CUDAExecutionProvider``; the check is made on ``session.get_providers()`` *after* the session was
created (a GPU build of onnxruntime lists CUDA in ``get_available_providers()`` even where the CUDA
libraries or the GPU are missing, and then silently falls back to CPU), and the error names what is
missing (the provider in the installed onnxruntime, or the library / GPU onnxruntime reported).
``auto`` -> CUDA when it can be created, else CPU with one warning. The provider actually used is in
:attr:`Predictor.device`.

Streaming (:func:`predict_files`): paths are expanded up front (paths only), images are decoded and
preprocessed one batch ahead in a small thread pool and dropped after their batch; rows are yielded
(and written by :class:`RowWriter`) as they are produced, so memory stays flat however many images.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vptcli.artifacts import ArtifactError, PromptFileMeta, read_prompt_file, resolve_prompt_path
from vptcli.device import check_device, resolve_device
from vptcli.errors import VptError, one_line
from vptcli.files import ignore_kind, walk_files
from vptcli.fsutil import AtomicFile

BACKENDS = ("auto", "torch", "onnx")

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
STATUS_OK = "ok"
STATUS_REVIEW = "review"
STATUS_ERROR = "error"
STATUS_UNFAMILIAR = "unfamiliar"
OUTPUT_SUFFIXES = (".csv", ".jsonl")


_GLOB_CHARS = re.compile(r"[*?\[]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class PredictorError(VptError):
    """A model / graph / prompt-file combination that cannot be used for prediction."""


# --------------------------------------------------------------------------------------- predictors


class Predictor:
    """Common interface of the two backends.

    Attributes:
        backend: ``"torch"`` | ``"onnx"``.
        device: what actually runs the model: a torch device (``"cpu"``, ``"cuda:0"``) or the ONNX
            Runtime execution provider (``"CPUExecutionProvider"``, ``"CUDAExecutionProvider"``).
        meta: the prompt file's :class:`~vptcli.artifacts.PromptFileMeta`.
        classes: class names in index order (``C`` of them).
        source: human-readable description of what was loaded.
        warnings: messages the caller should show once (fallbacks, ``--force``).
        ood: the unfamiliar-image reference found beside the prompt file or graph
            (:class:`vptcli.ood.OodReference`), or None (then rows have no ``ood_score``).
    """

    backend: str = ""
    device: str = ""
    meta: PromptFileMeta
    source: str = ""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self._transform = None
        self.ood = None

    def set_ood_level(self, level: float | None) -> None:
        """Put the unfamiliar-image threshold at ``level`` (None: keep the reference's own; see
        :meth:`vptcli.ood.OodReference.at_level`). Without a reference nothing changes.

        Raises:
            VptError: ``level`` outside (0, 1).
        """
        if level is not None and self.ood is not None:
            self.ood = self.ood.at_level(level)

    def _find_reference(self, folder: Path) -> None:
        """Set :attr:`ood` from ``folder`` when its reference belongs to this prompt file (else a warning)."""
        from vptcli.ood import reference_for

        self.ood, why = reference_for(folder, self.meta.tensors_sha256)
        if why:
            self.warnings.append(why)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes)

    @property
    def img_size(self) -> int:
        return int(self.meta.img_size)

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded ``[H, W, 3]`` uint8 RGB -> ``[3, S, S]`` float32 in ``[0, 1]`` (the artefact's eval
        transform: resize, centre crop, interpolation from its data config; no normalisation)."""
        if self._transform is None:
            from vptcli.datasets import eval_transform

            self._transform = eval_transform(self.meta.data_config)
        return self._transform(pixels).numpy().astype(np.float32, copy=False)

    def predict_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``images [N, 3, S, S]`` float32 in ``[0, 1]`` -> ``(logits [N, C], probabilities [N, C])``
        as float32 numpy arrays (probabilities = softmax(logits), applied once)."""
        logits, probs, _ = self.forward_batch(images)
        return logits, probs

    def forward_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """As :meth:`predict_batch`, plus the head's input ``features [N, F]`` float32 (None for an
        ONNX graph exported without a ``features`` output). A subclass that only defines
        :meth:`predict_batch` gets no features."""
        if type(self).predict_batch is Predictor.predict_batch:
            raise NotImplementedError
        logits, probs = self.predict_batch(images)
        return logits, probs, None


class TorchPredictor(Predictor):
    """PyTorch backend: :func:`vptcli.artifacts.load_model` on ``model_path``.

    Args:
        model_path: run folder, export folder or prompt file.
        device: ``auto`` | ``cpu`` | ``cuda`` (VptError for cuda without a GPU).
        weights, force: see :func:`vptcli.artifacts.load_model`.

    Raises:
        ArtifactError / VptError: unreadable or mismatching prompt file, unavailable backbone or device.
    """

    backend = "torch"

    def __init__(self, model_path: str | os.PathLike, *, device: str = "auto", weights: str | None = None,
                 force: bool = False) -> None:
        super().__init__()
        from vptcli.artifacts import load_model

        check_device(device)
        dev = resolve_device(device)
        model, meta, _bb, warns = load_model(model_path, weights=weights, force=force)
        self.meta = meta
        self.model = model.to(dev).eval()
        self._dev = dev
        self.warnings.extend(warns)
        self.device = str(dev) if dev.type == "cpu" else f"{dev} ({_cuda_name(dev)})"
        self.source = str(resolve_prompt_path(model_path))
        self._find_reference(Path(self.source).parent)

    def forward_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            feats = self.model.features(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self._dev))
            logits = self.model.head(feats).float()
            probs = torch.softmax(logits, dim=-1)
        return logits.cpu().numpy(), probs.cpu().numpy(), feats.float().cpu().numpy()


def _cuda_name(dev) -> str:
    import torch

    try:
        return torch.cuda.get_device_name(dev)
    except Exception:  # noqa: BLE001 - a name is cosmetic
        return "CUDA"


class OnnxPredictor(Predictor):
    """ONNX Runtime backend.

    Args:
        onnx_path: the graph (``model.onnx`` or a shared-backbone graph).
        prompt_path: the prompt file (run / export folder or ``.safetensors``) whose metadata gives the
            classes and preprocessing, and, for a shared graph, the prompts and head fed to it.
            ``None``: a single graph predicts on its own, from the class names and preprocessing in
            its metadata; a shared-backbone graph needs one.
        device: ``auto`` | ``cpu`` | ``cuda`` (see the module docstring).

    Raises:
        PredictorError: graph unreadable, not written by vpt export, or not matching the prompt file
            (backbone identity, image size, normalisation, prompt structure, prompt-file digest);
            a shared-backbone graph without a prompt file; ``cuda`` asked for but
            ``CUDAExecutionProvider`` not obtained.
        ArtifactError: unreadable prompt file.
    """

    backend = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, prompt_path: str | os.PathLike | None = None, *,
                 device: str = "auto", threads: int | None = None) -> None:
        super().__init__()
        from vptcli.export import GRAPH_SHARED, GRAPH_SINGLE, meta_from_graph, read_graph_metadata

        check_device(device)
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise PredictorError(f"{self.onnx_path}: no such ONNX file")
        tensors, meta = read_prompt_file(prompt_path) if prompt_path is not None else ({}, None)
        self.prompt_path = resolve_prompt_path(prompt_path) if prompt_path is not None else None
        self.session, self.device, warns = create_session(self.onnx_path, device, threads)
        self.warnings.extend(warns)
        gm = read_graph_metadata(self.session)
        kind = gm.get("graph")
        if kind not in (GRAPH_SINGLE, GRAPH_SHARED):
            raise PredictorError(f"{self.onnx_path}: not a graph written by `vpt export` (no vptcli metadata)")
        if meta is None:
            if kind == GRAPH_SHARED:
                raise PredictorError(
                    f"{self.onnx_path} is a shared-backbone graph: its prompts and head are inputs, so it "
                    "needs the prompt file to use: --prompt-file FILE.safetensors"
                )
            meta = meta_from_graph(gm, self.onnx_path)
        else:
            _check_graph_matches(gm, meta, self.onnx_path, self.prompt_path)
        self.meta = meta
        self.graph = kind
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._extra: dict[str, np.ndarray] = {}
        if kind == GRAPH_SHARED:
            if "prompts" in self.input_names:
                self._extra["prompts"] = tensors["prompts"].float().numpy()
            self._extra["head_weight"] = tensors["head.weight"].float().numpy()
            self._extra["head_bias"] = tensors["head.bias"].float().numpy()
        self.source = f"{self.onnx_path} + {self.prompt_path}" if kind == GRAPH_SHARED else str(self.onnx_path)
        self.outputs = ["logits", "probabilities"]
        if "features" in {o.name for o in self.session.get_outputs()}:
            self.outputs.append("features")
        self._find_reference(self.prompt_path.parent if self.prompt_path is not None else self.onnx_path.parent)
        if self.ood is not None and "features" not in self.outputs:
            self.ood = None
            self.warnings.append(f"{self.onnx_path} has no features output (exported by an older vpt); ood_score not "
                                 "computed: export it again")
        elif self.ood is not None and gm.get("precision") == "int8":  # threshold calibrated on fp32 features
            self.ood = None
            self.warnings.append(f"{self.onnx_path} is the int8 graph: its features are quantised and the unfamiliar-image "
                                 "threshold was calibrated in fp32, so ood_score is not computed; use model.onnx for it")

    def forward_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        feed = {"images": np.ascontiguousarray(images, dtype=np.float32), **self._extra}
        out = self.session.run(self.outputs, feed)
        feats = out[2].astype(np.float32, copy=False) if len(out) > 2 else None
        return out[0].astype(np.float32, copy=False), out[1].astype(np.float32, copy=False), feats


def _check_graph_matches(gm: dict, meta: PromptFileMeta, onnx_path: Path, prompt_path: Path) -> None:
    """Refuse a graph and a prompt file that do not belong together (differences listed)."""
    from vptcli.export import GRAPH_SINGLE, shared_structure

    def js(key: str, default=None):
        try:
            return json.loads(gm[key])
        except (KeyError, ValueError):
            return default

    backbone = js("backbone", {}) or {}
    pre = js("preprocessing", {}) or {}
    arch = js("architecture", {}) or {}
    checks = {
        "backbone name": (backbone.get("name"), meta.backbone.get("name")),
        "backbone weights sha256": (backbone.get("sha256"), meta.backbone.get("sha256")),
        "embed dim": (arch.get("embed_dim"), meta.embed_dim),
        "depth": (arch.get("depth"), meta.depth),
        "image size": (pre.get("img_size"), meta.img_size),
        "mean": (_rounded(pre.get("mean")), _rounded(meta.mean)),
        "std": (_rounded(pre.get("std")), _rounded(meta.std)),
    }
    if gm.get("graph") == GRAPH_SINGLE:
        checks["prompt tensors sha256"] = (gm.get("prompt_tensors_sha256"), meta.tensors_sha256)
    else:
        if meta.kind == "full-model":
            raise PredictorError(f"{prompt_path}: a full fine-tuning artefact cannot run on a shared backbone graph ({onnx_path}); use its own export or --backend torch")
        checks["prompt structure"] = (js("prompt_structure"), shared_structure(meta))
    diff = [f"{k}: graph={a} prompt file={b}" for k, (a, b) in checks.items() if a != b]
    if diff:
        what = "was not exported from" if gm.get("graph") == GRAPH_SINGLE else "does not fit"
        raise PredictorError(f"{onnx_path} {what} {prompt_path}: " + "; ".join(diff))


def _rounded(values) -> list | None:
    return None if values is None else [round(float(v), 6) for v in values]


# ---------------------------------------------------------------------------------------- providers


@contextlib.contextmanager
def _captured_stderr_fd():
    """Capture what native code writes to file descriptor 2 (ONNX Runtime's provider errors)."""
    buf = io.StringIO()
    try:
        fd = 2
        saved = os.dup(fd)
    except OSError:  # no real stderr (embedded interpreters)
        yield buf
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        with contextlib.suppress(Exception):
            import sys

            sys.stderr.flush()
        os.dup2(tmp.fileno(), fd)
        try:
            yield buf
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            buf.write(tmp.read().decode("utf-8", "replace"))


def _cuda_failure_reason(log: str, short: bool = False) -> str:
    """One line from ONNX Runtime's log (and torch) saying why the CUDA provider could not be created.
    ``short``: only the most telling part (no GPU visible, else the library that failed to load),
    for the one-line warning of ``--device auto``."""
    text = _ANSI.sub("", log)
    if short:
        with contextlib.suppress(Exception):
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU visible"
        m = re.search(r"Failed to load library (\S+) with error: ([^:\n]+)", text)
        if m:
            return f"{Path(m.group(1)).name} not loadable: {m.group(2).strip()}"
        m = re.search(r"(Require cuDNN \S+ and CUDA \d+(?:\.\*)?)", text)
        return m.group(1) if m else "onnxruntime did not say why"
    parts = []
    m = re.search(r"Failed to load library (\S+) with error: ([^\n]+)", text)
    if m:
        parts.append(f"{Path(m.group(1)).name} could not be loaded ({m.group(2).strip()})")
    m = re.search(r"(Require cuDNN \S+ and CUDA \d+(?:\.\*)?)", text)
    if m:
        parts.append(f"onnxruntime says: {m.group(1)}")
    with contextlib.suppress(Exception):  # torch is only consulted for the message
        import torch

        if not torch.cuda.is_available():
            parts.append("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    return "; ".join(parts) or "onnxruntime did not say why"


def create_session(onnx_path: str | os.PathLike, device: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the requested device.

    ``threads``: intra-op threads (:func:`vptcli.cpus.ort_intra_op_threads`: by default the CPUs this
    process may use when a container or affinity mask limits them, else the runtime's default).
    Graph optimisation level ``ORT_ENABLE_ALL``, sequential execution. No I/O binding on CUDA: the
    images are decoded on the CPU, so each batch is copied to the GPU once either way, and the outputs
    (``[N, C]``) are small.

    Returns:
        ``(session, provider_used, warnings)``; ``provider_used`` is the first of
        ``session.get_providers()``.

    Raises:
        PredictorError: ``device="cuda"`` and the session did not get ``CUDAExecutionProvider`` (the
            message names what is missing); the graph cannot be loaded.
    """
    import onnxruntime as ort

    check_device(device)
    with contextlib.suppress(Exception):  # the runtime's own (environment) logger: errors only
        ort.set_default_logger_severity(3)
    available = list(ort.get_available_providers())
    warns: list[str] = []
    from vptcli.cpus import ort_intra_op_threads

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = ort_intra_op_threads(threads)
    # Chosen, not left to defaults: every graph optimisation (layout and fusions, which the int8 graph's
    # DynamicQuantizeLinear + MatMulInteger pairs need to become MatMulIntegerToFloat), one graph
    # executed in order (a ViT is a chain: parallel execution only adds inter-op threads).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    want_cuda = device in ("auto", "cuda")
    if want_cuda and CUDA_EP not in available:
        if device == "cuda":
            raise PredictorError(
                f"--device cuda needs ONNX Runtime's {CUDA_EP}, which this onnxruntime "
                f"{ort.__version__} does not have (available: {', '.join(available)}); install "
                "onnxruntime-gpu, or use --device cpu"
            )
        warns.append(f"{CUDA_EP} is not in this onnxruntime {ort.__version__} (available: {', '.join(available)}); running on {CPU_EP}")
        want_cuda = False
    providers = [CUDA_EP, CPU_EP] if want_cuda else [CPU_EP]
    with _captured_stderr_fd() as log:
        try:
            session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            session, err = None, exc
    if session is None:
        raise PredictorError(f"{onnx_path}: ONNX Runtime cannot load this graph: {one_line(err, 300)}")
    used = list(session.get_providers())
    if want_cuda and CUDA_EP not in used:
        reason = _cuda_failure_reason(log.getvalue())
        if device == "cuda":
            raise PredictorError(
                f"--device cuda: the ONNX Runtime session did not get {CUDA_EP} (it got {', '.join(used)}): "
                f"{reason}. Install the CUDA/cuDNN libraries onnxruntime {ort.__version__} needs, or use --device cpu"
            )
        warns.append(f"CUDA not used ({_cuda_failure_reason(log.getvalue(), short=True)}); ONNX Runtime runs on "
                     f"{used[0] if used else CPU_EP}")
    return session, (used[0] if used else CPU_EP), warns


# ------------------------------------------------------------------------------------ construction


def find_graph(path: str | os.PathLike, int8: bool = False) -> Path | None:
    """The ONNX graph of an export folder (``model.onnx``, else ``shared.onnx``; ``model.int8.onnx``
    with ``int8``), a ``.onnx`` file itself, or None.

    Raises:
        PredictorError: ``int8`` and the folder has no ``model.int8.onnx``, or ``path`` is a file.
    """
    from vptcli.export import INT8_ONNX_FILE, ONNX_FILE, SHARED_ONNX_FILE

    p = Path(path)
    if int8:
        if p.is_dir() and (p / INT8_ONNX_FILE).is_file():
            return p / INT8_ONNX_FILE
        raise PredictorError(f"{p}: --int8 needs an export folder with {INT8_ONNX_FILE}; run `vpt export RUN --out DIR --int8`"
                             " (or pass an .onnx file with --onnx, without --int8)")
    if p.is_file() and p.suffix.lower() == ".onnx":
        return p
    if p.is_dir():
        for name in (ONNX_FILE, SHARED_ONNX_FILE):
            if (p / name).is_file():
                return p / name
    return None


def open_predictor(
    model: str | os.PathLike | None,
    *,
    backend: str = "auto",
    device: str = "auto",
    onnx: str | os.PathLike | None = None,
    prompts: str | os.PathLike | None = None,
    weights: str | None = None,
    force: bool = False,
    threads: int | None = None,
    int8: bool = False,
) -> Predictor:
    """Open the predictor for ``vpt predict``'s MODEL / ``--onnx`` / ``--prompt-file``.

    ``threads``: ONNX Runtime intra-op threads and PyTorch threads (default: the CPUs this process
    may use, see :mod:`vptcli.cpus`). ``int8``: the export folder's ``model.int8.onnx`` (ONNX backend).

    ``backend="auto"``: ONNX when ``onnx`` is given or MODEL is an export folder with a graph (or a
    ``.onnx`` file), else PyTorch. The prompt file is ``prompts`` when given, else MODEL's
    (``prompts.safetensors`` of a folder; the one beside a ``.onnx`` file). With ``onnx`` and no
    ``prompts`` (or a ``.onnx`` MODEL with no prompt file beside it), a single graph predicts on its
    own (classes and preprocessing from its metadata); only a shared-backbone graph needs ``prompts``.

    Raises:
        VptError / PredictorError / ArtifactError: nothing usable given, graph missing for the ONNX
        backend, or a mismatch (see the backends).
    """
    if backend not in BACKENDS:
        raise VptError(f"--backend must be auto, torch or onnx, got {backend!r}")
    from vptcli.cpus import apply_torch_threads, check_threads

    check_threads(threads)
    if model is None and onnx is None and prompts is None:
        raise VptError("give MODEL (a run folder, export folder or prompt file) or --onnx/--prompt-file")
    if int8 and (onnx is not None or backend == "torch"):
        raise VptError("--int8 picks model.int8.onnx of an export folder for the ONNX backend; with --onnx pass that "
                       "file itself, and --backend torch has no int8 model")
    graph = Path(onnx) if onnx is not None else (find_graph(model, int8) if model is not None else None)
    if backend == "auto":
        _refuse_export_without_graph(model, graph)
        backend = "onnx" if graph is not None else "torch"
    if backend == "torch":
        if prompts is not None:
            prompt_src: Path = Path(prompts)
        elif model is not None and Path(model).is_file() and Path(model).suffix.lower() == ".onnx":
            prompt_src = Path(model).parent
        elif model is not None:
            prompt_src = Path(model)
        else:
            raise VptError("--backend torch needs a prompt file: pass MODEL (a run folder, export folder or "
                           "prompt file) or --prompt-file FILE")
        apply_torch_threads(threads)
        return TorchPredictor(prompt_src, device=device, weights=weights, force=force)
    if graph is None:
        raise PredictorError(
            f"{model}: no model.onnx or shared.onnx here; run `vpt export {model} --out DIR` first, pass "
            "--onnx FILE, or use --backend torch"
        )
    if weights is not None or force:
        raise VptError("--weights/--force apply to the torch backend only; an ONNX graph carries its own backbone")
    # The prompt file: --prompt-file, else the one beside the graph (an export folder's copy, checked against
    # the graph); none: a single graph predicts from its own metadata, a shared graph says it needs one.
    prompt_file: Path | None = Path(prompts) if prompts is not None else None
    if prompt_file is None and model is not None:
        from vptcli.artifacts import PROMPT_FILE

        folder = Path(model) if Path(model).is_dir() else Path(model).parent
        if Path(model).suffix.lower() == ".safetensors" and Path(model).is_file():
            prompt_file = Path(model)
        elif (folder / PROMPT_FILE).is_file():
            prompt_file = folder / PROMPT_FILE
    return OnnxPredictor(graph, prompt_file, device=device, threads=threads)


def _refuse_export_without_graph(model, graph) -> None:
    """``--backend auto`` never switches to PyTorch silently: a folder that holds a prompt file but no
    graph and is not a run folder of ``vpt train`` (no ``config.json``) is an incomplete export."""
    from vptcli.artifacts import PROMPT_FILE

    if graph is not None or model is None or not Path(model).is_dir():
        return
    folder = Path(model)
    if not (folder / PROMPT_FILE).is_file() or (folder / "config.json").is_file():
        return
    leftovers = sorted(p.name for p in folder.glob(".*.onnx.*.tmp"))
    why = f" (an interrupted write left {leftovers[0]})" if leftovers else ""
    raise PredictorError(
        f"{folder}: export folder without its graph: {PROMPT_FILE} is here but model.onnx is missing{why}; "
        f"re-run `vpt export` into it, or pass --backend torch to run the prompt file with PyTorch"
    )


# ------------------------------------------------------------------------------------------- inputs


def _walk(folder: Path, skip_folder: Callable[[Path], bool] | None = None) -> Iterator[tuple[Path, Path | None]]:
    """Files under ``folder`` as ingest scans them (:func:`vptcli.files.walk_files`: recursive,
    sorted, links followed, loops cut, hidden and system files skipped), as ``(path, skipped_in)``:
    ``skipped_in`` is the folder (``folder`` itself included) for which ``skip_folder`` is true that
    ``path`` lies in, else None. An unlistable sub-folder is yielded itself (its row then says it is
    unreadable)."""
    top = os.path.abspath(folder)
    owner: dict[str, Path | None] = {}

    def skipped_in(d: Path) -> Path | None:
        key = os.path.abspath(d)
        if key not in owner:
            inside = key != top and Path(key).is_relative_to(top)
            parent = skipped_in(d.parent) if inside else None
            owner[key] = parent if parent is not None else d if skip_folder is not None and skip_folder(d) else None
        return owner[key]

    for path, error in walk_files(folder):  # an unlistable folder comes as itself, with its error
        yield path, skipped_in(path if error is not None else path.parent)


def is_image_name(path: Path) -> bool:
    """True for a usual image file suffix (:data:`vptcli.images.IMAGE_SUFFIXES`, any case)."""
    from vptcli.images import IMAGE_SUFFIXES

    return path.suffix.lower() in IMAGE_SUFFIXES


def expand_inputs(inputs: Iterable[str | os.PathLike], skip_folder: Callable[[Path], bool] | None = None,
                  ) -> tuple[list[Path], list[tuple[str, str]], list[Path]]:
    """PATH arguments -> ``(image paths in order without duplicates, [(argument, problem)], skipped)``.

    - a file is taken as is, whatever its name (decoding then decides by content);
    - a folder is walked recursively (:func:`_walk`: hidden files and folders, ``__MACOSX`` and
      ``Thumbs.db`` are ignored as in ingest) and its files with an image suffix are taken; other files
      (``labels.csv``, ``README.md``, ...) are listed in ``skipped`` instead of becoming error rows,
      and so is, once, a folder inside it (or itself) for which ``skip_folder`` is true (``vpt predict`` passes
      :func:`vptcli.commands.predict.is_output_folder`: the plots and heatmaps of a folder written by
      vpt are not images to judge);
    - an argument with ``*``, ``?`` or ``[`` that is not an existing path is a glob (``**``
      recursive): matching files are taken as is (hidden ones excepted), matching folders walked.

    A missing path or a glob matching nothing is a problem (an error row in :func:`predict_files`).
    """
    paths: list[Path] = []
    skipped: list[Path] = []
    seen: set[str] = set()
    problems: list[tuple[str, str]] = []

    def add(p: Path) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            paths.append(p)

    def add_folder(folder: Path) -> None:
        for f, skipped_by in _walk(folder, skip_folder):
            if skipped_by is None and (is_image_name(f) or f.is_dir()):
                add(f)
            else:
                skipped.append(skipped_by or f)

    for arg in inputs:
        s = str(arg)
        p = Path(s)
        if p.is_dir():
            add_folder(p)
        elif p.exists() or p.is_symlink():
            add(p)
        elif _GLOB_CHARS.search(s):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                problems.append((s, "missing: no file matches this pattern"))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    add_folder(mp)
                elif ignore_kind(mp.name, False) is None:
                    add(mp)
        else:
            problems.append((s, "missing: no such file or folder"))
    return paths, problems, list(dict.fromkeys(skipped))  # a model folder once, not once per file


# -------------------------------------------------------------------------------------------- rows


@dataclass
class PredictionRow:
    """One output row.

    ``label``: the predicted class for ``ok``; None for ``review`` (confidence under the threshold:
    the top-k columns still show what the model thought), ``unfamiliar`` (``ood_score`` above the
    reference's threshold: the model has not learned to judge such an image) and ``error``.
    ``confidence``: top-1 probability. ``top_k``: ``[(class, probability)]`` best first. ``status``:
    ok | review | unfamiliar | error. ``reason``: why review / unfamiliar / error ("" for ok).
    ``ood_score``: :mod:`vptcli.ood`'s score, None without a reference.
    """

    path: str
    label: str | None
    confidence: float | None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    status: str = STATUS_OK
    reason: str = ""
    ood_score: float | None = None

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": c, "probability": p} for c, p in self.top_k],
            "ood_score": self.ood_score,
            "status": self.status,
            "reason": self.reason,
        }


def csv_header(top_k: int) -> list[str]:
    cols = ["path", "label", "confidence"]
    for i in range(1, top_k + 1):
        cols += [f"top{i}_label", f"top{i}_probability"]
    return cols + ["ood_score", "status", "reason"]


def csv_row(row: PredictionRow, top_k: int) -> list[str]:
    cells = [row.path, row.label or "", "" if row.confidence is None else f"{row.confidence:.6f}"]
    for i in range(top_k):
        if i < len(row.top_k):
            cells += [row.top_k[i][0], f"{row.top_k[i][1]:.6f}"]
        else:
            cells += ["", ""]
    return cells + ["" if row.ood_score is None else f"{row.ood_score:.6g}", row.status, row.reason]


class RowWriter:
    """Streams rows to a ``.csv`` or ``.jsonl`` file (atomically: a temporary file in the same folder,
    fsynced and renamed over ``path`` on :meth:`close`; discarded on :meth:`abort`), or to a text
    stream (``path=None``, CSV).

    A full disk loses no finished row: each row is flushed as it is written, and when the disk fills
    up the rows written so far (complete lines only) are kept in ``<stem>.partial<suffix>`` beside
    ``path`` (an existing ``path`` is left as it was) and :class:`~vptcli.fsutil.DiskFullError` says so.

    Raises:
        VptError: an unsupported extension.
    """

    def __init__(self, path: str | os.PathLike | None, top_k: int, stream=None, extra: dict | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.top_k = top_k
        self.extra = dict(extra or {})  # constant columns after the row's own (e.g. registry task, version, digest)
        self.format = "csv"
        self.rows = 0
        self._tmp = None
        self._good = 0  # bytes of complete lines known to be flushed
        if self.path is not None:
            suffix = self.path.suffix.lower()
            if suffix not in OUTPUT_SUFFIXES:
                raise VptError(f"--out {self.path}: use a .csv or .jsonl file name (the extension picks the format)")
            self.format = suffix[1:]
            self._tmp = AtomicFile(self.path, "w", encoding="utf-8", newline="")
            self._fh = self._tmp.file
        else:
            self._fh = stream
        if self.format == "csv":
            self._put(self._csv_line(csv_header(top_k) + list(self.extra)))

    @staticmethod
    def _csv_line(cells: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    def _put(self, text: str) -> None:
        try:
            self._fh.write(text)
            if self._tmp is not None:
                self._fh.flush()
        except OSError as exc:
            from vptcli.fsutil import is_disk_full

            if self._tmp is not None and is_disk_full(exc):
                self._keep_partial()
            raise
        self._good += len(text.encode("utf-8"))

    def _keep_partial(self) -> None:
        """Disk full: keep the complete lines written so far as ``<stem>.partial<suffix>``; raises."""
        from vptcli.fsutil import DiskFullError, apply_umask_mode

        tmp, self._tmp = self._tmp, None
        with contextlib.suppress(OSError, ValueError):
            tmp.file.close()
        partial = self.path.with_name(f"{self.path.stem}.partial{self.path.suffix}")
        try:
            os.truncate(tmp._tmp, self._good)
            apply_umask_mode(tmp._tmp)
            os.replace(tmp._tmp, partial)
        except OSError:
            tmp.abort()
            raise DiskFullError(
                f"{self.path}: the disk filled up after {self.rows} row(s) and they could not be kept; free "
                "some space and run again"
            ) from None
        raise DiskFullError(
            f"{self.path}: the disk filled up after {self.rows} row(s); those rows are kept in {partial} "
            f"({self._good:,} bytes); free some space and run again (nothing else was changed)"
        ) from None

    def write(self, row: PredictionRow) -> None:
        if self.format == "csv":
            self._put(self._csv_line(csv_row(row, self.top_k) + [str(v) for v in self.extra.values()]))
        else:
            self._put(json.dumps({**row.to_json(), **self.extra}, ensure_ascii=False) + "\n")
        self.rows += 1

    def close(self) -> None:
        if self._tmp is None:
            if self.path is None:
                self._fh.flush()
            return
        self._tmp.commit()
        self._tmp = None

    def abort(self) -> None:
        if self._tmp is not None:
            self._tmp.abort()
            self._tmp = None


# ---------------------------------------------------------------------------------------- predicting


def _load_one(predictor: Predictor, path: Path, max_pixels: int | None, bit_depth: int | None):
    """-> ``([3, S, S] float32, None)`` or ``(None, reason)``."""
    from vptcli.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

    try:
        img = decode_image(path, max_pixels=max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS, bit_depth=bit_depth)
        return predictor.preprocess(img.pixels), None
    except ImageDecodeError as exc:
        return None, exc.reason
    except VptError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        return None, f"preprocessing failed: {type(exc).__name__}: {one_line(exc, 200)}"


def check_predict_options(*, batch_size: int = 32, top_k: int = 3, reject_below: float | None = None,
                          out: str | os.PathLike | None = None, ood_level: float | None = None) -> None:
    """Validate predict options before any model is loaded.

    Raises:
        VptError: ``batch_size`` or ``top_k`` below 1, ``reject_below`` outside [0, 1], ``ood_level``
            outside (0, 1), an ``out`` file name that is not ``.csv`` / ``.jsonl``, or an existing
            ``out`` that is not an earlier output of ``vpt predict`` (:func:`is_predict_output`).
    """
    if batch_size < 1:
        raise VptError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k < 1:
        raise VptError(f"--top-k must be at least 1, got {top_k}")
    if reject_below is not None and not 0.0 <= reject_below <= 1.0:
        raise VptError(f"--reject-below must be a probability in [0, 1], got {reject_below}")
    if ood_level is not None and not 0.0 < ood_level < 1.0:
        raise VptError(f"--ood-level must be in (0, 1), got {ood_level}")
    if out is not None and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise VptError(f"--out {out}: use a .csv or .jsonl file name (the extension picks the format)")
    if out is not None:
        check_replaceable(out)


def check_replaceable(out: str | os.PathLike) -> None:
    """Refuse an ``--out`` of rows that exists and is not an earlier ``vpt predict`` output (:func:`is_predict_output`).

    Raises:
        VptError: naming ``out``.
    """
    if Path(out).is_dir() or (Path(out).exists() and not is_predict_output(out)):
        raise VptError(f"--out {out}: exists and is not an earlier output of vpt predict (it is replaced only then); "
                       "choose another file name")


def is_predict_output(path: str | os.PathLike) -> bool:
    """Whether the file ``path`` is empty or was written by ``vpt predict``: a CSV whose header has the
    ``path`` and ``status`` columns, or JSON lines whose first row has those keys. Only such a file
    may be replaced by ``--out``: any other (a data set's ``labels.csv``, ...) is kept."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            first = next((line for line in fh if line.strip()), None)
    except (OSError, UnicodeDecodeError):
        return False
    if first is None:
        return True
    if Path(path).suffix.lower() == ".jsonl":
        try:
            row = json.loads(first)
        except ValueError:
            return False
        return isinstance(row, dict) and {"path", "status"} <= row.keys()
    header = next(csv.reader([first]), [])
    return header[:1] == ["path"] and "status" in header


@dataclass
class FileOutput:
    """The model's output for one file (:func:`forward_files`): ``probabilities [C]`` and
    ``features [F]`` (None when the graph has no features output), or ``error`` (why it failed)."""

    path: Path
    probabilities: np.ndarray | None = None
    features: np.ndarray | None = None
    error: str | None = None


def forward_files(predictor: Predictor, paths: list[Path], *, batch_size: int = 32, max_pixels: int | None = None,
                  bit_depth: int | None = None, workers: int | None = None, on_batch=None) -> Iterator[FileOutput]:
    """Yield one :class:`FileOutput` per path, in order.

    Images are decoded and preprocessed in a thread pool, one batch ahead of the model, and dropped
    after their batch; a file that cannot be decoded gets ``error`` (reason from
    :class:`vptcli.images.ImageDecodeError`) and the batch continues with the others.
    ``on_batch(n_files)`` is called after each batch (progress).
    """
    if workers is None:
        from vptcli.cpus import default_workers

        workers = default_workers()
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(batch):
            return [pool.submit(_load_one, predictor, p, max_pixels, bit_depth) for p in batch]

        pending = submit(batches[0]) if batches else None
        for bi, batch in enumerate(batches):
            loaded = [f.result() for f in pending]
            pending = submit(batches[bi + 1]) if bi + 1 < len(batches) else None  # decode ahead
            good = [i for i, (x, _) in enumerate(loaded) if x is not None]
            probs = feats = None
            if good:
                x = np.stack([loaded[i][0] for i in good])
                _, probs, feats = predictor.forward_batch(x)
                del x
            row_of = {i: j for j, i in enumerate(good)}
            for i, path in enumerate(batch):
                if i not in row_of:
                    yield FileOutput(path, error=loaded[i][1] or "unknown error")
                else:
                    j = row_of[i]
                    yield FileOutput(path, probs[j], None if feats is None else feats[j])
            del loaded, probs, feats
            if on_batch is not None:
                on_batch(len(batch))


def predict_files(
    predictor: Predictor,
    paths: list[Path],
    *,
    batch_size: int = 32,
    top_k: int = 3,
    reject_below: float | None = None,
    max_pixels: int | None = None,
    bit_depth: int | None = None,
    workers: int | None = None,
    problems: Iterable[tuple[str, str]] = (),
    on_batch=None,
) -> Iterator[PredictionRow]:
    """Yield one :class:`PredictionRow` per path (in order), then one error row per ``problem``.

    The model runs through :func:`forward_files` (a file that cannot be decoded becomes an ``error``
    row). With an unfamiliar-image reference (:attr:`Predictor.ood`) every row gets an ``ood_score``,
    and a score above the reference's threshold gives status ``unfamiliar`` (no label; it takes
    precedence over ``review``). ``reject_below``: a top-1 probability under it gives status
    ``review`` (no label).

    Raises:
        VptError: invalid ``batch_size`` / ``top_k`` / ``reject_below``.
    """
    check_predict_options(batch_size=batch_size, top_k=top_k, reject_below=reject_below)
    classes = predictor.classes
    k = min(top_k, len(classes))
    ref = predictor.ood
    for res in forward_files(predictor, paths, batch_size=batch_size, max_pixels=max_pixels, bit_depth=bit_depth,
                             workers=workers, on_batch=on_batch):
        yield _row(res, classes, k, reject_below, ref)
    for arg, reason in problems:
        yield PredictionRow(str(arg), None, None, [], STATUS_ERROR, reason)


def _row(res: FileOutput, classes: list[str], k: int, reject_below: float | None, ref) -> PredictionRow:
    """The :class:`PredictionRow` of one :class:`FileOutput`."""
    if res.error is not None:
        return PredictionRow(str(res.path), None, None, [], STATUS_ERROR, res.error)
    p = res.probabilities
    order = np.argsort(-p, kind="stable")[:k]
    top = [(classes[j], float(p[j])) for j in order]
    conf = top[0][1]
    score = float(ref.score(res.features[None])[0]) if ref is not None and res.features is not None else None
    if score is not None and ref.unfamiliar(score):
        return PredictionRow(str(res.path), None, conf, top, STATUS_UNFAMILIAR,
                             f"ood_score {score:.6g} > {ref.threshold:.6g}: unlike the training images (top-1 {top[0][0]})",
                             score)
    if reject_below is not None and conf < reject_below:
        return PredictionRow(str(res.path), None, conf, top, STATUS_REVIEW,
                             f"confidence {conf:.3f} < {reject_below:g} (top-1 {top[0][0]})", score)
    return PredictionRow(str(res.path), top[0][0], conf, top, STATUS_OK, "", score)


__all__ = [
    "ArtifactError", "FileOutput", "OnnxPredictor", "PredictionRow", "Predictor", "PredictorError", "RowWriter",
    "TorchPredictor", "check_predict_options", "check_replaceable", "create_session", "expand_inputs", "find_graph", "forward_files",
    "is_predict_output", "open_predictor", "predict_files",
]
