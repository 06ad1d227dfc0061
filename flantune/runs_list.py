"""`flantune runs`: the runs, evaluations and reports under a folder in one table, most recent first.

It reads what each directory holds about itself (its .flantune mark, config.yaml and metrics.json through
rundir.read_metrics, which reads older schemas as the current one; a report's report.json and systems/), loads no
model, and imports neither torch nor datasets, so it answers at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from flantune import rundir
from flantune.compare import SYSTEM_FILE, SYSTEMS
from flantune.console import console as make_console
from flantune.errors import FlantuneError, first_line
from flantune.hub import OUTPUT_ROOTS

REPORT = "report.json"
# A run's folders that hold no run, evaluation or report (its report/ is looked into)
INSIDE = {rundir.MODEL, rundir.MERGED, rundir.BASE_MODEL, rundir.CHECKPOINTS, rundir.PREDICTIONS}
# What a directory that can't be read raises while it is read; anything else is a bug and says so
UNREADABLE = (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError, OmegaConfBaseException,
              FlantuneError)


@dataclass
class Entry:
    """One row of the table."""

    path: Path
    kind: str  # run | evaluation | report
    date: datetime
    tasks: list[str]
    model: str
    method: str
    results: list[str] = field(default_factory=list)  # "imdb accuracy 68.80 (test)", or what an unfinished run did
    steps: int | None = None
    wall_s: float | None = None


def default_folders() -> list[Path]:
    """The folders flantune writes under the current directory, where they exist."""
    return [Path(root) for root in OUTPUT_ROOTS if Path(root).is_dir()]


def find(folders: list[Path]) -> tuple[list[Entry], list[tuple[Path, str]]]:
    """The entries under `folders`, most recent first, and the flantune directories that can't be read (path, why)."""
    entries, skipped = [], []
    for folder in folders:
        for root, dirs, _ in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d not in INSIDE and not d.startswith("."))
            path = Path(root)
            try:
                entry = read_entry(path)
            except UNREADABLE as exc:
                skipped.append((path, f"{type(exc).__name__}: {first_line(exc)}"))
                continue
            if entry is not None:
                entries.append(entry)
                if entry.kind != "run":  # what an evaluation or a report holds (its systems' evaluations) is its own
                    dirs[:] = []
    entries.sort(key=lambda e: e.date, reverse=True)
    return entries, skipped


def _kind(path: Path) -> str | None:
    """What flantune made `path` as, or None for a folder that is none of the three (a sweep's folder, whose runs
    are listed, or a folder flantune didn't make): its mark says, else (a directory from before the mark) its files."""
    if (path / rundir.MARK).is_file():
        kind = rundir.read_json(path / rundir.MARK)["kind"]
        return kind if kind in ("run", "evaluation", "report") else None
    if rundir.is_run_dir(path):
        return "run" if (path / rundir.MODEL).is_dir() or (path / rundir.CHECKPOINTS).is_dir() else "evaluation"
    if (path / REPORT).is_file() and (path / SYSTEMS).is_dir():
        return "report"
    return None


def _date(path: Path, *files: str) -> datetime:
    """When the directory was made (its mark says), else when the first of `files` that exists was written."""
    if (path / rundir.MARK).is_file():
        created = rundir.read_json(path / rundir.MARK).get("created")
        if created:
            return datetime.fromisoformat(created)
    for name in (*files, "."):
        if (path / name).exists():
            return datetime.fromtimestamp((path / name).stat().st_mtime)
    raise OSError("it has vanished")


def read_entry(path: Path) -> Entry | None:
    """The entry of a run, evaluation or report directory; None for another folder."""
    kind = _kind(path)
    if kind is None:
        return None
    if kind == "report":
        return _report_entry(path)
    date = _date(path, rundir.METRICS, rundir.CONFIG)
    cfg = rundir.read_config(path) if (path / rundir.CONFIG).is_file() else None
    if not (path / rundir.METRICS).is_file():
        if cfg is None:
            raise OSError(f"it has neither {rundir.CONFIG} nor {rundir.METRICS}")
        return Entry(path, kind, date, _config_tasks(cfg), str(cfg.model.name), _method(cfg.method),
                     [_unfinished(path)])
    metrics = rundir.read_metrics(path)
    model = metrics["model"]
    scores: dict[str, dict[str, float]] = metrics["tasks"]
    results = [_result(name, scores[name], _primary(cfg, name), metrics) for name in scores]
    method = model["method"] or (cfg.method if kind == "run" and cfg is not None else None)  # v1: runs said none
    return Entry(path, kind, date, list(scores), str(model["label"] or model["name"] or (cfg and cfg.model.name)),
                 _method(method), [f"{r} ({metrics['split']})" for r in results],
                 (metrics["train"] or {}).get("steps"), metrics["wall_time_s"] or (metrics["eval"] or {}).get("seconds"))


