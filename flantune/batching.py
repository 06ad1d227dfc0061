"""Training order. The stream of an epoch (a seeded shuffle, or a mixture's draw) is cut into groups of
`group_batches` batches; inside a group the examples are split into batches of similar input AND label
length, and the batches are shuffled. Little of each batch is padding, while the order still changes
with every epoch and seed. The order depends only on (seed, epoch), so a resumed run sees the same
batches as an uninterrupted one.

The split is a k-d partition: cut the group at its middle (a multiple of the batch size) along the
length, input or label, that spans more tokens, and recurse down to single batches. Sorting by input
length alone leaves the labels of a summarisation batch unsorted; the k-d cells are small in both
directions (bench/run.py measures both against random batching).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

Stream = Callable[[int], np.ndarray]  # epoch -> row indices


class StreamSampler(Sampler[int]):
    """The epoch's stream as it is (random batching)."""

    def __init__(self, stream: Stream):
        self.stream = stream
        self.epoch = 0
        self._size = len(stream(0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        yield from self.stream(self.epoch).tolist()

    def __len__(self) -> int:
        return self._size


class LengthGroupedSampler(StreamSampler):
    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, stream: Stream | None = None,
                 group_batches: int = 256):
        """lengths: (rows, k) per-example lengths, sorted on in column order (input, then label)."""
        self.lengths = np.asarray(lengths).reshape(len(lengths), -1)
        self.batch_size = batch_size
        self.seed = seed
        self.group_batches = group_batches
        super().__init__(stream or self._shuffled)

    def _shuffled(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))

    def batches(self) -> list[np.ndarray]:
        stream = self.stream(self.epoch)
        group = self.batch_size * self.group_batches
        batches: list[np.ndarray] = []
        for start in range(0, len(stream), group):
            self._partition(stream[start:start + group], batches)
        # The DataLoader cuts the stream every batch_size indices, so a short batch may only come last.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        order = np.random.default_rng([self.seed, 104729, self.epoch]).permutation(len(batches))
        return [batches[i] for i in order] + tail

    def _partition(self, rows: np.ndarray, out: list[np.ndarray]) -> None:
        if len(rows) <= self.batch_size:
            out.append(rows)
            return
        keys = self.lengths[rows]
        dim = int(np.argmax(keys.max(axis=0) - keys.min(axis=0)))  # the length that spans more tokens
        rows = rows[np.argsort(keys[:, dim], kind="stable")]
        half = (len(rows) // self.batch_size + 1) // 2 * self.batch_size
        self._partition(rows[:half], out)
        self._partition(rows[half:], out)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch.tolist()


def grouping_keys(lengths: np.ndarray, sampling: str) -> np.ndarray:
    """The lengths a length-grouped sampling sorts on: input and label (`length_grouped`), or input alone
    (`input_length_grouped`; batches of one label length cost summarisation tasks validation loss against
    random batches, grouping by input alone doesn't, at more padding: bench/RESULTS.md)."""
    lengths = np.asarray(lengths).reshape(len(lengths), -1)
    return lengths[:, :1] if sampling == "input_length_grouped" else lengths


def pad_fraction(lengths: np.ndarray, rows: np.ndarray, batch_size: int) -> float:
    """Share of the tokens of padded batches that are padding, for `rows` cut every batch_size (inputs
    and labels are each padded to the longest in the batch, as DataCollatorForSeq2Seq does)."""
    lengths = np.asarray(lengths).reshape(len(lengths), -1)
    useful = padded = 0
    for start in range(0, len(rows), batch_size):
        batch = lengths[rows[start:start + batch_size]]
        useful += int(batch.sum())
        padded += int(batch.max(axis=0).sum()) * len(batch)
    return 1.0 - useful / padded if padded else 0.0

