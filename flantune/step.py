"""What one optimizer step trains on, decided once (`decide`) and read by the trainer, metrics.json and the
summary: the batch per process (examples, or packed rows), the forward passes (micro-batches) it runs as, the
batches accumulated, the processes, and the label-token count its summed token loss is divided by."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flantune.errors import FlantuneError

# train.micro_batches=auto: at most 4 forward passes a batch, of 4 items or more each
MAX_MICRO_BATCHES, MIN_MICRO_BATCH = 4, 4


@dataclass(frozen=True)
class Step:
    """One optimizer step: each of `processes` processes runs `grad_accum` batches of `batch` items (examples,
    or packed rows), each as `micro_batches` forward passes of `micro_batch` items, their gradients summed."""

    unit: str  # what a batch counts: examples, or rows (train.sampling=packed)
    batch: int  # items of a batch per process (train.batch_size, or the rows that hold it)
    micro_batches: int  # forward passes a batch runs as (train.micro_batches)
    grad_accum: int  # batches a step accumulates (train.grad_accum)
    processes: int  # the run's processes, each with its own batches (WORLD_SIZE)
    loss_normalization: str  # train.loss_normalization
    # tokens: the label tokens of every process that a step's summed token loss is divided by, a fixed count (a
    # step's average over the first epoch); batch: None, each step is divided by its own (its token mean)
    label_tokens: float | None
    examples_per_row: float | None = None  # packed: the examples a row holds on average

    @property
    def micro_batch(self) -> int:
        """Items of one forward pass on one process: what the trainer calls its batch size."""
        return self.batch // self.micro_batches

    @property
    def accumulation(self) -> int:
        """Forward passes a step accumulates on each process: the trainer's gradient_accumulation_steps."""
        return self.grad_accum * self.micro_batches

    @property
    def global_micro_batch(self) -> int:
        """Items of one forward pass on every process together: batches are formed at this size and cut per
        process by accelerate, so N processes of b train on exactly the batches one process of N*b would."""
        return self.micro_batch * self.processes

    @property
    def global_batch(self) -> int:
        """Items a step trains on, every process and micro-batch together."""
        return self.batch * self.grad_accum * self.processes

    def record(self) -> dict:
        """The step as metrics.json keeps it."""
        return {**asdict(self), "micro_batch": self.micro_batch, "accumulation": self.accumulation,
                "global_batch": self.global_batch}

    def describe(self) -> str:
        """The step in one line, for the run's summary."""
        rows = f" (about {self.examples_per_row:.1f} examples a row)" if self.examples_per_row else ""
        passes = f"{self.micro_batches} micro-batches of {self.micro_batch}" if self.micro_batches > 1 else "one pass"
        loss = (f"the summed token loss over {self.label_tokens:,.0f} label tokens" if self.label_tokens
                else "the token mean")
        return (f"a step: {self.grad_accum} batch{'es' * (self.grad_accum > 1)} of {self.batch} {self.unit} a process"
                f"{rows}, run as {passes}, on {self.processes} process{'es' * (self.processes > 1)}: "
                f"{self.global_batch} {self.unit}; its loss: {loss} (train.loss_normalization={self.loss_normalization})")


def micro_batches(setting, items: int, *, mixture: bool, sampling: str) -> int:
    """How many forward passes (micro-batches) a batch of `items` per process (examples, or rows when packed) runs
    as, their gradients accumulated. Length-grouped batches and packed rows of a mixture each hold one task, so
    steps of one batch train one task at a time, which cost every task validation loss against random batches;
    steps of 4 micro-batches of 4 mixed tasks and gave most of it back (bench/RESULTS.md). `auto` does that for a
    mixture: the most micro-batches, up to 4, that split the batch evenly into micro-batches of 4 items or more;
    whole batches otherwise. A number must divide the batch: config.validate asks this of train.batch_size before
    any data is read, `decide` of the rows a packed batch takes."""
    if setting == "auto":
        if not mixture or sampling == "random":  # random batches mix tasks already
            return 1
        splits = [n for n in range(MAX_MICRO_BATCHES, 1, -1) if items % n == 0 and items // n >= MIN_MICRO_BATCH]
        return splits[0] if splits else 1
    if items % int(setting):
        what = (f"the {items} rows a batch packs into (train.packed_rows_per_batch)" if sampling == "packed"
                else f"train.batch_size={items}")
        raise FlantuneError(
            f"train.micro_batches={setting} does not divide {what}: each micro-batch must hold as many as the "
            f"others. Set train.micro_batches to a divisor of {items}, or auto."
        )
    return int(setting)


def decide(cfg, train_set, *, processes: int, mixture: bool) -> Step:
    """The step of a run, from its config and its train set (flantune.mixture.TrainSet)."""
    t = cfg.train
    packed = train_set.sampling == "packed"
    batch, per_row = t.batch_size, None
    if packed:  # train.batch_size counts examples: as many whole rows as hold them
        per_row = train_set.examples_per_row()
        batch = t.packed_rows_per_batch or train_set.packed_rows_per_batch(t.batch_size)
        if t.packed_rows_per_batch is None:
            _say_if_rows_miss_batch_size(t.batch_size, batch, per_row)
    split = micro_batches(t.micro_batches, batch, mixture=mixture, sampling=train_set.sampling)
    label_tokens = None
    if t.loss_normalization == "tokens":
        # T5's fixed loss normaliser (t5x's loss_normalizing_factor): every label token of an epoch then weighs
        # the same in whatever step it lands, and batches grouped by length or packed by task weight a mixture's
        # tasks as random batches do. Every step keeps this count, an epoch's last, shorter one too.
        micro = batch // split
        label_tokens = train_set.label_tokens_per_batch(micro, processes) * processes * t.grad_accum * split
    return Step(unit="rows" if packed else "examples", batch=batch, micro_batches=split, grad_accum=t.grad_accum,
                processes=processes, loss_normalization=t.loss_normalization, label_tokens=label_tokens,
                examples_per_row=per_row)


def _say_if_rows_miss_batch_size(batch_size: int, rows: int, examples_per_row: float) -> None:
    """Whole rows a process can't always hold train.batch_size examples (each takes at least one): say so
    where they miss it by more than a quarter, since the global batch then differs from the one asked for."""
    from flantune.distributed import is_main

    held = rows * examples_per_row
    if abs(held - batch_size) > batch_size / 4 and is_main():
        from flantune.console import console

        console(stderr=True).print(
            f"[bold yellow]Note:[/] a packed row holds {examples_per_row:.1f} examples on average, so "
            f"train.batch_size={batch_size} takes {rows} row(s) a process, about {held:.0f} examples. Set "
            "train.batch_size to a multiple of the examples a row holds, or train.packed_rows_per_batch to choose "
            "the rows.", highlight=False)
