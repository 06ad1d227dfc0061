"""The trainer callbacks of a method or setting: AdaLoRA's rank schedule and checkpoints, early stopping and what
it records in metrics.json."""

from __future__ import annotations

from pathlib import Path

from transformers import EarlyStoppingCallback, TrainerCallback

from flantune.evaluation import SCORE


class AdaLoraSchedule(TrainerCallback):
    """method=adalora: the rank budget's schedule spans the run's steps, known once the trainer starts, and is
    updated after each optimizer step, before the gradients are zeroed (peft's update_and_allocate, as its docs
    ask: after optimizer.step(), before zero_grad())."""

    def __init__(self, model):
        self.tuner = model.base_model  # peft's AdaLoraModel

    def on_train_begin(self, args, state, control, **kwargs):
        config = self.tuner.peft_config[self.tuner.trainable_adapter_name]
        if config.tinit >= state.max_steps - config.tfinal:
            from flantune.errors import FlantuneError

            raise FlantuneError(
                f"method=adalora: the run has {state.max_steps} steps, which adalora.tinit={config.tinit} and "
                f"adalora.tfinal={config.tfinal} leave none of to re-allocate ranks in. Lower them, or train longer."
            )
        self.tuner.rankallocator.set_total_step(state.max_steps)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.tuner.update_and_allocate(state.global_step)


def adalora_ranks_of(model, checkpoint: str | None) -> None:
    """An AdaLoRA checkpoint holds its adapters cut to the ranks of its step (its adapter_config.json's
    rank_pattern), and peft loads it into modules cut to the live config's ranks: before a checkpoint is loaded
    (resume, the best one at the end), the live config takes the checkpoint's ranks."""
    import json

    config = getattr(model, "peft_config", {}).get("default")
    path = Path(checkpoint or "") / "adapter_config.json"
    if config is None or type(config).__name__ != "AdaLoraConfig" or not path.is_file():
        return
    config.rank_pattern = json.loads(path.read_text())["rank_pattern"]


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping (its patience count is saved in each checkpoint's trainer_state.json and
    restored on resume), which also notes the step it stopped at."""

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float | None = 0.0,
                 stopped_at: int | None = None):
        super().__init__(early_stopping_patience, early_stopping_threshold)
        self.stopped_at = stopped_at

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if control.should_training_stop and state.global_step < state.max_steps:
            self.stopped_at = state.global_step

    def state(self) -> dict:
        saved = super().state()
        saved["args"]["stopped_at"] = self.stopped_at
        return saved


def early_stopping_record(trainer, cfg) -> dict | None:
    """metrics.json's early_stopping: the settings, and whether, where and why the run stopped before its last
    step (None when early stopping is off)."""
    t = cfg.train
    if not t.early_stopping_patience:
        return None
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStopping))
    stopped = callback.stopped_at
    reason = None
    if stopped is not None:
        reason = (f"the validation {SCORE} had not improved by more than {t.early_stopping_threshold} on its best "
                  f"({trainer.state.best_metric:.4g}) for {t.early_stopping_patience} evaluation(s)")
    return {"patience": t.early_stopping_patience, "threshold": t.early_stopping_threshold,
            "stopped_early": stopped is not None, "stopped_at_step": stopped, "planned_steps": trainer.state.max_steps,
            "best_metric": trainer.state.best_metric, "reason": reason}
