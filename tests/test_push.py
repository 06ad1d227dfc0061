"""`flantune push`: what it would upload where (dry_run=true, no network), and the errors before anything is
uploaded: no token, a token with no hub (offline, or an endpoint that refuses), the token never shown."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from flantune.push import plan

REPO = Path(__file__).resolve().parents[1]
SECRET = "hf_flantuneTestTokenNotReal0123456789"


def _run_dir(tmp: Path) -> Path:
    """The files of a finished run that push reads: metrics.json, model/ with its card, a report."""
    run = tmp / "run"
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    (run / "model" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (run / "model" / "README.md").write_text(f'---\ntags:\n- flantune\n---\n\n```python\nmodel_id = "{run / "model"}"\n'
                                             f'```\n\n`flantune predict model={run.resolve()} input=x.txt`\n')
    (run / "report" / "images").mkdir(parents=True)
    (run / "report" / "report.html").write_text("<html></html>")
    (run / "report" / "images" / "a.png").write_bytes(b"png")
    return run


def _subprocess(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess:
    """flantune in a fresh process: huggingface_hub reads HF_HOME and HF_ENDPOINT when it is imported."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    clean.update(HF_HOME=str(tmp / "hf_home"), **env)
    return subprocess.run([sys.executable, "-m", "flantune", *args], capture_output=True, text=True, env=clean,
                          cwd=tmp, timeout=300)


def test_dry_run_lists_the_files_and_their_place_in_the_repo(cli, tmp_path):
    run = _run_dir(tmp_path)
    code, out, err = cli("push", run, "repo_id=my-org/tiny-imdb", "dry_run=true")
    assert code == 0, err
    assert "would upload 4 files" in out and "https://huggingface.co/my-org/tiny-imdb (public)" in out
    for line in ("model/README.md -> README.md", "model/config.json -> config.json",
                 "report/report.html -> report/report.html", "report/images/a.png -> report/images/a.png"):
        assert line in out
    card = next(u for u in plan(run, "my-org/tiny-imdb") if u.path_in_repo == "README.md").content.decode()
    assert 'model_id = "my-org/tiny-imdb"' in card and "model=my-org/tiny-imdb " in card
    assert str(run) not in card  # the pushed card names the repo, not this machine's folder


def test_no_token_is_an_error_before_anything(tmp_path):
    run = _run_dir(tmp_path)
    done = _subprocess(["push", str(run), "repo_id=my-org/tiny-imdb"], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "No Hugging Face token" in done.stderr and "hf auth login" in done.stderr
    assert "uploading" not in done.stdout


def test_a_token_without_the_hub_is_an_error_and_never_shown(cli, tmp_path, monkeypatch):
    run = _run_dir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)  # HF_HUB_OFFLINE=1 here (conftest): the hub can't be asked
    code, out, err = cli("push", run, "repo_id=my-org/tiny-imdb", "private=true")
    assert code == 2 and "can't be reached" in err and "Nothing was uploaded" in err
    assert SECRET not in out + err
    # A hub that refuses the connection, in a process of its own (with --debug: the traceback too)
    done = _subprocess(["--debug", "push", str(run), "repo_id=my-org/tiny-imdb"], tmp_path,
                       HF_TOKEN=SECRET, HF_ENDPOINT="http://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    assert "Nothing was uploaded" in done.stderr and "uploading" not in done.stdout
    assert SECRET not in done.stdout + done.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]  # nor written to a file


@pytest.mark.parametrize("options, message", [
    (["repo_id=not a repo"], "is no hub repository id"),
    (["dry_run=maybe", "repo_id=a/b"], "dry_run is true or false"),
    ([], "needs one run directory and repo_id=ORG/NAME"),
])
def test_bad_options(cli, tmp_path, options, message):
    code, _, err = cli("push", _run_dir(tmp_path), *options)
    assert code == 2 and message in err


def test_an_unfinished_run_is_refused(cli, tmp_path):
    run = _run_dir(tmp_path)
    (run / "metrics.json").unlink()
    code, _, err = cli("push", run, "repo_id=a/b", "dry_run=true")
    assert code == 2 and "no finished flantune run" in err


@pytest.mark.slow
def test_the_readme_example_on_a_run(cli, trained_run):
    section = (REPO / "README.md").read_text().split("### Push to the hub", 1)[1].split("\n#", 1)[0]
    words = shlex.split(re.search(r"^flantune (push .*dry_run=true.*)$", section, flags=re.M).group(1),
                        comments=True)
    code, out, err = cli(*[str(trained_run) if w.startswith("runs/") else w for w in words])
    assert code == 0, err
    listed = {line.split(" -> ")[0].strip() for line in out.splitlines() if " -> " in line}
    files = {p.relative_to(trained_run).as_posix() for p in (trained_run / "model").rglob("*") if p.is_file()}
    assert files <= listed and "model/README.md" in listed and "report/report.json" in listed
