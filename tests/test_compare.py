"""`flantune run ... compare=true`, `flantune compare`, `flantune eval` and `flantune report` on a tiny model
trained on real IMDB and SAMSum data: every section of the report, rebuilt from saved predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flantune.evaluation import read_predictions

@pytest.fixture
def compared_run(trained_run) -> Path:
    return trained_run  # conftest's shared run: a mixture of imdb and samsum, run with compare=true


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_report_after_a_run_holds_every_section(compared_run):
    folder = compared_run / "report"
    report = _report(folder)
    names = [s["name"] for s in report["systems"]]
    assert names[0] == "base: tiny (random init)" and names[1].startswith("fine-tuned: ")
    assert {"majority class", "TF-IDF + logistic regression", "lead sentences"} <= set(names)
    imdb, samsum = report["tasks"]["imdb"], report["tasks"]["samsum"]
    tuned = names[1]
    assert {names[0], tuned, "majority class", "TF-IDF + logistic regression"} <= set(imdb["systems"])
    for system in imdb["systems"].values():
        assert {"accuracy", "macro_f1"} <= set(system["metrics"])
    # differences with a paired bootstrap interval, and McNemar for classification
    diff = imdb["differences"][tuned]["accuracy"]
    assert diff["ci_low"] <= diff["diff"] <= diff["ci_high"]
    assert diff["diff"] == pytest.approx(diff["system"] - diff["reference"])
    assert 0.0 <= imdb["mcnemar"][tuned]["p_value"] <= 1.0
    # per-class report and confusion matrices, as images on disk and inside the HTML
    assert set(imdb["per_class"][tuned]["negative"]) == {"precision", "recall", "f1", "support"}
    confusion = imdb["confusion"][tuned]
    assert confusion["labels"] == ["negative", "positive"] and (folder / confusion["image"]).is_file()
    assert sum(map(sum, confusion["counts"])) == imdb["n"]
    images = list((folder / "images").glob("*.png"))
    assert len(images) >= 3
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= len(images) - 1 and "http" not in html.replace("https&#58;", "")
    # baselines where they fit: majority and TF-IDF on imdb, lead-3 on samsum
    assert "lead sentences" in samsum["systems"] and "majority class" in imdb["systems"]
    # fixed / broke examples, speed, training curves, parameters and wall time
    md = (folder / "report.md").read_text()
    for heading in ("fixed", "broke", "examples/s", "ms/example", "trainable", "wall"):
        assert heading.lower() in md.lower(), heading
    assert report["training"][tuned]["trainable_parameters"] > 0


@pytest.mark.slow
def test_the_report_rebuilds_from_saved_predictions(compared_run, cli, tmp_path):
    before = _report(compared_run / "report")
    code, out, err = cli("report", str(compared_run / "report"), f"output_dir={tmp_path / 'again'}")
    assert code == 0, err
    after = _report(tmp_path / "again")
    assert after["tasks"] == before["tasks"]
    # each system still names where it came from (the run, the base model, "baseline"), not the report's copy
    assert [s["source"] for s in after["systems"]] == [s["source"] for s in before["systems"]]


@pytest.mark.slow
def test_eval_of_a_run_directory_gives_the_runs_predictions(compared_run, cli, tmp_path):
    out = tmp_path / "eval"
    code, stdout, err = cli("eval", f"model={compared_run}", f"output_dir={out}")
    assert code == 0, err
    run_preds = read_predictions(compared_run / "predictions" / "imdb.jsonl")
    eval_preds = read_predictions(out / "predictions" / "imdb.jsonl")
    assert [p["prediction"] for p in eval_preds] == [p["prediction"] for p in run_preds]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval"]["examples_per_s"] > 0 and metrics["eval"]["ms_per_example"] > 0


@pytest.mark.slow
def test_compare_command_base_against_a_run(compared_run, cli, tmp_path, shared_data):
    out = tmp_path / "report"
    run = tmp_path / "run"  # compare rewrites the run's model card: a copy, the shared run stays as it is
    shutil.copytree(compared_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    card = (run / "model" / "README.md").read_text()
    code, stdout, err = cli("compare", "base=tiny", f"finetuned={run}", f"output_dir={out}",
                            f"data_dir={shared_data}")
    assert code == 0, err
    report = _report(out)
    assert report["systems"][0]["name"] == "base: tiny (random init)"
    assert set(report["tasks"]) == {"imdb", "samsum"}
    # the run is labelled as `run compare=true` labels it: run name, the model it fine-tuned, its method
    after_run = _report(compared_run / "report")["systems"]
    for key in ("name", "model", "method", "role"):
        assert report["systems"][1][key] == after_run[1][key], key
    assert (after_run[1]["model"], after_run[1]["method"]) == ("tiny (random init)", "full")
    assert (out / "systems").is_dir() and (out / "report.html").is_file()
    rewritten = (run / "model" / "README.md").read_text()
    assert rewritten != card and "95% interval" in rewritten


@pytest.mark.slow
def test_report_bad_inputs(compared_run, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a report without output_dir goes to ./reports/
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    code, _, err = cli("report", str(empty))
    assert code == 2 and "holds no saved predictions" in err
    other = tmp_path / "other"
    (other / "predictions").mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({"tasks": {"emotion": {}}}))
    (other / "predictions" / "emotion.jsonl").write_text(json.dumps(
        {"id": "1", "input": "x", "target": "joy", "prediction": "joy"}) + "\n")
    code, _, err = cli("report", str(compared_run), str(other))
    assert code == 2 and "different tasks" in err
    code, _, err = cli("eval", "model=./no/such/model", "task=imdb")
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_reports_never_replace_what_flantune_did_not_make(compared_run, cli, tmp_path):
    mine = tmp_path / "mine"
    (mine / "systems").mkdir(parents=True)
    (mine / "systems" / "keep.txt").write_text("my file")
    code, _, err = cli("report", str(compared_run / "report"), f"output_dir={mine}")
    assert code == 2 and "already exists" in err
    code, _, err = cli("report", str(compared_run / "report"), f"output_dir={mine}", "overwrite=true")
    assert code == 2 and "flantune did not make" in err and (mine / "systems" / "keep.txt").is_file()
    # a report flantune wrote is replaced on request, and a stray folder in its systems/ is not a system
    again = tmp_path / "again"
    assert cli("report", str(compared_run / "report"), f"output_dir={again}")[0] == 0
    (again / "systems" / "old").mkdir()
    code, _, err = cli("report", str(again), f"output_dir={again}")
    assert code == 0, err
    code, _, err = cli("report", str(compared_run / "report"), f"output_dir={again}", "overwrite=true")
    assert code == 0, err
    assert not (again / "systems" / "old").exists()


@pytest.mark.slow
def test_a_report_of_two_runs_of_one_base_names_them_apart(compared_run, cli, tmp_path):
    # both systems are labelled by their base model, "tiny (random init)"
    code, _, err = cli("report", str(compared_run), str(compared_run / "report" / "evaluations" / "0-base"),
                       f"output_dir={tmp_path / 'pair'}")
    assert code == 0, err
    names = [s["name"] for s in _report(tmp_path / "pair")["systems"]]
    assert names[:2] == ["tiny (random init) (run)", "tiny (random init) (0-base)"]


@pytest.mark.slow
def test_compare_checks_every_model_before_evaluating_any(compared_run, cli, tmp_path, shared_data):
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    out = tmp_path / "report"
    code, _, err = cli("compare", "base=tiny", f"finetuned=[{compared_run},{not_run}]", f"output_dir={out}",
                       f"data_dir={shared_data}")
    assert code == 2 and "not-a-run" in err and not out.exists()


def test_compare_and_report_refuse_folders_without_a_model_or_predictions(cli, tmp_path):
    """Without a trained run (the fast tier): a fine-tuned "run" that holds no model is refused before the base
    model is evaluated, and a report of a folder without saved predictions is refused; nothing is written."""
    not_run = tmp_path / "not-a-run"
    not_run.mkdir()
    out = tmp_path / "report"
    code, _, err = cli("compare", "base=tiny", f"finetuned={not_run}", "task=imdb", f"output_dir={out}",
                       "data_dir=@sample")
    assert code == 2 and "not-a-run" in err and "Traceback" not in err and not out.exists()
    code, _, err = cli("report", str(not_run), f"output_dir={out}")
    assert code == 2 and "holds no saved predictions" in err and not out.exists()
