"""The installed package works outside the checkout: built-in tasks, configs, the IMDB sample and the
tokenizer ship inside the wheel and are found through the package-data API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "flantune"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "runs", "build", "*.egg-info", "__pycache__",
                                                               ".venv", "venv", "bench"))
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(wheels), str(src)], check=True)
    (wheel,) = wheels.glob("flantune-*.whl")
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True)
    return site


def _run(code: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the wheel's copy ahead of the editable checkout; cwd is outside the checkout.
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.slow
def test_wheel_ships_tasks_configs_sample_and_tokenizer(wheel_site, tmp_path):
    code = """
import flantune, importlib.resources as r
from flantune.registry import discover
from flantune.sources import sample_data_dir
from flantune.tokenizer import bundled_tokenizer_dir
print('FILE', flantune.__file__)
reg = discover()
print('TASKS', sorted(reg.tasks), {t.origin for t in reg.tasks.values()}, reg.problems)
print('CONFIGS', sorted(str(p.relative_to(r.files('flantune._builtin_configs'))) for p in
      __import__('pathlib').Path(str(r.files('flantune._builtin_configs'))).rglob('*.yaml')))
from flantune.config import load_config
print('RESOLVED', load_config(['model=tiny', 'method=lora', 'mixture=flan8']).train.lr)
print('SAMPLE', sorted(p.name for p in (sample_data_dir() / 'imdb').iterdir()))
print('TOKENIZER', sorted(p.name for p in bundled_tokenizer_dir().iterdir()))
"""
    proc = _run(code, wheel_site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"FILE {wheel_site}" in out  # the wheel's copy, not the checkout
    assert ("TASKS ['emotion', 'imdb', 'mlqa_hi_en', 'paws', 'paws_paraphrase', 'samsum', 'squad', 'squad_qg'] "
            "{'built-in'} []") in out
    assert "'test.parquet', 'train.parquet'" in out
    configs = out.split("CONFIGS")[1].splitlines()[0]
    for name in ("defaults.yaml", "model/tiny.yaml", "model/flan-t5-xxl.yaml", "method/lora.yaml",
                 "mixture/flan8.yaml", "accelerate/fsdp.yaml"):
        assert name in configs, name
    assert "RESOLVED 0.001" in out  # groups resolve from the installed copy
    assert "tokenizer.json" in out


@pytest.mark.slow
def test_wheel_cli_lists_tasks_from_another_folder(wheel_site, tmp_path, shared_data):
    proc = _run(f"import sys; from flantune.cli import main; sys.exit(main(['tasks', 'data_dir={shared_data}']))",
                wheel_site, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "stanfordnlp/imdb" in proc.stdout and "built-in" in proc.stdout


def test_the_package_data_patterns_take_every_file_the_wheel_ships():
    """Without building a wheel (the fast tier): each file git tracks in tasks/, configs/ and flantune/assets/
    matches a package-data pattern of pyproject.toml, so a new task, config or asset is not left out."""
    from setuptools.config.pyprojecttoml import load_file

    setuptools = load_file(REPO / "pyproject.toml")["tool"]["setuptools"]
    tracked = subprocess.run(["git", "ls-files", "tasks", "configs", "flantune/assets"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    assert len(tracked) > 20
    folders = {PurePosixPath(folder): package for package, folder in setuptools["package-dir"].items()}
    for path in (PurePosixPath(p) for p in tracked if not p.endswith(".py")):
        folder = max((f for f in folders if path.is_relative_to(f)), key=lambda f: len(f.parts))
        inside, patterns = path.relative_to(folder), setuptools["package-data"].get(folders[folder], [])
        assert any(inside.match(p) and len(inside.parts) == len(PurePosixPath(p).parts) for p in patterns), path
