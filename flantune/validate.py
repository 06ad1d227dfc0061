"""`flantune validate`: a task checked against its data, every row of every split its roles read.

Each role's rows are selected as a run selects them (slicing, holdout, filter) and every template,
the target, the references and the label are rendered on every row (data.load_rows, with no example
cap), so a template that fails on one row in 25,000 is found before a run tokenises or loads a model.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flantune.console import console as make_console
from flantune.data import load_rows
from flantune.splits import check_split_syntax
from flantune.task import ROLES, Task


def validate(tasks: list[Task], data_dir: Path | None, console: Console | None = None) -> None:
    console = console or make_console()
    for task in tasks:
        started = time.perf_counter()
        table = Table(title=f"{task.name} ({task.origin}): every row rendered", title_justify="left")
        for col in ("role", "split", "rows checked", "templates"):
            table.add_column(col, justify="right" if col == "rows checked" else "left")
        for role in ROLES:
            rows = load_rows(task, role, data_dir)
            table.add_row(role, _split_text(task, role), f"{len(rows):,}", ", ".join(t.name for t in task.templates))
        console.print(table)
        console.print(f"[green]ok[/] {task.name}: every template renders on every row "
                      f"({time.perf_counter() - started:.1f} s)", highlight=False)


def _split_text(task: Task, role: str) -> str:
    """The role's split spec, and what the holdout and the filter take from it."""
    notes = []
    h = task.holdout
    if h and role == h.to:
        notes.append("its holdout")
    elif h and h.from_ in check_split_syntax(task.splits[role]):
        notes.append("less the holdout")
    if task.filter:
        notes.append("after the filter")
    return task.splits[role] + (f" ({', '.join(notes)})" if notes else "")
