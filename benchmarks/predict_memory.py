"""Peak memory of ``vpt predict`` over growing folders: does it stream? (issue 16)

Writes ``--sizes`` folders of small synthetic PNGs (48 x 40 px, a few sizes mixed) under the work
folder, then runs ``vpt predict PROMPT_FILE FOLDER --out preds.csv`` in a fresh process per size and
records that process's peak resident memory (``VmHWM`` of ``/proc/self/status`` read at exit), its
wall time and the rows written. The model is timm's tiny ``test_vit`` (random weights, 32 px, PyTorch
backend): the point is what grows with the number of files (the path list, the rows), not the model,
whose memory is the same at every size. Flat memory: the peak at 10 k files is the peak at 1 k plus
the path list (about 0.1-0.2 kB per file).

Usage: ``python benchmarks/predict_memory.py [--sizes 1000 10000] [--out benchmarks/results/predict_memory-DATE.json]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np

CHILD = (
    "import atexit, sys\n"
    "def peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('PEAK_KB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "from vptcli.cli import main\n"
    "sys.argv = ['vpt'] + sys.argv[1:]\n"
    "main()\n"
)


def make_prompt_file(path: Path) -> Path:
    import torch

    from vptcli.artifacts import make_meta, save_prompt_file
    from vptcli.backbones import load_backbone
    from vptcli.prompting import PromptConfig, PromptedViT

    bb = load_backbone("test_vit", weights="random", img_size=32)
    torch.manual_seed(0)
    dc = bb.data_config
    m = PromptedViT(bb.model, 2, PromptConfig("vpt-deep", 4), dc["mean"], dc["std"]).eval()
    save_prompt_file(path, m, make_meta(m, bb, ["good", "bad"]))
    return path


def make_images(folder: Path, n: int) -> None:
    """``n`` PNGs in sub-folders of 1,000 (made once; an existing complete folder is kept)."""
    from PIL import Image

    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return
    rng = np.random.default_rng(n)
    for i in range(n):
        sub = folder / f"part{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        h, w = ((48, 40), (40, 48), (44, 44))[i % 3]
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(sub / f"img{i:06d}.png")
    done.write_text(str(n))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    work = C.WORK / "predict_memory"
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or Path(__file__).resolve().parent / "results" / f"predict_memory-{time.strftime('%Y-%m-%d')}.json"
    prompt = make_prompt_file(work / "tiny.safetensors")
    record = {**C.provenance(), "machine": C.machine_info(), "model": "test_vit (random weights, 32 px), torch backend",
              "batch_size": args.batch_size, "rows": []}
    for n in args.sizes:
        folder = work / f"images-{n}"
        make_images(folder, n)
        preds = work / f"preds-{n}.csv"
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", CHILD, "predict", str(prompt), str(folder), "--backend", "torch",
                            "--batch-size", str(args.batch_size), "--out", str(preds)],
                           capture_output=True, text=True, check=False, cwd=C.REPO)
        seconds = time.perf_counter() - t0
        peak = [int(line.split()[1]) for line in r.stderr.splitlines() if line.startswith("PEAK_KB")]
        rows = len(preds.read_text(encoding="utf-8").splitlines()) - 1 if preds.is_file() else 0
        row = {"files": n, "exit_code": r.returncode, "rows": rows, "peak_rss_mib": round(peak[-1] / 1024, 1) if peak else None,
               "seconds": round(seconds, 1), "files_per_s": round(n / seconds, 1)}
        record["rows"].append(row)
        C.dump_json(out, record)
        print(row, flush=True)
    if len(record["rows"]) > 1:
        a, b = record["rows"][0], record["rows"][-1]
        if a["peak_rss_mib"] and b["peak_rss_mib"]:
            growth = (b["peak_rss_mib"] - a["peak_rss_mib"]) * 1024 / (b["files"] - a["files"])
            record["growth_kib_per_file"] = round(growth, 3)
            C.dump_json(out, record)
            print(f"peak RSS {a['peak_rss_mib']} MiB at {a['files']} files, {b['peak_rss_mib']} MiB at {b['files']}: "
                  f"{growth:.3f} KiB per extra file")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
