"""Answers of any length: a classification task's label length comes from its longest choice, a choice that
can't fit is an error before training, and rank scoring compares choices of different token lengths by a
declared rule (eval.rank_score), reporting the others beside it. The plugin task examples/plugin_folder/
ag_news.yaml has choices of 2 and 6 tokens (end-of-sequence included), one of them with a '/'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flantune.data import load_rows
from flantune.features import tokenize
from flantune.registry import discover
from flantune.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
PLUGINS = REPO / "examples" / "plugin_folder"
CHOICES = ["World", "Sports", "Business", "Science/Technology"]


def test_rank_score_rules_on_hand_computed_scores():
    from flantune.scoring import rank_score

    # Log-likelihoods of a 2-token choice (5 bytes) and a 6-token one (18 bytes), end-of-sequence included.
    sums = np.array([[-2.0, -4.5], [-1.0, -9.0]])
    ids = [[10, 1], [11, 12, 13, 14, 15, 1]]
    texts = ["World", "Science/Technology"]
    np.testing.assert_allclose(rank_score(sums, ids, texts, "sum"), sums)
    per_token = rank_score(sums, ids, texts, "per_token")
    np.testing.assert_allclose(per_token, [[-1.0, -0.75], [-0.5, -1.5]])
    np.testing.assert_allclose(rank_score(sums, ids, texts, "per_byte"), [[-0.4, -0.25], [-0.2, -0.5]])
    # Summed, the short choice wins both rows; per token, the long one wins the first (0.75 a token beats 1.0).
    assert sums.argmax(1).tolist() == [0, 0] and per_token.argmax(1).tolist() == [1, 0]


def _target_row(stdout: str) -> list[str]:
    """The cells of the length table's target row: target | p50 | p95 | max | limit | truncated | <unk> share."""
    cells = ([c.strip() for c in line.split("│")[1:-1]] for line in stdout.splitlines())
    return next(row for row in cells if row and row[0] == "target")


def test_a_classification_label_holds_its_longest_choice_and_end_of_sequence(cli, shared_data):
    code, out, err = cli("show", "task=ag_news", f"tasks_dir={PLUGINS}", f"data_dir={shared_data}")
    assert code == 0, err
    # target | p50 | p95 | max | limit | truncated: the limit is the longest choice, 5 tokens and </s>, none cut
    assert _target_row(out)[4:6] == ["6", "0.0%"]
    task = discover(PLUGINS).get("ag_news")
    tokenizer = load_tokenizer(None)
    features = tokenize(task, load_rows(task, "test", shared_data, max_examples=200), tokenizer, role="test",
                        template_seed=0)
    longest = [labels for labels, target in zip(features["labels"], features["target"]) if target == CHOICES[3]]
    assert longest and all(labels == tokenizer(text_target=CHOICES[3]).input_ids for labels in longest)
    assert len(longest[0]) == 6 and longest[0][-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("key", ["max_target_length", "max_new_tokens"])
def test_a_choice_that_cannot_fit_is_an_error_before_training(key, cli, tmp_path, shared_data):
    out = tmp_path / "run"
    code, _, err = cli("run", "task=ag_news", "model=tiny", f"tasks_dir={PLUGINS}", f"data_dir={shared_data}",
                       f"tasks.ag_news.{key}=4", "train.max_steps=1", "data.max_train_examples=16",
                       "data.max_eval_examples=16", f"output_dir={out}")
    assert code == 2
    assert f"choice 'Science/Technology' is 6 tokens" in err and f"{key}: 4" in err and "at least 6" in err
    assert "Traceback" not in err and not out.exists()


def test_rank_rules_are_reported_side_by_side_and_a_class_with_a_slash_goes_end_to_end(cli, tmp_path, shared_data):
    common = ("task=ag_news", "model=tiny", f"tasks_dir={PLUGINS}", f"data_dir={shared_data}",
              "data.max_eval_examples=48")
    metrics = {}
    for rule in ("sum", "per_token"):
        code, _, err = cli("eval", *common, f"eval.rank_score={rule}", f"output_dir={tmp_path / rule}")
        assert code == 0, err
        metrics[rule] = json.loads((tmp_path / rule / "metrics.json").read_text())["tasks"]["ag_news"]
    for ranked, other in (("sum", "per_token"), ("per_token", "sum")):
        m = metrics[ranked]
        # the rule eval.rank_score names gives the plain keys; every rule gets its own, the same in either run
        for key in ("accuracy", "macro_f1", "recall/Science/Technology", "support/Science/Technology"):
            assert m[f"{ranked}:{key}"] == m[key] and m[f"{other}:{key}"] == metrics[other][key]
        assert m["per_byte:accuracy"] == metrics[other]["per_byte:accuracy"]
        assert sum(m[f"support/{c}"] for c in CHOICES) == 48
        rows = [json.loads(line) for line in (tmp_path / ranked / "predictions" / "ag_news.jsonl").open()]
        assert all(r["prediction"] == max(r["scores"], key=r["scores"].get) for r in rows)
    # A report rebuilt from the saved predictions lists the class whose name has a '/' as one class.
    code, _, err = cli("report", tmp_path / "sum", tmp_path / "per_token", f"output_dir={tmp_path / 'report'}")
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())["tasks"]["ag_news"]
    assert all(list(per_class) == CHOICES for per_class in report["per_class"].values())
    assert "| Science/Technology |" in (tmp_path / "report" / "report.md").read_text()


def test_choices_of_one_token_length_report_one_rule(cli, tmp_path, shared_data):
    code, _, err = cli("eval", "task=rotten_tomatoes", "model=tiny", f"tasks_dir={PLUGINS}", f"data_dir={shared_data}",
                       "data.max_eval_examples=16", f"output_dir={tmp_path / 'eval'}")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["tasks"]["rotten_tomatoes"]
    assert "accuracy" in metrics and not any(":" in key for key in metrics)
