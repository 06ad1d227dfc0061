"""A report's per-template part (eval.templates): each system's primary metric on every template of a task, their
mean, spread (sample std over templates) and range, and each system's difference to the reference paired per
template: the same examples rendered with the same template on both sides."""

from __future__ import annotations

from typing import Any

from flantune.evaluation import spread
from flantune.metrics import aggregate_stats, compute_stats
from flantune.report import System
from flantune.report.stats import align_rows, gold_texts, paired_bootstrap
from flantune.task import Task


def template_section(task: Task, systems: list[System], *, n_resamples: int, seed: int,
                     confidence: float) -> dict[str, Any] | None:
    """None unless the reference was evaluated on several templates of the task; systems evaluated on its
    eval_template alone (baselines, runs without eval.templates) are listed under "absent"."""
    ref = systems[0]
    ref_by = ref.template_predictions.get(task.name) or {}
    if not ref_by:
        return None
    primary, choices = task.primary_metric, task.choice_texts or None
    out: dict[str, Any] = {"metric": primary, "templates": list(ref_by), "systems": {}, "differences": {},
                           "absent": []}
    ref_stats: dict[str, Any] = {}
    for s in systems:
        by = s.template_predictions.get(task.name) or {}
        shared = [t for t in ref_by if t in by]
        if not shared:
            out["absent"].append(s.name)
            continue
        values, diffs = {}, {}
        for t in shared:
            rows = by[t] if s is ref else align_rows(f"{task.name} ({t})", ref.name, ref_by[t], s.name, by[t])
            golds = [gold_texts(r) for r in ref_by[t]]
            stats = compute_stats(task.metrics, [r["prediction"] for r in rows], golds, choices)
            values[t] = aggregate_stats(task.metrics, stats, choices)[primary]
            if s is ref:
                ref_stats[t] = stats
            else:
                d = paired_bootstrap(task, ref_stats[t], stats, n_resamples=n_resamples, seed=seed,
                                     confidence=confidence)
                diffs[t] = d[primary].to_dict()
        out["systems"][s.name] = {"per_template": values, **spread(list(values.values()))}
        if s is not ref:
            out["differences"][s.name] = diffs
    return out
