"""train.sampling=packed: packed rows train exactly as the same examples padded one per row, every example
of an epoch lands in one row, rows respect their lengths, and a run trains on packed rows end to end."""

from __future__ import annotations

import copy
import json

import datasets
import numpy as np
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from flantune import packing
from flantune.errors import FlantuneError
from flantune.modeling import prepare_for_training

from tolerances import assert_close, reordered


def _tiny(seed=0, fast=True):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=300, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                   attn_implementation="eager")
    model = T5ForConditionalGeneration(cfg)
    return prepare_for_training(model, "fp32", False) if fast else model


def _examples(lengths, seed=0):
    g = np.random.default_rng(seed)
    return datasets.Dataset.from_dict({
        "input_ids": [g.integers(2, 300, n).tolist() + [1] for n, _ in lengths],
        "labels": [g.integers(2, 300, m).tolist() + [1] for _, m in lengths],
    })


def _padded(ds):
    """The examples one per row, padded as DataCollatorForSeq2Seq pads them."""
    E = max(len(x) for x in ds["input_ids"])
    D = max(len(x) for x in ds["labels"])
    ids = torch.tensor([x + [0] * (E - len(x)) for x in ds["input_ids"]])
    mask = torch.tensor([[1] * len(x) + [0] * (E - len(x)) for x in ds["input_ids"]])
    labels = torch.tensor([x + [-100] * (D - len(x)) for x in ds["labels"]])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _one_shape(lengths, input_length, label_length):
    return packing.RowShapes([(input_length, label_length)], np.zeros(len(lengths), dtype=np.int64))


