"""What a run says to its user: a progress bar at each evaluation, log lines with numbers as numbers and one
compact line per evaluation, several evaluations by default on a short run, and no warning or library
progress bar that flantune's own calls cause. Runs go through `python -m flantune`, as a user's do: stderr
is a pipe (not a terminal) and Python prints its warnings there as it would for them."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flantune.sources import sample_data_dir

# Each caused by a call of flantune's in the past: transformers' FutureWarnings about a deprecated keyword (scoring)
# and a deprecated property (peft's wrapping of the model), transformers' bar at each save_pretrained, and
# datasets' bar at each file it reads.
NOISE = ("past_key_values", "is_gradient_checkpointing", "Writing model shards", "Generating data split",
         "FutureWarning")
SHORT = ["task=imdb", "model=tiny", "train.max_steps=4", "train.logging_steps=2", "data.max_train_examples=32",
         "data.max_eval_examples=8", "tasks.imdb.max_input_length=64"]


def _flantune(tmp_path: Path, *args: str) -> tuple[str, str]:
    # A datasets cache of the test's own, so the data is read (and its bar would be drawn) as on a first run.
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}
    proc = subprocess.run([sys.executable, "-m", "flantune", *args], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """The IMDB sample at a path datasets has never read."""
    return Path(shutil.copytree(sample_data_dir(), tmp_path / "data"))


def _printed_dicts(stdout: str, first_key: str) -> list[dict]:
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.startswith(f"{{'{first_key}'")]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_short_run_shows_its_evaluations_in_numbers_without_noise(tmp_path, data_dir, method):
    out = tmp_path / "run"
    stdout, stderr = _flantune(tmp_path, "run", *SHORT, f"method={method}", f"data_dir={data_dir}",
                               f"output_dir={out}")
    for noise in NOISE:
        assert noise not in stderr, stderr
    # A bar for each evaluation, named for its split and task.
    assert "validation imdb" in stderr and "test imdb" in stderr

    # The default train.eval_steps (a fraction of the run) evaluates several times on a run this short.
    evaluations = _printed_dicts(stdout, "eval_score")
    assert len(evaluations) == 4, stdout
    for line in evaluations:  # the aggregate, the task's primary metric and its loss; no per-class values
        assert set(line) == {"eval_score", "eval_imdb/accuracy", "eval_imdb/loss", "epoch"}
        assert all(isinstance(v, (int, float)) for v in line.values()), line
    training = _printed_dicts(stdout, "loss")
    assert len(training) == 3 and all(isinstance(v, (int, float)) for line in training for v in line.values())

    # The log keeps every metric of every evaluation.
    history = json.loads((out / "log_history.json").read_text())
    logged = [entry for entry in history if "eval_score" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3, 4]
    assert all("eval_imdb/precision/negative" in entry and "eval_imdb/macro_f1" in entry for entry in logged)


@pytest.mark.slow  # a subprocess
def test_show_reads_its_data_without_a_library_bar(tmp_path, data_dir):
    stdout, stderr = _flantune(tmp_path, "show", "task=imdb", f"data_dir={data_dir}")
    assert "review_then_question" in stdout
    assert "Generating data split" not in stderr, stderr


@pytest.mark.parametrize("options, message", [
    (["train.eval_steps=1.5"], "Config key 'train.eval_steps' is 1.5; choose a number of steps (>= 1) or a fraction"),
    (["train.eval_steps=0"], "Config key 'train.eval_steps' is 0; choose a number of steps"),
    (["train.eval_steps=0.25", "train.save_steps=10"],
     "train.save_steps=10 with train.eval_steps=0.25, a fraction of the run's steps"),
])
def test_eval_steps_is_a_number_of_steps_or_a_fraction(cli, options, message):
    code, _, err = cli("config", *options)
    assert code == 2 and message in err, err


def test_scoring_calls_the_model_without_deprecated_keywords_and_reports_progress():
    # Outside the trainer every FutureWarning shows: scoring's calls of the model must raise none.
    import warnings

    from transformers import T5Config, T5ForConditionalGeneration

    from flantune import scoring
    from flantune.config import load_config
    from flantune.modeling import load_tokenizer

    tokenizer = load_tokenizer(load_config(["model=tiny"]))  # the FLAN-T5 tokenizer flantune ships
    model = T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_heads=2,
                                                num_layers=1, decoder_start_token_id=0, pad_token_id=0))
    inputs = tokenizer(["a good film", "a bad one", "fine"]).input_ids
    seen: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scoring.rank_choices(model, inputs, tokenizer(text_target=["yes", "no"]).input_ids, batch_size=2, pad_id=0,
                             device="cpu", progress=seen.append)
        scoring.generate(model, tokenizer, inputs, inputs, batch_size=2, max_new_tokens=3, num_beams=1, device="cpu",
                         progress=seen.append)
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert seen == [2, 1, 2, 1]  # each batch's examples, as a progress bar counts them
