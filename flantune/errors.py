"""Errors a user can fix, and the close-match suggestions that go with them."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FlantuneError(Exception):
    """A problem with the user's input: printed as one paragraph, exit code 2, no traceback."""

    exit_code = 2


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run was writing `output_dir`: the command line says how to continue it."""

    def __init__(self, output_dir) -> None:
        super().__init__(str(output_dir))
        self.output_dir = output_dir


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name where the message is empty): enough to
    say what went wrong inside a one-paragraph error."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(str(word), sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' Did you mean 'x' or 'y'?' or '' when nothing is close."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
