"""Shared fixtures. Tests read the real data mirror in ../shared/data (beside the checkout, in CI too);
FLANTUNE_TEST_DATA points elsewhere. A missing mirror fails the tests: nothing skips to green."""

from __future__ import annotations

import os
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
