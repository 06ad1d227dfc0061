"""Packed training batches (train.sampling=packed): several examples share a row of fixed input and label
length, as in T5's own pre-training, so batches come in one shape (one per task of a mixture) and
little of them is padding.

Each example keeps to itself through masks: encoder tokens attend to their own example's tokens, decoder
tokens to their own example's earlier tokens and, across, to their own example's input. T5's position
bias depends only on the distance between two tokens, so an example's scores are the same at any
offset in a row; each example's decoder input starts from the decoder start token. The loss is the
token mean over the batch's labels, as without packing (tests/test_packing.py compares both).

Rows are filled first-fit-decreasing from chunks of the epoch's stream (a seeded shuffle, or a
mixture's draw), then shuffled and cut into batches of one row shape: in a mixture each task packs into
rows of its own lengths, since one task's long summaries would leave the rows of a classification task
mostly padding. Rows short of a full batch wait for the next epoch, so every batch has the same shape as
others of its kind. Epochs pack into slightly different numbers of rows, but the trainer sizes every
epoch by the first, so the packed epochs run on as one stream and epoch k is rows k*n .. (k+1)*n of it
(n = the first epoch's rows). Rows depend only on (seed, epoch), so a resumed run trains on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from flantune.errors import FlantuneError

Stream = Callable[[int], np.ndarray]  # epoch -> example indices
CHUNK = 4096  # examples packed together: rows fill better from more, and stay a local draw of the stream
ALIGN = 8  # row lengths are multiples of 8 (tensor-core friendly shapes on GPUs)
MIN_ROW = 512  # default row input length for short inputs; more costs attention over other examples' tokens
SEARCH = 8192  # examples packed to choose a label length
SEGMENT_KEYS = ("input_segment_ids", "label_segment_ids")


def _round_up(n: float, multiple: int = ALIGN) -> int:
    return int(-(-int(np.ceil(n)) // multiple) * multiple)


Shape = tuple[int, int]  # a packed row's input and label length


@dataclass(frozen=True)
class RowShapes:
    """The rows examples pack into: example i into rows of shapes[kind[i]]."""

    shapes: list[Shape]
    kind: np.ndarray


def _check_given(lengths: np.ndarray, input_length: int | None, label_length: int | None) -> None:
    longest_input, longest_label = (int(v) for v in lengths.max(axis=0))
    for key, given, longest, what in (("packed_input_length", input_length, longest_input, "input"),
                                      ("packed_label_length", label_length, longest_label, "label")):
        if given is not None and given < longest:
            raise FlantuneError(
                f"train.{key}={given} is shorter than the longest training {what} ({longest} tokens), which could "
                f"not be packed. Set train.{key}={_round_up(longest)} or more, or leave it null (the default)."
            )


def row_lengths(lengths: np.ndarray, input_length: int | None = None, label_length: int | None = None,
                seed: int = 0) -> Shape:
    """The input and label length of a packed row: as given, or by default the longest input (rounded up
    to 8, and at least MIN_ROW so that short examples share rows by the dozen), and the label length whose
    rows pad least (`_label_length`). Errors if an example would not fit in a row."""
    lengths = np.asarray(lengths).reshape(len(lengths), 2)
    if not len(lengths):
        raise FlantuneError("There is no training example to pack.")
    _check_given(lengths, input_length, label_length)
    if input_length is None:
        input_length = max(_round_up(lengths[:, 0].max()), MIN_ROW)
    if label_length is None:
        label_length = _label_length(lengths, input_length, seed)
    return int(input_length), int(label_length)


def _label_length(lengths: np.ndarray, input_length: int, seed: int) -> int:
    """The label length, from the longest label up to a little over the data's label share of the row,
    whose rows pad least, packed first-fit decreasing from a seeded sample of SEARCH examples (the share
    alone left samsum's rows at 5.2% padding where 8 more label tokens give 4.6%)."""
    longest = _round_up(lengths[:, 1].max())
    around = _round_up(input_length * lengths[:, 1].sum() / max(int(lengths[:, 0].sum()), 1))
    candidates = range(max(longest, around - 2 * ALIGN), max(longest, around) + 4 * ALIGN + 1, ALIGN)
    sample = np.random.default_rng([seed, 2713]).permutation(len(lengths))[:SEARCH]
    # The sample's tokens are the same in every candidate's rows: the fewest row tokens pad least.
    row_tokens = {D: len(pack_rows(lengths, sample, input_length, D)) * (input_length + D) for D in candidates}
    return min(candidates, key=row_tokens.__getitem__)  # the shortest of equals


def row_shapes(lengths: np.ndarray, groups: np.ndarray, input_length: int | None = None,
               label_length: int | None = None, seed: int = 0) -> RowShapes:
    """Rows for each group of examples (a mixture's tasks) at its own lengths (`row_lengths`; a given length
    holds for all), so that one task's long labels don't leave another's rows mostly padding; groups whose
    lengths come out the same share rows. A batch holds rows of one shape (`PackedPlan`)."""
    lengths = np.asarray(lengths).reshape(len(lengths), 2)
    if not len(lengths):
        raise FlantuneError("There is no training example to pack.")
    _check_given(lengths, input_length, label_length)
    groups = np.asarray(groups)
    shapes: list[Shape] = []
    kind = np.zeros(len(lengths), dtype=np.int64)
    for group in np.unique(groups):
        members = groups == group
        shape = row_lengths(lengths[members], input_length, label_length, seed)
        if shape not in shapes:
            shapes.append(shape)
        kind[members] = shapes.index(shape)
    return RowShapes(shapes, kind)


def rows_per_batch(examples_per_batch: int, examples_per_row: float) -> int:
    """Whole rows that hold `examples_per_batch` examples on average (one at least)."""
    return max(1, round(examples_per_batch / examples_per_row))


def pack_rows(lengths: np.ndarray, items: np.ndarray, input_length: int, label_length: int,
              chunk: int = CHUNK) -> list[np.ndarray]:
    """`items` (example indices, in stream order) packed into rows: first-fit decreasing, by the share of a
    row an example takes, within each chunk of the stream."""
    rows: list[np.ndarray] = []
    for start in range(0, len(items), chunk):
        part = np.asarray(items[start:start + chunk])
        inp, lab = lengths[part, 0], lengths[part, 1]
        order = np.argsort(-(inp / input_length + lab / label_length), kind="stable")
        room = np.empty((len(part), 2), dtype=np.int64)  # per open row: input and label tokens left
        members: list[list[int]] = []
        for j in order:
            open_rows = room[:len(members)]
            fits = np.flatnonzero((open_rows[:, 0] >= inp[j]) & (open_rows[:, 1] >= lab[j]))
            if len(fits):
                r = fits[0]
                room[r] -= (inp[j], lab[j])
                members[r].append(part[j])
            else:
                room[len(members)] = (input_length - inp[j], label_length - lab[j])
                members.append([part[j]])
        rows += [np.asarray(m, dtype=np.int64) for m in members]
    return rows


EMPTY_ROW = np.zeros(0, dtype=np.int64)


class PackedPlan:
    """The rows of every epoch, in batches of `batch_rows` rows of one shape: each epoch's stream is packed
    shape by shape, the rows of a shape are shuffled and cut into batches, and the epoch's batches are
    shuffled. Rows short of a full batch wait for the next epoch's, so every batch has one shape and the
    same number of rows (one CUDA graph per shape); only where a whole epoch makes no full batch are its
    rows topped up with empty ones."""

    def __init__(self, stream: Stream, lengths: np.ndarray, shapes: RowShapes, *, batch_rows: int = 1,
                 seed: int = 0):
        self.stream = stream
        self.lengths = np.asarray(lengths).reshape(len(lengths), 2)
        self.shapes, self.batch_rows, self.seed = shapes, int(batch_rows), seed
        self._rows: list[np.ndarray] = []
        self._kinds: list[int] = []
        self._waiting: list[list[np.ndarray]] = [[] for _ in shapes.shapes]
        self._packed_epochs = 0
        self.rows_per_epoch = self._pack_next()

    def _pack_next(self) -> int:
        epoch, size = self._packed_epochs, self.batch_rows
        items = np.asarray(self.stream(epoch))
        rng = np.random.default_rng([self.seed, 7411, epoch])
        batches: list[tuple[int, list[np.ndarray]]] = []
        for k, (E, D) in enumerate(self.shapes.shapes):
            rows = pack_rows(self.lengths, items[self.shapes.kind[items] == k], E, D)
            # Shuffled: first-fit decreasing fills a chunk's rows largest examples first.
            rows = self._waiting[k] + [rows[i] for i in rng.permutation(len(rows))]
            full = len(rows) // size * size
            batches += [(k, rows[i:i + size]) for i in range(0, full, size)]
            self._waiting[k] = rows[full:]
        if not batches:
            batches = [(k, rows + [EMPTY_ROW] * (size - len(rows))) for k, rows in enumerate(self._waiting) if rows]
            self._waiting = [[] for _ in self._waiting]
        for i in rng.permutation(len(batches)):
            k, rows = batches[i]
            self._rows += rows
            self._kinds += [k] * len(rows)
        self._packed_epochs += 1
        return len(batches) * size

    def _fill(self, index: int) -> None:
        while index >= len(self._rows):
            if not self._pack_next():
                raise IndexError(index)

    def row(self, index: int) -> np.ndarray:
        """The example indices of row `index` of the stream of rows."""
        self._fill(index)
        return self._rows[index]

    def shape(self, index: int) -> Shape:
        """The input and label length of row `index`."""
        self._fill(index)
        return self.shapes.shapes[self._kinds[index]]

    def row_indices(self, epoch: int) -> np.ndarray:
        """The rows of `epoch` in the stream of rows: a batching.StreamSampler's stream (the trainer cuts
        it into batches of batch_rows rows)."""
        n = self.rows_per_epoch
        return np.arange(epoch * n, (epoch + 1) * n)

    def examples(self, rows: range) -> np.ndarray:
        return np.concatenate([self.row(i) for i in rows]) if len(rows) else np.zeros(0, dtype=np.int64)


class PackedRows(Dataset):
    """Row i of the plan as the model's inputs: input ids, labels, the decoder's inputs (each example's
    labels shifted right behind the start token) and, per token, its example's number in the row (1, 2, ...;
    0 is padding)."""

    def __init__(self, examples, plan: PackedPlan, pad_token_id: int, decoder_start_token_id: int):
        self.examples = examples  # the tokenised train set: input_ids and labels
        self.plan = plan
        self.pad, self.start = pad_token_id, decoder_start_token_id

    def __len__(self) -> int:
        return self.plan.rows_per_epoch

    def __iter__(self):
        # The first epoch's rows: rows go on past len() into later epochs, so iterating by index would never end.
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        E, D = self.plan.shape(int(index))
        rows = self.examples[self.plan.row(int(index)).tolist()]
        full = lambda n, value: np.full(n, value, dtype=np.int64)
        out = {"input_ids": full(E, self.pad), "attention_mask": full(E, 0), "labels": full(D, -100),
               "decoder_input_ids": full(D, self.pad), "input_segment_ids": full(E, 0), "label_segment_ids": full(D, 0)}
        i = j = 0
        for segment, (inputs, labels) in enumerate(zip(rows["input_ids"], rows["labels"]), start=1):
            out["input_ids"][i:i + len(inputs)] = inputs
            out["input_segment_ids"][i:i + len(inputs)] = segment
            out["labels"][j:j + len(labels)] = labels
            out["decoder_input_ids"][j:j + len(labels)] = [self.start, *labels[:-1]]
            out["label_segment_ids"][j:j + len(labels)] = segment
            i, j = i + len(inputs), j + len(labels)
        out["attention_mask"][:i] = 1
        return out


def collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(np.stack([r[key] for r in rows])) for key in rows[0]}


