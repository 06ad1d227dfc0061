"""The body of each `flantune` command: parse its options, then hand over to the module that does the work."""

from __future__ import annotations

import argparse
from pathlib import Path

from flantune.overrides import simple_options
from flantune.registry import discover
from flantune.sources import resolve_data_dir


# The options of the commands that take a fixed set (cli.OPTIONS shows them in --help).
TASKS_DEFAULTS = {"data_dir": None, "tasks_dir": None}
SHOW_DEFAULTS = {"task": None, "n": 3, "split": "train", "data_dir": None, "tasks_dir": None, "tokenizer": None,
                 "template": None, "seed": 0, "stats_rows": 2000}


def cmd_tasks(args: argparse.Namespace) -> int:
    from flantune.listing import print_tasks

    from flantune.errors import FlantuneError

    opts = simple_options(args.options, TASKS_DEFAULTS, "tasks")
    registry = discover(opts["tasks_dir"])
    print_tasks(registry, resolve_data_dir(opts["data_dir"]))
    if registry.problems:  # listed with the tasks that loaded; a script sees the failure in the exit code
        raise FlantuneError(f"{len(registry.problems)} task source(s) failed to load, listed above with the reason. "
                            "Fix or remove them; the tasks in the table loaded.")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from flantune.errors import FlantuneError
    from flantune.show import show

    opts = simple_options(args.options, SHOW_DEFAULTS, "show")
    if not opts["task"]:
        raise FlantuneError("`flantune show` needs task=NAME, e.g. flantune show task=imdb n=3 split=train.")
    for key in ("n", "stats_rows", "seed"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < (0 if key == "seed" else 1):
            raise FlantuneError(f"`flantune show` option {key} must be a whole number, got {opts[key]!r}.")
    task = discover(opts["tasks_dir"]).get(str(opts["task"]))
    show(task, role=str(opts["split"]), n=opts["n"], data_dir=resolve_data_dir(opts["data_dir"]),
         tokenizer_name=opts["tokenizer"], template=opts["template"], seed=opts["seed"], stats_rows=opts["stats_rows"])
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from flantune.config import load_config
    from flantune.prelude import resolve_tasks
    from flantune.validate import validate

    # The tasks as `flantune run` resolves them: task=[a,b], mixture=, tasks.NAME.FIELD=... overrides, --config.
    cfg = load_config(args.options, args.config)
    validate(resolve_tasks(cfg), resolve_data_dir(cfg.data_dir))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from flantune.config import load_config, task_names, to_yaml

    cfg = load_config(args.options, args.config)
    registry = discover(cfg.tasks_dir)
    for name in task_names(cfg):  # an unknown task is the same error as in `flantune run`
        registry.get(name)
    print(to_yaml(cfg), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flantune.config import input_files, load_config
    from flantune.engine import run

    run(load_config(args.options, args.config), input_files(args.options, args.config))
    return 0


def _split_list(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _pop(options: list[str], key: str) -> tuple[str | None, list[str]]:
    found, rest = None, []
    for option in options:
        k, sep, v = option.partition("=")
        if sep and k.strip() == key:
            found = v
        else:
            rest.append(option)
    return found, rest


def cmd_eval(args: argparse.Namespace) -> int:
    from flantune.compare import config_for, evaluate
    from flantune import rundir
    from flantune.config import input_files
    from flantune.console import console

    model, _ = _pop(args.options, "model")
    cfg = config_for(args.options, args.config, [model] if model else [])
    out = evaluate(cfg, input_files=input_files(args.options, args.config))
    metrics = rundir.read_json(out / rundir.METRICS)
    say = console()
    for task, scores in metrics["tasks"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if "/" not in k)
        say.print(f"{task}: {shown}", highlight=False)
    say.print(f"evaluation directory: [bold]{out}[/]")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from flantune.compare import compare, config_for, default_report_dir
    from flantune.config import input_files
    from flantune.errors import FlantuneError
    from flantune.overrides import parse_value

    base, options = _pop(args.options, "base")
    tuned, options = _pop(options, "finetuned")
    if not base or not tuned:
        raise FlantuneError("`flantune compare` needs base=MODEL (a hub id, a local folder or a run directory) and "
                            "finetuned=RUN_DIR (several: finetuned=[run1,run2]).")
    runs = _split_list(parse_value(tuned))
    for run in runs:
        if not Path(run).is_dir():
            raise FlantuneError(f"finetuned={run}: no such directory. Give flantune run directories.")
    out_opt, options = _pop(options, "output_dir")
    cfg = config_for(options, args.config, runs)
    out = Path(out_opt) if out_opt else default_report_dir(f"{Path(runs[0]).name}-compare")
    html = compare(cfg, base, runs, out, input_files(options, args.config))
    from flantune.console import console

    console().print(f"report: [bold]{html}[/] (and report.md, report.json)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from flantune.compare import config_for, report
    from flantune.console import console
    from flantune.errors import FlantuneError

    dirs = [o for o in args.options if "=" not in o]
    options = [o for o in args.options if "=" in o]
    if not dirs:
        raise FlantuneError("`flantune report` needs directories: a report directory to rebuild, or run / evaluation "
                            "directories to compare (the first is the reference).")
    out_opt, options = _pop(options, "output_dir")
    cfg = config_for(options, [], dirs)
    html = report(dirs, cfg, Path(out_opt) if out_opt else None)
    console().print(f"report: [bold]{html}[/] (and report.md, report.json)")
    return 0
