"""Split specs mean what they mean on the hub, and a holdout never leaks into training."""

from __future__ import annotations

import numpy as np
import pytest
from datasets.arrow_reader import ReadInstruction

from flantune.errors import FlantuneError
from flantune.splits import Holdout, check_split_syntax, segments, select_rows

SPECS = ["train", "train[:80%]", "train[80%:]", "train[10:20]", "train[-10:]", "train[:-5%]", "train[5:3]",
         "train[33%:66%](pct1_dropremainder)", "train[:33%](closest)", "train[:50%]+validation[10:]",
         "train[1_000:]", "train[-200%:]", "train[:50](closest)"]


@pytest.mark.parametrize("n", [7, 99, 100, 1234])
@pytest.mark.parametrize("spec", SPECS)
def test_segments_agree_with_datasets(spec, n):
    sizes = {"train": n, "validation": n + 3}
    try:
        ours = [(s.split, s.start, s.stop) for s in segments(spec, sizes)]
    except FlantuneError:
        ours = None
    try:
        theirs = [(a.splitname, a.from_, a.to) for a in ReadInstruction.from_spec(spec).to_absolute(sizes)]
    except ValueError:
        theirs = None
    assert ours == theirs


def test_bad_specs_are_clear_errors():
    for spec in ("train[5]", "train[::2]", "", "train[:50%"):
        with pytest.raises(FlantuneError, match="is not a valid split"):
            check_split_syntax(spec)


def test_holdout_is_seeded_disjoint_and_applies_to_every_role_on_that_split():
    holdout = Holdout(from_="train", to="validation", size=0.1, seed=3)
    sizes = {"train": 1000, "test": 50}
    (_, held), = select_rows("train", "validation", sizes, holdout)
    (_, rest), = select_rows("train", "train", sizes, holdout)
    (_, half), = select_rows("train[:50%]", "train", sizes, holdout)
    assert len(held) == 100 and len(rest) == 900
    assert not set(held) & set(rest) and not set(held) & set(half)
    assert set(half) <= set(range(500))
    (_, again), = select_rows("train", "validation", sizes, holdout)
    assert np.array_equal(held, again)  # same seed, same rows
    (_, other), = select_rows("train", "validation", sizes, Holdout("train", "validation", 0.1, seed=4))
    assert not np.array_equal(held, other)
    (_, test), = select_rows("test", "test", sizes, holdout)
    assert len(test) == 50  # other splits are untouched


# ---- the three roles kept apart ----------------------------------------------------------------------------------

RUN = ["model=tiny", "train.max_steps=1", "train.eval_steps=1", "data.max_train_examples=8", "data.max_eval_examples=4"]
SQUAD_CARVED = ["tasks.squad.splits.train=validation[:80%]", "tasks.squad.splits.validation=validation[80%:90%]",
                "tasks.squad.splits.test=validation[90%:]"]  # the README's example


def _one_line(err: str) -> str:
    return " ".join(err.split())


@pytest.mark.parametrize("task, split", [("squad", "train"), ("paws", "train"), ("mlqa_hi_en", "test")])
def test_the_carve_a_missing_split_error_suggests_keeps_every_role_apart(cli, tmp_path, shared_data, task, split):
    """Following the advice of the error for a mirror without a split gives a run that passes the overlap check:
    the old advice (tasks.squad.splits.train='validation[:80%]', the test split being all of validation) trained on
    the test rows."""
    code, _, err = cli("run", f"task={task}", *RUN, f"data_dir={shared_data}", f"output_dir={tmp_path / 'a'}")
    err = _one_line(err)
    assert code == 2 and f"needs split '{split}'" in err, err
    hint = err.split("e.g. ")[1].split(",")[0].split()
    assert hint and all(h.startswith(f"tasks.{task}.splits.") for h in hint)
    code, _, err = cli("config", f"task={task}", *RUN, *hint)
    assert code == 0, err
    from flantune.config import load_config
    from flantune.data import split_overlaps
    from flantune.prelude import resolve_tasks

    carved = resolve_tasks(load_config([f"task={task}", *[h.replace("'", "") for h in hint]]))[0]
    assert split_overlaps(carved, shared_data) == []
    if task == "squad":  # the README's three-line example
        assert [h.replace("'", "") for h in hint] == SQUAD_CARVED


def test_training_on_test_rows_is_an_error_before_anything_is_made(cli, tmp_path, shared_data):
    out = tmp_path / "run"
    code, _, err = cli("run", "task=squad", *RUN, f"data_dir={shared_data}", f"output_dir={out}",
                       "tasks.squad.splits.train=validation[:80%]")  # the old advice: squad's test is all of validation
    err = _one_line(err)
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert "Task 'squad' would train on rows it evaluates on: its train and test roles both read rows 0-8455 of " \
           "split 'validation'" in err
    assert "tasks.squad.splits.test='validation[90%:]'" in err and "data.allow_overlap=true" in err
    # the same split named by two roles, whole
    code, _, err = cli("run", "task=emotion", *RUN, f"data_dir={shared_data}", f"output_dir={out}",
                       "tasks.emotion.splits.validation=train")
    err = _one_line(err)
    assert code == 2 and "its train and validation roles both read rows 0-15999 of split 'train'" in err
    assert "e.g. tasks.emotion.splits.validation='validation', or" in err  # the mirror has a validation split
    assert not out.exists()


@pytest.mark.slow
def test_allowed_overlap_is_recorded_in_metrics_and_the_report(cli, tmp_path, shared_data):
    out = tmp_path / "run"
    code, _, err = cli("run", "task=squad", *RUN, f"data_dir={shared_data}", f"output_dir={out}",
                       "tasks.squad.max_new_tokens=4", "tasks.squad.splits.train=validation[:80%]",
                       "tasks.squad.splits.validation=validation[80%:90%]", "data.allow_overlap=true")
    assert code == 0, err
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["allowed_overlap"] == {"squad": [
        "its train and test roles both read rows 0-8455 of split 'validation' (train 'validation[:80%]', "
        "test 'validation')"]}
    code, _, err = cli("report", str(out), f"output_dir={tmp_path / 'report'}")
    assert code == 0, err
    notes = json.loads((tmp_path / "report" / "report.json").read_text())["tasks"]["squad"]["notes"]
    assert any("trained on rows it was evaluated on (data.allow_overlap=true)" in n for n in notes)


def test_builtin_tasks_and_holdouts_pass_the_overlap_check(registry):
    """Every built-in task's own splits (imdb, squad and mlqa_hi_en carve validation by a holdout) and the README's
    squad example keep training apart, whatever the splits' sizes; the same spec read whole by two roles doesn't."""
    from flantune.splits import shared_rows

    readme = {k.split(".")[-1]: v for k, v in (o.split("=", 1) for o in SQUAD_CARVED)}
    cases = [(name, dict(registry.get(name).splits), registry.get(name).holdout) for name in registry.tasks]
    cases.append(("squad (README)", {**registry.get("squad").splits, **readme}, registry.get("squad").holdout))
    for name, splits, holdout in cases:
        for n in (2000, 12345):  # enough rows for the holdouts (1,000 of squad's)
            sizes = {s: n for spec in splits.values() for s in check_split_syntax(spec)}
            assert shared_rows(splits, holdout, sizes) == [], name
    sizes = {"train": 1000, "test": 100}
    (a, b, split, rows), = shared_rows({"train": "train", "validation": "train", "test": "test"}, None, sizes)
    assert (a, b, split, len(rows)) == ("train", "validation", "train", 1000)
