"""`flantune show`: real examples of a task rendered through its templates, and token-length statistics.

The statistics say whether the task's length limits fit the data (p50 / p95 / max length, the share
truncated) and whether the tokenizer can spell it (the share of <unk> tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from flantune.data import load_rows, render_row
from flantune.console import console as make_console
from flantune.task import Task, fit_choices
from flantune.tokenizer import load_tokenizer

UNK_WARNING_SHARE = 0.01  # above 1% <unk> tokens the model can't read or write parts of the text
MULTILINGUAL_HINT = "google/mt5-base or google/umt5-base"


@dataclass
class LengthStats:
    rows: int
    input_lengths: np.ndarray
    target_lengths: np.ndarray
    input_unk: float  # share of input tokens that are <unk>
    target_unk: float

    def summary(self, limit: int, lengths: np.ndarray) -> dict[str, float]:
        return {
            "p50": float(np.percentile(lengths, 50)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "truncated": float(np.mean(lengths > limit)),
        }


def length_stats(task: Task, rows: list[dict], tokenizer) -> LengthStats:
    template = task.evaluation_template
    rendered = [render_row(task, row, template) for row in rows]
    inputs = tokenizer([r["input"] for r in rendered], verbose=False).input_ids
    targets = tokenizer([r["target"] for r in rendered], verbose=False).input_ids
    unk = tokenizer.unk_token_id

    def unk_share(seqs):
        total = sum(len(s) for s in seqs)
        return sum(s.count(unk) for s in seqs) / total if total else 0.0

    return LengthStats(
        rows=len(rows),
        input_lengths=np.array([len(s) for s in inputs]),
        target_lengths=np.array([len(s) for s in targets]),
        input_unk=unk_share(inputs),
        target_unk=unk_share(targets),
    )


def show(task: Task, *, role: str, n: int, data_dir: Path | None, tokenizer_name: str | None,
         template: str | None, seed: int, stats_rows: int, console: Console | None = None) -> LengthStats:
    console = console or make_console()
    chosen = task.template(template) if template else task.evaluation_template
    tokenizer = load_tokenizer(tokenizer_name)  # before the data: a bad tokenizer= is said at once
    task = fit_choices(task, tokenizer)  # the label limit a run would use, or the choice that can't fit
    dataset = load_rows(task, role, data_dir, max_examples=max(n, stats_rows), seed=seed)
    rows = [dataset[i] for i in range(len(dataset))]
    picked = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    console.print(f"[bold]{task.name}[/] ({task.kind}, {task.origin}): {task.description}")
    console.print(f"split {role} = {task.splits[role]}, template '{chosen.name}'")
    for seen in task.seen_in_training:  # a base model's score on these splits is not zero-shot
        console.print(f"[bold yellow]Trained on by published models:[/] {', '.join(seen.models)} were trained on "
                      f"its split(s) {', '.join(seen.splits)} ({seen.source})", highlight=False)
    for i in sorted(picked):
        ex = render_row(task, rows[i], chosen)
        body = f"{ex['input']}\n\n[bold]target:[/] {ex['target']}"
        if ex["references"] != [ex["target"]]:
            body += f"\n[bold]references:[/] {ex['references']}"
        console.print(Panel(body, title=f"id {rows[i]['_id']}", title_align="left"), highlight=False)

    stats = length_stats(task, rows, tokenizer)
    table = Table(title=f"token lengths over {stats.rows:,} rows of {role} "
                        f"(tokenizer: {tokenizer_name or 'FLAN-T5, shipped with flantune'})")
    for col in ("", "p50", "p95", "max", "limit", "truncated", "<unk> share"):
        table.add_column(col, justify="right")
    for label, lengths, limit, unk in (
        ("input", stats.input_lengths, task.max_input_length, stats.input_unk),
        ("target", stats.target_lengths, task.max_target_length, stats.target_unk),
    ):
        s = stats.summary(limit, lengths)
        table.add_row(label, f"{s['p50']:.0f}", f"{s['p95']:.0f}", str(s["max"]), str(limit),
                      f"{s['truncated']:.1%}", f"{unk:.1%}")
    console.print(table)
    for label, unk in (("inputs", stats.input_unk), ("targets", stats.target_unk)):
        if unk > UNK_WARNING_SHARE:
            console.print(
                f"[bold yellow]Warning:[/] {unk:.1%} of the {label}' tokens are <unk>: this tokenizer cannot spell "
                f"much of this text (T5's English-centric vocabulary has no Devanagari, for one), so a model using "
                f"it can neither read nor write those parts. Use a multilingual tokenizer and model such as "
                f"{MULTILINGUAL_HINT} (tokenizer=... for this command, model=... for runs).",
                highlight=False,
            )
    return stats
