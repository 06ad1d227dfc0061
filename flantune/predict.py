"""A trained model on new rows: the task's evaluation template (or another, or none), then the evaluator's
scoring (flantune.scoring: choices rank-scored, or generation with the task's settings), so that what a user
predicts with is exactly what was evaluated.

    resolve   model, task and template, from a run's own config as `flantune eval` reads it: no model loaded,
              so that a command checks its input before loading one
    Predictor the model loaded once; `predict(rows)` gives one record per row
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from flantune import rundir, templates
from flantune.config import task_names
from flantune.console import console
from flantune.errors import FlantuneError, first_line
from flantune.task import Task
from flantune.task_sections import Template

NO_TEMPLATE = "none"  # template=none: each input is sent as it is, unrendered (a FLAN-style instruction)
INPUT = "input"  # the column an unrendered input is read from, and the rendered input's field in a record


@dataclass
class Resolved:
    """What `flantune predict` will run, decided without loading a model."""

    cfg: DictConfig  # the evaluation's config: the run's own, with the command's options on top
    task: Task  # with the run's per-task changes (tasks.NAME.FIELD=...)
    template: Template | None  # None: template=none

    @property
    def columns(self) -> list[str]:
        """The columns the template reads, in the order it reads them (template=none: `input`)."""
        if self.template is None:
            return [INPUT]
        from flantune.data import EXTRA_NAMES

        return columns_read(self.template.input, exclude=EXTRA_NAMES)


def columns_read(text: str, exclude=()) -> list[str]:
    """The columns a template reads, in the order it first reads them: its names that it doesn't set itself."""
    import jinja2
    from jinja2 import nodes

    read = templates.variables(text) - set(exclude)  # less the names it sets ({% set %}, loop variables)
    found = (node.name for node in jinja2.Environment().parse(text).find_all(nodes.Name))  # document order
    return [name for name in dict.fromkeys(found) if name in read]


def resolve(model: str, task: str | None = None, *, template: str | None = None, options: Sequence[str] = (),
            config_files: Sequence[str] = (), data_dir: str | None = None, tasks_dir: str | None = None) -> Resolved:
    """The config, task and template of a prediction: a run's own config (its tasks, their changes, its eval
    settings) as `flantune eval model=RUN` reads it, with `options` (config keys: eval.classify=generate,
    eval.num_beams=4, tasks.NAME.max_new_tokens=...) on top. `task` may be left out for a single-task run."""
    from flantune.compare import config_for
    from flantune.prelude import resolve_tasks

    if not str(model or "").strip():
        raise FlantuneError("`flantune predict` needs model=: a run directory, a save_pretrained folder or a hub id.")
    is_run = rundir.is_run_dir(Path(model).expanduser())
    extra = [f"model={model}"]
    if task:
        extra.append(f"task={task}")
    # Prediction reads no data: a run's data_dir need not exist where its model is used.
    extra.append(f"data_dir={data_dir}" if data_dir else "data_dir=null")
    if tasks_dir:
        extra.append(f"tasks_dir={tasks_dir}")
    cfg = config_for([*extra, *options], list(config_files), [str(model)] if is_run else [])
    if not task:
        names = task_names(cfg) if is_run else []
        if len(names) != 1:
            raise FlantuneError(_task_needed(model, names))
    chosen = task_names(cfg)
    if len(chosen) != 1:
        raise FlantuneError(f"`flantune predict` predicts for one task; task={task} names {len(chosen)}. "
                            f"Give one of {', '.join(chosen)}.")
    # A run's changes to its other tasks don't apply to the one predicted for.
    changes = OmegaConf.to_container(cfg.tasks, resolve=True) if cfg.tasks else {}
    OmegaConf.update(cfg, "tasks", {k: v for k, v in changes.items() if k in chosen}, merge=False)
    (found,) = resolve_tasks(cfg)
    picked = None if template is not None and str(template).lower() == NO_TEMPLATE else (
        found.template(template) if template else found.evaluation_template)
    return Resolved(cfg=cfg, task=found, template=picked)


def _task_needed(model: str, names: list[str]) -> str:
    if names:
        return (f"{model} was trained on several tasks ({', '.join(names)}): say which one to predict for, e.g. "
                f"task={names[0]}.")
    return (f"model={model} is not a flantune run directory, so it has no task of its own: give task=NAME "
            "(`flantune tasks` lists them), whose choices, template and generation settings predictions use.")


