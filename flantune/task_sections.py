"""The sections of a task file, each read by one short parser: the task's name and kind, its source, splits and
holdout, templates, answers (choices, or target and references), row hooks, metrics, baselines and settings.

Every parser takes the `context` that opens its error messages ("Malformed task file <origin>") and names the
field at fault, so a task file's author is told what, where and how to fix it. `flantune.task.task_from_dict`
calls them in the order of a task file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import PureWindowsPath
from typing import Any

from flantune import templates
from flantune.errors import FlantuneError, did_you_mean
from flantune.metrics import known_metric_names, metric_outputs
from flantune.metrics.text import SENTENCES
from flantune.splits import Holdout, check_split_syntax

KINDS = ("classification", "generation", "extractive_qa")
LEAD_SPLITS = ("auto", "lines", "sentences", "words")  # the unit a lead baseline counts (report/baselines.py)
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
class SeenInTraining:
    """Published models trained on some of this task's source splits (its held-in declaration)."""
    models: tuple[str, ...]  # model names or hub ids, shell-style patterns allowed: google/flan-t5-*
    splits: tuple[str, ...]  # source split names, as the task's splits name them
    source: str  # where this is stated: a URL and the row(s) that say it


@dataclass(frozen=True)
class MetricSpec:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


def check_fields(context: str, data: Any, known: set[str], required: tuple[str, ...]) -> None:
    """A mapping of known fields, the required ones given."""
    if not isinstance(data, dict):
        raise FlantuneError(f"{context}: expected a mapping of fields, got {type(data).__name__}.")
    _check_keys(context, "", data, known)
    for key in required:
        if key not in data or data[key] is None:
            raise _fail(context, key, "is required but missing.")


def parse_name_and_kind(context: str, data: dict) -> tuple[str, str]:
    name = _str(context, "name", data["name"])
    if not name.replace("_", "").replace("-", "").isalnum():
        raise _fail(context, "name", f"must use letters, digits, '_' or '-' only, got {name!r}.")
    kind = data["kind"]
    if kind not in KINDS:
        raise _fail(context, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}.{did_you_mean(kind, KINDS)}")
    return name, kind


def parse_source(context: str, src: Any) -> Source:
    if not isinstance(src, dict):
        raise _fail(context, "source", "must be a mapping with hub / config / revision / mirror.")
    _check_keys(context, "source", src, {f.name for f in fields(Source)})
    source = Source(**{k: _str(context, f"source.{k}", v, optional=True) for k, v in src.items()})
    _check_mirror(context, source.mirror)
    _check_hub(context, source.hub)
    if not source.hub and not source.mirror:
        raise _fail(context, "source", "needs a hub dataset id (source.hub) or a mirror folder name (source.mirror).")
    return source


def parse_splits(context: str, splits: Any) -> dict[str, str]:
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
    return dict(splits)


def parse_holdout(context: str, h: Any, splits: dict[str, str], known_splits: Iterable[str]) -> Holdout | None:
    if h is None:
        return None
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
    return Holdout(from_=_str(context, "holdout.from", h["from"]), to=h["to"], size=size,
                   seed=_int(context, "holdout.seed", h["seed"], minimum=0))


def parse_templates(context: str, raw: Any, eval_template: Any) -> tuple[tuple[Template, ...], str | None]:
    """The templates, and the name of the one evaluation uses (None: the first)."""
    if not isinstance(raw, list) or not raw:
        raise _fail(context, "templates", "must be a non-empty list of {name, input[, target]}.")
    out: list[Template] = []
    for i, t in enumerate(raw):
        where = f"templates[{i}]"
        if not isinstance(t, dict):
            raise _fail(context, where, "must be a mapping with name and input.")
        _check_keys(context, where, t, {"name", "input", "target"})
        name = _str(context, f"{where}.name", t.get("name"))
        _check_jinja(context, f"{where}.input", _str(context, f"{where}.input", t.get("input")))
        if t.get("target") is not None:
            _check_jinja(context, f"{where}.target", _str(context, f"{where}.target", t["target"]))
        out.append(Template(name=name, input=t["input"], target=t.get("target")))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise _fail(context, "templates", f"has duplicate template names: {names}.")
    if eval_template is not None and eval_template not in names:
        raise _fail(context, "eval_template", f"names no template: {eval_template!r}.{did_you_mean(eval_template, names)}")
    return tuple(out), eval_template


def parse_answers(context: str, data: dict, kind: str, templates_: tuple[Template, ...]) -> dict[str, Any]:
    """What a row's answer is: a classification task's label column and choices, or the target template and the
    references (the gold answers) of the others."""
    choices = None
    if kind == "classification":
        choices = _choices(context, data)
    else:
        target = data.get("target")
        if target is None and any(t.target is None for t in templates_):
            raise _fail(context, "target", "is required (a Jinja template of the target text) unless every template has its own.")
        if target is not None:
            _check_jinja(context, "target", _str(context, "target", target))
    if kind == "extractive_qa" or (data.get("references") is not None and kind != "classification"):
        _check_jinja(context, "references", _str(context, "references", data.get("references")), expression=True)
    return {"label_column": data.get("label_column"), "choices": choices, "target": data.get("target"),
            "references": data.get("references")}


def _choices(context: str, data: dict) -> dict[int, str]:
    _str(context, "label_column", data.get("label_column"))
    raw = data.get("choices")
    if not isinstance(raw, dict) or len(raw) < 2:
        raise _fail(context, "choices", "must map each label id to its answer text, with at least two choices.")
    choices = {}
    for k, v in raw.items():
        if isinstance(k, bool) or not isinstance(k, int):
            raise _fail(context, f"choices.{k}", "must be keyed by integer label ids.")
        choices[k] = _str(context, f"choices.{k}", v)
    if len(set(choices.values())) != len(choices):
        raise _fail(context, "choices", "has the same answer text twice.")
    for key in ("target", "references"):
        if data.get(key) is not None:
            raise _fail(context, key, "is not used by classification tasks: the target is the label's choice text.")
    return choices


