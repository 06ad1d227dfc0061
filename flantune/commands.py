"""The body of each `flantune` command: parse its options, then hand over to the module that does the work."""

from __future__ import annotations

import argparse

from flantune.overrides import simple_options
from flantune.registry import discover
from flantune.sources import resolve_data_dir


def cmd_tasks(args: argparse.Namespace) -> int:
    from flantune.listing import print_tasks

    opts = simple_options(args.options, {"data_dir": None, "tasks_dir": None}, "tasks")
    print_tasks(discover(opts["tasks_dir"]), resolve_data_dir(opts["data_dir"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from flantune.errors import FlantuneError
    from flantune.show import show

    defaults = {"task": None, "n": 3, "split": "train", "data_dir": None, "tasks_dir": None, "tokenizer": None,
                "template": None, "seed": 0, "stats_rows": 2000}
    opts = simple_options(args.options, defaults, "show")
    if not opts["task"]:
        raise FlantuneError("`flantune show` needs task=NAME, e.g. flantune show task=imdb n=3 split=train.")
    for key in ("n", "stats_rows", "seed"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < (0 if key == "seed" else 1):
            raise FlantuneError(f"`flantune show` option {key} must be a whole number, got {opts[key]!r}.")
    task = discover(opts["tasks_dir"]).get(str(opts["task"]))
    show(task, role=str(opts["split"]), n=opts["n"], data_dir=resolve_data_dir(opts["data_dir"]),
         tokenizer_name=opts["tokenizer"], template=opts["template"], seed=opts["seed"], stats_rows=opts["stats_rows"])
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from flantune.config import load_config, to_yaml

    print(to_yaml(load_config(args.options, args.config)), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flantune.config import load_config
    from flantune.engine import run

    run(load_config(args.options, args.config))
    return 0
