"""Evaluation of every task of a run on its own split, with its own metrics, in one pass.

Classification tasks are rank-scored by default (every answer choice is scored and the best one is
the prediction, so no output is invalid); `rank_score` says how choices of different token lengths
compare (scoring.rank_score), and a task whose choices differ in token length also reports its metrics
under every rule, `<rule>:<metric>`, side by side. `classify=generate` generates freely and reports the
share of outputs that match no choice as `invalid`. Generation and QA tasks generate up to the task's
max_new_tokens. With several processes, each scores a shard and the results are gathered.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from flantune import metrics as metric_lib
from flantune.distributed import (
    gather_objects,
    is_main,
    process_group,
    sharded_parameters,
    whole_parameters,
)
from flantune.task import Task

SCORE = "score"  # the aggregate: mean of the tasks' primary metrics (0-100)


@dataclass
class EvalSet:
    task: Task  # rendered with its evaluation template (eval_template)
    data: Any  # datasets.Dataset from features.tokenize (template_seed=None)
    template: str | None = None  # set when eval.templates evaluates several: the template `task` renders with
    primary: bool = True  # its metrics are the task's (EvalResult.tasks); False: another template's, kept apart
    shots: list[int] | None = None  # eval.fewshot: the shots each input got (flantune.fewshot)


@dataclass
class TaskResult:
    task: Task
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]
    seconds: float
    tokens: int  # input tokens + scored / generated output tokens
    shots: list[int] | None = None  # eval.fewshot: the shots each input got

    @property
    def examples(self) -> int:
        return len(self.predictions)


@dataclass
class EvalResult:
    tasks: dict[str, TaskResult] = field(default_factory=dict)  # on each task's eval_template
    templates: dict[str, dict[str, TaskResult]] = field(default_factory=dict)  # eval.templates: task -> template ->

    @property
    def score(self) -> float:
        primaries = [r.metrics[r.task.primary_metric] for r in self.tasks.values()]
        return float(np.mean(primaries)) if primaries else float("nan")

    def flat(self, prefix: str = "") -> dict[str, float]:
        """{'<prefix><task>/<metric>': value, ..., '<prefix>score': aggregate} for the trainer's logs."""
        out = {f"{prefix}{name}/{k}": v for name, r in self.tasks.items() for k, v in r.metrics.items()}
        out[f"{prefix}{SCORE}"] = self.score
        return out

    def metrics_by_task(self) -> dict[str, dict[str, float]]:
        return {name: dict(r.metrics) for name, r in self.tasks.items()}

    def template_metrics(self) -> dict[str, dict[str, Any]]:
        """eval.templates: per task, every template's metrics and their spread (metrics.json "templates")."""
        return {name: template_summary({t: r.metrics for t, r in by_template.items()})
                for name, by_template in self.templates.items()}

    def fewshot(self) -> dict[str, dict[str, float]]:
        """eval.fewshot: per task, the shots its inputs got (after dropping those that didn't fit)."""
        return {name: {"mean": float(np.mean(r.shots)) if r.shots else 0.0, "min": int(min(r.shots, default=0))}
                for name, r in self.tasks.items() if r.shots is not None}

    def _all(self) -> list[TaskResult]:
        """Every evaluation made once: the tasks' and their other templates'."""
        ran = list(self.tasks.values())
        ids = {id(r) for r in ran}
        return ran + [r for by in self.templates.values() for r in by.values() if id(r) not in ids]

    def throughput(self) -> dict[str, float]:
        ran = self._all()
        seconds = sum(r.seconds for r in ran)
        examples = sum(r.examples for r in ran)
        tokens = sum(r.tokens for r in ran)
        return {"seconds": seconds, "examples_per_s": examples / seconds if seconds else 0.0,
                "tokens_per_s": tokens / seconds if seconds else 0.0,
                "ms_per_example": 1000 * seconds / examples if examples else 0.0}


