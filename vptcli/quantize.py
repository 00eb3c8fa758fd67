"""int8 quantisation of an exported fp32 graph for CPU inference (``vpt export --int8``), and its check.

Method: ONNX Runtime's **dynamic** quantisation (``onnxruntime.quantization.quantize_dynamic``) of the
``MatMul`` nodes whose second input is a weight (``MatMulConstBOnly``): weights int8, **per output
channel** (``per_channel=True``), activations quantised to uint8 at run time per tensor
(``DynamicQuantizeLinear`` -> ``MatMulInteger``), **except the first transformer block's**
(:data:`FP32_LEADING_MATMULS`: its qkv, proj, fc1 and fc2 stay fp32). Everything else stays fp32 too:
the patch-embedding ``Conv``, ``LayerNormalization``, ``Softmax``, ``Gelu``, the attention products
(activation x activation: q.k and attn.v), the prompt tokens and the head (``Gemm``).

Why this and not another. On the ELPV binary run of the CPU default (DINOv2 ViT-S/14, VPT-deep from
block 11), 296 validation images, int8 vs the fp32 graph:

==========================================================  ==========  ======================  ============
variant (dynamic, weight MatMuls, int8 per-channel weights)  top-1 agree  accuracy (fp32 87.2 %)  mean |dp|
==========================================================  ==========  ======================  ============
all 48 quantised                                             289/296     86.1 %                  0.023
first block's 4 kept fp32 -- chosen                          295/296     86.8 %                  0.021
last block's 4 kept fp32                                     293/296     87.5 %                  0.018
every fc2 (MLP down-projection) kept fp32                    292/296     87.2 %                  0.019
first block and every fc2 kept fp32                          294/296     87.2 %                  0.022
all quantised, 7-bit weights (``reduce_range``)              285/296     85.5 %                  0.054
==========================================================  ==========  ======================  ============

Per-tensor weights were worse than per-channel (quickstart export: max probability change 0.10 vs
0.06); uint8 weights agreed better on the quickstart images but ran no faster than fp32 (this CPU's
VNNI path is uint8 x int8); static QDQ quantisation calibrated (MinMax) on the training images, per
channel, agreed on only 75/80 quickstart images (max probability change 0.2-0.36) and ran 1.1-1.2x
fp32: the activations of this ViT have outliers that one calibrated scale per tensor clips, while the
dynamic scale follows each batch. Speed: ``docs/benchmarks.md``.

The check (:func:`check_int8`), made at export like the fp32 parity check: on the validation images
(the run's ``train_images.json``, or a data folder given), the int8 graph's top-1 must agree with the
fp32 PyTorch model on at least :data:`MIN_TOP1_AGREEMENT` of the images and its accuracy must be within
:data:`MAX_ACCURACY_CHANGE` of PyTorch's; otherwise :class:`QuantizeError` and nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vptcli.errors import VptError, one_line

MIN_TOP1_AGREEMENT = 0.99
"""Smallest fraction of validation images whose int8 top-1 equals PyTorch's."""

MAX_ACCURACY_CHANGE = 0.005
"""Largest change of validation top-1 accuracy (fraction: 0.005 = 0.5 point) int8 vs PyTorch."""

FP32_LEADING_MATMULS = 4
"""Weight ``MatMul`` nodes kept fp32 at the start of the graph (in graph order): the first transformer
block's qkv, proj, fc1 and fc2 (timm's ViT block has these four), the most sensitive to int8."""

CHECK_BATCH = 16
"""Images per forward pass of the check."""


class QuantizeError(VptError):
    """The int8 graph could not be made, or failed its check against PyTorch (nothing was written)."""


@dataclass
class Int8Check:
    """The int8 graph vs the fp32 PyTorch model on the check images.

    ``images``: number checked; ``top1_agree``: images whose top-1 agrees; ``accuracy_torch`` /
    ``accuracy_int8``: top-1 accuracy (fractions) against the labels; ``max_abs_probabilities``:
    largest absolute probability difference; ``source``: where the images came from.
    """

    images: int
    top1_agree: int
    accuracy_torch: float
    accuracy_int8: float
    max_abs_probabilities: float
    source: str

    @property
    def agreement(self) -> float:
        return self.top1_agree / self.images if self.images else float("nan")


