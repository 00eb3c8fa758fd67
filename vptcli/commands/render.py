"""What the commands show on the terminal: the one place for console rendering (rich).

The library modules return data and report through small interfaces; this module turns them into
lines and tables: :class:`ConsoleTrainReporter` for ``vpt train``, the training summary lines, and
the tables of ``vpt ingest``, ``vpt eval`` and ``vpt predict``.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vptcli.console import console, warn
from vptcli.console import out as stdout
from vptcli.train_report import Reporter, TrainReporter

if TYPE_CHECKING:
    from rich.console import Console

    from vptcli.training import TrainResult

EPOCH_COLUMNS = ("epoch", "train loss", "val loss", "val top-1", "val macro-F1", "img/s")


def epoch_cells(cells) -> str:
    """One line of right-aligned cells under :data:`EPOCH_COLUMNS`."""
    return "  ".join(str(c).rjust(len(h)) for c, h in zip(cells, EPOCH_COLUMNS))


class ConsoleReporter(Reporter):
    """Warnings and transient progress bars on stderr (bars only on a terminal: in a log file a
    stopped bar would leave an empty line per task)."""

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress

    def warn(self, message: str) -> None:
        warn(message)

    @contextlib.contextmanager
    def task(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=console, disable=not (self.show_progress and console.is_terminal), transient=True)
        with progress:
            task = progress.add_task(description, total=total, info="")
            yield lambda completed, info="": progress.update(task, completed=completed, info=info)


class ConsoleTrainReporter(ConsoleReporter, TrainReporter):
    """``vpt train``'s terminal output on stderr: a summary, progress bars, one row per epoch."""

    def candidate_started(self, name: str, index: int, total: int) -> None:
        console.rule(f"--tune: candidate {index + 1}/{total}: {name}")

    def run_started(self, info: dict) -> None:
        tuned, nb = info["tuned"], info["backbone_parameters"]
        console.print(
            f"method [bold]{info['method']}[/bold] on {info['backbone']} ({info['source']}); device {info['device']}"
            + (f" with AMP {info['amp_dtype']}" if info["amp_dtype"] else "")
            + f"; tuned parameters {tuned:,} = {100 * tuned / nb:.3f}% of the backbone ({nb:,})",
            markup=True,
        )
        if info["balance"] != "off":
            console.print(f"class balance: {info['balance']} (imbalance {info['imbalance']:.1f}:1)")
        if info["auto_start_block"] is not None:
            k, n = info["auto_start_block"], info["n_blocks"]
            why = ("every block on CUDA" if k == 0 else
                   f"the last {n - k} block{'s' if n - k > 1 else ''} on a CPU, where each prompted block costs a "
                   "forward and backward pass per image and epoch; --prompt-start-block 0 for classic VPT-deep")
            console.print(f"prompt start block {k} (auto: {why})")
        if info["views"] and info["auto_views"]:
            console.print(f"cached views per training image {info['views']} (auto: "
                          + ("4 on CUDA)" if info["device"].startswith("cuda") else
                             "the plain image only on a CPU, where each augmented view runs the frozen blocks once more; "
                             "--cache-views 4 adds augmentation)"))
        console.print(f"image size {info['img_size']} px" + (" (auto: the training images' median side, rounded up to a patch multiple)"
                                                             if info.get("auto_img_size") else "") + f"; head input {info['head_input']}"
                      + ("; head fitted to convergence (L-BFGS), no epochs" if info["fits_head_only"] and info["head_init"] == "probe"
                         else "; prompts and head from --init-from" if info.get("init_from")
                         else "; head warm-started from a linear probe" if info["head_init"] == "probe" else ""))
        if info.get("cache_off") and not info["fits_head_only"]:
            k = info["start_block"]
            console.print("feature cache off (--cache off): every epoch decodes the images and "
                          + (f"runs the frozen blocks 0..{k - 1} again" if k else "embeds them again"), soft_wrap=True)
        if info.get("tta", "none") != "none":
            from vptcli.tta import describe_tta

            console.print(f"test-time augmentation {describe_tta(info['tta'])}; in validation, eval, predict and the "
                          "exported graph", soft_wrap=True)
        if info["cpu_hint_block"] is not None:
            console.print(f"hint: on a CPU, late prompts (--prompt-start-block {info['cpu_hint_block']}) train about 5x faster, "
                          "with prompts in the last 3 blocks only (a different model; see docs/benchmarks.md)")

    def resumed(self, run_dir: Path, next_epoch: int, epochs: int) -> None:
        if next_epoch >= epochs:
            console.print(f"{run_dir} already finished its {epochs} epochs; nothing to resume "
                          "(start a new run to train longer: the learning-rate schedule depends on --epochs)")
        elif next_epoch == 0:
            console.print(f"starting {run_dir} again from the beginning (it stopped before its first epoch ended), "
                          "with the run's saved settings")
        else:
            console.print(f"resuming {run_dir} after epoch {next_epoch} of {epochs}, with the run's saved settings")

    def cache_built(self, start_block: int, views: int, nbytes: int, seconds: float) -> None:
        console.print(f"feature cache: {'embeddings' if start_block == 0 else f'blocks 0..{start_block - 1}'} computed once, "
                      f"{views} view(s)/image, {nbytes / 1024**2:.0f} MiB, built in {seconds:.1f}s")

    def prompts_initialised(self, info: dict) -> None:
        console.print(f"prompts: {info['prompts']} per block in {info['blocks']} block(s) set to k-means centres of the patch "
                      f"tokens of {info['images']} training images ({info['method']}) in {info['seconds']:.1f}s")

    def head_fitted(self, info: dict) -> None:
        console.print(f"head: linear probe fitted on {info['features']:,} feature rows of {info['dim']} values "
                      f"(L-BFGS, C={info['c']:g} {'from --probe-c' if info['c_fixed'] else 'chosen on validation'}) "
                      f"in {info['seconds']:.1f}s")

    def warm_started(self, info: dict) -> None:
        new = f"; new class(es) imprinted: {', '.join(info['new'])}" if info["new"] else ""
        dropped = f"; left out: {', '.join(info['dropped'])}" if info["dropped"] else ""
        console.print(f"warm start from {_shown(info['source'])}: prompts and {len(info['copied'])} head row(s) copied{new}{dropped}",
                      soft_wrap=True, markup=False)

    def epochs_started(self) -> None:
        console.print(epoch_cells(EPOCH_COLUMNS), style="bold", markup=False)

    def epoch_done(self, row: dict, improved: bool) -> None:
        cells = (row["epoch"], f"{row['train_loss']:.4f}", f"{row['val_loss']:.4f}", f"{100 * row['val_top1']:.1f}%",
                 f"{row['val_macro_f1']:.3f}", f"{row['train_img_per_s']:.1f}")
        console.print(epoch_cells(cells) + ("  best" if improved else ""), markup=False)

    def early_stop(self, patience: int, best_epoch: int) -> None:
        console.print(f"early stop: val macro-F1 did not improve for {patience} epochs (best epoch {best_epoch})")


