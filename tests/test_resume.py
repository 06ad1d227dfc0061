"""A run killed with SIGKILL mid-training and resumed ends with the same metrics as one that was never
interrupted (CPU, tiny model, same seed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# 160 training examples in batches of 16: 10 steps an epoch, so the kill at step 12 falls mid-way
# through the second epoch and the resumed run must rebuild that epoch's batch order.
OPTIONS = ["task=imdb", "model=tiny", "train.max_steps=20", "train.eval_steps=6", "train.logging_steps=2",
           "data.max_train_examples=160", "data.max_eval_examples=16", "tasks.imdb.max_input_length=64",
           "seed=3"]
# The same for a mixture of three tasks of different kinds: 3 x 55 examples, 10 steps an epoch.
MIXTURE = ["task=[imdb,squad,samsum]", "mixing.scheme=equal", "model=tiny", "train.max_steps=20",
           "train.eval_steps=6", "train.logging_steps=2", "data.max_train_examples=55", "data.max_eval_examples=8",
           "seed=3", "tasks.squad.splits.train=validation[:80%]", "tasks.squad.splits.validation=validation[80%:90%]",
           "tasks.squad.splits.test=validation[90%:]", "tasks.squad.max_new_tokens=6", "tasks.samsum.max_new_tokens=6",
           *[f"tasks.{t}.max_input_length=64" for t in ("imdb", "squad", "samsum")]]
KILLED_AT = 12


def _flantune(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "flantune", "run", *args]
    if wait:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _log(out: Path) -> dict[tuple, float]:
    """(step, name) -> the training loss and every validation loss logged."""
    history = json.loads((out / "log_history.json").read_text())
    return {(h["step"], k): v for h in history for k, v in h.items() if k == "loss" or k.endswith("/loss")}


@pytest.mark.parametrize("options", [OPTIONS, MIXTURE], ids=["single-task", "mixture"])
@pytest.mark.slow
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, shared_data, options):
    data = f"data_dir={shared_data}"
    straight = tmp_path / "straight"
    _flantune(*options, data, f"output_dir={straight}")

    killed = tmp_path / "killed"
    proc = _flantune(*options, data, f"output_dir={killed}", wait=False)
    marker = killed / "checkpoints" / f"checkpoint-{KILLED_AT}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert marker.exists() and proc.poll() is None, f"the run ended before it could be killed at step {KILLED_AT}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()  # it really died before finishing

    resumed = _flantune(*options, data, f"output_dir={killed}", "resume=true")
    assert f"checkpoint-{KILLED_AT}" in json.loads((killed / "metrics.json").read_text())["train"]["resumed_from"]

    a = json.loads((straight / "metrics.json").read_text())["tasks"]
    b = json.loads((killed / "metrics.json").read_text())["tasks"]
    assert a.keys() == b.keys()
    for task in a:
        assert a[task].keys() == b[task].keys()
        for key in a[task]:
            # the same float32 operations in the same order on the same machine (the optimizer, scheduler and
            # random states reload exactly): equal but for the last bits of values up to ~10
            assert b[task][key] == pytest.approx(a[task][key], abs=1e-6), (task, key)
    # The steps after the kill trained on the same batches: same losses, step by step.
    la, lb = _log(straight), _log(killed)
    after = [k for k in la if k[0] > KILLED_AT]
    assert after and all(lb[k] == pytest.approx(la[k], abs=1e-6) for k in after)
    assert "run directory" in resumed.stdout


def test_resume_refuses_a_changed_config(tmp_path, cli, shared_data):
    from flantune.config import load_config, to_yaml

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(to_yaml(load_config([*OPTIONS, "train.lr=0.01"])))
    code, _, err = cli("run", *OPTIONS, f"data_dir={shared_data}", f"output_dir={out}", "resume=true")
    assert code == 2 and "resume=true continues" in err and "train.lr (the run: 0.01, now: 0.001)" in err
    (out / "config.yaml").write_text("task: imdb\n")  # not a flantune config: another tool's file
    code, _, err = cli("run", *OPTIONS, f"data_dir={shared_data}", f"output_dir={out}", "resume=true")
    assert code == 2 and "is not a flantune run directory" in err


def test_resuming_a_run_made_before_a_key_asks_for_its_own_behaviour(tmp_path):
    """A run whose config predates train.loss_normalization trained on each step's token mean, a packed one
    before train.packed_rows_per_batch took train.batch_size rows a batch, and one before train.micro_batches
    took one forward pass a step: resuming it says which values keep that, instead of going on under the new
    defaults; given them, it resumes."""
    from omegaconf import OmegaConf

    from flantune import rundir
    from flantune.config import load_config
    from flantune.errors import FlantuneError

    out = tmp_path / "run"
    made = OmegaConf.to_container(load_config(["task=imdb", "model=tiny", "train.sampling=packed", f"output_dir={out}"]))
    for key in ("loss_normalization", "packed_rows_per_batch", "micro_batches"):
        del made["train"][key]
    out.mkdir()
    OmegaConf.save(OmegaConf.create(made), out / "config.yaml")
    options = ["task=imdb", "model=tiny", "train.sampling=packed", f"output_dir={out}", "resume=true"]
    with pytest.raises(FlantuneError) as refused:
        rundir.check(load_config(options), "imdb")
    message = str(refused.value)
    assert "train.loss_normalization (the run: batch, now: tokens)" in message
    assert "train.packed_rows_per_batch (the run: 16, now: None)" in message
    assert "micro_batches" not in message  # auto is one forward pass a step for a single task
    resumed = load_config([*options, "train.loss_normalization=batch", "train.packed_rows_per_batch=16"])
    assert rundir.check(resumed, "imdb") == out
    mixture = ["task=[imdb,emotion]", "model=tiny", f"output_dir={tmp_path / 'mix'}"]
    made = OmegaConf.to_container(load_config(mixture))
    del made["train"]["micro_batches"]
    (tmp_path / "mix").mkdir()
    OmegaConf.save(OmegaConf.create(made), tmp_path / "mix" / "config.yaml")
    with pytest.raises(FlantuneError, match=r"train.micro_batches \(the run: 1, now: auto\)"):
        rundir.check(load_config([*mixture, "resume=true"]), "imdb+emotion")
    given = load_config([*mixture, "resume=true", "train.micro_batches=1"])
    assert rundir.check(given, "imdb+emotion") == tmp_path / "mix"
