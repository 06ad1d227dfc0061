"""A task is data: a YAML file (or a dict) turned into a validated, immutable `Task`.

Everything a task needs is declared here, so a task file can be read without reading Python:
where the data comes from, which split plays which role, the prompt templates, the answer
choices, the metrics and the length limits. Loading a task never touches the data or imports
torch; the checks that need the data's columns happen in `flantune.data`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PureWindowsPath
from typing import Any

import yaml

from flantune.errors import FlantuneError, did_you_mean
from flantune.overrides import load_yaml
from flantune.splits import Holdout, check_split_syntax

KINDS = ("classification", "generation", "extractive_qa")
BASELINES = ("lead",)  # classification tasks always get the majority class and TF-IDF + logistic regression
ROLES = ("train", "validation", "test")


@dataclass(frozen=True)
class Source:
    hub: str | None = None  # a Hugging Face hub dataset id
    config: str | None = None  # the hub config name
    revision: str | None = None  # e.g. refs/convert/parquet for datasets that had a loading script
    mirror: str | None = None  # the folder name under data_dir


@dataclass(frozen=True)
class Template:
    name: str
    input: str
    target: str | None = None  # overrides the task's target template


@dataclass(frozen=True)
class MetricSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


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


def _fail(context: str, where: str, problem: str) -> FlantuneError:
    return FlantuneError(f"{context}: field '{where}' {problem}")


def _check_keys(context: str, where: str, mapping: dict, allowed: set[str]) -> None:
    for key in mapping:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise _fail(
                context,
                f"{prefix}{key}",
                f"is not a known field.{did_you_mean(key, allowed)} Known fields: {', '.join(sorted(allowed))}.",
            )


QUOTE_HINT = ("A Jinja template that starts with '{' (or holds ': ') must be quoted in YAML, e.g. "
              "target: \"{{ answer }}\", or written as a block scalar: target: |- and the template on the next, "
              "indented lines.")


def _str(context: str, where: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        hint = f" {QUOTE_HINT}" if isinstance(value, dict) else ""  # `target: {x}` unquoted reads as a mapping
        raise _fail(context, where, f"must be a non-empty string, got {value!r}.{hint}")
    return value


def _check_hub(context: str, hub: str | None) -> None:
    """A hub id is NAME or ORG/NAME: datasets would read a local path given there, which a task file must not
    point the run at (local data goes through data_dir and source.mirror)."""
    if hub is None:
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(hub)
        ok = not hub.startswith((".", "~"))
    except HFValidationError:
        ok = False
    if not ok:
        raise _fail(context, "source.hub",
                    f"must be a Hugging Face hub dataset id (NAME or ORG/NAME), got {hub!r}: a path could read files "
                    "anywhere on this machine. For local files, set source.mirror and run with data_dir=DIR.")


def _check_mirror(context: str, mirror: str | None) -> None:
    """A mirror is one folder of data_dir: a task file must not point the run at files elsewhere."""
    if mirror is not None and (mirror in (".", "..") or any(sep in mirror for sep in "/\\")
                               or PureWindowsPath(mirror).drive):
        raise _fail(context, "source.mirror",
                    f"must be the name of a folder in data_dir, got {mirror!r}: a path (with '/', '..', or from the "
                    "root) could read files outside data_dir. Name the folder only, e.g. mirror: my_dataset.")


def _int(context: str, where: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(context, where, f"must be a whole number >= {minimum}, got {value!r}.")
    return value


def _check_jinja(context: str, where: str, text: str, *, expression: bool = False) -> None:
    from flantune import templates  # jinja2 is cheap to import

    try:
        templates.compile_expression(text) if expression else templates.compile_template(text)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        raise _fail(context, where, f"is not valid Jinja2: {exc}.") from exc


def task_from_dict(data: Any, origin: str, *, context: str | None = None, known_splits: Iterable[str] = ()) -> Task:
    """A validated Task. `context` opens its error messages (by default "Malformed task file <origin>");
    `known_splits` are split names holdout.from may name besides those the splits read (with_overrides passes
    the task file's own, so that overriding every split leaves the file's holdout valid)."""
    context = context or f"Malformed task file {origin}"
    if not isinstance(data, dict):
        raise FlantuneError(f"{context}: expected a mapping of fields, got {type(data).__name__}.")
    _check_keys(context, "", data, _TASK_KEYS)
    for key in _REQUIRED:
        if key not in data or data[key] is None:
            raise _fail(context, key, "is required but missing.")

    name = _str(context, "name", data["name"])
    if not name.replace("_", "").replace("-", "").isalnum():
        raise _fail(context, "name", f"must use letters, digits, '_' or '-' only, got {name!r}.")
    kind = data["kind"]
    if kind not in KINDS:
        raise _fail(context, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}.{did_you_mean(kind, KINDS)}")

    src = data["source"]
    if not isinstance(src, dict):
        raise _fail(context, "source", "must be a mapping with hub / config / revision / mirror.")
    _check_keys(context, "source", src, {f.name for f in fields(Source)})
    source = Source(**{k: _str(context, f"source.{k}", v, optional=True) for k, v in src.items()})
    _check_mirror(context, source.mirror)
    _check_hub(context, source.hub)
    if not source.hub and not source.mirror:
        raise _fail(context, "source", "needs a hub dataset id (source.hub) or a mirror folder name (source.mirror).")

    splits = data["splits"]
    if not isinstance(splits, dict):
        raise _fail(context, "splits", "must map roles (train, validation, test) to split names.")
    _check_keys(context, "splits", splits, set(ROLES))
    for role in ROLES:
        if role not in splits:
            raise _fail(context, f"splits.{role}", "is required (use the hub's slicing syntax, e.g. validation[:80%]).")
        _str(context, f"splits.{role}", splits[role])
        try:
            check_split_syntax(splits[role])
        except FlantuneError as exc:
            raise _fail(context, f"splits.{role}", str(exc)) from exc

    holdout = None
    if data.get("holdout") is not None:
        h = data["holdout"]
        if not isinstance(h, dict):
            raise _fail(context, "holdout", "must be a mapping with from, to, size and seed.")
        _check_keys(context, "holdout", h, {"from", "to", "size", "seed"})
        for key in ("from", "to", "size", "seed"):
            if key not in h:
                raise _fail(context, f"holdout.{key}", "is required.")
        if h["to"] not in ROLES:
            raise _fail(context, "holdout.to", f"must be one of {', '.join(ROLES)}, got {h['to']!r}.")
        # A holdout on a split that no role reads holds out nothing, so its rows would be trained on.
        read = sorted({*known_splits, *(name for role in ROLES for name in check_split_syntax(splits[role]))})
        if h["from"] not in read:
            raise _fail(
                context, "holdout.from",
                f"must name a split the task's splits read ({', '.join(read)}), got {h['from']!r}."
                f"{did_you_mean(str(h['from']), read)} A holdout on any other split holds out no rows.",
            )
        size = h["size"]
        if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
            raise _fail(context, "holdout.size", f"must be a row count or a fraction in (0, 1), got {size!r}.")
        holdout = Holdout(
            from_=_str(context, "holdout.from", h["from"]), to=h["to"], size=size,
            seed=_int(context, "holdout.seed", h["seed"], minimum=0),
        )

    raw_templates = data["templates"]
    if not isinstance(raw_templates, list) or not raw_templates:
        raise _fail(context, "templates", "must be a non-empty list of {name, input[, target]}.")
    templates_: list[Template] = []
    for i, t in enumerate(raw_templates):
        where = f"templates[{i}]"
        if not isinstance(t, dict):
            raise _fail(context, where, "must be a mapping with name and input.")
        _check_keys(context, where, t, {"name", "input", "target"})
        tname = _str(context, f"{where}.name", t.get("name"))
        _str(context, f"{where}.input", t.get("input"))
        _check_jinja(context, f"{where}.input", t["input"])
        if t.get("target") is not None:
            _check_jinja(context, f"{where}.target", _str(context, f"{where}.target", t["target"]))
        templates_.append(Template(name=tname, input=t["input"], target=t.get("target")))
    names = [t.name for t in templates_]
    if len(set(names)) != len(names):
        raise _fail(context, "templates", f"has duplicate template names: {names}.")
    eval_template = data.get("eval_template")
    if eval_template is not None and eval_template not in names:
        raise _fail(context, "eval_template", f"names no template: {eval_template!r}.{did_you_mean(eval_template, names)}")

    choices = None
    label_column = data.get("label_column")
    if kind == "classification":
        _str(context, "label_column", label_column)
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, dict) or len(raw_choices) < 2:
            raise _fail(context, "choices", "must map each label id to its answer text, with at least two choices.")
        choices = {}
        for k, v in raw_choices.items():
            if isinstance(k, bool) or not isinstance(k, int):
                raise _fail(context, f"choices.{k}", "must be keyed by integer label ids.")
            choices[k] = _str(context, f"choices.{k}", v)
        if len(set(choices.values())) != len(choices):
            raise _fail(context, "choices", "has the same answer text twice.")
        for key in ("target", "references"):
            if data.get(key) is not None:
                raise _fail(context, key, "is not used by classification tasks: the target is the label's choice text.")
    else:
        target = data.get("target")
        if target is None and any(t.target is None for t in templates_):
            raise _fail(context, "target", "is required (a Jinja template of the target text) unless every template has its own.")
        if target is not None:
            _check_jinja(context, "target", _str(context, "target", target))
    if kind == "extractive_qa":
        _check_jinja(context, "references", _str(context, "references", data.get("references")), expression=True)
    elif data.get("references") is not None and kind != "classification":
        _check_jinja(context, "references", _str(context, "references", data["references"]), expression=True)
    if data.get("filter") is not None:
        _check_jinja(context, "filter", _str(context, "filter", data["filter"]), expression=True)
    preprocess = _str(context, "preprocess", data.get("preprocess"), optional=True)
    if preprocess is not None and ":" not in preprocess:
        raise _fail(context, "preprocess", f"must be 'package.module:function', got {preprocess!r}.")

    metrics = _metric_specs(context, data["metrics"])
    primary = _str(context, "primary_metric", data["primary_metric"])
    from flantune.metrics import metric_outputs, known_metric_names

    for spec in metrics:
        if spec.name not in known_metric_names() and not spec.name.startswith("evaluate:"):
            raise _fail(
                context, "metrics",
                f"names an unknown metric {spec.name!r}.{did_you_mean(spec.name, known_metric_names())} "
                f"Known: {', '.join(known_metric_names())}, or evaluate:<name> for a metric of the evaluate library.",
            )
    outputs = metric_outputs(metrics, choices)
    if outputs is not None and primary not in outputs:
        raise _fail(
            context, "primary_metric",
            f"{primary!r} is not computed by this task's metrics.{did_you_mean(primary, outputs)} "
            f"They compute: {', '.join(outputs)}.",
        )

    baselines = data.get("baselines") or []
    if not isinstance(baselines, list) or not all(isinstance(b, dict) and b.get("name") in BASELINES
                                                  for b in baselines):
        raise _fail(context, "baselines", f"must be a list of {{name: {' | '.join(BASELINES)}, ...}} mappings.")
    for b in baselines:
        if b["name"] == "lead" and not isinstance(b.get("column"), str):
            raise _fail(context, "baselines", "a lead baseline needs the column holding the document (column: ...).")
    version = data.get("version", 1)
    return Task(
        name=name,
        description=_str(context, "description", data["description"]),
        kind=kind,
        version=_int(context, "version", version),
        source=source,
        splits=dict(splits),
        holdout=holdout,
        templates=tuple(templates_),
        eval_template=eval_template,
        target=data.get("target"),
        references=data.get("references"),
        label_column=label_column,
        choices=choices,
        id_column=_str(context, "id_column", data.get("id_column"), optional=True),
        filter=data.get("filter"),
        preprocess=preprocess,
        metrics=metrics,
        primary_metric=primary,
        max_input_length=_int(context, "max_input_length", data.get("max_input_length", 512)),
        # A classification task's answer lengths come from its choices unless the file sets them (fit_choices).
        max_target_length=_answer_length(context, "max_target_length", data, kind, 128),
        max_new_tokens=_answer_length(context, "max_new_tokens", data, kind, 64),
        baselines=tuple(dict(b) for b in baselines),
        origin=origin,
    )


def _answer_length(context: str, key: str, data: dict, kind: str, default: int) -> int | None:
    if data.get(key) is None:
        return None if kind == "classification" else default
    return _int(context, key, data[key])


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


def _metric_specs(context: str, raw: Any) -> tuple[MetricSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(context, "metrics", "must be a non-empty list of metric names (or {name: ..., <params>}).")
    specs = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            specs.append(MetricSpec(item))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            specs.append(MetricSpec(item["name"], {k: v for k, v in item.items() if k != "name"}))
        else:
            raise _fail(context, f"metrics[{i}]", f"must be a metric name or a mapping with 'name', got {item!r}.")
    return tuple(specs)


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


__all__ = ["Task", "Template", "Source", "MetricSpec", "task_from_dict", "task_to_dict", "load_task_file",
           "read_task_file", "fit_choices", "choice_lengths", "KINDS", "ROLES"]
