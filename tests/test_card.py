"""The model card a run writes (model/README.md), read back with huggingface_hub: its front matter, its
model-index against metrics.json, the intervals of the run's report, its limitations, and its snippet, run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from flantune.card import write_card


def _card(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def _scores(metrics: dict) -> dict[tuple[str, str, str], float]:
    """metrics.json's scores as the card keeps them: per task, split and metric, less per-class ones and the loss."""
    return {(task, metrics["split"], k): v for task, scores in metrics["tasks"].items() for k, v in scores.items()
            if "/" not in k and k != "loss"}


def _run_snippet(card: ModelCard) -> str:
    snippet = re.search(r"```python\n(.*?)\n```", card.text, flags=re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(snippet, {})
    return printed.getvalue()


@pytest.mark.slow
def test_a_runs_card_holds_its_metrics_and_its_reports_intervals(trained_run):
    card = _card(trained_run / "model")
    data = card.data
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert data.library_name == "transformers" and data.pipeline_tag == "text2text-generation"
    assert data.base_model is None  # tiny has random weights: no hub model to name
    assert data.datasets == ["Samsung/samsum", "stanfordnlp/imdb"] and data.tags == ["flantune", "imdb", "samsum"]
    assert data.license is None and "No license is set" in card.text
    got = {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == _scores(metrics) and len(got) == 6  # accuracy, macro_f1; rouge1, rouge2, rougeL, rougeLsum
    assert {r.task_type for r in data.eval_results} == {"text-classification", "text2text-generation"}
    # compare=true: the report's gain over the base model and its interval, per score
    gain = json.loads((trained_run / "report" / "report.json").read_text())["tasks"]["imdb"]["differences"]
    name = next(n for n in gain if n.startswith("fine-tuned: "))
    accuracy = gain[name]["accuracy"]
    row = (f"| imdb | `test` | 40 | accuracy | {metrics['tasks']['imdb']['accuracy']:.2f} | "
           f"{accuracy['reference']:.2f} | {accuracy['diff']:+.2f} | "
           f"[{accuracy['ci_low']:+.2f}, {accuracy['ci_high']:+.2f}]")
    assert row in card.text
    assert "**Random initialisation.**" in card.text and "at most 40 examples a task" in card.text
    assert "| imdb | stanfordnlp/imdb | `train` | review_then_question" in card.text
    assert f"| {metrics['mixture']['examples_seen']['imdb']} |" in card.text
    assert f"- hardware: 1 x {metrics['train']['device']}\n" in card.text and metrics["train"]["device"] == "cpu"
    assert "- steps: 4 of 8 examples (4 a process x 2 accumulated x 1 processes)" in card.text


@pytest.mark.slow
def test_the_cards_snippet_runs(trained_run):
    card = _card(trained_run / "model")
    assert f"flantune predict model={trained_run.resolve()} task=" in card.text
    assert _run_snippet(card).strip() is not None  # it loads the model and generates without an error


@pytest.mark.slow
def test_a_lora_runs_cards(cli, tmp_path, shared_data):
    out = tmp_path / "lora"
    code, _, err = cli("run", "task=imdb", "model=tiny", "method=lora", "merge=true", "train.max_steps=2",
                       "train.eval_steps=2", "data.max_train_examples=32", "data.max_eval_examples=8",
                       "tasks.imdb.max_input_length=64", f"data_dir={shared_data}", f"output_dir={out}")
    assert code == 0, err
    adapter, merged = _card(out / "model"), _card(out / "merged")
    assert adapter.data.library_name == "peft" and merged.data.library_name == "transformers"
    assert "AutoPeftModelForSeq2SeqLM" in adapter.text and "AutoPeftModelForSeq2SeqLM" not in merged.text
    assert "a LoRA adapter (r=16" in adapter.text and "95% interval" not in adapter.text  # no report yet
    metrics = json.loads((out / "metrics.json").read_text())
    for card in (adapter, merged):
        assert {(r.dataset_name, r.dataset_split, r.metric_type): r.metric_value
                for r in card.data.eval_results} == _scores(metrics)
    _run_snippet(adapter)  # the adapter on its saved random base
    _run_snippet(merged)
    # The card is written before metrics.json, which stays the run's last file
    assert (out / "model" / "README.md").stat().st_mtime_ns <= (out / "metrics.json").stat().st_mtime_ns


@pytest.mark.slow
def test_license_and_unspellable_answers(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "report"))
    # Half of samsum's gold summaries in Devanagari, which T5's vocabulary lacks
    path = run / "predictions" / "samsum.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[::2]:
        row["target"] = "नमस्ते दुनिया"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # A base model in a local folder whose card names its license
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.path, cfg.model.random_init = str(base), False
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    write_card(run)
    card = _card(run / "model")
    assert card.data.license == "mit" and "No license is set" not in card.text
    assert card.data.base_model is None  # a folder on this machine is no hub id
    assert "**samsum: characters its vocabulary lacks.** 50% of its gold answers hold Devanagari letters" in card.text
    assert "imdb: characters" not in card.text and "Random initialisation" not in card.text
    assert "95% interval" not in card.text  # no report given: scores alone


def test_a_card_says_which_tasks_its_base_model_was_trained_on(trained_run, tmp_path):
    """imdb and samsum declare (seen_in_training) that FLAN-T5 was trained on their train splits: a run of
    google/flan-t5-base says so under limitations, citing the FLAN collection's rows; the tiny model does not."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "report"))
    assert "the base model was trained on it" not in _card(run / "model").text
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["model"].update(name="flan-t5-base", path="google/flan-t5-base", random_init=False)
    (run / "metrics.json").write_text(json.dumps(metrics))
    write_card(run)
    text = _card(run / "model").text
    for task in ("imdb", "samsum"):
        line = next(x for x in text.splitlines() if x.startswith(f"- **{task}: the base model was trained on it**"))
        assert "(train split; " in line and "flan_collection_info.csv" in line and "not zero-shot" in line