# --------------------------------------------------------------------------------------- images


def check_images(prompt_path: Path, data: str | os.PathLike | None, classes: list[str]) -> tuple[list[Path], np.ndarray, str]:
    """The labelled images the int8 graph is checked on: ``(paths, labels [N] int64 class indices, source)``.

    ``data`` given: its ``val`` split when it is an ingested data set (``vpt ingest`` output), else
    every image of a class-per-folder tree. Without ``data``: the validation images of the run the
    prompt file belongs to (``train_images.json`` beside it: a run folder of ``vpt train``). Images of
    classes the model does not know are left out.

    Raises:
        QuantizeError: no ``data`` and no ``train_images.json`` beside the prompt file, no image of
            the model's classes, or a listed image that is missing (named).
    """
    index = {c: i for i, c in enumerate(classes)}
    if data is not None:
        from vptcli.evaluation import load_eval_data
        from vptcli.manifest import is_manifest_dir, resolve_image_path
        from vptcli.train_report import Reporter

        ev = load_eval_data(data, "val" if is_manifest_dir(data) else None, Reporter())
        pairs = [(resolve_image_path(ev.manifest, r), r.label) for r in ev.records]
        source = f"{data} ({ev.split})"
    else:
        from vptcli.train_config import TRAIN_IMAGES, read_train_images

        try:
            listed = read_train_images(Path(prompt_path).parent)
        except VptError as exc:
            raise QuantizeError(f"{exc}; pass --int8-data DATA") from None
        if listed is None:
            raise QuantizeError(
                f"{prompt_path}: --int8 is checked on validation images, and no {TRAIN_IMAGES} is beside this prompt "
                "file; export the run folder of `vpt train`, or pass --int8-data DATA (an ingested data set: its val "
                "split, or a class-per-folder image tree)"
            )
        listing, root, rows = listed
        pairs = [(root.joinpath(*r.path.split("/")), r.label) for r in rows if r.split == "val"]
        source = f"{listing} (val)"
    unknown = sorted({label for _, label in pairs if label not in index})
    if unknown:  # said in the check's source line, which export prints
        source += f"; left out: class(es) {', '.join(unknown)}, not the model's"
    pairs = [(p, index[label]) for p, label in pairs if label in index]
    if not pairs:
        raise QuantizeError(f"no validation image of the model's classes in {source}; pass --int8-data DATA")
    missing = [p for p, _ in pairs if not Path(p).is_file()]  # a moved data set fails before quantising, not after
    if missing:
        raise QuantizeError(f"{len(missing)} of the {len(pairs)} validation images listed in {source} are missing, e.g. "
                            f"{missing[0]} (the data set moved?); restore it or pass --int8-data DATA")
    return [p for p, _ in pairs], np.array([y for _, y in pairs], dtype=np.int64), source


def image_batches(paths: list[Path], data_config: dict, batch_size: int = CHECK_BATCH) -> Iterator[np.ndarray]:
    """``[B, 3, S, S]`` float32 batches in ``[0, 1]``, decoded one batch at a time (memory: one batch,
    whatever the number of images): each file decoded (:func:`vptcli.images.decode_image`) and
    preprocessed with the model's eval transform (:func:`vptcli.datasets.eval_transform`), as
    ``vpt predict`` does.

    Raises:
        QuantizeError: a file that cannot be decoded (named).
    """
    from vptcli.datasets import eval_transform
    from vptcli.images import ImageDecodeError, decode_image

    transform = eval_transform(data_config)
    for i in range(0, len(paths), batch_size):
        out = []
        for p in paths[i : i + batch_size]:
            try:
                out.append(transform(decode_image(p).pixels).numpy())
            except (ImageDecodeError, OSError) as exc:
                raise QuantizeError(f"{p}: cannot read this validation image for the int8 check ({one_line(exc, 200)})") from None
        yield np.stack(out).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------- quantising


