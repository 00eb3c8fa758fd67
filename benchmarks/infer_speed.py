"""Inference speed of one export on this machine: PyTorch eager vs ONNX Runtime fp32 vs int8 (issue 16).

Side by side in one process, on the same preprocessed images (decoded and resized once, as ``vpt
predict`` does, then held in memory, so decoding is not timed): images per second of

- ``torch``: the prompt file on its backbone (``TorchPredictor``: fp32, eager, ``inference_mode``);
- ``onnx-fp32``: ``model.onnx`` in ONNX Runtime (``OnnxPredictor``: the session settings of ``vpt predict``);
- ``onnx-int8``: ``model.int8.onnx`` (``vpt export --int8``) in ONNX Runtime; when the export has none
  (its check refused it, or it was made without ``--int8``) the benchmark quantises ``model.onnx`` the
  same way (:func:`vptcli.quantize.quantize_int8`) and says so in the results;
- ``onnx-fp16``: an ``--fp16`` graph (``--fp16-export DIR``), on CUDA only (skipped on a CPU),

at batch 1 and batch 16. The CPU may be shared with other work, so the timing is interleaved: each
round times every engine at every batch size once (``--images-per-round`` images each), and the
figures are medians over ``--rounds`` rounds. Rows are written after every round (a rerun with the
same ``--out`` continues). FLOPs per image come from ``torch.utils.flop_counter.FlopCounterMode`` on
the PyTorch model (a multiply-add counts 2), so the table shows GFLOP/s reached.

Agreement: the top-1 of int8 vs fp32 ONNX Runtime and vs PyTorch on every image, the largest
probability change, and the accuracy of each against the class named by the image's folder (images in
folders that are not a class of the model count for agreement only).

Usage (quickstart-like export of the default backbone, DINOv2 ViT-S/14)::

    vpt ingest sample_data --out runs/quickstart/data
    vpt train runs/quickstart/data --out runs/quickstart/run --method vpt-deep --prompt-start-block 9 \\
        --epochs 10 --batch-size 8 --cache-views 4
    vpt export runs/quickstart/run --out runs/quickstart/export --int8
    python benchmarks/infer_speed.py runs/quickstart/export sample_data [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np

BATCHES = (1, 16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path, help="export folder with model.onnx, model.int8.onnx and prompts.safetensors")
    p.add_argument("images", type=Path, help="image folder (class per folder: the folder names give the labels)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--images-per-round", type=int, default=32, help="images timed per engine, batch size and round")
    p.add_argument("--threads", type=int, default=2, help="PyTorch threads and ONNX Runtime intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu | cuda (fp16 is timed on cuda only)")
    p.add_argument("--fp16-export", type=Path, default=None, help="an export folder made with --fp16 (cuda only)")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def load_images(predictor, folder: Path):
    """``(images [N, 3, S, S] float32, folder name of each, file names)``: every image file, sorted."""
    from vptcli.images import decode_image
    from vptcli.inference import expand_inputs

    files, _, _ = expand_inputs([folder])
    x = np.stack([predictor.preprocess(decode_image(f).pixels) for f in files]).astype(np.float32)
    return x, [f.parent.name for f in files], files


def flops_per_image(model, x1) -> int:
    """FLOPs of one forward pass on ``x1 [1, 3, S, S]`` (FlopCounterMode: a multiply-add is 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:  # FlopCounterMode's module tracker needs grad mode
        model(torch.from_numpy(x1))
    return int(counter.get_total_flops())


def probabilities(predictor, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([predictor.predict_batch(x[i : i + batch])[1] for i in range(0, len(x), batch)]).astype(np.float64)


def time_engine(predictor, x: np.ndarray, batch: int, n: int) -> float:
    """img/s of ``predict_batch`` over the first ``n`` images (cycled) in batches of ``batch``."""
    idx = np.arange(n) % len(x)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        predictor.predict_batch(x[idx[i : i + batch]])
    return n / (time.perf_counter() - t0)


def main(argv=None) -> None:
    args = parse_args(argv)
    from vptcli.export import INT8_ONNX_FILE, ONNX_FILE
    from vptcli.inference import OnnxPredictor, TorchPredictor

    C.set_threads(args.threads)
    date = time.strftime("%Y-%m-%d")
    out = args.out or Path(__file__).resolve().parent / "results" / f"infer_speed-{date}.json"
    int8_graph, int8_origin = args.export / INT8_ONNX_FILE, "vpt export --int8 (passed its check)"
    if not int8_graph.is_file():  # the export refused it (check failed) or was made without --int8: quantise here
        import tempfile

        from vptcli.quantize import quantize_int8

        int8_graph = Path(tempfile.mkdtemp(prefix="infer-speed-")) / INT8_ONNX_FILE
        int8_graph.write_bytes(quantize_int8((args.export / ONNX_FILE).read_bytes()))
        int8_origin = "quantised by this benchmark (vptcli.quantize.quantize_int8, not checked at export)"
    engines = {
        "torch": TorchPredictor(args.export, device=args.device),
        "onnx-fp32": OnnxPredictor(args.export / ONNX_FILE, device=args.device, threads=args.threads),
        "onnx-int8": OnnxPredictor(int8_graph, args.export / "prompts.safetensors", device=args.device, threads=args.threads),
    }
    skipped = {}
    if args.device == "cuda" and args.fp16_export is not None:
        engines["onnx-fp16"] = OnnxPredictor(args.fp16_export / ONNX_FILE, device="cuda", threads=args.threads)
    else:
        skipped["onnx-fp16"] = "CUDA only (fp16 matmuls are emulated on a CPU)" if args.device != "cuda" else "no --fp16-export"
    ref = engines["torch"]
    x, folders, _ = load_images(ref, args.images)
    print(f"{len(x)} images {x.shape[2]}x{x.shape[3]}; engines on: " + ", ".join(f"{k} {e.device}" for k, e in engines.items()),
          flush=True)

    # Agreement and accuracy first (every image, batch 16).
    probs = {name: probabilities(e, x) for name, e in engines.items()}
    classes = ref.classes
    labels = np.array([classes.index(f) if f in classes else -1 for f in folders])
    known = labels >= 0
    top = {k: p.argmax(1) for k, p in probs.items()}
    agreement = {
        "images": len(x), "labelled_images": int(known.sum()),
        "int8_vs_fp32_top1_agree": int((top["onnx-int8"] == top["onnx-fp32"]).sum()),
        "int8_vs_torch_top1_agree": int((top["onnx-int8"] == top["torch"]).sum()),
        "fp32_vs_torch_top1_agree": int((top["onnx-fp32"] == top["torch"]).sum()),
        "int8_vs_fp32_max_abs_probability": float(np.abs(probs["onnx-int8"] - probs["onnx-fp32"]).max()),
        "accuracy": {k: float((t[known] == labels[known]).mean()) if known.any() else None for k, t in top.items()},
    }
    gflops = flops_per_image(ref.model, x[:1]) / 1e9

    prior = {}
    if out.is_file():
        import json

        prior = json.loads(out.read_text(encoding="utf-8"))
    rounds = prior.get("rounds", []) if prior.get("export") == args.export.name else []
    record = {
        **C.provenance(), "date": date, "machine": C.machine_info(), "export": args.export.name,
        "image_folder": args.images.name, "image_size": int(x.shape[2]), "threads": args.threads, "device": args.device,
        "engines": {k: e.device for k, e in engines.items()}, "skipped": skipped, "int8_graph": int8_origin,
        "gflops_per_image": round(gflops, 3), "agreement": agreement, "images_per_round": args.images_per_round,
        "rounds": rounds,
    }
    for e in engines.values():  # warm-up: first runs allocate and pick kernels
        for b in BATCHES:
            e.predict_batch(x[:b])
    while len(rounds) < args.rounds:
        row = {}
        for name, e in engines.items():  # interleaved: every engine once per round
            for b in BATCHES:
                row[f"{name}@{b}"] = round(time_engine(e, x, b, args.images_per_round), 3)
        rounds.append(row)
        record["summary"] = summarise(rounds, gflops)
        C.dump_json(out, record)
        print(f"round {len(rounds)}/{args.rounds}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    record["summary"] = summarise(rounds, gflops)
    C.dump_json(out, record)
    print_table(record)
    print(f"results: {out}")


def summarise(rounds: list[dict], gflops: float) -> dict:
    """Median img/s per engine and batch over the rounds, GFLOP/s, and the ratios to ONNX Runtime fp32."""
    keys = list(rounds[0])
    med = {k: float(np.median([r[k] for r in rounds if k in r])) for k in keys}
    summary = {k: {"img_per_s": round(v, 3), "gflop_per_s": round(v * gflops, 1)} for k, v in med.items()}
    for k, v in med.items():
        b = k.split("@")[1]
        base = med.get(f"onnx-fp32@{b}")
        if base:
            summary[k]["vs_onnx_fp32"] = round(v / base, 3)
    return summary


def print_table(record: dict) -> None:
    s, a = record["summary"], record["agreement"]
    print(f"\n{record['gflops_per_image']:.2f} GFLOP per image, {record['threads']} threads, median of {len(record['rounds'])} rounds")
    print(f"{'engine':<12}{'batch':>6}{'img/s':>9}{'GFLOP/s':>9}{'x fp32 ORT':>12}")
    for k, v in s.items():
        name, b = k.split("@")
        print(f"{name:<12}{b:>6}{v['img_per_s']:>9.2f}{v['gflop_per_s']:>9.1f}{v.get('vs_onnx_fp32', float('nan')):>12.2f}")
    n = a["images"]
    print(f"int8 top-1 agrees with fp32 ORT on {a['int8_vs_fp32_top1_agree']}/{n}, with PyTorch on "
          f"{a['int8_vs_torch_top1_agree']}/{n}; max |probability change| {a['int8_vs_fp32_max_abs_probability']:.3f}; "
          "accuracy " + ", ".join(f"{k} {100 * v:.1f} %" for k, v in a["accuracy"].items() if v is not None)
          + f" on {a['labelled_images']} labelled images")


if __name__ == "__main__":
    main()
