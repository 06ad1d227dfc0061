"""The Seq2SeqTrainer of a run: length-grouped (or mixture) batches, evaluation by flantune's
evaluator on the validation split, the best checkpoint kept by the aggregate score, resume."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from transformers import (
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    ProgressCallback,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)

from flantune import batching, packing, rundir
from flantune.console import no_transformers_bars
from flantune.distributed import is_main, process_group, world_size
from flantune.evaluation import SCORE, Evaluator
from flantune.modeling import base_model_of
from flantune.progress import RunProgress

TRAIN_COLUMNS = ["input_ids", "attention_mask", "labels"]


@dataclass
class Trained:
    trainer: Any
    model: Any
    throughput: dict[str, float]
    log_history: list[dict]
    best_checkpoint: str | None
    mixture: dict | None


class EvaluateAtEnd(TrainerCallback):
    """Evaluate (and save) after the last step too, so the final weights compete for 'best'."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class FlantuneTrainer(Seq2SeqTrainer):
    def __init__(self, *args, evaluator: Evaluator, sampler_factory, cuda_graphs: bool = False,
                 label_tokens_per_batch: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        # train.loss_normalization=tokens: a batch's summed token loss is divided by this fixed count (None: batch)
        self.label_tokens_per_batch = label_tokens_per_batch
        self.sampler_factory = sampler_factory
        self.cuda_graphs = cuda_graphs
        self.graphed = None  # flantune.cuda_graphs.GraphedSteps, made at the first step
        self._logged_loss = None  # compute_loss's part of its step's logged loss
        self._flops_per_input_token: int | None = None
        self.useful_tokens = 0  # non-pad input tokens + label tokens actually trained on
        self.padded_tokens = 0  # the same, padding included
        self.train_examples = 0

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler_factory()

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Summed where the batch lives (often the GPU) and read once at the end: a per-step .item()
        # would make the host wait for the device every step.
        self.useful_tokens = self.useful_tokens + inputs["attention_mask"].sum() + (inputs["labels"] != -100).sum()
        self.padded_tokens += inputs["input_ids"].numel() + inputs["labels"].numel()
        self.train_examples = self.train_examples + packing.example_count(inputs)
        if self.cuda_graphs:
            loss = self._graphed_step(model, inputs, num_items_in_batch)
            if loss is not None:
                return loss
        super().training_step(model, inputs, num_items_in_batch)
        return self._logged_loss  # the step's token mean, whatever loss_normalization trains on

    def _graphed_step(self, model, inputs, num_items_in_batch):
        """The step as a replayed CUDA graph (flantune.cuda_graphs), scaled as `training_step` and
        `compute_loss` scale it; None for a batch it trains eagerly."""
        from flantune.cuda_graphs import GraphedSteps

        if self.graphed is None:
            self.graphed = GraphedSteps(model, accumulate=self.args.gradient_accumulation_steps > 1)
        model.train()
        inputs = self._prepare_inputs(inputs)
        trained, logged = self.batch_factors(inputs, num_items_in_batch)
        loss = self.graphed.step(inputs, trained)
        return None if loss is None else loss * (logged / trained)

    def floating_point_ops(self, inputs) -> int:
        # The trainer's estimate, 6 x input tokens x non-embedding parameters, counts the parameters by walking
        # every module and parameter of the model, on each step: 2.8 ms of host time a step for flan-t5-large
        # (bench/RESULTS.md). The count doesn't change while training.
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs:
            return 0
        if self._flops_per_input_token is None:
            self._flops_per_input_token = super().floating_point_ops({main: inputs[main][:1, :1]})
        return self._flops_per_input_token * inputs[main].numel()

    def _trainer_scales(self, num_items_in_batch) -> tuple[float, float]:
        """How the trainer scales the model's mean loss: (in Trainer.compute_loss, in training_step). Where the
        model takes the loss keywords, the trainer counts the step's label tokens (num_items_in_batch, over every
        micro-batch and process), expects a loss already divided by them, and multiplies it by the processes to
        undo DDP's mean of the gradients; otherwise training_step divides by the accumulation steps."""
        if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
            return float(self.accelerator.num_processes), 1.0
        return 1.0, 1.0 / self.current_gradient_accumulation_steps

    def batch_factors(self, inputs, num_items_in_batch) -> tuple[Any, Any]:
        """(trained, logged): what this micro-batch's mean token loss is multiplied by, all scaling told, in the
        loss its backward pass takes and in the loss its step logs.

        logged: the batch's share of its step's label tokens, so every step logs its token mean, as
        transformers does (times the processes, since the trainer logs the mean over the processes).
        trained, loss_normalization=tokens: its label tokens over `label_tokens_per_batch` and the accumulation
        steps, so a step's gradient is that of its summed token loss over a fixed count, as T5's fixed loss
        normaliser gives (t5x's loss_normalizing_factor). Every label token of an epoch then weighs the same
        in whatever batch it lands, and batches grouped by length or packed by task weight a mixture's tasks
        as random batches do. trained, batch: the logged factor (the step's token mean)."""
        tokens = (inputs["labels"] != -100).sum()
        processes = self.accelerator.num_processes
        if num_items_in_batch is not None:
            logged = tokens * processes / num_items_in_batch
        else:
            logged = 1.0 / self.current_gradient_accumulation_steps  # the mean of the micro-batches' means
        if self.label_tokens_per_batch is None:
            return logged, logged
        # The configured steps, not the current ones: an epoch's last, shorter accumulation window keeps the
        # same count, so its tokens weigh what every other token does.
        return tokens / (self.label_tokens_per_batch * self.args.gradient_accumulation_steps), logged

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # T5's forward takes num_items_in_batch among its **kwargs but ignores it and returns its own batch's
        # mean, so the trainer, which then neither divides by the accumulation steps nor by the processes,
        # would sum the means: grad_accum=2 trained and logged twice the loss. batch_factors gives each batch
        # its part of the step's loss; this returns it as training_step will scale it.
        # Packed rows go through the same call (packing.accept_rows), so the trainer's scaling by the number of
        # processes, which undoes DDP's averaging of the gradients, applies to them too.
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        inside, after = self._trainer_scales(num_items_in_batch)
        mean = loss / inside
        trained, logged = self.batch_factors(inputs, num_items_in_batch)
        self._logged_loss = mean.detach() * logged
        loss = mean * (trained / after)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        """A bf16 model gets AdamW over fp32 master weights (flantune.kernels.MasterWeightAdamW), with the
        trainer's usual weight-decay groups; other models get the trainer's own optimizer."""
        import torch

        from flantune.kernels import MasterWeightAdamW

        model = model or self.model
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if self.optimizer is not None or not any(p.dtype == torch.bfloat16 for _, p in trainable):
            return super().create_optimizer(model)
        decay = set(self.get_decay_parameter_names(model))
        groups = [{"params": [p for n, p in trainable if n in decay], "weight_decay": self.args.weight_decay},
                  {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0}]
        self.optimizer = MasterWeightAdamW([g for g in groups if g["params"]], lr=self.args.learning_rate,
                                           betas=(self.args.adam_beta1, self.args.adam_beta2),
                                           eps=self.args.adam_epsilon)
        return self.optimizer

    def _issue_warnings_after_load(self, load_result) -> None:
        # Tied weights (the embeddings, a tied lm_head) are saved once and missing by design.
        tied = set(getattr(base_model_of(self.model), "all_tied_weights_keys", None) or {})
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        result = self.evaluator.run(self.model)
        metrics = result.flat(prefix=f"{metric_key_prefix}_")
        metrics[f"{metric_key_prefix}_runtime"] = result.throughput()["seconds"]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def training_arguments(p, out: Path, batch_size: int, micro_batches: int = 1) -> Seq2SeqTrainingArguments:
    """The trainer's arguments; `batch_size` is a micro-batch per process, in the train set's items (rows when
    packed), and a step accumulates `micro_batches` of them train.grad_accum times."""
    import torch

    cfg = p.cfg
    t = cfg.train
    report_to = cfg.report_to if isinstance(cfg.report_to, str) else list(cfg.report_to)
    return Seq2SeqTrainingArguments(
        output_dir=str(out / rundir.CHECKPOINTS),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum * micro_batches,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the training steps
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler,
        lr_scheduler_kwargs=OmegaConf.to_container(t.lr_scheduler_kwargs, resolve=True),
        optim=t.optim,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps or t.eval_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=SCORE,
        greater_is_better=True,
        bf16=p.precision == "bf16-mixed",  # precision=bf16 trains a bf16 model instead (no autocast)
        fp16=p.precision == "fp16",
        ddp_find_unused_parameters=False,  # every weight of a T5 (or its LoRA adapter) takes part in each step
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU use gloo data parallel
        **_checkpointing(cfg.gradient_checkpointing),
        report_to=report_to,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False,  # the train set holds exactly the model's columns
        disable_tqdm=False,
        # The trainer's NaN filter reads the loss on the host every step, stalling the GPU's queue; a NaN
        # loss is logged as NaN instead of being replaced by the running mean.
        logging_nan_inf_filter=False,
    )


def _checkpointing(on: bool) -> dict[str, bool]:
    # transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; older 5.x lack the new name.
    fields = Seq2SeqTrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": on}


def _collator(tokenizer, cuda_graphs: bool, packed: bool):
    if packed:  # rows of one shape already
        return packing.collate
    collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    if cuda_graphs:  # a few recurring shapes, one recorded graph each
        from flantune.cuda_graphs import PadToBuckets

        collator = PadToBuckets(collator, tokenizer.pad_token_id)
    return collator


def _train_dataset(train_set, tokenizer, model, batch_rows: int):
    if train_set.sampling != "packed":
        return train_set.dataset.select_columns(TRAIN_COLUMNS)
    packing.accept_rows(model)
    start = base_model_of(model).config.decoder_start_token_id
    return packing.PackedRows(train_set.dataset.select_columns(["input_ids", "labels"]), train_set.plan(batch_rows),
                              tokenizer.pad_token_id, tokenizer.pad_token_id if start is None else start)


def _say_if_rows_miss_batch_size(cfg, rows: int, examples_per_row: float) -> None:
    """Whole rows a process can't always hold train.batch_size examples (each takes at least one): say so
    where they miss it by more than a quarter, since the global batch then differs from the one asked for."""
    held = rows * examples_per_row
    missed = abs(held - cfg.train.batch_size) > cfg.train.batch_size / 4
    if cfg.train.packed_rows_per_batch is None and missed and is_main():
        from flantune.console import console

        console(stderr=True).print(
            f"[bold yellow]Note:[/] a packed row holds {examples_per_row:.1f} examples on average, so "
            f"train.batch_size={cfg.train.batch_size} takes {rows} row(s) a process, about {held:.0f} examples. Set "
            "train.batch_size to a multiple of the examples a row holds, or train.packed_rows_per_batch to choose "
            "the rows.", highlight=False)


def _sum_over_processes(trainer: FlantuneTrainer) -> None:
    """The token and example counts of every process, so throughput covers the whole run."""
    import torch
    import torch.distributed as dist

    counts = torch.tensor([float(trainer.useful_tokens), float(trainer.padded_tokens), float(trainer.train_examples)],
                          device=trainer.args.device, dtype=torch.float64)
    if process_group()[1] > 1:
        dist.all_reduce(counts)
    trainer.useful_tokens, trainer.padded_tokens, trainer.train_examples = (int(v) for v in counts.tolist())


def train(p, out: Path, model, tokenizer, train_set, evaluator: Evaluator) -> Trained:
    cfg = p.cfg
    batch = cfg.train.batch_size
    if train_set.sampling == "packed":  # train.batch_size counts examples: as many whole rows as hold them
        batch = cfg.train.packed_rows_per_batch or train_set.packed_rows_per_batch(batch)
        _say_if_rows_miss_batch_size(cfg, batch, train_set.examples_per_row())
    micro_batches = batching.micro_batches(cfg.train.micro_batches, batch, mixture=len(p.tasks) > 1,
                                           sampling=train_set.sampling)
    micro = batch // micro_batches  # what the trainer sees as a batch; a step accumulates micro_batches of them
    # Batches are formed at the global size and cut into per-process batches by accelerate, so N processes
    # of batch b train on exactly the batches one process of batch N*b would.
    global_batch = micro * world_size()
    per_batch = train_set.label_tokens_per_batch(micro, world_size()) \
        if cfg.train.loss_normalization == "tokens" else None
    trainer = FlantuneTrainer(
        model=model,
        args=training_arguments(p, out, micro, micro_batches),
        train_dataset=_train_dataset(train_set, tokenizer, model, global_batch),
        eval_dataset=evaluator.sets[0].data,  # only to satisfy the trainer's checks: `evaluate` uses the evaluator
        data_collator=_collator(tokenizer, p.cuda_graphs, train_set.sampling == "packed"),
        processing_class=tokenizer,
        evaluator=evaluator,
        cuda_graphs=p.cuda_graphs,
        label_tokens_per_batch=per_batch,
        sampler_factory=lambda: train_set.sampler(global_batch),
        callbacks=[EvaluateAtEnd()],
    )
    trainer.remove_callback(ProgressCallback)  # its bar, with flantune's log lines (flantune.progress)
    trainer.add_callback(RunProgress({s.task.name: s.task.primary_metric for s in evaluator.sets}))
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resume_from = None
    if cfg.resume:
        last = rundir.last_checkpoint(out)
        resume_from = str(last) if last else None
    start = time.perf_counter()
    with no_transformers_bars():  # no "Writing model shards" bar inside the trainer's at each checkpoint
        trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    _sum_over_processes(trainer)
    args = trainer.args
    consumed = trainer.state.global_step * args.per_device_train_batch_size * \
        args.gradient_accumulation_steps * args.world_size
    throughput = {
        "seconds": seconds,
        "steps": trainer.state.global_step,
        "examples": trainer.train_examples,
        "useful_tokens": trainer.useful_tokens,
        "examples_per_s": trainer.train_examples / seconds if seconds else 0.0,
        "tokens_per_s": trainer.useful_tokens / seconds if seconds else 0.0,
        "pad_fraction": 1 - trainer.useful_tokens / trainer.padded_tokens if trainer.padded_tokens else 0.0,
        "pad_fraction_random_batching": train_set.random_pad_fraction(cfg.train.batch_size),
        "resumed_from": resume_from,
        "loss_normalization": cfg.train.loss_normalization,
        "label_tokens_per_batch": per_batch,
        "micro_batches": micro_batches,  # forward passes a step's batch ran as (train.micro_batches)
        "micro_batch_size": micro,
        "processes": args.world_size,
        "parallelism": "fsdp" if trainer.is_fsdp_enabled else "deepspeed" if trainer.is_deepspeed_enabled
        else "ddp" if args.world_size > 1 else "single",
    }
    if train_set.sampling == "packed":  # the (input, label) lengths of the rows, one per shape
        throughput["packed_rows"] = [list(shape) for shape in train_set.row_shapes.shapes]
        throughput["packed_rows_per_batch"] = batch
    if trainer.graphed is not None:
        throughput["cuda_graphs"] = trainer.graphed.summary()
    if torch.cuda.is_available():
        throughput["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if trainer.graphed is not None:
            # A replay reuses the graphs' memory pool without allocating, so the peak above misses the
            # activations of every step after the recordings: what the run holds, the pool included, does not.
            torch.cuda.empty_cache()
            throughput["gpu_memory_held_gib"] = torch.cuda.memory_reserved() / 2**30
    trainer.graphed = None  # the graphs and their pool: the final evaluation needs that memory more
    return Trained(trainer=trainer, model=trainer.model, throughput=throughput, log_history=trainer.state.log_history,
                   best_checkpoint=trainer.state.best_model_checkpoint,
                   mixture=train_set.report(consumed, global_batch, global_batch * args.gradient_accumulation_steps)
                   if len(p.tasks) > 1 else None)
