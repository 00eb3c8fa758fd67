"""Heatmap overlays of real ELPV test cells for docs/explain.md (all three methods).

Takes a trained binary ELPV run (default: the run of ``benchmarks/cpu_default.py``, the default
``vpt train`` on the protocol split: DINOv2 ViT-S/14, VPT-deep with prompts in the last block) and its
test report, picks the most confident correct ``defective`` cell, the most confident correct
``functional`` cell and the most confident mistake, and writes ``elpv-<cell>-<method>.png`` (the
overlay ``vpt explain`` writes, palette-quantised to keep the files small) into ``--out`` plus ``elpv-overlays.json`` (which cells, the model,
git commit and command).

Usage: ``python benchmarks/explain_elpv.py [--run RUN] [--report report.json] [--out docs/explain]``.
ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np


def pick(images: list[dict]) -> list[tuple[dict, str]]:
    """``(report row, why)``: 1 defective and 1 functional (correct, most confident), 1 mistake."""
    def best(rows):
        return sorted(rows, key=lambda r: -r["confidence"])

    chosen = [(r, "correct") for r in best([r for r in images if r["correct"] and r["true"] == "defective"])[:1]]
    chosen += [(r, "correct") for r in best([r for r in images if r["correct"] and r["true"] == "functional"])[:1]]
    chosen += [(r, "mistake") for r in best([r for r in images if not r["correct"]])[:1]]
    return chosen


def small_png(data: bytes, colours: int = 96) -> bytes:
    """The PNG re-encoded with a ``colours``-entry palette (Pillow), a fraction of the size."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").quantize(colours).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def main(argv=None) -> int:
    from vptcli.explain import EXPLAIN_METHODS
    from vptcli.explain_report import explain_arrays, overlay_png
    from vptcli.fsutil import atomic_write_bytes, atomic_write_json
    from vptcli.images import decode_image
    from vptcli.inference import TorchPredictor

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=C.WORK / "cpu_default" / "run")
    p.add_argument("--report", type=Path, default=C.WORK / "cpu_default" / "eval" / "report.json")
    p.add_argument("--out", type=Path, default=C.REPO / "docs" / "explain")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    report = json.loads(args.report.read_text())
    predictor = TorchPredictor(args.run, device="cpu")
    rows = []
    for r, why in pick(report["images"]):
        x = predictor.preprocess(decode_image(r["path"]).pixels)[None]
        cell = Path(r["path"]).stem
        for method in EXPLAIN_METHODS:
            if method == "prompt-attention" and predictor.model.prompts is None:
                continue
            e = explain_arrays(predictor, x, method)
            k = int(e.probabilities[0].argmax())
            lines = [f"{cell}: true {r['true']}", f"predicted {predictor.classes[k]} ({100 * e.probabilities[0, k]:.1f}%) · {method}"]
            name = f"elpv-{cell}-{method}.png"
            atomic_write_bytes(args.out / name, small_png(overlay_png(x[0], e.maps[0], lines)))
            rows.append({"cell": cell, "true": r["true"], "predicted": predictor.classes[k], "why": why,
                         "confidence": round(float(e.probabilities[0, k]), 4), "method": method, "png": name,
                         "map_max_at": [int(v) for v in np.unravel_index(e.maps[0].argmax(), e.maps[0].shape)]})
            print(rows[-1])
    config = json.loads((args.run / "config.json").read_text())
    resolved = config.get("resolved", {})
    meta = {"method": predictor.meta.method, "prompt": predictor.meta.prompt, "backbone": predictor.meta.backbone,
            **{k: resolved[k] for k in ("img_size", "prompt_start_block", "tuned_parameters", "lr") if k in resolved}}
    atomic_write_json(args.out / "elpv-overlays.json", {
        **C.provenance(), "run_settings": meta, "report_accuracy": report.get("accuracy"), "images": rows,
        "licence": "ELPV images CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019)",
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
