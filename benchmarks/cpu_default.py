"""How long the default ``vpt train`` takes on the full ELPV training split, and what it reaches.

Issue 11's bound: on a CPU the default run (no options but data and output) finishes its 10 epochs of
the full ELPV training split (1,672 train + 296 val images of the protocol split, see
``benchmarks/elpv.py``) in at most 10 minutes on 2 cores. This script runs exactly that, as a user
would (``vpt ingest`` of the protocol tree, then ``vpt train DATA --out RUN`` with no other option,
then ``vpt eval RUN DATA --split test``), times each command's wall clock, and writes
``benchmarks/results/cpu_default-<date>.json`` (git commit, command line, machine, times, the run's
resolved settings and the test figures).

Usage: ``python benchmarks/cpu_default.py [--out FILE] [--threads 2]``.
ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (vpt --threads; default 2)")
    args = p.parse_args(argv)
    date = dt.date.today().isoformat()
    out = args.out or Path(__file__).resolve().parent / "results" / f"cpu_default-{date}.json"
    _manifest, _records, _split = C.elpv_manifest("binary")  # materialises the protocol tree
    tree = C.WORK / "elpv-binary-s0"
    work = C.WORK / "cpu_default"
    shutil.rmtree(work, ignore_errors=True)
    vpt = str(Path(sys.executable).with_name("vpt"))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    times = {
        "ingest_s": run([vpt, "ingest", str(tree), "--out", str(work / "data")], env),
        "train_s": run([vpt, "train", str(work / "data"), "--out", str(work / "run"), "--threads", str(args.threads)], env),
        "eval_s": run([vpt, "eval", str(work / "run"), str(work / "data"), "--split", "test", "--out", str(work / "eval"),
                       "--threads", str(args.threads)], env),
    }
    config = json.loads((work / "run" / "config.json").read_text())
    report = json.loads((work / "eval" / "report.json").read_text())
    metrics = (work / "run" / "metrics.csv").read_text().splitlines()
    result = {
        "benchmark": "cpu_default", "date": date, **C.provenance(), "machine": C.machine_info(),
        "commands": ["vpt ingest TREE --out DATA", f"vpt train DATA --out RUN --threads {args.threads}",
                     f"vpt eval RUN DATA --split test --threads {args.threads}"],
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "train_minutes": round(times["train_s"] / 60, 2),
        "resolved": {k: config["resolved"].get(k) for k in ("prompt_start_block", "cache_views", "img_size", "lr", "tuned_percent", "n_train", "n_val")},
        "epochs": config["train"]["epochs"], "metrics_csv": metrics,
        "test": {k: report.get(k) for k in ("n_images", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece")},
    }
    C.dump_json(out, result)
    print(json.dumps({k: result[k] for k in ("times_s", "train_minutes", "resolved", "test")}, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
