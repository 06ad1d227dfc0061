"""Data parallel on CPU: two processes (gloo) under torchrun or accelerate launch end where one process with
the same global batch ends. Batches are formed at the global size and split between the processes, so
both runs see the same examples in the same steps; what differs is the order of floating-point sums in
the gradient all-reduce, so losses agree to about 1e-7 and the predictions exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["task=imdb", "model=tiny", "train.max_steps=20", "train.eval_steps=10", "data.max_train_examples=320",
           "data.max_eval_examples=48", "tasks.imdb.max_input_length=64", "seed=3"]
TOLERANCE = 1e-5  # on losses (nats per token); classification metrics must be identical


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else \
        shutil.which(name)


def _run(launcher: list[str], out: Path, batch: int, shared_data: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "flantune", "run", *OPTIONS, f"train.batch_size={batch}",
                           f"data_dir={shared_data}", f"output_dir={out}"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data):
    return _run([sys.executable], tmp_path_factory.mktemp("one") / "run", 16, shared_data)


def _assert_same(one: dict, many: dict) -> None:
    assert many["train"]["processes"] == 2 and many["train"]["parallelism"] == "ddp"
    assert many["train"]["examples"] == one["train"]["examples"] == 320  # 20 steps x global batch 16
    a, b = one["tasks"]["imdb"], many["tasks"]["imdb"]
    assert a.keys() == b.keys()
    for key in a:
        tol = TOLERANCE if key == "loss" else 0.0
        assert b[key] == pytest.approx(a[key], abs=tol), key


def test_torchrun_two_processes_match_one(tmp_path, shared_data, single):
    many = _run([_bin("torchrun"), "--nproc_per_node=2", "--master_port=29533"], tmp_path / "run", 8, shared_data)
    _assert_same(single, many)


def test_accelerate_launch_two_processes_match_one(tmp_path, shared_data, single):
    config = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
    many = _run([_bin("accelerate"), "launch", "--config_file", str(config), "--main_process_port=29534"],
                tmp_path / "run", 8, shared_data)
    _assert_same(single, many)
