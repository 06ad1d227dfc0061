"""The `flantune` command line. Each command takes key=value options; errors a user can fix are one
paragraph on stderr with exit code 2 (add --debug for the traceback)."""

from __future__ import annotations

import argparse
import sys
import traceback

from flantune.commands import COMMANDS
from flantune.errors import FlantuneError

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
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.summary, description=command.summary, epilog=command.help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        # SUPPRESS: unset here, the subcommand leaves alone the top-level `flantune --debug COMMAND`.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
        if command.config_files:
            p.add_argument("--config", action="append", default=[], metavar="FILE",
                           help="a YAML file of settings, applied before the key=value overrides (repeatable)")
        p.add_argument("options", nargs="*", metavar="key=value")
    return parser


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
        return COMMANDS[args.command](args) or 0
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
