"""The `flantune` commands, each declared once: its summary, its options (with their defaults), an example and the
function that runs it. `flantune COMMAND --help` shows the declaration, and the command parses its options from it.
Each command imports the modules that do its work when it runs, so that `--help` and `flantune tasks` start fast."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flantune.console import console
from flantune.errors import FlantuneError
from flantune.hub import OUTPUT_ROOTS
from flantune.overrides import parse_value, simple_options
from flantune.registry import discover
from flantune.sources import resolve_data_dir


@dataclass(frozen=True)
class Option:
    """A key=value option of a command that takes a fixed set."""

    default: Any = None
    shown: str | None = None  # how --help writes its value (DIR, NAME, train|validation|test); else the default
    note: str = ""  # a word on it in --help
    required: bool = False
    minimum: int | None = None  # set: a whole number at least this

    def spelled(self, key: str) -> str:
        return f"{key}={self.shown or self.default}"

    def help(self, key: str) -> str:
        note = ", ".join(n for n in ("required" if self.required else "", self.note) if n)
        return self.spelled(key) + (f" ({note})" if note else "")


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    example: str
    run: Callable[..., int]  # run(args, options) with `options`, else run(args)
    options: dict[str, Option] | None = None  # a fixed set; None: config keys, which `usage` describes
    usage: str = ""
    config_files: bool = False  # takes --config FILE

    def help(self) -> str:
        """What --help shows below the summary: the options and the example."""
        text = self.usage or "options: " + ", ".join(o.help(k) for k, o in self.options.items())
        lines = textwrap.wrap(text, 100, subsequent_indent="  ", break_on_hyphens=False) if not self.usage \
            else text.splitlines()
        return "\n".join([*lines, f"  {self.example}"])

    def parse(self, options: list[str]) -> dict[str, Any]:
        opts = simple_options(options, {k: o.default for k, o in self.options.items()}, self.name)
        for key, option in self.options.items():
            value = opts[key]
            if option.required and not value:
                raise FlantuneError(f"`flantune {self.name}` needs {option.spelled(key)}, e.g. {self.example}.")
            if option.minimum is not None and (isinstance(value, bool) or not isinstance(value, int)
                                               or value < option.minimum):
                raise FlantuneError(f"`flantune {self.name}` option {key} must be a whole number, got {value!r}.")
        return opts

    def __call__(self, args: argparse.Namespace) -> int:
        return self.run(args, self.parse(args.options)) if self.options is not None else self.run(args)


COMMANDS: dict[str, Command] = {}  # in the order `flantune --help` lists them


def command(name: str, summary: str, *, example: str, options: dict[str, Option] | None = None, usage: str = "",
            config_files: bool = False) -> Callable:
    def declare(run: Callable[..., int]) -> Callable[..., int]:
        COMMANDS[name] = Command(name, summary, example, run, options, usage, config_files)
        return run
    return declare


@command("tasks", "list every registered task (built-in and plugins)",
         options={"data_dir": Option(shown="DIR", note="count the rows of a local mirror"),
                  "tasks_dir": Option(shown="DIR", note="plugin task files")},
         example="flantune tasks data_dir=../shared/data")
def cmd_tasks(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    from flantune.listing import print_tasks

    registry = discover(opts["tasks_dir"])
    print_tasks(registry, resolve_data_dir(opts["data_dir"]))
    if registry.problems:  # listed with the tasks that loaded; a script sees the failure in the exit code
        raise FlantuneError(f"{len(registry.problems)} task source(s) failed to load, listed above with the reason. "
                            "Fix or remove them; the tasks in the table loaded.")
    return 0


@command("show", "render real examples of a task and measure their token lengths",
         options={"task": Option(shown="NAME", required=True), "n": Option(3, minimum=1),
                  "split": Option("train", shown="train|validation|test"), "data_dir": Option(shown="DIR"),
                  "tasks_dir": Option(shown="DIR"), "tokenizer": Option(shown="PATH"),
                  "template": Option(shown="NAME"), "seed": Option(0, minimum=0), "stats_rows": Option(2000, minimum=1)},
         example="flantune show task=imdb n=3 split=train data_dir=../shared/data")
def cmd_show(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    from flantune.show import show

    task = discover(opts["tasks_dir"]).get(str(opts["task"]))
    show(task, role=str(opts["split"]), n=opts["n"], data_dir=resolve_data_dir(opts["data_dir"]),
         tokenizer_name=opts["tokenizer"], template=opts["template"], seed=opts["seed"], stats_rows=opts["stats_rows"])
    return 0


@command("validate", "check a task against its data: every template rendered on every row of its splits",
         usage="options: task=NAME (several: task=[a,b]) or mixture=NAME, data_dir=DIR, tasks_dir=DIR,\n"
               "  tasks.NAME.FIELD=... as for run (--config FILE too)",
         example="flantune validate task=imdb data_dir=../shared/data", config_files=True)
def cmd_validate(args: argparse.Namespace) -> int:
    from flantune.config import load_config
    from flantune.prelude import resolve_tasks
    from flantune.validate import validate

    # The tasks as `flantune run` resolves them: task=[a,b], mixture=, tasks.NAME.FIELD=... overrides, --config.
    cfg = load_config(args.options, args.config)
    validate(resolve_tasks(cfg), resolve_data_dir(cfg.data_dir))
    return 0


@command("config", "print the resolved run configuration",
         usage="options: any config key (configs/defaults.yaml documents each), e.g. task=, model=, method=,\n"
               "  train.lr=; --config FILE adds a YAML file before them",
         example="flantune config task=imdb method=lora", config_files=True)
def cmd_config(args: argparse.Namespace) -> int:
    from flantune.config import load_config, task_names, to_yaml

    cfg = load_config(args.options, args.config)
    registry = discover(cfg.tasks_dir)
    for name in task_names(cfg):  # an unknown task is the same error as in `flantune run`
        registry.get(name)
    print(to_yaml(cfg), end="")
    return 0


@command("run", "fine-tune (full or LoRA) on a task or a mixture, then evaluate",
         usage="options: any config key (flantune config prints them all), e.g. task=imdb model=flan-t5-large\n"
               "  method=lora train.lr=3e-4 data_dir=DIR output_dir=DIR resume=true overwrite=true compare=true",
         example="flantune run task=imdb model=tiny data_dir=@sample", config_files=True)
def cmd_run(args: argparse.Namespace) -> int:
    from flantune.config import input_files, load_config
    from flantune.engine import run

    run(load_config(args.options, args.config), input_files(args.options, args.config))
    return 0


@command("sweep", "one run per combination of the settings given a list, then one report comparing them",
         usage="options: any config key, as for run; a key given a list is swept: train.lr=[1e-4,3e-4] seed=[1,2,3]\n"
               "  (seed: the replicates of a setting). task=[a,b] stays one mixture: one sweep per task or mixture.\n"
               "  output_dir=DIR (default sweeps/<task>-<model>-<date>-<hash>), sweep.parallel=N (N runs at a time,\n"
               "  one per GPU), sweep.max_runs=32. Re-running the same command skips finished runs, resumes others",
         example="flantune sweep task=imdb model=tiny train.lr=[1e-4,3e-4] seed=[1,2] data_dir=@sample",
         config_files=True)
def cmd_sweep(args: argparse.Namespace) -> int:
    from flantune.sweep import sweep

    sweep(args.options, args.config)
    return 0


def _split_list(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split(",") if v]


def _arguments(options: list[str]) -> tuple[list[str], list[str]]:
    """A command's words split into its arguments (directories) and its key=value options, each in order."""
    return [o for o in options if "=" not in o], [o for o in options if "=" in o]


