"""`vpt export RUN_OR_PROMPT_FILE --out DIR`: ONNX graph + prompt file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    model: Annotated[Path, typer.Argument(metavar="RUN_OR_PROMPT_FILE", help="A run folder of `vpt train`, an export folder or a prompt file (.safetensors).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write prompts.safetensors and model.onnx (shared.onnx with --shared-backbone) into.")],
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default 20, lowest 14). The IR version follows the opset, so older ONNX Runtime releases load the graph (opset 17: 1.13+); the oldest is printed and stored in the graph.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Half-precision weights and compute (inputs/outputs stay float32); parity tolerance 5e-2 on logits.")] = False,
    shared_backbone: Annotated[bool, typer.Option("--shared-backbone", help="Prompts and head become graph inputs: one graph serves every prompt file of this backbone.")] = False,
    weights: Annotated[str | None, typer.Option(help="Backbone weights to use instead of the file's own source (path or 'random').")] = None,
    force: Annotated[bool, typer.Option("--force", help="Accept other weights of the same architecture (warns).")] = False,
    heatmap: Annotated[str | None, typer.Option("--heatmap", metavar="METHOD", help="Add an output `heatmap` [N,h,w] beside logits, probabilities and features (rollout | prompt-attention, gradient-free; `vpt predict --backend onnx --explain` shows it), parity-checked like the logits. Single graph only.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (ONNX Runtime dynamic int8, per-channel weights; for CPUs), checked on validation images: top-1 agrees with PyTorch on >= 99 % and accuracy within 0.5 point, else nothing is written.")] = False,
    int8_data: Annotated[Path | None, typer.Option("--int8-data", help="Images the int8 check runs on: an ingested data set (its val split) or a class-per-folder tree (default: the run's validation images).")] = None,
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="Write into an --out folder that holds other files (they are left as they are; by default only an empty folder or a previous export is accepted).")] = False,
) -> None:
    """Export to ONNX (input images float32 [N,3,H,W] RGB in [0,1]; outputs logits and probabilities) and check parity with PyTorch."""
    from vptcli.console import console, warn
    from vptcli.console import out as stdout
    from vptcli.export import export_onnx
    from vptcli.tta import describe_tta

    with console.status("exporting to ONNX and checking parity with PyTorch" + (" (and int8)" if int8 else "") + "..."):
        r = export_onnx(model, out, opset=opset, fp16=fp16, shared_backbone=shared_backbone, weights=weights, force=force,
                        exist_ok=exist_ok, heatmap=heatmap, int8=int8, int8_data=int8_data)
    for w in r.warnings:
        warn(w)
    for c in r.parity:
        stdout.print(
            f"parity batch {c.batch}: max |logits ONNX - PyTorch| {c.max_abs_logits:.2e}, "
            f"max |probabilities| {c.max_abs_probabilities:.2e}, top-1 agrees {c.top1_agree}/{c.batch} "
            f"({r.precision}, tolerance {r.tolerance:g})"
            + (f"; max |heatmap| {c.max_abs_heatmap:.2e}" if c.max_abs_heatmap is not None else ""),
            soft_wrap=True,
        )
    oldest = f"ONNX Runtime {r.min_onnxruntime} or later" if r.min_onnxruntime else "a recent ONNX Runtime"
    stdout.print(
        f"{r.graph} graph, {r.precision}, opset {r.opset} (IR {r.ir_version}, loads in {oldest}), {r.exporter} "
        f"exporter, inputs {', '.join(r.inputs)}; "
        f"exported in {r.export_seconds:.1f} s ({r.total_seconds:.1f} s with checks)",
        soft_wrap=True,
    )
    if r.tta != "none":
        stdout.print(f"test-time augmentation {describe_tta(r.tta)}: in the graph", soft_wrap=True)
    stdout.print(f"onnx: {r.onnx_path} ({r.onnx_bytes / 2**20:.1f} MiB{', with external data' if r.external_data else ''})", soft_wrap=True)
    if r.int8_path is not None:
        c = r.int8_check
        stdout.print(
            f"int8 check on {c.images} validation images: top-1 agrees with PyTorch {c.top1_agree}/{c.images}, accuracy "
            f"{100 * c.accuracy_int8:.1f} % (PyTorch {100 * c.accuracy_torch:.1f} %), max |probabilities| "
            f"{c.max_abs_probabilities:.2e}; images from {c.source}", soft_wrap=True)
        stdout.print(f"int8 onnx: {r.int8_path} ({r.int8_bytes / 2**20:.1f} MiB; `vpt predict {r.out_dir} --int8` uses it)",
                     soft_wrap=True)
    stdout.print(f"prompt file: {r.prompt_path} ({r.prompt_bytes / 1024:.1f} KiB)", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `vpt export`."""
    app.command("export")(export)
