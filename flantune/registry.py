"""The task registry: every task by name, from entry points and task folders.

Tasks come through two doors, and flantune's own built-in tasks use the first one like any plugin:
  (a) the entry-point group `flantune.tasks`: the entry point names a package whose folder holds
      task YAML files, a Task, a list of Tasks / YAML paths, or a function returning one;
  (b) folders of task YAML files: `tasks_dir=DIR` or FLANTUNE_TASKS_PATH (os.pathsep-separated).
A task file or plugin that fails to load is recorded as a problem and skips only itself. Two tasks
with one name are an error naming both origins.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata, resources
from pathlib import Path

from flantune.errors import FlantuneError, did_you_mean
from flantune.task import Task, read_task_file, task_from_dict

ENTRY_POINT_GROUP = "flantune.tasks"
TASKS_PATH_ENV = "FLANTUNE_TASKS_PATH"
TASK_SUFFIXES = (".yaml", ".yml")


@dataclass
class Problem:
    origin: str
    message: str
    name: str | None = None  # the task name it concerns, where known
    guessed: bool = False  # the name is a task file's name, as the file didn't get as far as naming its task


@dataclass
class Registry:
    tasks: dict[str, Task] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    _duplicates: dict[str, list[str]] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        if task.name in self._duplicates:
            self._duplicates[task.name].append(task.origin)
            return
        if task.name in self.tasks:
            first = self.tasks.pop(task.name)
            self._duplicates[task.name] = [first.origin, task.origin]
            return
        self.tasks[task.name] = task

    def finish(self) -> Registry:
        for name, origins in self._duplicates.items():
            self.problems.append(Problem(
                origins[-1],
                f"Two tasks are named '{name}': one from {origins[0]} and one from {origins[1]}"
                + (f" (and {len(origins) - 2} more)" if len(origins) > 2 else "")
                + ". Rename one of them: task names must be unique.",
                name,
            ))
        return self

    def get(self, name: str) -> Task:
        if name in self.tasks:
            return self.tasks[name]
        for problem in self.problems:
            if problem.name == name:
                raise FlantuneError(problem.message)
        # A plugin that failed to load may have held the task (the built-in ones too: flantune run from a
        # source checkout that isn't installed with `pip install -e .`), and so may a task file that failed
        # before naming its task. A broken file that names another task is listed by name.
        unloaded = [p.message for p in self.problems if p.name is None]
        unnamed = [p.message for p in self.problems if p.name is not None and p.guessed]
        named = [f"{p.origin} (task '{p.name}')" for p in self.problems if p.name is not None and not p.guessed]
        raise FlantuneError(
            f"Unknown task '{name}'.{did_you_mean(name, [*self.tasks, *(p.name for p in self.problems if p.name)])} "
            f"Known tasks: {', '.join(sorted(self.tasks)) or 'none'}. "
            + (f"{len(unloaded)} task plugin(s) failed to load and may hold it: {' '.join(unloaded)} " if unloaded else "")
            + (f"{len(unnamed)} task file(s) failed to load before naming their task and may hold it: "
               f"{' '.join(unnamed)} " if unnamed else "")
            + (f"{len(named)} task file(s) failed to load: {', '.join(named)}. " if named else "")
            + "Run `flantune tasks` to list them, or add your own with tasks_dir=DIR (a folder of task YAML files)."
        )


def _task_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in TASK_SUFFIXES and not p.name.startswith("."))


def _declared_name(data) -> str | None:
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def _add_file(registry: Registry, path: Path, origin: str) -> None:
    """The file's task, or its problem under the task name it declares (its file name where it declares none)."""
    name = None
    try:
        data = read_task_file(path, origin=origin)
        name = _declared_name(data)
        registry.add(task_from_dict(data, origin=origin))
    except FlantuneError as exc:
        registry.problems.append(Problem(origin, str(exc), name or path.stem, guessed=name is None))


def _add_folder(registry: Registry, folder: Path, label: str | None = None) -> None:
    for path in _task_files(folder):
        _add_file(registry, path, label or str(path))


def _add_entry_point(registry: Registry, ep: metadata.EntryPoint) -> None:
    dist = ep.dist.name if ep.dist else "?"
    builtin = dist == "flantune"
    where = f"plugin {dist} (entry point {ep.name} = {ep.value})"
    try:
        obj = ep.load()
        if callable(obj) and not isinstance(obj, (type, types.ModuleType)):
            obj = obj()
    except Exception as exc:  # a broken plugin must not break the others
        registry.problems.append(Problem(where, f"The task plugin {where} failed to load: {type(exc).__name__}: {exc}"))
        return
    if isinstance(obj, types.ModuleType):
        folder = resources.files(obj)
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            if path.name.endswith(TASK_SUFFIXES):
                origin = "built-in" if builtin else f"{where}: {path.name}"
                _add_file(registry, Path(str(path)), origin)
        return
    items: Iterable = [obj] if isinstance(obj, (Task, dict, str, os.PathLike)) else obj
    try:
        for item in items:
            if isinstance(item, Task):
                registry.add(item if item.origin != "?" else _with_origin(item, where))
            elif isinstance(item, dict):
                try:
                    registry.add(task_from_dict(item, origin=where))
                except FlantuneError as exc:  # only this task is skipped; asking for its name shows why
                    registry.problems.append(Problem(where, str(exc), _declared_name(item)))
            else:
                _add_file(registry, Path(item), f"{where}: {item}")
    except FlantuneError as exc:
        registry.problems.append(Problem(where, str(exc)))
    except TypeError as exc:
        registry.problems.append(Problem(
            where, f"The task plugin {where} must give a package of task files, Tasks, dicts or paths ({exc})."
        ))


def _with_origin(task: Task, origin: str) -> Task:
    from dataclasses import replace

    return replace(task, origin=origin)


def task_folders(tasks_dir: str | os.PathLike | Iterable | None) -> list[Path]:
    raw: list[str] = []
    if tasks_dir:
        raw.extend([str(tasks_dir)] if isinstance(tasks_dir, (str, os.PathLike)) else [str(t) for t in tasks_dir])
    raw.extend(p for p in os.environ.get(TASKS_PATH_ENV, "").split(os.pathsep) if p)
    folders = []
    for item in raw:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise FlantuneError(
                f"tasks_dir '{item}' is not a folder. Give tasks_dir=DIR (or {TASKS_PATH_ENV}) a folder of task "
                "YAML files."
            )
        folders.append(path)
    return folders


def discover(tasks_dir=None) -> Registry:
    """Every task: entry points first (built-in included), then task folders."""
    registry = Registry()
    eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name != "flantune", e.name))
    if not any(ep.dist and ep.dist.name == "flantune" for ep in eps):
        raise FlantuneError(
            "flantune's built-in tasks are not registered: the package metadata is missing its "
            f"'{ENTRY_POINT_GROUP}' entry point. Reinstall flantune with `pip install -e .` (or from a wheel)."
        )
    for ep in eps:
        _add_entry_point(registry, ep)
    for folder in task_folders(tasks_dir):
        _add_folder(registry, folder)
    return registry.finish()
