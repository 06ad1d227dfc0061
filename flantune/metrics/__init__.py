"""Metrics, registered by name and computed locally (no hub access needed).

Every metric works in two steps so that reports can resample examples without recomputing
anything from text:

    stats(predictions, references, *, choices, **params) -> dict[str, numpy array, first axis = example]
    aggregate(stats, *, choices, **params) -> dict[str, float]

`compute` is aggregate(stats(...)). A paired bootstrap draws example indices, takes
`{k: v[idx]}` of the stats, and aggregates again. Scores are on a 0-100 scale (counts such as
`support/<class>` are plain counts).

`predictions` are the model's output texts; `references` is one list of gold texts per example
(a classification example's list holds the gold choice text). `choices` is the task's list of
answer texts for classification tasks, else None.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flantune.errors import FlantuneError, did_you_mean


@dataclass(frozen=True)
class MetricDef:
    name: str
    module: str  # flantune.metrics.<module>, imported on first use
    stats_fn: str
    aggregate_fn: str
    outputs: tuple[str, ...] | None  # None: depends on the task's choices (see output_names)
    description: str
    bound: tuple[tuple[str, Any], ...] = ()  # keyword arguments fixed by the registry (evaluate:<name>)

    def _fn(self, attr: str):
        return getattr(importlib.import_module(self.module), attr)

    def stats(self, predictions, references, *, choices=None, **params) -> dict[str, np.ndarray]:
        return self._fn(self.stats_fn)(predictions, references, choices=choices, **dict(self.bound), **params)

    def aggregate(self, stats: dict[str, np.ndarray], *, choices=None, **params) -> dict[str, float]:
        return self._fn(self.aggregate_fn)(stats, choices=choices, **dict(self.bound), **params)

    def output_names(self, choices: Sequence[str] | None) -> tuple[str, ...] | None:
        if self.outputs is not None:
            return self.outputs
        if self.name == "per_class" and choices:
            return tuple(f"{m}/{c}" for c in choices for m in ("precision", "recall", "f1", "support"))
        return None


_C = "flantune.metrics.classification"
_QA = "flantune.metrics.qa"
_T = "flantune.metrics.text"

METRICS: dict[str, MetricDef] = {
    m.name: m
    for m in [
        MetricDef("accuracy", _C, "classification_stats", "accuracy", ("accuracy",),
                  "share of examples whose predicted choice is the gold one (scikit-learn accuracy_score)"),
        MetricDef("macro_f1", _C, "classification_stats", "macro_f1", ("macro_f1",),
                  "unweighted mean of per-class F1 over the task's choices (scikit-learn f1_score, average='macro')"),
        MetricDef("per_class", _C, "classification_stats", "per_class", None,
                  "precision / recall / F1 / support of each choice (scikit-learn classification_report)"),
        MetricDef("squad", _QA, "squad_stats", "mean_em_f1", ("exact_match", "f1"),
                  "SQuAD v1.1 exact match and token F1, max over gold answers"),
        MetricDef("mlqa", _QA, "mlqa_stats", "mean_em_f1", ("exact_match", "f1"),
                  "MLQA exact match and F1 with MLQA's normalisation for the answer language (param: lang)"),
        MetricDef("rouge", _T, "rouge_stats", "rouge", ("rouge1", "rouge2", "rougeL", "rougeLsum"),
                  "ROUGE F-measure from rouge_score with Porter stemming; rougeLsum on nltk Punkt sentences, as "
                  "published SAMSum numbers (param sentences: punkt, the default, or newline)"),
        MetricDef("bleu", _T, "bleu_stats", "bleu", ("bleu",),
                  "corpus BLEU from sacrebleu (13a tokenisation, exp smoothing)"),
    ]
}

EVALUATE_PREFIX = "evaluate:"


def known_metric_names() -> list[str]:
    return sorted(METRICS)


def get_metric(name: str) -> MetricDef:
    if name.startswith(EVALUATE_PREFIX) and name[len(EVALUATE_PREFIX):].strip():
        return MetricDef(name, "flantune.metrics.passthrough", "evaluate_stats", "evaluate_aggregate", None,
                         f"{name[len(EVALUATE_PREFIX):]} from the evaluate library (needs the hub or its cache)",
                         bound=(("evaluate_name", name),))
    if name not in METRICS:
        raise FlantuneError(
            f"Unknown metric '{name}'.{did_you_mean(name, METRICS)} Known metrics: {', '.join(sorted(METRICS))}, "
            f"or {EVALUATE_PREFIX}<name> for any metric of the evaluate library."
        )
    return METRICS[name]


def metric_outputs(specs, choices: dict[int, str] | None) -> list[str] | None:
    """Every score name a task's metrics produce, or None when one of them can't say in advance."""
    names: list[str] = []
    texts = list(choices.values()) if choices else None
    for spec in specs:
        if spec.name.startswith(EVALUATE_PREFIX):
            return None
        outs = get_metric(spec.name).output_names(texts)
        if outs is None:
            return None
        names.extend(outs)
    return names


def compute_stats(specs, predictions: Sequence[str], references: Sequence[Sequence[str]],
                  choices: Sequence[str] | None) -> dict[str, dict[str, np.ndarray]]:
    """Per-metric sufficient statistics, keyed by metric name."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return {
        spec.name: get_metric(spec.name).stats(predictions, references, choices=choices, **spec.params)
        for spec in specs
    }


def aggregate_stats(specs, stats: dict[str, dict[str, np.ndarray]], choices: Sequence[str] | None,
                    index: np.ndarray | None = None) -> dict[str, float]:
    """Scores from statistics, optionally on a subset / resample of examples given by `index`."""
    scores: dict[str, float] = {}
    for spec in specs:
        s = stats[spec.name]
        if index is not None:
            s = {k: v[index] for k, v in s.items()}
        scores.update(get_metric(spec.name).aggregate(s, choices=choices, **spec.params))
    return scores


def compute(specs, predictions, references, choices=None) -> dict[str, float]:
    return aggregate_stats(specs, compute_stats(specs, predictions, references, choices), choices)


def score(name: str, predictions, references, choices=None, **params: Any) -> dict[str, float]:
    """One metric by name: score('rouge', preds, refs)."""
    metric = get_metric(name)
    return metric.aggregate(metric.stats(predictions, references, choices=choices, **params), choices=choices, **params)
