"""A task's rows for one role (train / validation / test), checked and rendered to text.

`load_rows` selects the rows (slicing, holdout, filter, example cap) and checks them against the
task before any heavy work: every name a template reads must be a column, every template must render
on every selected row, every label must be a choice, and the split must not be empty. `render_row`
turns one row into the prompt, the target, the gold references and the label; a row it can't take is
an error naming the row, the template (or field) and, from load_rows, the split.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from flantune import templates
from flantune.errors import FlantuneError, first_line
from flantune.sources import carve_hint, load_split, mirror_sizes
from flantune.splits import check_split_syntax, describe_rows, select_rows, shared_rows
from flantune.task import ROLES, Task
from flantune.task_sections import Template

ID = "_id"  # the column that carries an example's id through every step
# Names a template may use besides the dataset's columns.
EXTRA_NAMES = ("choices", "options", "answer")


def resolve_spec(task: Task, role: str) -> str:
    if role not in ROLES:
        raise FlantuneError(f"'{role}' is not a split role: use one of {', '.join(ROLES)}.")
    return task.splits[role]


@lru_cache(maxsize=32)
def _import_hook(dotted: str) -> Callable[[dict], dict]:
    module, _, name = dotted.partition(":")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{module}.{name} is a {type(fn).__name__}, not a function")
    return fn


def _preprocess_fn(task: Task) -> Callable[[dict], dict]:
    try:
        return _import_hook(task.preprocess)
    except Exception as exc:  # ImportError, AttributeError, TypeError, or whatever the module raises on import
        raise FlantuneError(
            f"Task '{task.name}' ({task.origin}): its preprocessing hook preprocess: '{task.preprocess}' can't be "
            f"used ({type(exc).__name__}: {first_line(exc)}). It must name a function 'package.module:function' "
            "importable from this Python environment, which takes a row (a dict) and returns one."
        ) from exc


def preprocess_digest(task: Task) -> str:
    """The hook's part of a cache key: its dotted path and the source of its module, so that editing the
    hook invalidates the filtered and tokenised rows cached from its old version."""
    if task.preprocess is None:
        return ""
    fn = _preprocess_fn(task)
    try:
        source = Path(inspect.getsourcefile(fn) or "").read_bytes()
    except (OSError, TypeError):  # built-in or without a file: the dotted path is all there is
        source = b""
    return f"{task.preprocess}|{hashlib.sha256(source).hexdigest()}"


class RowError(FlantuneError):
    """A row that the task can't take: its preprocessing hook, filter, a template or its label fails on it.
    `in_split` names the split too, where the caller knows it."""

    def __init__(self, task: Task, place: str, row: dict[str, Any], exc: Exception):
        self.task, self.place, self.row_id, self.cause = task, place, row.get(ID), exc
        super().__init__(self._text(""))

    def _text(self, split: str) -> str:
        cause = self.cause if isinstance(self.cause, FlantuneError) else f"{type(self.cause).__name__}: {self.cause}"
        where = f" on row {self.row_id}" if self.row_id is not None else " on a row"
        if isinstance(self.cause, templates.Refused):
            fix = ""
        elif self.place.startswith("the preprocessing hook"):
            fix = " Fix the hook, or drop such rows with the task's filter."
        elif self.place.startswith("label_column"):
            fix = " A label must be the integer id of a choice: fix the data, or drop such rows with the task's filter."
        else:
            fix = (" Fix the task file (a template can give a missing value a default: {{ text or '' }}), or drop "
                   "such rows with its filter (e.g. filter: \"text is not none\").")
        return (f"Task '{self.task.name}' ({self.task.origin}): {self.place} fails{where}{split}: "
                f"{str(cause).rstrip('.')}.{fix} `flantune validate task={self.task.name}` checks every row.")

    def in_split(self, role: str, spec: str) -> FlantuneError:
        return FlantuneError(self._text(f" of the {role} split (splits.{role}: {spec})"))


def _step(task: Task, place: str, row: dict[str, Any], fn: Callable, *args):
    """fn(*args), any failure a RowError naming `place` and the row."""
    try:
        return fn(*args)
    except RowError:
        raise
    except Exception as exc:  # jinja2.UndefinedError, TypeError, templates.Refused, the hook's own errors, ...
        raise RowError(task, place, row, exc) from exc


def _hook_output(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    out = _preprocess_fn(task)(dict(row))
    if not isinstance(out, dict):
        raise TypeError(f"it must return a dict, not a {type(out).__name__}")
    return out


def apply_preprocess(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    if task.preprocess is None:
        return row
    _preprocess_fn(task)  # a hook that can't be imported is the task's error, not one row's
    return _step(task, f"the preprocessing hook '{task.preprocess}'", row, _hook_output, task, row)


def template_context(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    """The names a template sees: the row's columns plus choices, options and (classification) answer."""
    ctx = dict(row)
    if task.is_classification:
        ctx["choices"] = task.choice_texts
        ctx["options"] = "\n".join(f"- {c}" for c in task.choice_texts)
        label = row.get(task.label_column)
        ctx["answer"] = task.choices.get(label) if label is not None else None
    return ctx