def is_packed(inputs: dict) -> bool:
    return SEGMENT_KEYS[0] in inputs


def masks(input_segments: torch.Tensor, label_segments: torch.Tensor, dtype=torch.float32):
    """Additive (batch, 1, queries, keys) masks, 0 where a token may attend and the dtype's minimum where not
    (the form every attention implementation adds to its scores): the encoder's, the decoder's (causal) and
    the decoder's across to the encoder. Padding attends to padding, and padding in the decoder to every
    input, so that no query is left without a key."""
    same = lambda a, b: (a[:, :, None] == b[:, None, :])[:, None]
    length = label_segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=label_segments.device).tril()
    allowed = (same(input_segments, input_segments), same(label_segments, label_segments) & causal,
               same(label_segments, input_segments) | (label_segments == 0)[:, None, :, None])
    blocked = torch.finfo(dtype).min
    return tuple(torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, blocked) for m in allowed)


def forward(model, inputs: dict):
    """The model's outputs (and loss) on a batch, packed or not: packed rows go through the model's own call
    too (`accept_rows`), inside whatever DDP, FSDP, DeepSpeed or autocast wrap around it."""
    if is_packed(inputs):
        accept_rows(getattr(model, "module", model))  # DDP's and DeepSpeed's wrappers call .module
    return model(**inputs)


