"""Comparative reports: base vs fine-tuned models (and simple baselines), per task, with the uncertainty
of every difference. Every number is recomputed from saved predictions, so a report can be rebuilt
without running a model (`flantune report`).

A report compares `System`s on the same tasks and examples. The first system is the reference (the
base model); every other system's differences are taken against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class System:
    name: str  # shown in the report: "base: google/flan-t5-base", "fine-tuned: imdb-run", "majority class"
    kind: str  # "model" or "baseline"
    predictions: dict[str, list[dict[str, Any]]]  # task -> rows as written by flantune.evaluation
    metrics: dict[str, Any] = field(default_factory=dict)  # its metrics.json (throughput under "eval")
    log_history: list[dict[str, Any]] | None = None  # a fine-tuned run's trainer log
    source: str = ""  # the directory it was read from
    # eval.templates: task -> template -> rows, as flantune.evaluation.read_template_predictions reads them
    template_predictions: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
