"""`flantune runs`: the runs, evaluations and reports under folders, most recent first, with their primary metrics;
unfinished runs said so, unreadable directories skipped with the reason."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from flantune.hub import OUTPUT_ROOTS


def _copy_run(trained_run: Path, to: Path, created: str) -> dict:
    """A run directory made from trained_run's config.yaml, metrics.json and mark, made at `created`."""
    to.mkdir(parents=True)
    for name in ("config.yaml", "metrics.json"):
        shutil.copy(trained_run / name, to / name)
    mark = json.loads((trained_run / ".flantune").read_text())
    (to / ".flantune").write_text(json.dumps({**mark, "created": created}))
    return json.loads((to / "metrics.json").read_text())


def _row_order(out: str, paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: out.index(f" {p} "))


REPO = Path(__file__).resolve().parents[1]


def _readme_command() -> list[str]:
    """The README's first `flantune runs` example, as the words after `flantune`."""
    section = (REPO / "README.md").read_text().split("\n### The runs you have\n", 1)[1].split("\n#", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith("flantune runs"))
    return shlex.split(line, comments=True)[1:]


@pytest.mark.slow
def test_runs_lists_what_is_there_most_recent_first(cli, trained_run, tmp_path, monkeypatch):
    folder = tmp_path / "runs"
    old, new = folder / "sweep" / "old", folder / "new"
    metrics = _copy_run(trained_run, old, "2020-01-01T09:00:00")
    _copy_run(trained_run, new, "2099-01-01T09:00:00")
    # an unfinished run: its config and a checkpoint, no metrics.json
    unfinished = folder / "unfinished"
    _copy_run(trained_run, unfinished, "2021-06-01T09:00:00")
    (unfinished / "metrics.json").unlink()
    (unfinished / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    # a run of schema version 1: no schema_version, nor the model's method, in its metrics.json
    v1 = folder / "v1"
    _copy_run(trained_run, v1, "2019-01-01T09:00:00")
    old_metrics = json.loads((v1 / "metrics.json").read_text())
    del old_metrics["schema_version"], old_metrics["model"]["method"], old_metrics["measured_together"]
    (v1 / "metrics.json").write_text(json.dumps(old_metrics))
    # a run whose metrics.json is cut short, and a folder flantune didn't make
    broken = folder / "broken"
    _copy_run(trained_run, broken, "2022-01-01T09:00:00")
    (broken / "metrics.json").write_text('{"tasks": {')
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("nothing here")

    code, out, err = cli("runs", folder, trained_run)
    assert code == 0, err
    report = trained_run / "report"  # written after its run
    listed = [new, report, trained_run, unfinished, old, v1]
    assert _row_order(out, listed) == listed
    assert f"skipped {broken}: it can't be read (JSONDecodeError" in out and f" {broken} " not in out
    assert "notes" not in out
    assert "unfinished (checkpoint at step 2)" in _rows(out, unfinished)
    first = _rows(out, old)
    assert first.startswith("│ 2020-01-01 09:00 │ run ")
    imdb, samsum = metrics["tasks"]["imdb"]["accuracy"], metrics["tasks"]["samsum"]["rougeL"]
    assert f"imdb accuracy {imdb:.2f} (test)" in first and f"samsum rougeL {samsum:.2f} (test)" in first
    assert re.search(rf"│ +{metrics['train']['steps']} │", first)
    assert "│ full " in _rows(out, v1)  # version 1 said no method: the run's config does
    # the run's report: the reference's and the fine-tuned model's primary metric, in that order
    base = json.loads(next((report / "systems").glob("0-*/metrics.json")).read_text())
    assert _rows(out, report).startswith(f"│ {_mtime(report / 'report.json')} │ report ")
    assert f"imdb accuracy {base['tasks']['imdb']['accuracy']:.2f} -> {imdb:.2f} (test)" in _rows(out, report)

    monkeypatch.chdir(tmp_path)  # the README's example: runs/ (evals/, reports/) under the current directory
    code, out, err = cli(*_readme_command())
    assert code == 0, err
    listed = [Path("runs/new"), Path("runs/unfinished"), Path("runs/sweep/old"), Path("runs/v1")]
    assert _row_order(out, listed) == listed and str(trained_run) not in out


def _rows(out: str, path: Path) -> str:
    """The table lines of `path`'s row: from its first line to the next rule."""
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if f" {path} " in line)
    end = next(i for i in range(at, len(lines)) if lines[i].startswith(("├", "└")))
    return "\n".join(lines[at:end])


def _mtime(path: Path) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def test_runs_of_an_empty_folder_and_of_none(cli, tmp_path, monkeypatch):
    code, out, _ = cli("runs", tmp_path)
    assert code == 0 and f"No runs, evaluations or reports under {tmp_path}/" in out
    monkeypatch.chdir(tmp_path)  # no runs/, evals/ nor reports/ here
    code, out, _ = cli("runs")
    assert code == 0 and f"No {'/, '.join(OUTPUT_ROOTS)}/ folder here" in out
    (tmp_path / "evals").mkdir()
    code, out, _ = cli("runs")
    assert code == 0 and "No runs, evaluations or reports under evals/" in out
    code, _, err = cli("runs", tmp_path / "missing")
    assert code == 2 and "no such folder" in err