def _shown(path: str) -> str:
    """``path`` relative to the working folder when it lies under it, else as given."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def print_interrupted(run_dir: Path, data: Path, epochs: int) -> None:
    """The one line after Ctrl-C in ``vpt train``: what the run folder holds and the command that continues it."""
    import shlex
    import sys

    from vptcli.training import CONFIG_JSON, LAST_CKPT, last_saved_epoch

    run_dir = Path(run_dir)
    resume = f"vpt train {shlex.quote(str(data))} --out {shlex.quote(str(run_dir))} --resume"
    saved = last_saved_epoch(run_dir)
    if saved is not None:
        line = (f"interrupted: {run_dir / LAST_CKPT} holds epoch {saved} of {epochs} (best so far in "
                f"{run_dir / 'prompts.safetensors'}); continue with: {resume}")
    elif (run_dir / CONFIG_JSON).is_file():
        line = (f"interrupted before the first epoch ended: only the settings are saved ({run_dir / CONFIG_JSON}); "
                f"start it again with: {resume}")
    else:
        line = f"interrupted before anything was saved; start again with: {shlex.join(['vpt', *sys.argv[1:]])}"
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def print_tune_table(rows: list[dict]) -> None:
    """``vpt train --tune``: one row per candidate with its validation figures; the chosen one marked."""
    from rich.table import Table

    table = Table(title="--tune: candidates (chosen on validation macro-F1)")
    for col in ("candidate", "best epoch", "val macro-F1", "val top-1", "val loss", ""):
        table.add_column(col, justify="left" if col == "candidate" else "right")
    for r in rows:
        def shown(key: str, fmt: str, scale: float = 1.0, r=r) -> str:
            return "-" if r.get(key) is None else format(scale * r[key], fmt)

        table.add_row(r["name"], str(r["best_epoch"]), shown("val_macro_f1", ".3f"), shown("val_top1", ".2f", 100.0) + "%",
                      shown("val_loss", ".4f"), "chosen" if r["chosen"] else "")
    console.print(table)


def print_train_result(result: TrainResult, full_model: bool) -> None:
    """``vpt train``'s stdout: best epoch, validation figures, tuned share, and the artefact's path."""
    m = result.best_metrics
    stdout.print(
        f"best epoch {result.best_epoch}: val top-1 {100 * m.get('val_top1', float('nan')):.2f}%, "
        f"val macro-F1 {m.get('val_macro_f1', float('nan')):.3f}; tuned {result.tuned_parameters:,} parameters "
        f"({100 * result.tuned_parameters / result.backbone_parameters:.3f}% of the backbone)"
    )
    if full_model:
        stdout.print(f"full model (every backbone weight was tuned; not a prompt file): {result.prompt_file}")
    else:
        stdout.print(f"prompt file: {result.prompt_file}")
    print_written(result.files)


def print_predictions(predictor, counts: dict[str, int], shown: list, out: Path | None, failed: list = ()) -> None:
    """``vpt predict``'s table (when stdout is a terminal; :func:`predictions_table`), its summary
    line (stderr when the rows go to stdout), and one ``error: FILE: reason`` line on stderr for each
    row of ``failed`` (the first error rows; the table has no reason column and piped rows are not read)."""
    total = sum(counts.values())
    if stdout.is_terminal:
        stdout.print(predictions_table(shown, predictor, stdout.width))
        if total > len(shown):
            stdout.print(f"… {total - len(shown)} more rows" + (f" in {out}" if out else "; use --out FILE.csv to save all rows"),
                         soft_wrap=True)
    to_stdout = out is None and not stdout.is_terminal
    summary = (f"{total} file{'' if total == 1 else 's'}: {counts['ok']} ok, {counts['review']} review, "
               + (f"{counts['unfamiliar']} unfamiliar, " if getattr(predictor, "ood", None) is not None else "")
               + f"{counts['error']} error; {predictor.backend} on {predictor.device}" + (f"; rows in {out}" if out else ""))
    (console if to_stdout else stdout).print(summary, markup=False, soft_wrap=True)
    for row in failed:
        console.print(f"error: {row.path}: {row.reason}", markup=False, highlight=False, soft_wrap=True)
    if counts["error"] > len(failed):
        console.print(f"… {counts['error'] - len(failed)} more error rows" + (f" in {out}" if out else ""), markup=False,
                      highlight=False, soft_wrap=True)


def left_ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters from the left (``"…" + end``), so a file name stays whole."""
    if width < 2 or len(text) <= width:
        return text if len(text) <= max(width, 1) else text[-max(width, 1):]
    return "…" + text[-(width - 1):]


