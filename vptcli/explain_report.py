"""Explanation files: overlay PNGs, raw maps and an ``index.html`` gallery (``vpt explain``, ``vpt eval
--explain``, ``vpt predict --explain``).

For each image :class:`ExplainWriter` writes ``NNNN_<stem>.png`` (the image as the model saw it, after
resize and crop, with the heatmap blended on top, bilinearly upsampled from the patch grid; the
predicted label, its confidence, the class explained and the method in the title) and
``NNNN_<stem>.npy`` (the raw map ``[h, w]`` float32 in ``[0, 1]`` at patch-grid resolution). On
:meth:`ExplainWriter.close` it writes ``index.html`` (thumbnails grouped by predicted class, or by the
caller's groups, most confident first; relative links, no script, opens in any browser without a
server) and ``explanations.json`` (one entry per image). Every file is written atomically.

Heatmaps come from :mod:`vptcli.explain` (PyTorch backend) or from the ``heatmap`` output of a graph
exported with ``vpt export --heatmap`` (ONNX backend, :func:`explain_arrays`).
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vptcli.errors import VptError, one_line
from vptcli.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

GALLERY_FILE = "index.html"
INDEX_JSON = "explanations.json"
OVERLAY_ALPHA = 0.45
"""Opacity of the heatmap over the image."""
OVERLAY_CMAP = "jet"


@dataclass
class ExplainedImage:
    """One explained image (an entry of ``explanations.json``).

    ``png`` / ``npy``: file names relative to the output folder. ``group``: the gallery section.
    ``note``: extra text under the thumbnail (e.g. the true class in ``vpt eval --explain``).
    """

    source: str
    label: str
    confidence: float
    explained: str
    method: str
    png: str
    npy: str
    group: str
    note: str = ""


@dataclass
class ExplainWriter:
    """Writes overlays and maps into ``out_dir`` as they come, the gallery on :meth:`close`.

    Args:
        out_dir: folder (created).
        title: the gallery's heading.
    """

    out_dir: Path
    title: str = "vpt explain"
    entries: list[ExplainedImage] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        check_explain_dir(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, source: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray, *, label: str, confidence: float,
            explained: str, method: str, group: str | None = None, note: str = "") -> ExplainedImage:
        """Write one overlay and map.

        Args:
            image: ``[3, S, S]`` float in ``[0, 1]`` (the model's input). heatmap: ``[h, w]`` in ``[0, 1]``.
            group: gallery section (default: the predicted label).
        """
        stem = f"{len(self.entries):04d}_{_safe_stem(Path(source).stem)}"
        lines = [f"predicted {label} ({100 * confidence:.1f}%)", f"{method}: {explained}" + (f" · {note}" if note else "")]
        atomic_write_bytes(self.out_dir / f"{stem}.png", overlay_png(image, heatmap, lines))
        buf = io.BytesIO()
        np.save(buf, np.asarray(heatmap, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self.out_dir / f"{stem}.npy", buf.getvalue())
        entry = ExplainedImage(str(source), label, round(float(confidence), 6), explained, method, f"{stem}.png",
                               f"{stem}.npy", group or label, note)
        self.entries.append(entry)
        return entry

    def fail(self, source: str | os.PathLike, reason: str) -> None:
        """Record an image that could not be explained (listed in the gallery)."""
        self.failures.append((str(source), reason))

    def close(self) -> Path:
        """Write ``index.html`` and ``explanations.json``; returns the gallery's path."""
        atomic_write_json(self.out_dir / INDEX_JSON, {
            "images": [asdict(e) for e in self.entries],
            "failed": [{"source": s, "reason": r} for s, r in self.failures],
        })
        return atomic_write_text(self.out_dir / GALLERY_FILE, gallery_html(self.entries, self.title, self.failures))


_OWN_FILE = re.compile(r"^(\d{4}_.*\.(png|npy)|index\.html|explanations\.json)$")


def check_explain_dir(out: Path) -> None:
    """Refuse an output folder that is a file or holds files this module did not write (an image
    folder, a run): overlays are written there by number, and the gallery would mix with them.

    Raises:
        VptError: naming the folder and a few of the other files.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise VptError(f"{out}: exists and is not a folder; pass a folder for the explanations")
    other = sorted(p.name for p in out.iterdir() if not p.name.startswith(".") and not _OWN_FILE.match(p.name))
    if other:
        raise VptError(f"{out} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}); write the "
                       "explanations into an empty folder or a previous explanation folder")


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:60] or "image"


def overlay_png(image: np.ndarray, heatmap: np.ndarray, lines: list[str], *, alpha: float = OVERLAY_ALPHA) -> bytes:
    """PNG bytes: ``image`` ``[3, S, S]`` (float in ``[0, 1]``) with ``heatmap`` ``[h, w]`` (in ``[0, 1]``,
    bilinearly upsampled to the image) blended on top (``OVERLAY_CMAP``), ``lines`` as the title.
    Matplotlib's Agg canvas; no global matplotlib state, no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = np.clip(np.transpose(np.asarray(image, dtype=np.float32), (1, 2, 0)), 0.0, 1.0)
    s_h, s_w = img.shape[:2]
    fig = Figure(figsize=(3.2, 3.6), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.80))
    ax.imshow(img, extent=(0, s_w, s_h, 0), interpolation="bilinear")
    ax.imshow(np.asarray(heatmap, dtype=np.float32), cmap=OVERLAY_CMAP, alpha=alpha, vmin=0.0, vmax=1.0,
              extent=(0, s_w, s_h, 0), interpolation="bilinear")
    ax.set_axis_off()
    fig.text(0.5, 0.985, "\n".join(lines), ha="center", va="top", fontsize=8, usetex=False, parse_math=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def gallery_html(entries: list[ExplainedImage], title: str, failures: Iterable[tuple[str, str]] = ()) -> str:
    """A self-contained HTML page: one section per group (sorted by name), thumbnails most confident
    first, each linking to its overlay and raw map; images that failed listed at the end."""
    groups: dict[str, list[ExplainedImage]] = {}
    for e in entries:
        groups.setdefault(e.group, []).append(e)
    esc = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        ("<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.4em;width:220px;"
        "vertical-align:top;font-size:12px}img{width:220px}figcaption{word-break:break-all}</style>"),
        "</head><body>", f"<h1>{esc(title)}</h1>",
    ]
    links = [f'<a href="#g{i}">{esc(g)}</a> ({len(groups[g])})' for i, g in enumerate(sorted(groups))]
    parts.append(f"<p>{len(entries)} image(s); sections: {', '.join(links)}</p>")
    for i, g in enumerate(sorted(groups)):
        parts.append(f'<h2 id="g{i}">{esc(g)} ({len(groups[g])})</h2>')
        for e in sorted(groups[g], key=lambda e: -e.confidence):
            note = f"<br>{esc(e.note)}" if e.note else ""
            parts.append(
                f'<figure><a href="{esc(e.png)}"><img src="{esc(e.png)}" alt="{esc(e.label)}" loading="lazy"></a>'
                f"<figcaption><b>{esc(e.label)}</b> {100 * e.confidence:.1f}% · {esc(e.method)}: {esc(e.explained)}{note}"
                f'<br>{esc(Path(e.source).name)} · <a href="{esc(e.npy)}">map (.npy)</a></figcaption></figure>'
            )
    failures = list(failures)
    if failures:
        parts.append(f"<h2>not explained ({len(failures)})</h2><ul>")
        parts += [f"<li>{esc(s)}: {esc(r)}</li>" for s, r in failures]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------ explaining files


