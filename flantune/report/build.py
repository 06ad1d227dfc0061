"""Build a comparative report from saved predictions: every number is recomputed from the prediction
rows, then written three ways from one dict: report.json (the numbers), report.md (+ images/*.png)
and report.html (one self-contained file).

systems[0] is the reference (the base model). Every other system, a fine-tuned model (kind "model")
or a baseline (kind "baseline"), is compared with it on the same examples: a paired bootstrap
interval for every score, and for classification the exact McNemar test. For fine-tuned models the
report also lists the examples the fine-tuning fixed and those it broke: an example counts when its
per-example score (0-1: 1/0 correctness for classification, the primary metric's own per-example
value such as SQuAD F1 or a ROUGE F-measure otherwise) moved by at least FIX_THRESHOLD.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from flantune.errors import FlantuneError
from flantune.metrics import aggregate_stats, compute_stats, get_metric
from flantune.report import System
from flantune.report import plots, render
from flantune.report.stats import align_rows, gold_texts, mcnemar_exact, paired_bootstrap, per_example_scores
from flantune.report.templates import template_section
from flantune.task import Task

FIX_THRESHOLD = 0.5  # on the 0-1 per-example scale: half of the whole range, so noise does not count
INPUT_CHARS = 300  # inputs are truncated to this many characters in example lists
CONSISTENCY_TOLERANCE = 1e-6  # recomputed vs metrics.json
SINGLE_ANSWER_SHARE = 0.95  # a system giving one answer to at least this share of examples is said to do so


def build_report(tasks: dict[str, Task], systems: list[System], out_dir: Path, *, n_resamples: int = 1000,
                 seed: int = 0, examples_per_list: int = 5, confidence: float = 0.95) -> Path:
    """Write report.json, report.md, report.html and images/ under out_dir; returns report.html's path."""
    report, images = assemble(tasks, systems, n_resamples=n_resamples, seed=seed,
                              examples_per_list=examples_per_list, confidence=confidence)
    return render.write_files(out_dir, report, images, render.render_markdown(report),
                              render.render_html(report, images))


def assemble(tasks: dict[str, Task], systems: list[System], *, n_resamples: int = 1000, seed: int = 0,
             examples_per_list: int = 5, confidence: float = 0.95) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The report as a JSON-ready dict, and its images (relative path -> PNG bytes)."""
    if not systems:
        raise FlantuneError("A report needs at least one system (the reference).")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise FlantuneError(f"Every system in a report needs its own name; got {names}.")
    images: dict[str, bytes] = {}
    file_ids = {s.name: f"{i}-{_slug(s.name)}" for i, s in enumerate(systems)}  # unique even if slugs collide
    report: dict[str, Any] = {
        "reference": systems[0].name,
        "settings": {"n_resamples": n_resamples, "seed": seed, "confidence": confidence,
                     "fix_threshold": FIX_THRESHOLD, "examples_per_list": examples_per_list},
        "systems": [_system_info(s, i) for i, s in enumerate(systems)],
        "tasks": {},
        "skipped_tasks": {},
    }
    for name, task in tasks.items():
        if name not in systems[0].predictions:
            report["skipped_tasks"][name] = f"no predictions from the reference system '{systems[0].name}'"
            continue
        # A baseline often fits some tasks only (majority class: classification; lead-3: summaries),
        # so a system without predictions for a task is left out of that task alone, with a note.
        present = [s for s in systems if name in s.predictions]
        section = _task_section(task, present, images, file_ids, n_resamples=n_resamples, seed=seed,
                                examples_per_list=examples_per_list, confidence=confidence)
        section["notes"][:0] = _baseline_notes(task, systems, present)
        section["seen_in_training"] = _seen_in_training(task, systems[0])
        section["verdict"] = _verdict(task, systems, section)
        report["tasks"][name] = section
    for s in systems:
        for name in s.predictions:
            if name not in tasks and name not in report["skipped_tasks"]:
                report["skipped_tasks"][name] = "no task definition was given for it"
    report["speed"] = _speed(systems)
    report["training"] = _training(tasks, systems, images, file_ids)
    return json_ready(report), images


def _baseline_notes(task: Task, systems: list[System], present: list[System]) -> list[str]:
    """Say plainly which baselines don't apply to a task, or that none does (a baseline fits some tasks only:
    majority class and TF-IDF need answer choices, a lead baseline a `baselines:` entry in the task file)."""
    if any(s.kind == "baseline" for s in present):
        absent = [s.name for s in systems if s not in present and s.kind == "baseline"]
        return [f"Not applicable to this {task.kind} task: {', '.join(absent)}."] if absent else []
    if task.is_classification:
        return ["No baseline was evaluated on this task."]
    return [f"No baseline applies to this {task.kind} task: majority class and TF-IDF + logistic regression need "
            "answer choices, and its task file declares no lead baseline (baselines: [{name: lead, column: ..., "
            "k: 3}] takes the first k sentences, lines or words of that column)."]


def _seen_in_training(task: Task, ref: System) -> dict[str, Any] | None:
    """What the reference (base) model was trained on of this task, by the task file's seen_in_training."""
    model = ref.metrics.get("model") or {}
    names = (model.get("name"), model.get("path"), model.get("label"))
    splits = task.seen_by(*names)
    if not splits:
        return None
    role = ref.metrics.get("split")
    evaluated_seen = role in task.seen_roles(*names)
    note = (f"trained on this task's {', '.join(splits)} split{'s' if len(splits) > 1 else ''}: the base score is "
            "not zero-shot")
    if evaluated_seen:
        note += f"; the evaluated {role} rows ({task.splits[role]}) come from a split it was trained on"
    return {"splits": splits, "evaluated_split_seen": evaluated_seen, "note": note,
            "sources": [s.source for s in task.seen_in_training if set(s.splits) & set(splits)]}


