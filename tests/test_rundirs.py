"""Nothing a user made is lost, nothing is mixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flantune import rundir
from flantune.config import load_config

# A run of a few seconds on the IMDB sample shipped with flantune.
SMALL = ["task=imdb", "model=tiny", "data_dir=@sample", "train.max_steps=2", "train.eval_steps=2",
         "data.max_train_examples=32", "data.max_eval_examples=8", "tasks.imdb.max_input_length=32"]


def test_resume_passes_over_a_checkpoint_cut_mid_write(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("run", *SMALL, "train.max_steps=4", f"output_dir={out}")
    assert code == 0, err
    state = out / "checkpoints" / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # as a kill while saving leaves it
    (out / rundir.METRICS).unlink()  # and the run never finished
    code, _, err = cli("run", *SMALL, "train.max_steps=4", f"output_dir={out}", "resume=true")
    assert code == 0, err
    assert "skipping checkpoint-4 (its trainer_state.json is cut short)" in err and "resuming from checkpoint-2" in err
    assert json.loads((out / rundir.METRICS).read_text())["train"]["resumed_from"].endswith("checkpoint-2")


def test_runs_of_different_seeds_are_evaluated_on_the_same_rows(cli, tmp_path):
    evals = []
    for seed in (1, 2):
        evals.append(tmp_path / f"seed{seed}")
        code, _, err = cli("eval", "model=tiny", "task=imdb", "data_dir=@sample", "data.max_eval_examples=10",
                           "tasks.imdb.max_input_length=32", f"seed={seed}", f"output_dir={evals[-1]}")
        assert code == 0, err
    ids = [[json.loads(line)["id"] for line in (e / "predictions" / "imdb.jsonl").open()] for e in evals]
    assert ids[0] == ids[1] and len(ids[0]) == 10
    code, _, err = cli("report", *map(str, evals), f"output_dir={tmp_path / 'report'}")
    assert code == 0, err


def test_resuming_a_run_made_before_eval_seed_keeps_its_evaluation_rows(tmp_path):
    """Before data.eval_seed, evaluation subsets were drawn with the run's seed: resuming such a run asks for it."""
    from omegaconf import OmegaConf

    from flantune.errors import FlantuneError

    out = tmp_path / "run"
    made = OmegaConf.to_container(load_config([*SMALL, "seed=3"]))
    del made["data"]["eval_seed"]
    out.mkdir()
    OmegaConf.save(OmegaConf.create(made), out / rundir.CONFIG)
    with pytest.raises(FlantuneError, match=r"data.eval_seed \(the run: 3, now: 0\)"):
        rundir.check(load_config([*SMALL, "seed=3", f"output_dir={out}", "resume=true"]), "imdb")
    assert rundir.check(load_config([*SMALL, "seed=3", "data.eval_seed=3", f"output_dir={out}", "resume=true"]),
                        "imdb") == out
