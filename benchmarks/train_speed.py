# ruff: noqa: B023  (step() closes over the loop variables of the iteration that calls it)
"""Training-speed benchmark of prompt tuning on a CPU (issue 7).

Part 1, side by side in one process, same 32 ELPV training images (binary, 224 px, batch 32,
``torch.set_num_threads(THREADS)``): steady-state training img/s of one optimiser step (forward,
loss, backward, AdamW step, as in ``vptcli.training.train``), 1 warm-up step then ``--steps`` timed
steps, for

- full fine-tuning (every weight, images -> logits),
- naive VPT-deep (k = 0, no cache: ``forward_from(embed(x, 0), 0)``),
- VPT-deep cached with k in ``--ks`` (the step runs ``forward_from(h, k)`` on hidden states ``h``
  entering block k, computed once = the cache),
- DA-VPT cached (k = ``--da-k``, guided block 11, CE + Proxy-Anchor losses),
- linear probe cached (k = 12: the step is the head only),

plus the cache-build img/s (``PromptedViT.embed(x, k)`` under ``inference_mode``), forward-only
img/s of the full model, image decode+resize img/s, and the peak RSS of each section (VmHWM, reset
before each section via ``/proc/self/clear_refs``). Step timings exclude image decoding (the images
are in memory); the naive path in ``train()`` also decodes every epoch, so a "naive incl. decode"
figure is derived as ``1 / (1/step + 1/decode)``.

Part 2: real wall time of ``--epochs`` epochs of VPT-deep with ``train()`` (cache on, k =
``--epoch-ks``) on the full protocol training split (1,672 train + 296 val; cache build and the
per-epoch validation included), then test top-1 on the 656 test images; the naive (k=0, no cache)
time for the same epochs is *extrapolated* from its measured img/s (train step incl. decode, plus
validation at forward-only speed). The uncached k=0 accuracy is only trained with ``--naive-accuracy``.

Usage: ``python benchmarks/train_speed.py [--steps 3] [--ks 0 6 9 11] [--epoch-ks 11] [--epochs 10]
[--out benchmarks/results/train_speed-DATE.json] [--smoke]``

ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured.")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration after 1 warm-up step (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=10, help="prompt tokens per block (default 10)")
    p.add_argument("--ks", type=int, nargs="*", default=[0, 6, 9, 11], help="cached VPT-deep prompt start blocks")
    p.add_argument("--da-k", type=int, default=9, help="prompt start block of cached DA-VPT (default 9)")
    p.add_argument("--configs", nargs="*", default=None,
                   help="subset of: full-finetune naive-vpt-deep vpt-deep-cached da-vpt-cached linear-probe-cached (default all)")
    p.add_argument("--epoch-ks", type=int, nargs="*", default=[11], help="k values for the real multi-epoch train() runs (empty: skip part 2)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the real train() runs (default 10)")
    p.add_argument("--cache-views", type=int, default=1, help="cached views per image in part 2 (1 = augmentation off)")
    p.add_argument("--naive-accuracy", action="store_true", help="also train the uncached k=0 path for --epochs (slow)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/train_speed-<date>.json)")
    p.add_argument("--smoke", action="store_true", help="tiny timm test_vit at 32 px, random weights, few images (script check only)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F
    from rich.table import Table

    from vptcli.datasets import ManifestDataset
    from vptcli.losses import DAVPTLossConfig, class_to_proxy, da_vpt_metric_loss
    from vptcli.methods import Method, spec

    FT, VPT_DEEP = Method.FULL_FINETUNE.value, Method.VPT_DEEP.value
    from vptcli.metrics import classification_report
    from vptcli.prompting import PromptConfig, PromptedViT
    from vptcli.training import TrainConfig, train

    con, date, out, backbone = C.start("train_speed", args)
    n_blocks = len(backbone.model.blocks)
    manifest, _records, _split = C.elpv_manifest("binary")
    if args.smoke:
        manifest = C.subset_manifest(manifest, {"train": 20, "val": 6, "test": 10})
    result = {"benchmark": "train_speed", "date": date, **C.provenance(), "machine": C.machine_info(), "smoke": args.smoke,
              "backbone": backbone.identity.to_dict(), "img_size": backbone.img_size, "batch_size": args.batch_size,
              "num_prompts": args.prompts, "timed_steps": args.steps, "configs": [], "epoch_runs": [],
              "data": {"protocol": "elpv paper_split seed 0 + carve_val 0.15", "counts": manifest.counts()},
              "notes": []}

    def save():
        C.dump_json(out, result)

    # ---------------------------------------------------------------- part 1: step throughput
    ds = ManifestDataset(manifest, "train", backbone.data_config, augment=False)
    bs = min(args.batch_size, len(ds))
    t0 = time.perf_counter()
    images = torch.stack([ds[i][0] for i in range(bs)])
    decode_ips = bs / (time.perf_counter() - t0)
    labels = torch.as_tensor([ds.labels[i] for i in range(bs)])
    result["decode_img_per_s"] = round(decode_ips, 2)
    con.print(f"decode + resize: {decode_ips:.1f} img/s; batch {bs}; labels in batch {labels.tolist().count(0)}/{labels.tolist().count(1)}")

    wanted = set(args.configs or ["full-finetune", "naive-vpt-deep", "vpt-deep-cached", "da-vpt-cached", "linear-probe-cached"])
    plan = []
    if "full-finetune" in wanted:
        plan.append(("full fine-tuning", FT, 0, False))
    if "naive-vpt-deep" in wanted:
        plan.append(("naive VPT-deep k=0 (no cache)", VPT_DEEP, 0, False))
    if "vpt-deep-cached" in wanted:
        plan += [(f"VPT-deep cached k={k}", VPT_DEEP, k, True) for k in args.ks]
    if "da-vpt-cached" in wanted:
        plan.append((f"DA-VPT cached k={args.da_k}", Method.DA_VPT.value, args.da_k, True))
    if "linear-probe-cached" in wanted:
        plan.append((f"linear probe cached (k={n_blocks})", Method.LINEAR_PROBE.value, n_blocks, True))

    for name, method, k, cached in plan:
        C.reset_peak_rss()
        rss0 = C.rss_mb()
        bb = backbone.model
        torch.manual_seed(0)
        pcfg = PromptConfig(method, args.prompts if spec(method).has_prompts else 0, min(k, n_blocks - 1), 0.0)
        if pcfg.num_prompts:
            k = pcfg.prompt_start_block  # a smaller (smoke) backbone has fewer blocks
        model = PromptedViT(bb, 2, pcfg, tuple(backbone.data_config["mean"]), tuple(backbone.data_config["std"]))
        lr = spec(method).default_lr
        if spec(method).tunes_backbone:
            groups = [{"params": list(model.backbone.parameters()), "lr": lr}, {"params": list(model.head.parameters()), "lr": lr * 30}]
        else:
            groups = [{"params": model.tuned_parameters(), "lr": lr}]
        opt = torch.optim.AdamW(groups, weight_decay=1e-4)
        guided_block = n_blocks - 1 if spec(method).metric_loss else None
        proxy = class_to_proxy(2, pcfg.num_prompts, None, seed=0) if spec(method).metric_loss else None
        lcfg = DAVPTLossConfig()
        cache_ips = None
        hidden = None
        if cached:
            with torch.inference_mode():
                t0 = time.perf_counter()
                hidden = model.embed(images, k)
                cache_ips = bs / (time.perf_counter() - t0)
            hidden = hidden.clone()

        def step():
            model.train()
            if spec(method).tunes_backbone:
                feats, guided = model.forward_from(model.embed(images, 0), 0)
            elif cached:
                feats, guided = model.forward_from(hidden, k, guided_block)
            else:
                feats, guided = model.forward_from(model.embed(images, k), k, guided_block)
            loss = F.cross_entropy(model.head(feats).float(), labels)
            if guided is not None:
                loss = loss + da_vpt_metric_loss(guided, labels, proxy, lcfg)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        step()  # warm-up
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        ips = bs / float(np.median(times))
        row = {"name": name, "method": method, "prompt_start_block": k, "cached": cached,
               "train_img_per_s": round(ips, 3), "step_seconds": [round(t, 3) for t in times],
               "cache_build_img_per_s": round(cache_ips, 2) if cache_ips else None,
               "tuned_parameters": model.num_tuned(), "tuned_percent": round(100 * model.num_tuned() / model.num_backbone(), 4),
               "peak_rss_mb": round(C.peak_rss_mb(), 1), "rss_before_mb": round(rss0, 1)}
        if method == VPT_DEEP and not cached:
            row["train_img_per_s_incl_decode"] = round(1 / (1 / ips + 1 / decode_ips), 3)
        result["configs"].append(row)
        con.print(f"{name}: {ips:.2f} img/s (steps {', '.join(f'{t:.2f}s' for t in times)})"
                  + (f"; cache build {cache_ips:.1f} img/s" if cache_ips else "") + f"; peak RSS {row['peak_rss_mb']:.0f} MiB")
        save()

    # forward-only (inference and validation speed), full model, no prompts and k=0 deep prompts
    model = PromptedViT(backbone.model, 2, PromptConfig(VPT_DEEP, args.prompts, 0), tuple(backbone.data_config["mean"]), tuple(backbone.data_config["std"]))
    result["forward_img_per_s_vpt_deep_k0"] = round(C.inference_img_per_s(model, images), 2)
    con.print(f"forward only (VPT-deep k=0, inference_mode): {result['forward_img_per_s_vpt_deep_k0']:.1f} img/s")
    save()

    naive = next((r for r in result["configs"] if r["method"] == VPT_DEEP and not r["cached"]), None)
    if naive:
        for r in result["configs"]:
            r["speedup_vs_naive"] = round(r["train_img_per_s"] / naive["train_img_per_s"], 2)

    # ---------------------------------------------------------------- part 2: real epochs
    n_train, n_val = len(manifest.usable("train")), len(manifest.usable("val"))
    if naive:
        naive_epoch = n_train / naive["train_img_per_s_incl_decode"] + n_val / result["forward_img_per_s_vpt_deep_k0"]
        result["naive_extrapolated"] = {
            "epochs": args.epochs, "seconds_per_epoch": round(naive_epoch, 1), "total_seconds": round(args.epochs * naive_epoch, 1),
            "how": "extrapolated, not run: n_train / naive train img/s (incl. decode) + n_val / forward img/s, per epoch",
        }
        save()
    test_ds = ManifestDataset(manifest, "test", backbone.data_config, augment=False)
    runs_root = C.WORK / "train_speed_runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    epoch_plan = [(min(k, n_blocks - 1), "on") for k in args.epoch_ks] + ([(0, "off")] if args.naive_accuracy else [])
    for k, cache in epoch_plan:
        cfg = TrainConfig(method=VPT_DEEP, num_prompts=args.prompts, prompt_start_block=k, epochs=args.epochs,
                          batch_size=args.batch_size, augment=args.cache_views > 1 if cache == "on" else False,
                          cache=cache, cache_views=args.cache_views, seed=0, workers=0, device="cpu",
                          backbone=backbone.identity.name)
        C.reset_peak_rss()
        t0 = time.perf_counter()
        res = train(manifest, backbone, cfg, runs_root / f"vpt-deep-k{k}-cache-{cache}")
        wall = time.perf_counter() - t0
        peak = C.peak_rss_mb()
        t1 = time.perf_counter()
        model, _meta = C.load_trained(res.run_dir, backbone)
        probs = C.predicted_probs(model, test_ds, None)
        rep = classification_report(np.asarray(test_ds.labels), probs, list(manifest.classes))
        row = {"method": VPT_DEEP, "prompt_start_block": k, "cache": cache, "cache_views": args.cache_views if cache == "on" else 0,
               "augment": cfg.augment, "epochs": args.epochs, "wall_seconds_train_incl_cache_and_val": round(wall, 1),
               "train_seconds_per_epoch": [h["train_seconds"] for h in res.history],
               "train_img_per_s_per_epoch": [h["train_img_per_s"] for h in res.history],
               "best_epoch": res.best_epoch, "best_val": res.best_metrics, "peak_rss_mb": round(peak, 1),
               "test_top1": rep["accuracy"], "test_balanced_accuracy": rep["balanced_accuracy"], "test_macro_f1": rep["macro_f1"],
               "test_roc_auc": rep.get("roc_auc"), "test_eval_seconds": round(time.perf_counter() - t1, 1),
               "tuned_parameters": res.tuned_parameters, "tuned_percent": round(100 * res.tuned_parameters / res.backbone_parameters, 4),
               "n_train": n_train, "n_val": n_val, "n_test": len(test_ds)}
        if result.get("naive_extrapolated"):
            row["speedup_vs_naive_extrapolated"] = round(result["naive_extrapolated"]["total_seconds"] / wall, 2)
        result["epoch_runs"].append(row)
        con.print(f"{args.epochs} epochs VPT-deep k={k} cache {cache}: {wall:.0f}s wall; test top-1 {100 * rep['accuracy']:.2f}%")
        save()
    if not args.naive_accuracy:
        result["notes"].append("uncached k=0 accuracy not trained (too slow on this machine; run with --naive-accuracy)")

    # ---------------------------------------------------------------- table
    t = Table(title=f"Training speed, {backbone.identity.name} {backbone.img_size}px, batch {bs}, {args.threads} threads")
    for col in ("configuration", "train img/s", "vs naive", "cache build img/s", "tuned %", "peak RSS MiB"):
        t.add_column(col, justify="right" if col != "configuration" else "left")
    for r in result["configs"]:
        t.add_row(r["name"], f"{r['train_img_per_s']:.2f}", f"{r.get('speedup_vs_naive', float('nan')):.1f}x",
                  f"{r['cache_build_img_per_s']:.1f}" if r["cache_build_img_per_s"] else "-", f"{r['tuned_percent']:.3f}", f"{r['peak_rss_mb']:.0f}")
    con.print(t)
    if result["epoch_runs"] or result.get("naive_extrapolated"):
        t2 = Table(title=f"{args.epochs} epochs VPT-deep on the full ELPV training split ({n_train} train + {n_val} val)")
        for col in ("run", "wall s", "vs naive", "test top-1", "best epoch"):
            t2.add_column(col)
        if result.get("naive_extrapolated"):
            t2.add_row("naive k=0, no cache (extrapolated)", f"{result['naive_extrapolated']['total_seconds']:.0f}", "1.0x", "not run", "-")
        for r in result["epoch_runs"]:
            t2.add_row(f"k={r['prompt_start_block']} cache {r['cache']} ({r['cache_views']} view)", f"{r['wall_seconds_train_incl_cache_and_val']:.0f}",
                       f"{r.get('speedup_vs_naive_extrapolated', float('nan')):.1f}x", f"{100 * r['test_top1']:.2f}%", str(r["best_epoch"]))
        con.print(t2)
    save()
    con.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
