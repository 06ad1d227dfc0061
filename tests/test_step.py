"""What a step trains on (flantune.step) and the precision it trains in (flantune.modeling.Precision), each
decided once; the trained losses that follow from them are held by tests/test_mixture.py and test_engine.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flantune.config import load_config
from flantune.errors import FlantuneError
from flantune.mixture import TrainSet
from flantune.modeling import Precision, prepare_for_training, resolve_precision
from flantune.step import decide, micro_batches


def _train_set(examples: int, sampling: str = "random") -> TrainSet:
    rng = np.random.default_rng(0)
    lengths = np.stack([rng.integers(5, 100, examples), rng.integers(1, 30, examples)], 1)
    sizes = {"a": examples // 2, "b": examples - examples // 2}
    return TrainSet(dataset=None, offsets={"a": 0, "b": sizes["a"]}, sizes=sizes, rates={"a": 0.5, "b": 0.5},
                    counts=sizes, seed=0, sampling=sampling, lengths=lengths)


def test_a_step_holds_its_batches_on_every_process_and_divides_by_an_epochs_label_tokens_per_step():
    """Two processes of 3 batches of 8 examples, each batch 2 micro-batches of 4 (auto, for a grouped mixture):
    48 examples a step, so an epoch of 96 is 2 steps, and a step's normaliser is half the epoch's label tokens."""
    train_set = _train_set(96, "length_grouped")
    cfg = load_config(["task=[imdb,samsum]", "model=tiny", "train.batch_size=8", "train.grad_accum=3",
                       "train.sampling=length_grouped"])
    step = decide(cfg, train_set, processes=2, mixture=True)
    assert (step.unit, step.batch, step.micro_batches, step.micro_batch, step.grad_accum) == ("examples", 8, 2, 4, 3)
    assert (step.accumulation, step.global_micro_batch, step.global_batch) == (6, 8, 48)
    assert step.label_tokens == pytest.approx(train_set.lengths[:, 1].sum() / 2)
    record = json.loads(json.dumps(step.record()))  # as metrics.json holds it
    assert record["global_batch"] == 48 and record["label_tokens"] == pytest.approx(step.label_tokens)
    assert "2 micro-batches of 4" in step.describe() and "on 2 processes: 48 examples" in step.describe()
    cfg.train.loss_normalization = "batch"
    assert decide(cfg, train_set, processes=2, mixture=True).label_tokens is None  # each step's own count
    assert decide(cfg, train_set, processes=1, mixture=False).micro_batches == 1  # auto splits only a mixture


def test_one_rule_and_one_message_for_micro_batches_that_do_not_divide_the_batch():
    with pytest.raises(FlantuneError) as examples:
        load_config(["task=imdb", "model=tiny", "train.batch_size=8", "train.micro_batches=3"])  # before any data
    with pytest.raises(FlantuneError) as rows:
        micro_batches(3, 8, mixture=True, sampling="packed")  # the rows a packed batch takes, known with the data
    tail = ": each micro-batch must hold as many as the others. Set train.micro_batches to a divisor of 8, or auto."
    assert str(examples.value) == f"train.micro_batches=3 does not divide train.batch_size=8{tail}"
    assert str(rows.value) == \
        f"train.micro_batches=3 does not divide the 8 rows a batch packs into (train.packed_rows_per_batch){tail}"


def test_precision_is_decided_once_and_read_as_its_name():
    cfg = load_config(["task=imdb", "model=tiny", "precision=bf16"])
    with pytest.raises(FlantuneError, match="can't shard its master weights"):
        resolve_precision(cfg, "t5", sharded=True)
    cfg.train.optim = "adafactor"
    with pytest.raises(FlantuneError, match="train.optim=adafactor can't apply"):
        resolve_precision(cfg, "t5")
    auto = resolve_precision(load_config(["task=imdb", "model=tiny"]), "t5", sharded=True)
    assert auto in ((Precision.BF16_MIXED,) if torch.cuda.is_available() else (Precision.FP32,))  # never bf16
    assert json.dumps({"precision": Precision.BF16_MIXED}) == '{"precision": "bf16-mixed"}'
    assert f"precision {Precision.BF16}" == "precision bf16" and Precision.FP16 == "fp16"
    assert [p.autocast for p in Precision] == [{"bf16": False, "fp16": False}, {"bf16": False, "fp16": False},
                                               {"bf16": True, "fp16": False}, {"bf16": False, "fp16": True}]
    assert [p.master_weights for p in Precision] == [False, True, False, False]


def test_the_weights_take_the_precisions_dtype_whatever_the_checkpoint_holds(tmp_path):
    """A checkpoint saved in bf16 loads as bf16 (transformers' dtype=auto): precision=fp32 trains it in fp32, as
    it says, rather than bf16 weights with fp32 masters; precision=bf16 casts an fp32 model down."""
    from transformers import AutoModelForSeq2SeqLM

    from flantune.modeling import load_model

    load_model(load_config(["model=tiny"]), 0).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for precision, dtype in ((Precision.FP32, torch.float32), (Precision.BF16_MIXED, torch.float32),
                             (Precision.BF16, torch.bfloat16)):
        model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bf16")
        assert next(model.parameters()).dtype == torch.bfloat16
        model = prepare_for_training(model, precision, False)
        assert {p.dtype for p in model.parameters()} == {dtype}, precision
