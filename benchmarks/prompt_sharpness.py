"""How far one step may move the prompts from the warm start before the training loss rises (issue 11).

On full ELPV the training loss of the prompt runs rose above the warm start's in the first epochs,
whatever the learning rate (docs/benchmarks.md, ninth and tenth rounds). This measures, in one run,
how large a single step from the warm start may be before the loss rises:

1. The warm start exactly as ``vpt train`` builds it: VPT-deep (Jia et al., ECCV 2022), ``--prompts P``
   per block from ``--prompt-start-block K`` (prompts ``[12 - K, P, D]``, VPT's uniform Xavier draw,
   seed ``--seed``), ``--head-input`` (default ``last4+mean``), the head ``[C, F]`` a linear probe
   fitted on the features of those prompts (:mod:`vptcli.probe`). It is built by
   :func:`vptcli.training.train` itself with one epoch at a learning rate of 1e-12, which leaves the
   warm start as it is.
2. On ``--images`` plain training images (drawn from the train split with ``--seed``): the training
   loss ``L0`` (cross-entropy in nats, mean over images, no class weights, eval mode), its gradient
   ``g``, and the loss after one step of each size ``eta`` in ``--etas``, for the prompts and, for
   comparison, for the head (the other one left as it is):

   - ``gradient``: ``theta - eta * g`` (gradient descent; ``eta`` multiplies the gradient). The JSON's
     ``first_order`` is the linear prediction ``L0 - eta * |g|^2``.
   - ``sign``: ``theta - eta * sign(g)`` (every coordinate moves by ``eta``): the direction of Adam's
     first step (Kingma & Ba, ICLR 2015; AdamW: Loshchilov & Hutter, ICLR 2019), whose size is about
     the learning rate.

   ``ratio_to_l0`` is the loss after the step over ``L0``; ``largest_helpful_eta`` the largest grid
   value whose step lowers the loss (the limit lies between it and the next grid value).
3. With ``--probe-c C ...``: the same for the prompts under heads of a fixed regularisation. For
   each ``C`` a linear probe is refitted as ``vpt train --probe-c C`` fits it, on the warm start's
   head inputs of every plain training image (its validation figures on the plain validation
   images), and the prompts' steps are measured under it. ``heads`` lists each head's weight norm
   (Frobenius), ``L0`` and validation figures: how sensitive the loss is to the prompts as a
   function of the head's size.
4. ``token_std``: the median over tokens of each token's standard deviation over its D channels, for
   the prompts (all prompted blocks) and for the class and patch tokens entering block K.

A single step from one warm start on a sample of the training split: AdamW's real steps follow one
batch, include the learning-rate warm-up and, after the first, are divided by a running gradient
scale.

Usage: ``python benchmarks/prompt_sharpness.py [--images 256] [--prompt-start-block 9] [--prompts 50]
[--head-input last4+mean] [--etas 1e-6 ... 1e-1] [--probe-c C ...] [--seed 0] [--threads 2]
[--out benchmarks/results/prompt_sharpness-DATE.json] [--smoke]``

ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

ETAS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def add_warm_start_args(p: argparse.ArgumentParser) -> None:
    """The options :func:`warm_start` reads, and ``--seed``, ``--threads``, ``--smoke``."""
    p.add_argument("--prompt-start-block", type=int, default=9, help="first prompted block K (default 9)")
    p.add_argument("--prompts", type=int, default=50, help="prompt tokens per block (default 50)")
    p.add_argument("--head-input", default="last4+mean", help="vpt train --head-input (default last4+mean)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny timm test_vit at 32 px, random weights, few images")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--images", type=int, default=256, help="training images the loss and gradient are measured on (default 256)")
    add_warm_start_args(p)
    p.add_argument("--etas", type=float, nargs="*", default=list(ETAS), help="step sizes (default 1e-6 ... 1e-1)")
    p.add_argument("--probe-c", type=float, nargs="*", default=[],
                   help="also measure the prompts' steps under linear probes of these fixed C (vpt train --probe-c), "
                        "refitted on the warm start's features of every plain training image")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/prompt_sharpness-<date>.json)")
    args = p.parse_args(argv)
    if any(not c > 0 for c in args.probe_c):
        p.error("--probe-c values must be > 0")
    return args


def head_inputs(model, manifest, split: str, backbone, batch_size: int = 32):
    """``([N, F] head inputs, [N] labels)`` of a split's plain images under the model's current prompts
    (:meth:`vptcli.prompting.PromptedViT.features`)."""
    import torch

    from vptcli.datasets import ManifestDataset
    from vptcli.evaluation import chunks

    ds = ManifestDataset(manifest, split, backbone.data_config, augment=False)
    with torch.no_grad():
        feats = [model.features(torch.stack([ds[i][0] for i in ix])) for ix in chunks(range(len(ds)), batch_size)]
    return torch.cat(feats), torch.as_tensor(ds.labels, dtype=torch.long)


def warm_start(args, backbone, con):
    """``(manifest, model)``: binary ELPV (``--smoke``: a few images) and the warm start exactly as ``vpt train``
    builds it (``args.prompts`` prompts per block from ``args.prompt_start_block``, VPT-deep, ``args.head_input``,
    the head a linear probe fitted on the initial features), by :func:`vptcli.training.train` with one epoch at a
    learning rate of 1e-12, which leaves it as it is. The model is in eval mode."""
    from vptcli.training import TrainConfig, train

    k = min(args.prompt_start_block, 2) if args.smoke else args.prompt_start_block
    manifest, _records, _split = C.elpv_manifest("binary")
    if args.smoke:
        manifest = C.subset_manifest(manifest, {"train": 24, "val": 8, "test": 4})
    cfg = TrainConfig(method="vpt-deep", num_prompts=args.prompts, prompt_start_block=k, epochs=1, lr=1e-12,
                      cache="auto", cache_views=1, seed=args.seed, workers=0, device="cpu", backbone=backbone.identity.name,
                      head_input="cls" if args.smoke else args.head_input, img_size=backbone.img_size)
    con.rule(f"warm start: VPT-deep, {args.prompts} prompts from block {k}, head {cfg.head_input} (one epoch at lr 1e-12)")
    with tempfile.TemporaryDirectory() as tmp:
        res = train(manifest, backbone, cfg, Path(tmp) / "run")
        model, _meta = C.load_trained(res.run_dir, backbone)
    return manifest, model.eval()


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F
    from rich.table import Table

    from vptcli.datasets import ManifestDataset

    con, date, out, backbone = C.start("prompt_sharpness", args)
    manifest, model = warm_start(args, backbone, con)
    k, cfg = model.config.prompt_start_block, model.config
    ds = ManifestDataset(manifest, "train", backbone.data_config, augment=False)
    n = min(args.images, len(ds))
    index = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[:n].tolist()
    x = torch.stack([ds[i][0] for i in index])
    y = torch.tensor([ds.labels[i] for i in index])
    start = model.frozen_blocks  # the head may read class tokens of blocks before K
    with torch.no_grad():
        hidden = model.embed(x, start)
        entering = hidden
        for blk in model.backbone.blocks[start:k]:
            entering = blk(entering)
    token_std = entering.std(-1)  # [B, L] over channels
    prefix = model.backbone.num_prefix_tokens  # the class token (and registers, where a backbone has them)
    scales = {"prompts": float(model.prompts.detach().std(-1).median()), "class_token": float(token_std[:, 0].median()),
              "patch_tokens": float(token_std[:, prefix:].median())}

    def loss() -> torch.Tensor:
        feats, _ = model.forward_from(hidden, start)
        return F.cross_entropy(model.head(feats), y)

    for p in model.parameters():
        p.requires_grad_(False)

    def measure(groups: dict, head: str) -> tuple[float, list[dict]]:
        """``L0`` and one row per (parameter group, direction, step size) for the model's current head."""
        for ps in groups.values():
            for p in ps:
                p.requires_grad_(True)
                p.grad = None
        l0 = loss()
        l0.backward()
        l0 = float(l0.detach())
        rows = []
        for name, ps in groups.items():
            saved = [p.detach().clone() for p in ps]
            grads = [p.grad.detach().clone() for p in ps]
            g2 = sum(float((g * g).sum()) for g in grads)
            for direction in ("gradient", "sign"):
                for eta in args.etas:
                    with torch.no_grad():
                        for p, p0, g in zip(ps, saved, grads):
                            p.copy_(p0 - eta * (g if direction == "gradient" else g.sign()))
                        value = float(loss())
                        for p, p0 in zip(ps, saved):
                            p.copy_(p0)
                    rows.append({"head": head, "parameters": name, "direction": direction, "eta": eta, "loss": round(value, 6),
                                 "helps": value < l0, "ratio_to_l0": round(value / l0, 4),
                                 "first_order": round(l0 - eta * g2, 6) if direction == "gradient" else None})
            con.print(f"{head}, {name}: {sum(p.numel() for p in ps):,} values, |g| {g2 ** 0.5:.4g}")
        for ps in groups.values():
            for p in ps:
                p.requires_grad_(False)
        return l0, rows

    l0, rows = measure({"prompts": [model.prompts], "head": list(model.head.parameters())}, "warm start")
    heads = [{"head": "warm start", "c": None, "head_weight_norm": round(float(model.head.weight.norm()), 4), "l0": round(l0, 6)}]
    if args.probe_c:  # the same prompts under probes of fixed C, fitted as vpt train --probe-c C fits them
        from vptcli.probe import fit_linear_probe

        con.rule(f"probes of fixed C {args.probe_c} on the warm start's features (plain training and validation images)")
        tx, ty = head_inputs(model, manifest, "train", backbone)
        vx, vy = head_inputs(model, manifest, "val", backbone)
        for c in args.probe_c:
            fit = fit_linear_probe(tx, ty, vx, vy, len(manifest.classes), c_grid=(c,))
            with torch.no_grad():
                model.head.weight.copy_(fit.weight)
                model.head.bias.copy_(fit.bias)
            lc, rc = measure({"prompts": [model.prompts]}, f"C={c:g}")
            rows += rc
            heads.append({"head": f"C={c:g}", "c": c, "head_weight_norm": round(float(fit.weight.norm()), 4), "l0": round(lc, 6),
                          "val_macro_f1": round(fit.val_macro_f1, 4), "val_top1": round(fit.val_top1, 4)})

    def largest_helpful(name, direction):
        ok = [r["eta"] for r in rows if r["head"] == "warm start" and r["parameters"] == name and r["direction"] == direction
              and r["helps"]]
        return max(ok) if ok else None

    result = {"benchmark": "prompt_sharpness", "date": date, **C.provenance(), "smoke": args.smoke, "machine": C.machine_info(),
              "backbone": backbone.identity.to_dict(), "img_size": backbone.img_size,
              "setting": {"method": "vpt-deep", "prompt_start_block": k, "prompts": args.prompts, "head_input": cfg.head_input,
                          "head": "linear probe fitted on the initial features", "images": n, "seed": args.seed,
                          "loss": "cross-entropy, no class weights, eval mode"},
              "l0": round(l0, 6), "token_std": {k2: round(v, 4) for k2, v in scales.items()},
              "largest_helpful_eta": {f"{g}/{d}": largest_helpful(g, d) for g in ("prompts", "head") for d in ("gradient", "sign")},
              "heads": heads,
              "rows": rows}
    C.dump_json(out, result)
    t = Table(title=f"training loss after one step from the warm start ({n} training images; x L0: over the loss under "
                    f"the row's head, warm start L0 = {l0:.4f})")
    for c in ("head", "parameters", "direction", "eta", "loss", "x L0", "first-order"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(r["head"], r["parameters"], r["direction"], f"{r['eta']:g}", f"{r['loss']:.4f}", f"{r['ratio_to_l0']:.3f}",
                  "" if r["first_order"] is None else f"{r['first_order']:.4f}")
    con.print(t)
    con.print(f"per-token std over channels (median): {result['token_std']}")
    con.print(f"heads: {heads}")
    con.print(f"largest step that lowers the loss: {result['largest_helpful_eta']}")
    con.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