def _single_answer(task: Task, rows: list[dict], stats: dict[str, Any] | None) -> tuple[str, float] | None:
    """The answer a system gives to at least SINGLE_ANSWER_SHARE of the examples, and its share."""
    if not rows:
        return None
    if stats is not None:  # classification: the choice each prediction maps to (invalid ones count as one answer)
        labels = [task.choice_texts[i] if i >= 0 else "an invalid answer" for i in stats["pred"]]
    else:
        labels = [r["prediction"].strip() for r in rows]
    values, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_counts=True)
    share = counts.max() / len(labels)
    return (str(values[counts.argmax()]), float(share)) if share >= SINGLE_ANSWER_SHARE else None


def _verdict(task: Task, systems: list[System], section: dict[str, Any]) -> str:
    """One sentence: each fine-tuned system's gain over the reference on the primary metric, its interval and
    whether it is significant; and which systems give (nearly) one answer to every example."""
    primary, ref = task.primary_metric, systems[0].name
    parts = []
    for s in systems[1:]:
        if s.kind != "model":
            continue
        d = section["differences"][s.name].get(primary) or {}
        if d.get("diff") is None or not math.isfinite(d["diff"]):
            parts.append(f"{s.name} has no {primary} difference to {ref}")
            continue
        interval = ("no interval" if not all(isinstance(d[k], float) and math.isfinite(d[k])
                                             for k in ("ci_low", "ci_high")) else
                    f"{round(100 * section['confidence'])}% interval [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]")
        gain = "gains" if d["diff"] >= 0 else "loses"
        parts.append(f"{s.name} {gain} {abs(d['diff']):.1f} {primary} points "
                     f"{'over' if d['diff'] >= 0 else 'against'} {ref} ({d['system']:.1f} vs {d['reference']:.1f}, {interval}, "
                     f"{'significant' if d['significant'] else 'not significant'})")
    if not parts:
        parts.append(f"{ref} scores {section['systems'][ref]['metrics'].get(primary, float('nan')):.1f} {primary} "
                     "(no fine-tuned system to compare)")
    for name, single in section.pop("_single", {}).items():
        if single is not None:
            parts.append(f"{name} answers '{single[0]}' for {single[1]:.0%} of examples "
                         f"(at least {SINGLE_ANSWER_SHARE:.0%}: it barely depends on its input)")
    return "; ".join(parts) + "."


def _system_info(s: System, i: int) -> dict[str, Any]:
    model = s.metrics.get("model") or {}
    role = "reference" if i == 0 else ("fine-tuned" if s.kind == "model" else s.kind)
    return {"name": s.name, "kind": s.kind, "role": role, "source": s.source, "model": model.get("label"),
            "method": model.get("method"), "random_init": model.get("random_init")}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "system"


# ---- one task -------------------------------------------------------------------------------------

