"""Few-shot inputs (eval.fewshot=K): K answered examples of the task's train split, rendered with the same template
as the evaluated input, before it. This is the FLAN paper's few-shot setting, for a base model's evaluation.

Each input draws its own shots, seeded by (data.eval_seed, the task, the input's position), so every template of
a task gets the same shots and a rerun the same prompts. A shot is never the evaluated example itself: not a row
with its id (eval.split=train), nor one whose rendered input and answer equal its own. When the K shots and the
input exceed the task's input length limit, shots are dropped from the front (the first drawn) until the whole
fits; an input that is too long alone gets no shots and is truncated as a zero-shot input is. How many shots
each input got is reported (metrics.json "fewshot": mean and min per task).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from flantune.task import Task

EXAMPLE_SEPARATOR = "\n\n"  # between shots, and between the last shot and the evaluated input
ANSWER_SEPARATOR = "\n"  # between a shot's input and its answer


def shot_text(row: dict[str, Any]) -> str:
    return f"{row['input']}{ANSWER_SEPARATOR}{row['target']}"


def draw_shots(task: Task, eval_rows: list[dict[str, Any]], pool, k: int, seed: int) -> tuple[list[list[int]], dict]:
    """For each evaluated row, the indices into `pool` (the train split's rows, from data.load_rows) of its k
    shots (fewer only when the pool holds fewer than k other examples), and the rendered shots by index. Only the
    drawn rows are rendered: the pool may be a whole train split."""
    from flantune.data import ID, render_row

    n, template, rendered = len(pool), task.evaluation_template, {}

    def shot(j: int) -> dict[str, Any]:
        if j not in rendered:
            row = pool[j]
            rendered[j] = {"id": row[ID], **render_row(task, row, template)}
        return rendered[j]

    out = []
    for i, row in enumerate(eval_rows):
        rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), i])

        def allowed(j: int) -> bool:
            s = shot(j)
            return s["id"] != row["id"] and (s["input"], s["target"]) != (row["input"], row["target"])

        # A few more than k, in case some are the example itself; else every row, in a seeded order.
        chosen = [j for j in rng.choice(n, size=min(n, k + 4), replace=False).tolist() if allowed(j)][:k]
        if len(chosen) < k:
            chosen = [j for j in rng.permutation(n).tolist() if allowed(j)][:k]
        out.append(chosen)
    return out, rendered


def with_shots(task: Task, data, pool, tokenizer, k: int, seed: int) -> tuple[Any, list[int]]:
    """`data` (features.tokenize's evaluation rows, rendered with task.evaluation_template) with k shots of `pool`
    (the train split's rows) before each input, re-tokenised; and the number of shots each input kept."""
    eval_rows = data.select_columns(["id", "input", "target"]).to_list()
    drawn, rendered = draw_shots(task, eval_rows, pool, k, seed)
    texts, kept = [], []
    for row, shots in zip(eval_rows, drawn):
        while True:
            text = EXAMPLE_SEPARATOR.join([*(shot_text(rendered[j]) for j in shots), row["input"]])
            # Shots only while the whole fits: the evaluated input is never cut to make room for them.
            if not shots or len(tokenizer(text).input_ids) <= task.max_input_length:
                break
            shots = shots[1:]
        texts.append(text)
        kept.append(len(shots))
    encoded = tokenizer(texts, max_length=task.max_input_length, truncation=True) if texts else \
        {"input_ids": [], "attention_mask": []}
    columns = {"input": texts, "input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
               "input_length": [len(x) for x in encoded["input_ids"]]}
    for name, values in columns.items():
        feature = data.features[name]
        data = data.remove_columns(name).add_column(name, values, feature=feature)
    return data, kept
