"""eval.templates=all: every template of a task evaluated (tiny random model, real IMDB reviews), each template's
metrics equal to a separate evaluation with that template as eval_template, their mean and sample std by hand;
the predictions saved per template; and a report rebuilt from them, paired per template, with a few-shot base
told apart from the zero-shot one."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from flantune.cli import main
from flantune.evaluation import read_predictions

TEMPLATES = ["review_then_question", "question_then_review", "would_recommend"]  # imdb.yaml's, in its order
COMMON = ["eval", "model=tiny", "task=imdb", "data.max_eval_examples=8", "data.max_train_examples=100",
          "tasks.imdb.max_input_length=128"]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evals(tmp_path_factory, shared_data):
    """The tiny model on every template at once, zero-shot and 2-shot, and on each template alone."""
    root = tmp_path_factory.mktemp("templates")
    outs = {}
    for name, extra in [("all", ["eval.templates=all"]), ("all-2shot", ["eval.templates=all", "eval.fewshot=2"]),
                        *((t, [f"tasks.imdb.eval_template={t}"]) for t in TEMPLATES)]:
        outs[name] = root / name
        assert main([*COMMON, *extra, f"data_dir={shared_data}", f"output_dir={outs[name]}"]) == 0
    return outs


@pytest.mark.slow  # five evaluations of the tiny model: about a minute here
def test_every_template_equals_its_own_evaluation(evals):
    got = metrics(evals["all"])
    per = got["templates"]["imdb"]["templates"]
    assert list(per) == TEMPLATES
    for t in TEMPLATES:
        alone = metrics(evals[t])["tasks"]["imdb"]
        assert per[t] == pytest.approx(alone, abs=1e-9), t
    # The task's own metrics stay its eval_template's (review_then_question): the score as before.
    assert got["tasks"]["imdb"] == pytest.approx(per["review_then_question"], abs=1e-9)
    acc = [per[t]["accuracy"] for t in TEMPLATES]
    spread = got["templates"]["imdb"]
    assert spread["mean"]["accuracy"] == pytest.approx(sum(acc) / 3)
    assert spread["std"]["accuracy"] == pytest.approx(statistics.stdev(acc))  # sample std, n - 1
    assert (spread["min"]["accuracy"], spread["max"]["accuracy"]) == (min(acc), max(acc))
    # Saved per template: each template's rows are those of its own evaluation.
    rows = read_predictions(evals["all"] / "predictions" / "templates" / "imdb.jsonl")
    for t in TEMPLATES:
        mine = [{k: v for k, v in r.items() if k != "template"} for r in rows if r["template"] == t]
        alone = read_predictions(evals[t] / "predictions" / "imdb.jsonl")
        assert [(r["id"], r["input"], r["prediction"]) for r in mine] == \
            [(r["id"], r["input"], r["prediction"]) for r in alone]


@pytest.mark.slow
def test_report_pairs_each_template_and_labels_the_few_shot_base(evals, tmp_path):
    out = tmp_path / "report"
    assert main(["report", str(evals["all"]), str(evals["all-2shot"]), f"output_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in report["systems"]]
    assert len(names) == 2 and names[1].endswith("(2-shot)") and not names[0].endswith("-shot)")
    tt = report["tasks"]["imdb"]["templates"]
    assert tt["templates"] == TEMPLATES and tt["metric"] == "accuracy"
    zero, two = (metrics(evals[k])["templates"]["imdb"] for k in ("all", "all-2shot"))
    for t in TEMPLATES:
        a, b = zero["templates"][t]["accuracy"], two["templates"][t]["accuracy"]
        assert tt["systems"][names[0]]["per_template"][t] == pytest.approx(a)
        assert tt["systems"][names[1]]["per_template"][t] == pytest.approx(b)
        d = tt["differences"][names[1]][t]
        assert d["diff"] == pytest.approx(b - a)  # the same template on both sides
        assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    std = tt["systems"][names[1]]["std"]
    assert std == pytest.approx(statistics.stdev(two["templates"][t]["accuracy"] for t in TEMPLATES))
    md = (out / "report.md").read_text()
    assert "Per template: accuracy" in md and "std over templates" in md and "would\\_recommend" in md
    # Rebuilt from the report's own saved systems: the per-template rows travel with it.
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["tasks"]["imdb"]["templates"] == tt


@pytest.mark.slow  # trains the tiny model 2 steps on the shipped IMDB sample
def test_a_run_evaluates_every_template_at_the_end(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("run", "task=imdb", "model=tiny", "data_dir=@sample", "train.max_steps=2",
                            "train.eval_steps=2", "data.max_train_examples=32", "data.max_eval_examples=8",
                            "tasks.imdb.max_input_length=32", "eval.templates=all", f"output_dir={out}")
    assert code == 0, err
    got = metrics(out)
    assert list(got["templates"]["imdb"]["templates"]) == TEMPLATES
    assert got["tasks"]["imdb"] == got["templates"]["imdb"]["templates"]["review_then_question"]
    assert "every template (eval.templates)" in stdout and "would_recommend" in stdout
