"""The report of a sweep (flantune/sweep.py): its settings compared on the same validation examples.

Every number is recomputed from the runs' saved predictions (predictions/<task>.jsonl), as in the comparative
report (flantune/report/build.py):
  - per setting, each task's primary metric (and with several tasks the score, their mean) on every seed's run:
    the mean over seeds and their sample standard deviation (n - 1);
  - the best setting: the highest mean score (with one task, its primary metric);
  - each other setting against the best, pooled over seeds: the settings' runs of the same seed are paired on
    every example, and the paired bootstrap (report/stats.py) resamples examples, each with all its seeds;
  - the training curves of every run in one figure, a colour per setting and a line style per seed;
  - the best setting's runs evaluated on the test split: the held-out score.
report.json (the numbers), report.md (+ images/) and report.html (self-contained) say the same (report/render.py).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from flantune.evaluation import SCORE
from flantune.metrics import aggregate_stats, compute_stats
from flantune.report import System, plots, render
from flantune.report.build import json_ready
from flantune.report.render import Cell, Figures, Para, Section, Table, diff_cell, num
from flantune.report.stats import align_rows, gold_texts, paired_bootstrap
from flantune.task import Task

CURVES = "images/training-curves.png"


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for one value), min and max, and the values."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": list(values)}


def _scores(tasks: dict[str, Task], system: System, reference: System | None = None) -> tuple[dict, dict]:
    """Each task's primary metric of `system`, recomputed from its predictions (aligned with `reference`'s
    rows where given), and the stats each came from."""
    primaries, stats = {}, {}
    for name, task in tasks.items():
        rows = system.predictions[name]
        if reference is not None:
            rows = align_rows(name, reference.name, reference.predictions[name], system.name, rows)
        choices = task.choice_texts or None
        stats[name] = (compute_stats(task.metrics, [r["prediction"] for r in rows], [gold_texts(r) for r in rows],
                                     choices), rows)
        primaries[name] = float(aggregate_stats(task.metrics, stats[name][0], choices)[task.primary_metric])
    return primaries, stats


def validation_summary(tasks: dict[str, Task], runs: list[dict[str, Any]], systems: dict[str, System]) -> dict:
    """Per run and per setting the validation scores, and the best setting (highest mean score; the first of
    equals). `runs`: name, setting and seed of each run, in the sweep's order."""
    reference = systems[runs[0]["name"]]
    per_run = {}
    for r in runs:
        primaries, _ = _scores(tasks, systems[r["name"]], reference)
        per_run[r["name"]] = {**r, "primary": primaries, SCORE: statistics.fmean(primaries.values())}
    settings: dict[str, dict[str, Any]] = {}
    for r in per_run.values():
        settings.setdefault(r["setting"], {"runs": [], "seeds": []})
        settings[r["setting"]]["runs"].append(r["name"])
        settings[r["setting"]]["seeds"].append(r["seed"])
    for s in settings.values():
        s["primary"] = {t: spread([per_run[n]["primary"][t] for n in s["runs"]]) for t in tasks}
        s[SCORE] = spread([per_run[n][SCORE] for n in s["runs"]])
    best = max(settings, key=lambda k: settings[k][SCORE]["mean"])  # max keeps the first of equal means
    return {"runs": per_run, "settings": settings, "best": best, "n": {t: len(reference.predictions[t]) for t in tasks}}


def _pooled(tasks: dict[str, Task], summary: dict, systems: dict[str, System], setting: str) -> dict[str, dict]:
    """Per task the stats of a setting's runs end to end, in seed order, on the reference's example order."""
    reference = systems[next(iter(summary["runs"]))]
    names = [n for _, n in sorted(zip(summary["settings"][setting]["seeds"], summary["settings"][setting]["runs"]))]
    out = {}
    for t, task in tasks.items():
        rows = [row for n in names for row in
                align_rows(t, reference.name, reference.predictions[t], n, systems[n].predictions[t])]
        out[t] = compute_stats(task.metrics, [r["prediction"] for r in rows], [gold_texts(r) for r in rows],
                               task.choice_texts or None)
    return out


def differences(tasks: dict[str, Task], summary: dict, systems: dict[str, System], *, n_resamples: int, seed: int,
                confidence: float) -> dict[str, dict[str, Any]]:
    """setting -> task -> its primary metric minus the best setting's, with a paired bootstrap interval pooled
    over seeds."""
    best = summary["best"]
    groups = len(summary["settings"][best]["runs"])
    ref = _pooled(tasks, summary, systems, best)
    out = {}
    for setting in summary["settings"]:
        if setting == best:
            continue
        other = _pooled(tasks, summary, systems, setting)
        out[setting] = {t: paired_bootstrap(task, ref[t], other[t], n_resamples=n_resamples, seed=seed,
                                            confidence=confidence, groups=groups)[task.primary_metric].to_dict()
                        for t, task in tasks.items()}
    return out


