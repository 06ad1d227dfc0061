"""train.early_stopping_patience: a run whose validation score can't improve stops after `patience` evaluations
without improvement, keeps its best checkpoint, says where and why in metrics.json and the summary, and a
resumed run keeps the patience count it had reached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

# A learning rate of 1e-12 leaves the weights as they were: every evaluation scores exactly as the first, which is
# no improvement. Evaluated every step, patience 2: step 1 is the best, steps 2 and 3 don't improve, so it stops
# at step 3 of 8.
STUCK = ["task=imdb", "model=tiny", "train.lr=1e-12", "train.max_steps=8", "train.eval_steps=1",
         "train.batch_size=8", "data.max_train_examples=64", "data.max_eval_examples=16",
         "tasks.imdb.max_input_length=64", "train.early_stopping_patience=2", "train.save_total_limit=null", "seed=2"]


def _run(cli, out: Path, shared_data: Path, *options: str) -> tuple[dict, str]:
    code, stdout, err = cli("run", *STUCK, *options, f"data_dir={shared_data}", f"output_dir={out}")
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text()), stdout


@pytest.mark.slow
def test_a_run_that_cant_improve_stops_early_and_says_where_and_why(cli, tmp_path, shared_data):
    out = tmp_path / "run"
    metrics, stdout = _run(cli, out, shared_data)
    stop = metrics["early_stopping"]
    assert stop["stopped_early"] and stop["stopped_at_step"] == 3 and stop["planned_steps"] == 8
    assert stop["patience"] == 2 and stop["threshold"] == 0.0
    assert "had not improved" in stop["reason"] and "for 2 evaluation(s)" in stop["reason"]
    assert metrics["train"]["steps"] == 3
    assert metrics["best_checkpoint"].endswith("checkpoint-1")  # the best is kept: the first evaluation
    assert "stopped early at step 3 of 8" in " ".join(stdout.split())

    # Resumed from its step-2 checkpoint (one evaluation without improvement counted), it stops at step 3
    # again: with the count lost it would need two more evaluations and stop at step 4.
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "metrics.json").unlink()
    shutil.rmtree(cut / "checkpoints" / "checkpoint-3")
    state = json.loads((cut / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["EarlyStopping"]["attributes"]["early_stopping_patience_counter"] == 1
    code, _, err = cli("run", *STUCK, f"data_dir={shared_data}", f"output_dir={cut}", "resume=true")
    assert code == 0, err
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["train"]["resumed_from"].endswith("checkpoint-2")
    assert resumed["early_stopping"]["stopped_at_step"] == 3


@pytest.mark.slow
def test_without_patience_nothing_stops_early(trained_run):
    assert json.loads((trained_run / "metrics.json").read_text())["early_stopping"] is None


def test_patience_needs_evaluations_during_training(cli, tmp_path, shared_data):
    code, _, err = cli("run", "task=imdb", "model=tiny", "train.max_steps=10", "train.eval_steps=10",
                       "train.early_stopping_patience=1", f"data_dir={shared_data}", f"output_dir={tmp_path / 'r'}")
    assert code == 2 and "evaluates only at the end" in " ".join(err.split()), err
    code, _, err = cli("run", "task=imdb", "model=tiny", "train.early_stopping_patience=-1",
                       f"data_dir={shared_data}", f"output_dir={tmp_path / 'r'}")
    assert code == 2 and "must be >= 0" in err, err


def test_a_run_saved_before_early_stopping_and_the_new_methods_reads_as_it_ran():
    from omegaconf import OmegaConf

    from flantune.config import load_config, to_yaml
    from flantune.versions import upgrade_config

    now = load_config(["task=imdb", "model=tiny"])
    saved = OmegaConf.create(to_yaml(now))
    for key in ("qlora", "adalora", "ia3", "prompt_tuning"):
        saved.pop(key)
    saved.train.pop("early_stopping_patience")
    saved.train.pop("early_stopping_threshold")
    assert upgrade_config(saved, 2) == now  # resume=true compares the two key by key