def render_row(task: Task, row: dict[str, Any], template: Template) -> dict[str, Any]:
    """prompt, target, references (gold texts) and label (-1 unless classification) of one row."""
    return _render(task, row, template_context(task, apply_preprocess(task, row)), template)


def _render(task: Task, row: dict[str, Any], ctx: dict[str, Any], template: Template) -> dict[str, Any]:
    """render_row, given the row's template context; a failure names the template (or field) and the row."""
    place = f"template '{template.name}'"
    prompt = _step(task, f"{place} (input)", row, templates.render, template.input, ctx)
    target = _step(task, "target" if task.target and not template.target else f"{place} (target)", row,
                   templates.render, task.target_template(template), ctx)
    if task.references:
        refs = _step(task, "references", row, _references, task.references, ctx)
    else:
        refs = [target]
    label = _step(task, f"label_column '{task.label_column}'", row, int, row[task.label_column]) \
        if task.is_classification else -1
    return {"input": prompt, "target": target, "references": refs, "label": label}


def _references(expression: str, ctx: dict[str, Any]) -> list[str]:
    refs = templates.evaluate(expression, ctx)
    return [refs] if isinstance(refs, str) else [str(r) for r in refs]


def _names_read(task: Task) -> dict[str, set[str]]:
    """Where each checked name is read: {place: names}."""
    places: dict[str, set[str]] = {}
    for t in task.templates:
        places[f"template '{t.name}' (input)"] = templates.variables(t.input)
        places[f"template '{t.name}' (target)"] = templates.variables(task.target_template(t))
    if task.references:
        places["references"] = templates.variables(task.references, expression=True)
    if task.filter:
        places["filter"] = templates.variables(task.filter, expression=True)
    if task.label_column:
        places["label_column"] = {task.label_column}
    if task.id_column:
        places["id_column"] = {task.id_column}
    for b in task.baselines:
        if b.get("column"):
            places[f"baseline '{b['name']}'"] = {b["column"]}
    return places


def check_columns(task: Task, columns: list[str], example: dict[str, Any] | None = None) -> None:
    """Every name the task reads must be a column (or, for what renders, one the preprocessing hook adds to
    `example`); check_rows then renders the templates on every row."""
    available = set(columns) | set(EXTRA_NAMES)
    if example is not None and task.preprocess:
        available |= set(apply_preprocess(task, example))
    for place, names in _names_read(task).items():
        # Templates, references and the filter see the hook's output; the label, id and baseline columns
        # are read from the data itself.
        rendered = place.startswith(("template", "references", "filter"))
        missing = sorted(names - (available if rendered else set(columns)))
        if missing:
            fix = ("Fix the task file, or add the column with a preprocessing hook (preprocess: "
                   "'package.module:function')." if rendered else "Fix the task file: it must name a column of the data.")
            raise FlantuneError(
                f"Task '{task.name}' ({task.origin}): {place} reads column '{missing[0]}', which the data does not "
                f"have. Columns available: {', '.join(sorted(columns))}. {fix}"
            )


