"""A task is data: a YAML file (or a dict) turned into a validated, immutable `Task`.

Everything a task needs is declared here, so a task file can be read without reading Python:
where the data comes from, which split plays which role, the prompt templates, the answer
choices, the metrics and the length limits. Loading a task never touches the data or imports
torch; the checks that need the data's columns happen in `flantune.data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from flantune.errors import FlantuneError, did_you_mean
from flantune.overrides import load_yaml
from flantune.splits import Holdout, check_split_syntax
from flantune.task_sections import (
    QUOTE_HINT, ROLES, MetricSpec, SeenInTraining, Source, Template, check_fields, parse_answers, parse_baselines,
    parse_holdout, parse_metrics, parse_name_and_kind, parse_row_hooks, parse_seen_in_training, parse_settings,
    parse_source, parse_splits, parse_templates,
)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    kind: str
    source: Source
    splits: dict[str, str]
    templates: tuple[Template, ...]
    metrics: tuple[MetricSpec, ...]
    primary_metric: str
    version: int = 1
    holdout: Holdout | None = None
    eval_template: str | None = None  # defaults to the first template
    target: str | None = None  # Jinja template of the target text (generation, QA)
    references: str | None = None  # Jinja expression giving the list of gold answers
    label_column: str | None = None  # classification
    choices: dict[int, str] | None = None  # classification: label id -> answer text
    id_column: str | None = None  # without one, an example's id is "<split>-<row>"
    filter: str | None = None  # Jinja expression; rows where it is false are dropped
    preprocess: str | None = None  # "package.module:function", applied to each row first
    max_input_length: int = 512
    max_target_length: int | None = 128  # None: a classification task's longest choice (see fit_choices)
    max_new_tokens: int | None = 64  # None: likewise
    baselines: tuple[dict[str, Any], ...] = ()  # extra report baselines, e.g. {name: lead, column: dialogue, k: 3}
    seen_in_training: tuple[SeenInTraining, ...] = ()  # published models trained on some of its source splits
    origin: str = "?"  # where the task came from: "built-in", a file path or an entry point

    @property
    def choice_texts(self) -> list[str]:
        return list(self.choices.values()) if self.choices else []

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    def template(self, name: str | None) -> Template:
        if name is None:
            return self.templates[0]
        for t in self.templates:
            if t.name == name:
                return t
        raise FlantuneError(
            f"Task '{self.name}' has no template '{name}'.{did_you_mean(name, [t.name for t in self.templates])} "
            f"Its templates are: {', '.join(t.name for t in self.templates)} (defined in {self.origin})."
        )

    @property
    def evaluation_template(self) -> Template:
        return self.template(self.eval_template)

    def target_template(self, template: Template) -> str:
        if self.is_classification:
            return "{{ answer }}"
        return template.target or self.target  # validated to exist for non-classification tasks

    def seen_by(self, *models: str | None) -> list[str]:
        """The source splits of this task that a published model was trained on, by its task file's
        seen_in_training (patterns match any of the names given: a model's name, hub id or path)."""
        names = [m for m in models if m]
        return sorted({split for seen in self.seen_in_training
                       if any(fnmatchcase(name, pattern) for name in names for pattern in seen.models)
                       for split in seen.splits})

    def seen_roles(self, *models: str | None) -> list[str]:
        """The roles (train, validation, test) whose rows come, at least in part, from a split those models
        were trained on: a validation role carved out of train by a holdout counts."""
        seen = set(self.seen_by(*models))
        return [role for role in ROLES if seen & set(check_split_syntax(self.splits[role]))]

    def with_overrides(self, overrides: dict[str, Any]) -> Task:
        """A copy with fields replaced (from the command line: tasks.<name>.<field>=value)."""
        if not isinstance(overrides, dict):
            raise FlantuneError(
                f"tasks.{self.name}={overrides!r} on the command line: tasks.{self.name} must be a mapping of task "
                f"fields, e.g. tasks.{self.name}.max_input_length=256 or tasks.{self.name}.splits.train='train[:50%]'."
            )
        if not overrides:
            return self
        data = task_to_dict(self)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        given = ", ".join(_dotted_keys(f"tasks.{self.name}", overrides))
        return task_from_dict(
            data, origin=f"{self.origin} (with command-line overrides)",
            context=f"Task '{self.name}' ({self.origin}) as changed on the command line by {given}",
            known_splits=(name for role in ROLES for name in check_split_syntax(self.splits[role])),
        )


def _dotted_keys(prefix: str, value: Any) -> list[str]:
    """The dotted keys of a nested mapping's leaves: tasks.x.splits.train, tasks.x.max_input_length."""
    if isinstance(value, dict) and value:
        return [k for key, v in value.items() for k in _dotted_keys(f"{prefix}.{key}", v)]
    return [prefix]


_TASK_KEYS = {f.name for f in fields(Task)} - {"origin"}
_REQUIRED = ("name", "description", "kind", "source", "splits", "templates", "metrics", "primary_metric")


def task_from_dict(data: Any, origin: str, *, context: str | None = None, known_splits: Iterable[str] = ()) -> Task:
    """A validated Task, read section by section in the order of a task file. `context` opens its error messages
    (by default "Malformed task file <origin>"); `known_splits` are split names holdout.from may name besides those
    the splits read (with_overrides passes the task file's own, so that overriding every split leaves the file's
    holdout valid)."""
    context = context or f"Malformed task file {origin}"
    check_fields(context, data, _TASK_KEYS, _REQUIRED)
    name, kind = parse_name_and_kind(context, data)
    source = parse_source(context, data["source"])
    splits = parse_splits(context, data["splits"])
    holdout = parse_holdout(context, data.get("holdout"), splits, known_splits)
    templates_, eval_template = parse_templates(context, data["templates"], data.get("eval_template"))
    answers = parse_answers(context, data, kind, templates_)  # label_column, choices, target, references
    filter_, preprocess = parse_row_hooks(context, data)
    metrics, primary = parse_metrics(context, data["metrics"], data["primary_metric"], answers["choices"])
    baselines = parse_baselines(context, data.get("baselines"))
    seen = parse_seen_in_training(context, data.get("seen_in_training"))
    return Task(
        name=name, kind=kind, source=source, splits=splits, holdout=holdout, templates=templates_,
        eval_template=eval_template, **answers, filter=filter_, preprocess=preprocess, metrics=metrics,
        primary_metric=primary, baselines=baselines, seen_in_training=seen, **parse_settings(context, data, kind), origin=origin,
    )


def choice_lengths(task: Task, tokenizer) -> dict[str, int]:
    """Each answer choice's length in tokens, its end-of-sequence token included (as a training label has it)."""
    return {c: len(ids) for c, ids in zip(task.choice_texts, tokenizer(text_target=task.choice_texts).input_ids)}


def fit_choices(task: Task, tokenizer) -> Task:
    """A classification task whose label and generation lengths hold its longest choice and its end-of-sequence
    token: taken from the choices where the task leaves them unset, checked where it sets them. A choice cut in
    the training labels would be trained without its end (and with classify=generate never produced whole),
    while rank scoring scores it whole."""
    if not task.is_classification:
        return task
    lengths = choice_lengths(task, tokenizer)
    longest = max(lengths, key=lengths.get)
    need = lengths[longest]
    for key in ("max_target_length", "max_new_tokens"):
        given = getattr(task, key)
        if given is not None and given < need:
            raise FlantuneError(
                f"Task '{task.name}' ({task.origin}): its choice '{longest}' is {need} tokens with the end-of-sequence "
                f"token, more than {key}: {given}, so it can't fit. Leave {key} out (a classification task takes it "
                f"from its longest choice) or set it to at least {need}."
            )
    return replace(task, max_target_length=task.max_target_length or need, max_new_tokens=task.max_new_tokens or need)


def task_to_dict(task: Task) -> dict[str, Any]:
    """The inverse of task_from_dict (without origin): what `flantune show` and the run dir record."""
    data: dict[str, Any] = {
        "name": task.name,
        "version": task.version,
        "description": task.description,
        "kind": task.kind,
        "source": {k: v for k, v in vars(task.source).items() if v is not None},
        "splits": dict(task.splits),
        "templates": [{k: v for k, v in vars(t).items() if v is not None} for t in task.templates],
        "metrics": [m.name if not m.params else {"name": m.name, **m.params} for m in task.metrics],
        "primary_metric": task.primary_metric,
        "max_input_length": task.max_input_length,
    }
    for key in ("max_target_length", "max_new_tokens"):  # None: from the choices
        if getattr(task, key) is not None:
            data[key] = getattr(task, key)
    if task.holdout:
        h = task.holdout
        data["holdout"] = {"from": h.from_, "to": h.to, "size": h.size, "seed": h.seed}
    if task.baselines:
        data["baselines"] = [dict(b) for b in task.baselines]
    if task.seen_in_training:
        data["seen_in_training"] = [{"models": list(s.models), "splits": list(s.splits), "source": s.source}
                                    for s in task.seen_in_training]
    for key in ("eval_template", "target", "references", "label_column", "choices", "id_column", "filter", "preprocess"):
        value = getattr(task, key)
        if value is not None:
            data[key] = dict(value) if isinstance(value, dict) else value
    return data


def read_task_file(path: Path, origin: str | None = None) -> Any:
    """A task file's parsed YAML, not yet validated."""
    origin = origin or str(path)
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        lines = text.splitlines()
        line = lines[mark.line] if mark and mark.line < len(lines) else ""
        hint = f" {QUOTE_HINT}" if "{{" in line or "{%" in line else ""
        raise FlantuneError(f"Malformed task file {origin}: it is not valid YAML{where} ({problem}).{hint}") from exc
    return data


def load_task_file(path: Path, origin: str | None = None) -> Task:
    origin = origin or str(path)
    return task_from_dict(read_task_file(path, origin), origin=origin)


__all__ = ["Task", "task_from_dict", "task_to_dict", "load_task_file", "read_task_file", "fit_choices",
           "choice_lengths"]
