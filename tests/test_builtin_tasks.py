"""The contract every built-in task keeps, checked on the real data mirror."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from flantune.data import column, load_rows, render_row
from flantune.sources import mirror_files

BUILTIN = ["emotion", "imdb", "mlqa_hi_en", "paws", "paws_paraphrase", "samsum", "squad", "squad_qg"]
# The mirror lacks squad train, paws train and mlqa test: those roles are carved from a split that is
# there with the hub's slicing syntax, as a user would (as the errors suggest: no two roles share rows).
CARVED = {
    "squad": {"train": "validation[:80%]", "validation": "validation[80%:90%]", "test": "validation[90%:]"},
    "squad_qg": {"train": "validation[:80%]", "validation": "validation[80%:90%]", "test": "validation[90%:]"},
    "paws": {"train": "validation[:80%]", "validation": "validation[80%:]"},
    "paws_paraphrase": {"train": "validation[:80%]", "validation": "validation[80%:]"},
    "mlqa_hi_en": {"train": "validation[:80%]", "test": "validation[80%:]"},
}


def test_all_builtin_tasks_are_registered_through_the_entry_point(registry):
    assert sorted(registry.tasks) == BUILTIN
    assert all(registry.tasks[n].origin == "built-in" for n in BUILTIN)
    assert registry.problems == []


@pytest.mark.parametrize("name", BUILTIN)
def test_task_has_three_templates_and_a_hub_source(registry, name):
    task = registry.tasks[name]
    assert len(task.templates) >= 3
    assert task.source.hub and task.source.mirror
    if task.is_classification:
        for t in task.templates:  # classification templates list the options
            rendered = render_row(task, {task.label_column: next(iter(task.choices)), "text": "x",
                                         "sentence1": "a", "sentence2": "b"}, t)["input"]
            assert all(c in rendered for c in task.choice_texts), (t.name, rendered)


@pytest.mark.parametrize("name", BUILTIN)
def test_task_loads_real_rows_and_renders_every_template(registry, shared_data, name):
    task = registry.tasks[name].with_overrides({"splits": CARVED.get(name, {})})
    for role in ("train", "validation", "test"):
        rows = load_rows(task, role, shared_data, max_examples=200, seed=1)
        assert len(rows) > 0
        for i in range(0, len(rows), 20):
            for template in task.templates:
                ex = render_row(task, rows[i], template)
                assert ex["input"].strip() and ex["target"].strip() and ex["references"]
                if task.kind == "extractive_qa":  # gold answers are spans of the context
                    assert all(ref in rows[i]["context"] for ref in ex["references"])


@pytest.mark.parametrize("name", ["emotion", "imdb", "paws"])
def test_choices_cover_every_label_in_the_data(registry, shared_data, name):
    task = registry.tasks[name]
    files = mirror_files(task, shared_data)
    assert files
    for split, path in files.items():
        labels = set(pq.read_table(path, columns=[task.label_column]).column(0).to_pylist())
        assert labels == set(task.choices), (split, labels)


def test_holdout_keeps_validation_out_of_training(registry, shared_data):
    imdb = registry.tasks["imdb"]
    train = set(column(load_rows(imdb, "train", shared_data), "_id"))
    validation = set(column(load_rows(imdb, "validation", shared_data), "_id"))
    assert len(validation) == 1000 and len(train) == 24000 and not train & validation
    mlqa = registry.tasks["mlqa_hi_en"]  # MLQA's train is carved out of validation the same way
    train = set(column(load_rows(mlqa, "train", shared_data), "_id"))
    validation = set(column(load_rows(mlqa, "validation", shared_data), "_id"))
    assert (len(train), len(validation)) == (407, 100) and not train & validation


def test_filter_keeps_only_paraphrase_pairs(registry, shared_data):
    task = registry.tasks["paws_paraphrase"]
    rows = load_rows(task, "validation", shared_data)
    assert len(rows) == 3539  # PROVENANCE.md: 3,539 of the 8,000 validation pairs are label 1
    assert set(column(rows, "label").tolist()) == {1}
