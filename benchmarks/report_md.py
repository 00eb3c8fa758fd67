"""Print Markdown tables from the benchmark result files (for docs/benchmarks.md).

Usage: ``python benchmarks/report_md.py [--elpv FILE ...] [--speed FILE]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vptcli.methods import Method, spec


def seed_summary(rows: list[dict]) -> str:
    """Mean ± sample std of test top-1 / macro-F1 over the seeds of each setting (regime, method, image
    size, prompt start block, prompts, lr, head lr scale, prompt init, head input)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["regime"], r["method"], r.get("img_size"), r.get("prompt_start_block"), r.get("num_prompts"), r.get("lr"),
               r.get("head_lr_scale", 1.0), r.get("prompt_init", "random"), r.get("head_input", "cls"))
        groups.setdefault(key, []).append(r)
    out = ["| regime | method | px | k | prompts | prompt init | head input | lr | head lr × | seeds | test top-1 | macro-F1 | val macro-F1 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (reg, m, px, k, p, lr, hls, init, head_input), rs in groups.items():
        if len(rs) < 2:
            continue

        def ms(key, scale=1.0, rs=rs):
            v = [scale * r[key] for r in rs]
            return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if scale != 1.0 else f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"

        prompted = spec(m).has_prompts
        out.append(f"| {reg} | {spec(m).label} | {px} | {k if prompted else '–'} | {p if prompted else '–'} | "
                   f"{init if prompted else '–'} | {head_input} | "
                   f"{f'{lr:g}' if not spec(m).head_fit else '–'} | {f'{hls:g}' if not spec(m).head_fit else '–'} | {len(rs)} | "
                   f"{ms('test_top1', 100.0)} % | {ms('test_macro_f1')} | {ms('best_val_macro_f1')} |")
    return "\n".join(out) if len(out) > 2 else ""


def probe_c_cell(row: dict) -> str:
    """The warm-start probe's ``C``: ``--probe-c``'s value, else the one chosen on validation as the run's
    ``metrics.csv`` row 0 records it ("0.1 (val)"; plain "val" for runs made before it was recorded;
    "–" when the run fitted no probe)."""
    if row.get("probe_c") is not None:
        return format(row["probe_c"], "g")
    first = (row.get("history") or [{}])[0]
    if first.get("epoch") != 0:
        return "–"
    return "val" if first.get("probe_c") is None else f"{first['probe_c']:g} (val)"


def elpv_tables(d: dict) -> str:
    out = []
    rows = [r for r in d["rows"] if "error" not in r]
    out.append("| regime | method | px | seed | k | epochs | test top-1 | bal. acc. | macro-F1 | ROC-AUC | ECE | tuned params (%) | prompt file | train s/epoch | train wall s | best epoch (val F1) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["group"] != "main":
            continue
        k = "–" if r["prompt_start_block"] is None else str(r["prompt_start_block"])
        auc = "–" if r["test_roc_auc"] is None else f"{r['test_roc_auc']:.3f}"
        size = r["prompt_file_bytes"]
        size_s = f"{size / 1024:.0f} KiB" if size < 1024**2 else f"{size / 1024**2:.0f} MiB"
        label = spec(r["method"]).label + (f", TTA {r['tta']}" if r.get("tta", "none") != "none" else "")
        out.append(f"| {r['regime']} | {label} | {r.get('img_size', d.get('img_size'))} | {r.get('seed', 0)} | {k} | "
                   f"{'fit' if spec(r['method']).head_fit and r.get('head_init') == 'probe' else r['epochs']} | {100 * r['test_top1']:.2f} % | "
                   f"{100 * r['test_balanced_accuracy']:.2f} % | {r['test_macro_f1']:.3f} | {auc} | {r['test_ece']:.3f} | "
                   f"{r['tuned_parameters']:,} ({r['tuned_percent']:.3f} %) | {size_s} | {r['train_seconds_per_epoch']:.1f} | "
                   f"{r['train_wall_seconds']:.0f} | {r['best_epoch']} ({r['best_val_macro_f1']:.3f}) |")
    summary = seed_summary(rows)
    if summary:
        out += ["", summary]
    tries = [r for r in rows if r["method"] == Method.VPT_DEEP.value and (r["group"] == "tries" or r["regime"] == "64-shot")]
    if tries:
        out.append("")
        out.append("| regime | seed | px | lr | head lr × | prompts | prompt init | head input | probe C | epochs | k | val macro-F1 (selection) | best epoch | val top-1 | "
                   "test top-1 (information only) | test bal. acc. | test macro-F1 | train s/epoch |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in tries:
            out.append(f"| {r['regime']} | {r.get('seed', 0)} | {r.get('img_size', 224)} | {r['lr']:g} | {r.get('head_lr_scale', 1.0):g} | {r['num_prompts']} | "
                       f"{r.get('prompt_init', 'random')} | {r.get('head_input', 'cls')} | "
                       f"{probe_c_cell(r)} | "
                       f"{r['epochs']} | {r['prompt_start_block']} | {r['best_val_macro_f1']:.3f} | {r['best_epoch']} | "
                       f"{100 * r['best_val_top1']:.1f} % | {100 * r['test_top1']:.2f} % | {100 * r['test_balanced_accuracy']:.2f} % | "
                       f"{r['test_macro_f1']:.3f} | {r['train_seconds_per_epoch']:.1f} |")
    errs = [r for r in d["rows"] if "error" in r]
    for r in errs:
        out.append(f"\nFailed: {r['id']}: {r['error']}")
    return "\n".join(out)


def speed_tables(d: dict) -> str:
    out = ["| configuration | train img/s | vs naive | cache build img/s | tuned % | peak RSS |", "|---|---|---|---|---|---|"]
    for r in d["configs"]:
        cb = f"{r['cache_build_img_per_s']:.1f}" if r.get("cache_build_img_per_s") else "–"
        out.append(f"| {r['name']} | {r['train_img_per_s']:.2f} | {r.get('speedup_vs_naive', float('nan')):.1f}× | {cb} | {r['tuned_percent']:.3f} | {r['peak_rss_mb']:.0f} MiB |")
    out.append("")
    out.append(f"Decode + resize: {d.get('decode_img_per_s')} img/s; forward only (VPT-deep k=0): {d.get('forward_img_per_s_vpt_deep_k0')} img/s.")
    ne = d.get("naive_extrapolated")
    if ne or d.get("epoch_runs"):
        out.append("")
        out.append("| run | wall time | vs naive | test top-1 | best epoch |")
        out.append("|---|---|---|---|---|")
        if ne:
            out.append(f"| naive k=0, no cache, {ne['epochs']} epochs (**extrapolated**) | {ne['total_seconds'] / 60:.1f} min | 1.0× | not run | – |")
        for r in d.get("epoch_runs", []):
            out.append(f"| VPT-deep k={r['prompt_start_block']}, cache {r['cache']} ({r['cache_views']} view), {r['epochs']} epochs | "
                       f"{r['wall_seconds_train_incl_cache_and_val'] / 60:.1f} min | {r.get('speedup_vs_naive_extrapolated', float('nan')):.1f}× | "
                       f"{100 * r['test_top1']:.2f} % | {r['best_epoch']} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--elpv", type=Path, nargs="*", default=[])
    p.add_argument("--speed", type=Path)
    a = p.parse_args()
    if a.speed:
        print(speed_tables(json.loads(a.speed.read_text())))
        print()
    for path in a.elpv:
        print(f"From `{path.as_posix()}`:\n")
        print(elpv_tables(json.loads(path.read_text())))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