class Predictor:
    """A model loaded once, predicting as the evaluator scores: classification rank-scored over the task's choices
    (eval.rank_score; eval.classify=generate generates), generation with eval.num_beams and the task's
    max_new_tokens; inputs tokenised as evaluation tokenises them (truncated to max_input_length)."""

    def __init__(self, resolved: Resolved, checked, model, tokenizer):
        from flantune.prelude import autocast_for

        self.resolved = resolved
        self.cfg = resolved.cfg
        self.task: Task = checked.tasks[0]  # max_target_length / max_new_tokens fitted to the choices
        self.template = resolved.template
        self.columns: list[str] = resolved.columns
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.autocast = autocast_for(checked.precision)  # bf16-mixed: under bf16 autocast on a GPU, as evaluation
        self.ranks = self.task.is_classification and self.cfg.eval.classify == "rank"
        self.choice_ids = tokenizer(text_target=self.task.choice_texts).input_ids if self.ranks else None

    @classmethod
    def load(cls, model: str, task: str | None = None, *, template: str | None = None, options: Sequence[str] = (),
             config_files: Sequence[str] = (), data_dir: str | None = None, tasks_dir: str | None = None) -> Predictor:
        resolved = resolve(model, task, template=template, options=options, config_files=config_files,
                           data_dir=data_dir, tasks_dir=tasks_dir)
        return cls.from_resolved(resolved)

    @classmethod
    def from_resolved(cls, resolved: Resolved) -> Predictor:
        from flantune.modeling import load_tokenizer
        from flantune.prelude import check, inference_model

        checked = check(resolved.cfg, train=False)
        tokenizer = load_tokenizer(resolved.cfg)
        model = inference_model(checked)
        return cls(resolved, checked, model, tokenizer)

    def for_task(self, resolved: Resolved) -> Predictor:
        """A Predictor for another task of the same model (a mixture run's), sharing this one's loaded model."""
        from flantune.prelude import check

        return type(self)(resolved, check(resolved.cfg, train=False), self.model, self.tokenizer)

    def render(self, row: dict[str, Any], number: int | None = None) -> str:
        """The model's input for a row: the template rendered on it (template=none: its `input`)."""
        from flantune.data import apply_preprocess, template_context

        try:
            if self.template is None:
                return str(row[INPUT])
            return templates.render(self.template.input, template_context(self.task, apply_preprocess(self.task, row)))
        except FlantuneError:
            raise
        except Exception as exc:  # jinja2's UndefinedError for a missing column, a filter's TypeError, ...
            where = f"row {number}" if number is not None else "a row"
            name = "template=none" if self.template is None else f"template '{self.template.name}'"
            raise FlantuneError(
                f"Task '{self.task.name}': {name} fails on {where} ({type(exc).__name__}: {first_line(exc)}). "
                f"Each row needs the columns the template reads: {', '.join(self.columns)}."
            ) from exc

    def predict(self, rows: Sequence[dict[str, Any]], *, first: int = 1,
                progress: Callable[[int], object] | None = None) -> list[dict[str, Any]]:
        """One record per row, in order: the row's fields, the rendered `input`, the `prediction`, and for a
        rank-scored classification each choice's `scores` (log-likelihood, ranked by eval.rank_score) and
        `probabilities` (their softmax). `first`: the first row's number, for error messages."""
        from flantune import scoring

        if not rows:
            return []
        inputs = [self.render(row, first + i) for i, row in enumerate(rows)]
        ids = self.tokenizer(inputs, max_length=self.task.max_input_length, truncation=True).input_ids
        settings = {"batch_size": int(self.cfg.eval.batch_size), "device": self.device, "autocast": self.autocast}
        if progress is not None:
            settings["progress"] = progress
        records = [{**row, INPUT: text} for row, text in zip(rows, inputs)]
        if self.ranks:
            choices = self.task.choice_texts
            scored = scoring.rank_choices(self.model, ids, self.choice_ids, pad_id=self.tokenizer.pad_token_id,
                                          **settings)
            ranked = scoring.rank_score(scored.scores, self.choice_ids, choices, str(self.cfg.eval.rank_score))
            for record, row, scores in zip(records, scoring.ranked_rows(ranked, choices), ranked):
                record.update(row)  # prediction and scores, as evaluation saves them in predictions/
                record["probabilities"] = {c: round(float(p), 5) for c, p in zip(choices, softmax(scores))}
        else:
            generated = scoring.generate(self.model, self.tokenizer, ids, None, max_new_tokens=self.task.max_new_tokens,
                                         num_beams=int(self.cfg.eval.num_beams), **settings)
            for record, text in zip(records, generated.texts):
                record["prediction"] = text
        return records


def softmax(scores: np.ndarray) -> np.ndarray:
    from scipy.special import softmax as scipy_softmax

    return scipy_softmax(np.asarray(scores, dtype=np.float64))


