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


def _run(launcher: list[str], out: Path, batch: int, shared_data: Path, *more: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "flantune", "run", *OPTIONS, *more, f"train.batch_size={batch}",
                           f"data_dir={shared_data}", f"output_dir={out}"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data):
    return _run([sys.executable], tmp_path_factory.mktemp("one") / "run", 16, shared_data)


def _assert_same(one: dict, many: dict, examples: int | None = 320) -> None:
    assert many["train"]["processes"] == 2 and many["train"]["parallelism"] == "ddp"
    assert many["train"]["examples"] == one["train"]["examples"]
    assert examples is None or one["train"]["examples"] == examples  # 20 steps x global batch 16
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


def test_sharding_configs_load_and_fit_every_t5_family_model():
    """FSDP and DeepSpeed need GPUs (accelerate runs neither on CPU), so what can be checked here is that
    accelerate reads the shipped files as intended and that FSDP's wrap policy finds a block class in T5,
    mT5 and umT5 models alike."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.dataclasses import get_module_class_from_name
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration, \
        UMT5Config, UMT5ForConditionalGeneration

    fsdp = load_config_from_file(str(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    names = fsdp.fsdp_config.get("fsdp_transformer_layer_cls_to_wrap")
    small = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    for config, model_class in ((T5Config, T5ForConditionalGeneration), (MT5Config, MT5ForConditionalGeneration),
                                (UMT5Config, UMT5ForConditionalGeneration)):
        model = model_class(config(**small))
        for name in (names.split(",") if names else model._no_split_modules):
            assert get_module_class_from_name(model, name) is not None, (model_class.__name__, name)

    zero3 = load_config_from_file(str(REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml"))
    assert zero3.distributed_type == DistributedType.DEEPSPEED and zero3.deepspeed_config["zero_stage"] == 3
    # a fixed value here would make the trainer refuse any train.grad_accum or max_grad_norm that differs
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & zero3.deepspeed_config.keys()


def test_packed_rows_split_between_two_processes_match_one(tmp_path, shared_data):
    """train.sampling=packed: the encoder runs outside DDP's forward (flantune.packing.forward); its gradients
    must still be all-reduced. Rows hold different numbers of label tokens, so the loss is only the one-process
    loss if each process's share of the step's tokens is weighed in."""
    packed = ["train.sampling=packed", "train.packed_input_length=256"]
    one = _run([sys.executable], tmp_path / "one", 4, shared_data, *packed)
    many = _run([_bin("torchrun"), "--nproc_per_node=2", "--master_port=29535"], tmp_path / "many", 2, shared_data,
                *packed)
    assert one["train"]["examples"] > 20 * 4 * 2  # several examples a row
    _assert_same(one, many, examples=None)