def predictions_table(rows, predictor, width: int):
    """The terminal table for ``rows``: file (ellipsised from the left to fit ``width`` columns),
    label, confidence and status on one line each; top-k and reasons are in the CSV/JSONL only."""
    from rich.table import Table
    from rich.text import Text

    style = {"ok": "green", "review": "yellow", "unfamiliar": "magenta", "error": "red"}
    labels = [r.label or ("-" if r.status != "error" else "") for r in rows]
    label_w = max([5, *(len(x) for x in labels)])
    fixed = label_w + len("confidence") + len("unfamiliar") + 13  # columns, padding and borders
    file_w = max(8, width - fixed)
    t = Table(title=f"predictions ({predictor.backend}, {predictor.device})", title_justify="left")
    t.add_column("file", no_wrap=True, overflow="ellipsis", max_width=file_w)
    t.add_column("label", no_wrap=True, overflow="ellipsis")
    t.add_column("confidence", justify="right", no_wrap=True)
    t.add_column("status", no_wrap=True)
    for r, label in zip(rows, labels):
        t.add_row(Text(left_ellipsis(r.path, file_w)), Text(label),
                  "" if r.confidence is None else f"{r.confidence:.3f}",
                  Text(r.status, style=style[r.status]))
    return t


def print_registry_version(v, title: str) -> None:
    """One registry version (:class:`vptcli.registry.Version`) as key/value lines on stdout."""
    m = v.metrics
    score = f"val macro-F1 {m['val_macro_f1']:.3f}, val top-1 {100 * m['val_top1']:.2f}%" if "val_macro_f1" in m else "-"
    stdout.print(title, soft_wrap=True)
    for key, value in (("prompt sha256", v.digest), ("method", v.method), ("classes", ", ".join(v.classes)),
                       ("metrics", score), ("data fingerprint", v.data_fingerprint[:12]),
                       ("backbone", f"{v.backbone.get('name')} ({v.backbone.get('source')}, sha256 {str(v.backbone.get('sha256'))[:12]})"),
                       ("trained", v.trained), ("published", f"{v.published} by {v.user}"), ("note", v.note or "-"),
                       ("files", ", ".join(v.files))):
        stdout.print(f"  {key:<17} {value}", soft_wrap=True)


