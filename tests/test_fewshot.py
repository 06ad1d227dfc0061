"""eval.fewshot=K: K answered train examples of the task, rendered with the evaluated input's template, before it
(on real IMDB rows, the tiny random model); never the example itself; shots dropped from the front when they
don't fit the input length limit; the shots each input got, in its prediction row and metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

import flantune
from flantune.evaluation import read_predictions

TOKENIZER = Path(flantune.__file__).parent / "assets" / "t5-tokenizer"
LABELS = {0: "negative", 1: "positive"}
BASE = ["eval", "model=tiny", "task=imdb", "tasks.imdb.eval_template=would_recommend", "eval.fewshot=2"]


def would_recommend(text: str) -> str:
    """imdb.yaml's would_recommend template, written out by hand."""
    return ("Here is what a viewer wrote about a film:\n"
            f"\"{text.replace('<br />', ' ')}\"\nDid the viewer like the film? Pick one of: negative, positive.")


def shot(row) -> str:  # an answered example: its input, a newline, its answer
    return would_recommend(row.text) + "\n" + LABELS[row.label]


def rows_of(out: Path) -> list[dict]:
    return read_predictions(out / "predictions" / "imdb.jsonl")


@pytest.fixture(scope="module")
def frames(shared_data):
    return {s: pd.read_parquet(shared_data / "imdb" / f"{s}.parquet") for s in ("train", "test")}


@pytest.fixture(scope="module")
def shots_by_text(frames):
    """Every train row's answered rendering -> its row id ("train-<n>")."""
    return {shot(r): f"train-{i}" for i, r in enumerate(frames["train"].itertuples())}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, shared_data):
    """The same 4 test reviews with 2 shots: room for every shot (4096 tokens), and a 600-token limit."""
    from flantune.cli import main

    outs = {}
    for limit in (4096, 600):
        out = tmp_path_factory.mktemp("fewshot") / f"limit{limit}"
        assert main([*BASE, f"data_dir={shared_data}", "data.max_eval_examples=4", "data.max_train_examples=300",
                     f"tasks.imdb.max_input_length={limit}", f"output_dir={out}"]) == 0
        outs[limit] = out
    return outs


@pytest.mark.slow  # evaluates the tiny model on real reviews: 20-60 s here
def test_two_shots_are_answered_train_rows_before_the_input(evaluations, frames, shots_by_text):
    rows = rows_of(evaluations[4096])
    assert len(rows) == 4
    for row in rows:
        test_row = frames["test"].iloc[int(row["id"].removeprefix("test-"))]
        parts = row["input"].split("\n\n")
        assert len(parts) == 3 and row["shots"] == 2
        # The evaluated input, rendered with the same template, last; each shot a real train row with its label.
        assert parts[2] == would_recommend(test_row.text)
        ids = [shots_by_text[p] for p in parts[:2]]
        expected = "\n\n".join([*(shot(frames["train"].iloc[int(i.removeprefix("train-"))]) for i in ids),
                                would_recommend(test_row.text)])
        assert row["input"] == expected and ids[0] != ids[1]
    metrics = json.loads((evaluations[4096] / "metrics.json").read_text())
    assert metrics["fewshot"] == {"k": 2, "tasks": {"imdb": {"mean": 2.0, "min": 2}}}


@pytest.mark.slow  # evaluates the tiny model on real reviews: 20-60 s here
def test_shots_that_do_not_fit_are_dropped_from_the_front(evaluations):
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    full = {r["id"]: r["input"].split("\n\n") for r in rows_of(evaluations[4096])}
    kept = []
    for row in rows_of(evaluations[600]):
        parts, k = full[row["id"]], row["shots"]
        assert row["input"] == "\n\n".join(parts[2 - k:])  # the last k drawn shots, then the input
        if k:
            assert len(tok(row["input"]).input_ids) <= 600
        if k < 2:  # one shot more would not have fit
            assert len(tok("\n\n".join(parts[1 - k:])).input_ids) > 600
        kept.append(k)
    assert min(kept) < 2, "the 600-token limit should drop a shot on these reviews"
    metrics = json.loads((evaluations[600] / "metrics.json").read_text())
    assert metrics["fewshot"]["tasks"]["imdb"] == {"mean": sum(kept) / len(kept), "min": min(kept)}


@pytest.mark.slow  # evaluates the tiny model on real reviews: 20-60 s here
def test_an_example_is_never_among_its_own_shots(tmp_path, shared_data, frames):
    """Evaluated on train: the 3 rows drawn are also the whole shot pool, so each row's shots are the other two."""
    from flantune.cli import main

    out = tmp_path / "train"
    assert main([*BASE, f"data_dir={shared_data}", "eval.split=train", "data.max_eval_examples=3",
                 "data.max_train_examples=3", "seed=0", "data.eval_seed=0", "tasks.imdb.max_input_length=4096",
                 f"output_dir={out}"]) == 0
    rows = rows_of(out)
    train = frames["train"]
    answered = {r["id"]: shot(train.iloc[int(r["id"].removeprefix("train-"))]) for r in rows}
    assert len(answered) == 3
    for row in rows:
        parts = row["input"].split("\n\n")
        assert parts[-1] == would_recommend(train.iloc[int(row["id"].removeprefix("train-"))].text)
        assert set(parts[:-1]) == {t for i, t in answered.items() if i != row["id"]}


@pytest.mark.parametrize("options, words", [
    (["eval.fewshot=-1"], "eval.fewshot"),
    (["eval.templates=[would_recommend,nope]"], "no template of"),
])
def test_bad_values_are_refused(cli, tmp_path, shared_data, options, words):
    code, _, err = cli("eval", "model=tiny", "task=imdb", f"data_dir={shared_data}", f"output_dir={tmp_path / 'x'}",
                       *options)
    assert code == 2 and words in err


def test_fewshot_is_refused_when_training(cli, tmp_path, shared_data):
    code, _, err = cli("run", "model=tiny", "task=imdb", f"data_dir={shared_data}", f"output_dir={tmp_path / 'r'}",
                       "eval.fewshot=2")
    assert code == 2 and "base model" in err
