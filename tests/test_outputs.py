"""What runs and evaluations write: metrics.json in one schema for both, with its version (a report reads an
evaluation's model method and type as it reads a run's), older files read in the current schema, and a run
that names its directory when it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from flantune import rundir
from flantune.config import load_config
from flantune.errors import FlantuneError
from flantune.versions import SCHEMA_VERSION

# A run of a few seconds on the IMDB sample shipped with flantune.
SMALL = ["task=imdb", "model=tiny", "data_dir=@sample", "train.max_steps=2", "train.eval_steps=2",
         "data.max_train_examples=32", "data.max_eval_examples=8", "tasks.imdb.max_input_length=32"]
EVAL = ["task=imdb", "data_dir=@sample", "data.max_eval_examples=8", "tasks.imdb.max_input_length=32"]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """A run, an evaluation of its model and one of the random base, and what the run printed."""
    from flantune.cli import main

    tmp = tmp_path_factory.mktemp("outputs")
    dirs = {"run": tmp / "run", "eval of the run": tmp / "eval-run", "eval of the base": tmp / "eval-base"}
    assert main(["run", *SMALL, f"output_dir={dirs['run']}"]) == 0
    assert main(["eval", f"model={dirs['run']}", *EVAL, f"output_dir={dirs['eval of the run']}"]) == 0
    assert main(["eval", "model=tiny", *EVAL, f"output_dir={dirs['eval of the base']}"]) == 0
    return dirs


def _metrics(folder: Path) -> dict:
    return json.loads((folder / rundir.METRICS).read_text())


def test_a_run_and_an_evaluation_write_the_same_keys(written):
    run, tuned, base = (_metrics(written[k]) for k in ("run", "eval of the run", "eval of the base"))
    assert set(run) == set(tuned) == set(base)
    assert set(run["model"]) == set(tuned["model"]) == set(base["model"])
    assert run["schema_version"] == tuned["schema_version"] == base["schema_version"] == SCHEMA_VERSION
    assert {"method", "model_type"} <= set(run["model"])
    assert run["model"]["method"] == tuned["model"]["method"] == "full"  # the evaluated model is the run's
    assert base["model"]["method"] is None  # a model flantune did not fine-tune
    assert run["model"]["model_type"] == tuned["model"]["model_type"] == base["model"]["model_type"] == "t5"
    assert run["train"]["steps"] == 2 and tuned["train"] is None and tuned["trainable_parameters"] is None
    assert tuned["tasks"]["imdb"]["accuracy"] == run["tasks"]["imdb"]["accuracy"]  # the same model, the same rows


def test_a_report_reads_an_evaluations_method_as_a_runs(written, cli, tmp_path):
    out = tmp_path / "report"
    code, _, err = cli("report", str(written["eval of the base"]), str(written["eval of the run"]),
                       str(written["run"]), f"output_dir={out}")
    assert code == 0, err
    systems = json.loads((out / "report.json").read_text())["systems"]
    assert [s["method"] for s in systems] == [None, "full", "full"]


def test_a_run_names_its_directory_when_it_starts(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("run", *SMALL, "train.max_steps=1", f"output_dir={out}")
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"run directory: {out}", stdout[:2000]  # before the model line and the training logs
    assert any(line.startswith("model: ") for line in lines[1:])


def _old_evaluation(folder: Path) -> Path:
    """An evaluation directory as `flantune eval` wrote it before the schema version: no method, no model type."""
    (folder / "predictions").mkdir(parents=True)
    (folder / rundir.METRICS).write_text(json.dumps({
        "split": "test", "tasks": {"imdb": {"accuracy": 50.0}}, "score": 50.0,
        "model": {"name": "tiny", "label": "tiny (random init)", "path": None, "random_init": True},
        "total_parameters": 1000, "eval": {"seconds": 1.0, "examples_per_s": 2.0, "tokens_per_s": 9.0,
                                           "ms_per_example": 500.0},
        "precision": "fp32", "measured_together": False}))
    rows = [{"id": str(i), "input": "x", "target": t, "prediction": t} for i, t in enumerate(["negative", "positive"])]
    (folder / "predictions" / "imdb.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_an_old_evaluation_is_read_in_the_current_schema(written, cli, tmp_path):
    old = _old_evaluation(tmp_path / "old")
    metrics = rundir.read_metrics(old)
    assert set(metrics) == set(_metrics(written["run"]))
    assert set(metrics["model"]) == set(_metrics(written["run"])["model"])
    assert metrics["schema_version"] == SCHEMA_VERSION and metrics["model"]["method"] is None
    assert metrics["tasks"] == {"imdb": {"accuracy": 50.0}} and metrics["total_parameters"] == 1000
    other = _old_evaluation(tmp_path / "other")
    code, _, err = cli("report", str(old), str(other), f"output_dir={tmp_path / 'report'}")
    assert code == 0, err
    systems = json.loads((tmp_path / "report" / "report.json").read_text())["systems"]
    assert [s["method"] for s in systems] == [None, None]


def test_a_run_made_before_the_version_keeps_it_when_resumed(tmp_path):
    """A run made before the schema version (and the .flantune mark) resumes as one: the mark its resumption
    writes says no version, so its config still reads as version 1 (data.eval_seed was the run's seed)."""
    out = tmp_path / "run"
    made = OmegaConf.to_container(load_config([*SMALL, "seed=3"]))
    del made["data"]["eval_seed"]
    out.mkdir()
    OmegaConf.save(OmegaConf.create(made), out / rundir.CONFIG)
    resume = load_config([*SMALL, "seed=3", f"output_dir={out}", "resume=true"])
    for _ in range(2):  # before and after its resumption marked it
        with pytest.raises(FlantuneError, match=r"data.eval_seed \(the run: 3, now: 0\)"):
            rundir.check(resume, "imdb")
        rundir.create(out, resume)
    assert rundir.read_config(out).data.eval_seed == 3
