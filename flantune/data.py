"""A task's rows for one role (train / validation / test), checked and rendered to text.

`load_rows` selects the rows (slicing, holdout, filter, example cap) and checks them against the
task before any heavy work: every name a template reads must be a column, every label must be a
choice, and the split must not be empty. `render_row` turns one row into the prompt, the target,
the gold references and the label.
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
from flantune.errors import FlantuneError
from flantune.sources import carve_hint, load_split, mirror_sizes
from flantune.splits import check_split_syntax, describe_rows, select_rows, shared_rows
from flantune.task import ROLES, Task, Template

ID = "_id"  # the column that carries an example's id through every step
# Names a template may use besides the dataset's columns.
EXTRA_NAMES = ("choices", "options", "answer")


def resolve_spec(task: Task, role: str) -> str:
    if role not in ROLES:
        raise FlantuneError(f"'{role}' is not a split role: use one of {', '.join(ROLES)}.")
    return task.splits[role]


@lru_cache(maxsize=32)
def _preprocess_fn(dotted: str) -> Callable[[dict], dict]:
    module, _, name = dotted.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise FlantuneError(
            f"The preprocessing hook '{dotted}' can't be imported ({exc}). It must be 'package.module:function' "
            "importable from this Python environment."
        ) from exc


def preprocess_digest(task: Task) -> str:
    """The hook's part of a cache key: its dotted path and the source of its module, so that editing the
    hook invalidates the filtered and tokenised rows cached from its old version."""
    if task.preprocess is None:
        return ""
    fn = _preprocess_fn(task.preprocess)
    try:
        source = Path(inspect.getsourcefile(fn) or "").read_bytes()
    except (OSError, TypeError):  # built-in or without a file: the dotted path is all there is
        source = b""
    return f"{task.preprocess}|{hashlib.sha256(source).hexdigest()}"


def apply_preprocess(task: Task, row: dict[str, Any]) -> dict[str, Any]:
    if task.preprocess is None:
        return row
    out = _preprocess_fn(task.preprocess)(dict(row))
    if not isinstance(out, dict):
        raise FlantuneError(f"The preprocessing hook '{task.preprocess}' of task '{task.name}' must return a dict.")
    return out


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
    ctx = template_context(task, apply_preprocess(task, row))
    target = templates.render(task.target_template(template), ctx)
    if task.references:
        refs = templates.evaluate(task.references, ctx)
        refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
    else:
        refs = [target]
    label = int(row[task.label_column]) if task.is_classification else -1
    return {"input": templates.render(template.input, ctx), "target": target, "references": refs, "label": label}


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
    """Every name the task reads must be a column; then every template must render on `example`."""
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
    if example is None:
        return
    for t in task.templates:
        try:
            render_row(task, example, t)
        except FlantuneError:
            raise
        except Exception as exc:  # jinja2.UndefinedError, TypeError, ...
            raise FlantuneError(
                f"Task '{task.name}' ({task.origin}): template '{t.name}' fails on a real row: "
                f"{type(exc).__name__}: {exc}. Columns available: {', '.join(sorted(columns))}."
            ) from exc


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
    check_labels(task, dataset, role)
    return dataset


def _keep_row(row: dict[str, Any], task: Task) -> bool:
    # The filter sees what the templates see: the row after the preprocessing hook.
    return bool(templates.evaluate(task.filter, template_context(task, apply_preprocess(task, row))))


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
        sizes = {s: len(load_split(task, s, None)) for s in shared}
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
