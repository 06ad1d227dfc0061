"""Shared fixtures. Tests read the real data mirror in ../shared/data (beside the checkout, in CI too);
FLANTUNE_TEST_DATA points elsewhere. A missing mirror fails the tests: nothing skips to green.

Tests marked `slow` train, launch processes or open a browser: `python -m pytest -m "not slow"` is the fast tier
developers run while they work, `python -m pytest` runs everything. The suite leaves nothing in the checkout:
a session that made files there fails (see pytest_sessionfinish)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Before any Hugging Face library reads them: nothing in the tests may reach for the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from flantune.cli import main  # noqa: E402
from flantune.registry import discover  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FLANTUNE_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert (SHARED / "imdb" / "train.parquet").exists(), (
        f"The data mirror is missing at {SHARED}: the tests need ../shared/data beside the checkout "
        "(or FLANTUNE_TEST_DATA)."
    )
    return SHARED


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # No plugin folder or data dir leaks in from the developer's shell.
    monkeypatch.delenv("FLANTUNE_TASKS_PATH", raising=False)
    monkeypatch.delenv("FLANTUNE_DATA_DIR", raising=False)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    _clear_env(monkeypatch)


@pytest.fixture(scope="module")
def registry():
    # Module-scoped, so pytest sets it up before the function-scoped _isolated_env: it clears the variables itself.
    with pytest.MonkeyPatch.context() as monkeypatch:
        _clear_env(monkeypatch)
        return discover()


@pytest.fixture
def cli(capsys):
    """Run `flantune ARGS...` in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# One finished run for the tests that only read one (its metrics.json, predictions, model/, report/): a two-task
# mixture (a classification and a generation task) of the tiny model, trained a few steps with gradient
# accumulation, evaluated during and after training, with a comparative report. The tests must not change it:
# one that modifies a run copies it first (shutil.copytree to its tmp_path).
TRAINED = ["task=[imdb,samsum]", "model=tiny", "mixing.scheme=equal", "train.max_steps=4", "train.logging_steps=1",
           "train.eval_steps=4", "train.batch_size=4", "train.grad_accum=2", "data.max_train_examples=400",
           "data.max_eval_examples=40", "tasks.imdb.max_input_length=128", "tasks.samsum.max_input_length=128",
           "tasks.samsum.max_new_tokens=8", "seed=11"]


@pytest.fixture(scope="session")
def trained_options() -> list[str]:
    """The options of `trained_run`, for a test that trains its twin (one option changed)."""
    return list(TRAINED)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, shared_data) -> Path:
    """The run directory of `flantune run TRAINED compare=true` (read-only to the tests)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        _clear_env(monkeypatch)
        assert main(["run", *TRAINED, "compare=true", f"data_dir={shared_data}", f"output_dir={out}"]) == 0
    return out


# Paths of the developer's environment and of the tools around the tests, which may change while they run.
_ENVIRONMENT = {".venv", "venv", "__pycache__", ".pytest_cache", ".whl", ".device", ".gl"}
_BEFORE = pytest.StashKey[set | None]()  # the checkout's untracked files when the session starts
_LEFT = pytest.StashKey[list]()  # those the session added


def _checkout_files() -> set[str] | None:
    """The files in the checkout that git doesn't track, as "STATUS PATH" lines: untracked and ignored files
    (ignored folders listed file by file), less the environment's; None outside a git checkout."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--ignored=matching"],
                              cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    seen = set()
    for line in done.stdout.splitlines():
        status, path = line[:2], line[3:]
        if status not in ("??", "!!") or _environment(path):  # tracked files: the developer's edits, not the tests'
            continue
        seen.add(line)
        if status == "!!" and path.endswith("/"):  # an ignored folder (runs/, reports/): each file in it
            for root, dirs, files in os.walk(REPO / path):
                dirs[:] = [d for d in dirs if not _environment(d)]
                seen.update(f"!! {Path(root, f).relative_to(REPO)}" for f in files if not _environment(f))
    return seen


def _environment(path: str) -> bool:
    return any(part in _ENVIRONMENT or part.endswith((".egg-info", ".pyc")) for part in Path(path).parts)


def pytest_sessionstart(session):
    session.config.stash[_BEFORE] = _checkout_files()


def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_BEFORE, None)
    if before is None or hasattr(session.config, "workerinput"):  # not a git checkout, or an xdist worker
        return
    left = sorted((_checkout_files() or set()) - before)
    if left:
        session.config.stash[_LEFT] = left
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    left = config.stash.get(_LEFT, [])
    if left:
        terminalreporter.section("files left in the checkout", red=True)
        terminalreporter.write_line(f"The tests made these in {REPO} (write under tmp_path instead):")
        for path in left[:20]:
            terminalreporter.write_line(f"  {path}")
        if len(left) > 20:
            terminalreporter.write_line(f"  ... and {len(left) - 20} more")