def quantize_int8(fp32_graph: bytes) -> bytes:
    """The int8 graph of a serialised fp32 graph (see the module docstring for the method); metadata
    (``metadata_props``) and inputs/outputs are kept.

    Raises:
        QuantizeError: ONNX Runtime's quantiser fails (its message shown).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="vpt-int8-") as tmp, _quiet_quantizer():
        src, dst = os.path.join(tmp, "fp32.onnx"), os.path.join(tmp, "int8.onnx")
        with open(src, "wb") as fh:
            fh.write(fp32_graph)
        try:
            keep = weight_matmuls(onnx.load_from_string(fp32_graph))[:FP32_LEADING_MATMULS]
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep, extra_options={"MatMulConstBOnly": True})
            proto = onnx.load(dst)
        except Exception as exc:  # noqa: BLE001 - the quantiser raises many types
            raise QuantizeError(f"ONNX Runtime's int8 quantisation failed: {type(exc).__name__}: {one_line(exc, 300)}") from None
    original = onnx.load_from_string(fp32_graph)
    del proto.metadata_props[:]
    proto.metadata_props.extend(original.metadata_props)
    return proto.SerializeToString()


def weight_matmuls(proto) -> list[str]:
    """Names of the ``MatMul`` nodes whose second input is a weight (an initializer, or its ``Transpose``),
    in graph order (for a timm ViT: qkv, proj, fc1, fc2 of each block)."""
    weights = {i.name for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Transpose" and node.input[0] in weights:
            weights.update(node.output)
    return [n.name for n in proto.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights]


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantiser logs advice through the root logger ("consider pre-processing"); keep it quiet."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# -------------------------------------------------------------------------------------- checking


def torch_probabilities(model, images: np.ndarray) -> np.ndarray:
    """``[B, C]`` float64 softmax of the fp32 PyTorch ``model`` (CPU) on ``images [B, 3, S, S]``."""
    import torch

    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(images)).double(), dim=-1).numpy()


def check_int8(int8_graph: bytes, model, paths: list[Path], labels: np.ndarray, data_config: dict, source: str,
               what: str = "the int8 graph") -> Int8Check:
    """Compare the int8 graph (ONNX Runtime, CPU; its ``probabilities`` output) with the fp32 PyTorch
    ``model`` on the images ``paths`` (labels ``[N]`` class indices), read a batch at a time
    (:func:`image_batches`).

    Raises:
        QuantizeError: an unreadable image, top-1 agreement below :data:`MIN_TOP1_AGREEMENT`, or accuracy
            changed by more than :data:`MAX_ACCURACY_CHANGE` (figures in the message).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(int8_graph, opts, providers=["CPUExecutionProvider"])
    torch_p, int8_p = [], []
    for images in image_batches(paths, data_config):
        torch_p.append(torch_probabilities(model, images))
        int8_p.append(session.run(["probabilities"], {"images": images})[0].astype(np.float64))
    torch_probs, probs = np.concatenate(torch_p), np.concatenate(int8_p)
    top_t, top_q = torch_probs.argmax(1), probs.argmax(1)
    check = Int8Check(
        images=len(labels), top1_agree=int((top_t == top_q).sum()),
        accuracy_torch=float((top_t == labels).mean()), accuracy_int8=float((top_q == labels).mean()),
        max_abs_probabilities=float(np.abs(probs - torch_probs).max()), source=source,
    )
    change = abs(check.accuracy_int8 - check.accuracy_torch)
    if check.agreement < MIN_TOP1_AGREEMENT or change > MAX_ACCURACY_CHANGE + 1e-12:
        raise QuantizeError(
            f"{what} failed its check on {check.images} validation images from {source}: top-1 agrees with PyTorch on "
            f"{check.top1_agree}/{check.images} ({100 * check.agreement:.1f} %, need >= {100 * MIN_TOP1_AGREEMENT:g} %), "
            f"accuracy {100 * check.accuracy_int8:.1f} % vs {100 * check.accuracy_torch:.1f} % (need within "
            f"{100 * MAX_ACCURACY_CHANGE:g} point); nothing was written. Export without --int8 (fp32), or check on more "
            "validation images with --int8-data"
        )
    return check


__all__ = [
    "CHECK_BATCH", "FP32_LEADING_MATMULS", "MAX_ACCURACY_CHANGE", "MIN_TOP1_AGREEMENT", "Int8Check", "QuantizeError",
    "check_images", "check_int8", "image_batches", "quantize_int8", "torch_probabilities", "weight_matmuls",
]
