"""One rich Console for flantune's output: terminal width on a terminal, wide enough not to fold
names when piped to a file or another program. Also: the libraries' own progress bars, switched off
around flantune's calls whose bars only add noise (reading a parquet file, saving a checkpoint)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console

PIPED_WIDTH = 320


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, width=None if stream.isatty() else PIPED_WIDTH)


@contextlib.contextmanager
def no_datasets_bars() -> Iterator[None]:
    """datasets' bars off (its "Generating data split" bar of each file read), on again after if they were on."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


@contextlib.contextmanager
def no_transformers_bars() -> Iterator[None]:
    """transformers' own bars off (the "Writing model shards" bar of each save_pretrained), on again after if they
    were on. The trainer's training bar is tqdm's own, not transformers', and stays."""
    from transformers.utils import logging

    if not logging.is_progress_bar_enabled():
        yield
        return
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.enable_progress_bar()