ROWS_PER_BAR = 5000  # a split this large shows a progress bar while its rows are checked


def check_rows(task: Task, dataset, role: str = "") -> int:
    """Every template (input and target), the references and the label on every row of `dataset`: a failure
    is a RowError naming the row and the template. Returns the number of rows checked."""
    from rich.progress import track

    from flantune.console import console

    batches = dataset.iter(batch_size=1000)
    rows = (dict(zip(batch, values)) for batch in batches for values in zip(*batch.values()))
    for row in track(rows, total=len(dataset), description=f"{task.name}: check {role} rows",
                     console=console(stderr=True), transient=True, disable=len(dataset) < ROWS_PER_BAR):
        ctx = template_context(task, apply_preprocess(task, row))
        for template in task.templates:
            _render(task, row, ctx, template)
    return len(dataset)


def column(dataset, name: str) -> np.ndarray:
    """One column as a numpy array, read through Arrow (datasets' row iterator is slow)."""
    table = dataset.select_columns([name]).with_format("arrow")[:]
    return table.column(name).to_numpy(zero_copy_only=False)


def check_labels(task: Task, dataset, role: str) -> None:
    if not task.is_classification:
        return
    labels = set(np.unique(column(dataset, task.label_column)).tolist())
    outside = sorted(labels - set(task.choices), key=str)
    if outside:
        raise FlantuneError(
            f"Task '{task.name}' ({task.origin}): the {role} split has label {outside[0]!r}, which is not one of "
            f"its choices ({', '.join(f'{k}: {v}' for k, v in task.choices.items())}). Add it to 'choices' or "
            "filter those rows out with 'filter'."
        )


def _split_with_ids(task: Task, split: str, data_dir: Path | None):
    """The whole split with an `_id` column: the task's id column as text, else "<split>-<row>".

    The column is added to the full split (no indices mapping yet), which appends one in-memory
    column and leaves the memory-mapped data uncopied.
    """
    full = load_split(task, split, data_dir)
    if ID in full.column_names:
        return full
    if task.id_column:
        if task.id_column not in full.column_names:
            check_columns(task, full.column_names)  # raises, naming the column and what is there
        ids = [str(v) for v in full.data.column(task.id_column).to_pylist()]
    else:
        ids = [f"{split}-{i}" for i in range(len(full))]
    return full.add_column(ID, ids)


def load_rows(task: Task, role: str, data_dir: Path | None, *, max_examples: int | None = None, seed: int = 0):
    """The checked rows of `role`, each with an `_id`; a seeded subset of `max_examples` rows, in order."""
    try:
        return _load_rows(task, role, data_dir, max_examples=max_examples, seed=seed)
    except RowError as exc:  # a row the task can't take: name its split too
        raise exc.in_split(role, task.splits[role]) from exc