class Evaluator:
    def __init__(self, sets: list[EvalSet], tokenizer, *, classify: str, rank_score: str, batch_size: int,
                 num_beams: int, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 role: str = "evaluation"):
        from flantune.task import fit_choices

        self.sets = [replace(s, task=fit_choices(s.task, tokenizer)) for s in sets]  # max_new_tokens set
        self.tokenizer = tokenizer
        self.classify = classify
        self.rank_score = rank_score
        self.batch_size = batch_size
        self.num_beams = num_beams
        self.autocast = autocast
        self.role = role  # names the progress bar: validation, test, ...

    def run(self, model) -> EvalResult:
        result = EvalResult()
        with whole_parameters(model):
            for s in self.sets:
                done = self._run_task(model, s)
                done.shots = s.shots
                for row, n in zip(done.predictions, s.shots or ()):
                    row["shots"] = n  # eval.fewshot: the shots before this input (fewer than K where they didn't fit)
                if s.primary:
                    result.tasks[s.task.name] = done
                if s.template is not None:
                    result.templates.setdefault(s.task.name, {})[s.template] = done
        return result

    def _run_task(self, model, s: EvalSet) -> TaskResult:
        from flantune import scoring

        task, data = s.task, s.data
        rank, world = process_group()
        mine = list(range(rank, len(data), world))
        synced = world > 1 and sharded_parameters()
        if synced and mine:
            # With FSDP / ZeRO-3 every forward pass is collective: give each process as many examples
            # (repeating its last one; the repeat is dropped after gathering) and keep generation in step.
            mine += [mine[-1]] * (-(-len(data) // world) - len(mine))
        part = data.select(mine) if world > 1 else data
        # Plain lists: indexing a datasets Column looks each row up in Arrow again.
        input_ids = part["input_ids"][:]
        device = next(model.parameters()).device
        # tqdm's bar, as the trainer's (on stderr), on the main process only; it goes when done (leave=False).
        bar = tqdm(total=len(mine), desc=f"{self.role} {task.name}", unit=" examples", leave=False, dynamic_ncols=True,
                   disable=not is_main())
        start = time.perf_counter()
        rows: list[dict[str, Any]]
        labels = part["labels"][:]
        if task.is_classification and self.classify == "rank":
            choice_ids = self.tokenizer(text_target=task.choice_texts).input_ids
            scored = scoring.rank_choices(model, input_ids, choice_ids, batch_size=self.batch_size,
                                          pad_id=self.tokenizer.pad_token_id, device=device, autocast=self.autocast,
                                          progress=bar.update)
            gold = [list(task.choices).index(label) for label in part["label"]]
            nll = -scored.scores[np.arange(len(gold)), gold] if gold else np.zeros(0)
            ranked = {rule: scoring.rank_score(scored.scores, choice_ids, task.choice_texts, rule)
                      for rule in scoring.RANK_SCORES}
            chosen = ranked[self.rank_score]
            rows = scoring.ranked_rows(chosen, task.choice_texts)
            if len({len(ids) for ids in choice_ids}) > 1:  # the rules can disagree: every one's prediction, kept
                for i, row in enumerate(rows):
                    row["_by_rule"] = {rule: task.choice_texts[int(np.argmax(r[i]))] for rule, r in ranked.items()}
            out_tokens = sum(len(c) for c in choice_ids) * len(input_ids)
        else:
            gen = scoring.generate(model, self.tokenizer, input_ids, labels, batch_size=self.batch_size,
                                   max_new_tokens=task.max_new_tokens, num_beams=self.num_beams, device=device,
                                   autocast=self.autocast, synced_gpus=synced, progress=bar.update)
            rows = [{"prediction": t} for t in gen.texts]
            nll, out_tokens = gen.nll, gen.new_tokens
        seconds = time.perf_counter() - start
        bar.close()
        local_tokens = sum(len(x) for x in input_ids) + out_tokens
        for i, row, loss, target in zip(mine, rows, nll, labels):
            row.update(_index=i, _nll=float(loss), _tokens=len(target))
        gathered = gather_objects([(rows, local_tokens, seconds)])
        by_index = {r["_index"]: r for part_rows, *_ in gathered for r in part_rows}  # drops the repeats
        rows = [by_index[i] for i in sorted(by_index)]
        nll_sum = sum(r.pop("_nll") for r in rows)
        target_tokens = sum(r.pop("_tokens") for r in rows)
        for r in rows:
            del r["_index"]
        by_rule = [r.pop("_by_rule") for r in rows if "_by_rule" in r]
        tokens = sum(g[1] for g in gathered)
        seconds = max(g[2] for g in gathered)
        return self._finish(task, data, rows, nll_sum, target_tokens, tokens, seconds, by_rule)

    def _finish(self, task: Task, data, rows, nll, target_tokens, tokens, seconds, by_rule=()) -> TaskResult:
        texts = data.select_columns(["id", "input", "target", "references"]).to_list() if len(data) else []
        predictions = [{**t, **r} for t, r in zip(texts, rows)]
        preds = [p["prediction"] for p in predictions]
        refs = [p["references"] for p in predictions]
        scores = metric_lib.compute(task.metrics, preds, refs, task.choice_texts or None)
        if by_rule:  # choices of different token lengths: the summed and the normalised scores side by side
            for rule in by_rule[0]:
                side = metric_lib.compute(task.metrics, [b[rule] for b in by_rule], refs, task.choice_texts)
                scores.update({f"{rule}:{k}": v for k, v in side.items()})
        scores["loss"] = nll / target_tokens if target_tokens else float("nan")
        if task.is_classification and self.classify == "generate":
            from flantune.metrics.classification import INVALID, choice_index

            index = choice_index(task.choice_texts)
            valid = [index(p) != INVALID for p in preds]
            scores["invalid"] = 100.0 * (1 - float(np.mean(valid))) if valid else 0.0
            for p, v in zip(predictions, valid):
                p["valid"] = bool(v)
        for p in predictions:
            if p["references"] == [p["target"]]:
                del p["references"]
        return TaskResult(task=task, metrics=scores, predictions=predictions, seconds=seconds, tokens=tokens)


def spread(values: list[float]) -> dict[str, float | None]:
    """mean, std, min and max of a metric over templates; std is the sample standard deviation (ddof=1: the
    templates are a sample of the prompts one could write), None for one template."""
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "min": float(v.min()), "max": float(v.max())}


def template_summary(by_template: dict[str, dict[str, float]]) -> dict[str, Any]:
    """{"templates": {template: metrics}, and "mean", "std", "min", "max": {metric: its spread over templates}}."""
    names = [k for k in next(iter(by_template.values()), {}) if all(k in m for m in by_template.values())]
    spreads = {k: spread([m[k] for m in by_template.values()]) for k in names}
    return {"templates": by_template, **{part: {k: s[part] for k, s in spreads.items()}
                                         for part in ("mean", "std", "min", "max")}}


TEMPLATES_DIR = "templates"  # predictions/templates/<task>.jsonl: every template's rows, each with its "template"


def write_predictions(result: EvalResult, folder: Path) -> None:
    write_prediction_rows({name: r.predictions for name, r in result.tasks.items()}, folder)
    if result.templates:
        write_prediction_rows({name: [{**row, "template": t} for t, r in by.items() for row in r.predictions]
                               for name, by in result.templates.items()}, folder / TEMPLATES_DIR)


def read_template_predictions(folder: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What write_predictions saved per template: task -> template -> rows (empty when eval.templates was one)."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted((folder / TEMPLATES_DIR).glob("*.jsonl")):
        by = out.setdefault(path.stem, {})
        for row in read_predictions(path):
            by.setdefault(row.pop("template"), []).append(row)
    return out


def write_prediction_rows(rows_by_task: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """`folder/<task>.jsonl`, one prediction row a line (what read_predictions reads back)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_by_task.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_predictions(path: Path) -> list[dict[str, Any]]:
    # Iterate the file, not str.splitlines(): texts keep characters such as U+0085 and U+2028 that
    # splitlines() would cut at; JSON escapes the only newlines that matter here.
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
