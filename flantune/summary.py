"""The short table a run ends with."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from flantune.console import console
from flantune.evaluation import SCORE, EvalResult


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def print_summary(p, out: Path, final: EvalResult, trained, info, wall: float) -> None:
    say = console()
    table = Table(title=f"flantune run: {p.label} on {info.label}, {p.cfg.method}, split {p.cfg.eval.split}")
    table.add_column("task")
    table.add_column("primary", justify="right")
    table.add_column("other metrics")
    table.add_column("examples", justify="right")
    for name, r in final.tasks.items():
        primary = r.task.primary_metric
        others = ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items()
                           if k != primary and "/" not in k)
        table.add_row(name, f"{primary} {_fmt(r.metrics[primary])}", others, f"{r.examples:,}")
    if len(final.tasks) > 1:
        table.add_row("[bold]mean of primaries[/]", f"{SCORE} {final.score:.2f}", "", "")
    say.print(table)
    if final.templates:
        say.print(template_table(final.template_metrics(), {n: r.task.primary_metric for n, r in final.tasks.items()}))
    mix = trained.mixture
    if mix:
        mt = Table(title="realised mixture")
        for col in ("task", "train rows", "requested rate", "examples seen", "realised rate"):
            mt.add_column(col, justify="right" if col != "task" else "left")
        for t in mix["train_sizes"]:
            mt.add_row(t, f"{mix['train_sizes'][t]:,}", f"{mix['requested_rates'][t]:.3f}",
                       f"{mix['examples_seen'][t]:,}", f"{mix['realised_rates'][t]:.3f}")
        say.print(mt)
        say.print(f"a step held {mix['tasks_per_step']:.1f} of the {len(mix['train_sizes'])} tasks on average",
                  highlight=False)
    tp = trained.throughput
    say.print(
        f"trained {tp['steps']} steps in {tp['seconds']:.1f}s ({tp['examples_per_s']:.1f} examples/s, "
        f"{tp['tokens_per_s']:,.0f} tokens/s); {info.trainable_parameters:,} trainable parameters; "
        f"wall time {wall:.1f}s", highlight=False,
    )
    say.print(trained.step.describe(), highlight=False)
    stop = trained.early_stopping
    if stop and stop["stopped_early"]:
        say.print(f"stopped early at step {stop['stopped_at_step']} of {stop['planned_steps']}: {stop['reason']}; "
                  "the best checkpoint was kept", highlight=False)
    if "packed_rows" in tp:
        shapes = ", ".join(f"{e} + {d}" for e, d in tp["packed_rows"])
        say.print(f"packed rows of {shapes} tokens, {trained.step.batch} a batch per process: "
                  f"{tp['examples'] / max(tp['steps'], 1):.1f} examples a step on average", highlight=False)
    if info.random_init:
        say.print("[yellow]The model was built with random weights: these scores test the pipeline, not FLAN-T5.[/]")
    say.print(f"run directory: [bold]{out}[/]")


def template_table(templates: dict, primaries: dict[str, str]) -> Table:
    """eval.templates: each task's primary metric on every template, and its mean, std (over templates), min, max
    (metrics.json "templates")."""
    table = Table(title="every template (eval.templates)")
    for col in ("task", "template", "primary"):
        table.add_column(col, justify="right" if col == "primary" else "left")
    for name, t in templates.items():
        metric = primaries[name]
        for template, values in t["templates"].items():
            table.add_row(name, template, f"{metric} {_fmt(values[metric])}")
        std = t["std"][metric]
        table.add_row(name, "[bold]mean ± std \\[min, max][/]",
                      f"{t['mean'][metric]:.2f} ± {'n/a' if std is None else f'{std:.2f}'} "
                      f"[{t['min'][metric]:.2f}, {t['max'][metric]:.2f}]")
    return table