def graph_heatmap_method(predictor) -> str | None:
    """The heatmap method baked into an ONNX predictor's graph (``vpt export --heatmap``), or None."""
    from vptcli.export import META_PREFIX

    outputs = [o.name for o in predictor.session.get_outputs()]
    if "heatmap" not in outputs:
        return None
    meta = predictor.session.get_modelmeta().custom_metadata_map or {}
    return meta.get(META_PREFIX + "heatmap", "rollout")


def resolve_method(predictor, method: str | None, target: str | None) -> str:
    """The method to use with ``predictor`` (``method`` None: Grad-CAM with PyTorch, the graph's own
    with ONNX).

    Raises:
        VptError: an unknown method or target class, a target for a class-agnostic method; with ONNX, a
            graph without a ``heatmap`` output,
            another method than the graph's, or a ``--target`` (the graph explains the image, not a class).
    """
    from vptcli.explain import DEFAULT_EXPLAIN_METHOD, check_method

    if target is not None and target not in predictor.classes:
        raise VptError(f"--target {target!r}: not a class of this model ({', '.join(predictor.classes)})")
    if predictor.backend == "torch":
        used = check_method(method or DEFAULT_EXPLAIN_METHOD, predictor.model)
        if target is not None and used != "gradcam":
            raise VptError(f"--target applies to gradcam; {used} maps do not depend on a class")
        return used
    baked = graph_heatmap_method(predictor)
    if baked is None:
        raise VptError(f"{predictor.source}: this graph has no heatmap output; export it with `vpt export --heatmap rollout` "
                       "(or prompt-attention), or use the PyTorch backend (--backend torch)")
    if method is not None and method != baked:
        raise VptError(f"--method {method}: the graph {predictor.source} computes {baked} heatmaps; omit --method or "
                       "use the PyTorch backend")
    if target is not None:
        raise VptError("--target needs the PyTorch backend (gradcam); a graph's heatmap does not depend on a class")
    return baked