def _pop(options: list[str], key: str) -> tuple[str | None, list[str]]:
    found, rest = None, []
    for option in options:
        k, sep, v = option.partition("=")
        if sep and k.strip() == key:
            found = v
        else:
            rest.append(option)
    return found, rest


@command("eval", "evaluate a base model or a finished run on a task or a mixture",
         usage="options: model= (a hub id, a local folder or a run directory), then any config key, e.g. task=,\n"
               "  eval.split=, data_dir=, output_dir=",
         example="flantune eval model=runs/imdb-flan-t5-base-20261122-101500", config_files=True)
def cmd_eval(args: argparse.Namespace) -> int:
    from flantune.compare import config_for, evaluate
    from flantune import rundir
    from flantune.config import input_files
    model, _ = _pop(args.options, "model")
    cfg = config_for(args.options, args.config, [model] if model else [])
    out = evaluate(cfg, input_files=input_files(args.options, args.config))
    metrics = rundir.read_json(out / rundir.METRICS)
    say = console()
    for task, scores in metrics["tasks"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if "/" not in k)
        say.print(f"{task}: {shown}", highlight=False)
    if metrics.get("templates"):  # eval.templates
        from flantune.prelude import resolve_tasks
        from flantune.summary import template_table

        say.print(template_table(metrics["templates"], {t.name: t.primary_metric for t in resolve_tasks(cfg)}))
    say.print(f"evaluation directory: [bold]{out}[/]")
    return 0


