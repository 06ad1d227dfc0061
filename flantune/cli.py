"""The `flantune` command line. Each command takes key=value options; errors a user can fix are one
paragraph on stderr with exit code 2 (add --debug for the traceback)."""

from __future__ import annotations

import argparse
import sys
import traceback

from flantune.errors import FlantuneError

COMMANDS = {
    "tasks": "list every registered task (built-in and plugins)",
    "show": "render real examples of a task and measure their token lengths",
    "validate": "check a task against its data: every template rendered on every row of its splits",
    "config": "print the resolved run configuration",
    "run": "fine-tune (full or LoRA) on a task or a mixture, then evaluate",
    "eval": "evaluate a base model or a finished run on a task or a mixture",
    "compare": "compare a base model with fine-tuned runs in a report with confidence intervals",
    "report": "rebuild comparison reports from saved predictions, without running a model",
}

# What each command's key=value options are, shown by `flantune COMMAND --help`.
OPTIONS = {
    "tasks": "options: data_dir=DIR (count the rows of a local mirror), tasks_dir=DIR (plugin task files)\n"
             "  flantune tasks data_dir=../shared/data",
    "show": "options: task=NAME (required), n=3, split=train|validation|test, data_dir=DIR, tasks_dir=DIR,\n"
            "  tokenizer=PATH, template=NAME, seed=0, stats_rows=2000\n"
            "  flantune show task=imdb n=3 split=train data_dir=../shared/data",
    "validate": "options: task=NAME (several: task=[a,b]) or mixture=NAME, data_dir=DIR, tasks_dir=DIR,\n"
                "  tasks.NAME.FIELD=... as for run (--config FILE too)\n"
                "  flantune validate task=imdb data_dir=../shared/data",
    "config": "options: any config key (configs/defaults.yaml documents each), e.g. task=, model=, method=,\n"
              "  train.lr=; --config FILE adds a YAML file before them\n"
              "  flantune config task=imdb method=lora",
    "run": "options: any config key (flantune config prints them all), e.g. task=imdb model=flan-t5-large\n"
           "  method=lora train.lr=3e-4 data_dir=DIR output_dir=DIR resume=true overwrite=true compare=true\n"
           "  flantune run task=imdb model=tiny data_dir=@sample",
    "eval": "options: model= (a hub id, a local folder or a run directory), then any config key, e.g. task=,\n"
            "  eval.split=, data_dir=, output_dir=\n"
            "  flantune eval model=runs/imdb-flan-t5-base-20261122-101500",
    "compare": "options: base=MODEL finetuned=RUN_DIR (several: finetuned=[run-a,run-b]), output_dir=DIR,\n"
               "  then any config key\n"
               "  flantune compare base=google/flan-t5-base finetuned=runs/imdb-run-a",
    "report": "arguments: a report directory to rebuild, or run / evaluation directories (the first is the\n"
              "  reference); options: output_dir=DIR, overwrite=true\n"
              "  flantune report reports/imdb-run-a-compare-20261122-103000",
}

EPILOG = """examples:
  flantune tasks data_dir=../shared/data
  flantune show task=imdb n=3 split=train data_dir=../shared/data
  flantune validate task=my_task tasks_dir=my_tasks data_dir=../shared/data
  flantune run task=imdb model=tiny data_dir=@sample train.max_steps=200
  flantune run task=imdb method=lora model=flan-t5-large train.lr=3e-4
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flantune", description="Multi-task text-to-text fine-tuning for FLAN-T5.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=OPTIONS[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        # SUPPRESS: unset here, the subcommand leaves alone the top-level `flantune --debug COMMAND`.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
        if name in ("run", "config", "validate", "eval", "compare"):
            p.add_argument("--config", action="append", default=[], metavar="FILE",
                           help="a YAML file of settings, applied before the key=value overrides (repeatable)")
        p.add_argument("options", nargs="*", metavar="key=value")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    from flantune import commands

    return getattr(commands, f"cmd_{args.command}")(args)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value options may also follow --config FILE, which a single positional list can't take in
    args, extra = parser.parse_known_args(argv)
    if args.command is not None:
        args.options += [e for e in extra if "=" in e and not e.startswith("-")]
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown or (extra and args.command is None):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args) or 0
    except FlantuneError as exc:
        if args.debug:  # the traceback as well, and the same exit code: scripts tell bad input by it
            traceback.print_exc()
        print(f"flantune {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        out = getattr(exc, "output_dir", None)  # errors.Interrupted: a run directory that resume=true continues
        print(f"Interrupted: continue with {_resume_command(args, out)}" if out else "interrupted", file=sys.stderr)
        return 130


def _resume_command(args: argparse.Namespace, out) -> str:
    """The interrupted command line with resume=true output_dir=OUT in place of its own output_dir, resume and
    overwrite options."""
    import shlex

    kept = [o for o in args.options if o.split("=", 1)[0].strip() not in ("output_dir", "resume", "overwrite")]
    configs = [part for file in args.config for part in ("--config", file)]
    return shlex.join(["flantune", args.command, *configs, *kept, "resume=true", f"output_dir={out}"])


if __name__ == "__main__":
    sys.exit(main())
