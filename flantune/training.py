"""The Seq2SeqTrainer of a run: length-grouped (or mixture) batches, evaluation by flantune's
evaluator on the validation split, the best checkpoint kept by the aggregate score, resume."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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

from flantune import packing, rundir
from flantune.callbacks import AdaLoraSchedule, EarlyStopping, adalora_ranks_of, early_stopping_record
from flantune.console import console, no_transformers_bars
from flantune.cross_entropy import summed_cross_entropy
from flantune.distributed import world_size
from flantune.evaluation import SCORE, Evaluator
from flantune.progress import RunProgress
from flantune.step import Step, decide
from flantune.unwrap import base_model_of

TRAIN_COLUMNS = ["input_ids", "attention_mask", "labels"]


@dataclass
class Trained:
    trainer: Any
    model: Any
    step: Step
    throughput: dict[str, float]
    log_history: list[dict]
    best_checkpoint: str | None
    mixture: dict | None
    early_stopping: dict | None = None  # train.early_stopping_patience > 0: what it did (`early_stopping_record`)


class EvaluateAtEnd(TrainerCallback):
    """Evaluate (and save) after the last step too, so the final weights compete for 'best'."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class FlantuneTrainer(Seq2SeqTrainer):
    """The trainer of a run. Its loss is decided here, not by the trainer: `compute_loss` returns a micro-batch's
    summed token cross-entropy over its step's normaliser (`normaliser`), times the processes, so the step's
    gradients are those of its summed token loss over the normaliser."""

    # compute_loss divides by the whole step's normaliser: the trainer must not divide by the accumulation steps
    loss_is_scaled_for_ga = True

    def __init__(self, *args, step: Step, evaluator: Evaluator, sampler_factory, cuda_graphs: bool = False,
                 optimizer_cls_and_kwargs=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The Trainer's own argument, which Seq2SeqTrainer doesn't pass on: create_optimizer builds this class
        # over the trainer's weight-decay groups.
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self.step = step
        self.evaluator = evaluator
        self.sampler_factory = sampler_factory
        self.cuda_graphs = cuda_graphs
        self.graphed = None  # flantune.cuda_graphs.GraphedSteps, made at the first step
        # The trainer counts a step's label tokens on every process (num_items_in_batch) only for a model it takes
        # to read them; the batch normaliser needs the count whatever the model (T5 takes them today).
        self.model_accepts_loss_kwargs = True
        self._flops_per_input_token: int | None = None
        self.useful_tokens = 0  # non-pad input tokens + label tokens actually trained on
        self.padded_tokens = 0  # the same, padding included
        self.train_examples = 0

    def _get_train_sampler(self, train_dataset=None):
        return self.sampler_factory()

    def normaliser(self, num_items_in_batch):
        """The label tokens a step's summed token loss is divided by. train.loss_normalization=tokens: a fixed
        count (Step.label_tokens), as T5's fixed loss normaliser; batch: the step's own label tokens on every
        process (the trainer's num_items_in_batch), so each step trains on its token mean, as transformers does."""
        return self.step.label_tokens or num_items_in_batch

    def share_of_step(self, summed, num_items_in_batch):
        """A micro-batch's summed token loss as its part of the step's: over the normaliser, times the processes
        to undo DDP's mean of their gradients."""
        return summed * self.step.processes / self.normaliser(num_items_in_batch)

    def loss_share(self, inputs, num_items_in_batch):
        """What a micro-batch's mean token loss is multiplied by: its label tokens' share of the step."""
        return self.share_of_step((inputs["labels"] != -100).sum(), num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Packed rows go through the same call (packing.accept_rows). The model gets the decoder's inputs instead
        # of the labels, so that it doesn't score them too: the loss is flantune's summed cross-entropy, which
        # makes no log-softmax the size of the logits (flantune/cross_entropy.py).
        labels = inputs["labels"]
        outputs = model(**decoder_inputs(model, inputs))
        if outputs.get("loss") is not None:  # a model that adds to its loss (decoder_inputs): its token mean
            loss = outputs.loss * self.loss_share(inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        summed = summed_cross_entropy(outputs.logits, labels)
        loss = self.share_of_step(summed, num_items_in_batch)
        if return_outputs:  # the mean, as the model's own loss would be
            outputs["loss"] = summed.detach() / (labels != -100).sum().clamp_min(1)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Summed where the batch lives (often the GPU) and read once at the end: a per-step .item()
        # would make the host wait for the device every step.
        self.useful_tokens = self.useful_tokens + inputs["attention_mask"].sum() + (inputs["labels"] != -100).sum()
        self.padded_tokens += inputs["input_ids"].numel() + inputs["labels"].numel()
        self.train_examples = self.train_examples + packing.example_count(inputs)
        loss = None
        if self.cuda_graphs:  # the forward and backward as a replayed CUDA graph; None for a batch run eagerly
            from flantune.cuda_graphs import GraphedSteps

            if self.graphed is None:
                self.graphed = GraphedSteps(model, accumulate=self.step.accumulation > 1)
            model.train()
            inputs = self._prepare_inputs(inputs)
            loss = self.graphed.step(inputs, self.loss_share(inputs, num_items_in_batch))
        if loss is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
        # What the step logs is its token mean, whatever the normaliser it trains on.
        return loss * (self.normaliser(num_items_in_batch) / num_items_in_batch)

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

    def _issue_warnings_after_load(self, load_result) -> None:
        # Tied weights (the embeddings, a tied lm_head) are saved once and missing by design.
        tied = set(getattr(base_model_of(self.model), "all_tied_weights_keys", None) or {})
        missing = [k for k in load_result.missing_keys if k not in tied]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=missing))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        adalora_ranks_of(self.model, resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        adalora_ranks_of(self.model, self.state.best_model_checkpoint)
        super()._load_best_model()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        result = self.evaluator.run(self.model)
        metrics = result.flat(prefix=f"{metric_key_prefix}_")
        metrics[f"{metric_key_prefix}_runtime"] = result.throughput()["seconds"]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def decoder_inputs(model, inputs: dict) -> dict:
    """A batch's model inputs with the decoder's input ids in place of the labels, made the model's own way (T5:
    the labels shifted right behind the start token). A model that adds a term to its loss (AdaLoRA's orthogonal
    regulariser, which peft adds only to a loss the model computed) or that has no such way gets the labels."""
    model = getattr(model, "module", model)  # DDP's and DeepSpeed's wrappers
    if getattr(model, "peft_type", None) == "ADALORA":  # peft's PeftType is a str enum
        return inputs
    rest = {k: v for k, v in inputs.items() if k != "labels"}
    if "decoder_input_ids" in inputs:  # packed rows bring their own
        return rest
    prepare = getattr(base_model_of(model), "prepare_decoder_input_ids_from_labels", None)
    if prepare is None:
        return inputs
    return {**rest, "decoder_input_ids": prepare(labels=inputs["labels"])}


def training_arguments(p, out: Path, step: Step) -> Seq2SeqTrainingArguments:
    """The trainer's arguments: its batch is the step's micro-batch per process, in the train set's items (rows
    when packed), and it accumulates the step's micro-batches of every batch."""
    import torch

    cfg = p.cfg
    t = cfg.train
    report_to = cfg.report_to if isinstance(cfg.report_to, str) else list(cfg.report_to)
    return Seq2SeqTrainingArguments(
        output_dir=str(out / rundir.CHECKPOINTS),
        per_device_train_batch_size=step.micro_batch,
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=step.accumulation,
        average_tokens_across_devices=True,  # num_items_in_batch: every process's label tokens (FlantuneTrainer)
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
        metric_for_best_model=SCORE,  # the best checkpoint's, and early stopping's, score
        restore_callback_states_from_checkpoint=True,  # resume keeps early stopping's patience count
        greater_is_better=True,
        **p.precision.autocast,  # precision=bf16 trains a bf16 model instead (no autocast)
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


def _sum_over_processes(trainer: FlantuneTrainer) -> None:
    """The token and example counts of every process, so throughput covers the whole run."""
    import torch
    import torch.distributed as dist

    counts = torch.tensor([float(trainer.useful_tokens), float(trainer.padded_tokens), float(trainer.train_examples)],
                          device=trainer.args.device, dtype=torch.float64)
    if trainer.step.processes > 1:
        dist.all_reduce(counts)
    trainer.useful_tokens, trainer.padded_tokens, trainer.train_examples = (int(v) for v in counts.tolist())


def train(p, out: Path, model, tokenizer, train_set, evaluator: Evaluator, *,
          callbacks: Sequence[Callable[[FlantuneTrainer], TrainerCallback]] = ()) -> Trained:
    """Train the run's model. `callbacks` make extra trainer callbacks from the trainer (bench/run.py's clock reads
    its token counts), so a benchmark times this very path."""
    cfg = p.cfg
    step = decide(cfg, train_set, processes=world_size(), mixture=len(p.tasks) > 1)
    args = training_arguments(p, out, step)
    optimizer = None
    if p.precision.master_weights:  # AdamW over fp32 master weights, in the trainer's weight-decay groups
        from flantune.kernels import MasterWeightAdamW

        optimizer = (MasterWeightAdamW, {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2),
                                         "eps": args.adam_epsilon})
    trainer = FlantuneTrainer(
        model=model,
        args=args,
        train_dataset=_train_dataset(train_set, tokenizer, model, step.global_micro_batch),
        eval_dataset=evaluator.sets[0].data,  # only to satisfy the trainer's checks: `evaluate` uses the evaluator
        data_collator=_collator(tokenizer, p.cuda_graphs, train_set.sampling == "packed"),
        processing_class=tokenizer,
        optimizer_cls_and_kwargs=optimizer,
        step=step,
        evaluator=evaluator,
        cuda_graphs=p.cuda_graphs,
        sampler_factory=lambda: train_set.sampler(step.global_micro_batch),
        callbacks=[EvaluateAtEnd(), *_method_callbacks(model, cfg)],
    )
    trainer.remove_callback(ProgressCallback)  # its bar, with flantune's log lines (flantune.progress)
    trainer.add_callback(RunProgress({s.task.name: s.task.primary_metric for s in evaluator.sets}))
    for make in callbacks:
        trainer.add_callback(make(trainer))
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    resume_from = None
    if cfg.resume:
        last = rundir.last_checkpoint(out)
        resume_from = str(last) if last else None
    start = time.perf_counter()
    if resume_from and _training_ended(trainer, resume_from):
        console().print(f"{Path(resume_from).name} ends the training: no step to train again, on to the final "
                        "evaluation", highlight=False)
    else:
        with no_transformers_bars():  # no "Writing model shards" bar inside the trainer's at each checkpoint
            trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    _sum_over_processes(trainer)
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
        "parallelism": "fsdp" if trainer.is_fsdp_enabled else "deepspeed" if trainer.is_deepspeed_enabled
        else "ddp" if step.processes > 1 else "single",
        "device": torch.cuda.get_device_name() if trainer.args.device.type == "cuda" else trainer.args.device.type,
    }
    if train_set.sampling == "packed":  # the (input, label) lengths of the rows, one per shape
        throughput["packed_rows"] = [list(shape) for shape in train_set.row_shapes.shapes]
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
    drawn = trainer.state.global_step * step.global_batch
    return Trained(trainer=trainer, model=trainer.model, step=step, throughput=throughput,
                   log_history=trainer.state.log_history, best_checkpoint=trainer.state.best_model_checkpoint,
                   mixture=train_set.report(drawn, step.global_micro_batch, step.global_batch)
                   if len(p.tasks) > 1 else None, early_stopping=early_stopping_record(trainer, cfg))


def _method_callbacks(model, cfg) -> list[TrainerCallback]:
    from flantune.methods import method_of

    callbacks: list[TrainerCallback] = []
    if method_of(cfg).name == "adalora" and hasattr(model, "peft_config"):
        callbacks.append(AdaLoraSchedule(model))
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStopping(cfg.train.early_stopping_patience, cfg.train.early_stopping_threshold))
    return callbacks


def _training_ended(trainer: FlantuneTrainer, checkpoint: str) -> bool:
    """Whether `checkpoint` is the training's last step (a run cut after it, while evaluating or saving): then its
    state and weights are loaded as the trainer's end of training would have them (the best checkpoint's, with
    load_best_model_at_end). Trainer.train resumed from it would train one step more whenever the last step
    falls mid-epoch: it checks max_steps only after a step."""
    from transformers import TrainerState

    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    if not 0 < state.max_steps <= state.global_step:
        return False
    trainer.state = state
    trainer._load_from_checkpoint(checkpoint)
    if trainer.args.load_best_model_at_end and state.best_model_checkpoint:
        trainer._load_best_model()
    return True
