"""`flantune mirror`: a task's hub splits written as the data_dir layout flantune reads, for machines without the hub.

    DIR/<mirror>/<split>.parquet   each split the task reads, as the hub gives it (its datasets features kept in
                                   the parquet schema's metadata, so ClassLabel and Sequence columns load as such)
    DIR/<mirror>/SOURCE.md         the dataset id, config, revision (the commit read) and row counts

The splits are read by the same code as a run without data_dir (sources.load_split), and each folder is written
beside its place and renamed into it once complete: an interrupted mirror leaves no half folder that a run would
read as the dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from flantune.console import console, no_datasets_bars
from flantune.errors import FlantuneError, first_line
from flantune.hub import hub_unreachable, is_local_path
from flantune.splits import check_split_syntax
from flantune.task import ROLES, Task

SOURCE_FILE = "SOURCE.md"


@dataclass
class Mirror:
    """One mirror folder: the tasks that read it (tasks may share one: squad and squad_qg) and their splits."""

    folder: str
    tasks: list[Task]
    splits: list[str]

    @property
    def source(self):
        return self.tasks[0].source


def split_names(task: Task) -> list[str]:
    """The hub splits a task reads, in the order its roles first read them (its holdout's too)."""
    names = [s for role in ROLES for s in check_split_syntax(task.splits[role])]
    if task.holdout:
        names.append(task.holdout.from_)
    return list(dict.fromkeys(names))


def plan(tasks: Iterable[Task], data_dir: Path, overwrite: bool) -> list[Mirror]:
    """The folders to write, checked before anything is downloaded: each task has a hub dataset and a mirror
    folder name, tasks sharing a folder share its source, and no folder is there already unless overwrite=true."""
    mirrors: dict[str, Mirror] = {}
    for task in tasks:
        src = task.source
        if not src.hub:
            raise FlantuneError(f"Task '{task.name}' ({task.origin}) has no hub dataset (source.hub): there is "
                                "nothing to mirror. Its rows come from data_dir already.")
        if not src.mirror:
            raise FlantuneError(f"Task '{task.name}' ({task.origin}) declares no mirror folder (source.mirror), so "
                                "flantune would not know where to read a mirror from. Add source.mirror to the task "
                                "file.")
        mirror = mirrors.setdefault(src.mirror, Mirror(src.mirror, [], []))
        if mirror.tasks and mirror.source != src:
            other = mirror.tasks[0]
            raise FlantuneError(
                f"Tasks '{other.name}' and '{task.name}' share the mirror folder '{src.mirror}' but read different "
                f"sources ({_dataset(other)} and {_dataset(task)}); one folder can hold only one. Mirror them "
                "into separate data_dir folders, or give one task its own source.mirror."
            )
        mirror.tasks.append(task)
        mirror.splits = list(dict.fromkeys([*mirror.splits, *split_names(task)]))
    for mirror in mirrors.values():
        there = data_dir / mirror.folder
        if there.exists() and not overwrite:
            raise FlantuneError(f"{there} exists already. Use overwrite=true to replace it with a new copy from the "
                                "hub, or another data_dir.")
        if there.exists() and not there.is_dir():
            raise FlantuneError(f"{there} is a file, where the mirror folder of task '{mirror.tasks[0].name}' goes. "
                                "Move it, or use another data_dir.")
    return list(mirrors.values())


def _dataset(task: Task) -> str:
    src = task.source
    return src.hub + (f" ({src.config})" if src.config else "") + (f" @ {src.revision}" if src.revision else "")


def _load(task: Task, split: str, data_dir: Path):
    """One split, read as a run without data_dir reads it; a hub that can't be reached (and a dataset not in the
    local cache) is said for what it means here."""
    from flantune.sources import load_split

    try:
        return load_split(task, split, None)
    except FlantuneError as exc:
        if isinstance(exc.__cause__, (ConnectionError, OSError, TimeoutError)):
            why = hub_unreachable()
            raise FlantuneError(
                f"Task '{task.name}': its dataset {_dataset(task)} can't be downloaded "
                f"({type(exc.__cause__).__name__}: {first_line(exc.__cause__)}){'; the hub ' + why if why else ''}. "
                f"`flantune mirror` reads the hub: run it on a machine where the hub is reachable, then copy "
                f"{data_dir} to this one and point data_dir at it."
            ) from exc
        raise


def revision_read(task: Task) -> str:
    """The commit of the hub dataset that was read (the task's revision resolved), for SOURCE.md."""
    src = task.source
    if is_local_path(src.hub):
        return f"none: {src.hub} is a local folder ({Path(src.hub).expanduser().resolve()})"
    from huggingface_hub import HfApi

    try:
        sha = HfApi().dataset_info(src.hub, revision=src.revision).sha
    except Exception as exc:  # noqa: BLE001 - offline, read from the cache: the rows are right, the commit unknown
        return f"{src.revision or 'main'} (its commit unknown: {first_line(exc)})"
    return f"{sha}" + (f" ({src.revision})" if src.revision else " (main)")


def write(mirror: Mirror, data_dir: Path, overwrite: bool) -> dict[str, int]:
    """Write one mirror folder; split -> rows."""
    task = mirror.tasks[0]
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{mirror.folder}.flantune-mirror-", dir=data_dir))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's private one: others read the copy
    try:
        rows = {}
        for split in mirror.splits:
            dataset = _load(task, split, data_dir)
            with no_datasets_bars():
                dataset.to_parquet(str(staging / f"{split}.parquet"))
            rows[split] = len(dataset)
        (staging / SOURCE_FILE).write_text(source_text(mirror, rows, revision_read(task)), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    there = data_dir / mirror.folder
    aside = None
    if there.exists() and overwrite:  # checked in `plan`; moved aside, and deleted once the new copy is in place
        aside = Path(tempfile.mkdtemp(prefix=f".{mirror.folder}.flantune-replaced-", dir=data_dir))
        there.rename(aside)
    staging.rename(there)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return rows


def source_text(mirror: Mirror, rows: dict[str, int], revision: str) -> str:
    import datasets

    src = mirror.source
    names = ", ".join(t.name for t in mirror.tasks)
    lines = [
        f"# {mirror.folder}/: a copy of the hub dataset {src.hub}",
        "",
        f"Written by `flantune mirror task={','.join(t.name for t in mirror.tasks)}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (datasets {datasets.__version__}), for the task(s) "
        f"{names}. A run reads it with data_dir=<the folder that holds {mirror.folder}/>.",
        "",
        f"- dataset: {src.hub}",
        f"- config: {src.config or '(default)'}",
        f"- revision: {revision}",
        "",
        "| split | rows | file |",
        "|---|---:|---|",
        *(f"| {split} | {n:,} | {split}.parquet |" for split, n in rows.items()),
        "",
    ]
    return "\n".join(lines)


def mirror(tasks: list[Task], data_dir: Path, overwrite: bool = False) -> None:
    mirrors = plan(tasks, data_dir, overwrite)
    say = console()
    for m in mirrors:
        rows = write(m, data_dir, overwrite)
        shown = ", ".join(f"{split} {n:,}" for split, n in rows.items())
        say.print(f"{data_dir / m.folder}/: {_dataset(m.tasks[0])}: {shown} rows", highlight=False)
    say.print(f"Copy {data_dir} to the machine without the hub and run there with data_dir={data_dir}.",
              highlight=False)
