"""Training order. The stream of an epoch (a seeded shuffle, or a mixture's draw) is cut into groups of
`group_batches` batches; inside a group the examples are sorted by length and cut into batches, and
the batches are shuffled. Batches hold examples of similar length, so little of each batch is
padding, while the order still changes with every epoch and seed. The order depends only on
(seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
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
                 group_batches: int = 64):
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
            chunk = stream[start:start + group]
            keys = self.lengths[chunk]
            # np.lexsort sorts by the last key first: input length primary, label length secondary.
            by_length = chunk[np.lexsort(keys.T[::-1])]
            batches.extend(by_length[i:i + self.batch_size] for i in range(0, len(by_length), self.batch_size))
        # The DataLoader cuts the stream every batch_size indices, so a short batch may only come last.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        order = np.random.default_rng([self.seed, 104729, self.epoch]).permutation(len(batches))
        return [batches[i] for i in order] + tail

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch.tolist()


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
