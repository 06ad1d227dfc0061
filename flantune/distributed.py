"""Running under torchrun / accelerate launch: which process does what.

Every process reads the same config and data, so checks fail the same way everywhere. Things that
must happen once (creating the run directory, the first tokenisation into the datasets cache) happen
on the main process first, and the others follow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from flantune.errors import FlantuneError

T = TypeVar("T")


def world_size() -> int:
    """The run's processes, as the launcher (torchrun, accelerate launch) set them: known before any process group
    exists, and the one count of processes flantune reads (the step's, the evaluation's split)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def process_group() -> tuple[int, int]:
    """(rank, world size) for work split between the run's processes, their process group set up first where
    there are several."""
    world = world_size()
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    _state()
    return dist.get_rank(), world


def gather_objects(items: list) -> list:
    """Every process's `items`, concatenated in rank order (just `items` without a process group)."""
    import torch.distributed as dist

    _, world = process_group()
    if world == 1:
        return items
    everything: list = [None] * world
    dist.all_gather_object(everything, items)
    return [x for part in everything for x in part]


def sharded_parameters() -> bool:
    """FSDP or DeepSpeed (accelerate launch sets these): every process must run the same forward passes."""
    return any(os.environ.get(f"ACCELERATE_USE_{name}", "").lower() == "true" for name in ("FSDP", "DEEPSPEED"))


@contextlib.contextmanager
def whole_parameters(model) -> Iterator[None]:
    """FSDP2 gathers a module's parameters in the hooks of that module's forward. Evaluation calls
    model.encoder on its own (rank scoring, generate), which skips the root's hook and meets the
    shared embedding still sharded ("got mixed torch.Tensor and DTensor"): gather the root's own
    parameters for the duration; each block still gathers and frees its own."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def _state():
    from accelerate import PartialState

    return PartialState()  # initialises the process group once, as the trainer would


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (e.g. writes the datasets cache), then the others."""
    if world_size() == 1:
        yield
        return
    with _state().main_process_first():
        yield


def on_main_then_share(fn: Callable[[], T]) -> T:
    """Run fn on the main process only; every process gets its result, or raises its FlantuneError."""
    if world_size() == 1:
        return fn()
    import torch.distributed as dist

    _state()
    payload: list = [None]
    if is_main():
        try:
            payload = [("ok", fn())]
        except FlantuneError as exc:
            payload = [("error", str(exc))]
    dist.broadcast_object_list(payload, src=0)
    kind, value = payload[0]
    if kind == "error":
        raise FlantuneError(value)
    return value
