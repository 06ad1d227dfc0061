"""`flantune demo`: the page served for a finished run, driven in headless Chromium, predicts what `flantune predict`
predicts for the same input (classification with its probabilities, generation); and the errors it gives before
loading a model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from browser import chromium_page

START_TIMEOUT = 300  # s: the model loads and the examples are read while eight test sessions share two cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_served(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flantune demo exited with {proc.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"flantune demo did not serve {url} within {START_TIMEOUT} s:\n{log.read_text()}")


def _predicted(cli, run: Path, task: str, row: dict, tmp_path: Path) -> dict:
    """`flantune predict`'s record for one row."""
    source, out = tmp_path / f"{task}.jsonl", tmp_path / f"{task}-predicted.jsonl"
    source.write_text(json.dumps(row) + "\n")
    code, _, err = cli("predict", f"model={run}", f"task={task}", f"input={source}", f"output={out}")
    assert code == 0, err
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    return record


def _predict_on_page(page, task: str, column: str) -> str:
    """Click the task's first example, wait for it to fill the form, submit; the input it filled."""
    page.locator(f"#{task}-examples button").first.click()
    box = page.locator(f"#{task}-{column} textarea")
    page.wait_for_function("box => box.value !== ''", arg=box.element_handle(), timeout=30_000)
    page.locator(f"#{task}-predict").click()
    shown = page.locator(f"#{task}-prediction textarea").element_handle()
    page.wait_for_function("box => box.value !== ''", arg=shown, timeout=120_000)
    return box.input_value()


@pytest.mark.slow
def test_the_page_predicts_as_flantune_predict(trained_run, tmp_path, cli):
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "demo.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "flantune", "demo", f"model={trained_run}", f"port={port}"],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_until_served(url, proc, log)
        hosts = set()
        with chromium_page() as page:
            page.on("request", lambda request: hosts.add(urlparse(request.url).hostname))
            page.goto(url)
            # The run's two tasks, a tab each: imdb (classification) is the first.
            review = _predict_on_page(page, "imdb", "text")
            shown = page.locator("#imdb-prediction textarea").input_value()
            bars = {m.get_attribute("aria-label"): float(m.get_attribute("value"))
                    for m in page.locator("#imdb-probabilities meter").all()}
            heading = page.locator("#imdb-probabilities [data-testid=label-output-value]").inner_text()
            page.get_by_text("model input (the template rendered)").first.click()  # a closed accordion
            rendered = page.locator("#imdb-input textarea").input_value()

            page.get_by_role("tab", name="samsum").click()
            dialogue = _predict_on_page(page, "samsum", "dialogue")
            summary = page.locator("#samsum-prediction textarea").input_value()
        assert hosts == {"127.0.0.1"}, f"the page reached beyond the machine: {hosts}"

        expected = _predicted(cli, trained_run, "imdb", {"text": review}, tmp_path)
        assert shown == heading == expected["prediction"]
        assert bars == expected["probabilities"] and set(bars) == {"negative", "positive"}
        assert rendered == expected["input"] and "Is this movie review positive or negative?" in rendered
        generated = _predicted(cli, trained_run, "samsum", {"dialogue": dialogue}, tmp_path)
        assert summary == generated["prediction"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    printed = log.read_text()
    assert code in (0, 130), printed
    assert f"demo: {url}" in printed and "Traceback" not in printed


def test_without_gradio_an_install_hint_before_the_model(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed: `import gradio` fails
    code, _, err = cli("demo", "model=runs/no-such-run")  # the hint first, before the model is looked for
    assert code == 2
    assert 'pip install "flantune[demo]"' in err and "Gradio" in err and "Traceback" not in err


def test_an_old_gradio_asks_for_an_upgrade(cli, monkeypatch):
    import importlib.metadata

    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.9.1" if name == "gradio" else installed(name))
    code, _, err = cli("demo", "model=runs/no-such-run")
    assert code == 2
    assert "Gradio 5.9.1 is installed" in err and 'pip install -U "flantune[demo]"' in err


def test_a_taken_port_is_an_error_before_the_model(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("demo", "model=runs/no-such-run", f"port={port}")
    assert code == 2
    assert f"port={port} on 127.0.0.1 is taken" in err and f"port={port + 1}" in err