def _task_section(task: Task, systems: list[System], images: dict[str, bytes], file_ids: dict[str, str], *,
                  n_resamples: int, seed: int,
                  examples_per_list: int, confidence: float) -> dict[str, Any]:
    ref = systems[0]
    ref_rows = ref.predictions[task.name]
    rows = {ref.name: list(ref_rows)}
    for s in systems[1:]:
        rows[s.name] = align_rows(task.name, ref.name, ref_rows, s.name, s.predictions[task.name])
    choices = task.choice_texts or None
    golds = [gold_texts(r) for r in ref_rows]
    stats, scores = {}, {}
    for s in systems:
        stats[s.name] = compute_stats(task.metrics, [r["prediction"] for r in rows[s.name]], golds, choices)
        if task.is_classification:  # pred/gold indices for McNemar, per-class tables and confusion matrices
            stats[s.name]["_classification"] = get_metric("accuracy").stats(
                [r["prediction"] for r in rows[s.name]], golds, choices=choices)
        scores[s.name] = aggregate_stats(task.metrics, stats[s.name], choices)

    section: dict[str, Any] = {
        "kind": task.kind, "primary_metric": task.primary_metric, "n": len(ref_rows),
        "metric_names": [k for k in scores[ref.name] if "/" not in k],
        "systems": {s.name: {"metrics": scores[s.name]} for s in systems},
        "differences": {}, "notes": [], "confidence": confidence,
        "_single": {s.name: _single_answer(task, rows[s.name], stats[s.name].get("_classification"))
                    for s in systems if s.kind == "model"},
    }
    for s in systems:
        section["notes"] += _consistency(task, s, scores[s.name])
        for overlap in (s.metrics.get("allowed_overlap") or {}).get(task.name, []):
            section["notes"].append(f"{s.name} trained on rows it was evaluated on (data.allow_overlap=true): "
                                    f"{overlap}. Its scores on this task do not measure held-out data.")
    for s in systems[1:]:
        diffs = paired_bootstrap(task, stats[ref.name], stats[s.name], n_resamples=n_resamples, seed=seed,
                                 confidence=confidence)
        section["differences"][s.name] = {k: d.to_dict() for k, d in diffs.items()}
    by_template = template_section(task, systems, n_resamples=n_resamples, seed=seed, confidence=confidence)
    if by_template:
        section["templates"] = by_template
    if task.is_classification:
        _classification_parts(task, systems, stats, section, images, file_ids)
    section["examples"] = {
        s.name: _fixed_and_broke(task, stats[ref.name], stats[s.name], rows[ref.name], rows[s.name],
                                 examples_per_list)
        for s in systems[1:] if s.kind == "model"
    }
    return section


def _consistency(task: Task, s: System, recomputed: dict[str, float]) -> list[str]:
    """Flag a metrics.json that disagrees with its own predictions (edited files, another split)."""
    saved = (s.metrics.get("tasks") or {}).get(task.name) or {}
    out = []
    for k, v in recomputed.items():
        if isinstance(saved.get(k), (int, float)) and not math.isclose(saved[k], v, abs_tol=CONSISTENCY_TOLERANCE):
            out.append(f"{s.name}: its metrics.json gives {k} = {saved[k]:.4f}, but its predictions give {v:.4f} "
                       "(the report uses the predictions).")
    return out


def _classification_parts(task: Task, systems: list[System], stats, section: dict[str, Any],
                          images: dict[str, bytes], file_ids: dict[str, str]) -> None:
    choices = task.choice_texts
    ref = systems[0]
    per_class = get_metric("per_class")
    section["per_class"], section["confusion"], section["mcnemar"], section["invalid"] = {}, {}, {}, {}
    correct = {}
    for s in systems:
        cls = stats[s.name]["_classification"]
        correct[s.name] = cls["pred"] == cls["gold"]
        section["invalid"][s.name] = 100.0 * float(np.mean(cls["pred"] == plots.INVALID)) if len(cls["pred"]) else 0.0
        numbers = per_class.aggregate(cls, choices=choices)
        section["per_class"][s.name] = {
            c: {m: numbers[f"{m}/{c}"] for m in ("precision", "recall", "f1", "support")} for c in choices}
        counts, has_invalid = plots.confusion_counts(cls["gold"], cls["pred"], len(choices))
        rel = f"images/{_slug(task.name)}-confusion-{file_ids[s.name]}.png"
        images[rel] = plots.confusion_matrix_png(counts, choices, f"{task.name}: {s.name}")
        section["confusion"][s.name] = {"labels": choices, "columns": choices + (["invalid"] if has_invalid else []),
                                        "counts": counts.tolist(), "image": rel}
    for s in systems[1:]:
        section["mcnemar"][s.name] = mcnemar_exact(correct[ref.name], correct[s.name]).to_dict()