def explain_arrays(predictor, images: np.ndarray, method: str, target: str | None = None):
    """``images [N, 3, S, S]`` float32 in ``[0, 1]`` -> :class:`vptcli.explain.Explanation` with the
    predictor's backend (PyTorch: :func:`vptcli.explain.explain_batch`; ONNX: the graph's heatmap)."""
    from vptcli.explain import Explanation

    if predictor.backend == "torch":
        import torch

        from vptcli.explain import explain_batch

        t = None if target is None else predictor.classes.index(target)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(predictor._dev)
        return explain_batch(predictor.model, x, method, t)
    feed = {"images": np.ascontiguousarray(images, dtype=np.float32), **predictor._extra}
    probs, maps = predictor.session.run(["probabilities", "heatmap"], feed)
    return Explanation(maps.astype(np.float32), probs.astype(np.float32), probs.argmax(1).astype(np.int64), method)


def explain_files(predictor, files: list[tuple[Path, str | None, str]], writer: ExplainWriter, *, method: str,
                  target: str | None = None, batch_size: int = 8, bit_depth: int | None = None,
                  max_pixels: int | None = None, on_batch=None) -> int:
    """Explain image files into ``writer``.

    Args:
        files: ``(path, gallery group or None for the predicted class, note)`` per image.
        method: from :func:`resolve_method`. target: class name to explain (Grad-CAM), None: predicted.
        on_batch: optional ``on_batch(n_files)`` progress callback.

    Returns:
        The number of images explained (undecodable files are recorded with :meth:`ExplainWriter.fail`).
    """
    from vptcli.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

    done = 0
    classes = predictor.classes
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        good, arrays = [], []
        for path, group, note in chunk:
            try:
                img = decode_image(path, max_pixels=max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS,
                                   bit_depth=bit_depth)
                arrays.append(predictor.preprocess(img.pixels))
                good.append((path, group, note))
            except ImageDecodeError as exc:
                writer.fail(path, exc.reason)
            except VptError as exc:
                writer.fail(path, str(exc))
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                writer.fail(path, f"{type(exc).__name__}: {one_line(exc, 200)}")
        if good:
            x = np.stack(arrays)
            e = explain_arrays(predictor, x, method, target)
            for i, (path, group, note) in enumerate(good):
                pred = int(e.probabilities[i].argmax())
                writer.add(path, x[i], e.maps[i], label=classes[pred], confidence=float(e.probabilities[i, pred]),
                           explained=classes[int(e.targets[i])], method=method, group=group, note=note)
                done += 1
        if on_batch is not None:
            on_batch(len(chunk))
    return done


def eval_selection(images: list[dict], n: int) -> list[tuple[Path, str, str]]:
    """What ``vpt eval --explain N`` explains, from the report's ``images`` rows (path, true,
    predicted, confidence, correct): the ``n`` most confident mistakes, and the ``n`` most confident
    correct images of each class. Returns ``(path, group, note)`` for :func:`explain_files`."""
    if n < 1:
        return []
    mistakes = sorted((r for r in images if not r["correct"]), key=lambda r: -r["confidence"])[:n]
    chosen = [(Path(r["path"]), "mistakes (most confident first)", f"true {r['true']}") for r in mistakes]
    by_class: dict[str, list[dict]] = {}
    for r in images:
        if r["correct"]:
            by_class.setdefault(r["true"], []).append(r)
    for cls in sorted(by_class):
        for r in sorted(by_class[cls], key=lambda r: -r["confidence"])[:n]:
            chosen.append((Path(r["path"]), f"correct: {cls}", f"true {r['true']}"))
    return chosen


def predict_selection(rows: Iterable, classes: list[str] | None) -> list[tuple[Path, None, str]]:
    """What ``vpt predict --explain DIR`` explains: every row flagged for review or as unfamiliar, and
    every ``ok`` row whose label is in ``classes`` (None: every ``ok`` row). Error rows are never explained."""
    from vptcli.inference import STATUS_OK, STATUS_REVIEW, STATUS_UNFAMILIAR

    chosen = []
    for row in rows:
        flagged = row.status in (STATUS_REVIEW, STATUS_UNFAMILIAR)
        if flagged or (row.status == STATUS_OK and (classes is None or row.label in classes)):
            chosen.append((Path(row.path), None, f"{row.status}: {row.reason}" if flagged else ""))
    return chosen

