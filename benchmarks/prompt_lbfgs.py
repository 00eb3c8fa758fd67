"""Full-batch L-BFGS on the prompts from the warm start (issue 11).

AdamW's minibatch steps from the warm start raise the training loss above about 3e-5 per coordinate
and barely move it below (docs/benchmarks.md, tenth and eleventh rounds). This asks whether a
deterministic full-batch quasi-Newton method, which measures the curvature instead of assuming a step
size, finds prompts that lower the training loss and raise validation where AdamW did not:

1. The warm start of ``prompt_sharpness.py`` (:func:`prompt_sharpness.warm_start`): VPT-deep
   (Jia et al., ECCV 2022), ``--prompts`` per block from ``--prompt-start-block``, ``--head-input``, the
   head a linear probe fitted on the features of the initial prompts, exactly as ``vpt train`` builds it.
2. The hidden states entering the first block the model runs (``[N, 1 + patches, D]``, plain images, no
   augmentation) are computed once for the train, validation and test splits.
3. ``torch.optim.LBFGS`` (Nocedal & Wright, *Numerical Optimization*, ch. 7; strong-Wolfe line search)
   minimises the training loss (cross-entropy in nats, mean over every plain training image, no class
   weights, as ``vpt train`` uses on binary ELPV) over the prompts ``[12 - K, P, D]`` alone: the head
   stays the warm start's. After every ``--evals-per-check`` evaluations of the loss and its gradient
   (one evaluation: a forward and backward pass over every training image, the cost of about one
   epoch; L-BFGS iterations take one or more each, line search included, and every group of
   evaluations starts by re-evaluating the point the previous one ended at) a *check* records the
   training loss, the iterations and evaluations so far, the prompts' relative change and validation
   top-1 and macro-F1.
4. Selection on validation only: the check with the best validation macro-F1 (the warm start is check
   0), and that check's prompts with the head refitted as the warm start's was (a linear probe, ``C``
   chosen on validation, :func:`vptcli.probe.fit_linear_probe`). Test metrics are computed for the warm
   start and for these two models, each once; ``chosen`` names the one of the three with the highest
   validation macro-F1 (ties: the warm start, then the check).

The results file is rewritten after every check (git commit and command recorded at the start).

Usage: ``python benchmarks/prompt_lbfgs.py [--prompt-start-block 9] [--prompts 50] [--head-input last4+mean]
[--checks 5] [--evals-per-check 6] [--history 10] [--chunk 64] [--seed 0] [--threads 2] [--out PATH] [--smoke]``

ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
from prompt_sharpness import add_warm_start_args, warm_start


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for what is measured.")
    add_warm_start_args(p)
    p.add_argument("--checks", type=int, default=5, help="validation checks after the warm start (default 5)")
    p.add_argument("--evals-per-check", type=int, default=6,
                   help="full-batch loss and gradient evaluations between checks (default 6)")
    p.add_argument("--history", type=int, default=10, help="L-BFGS history size (default 10)")
    p.add_argument("--chunk", type=int, default=64, help="images per forward/backward chunk of the full batch (default 64)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/prompt_lbfgs-<date>.json)")
    args = p.parse_args(argv)
    if min(args.checks, args.evals_per_check, args.history, args.chunk) < 1:
        p.error("--checks, --evals-per-check, --history and --chunk must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch
    import torch.nn.functional as F

    from vptcli.datasets import ManifestDataset
    from vptcli.evaluation import chunks
    from vptcli.metrics import classification_report
    from vptcli.probe import fit_linear_probe

    con, date, out, backbone = C.start("prompt_lbfgs", args)
    result = {"benchmark": "prompt_lbfgs", "date": date, **C.provenance(), "smoke": args.smoke, "machine": C.machine_info(),
              "backbone": backbone.identity.to_dict(), "img_size": backbone.img_size}
    t0 = time.perf_counter()
    manifest, model = warm_start(args, backbone, con)
    classes = list(manifest.classes)
    for p in model.parameters():
        p.requires_grad_(False)
    start = model.frozen_blocks

    def hidden_of(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = ManifestDataset(manifest, split, backbone.data_config, augment=False)
        with torch.no_grad():
            h = [model.embed(torch.stack([ds[i][0] for i in ix]), start) for ix in chunks(range(len(ds)), 32)]
        return torch.cat(h), torch.as_tensor(ds.labels, dtype=torch.long)

    con.rule(f"hidden states entering block {start}: train, val, test (plain images)")
    (tr_h, tr_y), (va_h, va_y), (te_h, te_y) = (hidden_of(s) for s in ("train", "val", "test"))
    result["setting"] = {"method": "vpt-deep", "prompt_start_block": model.config.prompt_start_block, "prompts": args.prompts,
                         "head_input": model.config.head_input, "tuned": "prompts (head fixed: the warm start's probe)",
                         "optimizer": "torch.optim.LBFGS, lr 1, line_search_fn strong_wolfe", "history": args.history,
                         "evals_per_check": args.evals_per_check, "train_images": len(tr_y), "val_images": len(va_y),
                         "test_images": len(te_y), "seed": args.seed,
                         "loss": "cross-entropy, mean over plain training images, no class weights, eval mode"}
    result["setup_s"] = round(time.perf_counter() - t0, 1)

    @torch.no_grad()
    def features(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([model.forward_from(h[ix[0]:ix[-1] + 1], start)[0] for ix in chunks(range(len(h)), args.chunk)])

    def probs(feats: torch.Tensor, head) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(head(feats), -1).numpy()

    def val_metrics(head=None, feats=None) -> dict:
        """Validation top-1 and macro-F1 of ``head`` (default the model's) on ``feats`` (default: the current prompts')."""
        rep = classification_report(va_y.numpy(), probs(features(va_h) if feats is None else feats, head or model.head), classes)
        return {"val_top1": round(rep["accuracy"], 4), "val_macro_f1": round(rep["macro_f1"], 4)}

    def test_metrics(head, feats=None) -> dict:
        rep = classification_report(te_y.numpy(), probs(features(te_h) if feats is None else feats, head), classes)
        return {k: (round(rep[k], 4) if rep[k] is not None else None)
                for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece")}

    evals = 0

    def closure(backward: bool = True) -> torch.Tensor:
        """Full-batch training loss, its gradient accumulated chunk by chunk into ``model.prompts.grad``."""
        nonlocal evals
        evals += backward
        model.prompts.grad = None
        total = torch.zeros(())
        with torch.set_grad_enabled(backward):
            for ix in chunks(range(len(tr_y)), args.chunk):
                feats, _ = model.forward_from(tr_h[ix[0]:ix[-1] + 1], start)
                part = F.cross_entropy(model.head(feats), tr_y[ix[0]:ix[-1] + 1], reduction="sum") / len(tr_y)
                if backward:
                    part.backward()
                total += part.detach()
        return total

    model.prompts.requires_grad_(True)
    opt = torch.optim.LBFGS([model.prompts], lr=1, max_iter=args.evals_per_check, max_eval=args.evals_per_check,
                            history_size=args.history,
                            line_search_fn="strong_wolfe")
    loss0 = float(closure(backward=False))
    checks = [{"check": 0, "iterations": 0, "evals": 0, "train_loss": round(loss0, 6), **val_metrics(),
               "prompt_shift": 0.0, "s": 0.0}]
    result["checks"] = checks
    C.dump_json(out, result)
    con.print(checks[-1])
    p0 = model.prompts.detach().clone()
    best_state, best = p0.clone(), checks[0]
    t1 = time.perf_counter()
    for c in range(1, args.checks + 1):
        opt.step(closure)
        train_loss = float(closure(backward=False))  # at the current prompts; not an L-BFGS evaluation
        row = {"check": c, "iterations": opt.state[model.prompts]["n_iter"], "evals": evals, "train_loss": round(train_loss, 6),
               **val_metrics(), "prompt_shift": round(float((model.prompts.detach() - p0).norm() / p0.norm()), 5),
               "s": round(time.perf_counter() - t1, 1)}
        checks.append(row)
        C.dump_json(out, result)
        con.print(row)
        if row["val_macro_f1"] > best["val_macro_f1"]:
            best_state, best = model.prompts.detach().clone(), row
    model.prompts.requires_grad_(False)

    con.rule("test: the warm start, the validation-best check, and that check with the probe refitted")
    with torch.no_grad():
        model.prompts.copy_(p0)
    rows = [{"model": "warm start", **checks[0], **test_metrics(model.head)}]
    with torch.no_grad():
        model.prompts.copy_(best_state)
    va_f, te_f = features(va_h), features(te_h)  # the chosen prompts' features, shared by both heads
    rows.append({"model": f"L-BFGS prompts (validation-best check: {best['check']})", **best, **test_metrics(model.head, te_f)})
    fit = fit_linear_probe(features(tr_h), tr_y, va_f, va_y, len(classes))

    def refit(feats: torch.Tensor) -> torch.Tensor:  # the refitted probe as a head: [N, F] -> [N, C] logits
        return feats @ fit.weight.T + fit.bias

    rows.append({"model": "L-BFGS prompts, probe refitted", **best, **val_metrics(refit, va_f), "probe_c": fit.c,
                 **test_metrics(refit, te_f)})
    result["test"] = rows
    result["chosen"] = max(rows, key=lambda r: r["val_macro_f1"])["model"]  # ties: the earlier row
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    C.dump_json(out, result)
    for r in rows:
        con.print(r)
    con.print(f"chosen on validation: {result['chosen']}; results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
