"""PromptedViT (VPT-shallow / VPT-deep / late prompts) and the DA-VPT losses, on timm's tiny test_vit."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from vptcli.losses import DAVPTLossConfig, class_to_proxy, da_vpt_metric_loss, proxy_anchor_loss
from vptcli.prompting import PromptConfig, PromptedViT

IMG = 32  # test_vit: patch 16 -> 2x2 = 4 patch tokens, 6 blocks, dim 64


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=IMG).eval()


def frozen_features(bb, x):
    with torch.no_grad():
        return bb.forward_head(bb.forward_features((x - 0.5) / 0.5), pre_logits=True)


@pytest.mark.parametrize("method", ["vpt-deep", "vpt-shallow", "linear-probe"])
def test_zero_prompts_equals_frozen_backbone(method):
    bb = tiny_backbone()
    x = torch.rand(3, 3, IMG, IMG)
    model = PromptedViT(bb, 4, PromptConfig(method, 0)).eval()
    with torch.no_grad():
        assert torch.equal(model.features(x), frozen_features(bb, x))
        assert torch.equal(model(x), model.head(frozen_features(bb, x)))


def test_prompts_change_the_features():
    bb = tiny_backbone()
    x = torch.rand(2, 3, IMG, IMG)
    model = PromptedViT(bb, 2, PromptConfig("vpt-deep", 5)).eval()
    with torch.no_grad():
        assert (model.features(x) - frozen_features(bb, x)).abs().max() > 1e-3


def _block_input_lengths(model, x):
    lengths = []
    hooks = [b.register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1])) for b in model.backbone.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return lengths


@pytest.mark.parametrize("method,k", [("vpt-shallow", 0), ("vpt-deep", 0), ("vpt-deep", 3), ("vpt-shallow", 2)])
def test_sequence_length_is_prefix_plus_prompts_plus_patches(method, k):
    n = 7
    model = PromptedViT(tiny_backbone(), 2, PromptConfig(method, n, k)).eval()
    lengths = _block_input_lengths(model, torch.rand(2, 3, IMG, IMG))
    base = 1 + 4  # class token + 2x2 patches
    assert lengths == [base] * k + [base + n] * (6 - k)


def test_deep_replaces_prompts_shallow_keeps_them():
    """Deep: each block sees its own prompt tensor (the previous outputs are discarded)."""
    n = 3
    model = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", n)).eval()
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0][:, 1 : 1 + n].clone())) for b in model.backbone.blocks]
    with torch.no_grad():
        model(torch.rand(2, 3, IMG, IMG))
    for h in hooks:
        h.remove()
    for i, tokens in enumerate(seen):
        assert torch.equal(tokens[0], model.prompts[i].detach())
    shallow = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-shallow", n)).eval()
    assert tuple(shallow.prompts.shape) == (1, n, 64)


@pytest.mark.parametrize(
    "method,n,k,expected",
    [
        ("vpt-shallow", 5, 0, 1 * 5 * 64 + 3 * 64 + 3),
        ("vpt-deep", 5, 0, 6 * 5 * 64 + 3 * 64 + 3),
        ("vpt-deep", 5, 4, 2 * 5 * 64 + 3 * 64 + 3),
        ("da-vpt", 4, 0, 6 * 4 * 64 + 3 * 64 + 3),
        ("linear-probe", 5, 0, 3 * 64 + 3),
    ],
)
def test_tuned_parameter_count_matches_formula(method, n, k, expected):
    model = PromptedViT(tiny_backbone(), 3, PromptConfig(method, n, k))
    assert model.num_tuned() == expected
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_full_finetune_tunes_everything_on_a_copy():
    bb = tiny_backbone()
    model = PromptedViT(bb, 3, PromptConfig("full-finetune", 10))
    assert model.prompts is None
    assert model.num_tuned() == sum(p.numel() for p in bb.parameters()) + 3 * 64 + 3
    assert model.backbone is not bb  # the tuned copy; the given module is never changed


def test_only_method_tensors_get_gradients():
    model = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", 4))
    model.train()
    loss = model(torch.rand(2, 3, IMG, IMG)).sum()
    loss.backward()
    assert model.prompts.grad is not None and model.prompts.grad.abs().sum() > 0
    assert model.head.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())


def test_prompt_init_is_vpt_xavier_uniform():
    model = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", 50))
    bound = math.sqrt(6.0 / (3 * 16 * 16 + 64))
    assert model.prompts.abs().max() <= bound
    assert model.prompts.abs().max() > 0.9 * bound


@pytest.mark.parametrize("method,k", [("vpt-deep", 0), ("vpt-deep", 3), ("vpt-shallow", 2), ("da-vpt", 5)])
def test_cached_and_uncached_forward_agree(method, k):
    model = PromptedViT(tiny_backbone(), 2, PromptConfig(method, 4, k)).eval()
    x = torch.rand(4, 3, IMG, IMG)
    with torch.no_grad():
        direct = model.features(x)
        cached = model.embed(x, k).clone()  # what the feature cache stores (float32)
        again, _ = model.forward_from(cached, k)
    assert (direct - again).abs().max() <= 1e-5


def test_embed_refuses_to_run_prompted_blocks():
    model = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", 4, 2))
    with pytest.raises(ValueError):
        model.embed(torch.rand(1, 3, IMG, IMG), 3)


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-medium", 4))
    with pytest.raises(ValueError):
        PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", 4, 6))


def test_tuned_state_round_trip_and_shape_check():
    a = PromptedViT(tiny_backbone(), 3, PromptConfig("vpt-deep", 4))
    b = PromptedViT(tiny_backbone(), 3, PromptConfig("vpt-deep", 4))
    b.load_tuned_state(a.tuned_state())
    x = torch.rand(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
    bad = dict(a.tuned_state())
    bad["prompts"] = bad["prompts"][:, :2]
    with pytest.raises(ValueError):
        b.load_tuned_state(bad)
    with pytest.raises(KeyError):
        b.load_tuned_state({"head.weight": bad["head.weight"]})


# --- DA-VPT losses ---------------------------------------------------------------------------


def test_proxy_anchor_loss_matches_hand_computation():
    # Two proxies e0, e1; x0 = e0 (class 0), x1 = (e0 + e1)/sqrt2 (class 1). alpha 2, margin 0.1.
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([0, 1])
    a, d = 2.0, 0.1
    s = 1 / math.sqrt(2)
    pos = (math.log1p(math.exp(-a * (1 - d))) + math.log1p(math.exp(-a * (s - d)))) / 2
    neg = (math.log1p(math.exp(a * (s + d))) + math.log1p(math.exp(a * (0 + d)))) / 2
    got = proxy_anchor_loss(x, y, proxies, alpha=a, margin=d)
    assert got.item() == pytest.approx(pos + neg, rel=1e-6)


def test_proxy_anchor_is_stable_and_rejects_bad_labels():
    proxies = torch.randn(3, 8)
    x = torch.randn(16, 8) * 1e3
    loss = proxy_anchor_loss(x, torch.randint(0, 3, (16,)), proxies, alpha=32)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError):
        proxy_anchor_loss(x, torch.full((16,), 3), proxies)


def test_class_to_proxy_identity_and_grouping():
    assert class_to_proxy(3, 5).tolist() == [0, 1, 2]
    feats = torch.tensor([[1.0, 0.0], [0.99, 0.05], [0.0, 1.0], [0.05, 0.99]])
    groups = class_to_proxy(4, 2, feats)
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]
    with pytest.raises(ValueError):
        class_to_proxy(4, 2, None)


def _toy_separable(n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, IMG, IMG, generator=g) * 0.2
    y = torch.arange(n) % 2
    x[y == 1, 0] += 0.8  # class 1: bright red channel
    return x, y


def test_da_vpt_metric_loss_finite_and_decreases():
    x, y = _toy_separable()
    model = PromptedViT(tiny_backbone(), 2, PromptConfig("da-vpt", 4))
    cfg = DAVPTLossConfig(beta=1.0, lam=1.0)
    proxy = class_to_proxy(2, 4)
    opt = torch.optim.AdamW(model.tuned_parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        _feats, guided = model.forward_from(model.embed(x), 0, guided_block=5)
        ml, parts = da_vpt_metric_loss(guided, y, proxy, cfg)
        assert torch.isfinite(ml) and parts["pa_patch"] >= 0 and parts["pa_query"] >= 0
        opt.zero_grad()
        ml.backward()
        opt.step()
        losses.append(float(ml.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_da_vpt_with_zero_weights_equals_vpt_deep():
    x, y = _toy_separable(8)
    torch.manual_seed(1)
    da = PromptedViT(tiny_backbone(), 2, PromptConfig("da-vpt", 4))
    deep = PromptedViT(tiny_backbone(), 2, PromptConfig("vpt-deep", 4))
    deep.load_tuned_state(da.tuned_state())
    feats, guided = da.forward_from(da.embed(x), 0, guided_block=5)
    ml, _ = da_vpt_metric_loss(guided, y, class_to_proxy(2, 4), DAVPTLossConfig(beta=0.0, lam=0.0))
    assert float(ml) == 0.0
    loss_da = torch.nn.functional.cross_entropy(da.head(feats), y) + ml
    loss_deep = torch.nn.functional.cross_entropy(deep(x), y)
    loss_da.backward()
    loss_deep.backward()
    assert torch.equal(loss_da.detach(), loss_deep.detach())
    assert torch.equal(da.prompts.grad, deep.prompts.grad)