def _fixed_and_broke(task: Task, ref_stats, sys_stats, ref_rows, sys_rows, limit: int) -> dict[str, Any]:
    ref_scored = per_example_scores(task, ref_stats)
    sys_scored = per_example_scores(task, sys_stats)
    if ref_scored is None or sys_scored is None:
        return {"score": None, "note": f"not available: the primary metric {task.primary_metric} is corpus-level "
                                       "and the task has no per-example score (such as ROUGE) to use instead"}
    score_name, ref_score = ref_scored
    delta = sys_scored[1] - ref_score
    note = ("an example is fixed when the reference's prediction is wrong and this system's right, broken when "
            "the reverse" if score_name == "correct" else
            f"an example is fixed when its per-example {score_name} (0-1) rose by at least {FIX_THRESHOLD}, "
            f"broken when it fell by at least {FIX_THRESHOLD}")
    if score_name != task.primary_metric and score_name != "correct":
        note += f" ({task.primary_metric} has no per-example value, so {score_name} stands in for it)"
    fixed = np.flatnonzero(delta >= FIX_THRESHOLD)
    broke = np.flatnonzero(delta <= -FIX_THRESHOLD)
    # Largest changes first; ties keep the data order (a stable sort), so the lists are deterministic.
    fixed = fixed[np.argsort(-delta[fixed], kind="stable")]
    broke = broke[np.argsort(delta[broke], kind="stable")]

    def example(i: int) -> dict[str, Any]:
        r = ref_rows[i]
        text = r["input"]
        return {"id": r["id"], "input": text if len(text) <= INPUT_CHARS else text[:INPUT_CHARS - 1] + "…",
                "target": r["target"], "references": gold_texts(r), "reference_prediction": r["prediction"],
                "system_prediction": sys_rows[i]["prediction"], "reference_score": float(ref_score[i]),
                "system_score": float(sys_scored[1][i])}

    return {"score": score_name, "note": note, "threshold": FIX_THRESHOLD, "n_fixed": int(len(fixed)),
            "n_broke": int(len(broke)), "fixed": [example(i) for i in fixed[:limit]],
            "broke": [example(i) for i in broke[:limit]]}


# ---- whole runs ---------------------------------------------------------------------------------

def _speed(systems: list[System]) -> dict[str, Any]:
    timed = [s for s in systems if s.kind == "model" and s.metrics.get("eval")]
    together = bool(timed) and all(s.metrics.get("measured_together") for s in timed)
    note = ("measured on the same machine in the same run: the numbers compare directly." if together else
            "measured in separate runs, possibly on other machines, loads or batch sizes: compare with care.")
    keys = ("examples_per_s", "ms_per_example", "tokens_per_s", "seconds")
    return {"measured_together": together, "note": note,
            "systems": {s.name: {k: s.metrics["eval"].get(k) for k in keys} for s in timed}}


def _training(tasks: dict[str, Task], systems: list[System], images: dict[str, bytes],
              file_ids: dict[str, str]) -> dict[str, Any]:
    out = {}
    for s in systems:
        if s.log_history is None:
            continue
        ran = [t for t in (s.metrics.get("tasks") or s.predictions) if t in tasks]
        # One task: its own primary metric; several (or a log without it): the mean of primary metrics.
        key = f"eval_{ran[0]}/{tasks[ran[0]].primary_metric}" if len(ran) == 1 else "eval_score"
        if not any(key in entry for entry in s.log_history):
            key = "eval_score"
        png = plots.training_curves_png(s.log_history, key, f"{s.name}: training")
        rel = f"images/training-{file_ids[s.name]}.png" if png else None
        if png:
            images[rel] = png
        train = s.metrics.get("train") or {}
        trainable, total = s.metrics.get("trainable_parameters"), s.metrics.get("total_parameters")
        out[s.name] = {
            "curves": rel, "validation_metric": key.removeprefix("eval_"),
            "trainable_parameters": trainable, "total_parameters": total,
            "trainable_share": 100.0 * trainable / total if trainable and total else None,
            "wall_time_s": s.metrics.get("wall_time_s"),
            "train": {k: train.get(k) for k in ("seconds", "steps", "examples_per_s", "tokens_per_s")},
        }
    return out


def json_ready(value: Any) -> Any:
    """Plain JSON: numpy scalars become Python numbers, nan and inf become null."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
