"""Training steps replayed as CUDA graphs.

At FLAN-T5's sizes a GPU finishes a step's kernels faster than Python can launch them: flan-t5-large at
16 per batch launches about 1,300 matmuls and their neighbours a step, and the H100 idled two thirds of
each step (bench/RESULTS.md). Here the forward and backward of a batch shape are recorded once as a
CUDA graph and replayed for every later batch of that shape: one launch instead of thousands. The
optimizer, gradient clipping and the learning-rate schedule stay the trainer's own.

Batches are padded up a ladder of lengths (`bucket`) so that few shapes recur; padding is masked as
before (pad id and attention mask 0 for inputs, -100 for labels), so the loss is unchanged. Graphs
write their gradients into buffers allocated once; the trainer's parameters get them as `.grad`.
A shape beyond `max_graphs` trains eagerly, as does everything where graphs can't apply (CPU, several
processes, gradient checkpointing, fp16's loss scaling): `resolve` decides before any heavy work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

# (up to this length, round up to a multiple of this): each multiple is an eighth of the previous limit
LADDER = ((64, 8), (128, 8), (256, 16), (512, 32))
TOP_MULTIPLE = 64  # beyond the ladder


def bucket(length: int) -> int:
    """The padded length of a batch whose longest sequence has `length` tokens: a multiple of 8 up to 64,
    then at most 1/8 more; lengths up to 512 fall in 32 buckets."""
    for limit, multiple in LADDER:
        if length <= limit:
            return -(-length // multiple) * multiple
    return -(-length // TOP_MULTIPLE) * TOP_MULTIPLE


class PadToBuckets:
    """Wraps a collator: pads inputs (pad id, attention 0) and labels (-100) up to the length that
    `inputs` and `labels` round them to (`bucket` unless given)."""

    def __init__(self, collator: Callable, pad_token_id: int, *, inputs: Callable[[int], int] = bucket,
                 labels: Callable[[int], int] = bucket):
        self.collator = collator
        self.sides = (("input_ids", pad_token_id, inputs), ("attention_mask", 0, inputs), ("labels", -100, labels))

    def __call__(self, features) -> dict:
        batch = self.collator(features)
        for key, fill, round_up in self.sides:
            if key in batch:
                t = batch[key]
                extra = round_up(t.shape[1]) - t.shape[1]
                if extra:
                    batch[key] = torch.nn.functional.pad(t, (0, extra), value=fill)
        return batch


def shape_key(inputs: dict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))


class CudaRecorder:
    """Records a function as a CUDA graph on a side stream, after warm-up runs of the same shape (kernels
    load lazily, on first use, and must not do so during a capture). Every graph, and every warm-up,
    allocates from one memory pool: the graphs never run at the same time, so a new shape reuses the
    memory of the others instead of holding its own activations beside theirs."""

    def __init__(self, warmup: int = 1):
        self.warmup = warmup
        self.stream = torch.cuda.Stream()
        self.pool = torch.cuda.graph_pool_handle()
        self.recorded = False

    def __call__(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        self.stream.wait_stream(torch.cuda.current_stream())
        # The pool exists once a graph holds it: the first warm-up allocates outside it, and entering the
        # capture frees that memory.
        with torch.cuda.stream(self.stream), self._into_pool() if self.recorded else contextlib.nullcontext():
            for _ in range(self.warmup):
                fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            out = fn()
        self.recorded = True
        torch.cuda.current_stream().wait_stream(self.stream)
        return graph.replay, out

    @contextlib.contextmanager
    def _into_pool(self):
        # Private API, the one torch.compile's CUDA graphs warm up with: allocations on the current stream
        # (the backward's too, which runs on autograd's thread) come from the graphs' pool.
        device = torch.cuda.current_device()
        torch._C._cuda_beginAllocateCurrentStreamToPool(device, self.pool)
        try:
            yield
        finally:
            torch._C._cuda_endAllocateToPool(device, self.pool)
            torch._C._cuda_releasePool(device, self.pool)


class GraphedSteps:
    """Forward and backward of the training batches, one recorded graph per batch shape.

    `step(inputs, scale)` returns the loss times `scale` (the trainer's gradient-accumulation factor) and
    leaves the gradients of `scale * loss` in the parameters' `.grad`, as an eager step would; or returns
    None for a shape it won't record (the caller then trains the batch eagerly).
    """

    def __init__(self, model, *, accumulate: bool, max_graphs: int = 64, recorder: Callable | None = None):
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # The graphs' gradient output. Without gradient accumulation these become the parameters' .grad
        # (no copy); with it each micro-batch's buffers are added to .grad.
        self.buffers = [torch.zeros_like(p) for p in self.params]
        self.accumulate = accumulate
        self.max_graphs = max_graphs
        self.recorder = recorder or CudaRecorder()
        device = self.params[0].device if self.params else None
        self.scale = torch.ones((), device=device)
        self.graphs: dict[tuple, tuple[dict, Callable[[], None], torch.Tensor]] = {}

    def step(self, inputs: dict, scale: float | torch.Tensor) -> torch.Tensor | None:
        key = shape_key(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return None
            entry = self.graphs[key] = self._record(inputs)
        static, replay, loss = entry
        for name, value in inputs.items():
            static[name].copy_(value, non_blocking=True)
        if isinstance(scale, torch.Tensor):
            self.scale.copy_(scale)
        else:
            self.scale.fill_(scale)
        replay()
        self._hand_over_gradients()
        return loss.clone()  # the next replay overwrites the recorded output

    def _forward_backward(self, static: dict) -> torch.Tensor:
        # The Python here runs once, while recording: the graph keeps only the kernels, so its backward
        # accumulates into the buffers whatever .grad is by the time of a replay.
        saved = [p.grad for p in self.params]
        for p, b in zip(self.params, self.buffers):
            p.grad = b
        torch._foreach_zero_(self.buffers)
        from flantune.packing import forward

        loss = forward(self.model, static).loss * self.scale
        loss.backward()
        for p, g in zip(self.params, saved):
            p.grad = g
        return loss.detach()

    def _record(self, inputs: dict):
        from flantune.errors import FlantuneError, first_line
        from flantune.kernels import clear_mask_cache

        static = {name: value.clone() for name, value in inputs.items()}
        try:
            replay, loss = self.recorder(lambda: self._forward_backward(static))
        except RuntimeError as exc:
            # A failed capture leaves CUDA's random-number state mid-capture, so even eager steps fail
            # after it: stop with the cause rather than train on in a broken state.
            raise FlantuneError(f"Recording the training step as a CUDA graph failed ({first_line(exc)}). "
                                "Train without graphs: train.cuda_graphs=false.") from exc
        finally:
            clear_mask_cache()  # masks made while recording live in the graphs' memory pool
        return static, replay, loss

    def _hand_over_gradients(self) -> None:
        fresh, add_to, add = [], [], []
        for p, b in zip(self.params, self.buffers):
            if p.grad is None or p.grad is b:
                fresh.append((p, b))
            else:
                add_to.append(p.grad)
                add.append(b)
        for p, b in fresh:
            p.grad = b.clone() if self.accumulate else b
        if add_to:
            torch._foreach_add_(add_to, add)

    def summary(self) -> dict[str, Any]:
        return {"graphs": len(self.graphs), "max_graphs": self.max_graphs}


def resolve(setting, *, precision: str, processes: int, gradient_checkpointing: bool, compile_blocks: bool) -> bool:
    """Whether a run trains with CUDA graphs: `train.cuda_graphs` is auto (where they apply and were
    measured: bf16 or fp32 weights), true (an error where they can't apply) or false."""
    reasons = []
    if not torch.cuda.is_available():
        reasons.append("there is no CUDA GPU")
    if processes > 1:
        reasons.append(f"the run has {processes} processes (graphs are recorded for one)")
    if gradient_checkpointing:
        reasons.append("gradient_checkpointing=true recomputes activations outside the recording")
    if compile_blocks:
        reasons.append("train.compile=true (compiled blocks make their own graphs)")
    if precision == "fp16":
        reasons.append("precision=fp16 scales the loss outside the recorded step")
    if setting is True and reasons:
        from flantune.errors import FlantuneError

        raise FlantuneError(f"train.cuda_graphs=true can't apply: {'; '.join(reasons)}. "
                            "Use train.cuda_graphs=auto (graphs where they apply) or false.")
    if setting == "auto" and precision == "bf16-mixed":
        return False  # autocast inside a recording has not been measured on a GPU here: only on request
    return setting is not False and not reasons
