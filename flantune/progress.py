"""What a run prints while it trains: the trainer's progress bar (transformers' ProgressCallback) with its log
lines as a user reads them: numbers as numbers (transformers 5 prints them as strings, '0.5'), and one compact
line per evaluation (the aggregate score, each task's primary metric and loss), not every per-class metric.
log_history.json and metrics.json keep every metric: only the printed line is shorter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import ProgressCallback

from flantune.evaluation import SCORE

EVAL_PREFIX = "eval_"  # FlantuneTrainer.evaluate's metric_key_prefix, as the trainer's evaluations pass it
SHOWN_DIGITS = 4  # significant digits of a printed number (transformers' own format, {:.4g})


class RunProgress(ProgressCallback):
    """The trainer's progress bar, its log lines written as described above."""

    def __init__(self, primary_metrics: Mapping[str, str]):
        """primary_metrics: task -> its primary metric."""
        super().__init__()
        self.eval_keys = [f"{EVAL_PREFIX}{SCORE}"] + [f"{EVAL_PREFIX}{task}/{metric}"
                                                      for task, primary in primary_metrics.items()
                                                      for metric in (primary, "loss")]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if any(key.startswith(EVAL_PREFIX) for key in logs):
            shown = {key: logs[key] for key in [*self.eval_keys, "epoch"] if key in logs}
        else:
            shown = {key: value for key, value in logs.items() if key != "total_flos"}
        self.training_bar.write(str({key: _number(value) for key, value in shown.items()}))


def _number(value: Any) -> Any:
    """A float rounded to SHOWN_DIGITS significant digits, still a float; anything else as it is."""
    return float(f"{value:.{SHOWN_DIGITS}g}") if isinstance(value, float) else value