def accept_rows(model) -> None:
    """Let `model(**inputs)` take packed rows (their segment ids), wherever it is called from. The encoder
    runs in the model's own forward, as usual: called beside it, it met FSDP2's shared embedding still
    sharded ("got mixed torch.Tensor and DTensor") and ran outside the autocast that accelerate wraps
    around the forward."""
    if getattr(model, "_flantune_packed_rows", False):
        return
    from flantune.unwrap import base_model_of

    model.register_forward_pre_hook(_packed_masks, with_kwargs=True)
    base_model_of(model).get_encoder().register_forward_pre_hook(_encoder_mask, with_kwargs=True)
    model._flantune_packed_rows = True


def _packed_masks(model, args: tuple, kwargs: dict):
    """The model's forward pre-hook: segment ids become the three attention masks. T5 passes one mask to the
    encoder and across, so the model gets the cross-attention's and its encoder is handed its own
    (`_encoder_mask`), for these input ids only."""
    if SEGMENT_KEYS[0] not in kwargs:
        return None
    from flantune.unwrap import base_model_of

    kwargs = dict(kwargs)
    input_segments, label_segments = (kwargs.pop(key) for key in SEGMENT_KEYS)
    dtype = next(model.parameters()).dtype
    encoder_mask, decoder_mask, cross_mask = masks(input_segments, label_segments, dtype)
    base_model_of(model).get_encoder()._flantune_packed_mask = (kwargs["input_ids"], encoder_mask)
    kwargs.update(attention_mask=cross_mask, decoder_attention_mask=decoder_mask)
    return args, kwargs


def _encoder_mask(encoder, args: tuple, kwargs: dict):
    pending = getattr(encoder, "_flantune_packed_mask", None)
    if pending is None or pending[0] is not kwargs.get("input_ids"):
        return None
    encoder._flantune_packed_mask = None
    return args, {**kwargs, "attention_mask": pending[1]}


def example_count(inputs: dict) -> torch.Tensor | int:
    """Examples in a batch: rows, or for packed rows the examples in them (a tensor where the batch is)."""
    if is_packed(inputs):
        return inputs["label_segment_ids"].amax(dim=1).sum()
    return int(inputs["input_ids"].shape[0])