def parse_row_hooks(context: str, data: dict) -> tuple[str | None, str | None]:
    """The filter expression and the preprocess function applied to each row."""
    if data.get("filter") is not None:
        _check_jinja(context, "filter", _str(context, "filter", data["filter"]), expression=True)
    preprocess = _str(context, "preprocess", data.get("preprocess"), optional=True)
    if preprocess is not None and ":" not in preprocess:
        raise _fail(context, "preprocess", f"must be 'package.module:function', got {preprocess!r}.")
    return data.get("filter"), preprocess


def parse_metrics(context: str, raw: Any, primary: Any,
             choices: dict[int, str] | None) -> tuple[tuple[MetricSpec, ...], str]:
    """The metric specs, and the primary metric, which one of them must compute."""
    metrics = _metric_specs(context, raw)
    primary = _str(context, "primary_metric", primary)
    for spec in metrics:
        if spec.name not in known_metric_names() and not spec.name.startswith("evaluate:"):
            raise _fail(
                context, "metrics",
                f"names an unknown metric {spec.name!r}.{did_you_mean(spec.name, known_metric_names())} "
                f"Known: {', '.join(known_metric_names())}, or evaluate:<name> for a metric of the evaluate library.",
            )
    for spec in metrics:
        if spec.name == "rouge":
            _check_keys(context, "metrics[rouge]", spec.params, {"sentences"})
            if spec.params.get("sentences", "punkt") not in SENTENCES:
                raise _fail(context, "metrics[rouge].sentences",
                            f"must be one of {', '.join(SENTENCES)} (how ROUGE-Lsum finds sentences), got "
                            f"{spec.params['sentences']!r}.")
    outputs = metric_outputs(metrics, choices)
    if outputs is not None and primary not in outputs:
        raise _fail(
            context, "primary_metric",
            f"{primary!r} is not computed by this task's metrics.{did_you_mean(primary, outputs)} "
            f"They compute: {', '.join(outputs)}.",
        )
    return metrics, primary


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


def parse_baselines(context: str, raw: Any) -> tuple[dict[str, Any], ...]:
    baselines = raw or []
    if not isinstance(baselines, list) or not all(isinstance(b, dict) and b.get("name") in BASELINES
                                                  for b in baselines):
        raise _fail(context, "baselines", f"must be a list of {{name: {' | '.join(BASELINES)}, ...}} mappings.")
    for i, b in enumerate(baselines):
        if b["name"] == "lead":
            _check_keys(context, f"baselines[{i}]", b, {"name", "column", "k", "split"})
            if not isinstance(b.get("column"), str):
                raise _fail(context, "baselines", "a lead baseline needs the column holding the document (column: ...).")
            _int(context, f"baselines[{i}].k", b.get("k", 3))
            if b.get("split", "auto") not in LEAD_SPLITS:
                raise _fail(context, f"baselines[{i}].split", f"must be one of {', '.join(LEAD_SPLITS)} (the unit "
                            f"of the first k), got {b['split']!r}.")
    return tuple(dict(b) for b in baselines)


def parse_seen_in_training(context: str, raw: Any) -> tuple[SeenInTraining, ...]:
    """seen_in_training: a list of {models, splits, source}: which published models were trained on which of
    this task's source splits, and where that is stated."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(context, "seen_in_training", "must be a list of {models: [...], splits: [...], source: ...}.")
    out = []
    for i, item in enumerate(raw):
        where = f"seen_in_training[{i}]"
        if not isinstance(item, dict):
            raise _fail(context, where, "must be a mapping with models, splits and source.")
        _check_keys(context, where, item, {"models", "splits", "source"})
        lists = {}
        for key in ("models", "splits"):
            value = item.get(key)
            if not isinstance(value, list) or not value:
                raise _fail(context, f"{where}.{key}", f"must be a non-empty list of names, got {value!r}.")
            lists[key] = tuple(_str(context, f"{where}.{key}[{j}]", v) for j, v in enumerate(value))
        out.append(SeenInTraining(models=lists["models"], splits=lists["splits"],
                                  source=_str(context, f"{where}.source", item.get("source"))))
    return tuple(out)


def parse_settings(context: str, data: dict, kind: str) -> dict[str, Any]:
    """The description, version, id column and length limits."""
    return {
        "description": _str(context, "description", data["description"]),
        "version": _int(context, "version", data.get("version", 1)),
        "id_column": _str(context, "id_column", data.get("id_column"), optional=True),
        "max_input_length": _int(context, "max_input_length", data.get("max_input_length", 512)),
        # A classification task's answer lengths come from its choices unless the file sets them (fit_choices).
        "max_target_length": _answer_length(context, "max_target_length", data, kind, 128),
        "max_new_tokens": _answer_length(context, "max_new_tokens", data, kind, 64),
    }


def _answer_length(context: str, key: str, data: dict, kind: str, default: int) -> int | None:
    if data.get(key) is None:
        return None if kind == "classification" else default
    return _int(context, key, data[key])


# ---- fields ----------------------------------------------------------------------------------------------------

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
    try:
        templates.compile_expression(text) if expression else templates.compile_template(text)
    except Exception as exc:  # jinja2.TemplateSyntaxError and friends
        raise _fail(context, where, f"is not valid Jinja2: {exc}.") from exc