def print_registry_tasks(tasks: list[dict]) -> None:
    """``vpt registry list``: one row per task."""
    from rich.table import Table

    t = Table(title="tasks", title_justify="left")
    for col in ("task", "versions", "production", "acceptance set", "created"):
        t.add_column(col)
    for r in tasks:
        acc = r["acceptance"]
        t.add_row(r["task"], str(r["versions"]), str(r["production"] or "-"),
                  f"{acc['images']} images ({acc['split']})" if acc else "-", r["created"])
    stdout.print(t if tasks else "no tasks yet")


def print_registry_versions(versions: list, production: int | None) -> None:
    """``vpt registry show TASK``: one row per version, the production one marked (``show TASK N``
    gives a version in full)."""
    from rich.table import Table

    t = Table(title=f"{versions[0].task}" if versions else "versions", title_justify="left")
    for col in ("version", "stage", "val macro-F1", "prompt sha256", "published"):
        t.add_column(col, no_wrap=True)
    t.add_column("note", overflow="fold")
    for v in versions:
        f1 = v.metrics.get("val_macro_f1")
        t.add_row(str(v.version), "production" if v.version == production else "", "-" if f1 is None else f"{f1:.3f}",
                  v.digest[:12], v.published[:10], v.note)
    stdout.print(t)


def print_registry_log(entries: list) -> None:
    """``vpt registry log``: one line per audit entry, oldest first."""
    for e in entries:
        d = e.detail
        parts = []
        if e.action == "publish":
            parts.append(f"sha256 {d.get('digest', '')[:12]}" + (f", note: {d['note']}" if d.get("note") else ""))
        elif e.action in ("promote", "force-promote", "promote-refused"):
            g = d.get("gate") or {}
            score = g.get("candidate_score")
            prod = g.get("production_score")
            parts.append(f"from {d.get('from') or '-'}")
            if score is not None:
                parts.append(f"macro-F1 {score:.4f}" + (f" vs {prod:.4f}" if prod is not None else ""))
            elif e.action == "promote-refused" and d.get("message"):
                parts.append(d["message"])
            if d.get("reason"):
                parts.append(f"reason: {d['reason']}")
        elif e.action == "rollback":
            parts.append(f"from {d.get('from')}" + (f", reason: {d['reason']}" if d.get("reason") else ""))
        elif e.action == "set-acceptance":
            parts.append(f"{d.get('images')} images ({d.get('split')}), fingerprint {str(d.get('fingerprint'))[:12]}")
            if d.get("reason"):
                parts.append(f"reason: {d['reason']}")
        version = f" v{e.version}" if e.version is not None else ""
        stdout.print(f"{e.id:>4}  {e.time}  {e.user}  {e.action:<15} {e.task or ''}{version}  {'; '.join(parts)}",
                     soft_wrap=True, markup=False)


def print_ingest_summary(result, console: Console) -> None:
    """Rich tables on ``console``: images per class × split, skipped files by reason, duplicates,
    label conflicts, ignored entries."""
    from rich.table import Table
    from rich.text import Text

    from vptcli.ingest import skipped_by_kind

    m = result.manifest
    counts = m.counts()
    console.print(
        f"vpt ingest: {len(m.usable())} usable images in {len(m.classes)} classes "
        f"({result.layout} layout, {len(m.records)} files, {result.elapsed_s:.1f} s)",
        markup=False,
    )
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("class")
    for split in ("train", "val", "test", "total"):
        table.add_column(split, justify="right")
    totals: Counter = Counter()
    for i, c in enumerate(m.classes):
        row = counts[c]
        totals.update(row)
        table.add_row(str(i), Text(c), *(str(row[s]) for s in ("train", "val", "test")), str(sum(row.values())))
    table.add_row("", Text("total", style="bold"), *(str(totals[s]) for s in ("train", "val", "test")),
                  str(sum(totals.values())), end_section=True)
    console.print(table)

    if result.skipped:
        skipped = Table(title=f"skipped files: {len(result.skipped)} (listed in ingest_report.md)",
                        title_justify="left")
        skipped.add_column("reason")
        skipped.add_column("files", justify="right")
        skipped.add_column("example")
        by_kind = skipped_by_kind(result.skipped)
        for kind, n in sorted(by_kind.items()):
            example = next(r for r in result.skipped if r.reason.split(":", 1)[0] == kind)
            skipped.add_row(Text(kind), str(n), Text(f"{example.path}: {example.reason}"))
        console.print(skipped)
    else:
        console.print("skipped files: none", markup=False)
    if result.ignored:
        console.print(
            "ignored: " + ", ".join(f"{n} {k}" for k, n in sorted(result.ignored.items())), markup=False
        )
    n_dup_files = sum(len(g.records) for g in result.duplicate_groups)
    console.print(
        f"duplicates: {len(result.duplicate_groups)} group(s) of identical images ({n_dup_files} files)"
        if result.duplicate_groups else "duplicates: none",
        markup=False,
    )
    if result.conflicts:
        conflicts = Table(title=f"label conflicts: {len(result.conflicts)}", title_justify="left")
        conflicts.add_column("labels")
        conflicts.add_column("files")
        for g in result.conflicts[:20]:
            conflicts.add_row(Text(", ".join(g.labels)), Text("\n".join(f"{r.path} [{r.label}]" for r in g.records)))
        console.print(conflicts)
        if len(result.conflicts) > 20:
            console.print(f"... {len(result.conflicts) - 20} more in ingest_report.md", markup=False)
    else:
        console.print("label conflicts: none", markup=False)