@command("compare", "compare a base model with fine-tuned runs in a report with confidence intervals",
         usage="options: base=MODEL finetuned=RUN_DIR (several: finetuned=[run-a,run-b]), output_dir=DIR,\n"
               "  then any config key",
         example="flantune compare base=google/flan-t5-base finetuned=runs/imdb-run-a", config_files=True)
def cmd_compare(args: argparse.Namespace) -> int:
    from flantune.compare import compare, config_for, default_report_dir
    from flantune.config import input_files

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
    console().print(f"report: [bold]{html}[/] (and report.md, report.json)")
    return 0


@command("report", "rebuild comparison reports from saved predictions, without running a model",
         usage="arguments: a report directory to rebuild, or run / evaluation directories (the first is the\n"
               "  reference); options: output_dir=DIR, overwrite=true",
         example="flantune report reports/imdb-run-a-compare-20261122-103000")
def cmd_report(args: argparse.Namespace) -> int:
    from flantune.compare import config_for, report
    dirs, options = _arguments(args.options)
    if not dirs:
        raise FlantuneError("`flantune report` needs directories: a report directory to rebuild, or run / evaluation "
                            "directories to compare (the first is the reference).")
    out_opt, options = _pop(options, "output_dir")
    cfg = config_for(options, [], dirs)
    html = report(dirs, cfg, Path(out_opt) if out_opt else None)
    console().print(f"report: [bold]{html}[/] (and report.md, report.json)")
    return 0


@command("predict", "predict with a fine-tuned model on new rows or text, scored as evaluation scores",
         usage="options: model=RUN_DIR (or a save_pretrained folder, a hub id), task=NAME (a run's own by default),\n"
               "  input=FILE (.jsonl, .csv, .parquet rows; .txt or - for text, one example a line; default: standard\n"
               "  input), output=FILE (default: standard output), template=NAME|none, overwrite=true, chunk_size=1024,\n"
               "  then config keys: eval.classify=, eval.rank_score=, eval.num_beams=, eval.batch_size=,\n"
               "  tasks.NAME.max_new_tokens=, precision=",
         example="flantune predict model=runs/imdb-flan-t5-base-20261122-101500 input=reviews.txt", config_files=True)
def cmd_predict(args: argparse.Namespace) -> int:
    from flantune.predict import CHUNK_SIZE, predict_command

    own = {}
    options = list(args.options)
    for key in ("model", "task", "input", "output", "template", "overwrite", "chunk_size"):
        own[key], options = _pop(options, key)
    chunk = parse_value(own["chunk_size"]) if own["chunk_size"] is not None else CHUNK_SIZE
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise FlantuneError(f"`flantune predict` option chunk_size must be a whole number, got {own['chunk_size']!r}.")
    if not own["model"]:
        raise FlantuneError("`flantune predict` needs model=RUN_DIR (a run directory, a save_pretrained folder or a "
                            "hub id), e.g. flantune predict model=runs/imdb-tiny-20261202-101500 input=reviews.txt.")
    return predict_command(own["model"], own["task"] or None, input=own["input"], output=own["output"],
                           template=own["template"] or None, overwrite=parse_value(own["overwrite"] or "false") is True,
                           chunk_size=chunk, options=options, config_files=args.config)


