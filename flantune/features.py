"""Rendered and tokenised examples, cached by datasets so that a second run does not tokenise again.

Each map is given an explicit fingerprint built from everything that decides its output (the rows'
fingerprint, the task definition, the template choice, the tokenizer's content, the length limits, the
preprocessing hook's source), so the cache is hit exactly when the output would be the same.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from flantune.data import ID, preprocess_digest, render_row
from flantune.task import Task, fit_choices, task_to_dict

FEATURES_VERSION = 2  # bump when the columns written here change


def _features():
    # Declared, not inferred: every task gets the same column types, so tasks' sets concatenate.
    from datasets import Features, Sequence, Value

    return Features({
        "id": Value("string"), "input": Value("string"), "target": Value("string"),
        "references": Sequence(Value("string")), "label": Value("int64"), "template": Value("string"),
        "input_ids": Sequence(Value("int32")), "attention_mask": Sequence(Value("int8")),
        "labels": Sequence(Value("int64")), "input_length": Value("int64"), "label_length": Value("int64"),
    })


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@lru_cache(maxsize=8)
def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def template_choice(task: Task, n_rows: int, seed: int) -> list[int]:
    """Training draws one template per example, seeded per task."""
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    return rng.integers(len(task.templates), size=n_rows).tolist()


def _encode(batch: dict[str, list], indices: list[int], *, task: Task, template_ids: list[int] | None,
            tokenizer) -> dict[str, list]:
    rows = [{k: batch[k][i] for k in batch} for i in range(len(indices))]
    fixed = task.evaluation_template
    chosen = [task.templates[template_ids[i]] if template_ids else fixed for i in indices]
    rendered = [render_row(task, row, template) for row, template in zip(rows, chosen)]
    inputs = tokenizer([r["input"] for r in rendered], max_length=task.max_input_length, truncation=True)
    labels = tokenizer(text_target=[r["target"] for r in rendered], max_length=task.max_target_length,
                       truncation=True)
    return {
        "id": [row[ID] for row in rows],
        "input": [r["input"] for r in rendered],
        "target": [r["target"] for r in rendered],
        "references": [r["references"] for r in rendered],
        "label": [r["label"] for r in rendered],
        "template": [template.name for template in chosen],
        "input_ids": inputs["input_ids"],
        "attention_mask": inputs["attention_mask"],
        "labels": labels["input_ids"],
        "input_length": [len(x) for x in inputs["input_ids"]],
        "label_length": [len(x) for x in labels["input_ids"]],
    }


def tokenize(task: Task, rows, tokenizer, *, role: str, template_seed: int | None):
    """rows (from data.load_rows) -> the model's features plus the rendered texts.

    template_seed=None renders every row with the task's evaluation template (evaluation);
    an integer draws a template per row (training).
    """
    task = fit_choices(task, tokenizer)  # a classification label holds its longest choice and end-of-sequence token
    template_ids = template_choice(task, len(rows), template_seed) if template_seed is not None else None
    fingerprint = _digest(
        FEATURES_VERSION, rows._fingerprint, task_to_dict(task), role, template_seed,
        _tokenizer_digest(tokenizer), task.max_input_length, task.max_target_length, preprocess_digest(task),
    )
    return rows.map(
        _encode,
        batched=True,
        batch_size=256,
        with_indices=True,
        fn_kwargs={"task": task, "template_ids": template_ids, "tokenizer": tokenizer},
        remove_columns=rows.column_names,
        features=_features(),
        new_fingerprint=fingerprint,
        desc=f"{task.name}: tokenize {role}",
    )
