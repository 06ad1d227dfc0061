"""What a LoRA run's adapter_config.json names as its base, and how flantune finds that base after the run has
moved. (tests/test_engine.py trains a LoRA run, moves it with shutil.move and evaluates it.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flantune.config import load_config
from flantune.modeling import adapter_base, run_adapter_base


def _adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))
    return folder


def _model_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    return folder


def test_a_lora_run_names_its_base_so_that_it_travels(tmp_path):
    out = tmp_path / "runs" / "new"

    def recorded(*options: str):
        return run_adapter_base(load_config(["task=imdb", "method=lora", *options]), out)

    saved_here = str((out / "base_model").resolve())
    assert recorded("model=tiny") == (saved_here, None)  # saved in the run
    assert recorded("model=google/flan-t5-base") == ("google/flan-t5-base", None)  # the hub id
    local = _model_folder(tmp_path / "my-t5")
    assert recorded(f"model={local}") == (str(local.resolve()), None)  # not in the run: where it is
    # the adapter of a run with base_model/, trained on: this run saves a copy of that base too
    run = tmp_path / "runs" / "lora-run"
    _adapter(run / "model", str(tmp_path / "moved-since" / "base_model"))
    base = _model_folder(run / "base_model")
    (run / "config.yaml").write_text("task: imdb\nmodel: {}\nmethod: lora\ntrain: {}\neval: {}\n")
    assert recorded(f"model={run}") == (saved_here, base.resolve())
    hub_adapter = _adapter(tmp_path / "hub-adapter", "google/flan-t5-base")
    assert recorded(f"model={hub_adapter}") == ("google/flan-t5-base", None)


def test_the_base_is_found_wherever_the_run_is(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _adapter(run / "model", str((run / "base_model").resolve()))
    _model_folder(run / "base_model")
    assert adapter_base(str(run / "model")) == str((run / "base_model").resolve())
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(run, moved)
    assert adapter_base(str(moved / "model")) == str(moved / "base_model")  # its path is gone: the copy beside
    # a base named relative to the adapter is read from the adapter, not from the current directory
    relative = _adapter(tmp_path / "rel" / "model", "../base_model")
    _model_folder(tmp_path / "rel" / "base_model")
    monkeypatch.chdir(moved)
    assert adapter_base(str(relative)) == str((tmp_path / "rel" / "base_model").resolve())
    assert adapter_base(str(_adapter(tmp_path / "hub", "google/flan-t5-base"))) == "google/flan-t5-base"
