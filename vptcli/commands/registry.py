"""`vpt registry ...`: publish prompt files as versions of a task, promote through a gate, roll back,
read the audit log, verify the stored files (:mod:`vptcli.registry`). The CLI offers no way to edit
or delete a version or a log entry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

registry_app = typer.Typer(
    name="registry",
    help="A prompt registry: versions per task, a gated production pointer, rollback and an audit log.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

RegistryOpt = Annotated[Path, typer.Option(
    "--registry", envvar="VPT_REGISTRY", help="The registry folder (or the environment variable VPT_REGISTRY).")]


def publish(
    model: Annotated[Path, typer.Argument(metavar="RUN_OR_EXPORT_OR_PROMPT", help="A run folder, export folder or prompt file (.safetensors).")],
    registry: RegistryOpt,
    task: Annotated[str, typer.Option(help="Task name (a product or line); created on first use.")],
    note: Annotated[str, typer.Option(help="A note stored with the version (why it was trained).")] = "",
) -> None:
    """Store a prompt file as the next version of TASK (content-addressed copy; metrics, data fingerprint, backbone, time, user)."""
    from vptcli.commands.render import print_registry_version
    from vptcli.registry import open_registry

    v = open_registry(registry, create=True).publish(model, task, note=note)
    print_registry_version(v, title=f"published {v.task} version {v.version}")


def set_acceptance(
    task: Annotated[str, typer.Argument(help="Task name.")],
    data: Annotated[Path, typer.Argument(help="An ingested data set or a class-per-folder tree: the images every promotion is scored on.")],
    registry: RegistryOpt,
    split: Annotated[str | None, typer.Option(help="Ingested data set only: test (default) | val | train | all.")] = None,
    reason: Annotated[str, typer.Option(help="Why (logged).")] = "",
) -> None:
    """Pin the acceptance set of TASK (its image fingerprint is kept; promote refuses changed data)."""
    from vptcli.console import out, warn
    from vptcli.registry import open_registry

    pinned = open_registry(registry).set_acceptance(task, data, split=split, reason=reason)
    if pinned["unknown_classes"]:
        warn(f"class(es) {', '.join(pinned['unknown_classes'])} of the acceptance set: no published version of {task} "
             "knows them yet, so their images count as misses for any version without them (a misnamed folder, or a "
             "class a coming version adds?)")
    out.print(f"acceptance set of {task}: {pinned['images']} images ({', '.join(pinned['classes'])}), split "
              f"{pinned['split']}, fingerprint {pinned['fingerprint'][:12]}", soft_wrap=True)


def list_command(registry: RegistryOpt) -> None:
    """Tasks with their number of versions, production version and acceptance set."""
    from vptcli.commands.render import print_registry_tasks
    from vptcli.registry import open_registry

    print_registry_tasks(open_registry(registry).tasks())


def show(
    task: Annotated[str, typer.Argument(help="Task name.")],
    registry: RegistryOpt,
    version: Annotated[int | None, typer.Argument(help="A version number (default: every version of the task).")] = None,
) -> None:
    """The versions of TASK (or one version in full)."""
    from vptcli.commands.render import print_registry_version, print_registry_versions
    from vptcli.registry import open_registry

    reg = open_registry(registry)
    if version is not None:
        print_registry_version(reg.version(task, version), title=f"{task} version {version}")
        return
    prod = reg.production(task)
    print_registry_versions(reg.versions(task), prod.version if prod else None)


def log(
    registry: RegistryOpt,
    task: Annotated[str | None, typer.Option(help="Only this task's entries.")] = None,
) -> None:
    """The audit log (append-only): every publish, acceptance set, promotion, forced promotion and rollback."""
    from vptcli.commands.render import print_registry_log
    from vptcli.registry import open_registry

    print_registry_log(open_registry(registry).log(task))


def promote(
    task: Annotated[str, typer.Argument(help="Task name.")],
    version: Annotated[int, typer.Argument(help="The version to make the production version.")],
    registry: RegistryOpt,
    max_drop: Annotated[float, typer.Option(help="Largest accepted drop of macro-F1 on the acceptance set vs the production version (a fraction: 0.01 = one point).")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Promote although the gate refuses (needs --reason; logged).")] = False,
    reason: Annotated[str, typer.Option(help="Why (required with --force; logged).")] = "",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda, for the gate's evaluation.")] = "auto",
) -> None:
    """Make VERSION the production version of TASK, if it scores no worse than production on the acceptance set."""
    from vptcli.commands.render import ConsoleReporter
    from vptcli.console import out, warn
    from vptcli.registry import open_registry

    result = open_registry(registry).promote(task, version, max_drop=max_drop, force=force, reason=reason, device=device,
                                             reporter=ConsoleReporter())
    if result["forced"]:
        warn(f"--force: {result['message']}; promoted anyway (logged with the reason)")
    else:
        out.print(result["message"], soft_wrap=True)
    out.print(f"{task}: production version {version}", soft_wrap=True)


def rollback(
    task: Annotated[str, typer.Argument(help="Task name.")],
    registry: RegistryOpt,
    reason: Annotated[str, typer.Option(help="Why (logged).")] = "",
) -> None:
    """Retire the production version of TASK: the version promoted before it is production again."""
    from vptcli.console import out
    from vptcli.registry import open_registry

    retired, now = open_registry(registry).rollback(task, reason=reason)
    out.print(f"{task}: rolled back from version {retired} to version {now}", soft_wrap=True)


def verify(registry: RegistryOpt) -> None:
    """Check every stored file against its sha256, every prompt file's tensors, the database and the audit chain. Exit code 1 on any problem."""
    from rich.markup import escape

    from vptcli.console import console, out
    from vptcli.registry import open_registry

    reg = open_registry(registry)
    problems = reg.verify()
    for p in problems:
        console.print("[bold red]problem:[/bold red] " + escape(str(p)), markup=True, soft_wrap=True)  # a path may hold [...]
    if problems:
        raise typer.Exit(1)
    n = sum(t["versions"] for t in reg.tasks())
    out.print(f"registry ok: {n} version(s), every stored file matches its sha256, audit log intact", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `vpt registry` and its subcommands."""
    registry_app.command("publish")(publish)
    registry_app.command("set-acceptance")(set_acceptance)
    registry_app.command("list")(list_command)
    registry_app.command("show")(show)
    registry_app.command("log")(log)
    registry_app.command("promote")(promote)
    registry_app.command("rollback")(rollback)
    registry_app.command("verify")(verify)
    app.add_typer(registry_app)
