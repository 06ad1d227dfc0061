"""`flantune tasks`: every registered task in one table, and the plugins that failed to load.

This path imports neither torch, transformers nor datasets, so it answers in well under a second.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from flantune.console import console as make_console
from flantune.errors import FlantuneError
from flantune.registry import Registry
from flantune.sources import mirror_sizes
from flantune.splits import check_split_syntax, select_rows
from flantune.task import ROLES, Task


def source_text(task: Task) -> str:
    parts = []
    if task.source.hub:
        hub = task.source.hub + (f" ({task.source.config})" if task.source.config else "")
        parts.append(hub + (f" @ {task.source.revision}" if task.source.revision else ""))
    if task.source.mirror:
        parts.append(f"mirror: {task.source.mirror}/")
    return "\n".join(parts)


def split_sizes(task: Task, data_dir: Path | None) -> dict[str, str]:
    """role -> 'spec (rows)' where the mirror tells the row count, else just the spec."""
    sizes = mirror_sizes(task, data_dir) if data_dir is not None else {}
    readable = {split: n for split, n in sizes.items() if n is not None}
    out = {}
    for role in ROLES:
        spec = task.splits[role]
        text = spec
        if sizes:
            try:
                rows = sum(len(r) for _, r in select_rows(spec, role, readable, task.holdout))
                text += f" ({rows:,}{' before filter' if task.filter else ''})"
            except FlantuneError:
                unreadable = (sizes.keys() - readable.keys()) & set(check_split_syntax(spec))
                text += f" (unreadable: flantune show {task.name})" if unreadable else " (missing here)"
        out[role] = text
    return out


def metrics_text(task: Task) -> str:
    names = [m.name + (f"({', '.join(f'{k}={v}' for k, v in m.params.items())})" if m.params else "") for m in task.metrics]
    return ", ".join(names) + f"\nprimary: {task.primary_metric}"


def seen_text(task: Task) -> str:
    """Which published models were trained on which of the task's splits (its seen_in_training), or "-"."""
    return "\n".join(f"{', '.join(s.models)}: {', '.join(s.splits)}" for s in task.seen_in_training) or "-"


def print_tasks(registry: Registry, data_dir: Path | None, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(title="flantune tasks", show_lines=True)
    for col in ("name", "kind", "source", "splits" + (" (rows)" if data_dir else ""), "metrics",
                "trained on by (splits)"):
        table.add_column(col, overflow="fold")
    table.add_column("origin", no_wrap=True)  # a path folded across lines can't be copied
    for name in sorted(registry.tasks):
        task = registry.tasks[name]
        splits = split_sizes(task, data_dir)
        table.add_row(
            name, task.kind, source_text(task), "\n".join(f"{r}: {s}" for r, s in splits.items()),
            metrics_text(task), seen_text(task), task.origin,
        )
    console.print(table)
    if registry.problems:
        console.print(f"[bold red]{len(registry.problems)} task source(s) failed to load[/] (the other tasks are fine):")
        for problem in registry.problems:
            console.print(f"  [red]x[/] {problem.origin}: {problem.message}", highlight=False)