def _result(task: str, scores: dict[str, float], primary: str | None, metrics: dict[str, Any]) -> str:
    """'imdb accuracy 68.80': the task's primary metric; where its task definition can't be found (a plugin
    folder moved since), a one-task run's score (the primary metric's value, under another name)."""
    if primary in scores:
        return f"{task} {primary} {_number(scores[primary])}"
    if len(metrics["tasks"]) == 1 and metrics.get("score") is not None:
        return f"{task} score {_number(metrics['score'])}"
    return f"{task} ? (its task definition is not found)"


def _primary(cfg: DictConfig | None, task: str) -> str | None:
    """The task's primary metric as the run had it: its tasks.NAME.primary_metric override, else its definition."""
    if cfg is None:
        return _registry_primary(None, task)
    override = OmegaConf.select(cfg, f"tasks.{task}.primary_metric", default=None)
    return str(override) if override else _registry_primary(cfg.get("tasks_dir"), task)


def _registry_primary(tasks_dir: str | None, task: str) -> str | None:
    """The primary metric of the task registered under that name (with that plugin folder); None where there is
    none now."""
    if tasks_dir is not None and not Path(tasks_dir).is_dir():
        return None
    try:
        found = _registry(tasks_dir).tasks.get(task)
    except FlantuneError:
        return None
    return found.primary_metric if found else None


@lru_cache(maxsize=None)
def _registry(tasks_dir: str | None):
    from flantune.registry import discover

    return discover(tasks_dir)


def _config_tasks(cfg: DictConfig) -> list[str]:
    from flantune.config import task_names

    try:
        return task_names(cfg)
    except FlantuneError:
        return [str(cfg.get("mixture") or "?")]


def _unfinished(path: Path) -> str:
    """What an unfinished run did: its newest checkpoint's step, which resume=true continues from."""
    steps = [int(p.name.split("-")[-1]) for p in (path / rundir.CHECKPOINTS).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit()]
    return f"unfinished (checkpoint at step {max(steps)})" if steps else "unfinished (no checkpoint)"


def _report_entry(path: Path) -> Entry:
    """A report: its tasks, the reference and fine-tuned systems (the baselines left out), and each task's primary
    metric for them, reference first."""
    report = json.loads((path / REPORT).read_text(encoding="utf-8"))
    models = [s for s in report["systems"] if s["kind"] == "model"]
    metrics = {}
    for folder in sorted((path / SYSTEMS).iterdir()):
        if (folder / SYSTEM_FILE).is_file() and (folder / rundir.METRICS).is_file():
            metrics[rundir.read_json(folder / SYSTEM_FILE)["name"]] = rundir.read_metrics(folder)
    results = []
    for task, section in report["tasks"].items():
        primary = section["primary_metric"]
        values = [_number(metrics[s["name"]]["tasks"][task][primary]) for s in models
                  if task in (metrics.get(s["name"]) or {}).get("tasks", {})]
        split = next((m["split"] for m in metrics.values() if m.get("split")), None)
        results.append(f"{task} {primary} {' -> '.join(values)}" + (f" ({split})" if split else ""))
    methods = sorted({str(s["method"]) for s in models if s.get("method")})
    return Entry(path, "report", _date(path, REPORT), list(report["tasks"]), " vs ".join(s["name"] for s in models),
                 ", ".join(methods) or "-", results)


def _method(method: Any) -> str:
    return str(method) if method else "-"


def _number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def _shown(path: Path) -> str:
    """A path as the user can paste it: relative to the current directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def print_runs(folders: list[Path], console: Console | None = None) -> None:
    console = console or make_console()
    entries, skipped = find(folders)
    where = ", ".join(f"{_shown(f)}/" for f in folders)
    if not entries:
        console.print(f"No runs, evaluations or reports under {where}.", highlight=False)
    else:
        table = Table(title=f"flantune runs under {where}", show_lines=True)
        for col in ("date", "kind"):
            table.add_column(col, no_wrap=True)
        table.add_column("directory", no_wrap=True)  # a path folded across lines can't be copied
        for col in ("task(s)", "model", "method", "primary metric (split)"):
            table.add_column(col, overflow="fold")
        table.add_column("steps", justify="right")
        table.add_column("wall time", justify="right")
        for e in entries:
            table.add_row(e.date.strftime("%Y-%m-%d %H:%M"), e.kind, _shown(e.path), "\n".join(e.tasks), e.model,
                          e.method, "\n".join(e.results), "-" if e.steps is None else f"{e.steps:,}",
                          _duration(e.wall_s))
        console.print(table)
    for path, why in skipped:
        console.print(f"[yellow]skipped[/] {_shown(path)}: it can't be read ({why}).", highlight=False)