@command("demo", "serve a local web page where a trained model predicts on typed inputs or examples",
         options={"model": Option(shown="RUN_DIR", required=True, note="or a save_pretrained folder, a hub id"),
                  "task": Option(shown="NAME", note="default: each of the run's tasks, a tab each"),
                  "port": Option(7860, minimum=1), "data_dir": Option(shown="DIR", note="examples; default: the run's"),
                  "tasks_dir": Option(shown="DIR")},
         example="flantune demo model=runs/imdb-flan-t5-base-20261122-101500 port=7860")
def cmd_demo(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    from flantune.demo import demo

    return demo(str(opts["model"]), opts["task"] and str(opts["task"]), port=opts["port"],
                data_dir=opts["data_dir"], tasks_dir=opts["tasks_dir"])


@command("push", "upload a run's model (with its card and tokenizer) and its report to the Hugging Face hub",
         usage="arguments: a run directory; options: repo_id=ORG/NAME (required), private=false (true: a private\n"
               "  repository), dry_run=false (true: list what would be uploaded where, without the network)",
         example="flantune push runs/imdb-flan-t5-base-20261202-101500 repo_id=my-org/flan-t5-imdb dry_run=true")
def cmd_push(args: argparse.Namespace) -> int:
    from flantune.push import push

    runs, options = _arguments(args.options)
    opts = simple_options(options, {"repo_id": None, "private": False, "dry_run": False}, "push")
    if len(runs) != 1 or not opts["repo_id"]:
        raise FlantuneError("`flantune push` needs one run directory and repo_id=ORG/NAME, e.g. "
                            f"{COMMANDS['push'].example}.")
    for key in ("private", "dry_run"):
        if not isinstance(opts[key], bool):
            raise FlantuneError(f"`flantune push` option {key} is true or false, got {opts[key]!r}.")
    push(Path(runs[0]), str(opts["repo_id"]), private=opts["private"], dry_run=opts["dry_run"])
    return 0


@command("runs", "list the runs, evaluations and reports under folders, most recent first",
         usage=f"arguments: folders to look in (default: {', '.join(f'{r}/' for r in OUTPUT_ROOTS)} in the current "
               "directory)",
         example="flantune runs runs/")
def cmd_runs(args: argparse.Namespace) -> int:
    from flantune.runs_list import default_folders, print_runs

    given, options = _arguments(args.options)
    if options:
        raise FlantuneError(f"`flantune runs` takes folders, no options: got {' '.join(args.options)}.")
    for folder in given:
        if not Path(folder).is_dir():
            raise FlantuneError(f"`flantune runs {folder}`: no such folder. Give folders that hold run, evaluation "
                                "or report directories.")
    folders = [Path(f) for f in given] or default_folders()
    if not folders:
        console().print(f"No {'/, '.join(OUTPUT_ROOTS)}/ folder here: flantune writes its runs, evaluations and "
                        "reports there. Name the folder that holds them: flantune runs DIR", highlight=False)
        return 0
    print_runs(folders)
    return 0


@command("mirror", "copy tasks' hub datasets into a data_dir folder, for machines without the hub",
         options={"task": Option(shown="NAME[,NAME...]", required=True), "data_dir": Option(shown="DIR", required=True),
                  "tasks_dir": Option(shown="DIR"), "overwrite": Option(False, shown="false", note="true replaces mirror folders there")},
         example="flantune mirror task=imdb,samsum data_dir=flantune-data")
def cmd_mirror(args: argparse.Namespace, opts: dict[str, Any]) -> int:
    from flantune.mirror import mirror

    if str(opts["data_dir"]) == "@sample":
        raise FlantuneError("data_dir=@sample is the sample shipped with flantune, not a folder to write; give "
                            "flantune mirror a folder of yours, e.g. data_dir=data.")
    registry = discover(opts["tasks_dir"])
    tasks = [registry.get(name) for name in dict.fromkeys(_split_list(opts["task"]))]
    mirror(tasks, Path(str(opts["data_dir"])).expanduser(), overwrite=opts["overwrite"] is True)
    return 0