def build_sweep_report(tasks: dict[str, Task], summary: dict, systems: dict[str, System], test: dict[str, System],
                       swept: dict[str, list[Any]], out_dir: Path, *, n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> Path:
    """Write report.json, report.md, report.html and images/ under out_dir; returns report.html's path."""
    report = {
        "swept": swept, "best": summary["best"], "n": summary["n"], "runs": summary["runs"],
        "settings": summary["settings"],
        "primary_metrics": {t: task.primary_metric for t, task in tasks.items()},
        "bootstrap": {"n_resamples": n_resamples, "seed": seed, "confidence": confidence},
        "differences": differences(tasks, summary, systems, n_resamples=n_resamples, seed=seed,
                                   confidence=confidence),
        "test": _test(tasks, test),
        "curves": None,
    }
    images = {}
    key = _curve_key(tasks)
    png = plots.overlaid_curves_png(
        [(r["setting"], summary["settings"][r["setting"]]["runs"].index(n), systems[n].log_history)
         for n, r in summary["runs"].items()], key, "training loss and validation score of every run")
    if png:
        images[CURVES] = png
        report["curves"] = {"image": CURVES, "validation_metric": key.removeprefix("eval_")}
    report = json_ready(report)
    sections = document(report)
    return render.write_files(out_dir, report, images, render.markdown(sections),
                              render.html_page(sections, images, "flantune sweep report"))


def _curve_key(tasks: dict[str, Task]) -> str:
    """The validation metric the trainer logs: one task's primary metric, or the score of several."""
    if len(tasks) == 1:
        name, task = next(iter(tasks.items()))
        return f"eval_{name}/{task.primary_metric}"
    return f"eval_{SCORE}"


def _test(tasks: dict[str, Task], test: dict[str, System]) -> dict[str, Any]:
    """The best setting's runs on the test split: per run and over its seeds."""
    per_run = {}
    for name, system in test.items():
        primaries, _ = _scores(tasks, system)
        per_run[name] = {"primary": primaries, SCORE: statistics.fmean(primaries.values()),
                         "n": {t: len(system.predictions[t]) for t in tasks}}
    return {"runs": per_run, "primary": {t: spread([r["primary"][t] for r in per_run.values()]) for t in tasks},
            SCORE: spread([r[SCORE] for r in per_run.values()])}


# ---- the document ---------------------------------------------------------------------------------

def _mean_sd(s: dict[str, Any]) -> str:
    return f"{s['mean']:.1f} ± {s['sd']:.1f}" if s["sd"] is not None else f"{s['mean']:.1f}"


def document(report: dict[str, Any]) -> list[Section]:
    tasks = list(report["primary_metrics"])
    several = len(tasks) > 1
    heads = [f"{t} {m}" for t, m in report["primary_metrics"].items()] + ([SCORE] if several else [])
    best, level = report["best"], round(100 * report["bootstrap"]["confidence"])
    seeds = {len(s["runs"]) for s in report["settings"].values()}
    test = report["test"]
    examples = ", ".join(f"{t}: {n:,}" for t, n in report["n"].items())
    intro = Section("flantune sweep report", 1, [
        Para(f"{len(report['runs'])} runs over "
             f"{', '.join(f'{k} ({len(v)} values)' for k, v in report['swept'].items())}. Every run was evaluated "
             f"on the same validation examples ({examples}); every number is recomputed from the runs' saved "
             "predictions, on a 0-100 scale."),
        Para(f"Best setting by mean validation {'score' if several else heads[0]}: {best}. Its held-out test "
             f"{'score' if several else heads[0]}: {_mean_sd(test[SCORE])}"
             + (f" (mean ± sd over {len(test['runs'])} seeds)." if len(test["runs"]) > 1 else "."))])
    cols = [*(("primary", t) for t in tasks), *([(SCORE, None)] if several else [])]

    def cell(s: dict, col: tuple) -> Cell:
        return Cell(_mean_sd(s[col[0]][col[1]] if col[1] else s[col[0]]))

    settings = Section("Settings", 2, [Table(
        "Validation scores per setting" + (" (mean ± sd over seeds)" if max(seeds) > 1 else ""),
        ["setting", "runs", *heads, "range"],
        [[Cell(k + (" (best)" if k == best else ""), "up" if k == best else ""), Cell(str(len(s["runs"]))),
          *(cell(s, c) for c in cols), Cell(f"{s[SCORE]['min']:.1f} - {s[SCORE]['max']:.1f}")]
         for k, s in report["settings"].items()],
        "sd: the sample standard deviation over the setting's seeds (n - 1); range: the lowest and highest run.")])
    if report["differences"]:
        settings.blocks.append(Table(
            f"Difference to the best setting [{level}% paired bootstrap interval, pooled over seeds]",
            ["setting", *heads[:len(tasks)]],
            [[Cell(k)] + [diff_cell(d[t]) for t in tasks] for k, d in report["differences"].items()],
            f"Each run is paired with the best setting's run of the same seed on every example; "
            f"{report['bootstrap']['n_resamples']:,} resamples of the examples, each drawn with all its seeds "
            f"(seed {report['bootstrap']['seed']}, percentile method). * and bold: the interval excludes 0."))
    sections = [intro, settings]
    held_out = Section("Held-out test score of the best setting", 2, [Table(
        f"{best} on the test split", ["run", *heads],
        [[Cell(n)] + [Cell(num(r["primary"][t])) for t in tasks] + ([Cell(num(r[SCORE]))] if several else [])
         for n, r in test["runs"].items()]
        + [[Cell("mean ± sd")] + [cell(test, c) for c in cols]],
        "The test split was evaluated for this setting only, after it was chosen on validation.")])
    sections.append(held_out)
    curves = Section("Training curves", 2)
    if report["curves"]:
        curves.blocks.append(Figures([(report["curves"]["image"], "training loss and validation "
                                       f"{report['curves']['validation_metric']} by step: a colour per setting, "
                                       "a line style per seed")]))
    else:
        curves.blocks.append(Para("The runs' training logs hold no loss or validation entries."))
    sections.append(curves)
    sections.append(Section("Runs", 2, [Table(
        "Every run (validation)", ["run", "setting", "seed", *heads],
        [[Cell(n), Cell(r["setting"]), Cell(str(r["seed"]))] + [Cell(num(r["primary"][t])) for t in tasks]
         + ([Cell(num(r[SCORE]))] if several else []) for n, r in report["runs"].items()],
        "Each run's directory is <sweep>/runs/<run>/.")]))
    return sections