# ---- the command ------------------------------------------------------------------------------------------------

CHUNK_SIZE = 1024  # rows read, predicted and written at a time: batches of similar length are formed inside one


def predict_command(model: str, task: str | None, *, input: str | None, output: str | None, template: str | None,
                    overwrite: bool = False, chunk_size: int = CHUNK_SIZE, options: Sequence[str] = (),
                    config_files: Sequence[str] = ()) -> int:
    """`flantune predict`: the input checked and the output claimed before the model loads, then the rows chunk by
    chunk, their records written as JSON lines to `output` or standard output (a table on a terminal)."""
    from tqdm.auto import tqdm

    from flantune.predict_input import open_rows

    resolved = resolve(model, task, template=template, options=options, config_files=config_files)
    reads = "template=none" if resolved.template is None else \
        f"template '{resolved.template.name}' of task '{resolved.task.name}'"
    rows = open_rows(input, resolved.columns, reads=reads)
    sink = _Sink(output, overwrite=overwrite, input=input)
    started = time.perf_counter()
    predictor = Predictor.from_resolved(resolved)
    loaded = time.perf_counter() - started
    done, started = 0, time.perf_counter()
    bar = tqdm(total=rows.total, desc=f"predict {resolved.task.name}", unit=" examples", leave=False,
               dynamic_ncols=True)
    try:
        with sink, bar:
            for chunk in rows.chunks(chunk_size):
                records = predictor.predict(chunk, first=done + 1, progress=bar.update)
                bar.clear()
                sink.write(records, first=done + 1)
                bar.refresh()
                done += len(records)
    except BrokenPipeError:  # the reader of standard output closed it (`| head`): it wants no more predictions
        _quiet_stdout()
        return 0
    seconds = time.perf_counter() - started
    to = f" into {output}" if output else ""
    console(stderr=sink.stdout).print(
        f"predicted {done:,} examples{to} in {seconds:.1f} s: {done / max(seconds, 1e-9):,.1f} examples/s "
        f"(model loaded in {loaded:.1f} s)", highlight=False)
    return 0


def _quiet_stdout() -> None:
    """Standard output to /dev/null, so that flushing it at exit doesn't raise the broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # not a real file (captured): nothing left to flush
        pass


class _Sink:
    """Where records go: a file (written beside it and moved in place once complete), or standard output as JSON
    lines, or as a short table when it is a terminal."""

    def __init__(self, output: str | None, *, overwrite: bool, input: str | None):
        self.stdout = output in (None, "", "-")
        self.table = self.stdout and sys.stdout.isatty()
        self.path = None if self.stdout else Path(output).expanduser()
        if self.path is not None:
            if input and self.path.resolve() == Path(input).expanduser().resolve():
                raise FlantuneError(f"output={output} is the input file: write the predictions to another file.")
            if self.path.is_dir():
                raise FlantuneError(f"output={output} is a folder: give a file, e.g. output={self.path / 'predictions.jsonl'}.")
            if not self.path.parent.is_dir():
                raise FlantuneError(f"output={output}: its folder {self.path.parent} does not exist.")
            if self.path.exists() and not overwrite:
                raise FlantuneError(f"output={output} exists: give another file, or overwrite=true to replace it.")
        self.file = None

    def __enter__(self) -> _Sink:
        if self.path is None:
            self.file = sys.stdout
        else:  # a complete file or none: a failure midway leaves the old one (if any) as it was
            self.file = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=self.path.parent, delete=False,
                                                    prefix=f".{self.path.name}.", suffix=".partial")
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if self.path is None:
            if kind is None:
                self.file.flush()
            return
        self.file.close()
        if kind is None:
            os.replace(self.file.name, self.path)
        else:
            os.unlink(self.file.name)

    def write(self, records: list[dict[str, Any]], *, first: int) -> None:
        if self.table:
            console(stderr=False).print(_table(records, first))
            return
        for record in records:
            self.file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.file.flush()  # a pipe's reader gets each chunk as it is predicted


def _table(records: list[dict[str, Any]], first: int):
    from rich.table import Table

    def short(text: str, width: int = 70) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= width else text[:width - 1] + "…"

    table = Table("row", "input", "prediction", show_edge=False)
    scored = "probabilities" in records[0]
    if scored:
        table.add_column("p", justify="right")
    for i, record in enumerate(records, first):
        cells = [str(i), short(record[INPUT]), short(record["prediction"], 40)]
        if scored:
            cells.append(f"{record['probabilities'][record['prediction']]:.2f}")
        table.add_row(*cells)
    return table