def print_written(paths) -> None:
    """Every file a command wrote, one per line on stdout (``wrote PATH``)."""
    from vptcli.console import out

    for p in paths:
        out.print(f"wrote {p}", markup=False, soft_wrap=True)


def print_eval_report(report: Mapping[str, Any], console: Console) -> None:
    """Print the report as rich tables: headline metrics, per-class P/R/F1/support, confusion matrix.

    The confusion matrix has true classes as rows and predicted classes as columns; the diagonal is
    bold. Class names are printed literally (no rich markup interpretation).

    Args:
        report: the dict returned by :func:`vptcli.metrics.classification_report`.
        console: where to print (e.g. ``vptcli.console.console``).
    """
    from rich.table import Table
    from rich.text import Text

    from vptcli.metrics import format_value, headline_metrics

    classes = [str(c) for c in report["classes"]]

    head = Table(title="Evaluation", title_justify="left")
    head.add_column("metric")
    head.add_column("value", justify="right")
    for name, value in headline_metrics(report):
        head.add_row(name, format_value(value))
    console.print(head)
    if report.get("auc_note"):
        console.print(Text(str(report["auc_note"]), style="yellow"))

    per = Table(title="Per class", title_justify="left")
    per.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        per.add_column(col, justify="right")
    for name, m in report["per_class"].items():
        per.add_row(Text(name), format_value(m["precision"]), format_value(m["recall"]), format_value(m["f1"]), str(m["support"]))
    console.print(per)

    cmt = Table(
        title="Confusion matrix", title_justify="left", caption="rows: true class, columns: predicted"
    )
    cmt.add_column(Text("true \\ predicted"))
    for name in classes:
        cmt.add_column(Text(name), justify="right")
    for i, (name, row) in enumerate(zip(classes, report["confusion_matrix"])):
        cells = [Text(str(int(v)), style="bold" if i == j else "") for j, v in enumerate(row)]
        cmt.add_row(Text(name), *cells)
    console.print(cmt)


def print_drift(report: dict, written: list) -> None:
    """``vpt drift``'s verdict and measures (stdout), and the files written."""
    m, u = report["mmd"], report["unfamiliar"]
    verdict = "[bold red]drift detected[/bold red]" if report["drift"] else "[green]no drift detected[/green]"
    stdout.print(f"{verdict}: MMD p = {m['p_value']:.4g} (alpha {report['alpha']:g}); {report['n_images']} images, "
                 f"{u['count']} unfamiliar ({100 * u['share']:.1f} %, {100 * u['expected_share']:.1f} % expected); "
                 f"class-share shift (total variation) {report['class_shift_total_variation']:.3f}", soft_wrap=True, markup=True)
    if report["n_errors"]:
        shown = report["errors"][:10]
        for e in shown:
            warn(f"{e['path']}: {e['reason']} (left out of the drift test)")
        more = report["n_errors"] - len(shown)
        stdout.print(f"{report['n_errors']} unreadable file(s) left out"
                     + (f" (the first {len(shown)} named above; {len(report['errors'])} in the report)" if more else ""), soft_wrap=True)
    stdout.print("report: " + ", ".join(str(p) for p in written), soft_wrap=True, highlight=False)
