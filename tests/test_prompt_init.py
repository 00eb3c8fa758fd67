"""`--prompt-init patch-kmeans`: prompts started at k-means centres of the training images' patch
tokens entering each prompted block (Self-Prompt Tuning), on the tiny test_vit."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.cluster import KMeans

from vptcli.artifacts import read_prompt_file
from vptcli.backbones import load_backbone
from vptcli.datasets import ManifestDataset
from vptcli.errors import VptError
from vptcli.prompt_init import patch_prototypes, sample_indices
from vptcli.prompting import PromptConfig, PromptedViT
from vptcli.train_config import TrainConfig
from vptcli.training import train
from vptcli.tuning import parse_candidate

IMG = 32  # test_vit: patch 16 (4 patches), 6 blocks, dim 64
TINY = ("--backbone", "test_vit", "--weights", "random", "--img-size", str(IMG))


def model(method="vpt-deep", n=3, k=3, **kw):
    torch.manual_seed(0)
    bb = load_backbone("test_vit", weights="random", img_size=IMG).model
    return PromptedViT(bb, 2, PromptConfig(method, n, k, **kw)).eval()


def kmeans_centres(tokens: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    km = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(tokens.reshape(-1, tokens.shape[-1]).numpy())
    return torch.as_tensor(km.cluster_centers_, dtype=torch.float32)


@torch.no_grad()
def test_deep_prompts_are_each_blocks_patch_token_centres():
    m = model(k=3)  # prompts in blocks 3, 4, 5
    x = torch.rand(8, 3, IMG, IMG)
    hidden = m.embed(x, 3)
    protos = patch_prototypes(m, hidden, 3, seed=7)
    assert protos.shape == m.prompts.shape == (3, 3, 64)
    h = hidden
    for j in range(3):  # block 3 + j's input without prompts: its patch tokens' centres
        expected = kmeans_centres(h[:, m.num_prefix_tokens :], 3, 7 + j)
        assert torch.allclose(protos[j], expected, atol=1e-5)
        h = m.backbone.blocks[3 + j](h)
    # the centres are patch-token-like (inside the tokens' range), not VPT's small uniform draw
    tokens = hidden[:, m.num_prefix_tokens :].reshape(-1, 64)
    assert torch.all(protos[0] >= tokens.min(0).values - 1e-5) and torch.all(protos[0] <= tokens.max(0).values + 1e-5)


@torch.no_grad()
def test_shallow_and_earlier_hidden_states():
    shallow = model("vpt-shallow", k=2)
    x = torch.rand(6, 3, IMG, IMG)
    assert patch_prototypes(shallow, shallow.embed(x, 2), 2).shape == (1, 3, 64)
    # hidden states from before k (a last4+mean cache stops early): the frozen blocks run first
    deep = model(k=4)
    a = patch_prototypes(deep, deep.embed(x, 2), 2, seed=1)
    b = patch_prototypes(deep, deep.embed(x, 4), 4, seed=1)
    assert torch.allclose(a, b, atol=1e-5)
    # a sample of tokens when there are more than max_tokens; same seed, same prompts
    c = patch_prototypes(deep, deep.embed(x, 4), 4, seed=1, max_tokens=10)
    assert torch.equal(c, patch_prototypes(deep, deep.embed(x, 4), 4, seed=1, max_tokens=10))


def test_bad_inputs_are_refused():
    x = torch.rand(1, 3, IMG, IMG)
    probe = model("linear-probe", n=0, k=0)
    with pytest.raises(ValueError, match="prompt tokens"):
        patch_prototypes(probe, probe.embed(x, 0), 0)
    m = model(n=5, k=3)
    with pytest.raises(ValueError, match="past the first prompted block"):
        patch_prototypes(m, m.embed(x, 3), 4)
    with pytest.raises(ValueError, match="4 patch tokens cannot give 5"):
        patch_prototypes(m, m.embed(x, 3), 3)
    assert sample_indices(5, 0).tolist() == [0, 1, 2, 3, 4]
    s = sample_indices(1000, 0, max_images=10)
    assert len(s) == 10 and len(set(s.tolist())) == 10 and torch.equal(s, sample_indices(1000, 0, max_images=10))


def cfg(**kw):
    base = {"method": "vpt-deep", "num_prompts": 3, "prompt_start_block": 3, "epochs": 1, "batch_size": 4, "lr": 1e-9,
            "backbone": "test_vit", "weights": "random", "img_size": IMG, "augment": False, "seed": 0,
            "prompt_init": "patch-kmeans"}
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory, make_tree):
    from vptcli.ingest import ingest_folder

    root = make_tree(tmp_path_factory.mktemp("data") / "src")
    return ingest_folder(root, val_fraction=0.2, test_fraction=0.2, seed=0, progress=False).manifest


@pytest.mark.parametrize("head_input", ["cls", "last4+mean"])  # last4+mean: the cache stops at block 2, before k = 3
def test_training_starts_from_the_training_images_centres_cached_or_not(tiny_manifest, tmp_path, head_input):
    bb = load_backbone("test_vit", weights="random", img_size=IMG)
    prompts = {}
    for cache in ("on", "off"):
        train(tiny_manifest, bb, cfg(cache=cache, head_input=head_input), tmp_path / cache)
        prompts[cache] = read_prompt_file(tmp_path / cache / "prompts.safetensors")[0]["prompts"]
        assert json.loads((tmp_path / cache / "config.json").read_text())["train"]["prompt_init"] == "patch-kmeans"
    # lr 1e-9: the prompts stay where they started: the centres of the training images' tokens
    m = model(k=3)
    ds = ManifestDataset(tiny_manifest, "train", bb.data_config, augment=False)
    with torch.no_grad():
        images = torch.stack([ds.view(i, 0, False) for i in sample_indices(len(ds), 0).tolist()])
        expected = patch_prototypes(m, m.embed(images, 3), 3, seed=0)
    assert torch.allclose(prompts["on"], expected, atol=1e-4)
    assert torch.allclose(prompts["off"], expected, atol=1e-4)
    if head_input != "cls":
        return
    random_run = train(tiny_manifest, bb, cfg(prompt_init="random"), tmp_path / "random")
    random_prompts = read_prompt_file(random_run.prompt_file)[0]["prompts"]
    assert not torch.allclose(random_prompts, expected, atol=1e-2)


def test_cli_option_tune_candidate_and_refusals(ingested, tmp_path, vpt):
    code, _, err = vpt("train", ingested, "--out", tmp_path / "run", *TINY, "--epochs", "1", "--batch-size", "4",
                         "--no-augment", "--prompt-start-block", "4", "--prompts", "2", "--prompt-init", "patch-kmeans")
    assert code == 0, err
    assert "set to k-means centres of the patch tokens" in err
    assert parse_candidate("prompt-init=patch-kmeans,prompts=50").overrides == {"prompt_init": "patch-kmeans", "num_prompts": 50}
    with pytest.raises(VptError, match="prompt-init must be one of random, patch-kmeans"):
        parse_candidate("prompt-init=zeros")
    for kw, message in (({"prompt_init": "zeros"}, "--prompt-init must be one of"),
                        ({"method": "linear-probe"}, "needs a prompt method"),
                        ({"init_from": "x.safetensors"}, "no --init-from")):
        with pytest.raises(VptError, match=message):
            cfg(**kw)
    code, _, err = vpt("train", ingested, "--out", tmp_path / "lp", *TINY, "--method", "linear-probe", "--prompt-init", "patch-kmeans")
    assert code == 2 and "--prompt-init" in err and not (tmp_path / "lp").exists()
    # more prompts than the sampled images have patch tokens: one line, not a traceback
    code, _, err = vpt("train", ingested, "--out", tmp_path / "many", *TINY, "--prompt-start-block", "4", "--prompts", "500",
                       "--prompt-init", "patch-kmeans")
    assert code == 2 and "fewer --prompts" in " ".join(err.split())
    assert not (tmp_path / "many").exists()  # refused before the run wrote anything: the same --out works next
