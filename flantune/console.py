"""One rich Console for flantune's output: terminal width on a terminal, wide enough not to fold
names when piped to a file or another program."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 320


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else PIPED_WIDTH)