def _load_rows(task: Task, role: str, data_dir: Path | None, *, max_examples: int | None, seed: int):
    import datasets

    spec = resolve_spec(task, role)
    data_dir = Path(data_dir) if data_dir is not None else None
    parts = []
    names = {}

    for split in dict.fromkeys(check_split_syntax(spec)):
        names[split] = _split_with_ids(task, split, data_dir)
    sizes = {split: len(ds) for split, ds in names.items()}
    for split, rows in select_rows(spec, role, sizes, task.holdout):
        if len(rows):
            parts.append(names[split].select(rows))
    if not parts:
        raise _empty(task, role, spec, data_dir)
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    check_columns(task, [c for c in dataset.column_names if c != ID], dataset[0])
    if task.filter:
        dataset = dataset.filter(
            _keep_row, fn_kwargs={"task": task}, desc=f"{task.name}: filter",
            # explicit, so that the filtered rows are cached across runs (a closure hashes differently each run)
            new_fingerprint=hashlib.sha256(
                f"{dataset._fingerprint}|{task.filter}|{preprocess_digest(task)}".encode()).hexdigest()[:32],
        )
    if len(dataset) == 0:
        raise _empty(task, role, spec, data_dir)
    if max_examples is not None and max_examples < len(dataset):
        picked = np.sort(np.random.default_rng(seed).choice(len(dataset), size=max_examples, replace=False))
        dataset = dataset.select(picked)
    # Every row the command will use, before any heavy work: a template that fails on row 3 is an error naming
    # the row now, not a traceback after tokenising (or loading a model).
    check_rows(task, dataset, role)
    check_labels(task, dataset, role)
    return dataset


def _keep_row(row: dict[str, Any], task: Task) -> bool:
    # The filter sees what the templates see: the row after the preprocessing hook.
    ctx = template_context(task, apply_preprocess(task, row))
    return bool(_step(task, "filter", row, templates.evaluate, task.filter, ctx))


def _empty(task: Task, role: str, spec: str, data_dir: Path | None) -> FlantuneError:
    where = f"the mirror in {data_dir}" if data_dir else f"hub dataset {task.source.hub}"
    extra = f" after its filter ({task.filter})" if task.filter else ""
    return FlantuneError(
        f"Task '{task.name}': the {role} split '{spec}' of {where} has no rows{extra}. "
        f"Pick a non-empty split with tasks.{task.name}.splits.{role}=..."
    )


def split_overlaps(task: Task, data_dir: Path | None) -> list[tuple[str, str, str, np.ndarray]]:
    """Where the task's training rows are also validation or test rows, as (role, other role, split, rows): from the
    split specs, the holdout and the splits' sizes (a mirror's file metadata; a hub split that two roles read is
    loaded, as the run would). Row ranges, not ids: ids repeat across splits (PAWS numbers each split from 1)."""
    read = {role: check_split_syntax(task.splits[role]) for role in ROLES}
    shared = {s for s in read["train"] if s in read["validation"] or s in read["test"]}
    if not shared:
        return []
    if data_dir is not None:
        sizes = {k: v for k, v in mirror_sizes(task, Path(data_dir)).items() if v is not None}
    else:
        # every split of a role that reads a shared one: train[:10%]+validation needs train's size to place it
        needed = {s for role in ROLES if shared & set(read[role]) for s in read[role]}
        sizes = {s: len(load_split(task, s, None)) for s in sorted(needed)}
    return shared_rows(dict(task.splits), task.holdout, sizes)


def check_overlap(task: Task, data_dir: Path | None, *, allow: bool) -> list[str]:
    """A run never trains on its own evaluation rows unless data.allow_overlap=true says so: the overlaps found
    (recorded in metrics.json where they are allowed), or a FlantuneError that says how to carve the roles apart."""
    overlaps = split_overlaps(task, data_dir)
    found = [f"its {a} and {b} roles both read {describe_rows(rows)} of split '{split}' ({a} '{task.splits[a]}', "
             f"{b} '{task.splits[b]}')" for a, b, split, rows in overlaps]
    if not found or allow:
        return found
    hint = carve_hint(task, {role for a, b, _, _ in overlaps for role in (a, b)}, data_dir)
    raise FlantuneError(
        f"Task '{task.name}' would train on rows it evaluates on: {'; '.join(found)}. Its scores would not measure "
        f"held-out data. Carve the roles apart{', e.g. ' + hint if hint else ' with the hub slicing syntax'}, or set "
        "data.allow_overlap=true to train on them anyway (recorded in metrics.json and the report)."
    )