def _packed(ds, input_length, label_length):
    lengths = np.array([[len(a), len(b)] for a, b in zip(ds["input_ids"], ds["labels"])])
    plan = packing.PackedPlan(lambda epoch: np.arange(len(ds)), lengths, _one_shape(lengths, input_length, label_length))
    rows = packing.PackedRows(ds, plan, pad_token_id=0, decoder_start_token_id=0)
    return packing.collate([rows[i] for i in range(len(rows))])


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = packing.forward(model, batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


# Lengths over T5's position buckets (distances up to 16 here), and a row whose inputs fill it exactly: its
# padded decoder positions then have no padded input to attend to.
@pytest.mark.parametrize("input_length,label_length", [(64, 24), (48, 24), (29, 16)])
@pytest.mark.parametrize("fast", [True, False], ids=["flantune-attention", "eager"])
def test_packed_rows_give_the_loss_and_gradients_of_the_unpacked_batch(input_length, label_length, fast):
    ds = _examples([(12, 5), (19, 3), (8, 9), (15, 2), (3, 4)])
    model = _tiny(fast=fast)
    packed = _packed(ds, input_length, label_length)
    assert packed["input_ids"].shape[0] < len(ds)  # several examples share a row
    assert packed["input_ids"].shape[1:] == (input_length,) and packed["labels"].shape[1:] == (label_length,)
    loss, grads = _loss_and_grads(model, _padded(ds))
    packed_loss, packed_grads = _loss_and_grads(copy.deepcopy(model), packed)
    # rows of other shapes: the 2+2 layers' sums (up to d_ff=128 terms), forward and backward, in another order
    assert packed_loss == pytest.approx(loss, rel=reordered(128, depth=8))
    for name, grad in grads.items():
        assert_close(packed_grads[name], grad, reordered(128, depth=8), name)


def test_packed_rows_run_the_encoder_under_the_models_autocast():
    """accelerate's bf16-mixed wraps the model's forward in autocast: the encoder must run inside that forward
    (it ran beside it, in fp32, while the decoder ran in bf16)."""
    ds = _examples([(12, 5), (19, 3), (8, 9)])
    model, plain = _tiny(fast=True), _tiny(fast=True)
    for m in (model, plain):
        m.forward = torch.autocast("cpu", dtype=torch.bfloat16)(m.forward)  # what accelerate's prepare_model does
    seen = {}
    for stack in ("encoder", "decoder"):
        q = getattr(model, stack).block[0].layer[0].SelfAttention.q
        q.register_forward_hook(lambda module, args, out, stack=stack: seen.update({stack: out.dtype}))
    packed_loss = packing.forward(model, _packed(ds, 64, 24)).loss
    assert seen == {"encoder": torch.bfloat16, "decoder": torch.bfloat16}
    assert packed_loss.item() == pytest.approx(plain(**_padded(ds)).loss.item(), rel=2e-2)  # bf16's rounding


def test_a_row_holds_each_examples_tokens_in_order_with_its_own_decoder_start():
    ds = _examples([(4, 2), (2, 3)])
    row = _packed(ds, 16, 8)
    ids, labels = ds["input_ids"], ds["labels"]
    first, second = (0, 1) if row["input_ids"][0, 0] == ids[0][0] else (1, 0)
    assert row["input_ids"][0].tolist() == ids[first] + ids[second] + [0] * (16 - len(ids[0]) - len(ids[1]))
    assert row["labels"][0].tolist() == labels[first] + labels[second] + [-100] * (8 - 7)
    assert row["decoder_input_ids"][0].tolist() == [0] + labels[first][:-1] + [0] + labels[second][:-1] + [0]
    assert row["input_segment_ids"][0].tolist()[:len(ids[first]) + 1] == [1] * len(ids[first]) + [2]
    assert row["attention_mask"][0].sum() == len(ids[0]) + len(ids[1])
    assert packing.example_count(row) == 2


def _lognormal_lengths(n, seed=0):
    g = np.random.default_rng(seed)
    inputs = np.clip(g.lognormal(4.8, 0.6, n).astype(int), 5, 512)
    labels = np.clip((inputs * g.uniform(0.05, 0.4, n)).astype(int), 2, 94)
    return np.stack([inputs, labels], 1)


def test_an_epoch_packs_every_example_once_within_the_row_lengths():
    lengths = _lognormal_lengths(5000)
    E, D = packing.row_lengths(lengths)
    assert E == 512 and D >= 96 and D % 8 == 0
    stream = lambda epoch: np.random.default_rng([3, epoch]).permutation(len(lengths))
    plan = packing.PackedPlan(stream, lengths, _one_shape(lengths, E, D), seed=1)
    first = [plan.row(i) for i in range(plan.rows_per_epoch)]
    assert sorted(np.concatenate(first).tolist()) == list(range(len(lengths)))
    used = np.array([lengths[r].sum(axis=0) for r in first])
    assert (used[:, 0] <= E).all() and (used[:, 1] <= D).all()
    pad = 1 - lengths.sum() / (len(first) * (E + D))
    assert pad < 0.06  # one row per example would pad 68%
    # the same seed and epoch give the same rows, epoch 1 is another packing
    again = packing.PackedPlan(stream, lengths, _one_shape(lengths, E, D), seed=1)
    assert all(np.array_equal(again.row(i), first[i]) for i in range(len(first)))
    n = plan.rows_per_epoch
    assert not all(np.array_equal(plan.row(n + i), first[i]) for i in range(10))


def test_row_lengths_that_cut_an_example_are_refused_with_the_fix():
    lengths = np.array([[300, 20], [40, 90]])
    assert packing.row_lengths(lengths // 10, None, None)[0] == packing.MIN_ROW  # short inputs share longer rows
    with pytest.raises(FlantuneError, match=r"train.packed_input_length=256 .* longest training input \(300"):
        packing.row_lengths(lengths, 256, None)
    with pytest.raises(FlantuneError, match=r"packed_label_length=96 or more"):
        packing.row_lengths(lengths, None, 64)
    # the longest input rounded up to 8; 300 + 40 inputs can't share a row of 304, so two rows whatever the
    # label length: the shortest that holds the 90-token label pads least
    assert packing.row_lengths(lengths, 304, None) == (304, 96)
    # a given length holds for every task, and is checked against the longest example of all of them
    with pytest.raises(FlantuneError, match=r"longest training input \(300"):
        packing.row_shapes(np.array([[30, 2], [300, 20]]), np.array([0, 1]), 256, None)


def _row_tokens(lengths, E, D):
    return len(packing.pack_rows(lengths, np.arange(len(lengths)), E, D)) * (E + D)


def test_the_default_label_length_pads_least_of_those_tried():
    lengths = _lognormal_lengths(3000, seed=2)
    E, D = packing.row_lengths(lengths)
    share = packing._round_up(E * lengths[:, 1].sum() / lengths[:, 0].sum())
    longest = packing._round_up(lengths[:, 1].max())
    chosen = _row_tokens(lengths, E, D)
    for other in {longest, share, D + 8, D - 8} - {D}:
        if other >= longest:
            assert chosen <= _row_tokens(lengths, E, other), other


def test_each_task_of_a_mixture_packs_into_rows_of_its_own_label_length():
    g = np.random.default_rng(0)
    summaries = _lognormal_lengths(2000)
    labels_of_two = np.stack([np.clip(g.lognormal(5, 0.5, 3000).astype(int), 5, 500), g.integers(2, 4, 3000)], 1)
    lengths = np.concatenate([summaries, labels_of_two, labels_of_two[:500]])
    tasks = np.repeat([0, 1, 2], [2000, 3000, 500])
    shapes = packing.row_shapes(lengths, tasks)
    # tasks 1 and 2 have the same lengths, so the same rows; task 0's long labels rows of their own
    assert len(shapes.shapes) == 2 and shapes.kind[2000] == shapes.kind[-1] != shapes.kind[0]
    (_, D), (_, short) = shapes.shapes[shapes.kind[0]], shapes.shapes[shapes.kind[-1]]
    assert short < D / 4
    one = packing.row_lengths(lengths)  # all tasks in rows of one shape
    own = sum(_row_tokens(lengths[shapes.kind == k], *s) for k, s in enumerate(shapes.shapes))
    useful = lengths.sum()
    assert 1 - useful / own < 0.05 and 1 - useful / _row_tokens(lengths, *one) > 0.10  # 3.3% and 11.5%
    # a length given for all tasks gives them one shape
    assert len(packing.row_shapes(lengths, tasks, 512, 128).shapes) == 1


def test_batches_hold_full_rows_of_one_shape_and_rows_short_of_a_batch_wait_for_the_next_epoch():
    lengths = np.concatenate([_lognormal_lengths(700), np.stack([np.full(300, 40), np.full(300, 2)], 1)])
    shapes = packing.row_shapes(lengths, np.repeat([0, 1], [700, 300]))
    stream = lambda epoch: np.random.default_rng([5, epoch]).permutation(len(lengths))
    plan = packing.PackedPlan(stream, lengths, shapes, batch_rows=8, seed=0)
    n = plan.rows_per_epoch
    assert n % 8 == 0
    for start in range(0, 3 * n, 8):
        assert len({plan.shape(i) for i in range(start, start + 8)}) == 1
    # nothing is lost or repeated: the first epochs' rows hold every example once per epoch, less at most
    # 7 rows per shape still waiting
    seen = np.bincount(plan.examples(range(len(plan._rows))), minlength=len(lengths))
    epochs = plan._packed_epochs
    assert seen.max() <= epochs and seen.sum() >= epochs * len(lengths) - sum(len(r) for w in plan._waiting for r in w)
    assert sum(len(w) for w in plan._waiting) <= 2 * 7


def test_data_short_of_one_batch_of_rows_is_topped_up_with_empty_rows():
    lengths = np.array([[100, 5], [200, 9], [300, 4]])
    plan = packing.PackedPlan(lambda epoch: np.arange(3), lengths, packing.row_shapes(lengths, np.zeros(3)),
                              batch_rows=4)
    assert plan.rows_per_epoch == 4
    assert sorted(plan.examples(range(4)).tolist()) == [0, 1, 2]
    ds = _examples([(100, 5), (200, 9), (300, 4)])
    rows = packing.PackedRows(ds, plan, pad_token_id=0, decoder_start_token_id=0)
    assert len(list(rows)) == 4  # iterating ends with the first epoch, though later epochs' rows follow
    batch = packing.collate([rows[i] for i in range(4)])
    assert packing.example_count(batch) == 3
    assert (batch["labels"] != -100).sum() == 5 + 9 + 4 + 3  # each label and its end-of-sequence token


@pytest.mark.parametrize("batch_size", [16, 64])
def test_packed_batches_hold_batch_size_examples_on_average(batch_size):
    """train.batch_size counts examples with packed rows too: a batch takes as many whole rows as hold that
    many on average (it counted rows, so packing multiplied a batch's examples by the examples a row holds)."""
    from flantune.mixture import TrainSet

    rng = np.random.default_rng(0)
    sizes = {"long": 600, "short": 1400}  # summaries of a few per row, and classification of dozens
    lengths = np.concatenate([np.stack([rng.integers(100, 500, 600), rng.integers(20, 60, 600)], 1),
                              np.stack([rng.integers(5, 40, 1400), rng.integers(1, 3, 1400)], 1)])
    groups = np.repeat([0, 1], [600, 1400])
    train_set = TrainSet(dataset=None, offsets={"long": 0, "short": 600}, sizes=sizes, rates={"long": 0.3, "short": 0.7},
                         counts=sizes, seed=0, sampling="packed", lengths=lengths,
                         row_shapes=packing.row_shapes(lengths, groups))
    rows = train_set.packed_rows_per_batch(batch_size)
    plan = train_set.plan(rows)
    batches = plan.rows_per_epoch // rows
    examples = len(plan.examples(range(plan.rows_per_epoch)))
    assert rows < batch_size and train_set.packed_rows_per_batch(1) == 1  # rows hold several examples; one at least
    # whole rows: within half a row's examples of batch_size, plus the rows left waiting for the next epoch
    per_row = len(lengths) / train_set.plan(1).rows_per_epoch
    assert abs(examples / batches - batch_size) <= per_row / 2 + 0.05 * batch_size


@pytest.mark.slow
def test_a_packed_run_trains_and_counts_examples_not_rows(cli, tmp_path, shared_data):
    """A mixture of long and short inputs in rows of 512 tokens: train.batch_size=16 takes a few rows a batch,
    which hold about 16 examples, and the mixture report counts the same examples as the trainer did."""
    out = tmp_path / "run"
    code, out_text, err = cli("run", "task=[samsum,emotion]", "model=tiny", "train.sampling=packed", "train.batch_size=16",
                       "train.packed_input_length=512", "train.max_steps=4", "train.eval_steps=100",
                       "data.max_train_examples=400", "data.max_eval_examples=8", "tasks.samsum.max_input_length=128",
                       "tasks.samsum.max_target_length=32", f"data_dir={shared_data}", f"output_dir={out}")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    throughput = metrics["train"]
    assert throughput["steps"] == 4
    rows = metrics["step"]["batch"]  # packed: the rows of a batch per process
    assert 1 <= rows < 8 and throughput["examples"] >= 4 * rows * 4  # at least 4 examples a row
    assert f"{rows} a batch per process" in out_text
    assert throughput["pad_fraction"] < throughput["pad_fraction_random_batching"] / 1.5
    assert sum(metrics["mixture"]["examples_seen"].values()) == throughput["examples"]
    # each task packs into rows of its own label length; both are within the lengths the overrides allow
    (_, samsum_labels), (_, emotion_labels) = throughput["packed_rows"]
    assert throughput["packed_rows"][0][0] == 512 and emotion_labels < samsum_labels <= 128


@pytest.mark.slow
def test_a_batch_size_that_whole_rows_miss_is_pointed_out(cli, tmp_path, shared_data):
    """imdb reviews of up to 64 tokens pack several to a row of 512, so a batch of 2 takes one row, of
    several examples: the run says so, and how to choose."""
    code, _, err = cli("run", "task=imdb", "model=tiny", "train.sampling=packed", "train.batch_size=2",
                       "train.max_steps=1", "data.max_train_examples=64", "data.max_eval_examples=8",
                       "tasks.imdb.max_input_length=64", f"data_dir={shared_data}", f"output_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert "train.batch_size=2 takes 1 row(s) a process" in err and "train.packed_rows_per_batch" in err
