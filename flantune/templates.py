"""Jinja2 prompt templates with strict undefined: a name a template uses must exist.

Task files come from anyone, so every template, filter and references expression renders in Jinja's
immutable sandbox: it may read a row's values and use Jinja's filters and tests, but not reach Python's
internals (names starting with '_', a function's globals) or call methods that change data. What the
sandbox refuses is a `Refused` error (a FlantuneError), not a traceback.
"""

from __future__ import annotations

import datetime
import decimal
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Cycler, Joiner, Namespace
from markupsafe import Markup

from flantune.errors import FlantuneError

# The values a template may look into: what a row of a dataset holds, and Jinja's own helpers. An attribute of
# anything else (a PIL image of an Image column: {{ img.save('/any/path') }}) is refused.
_PLAIN = (str, bytes, int, float, bool, type(None), list, tuple, dict, set, frozenset, datetime.date,
          datetime.time, datetime.timedelta, decimal.Decimal, LoopContext, Cycler, Joiner, Namespace, Markup)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, where a template may read the attributes of plain values only, and with `*`,
    `**` and the widths of str's methods bounded: `{{ 'x' * 10**9 }}` in a stranger's task file would otherwise
    take the machine's memory before any error could be raised."""

    def is_safe_attribute(self, obj, attr, value):
        return isinstance(obj, _PLAIN) and super().is_safe_attribute(obj, attr, value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        if isinstance(getattr(__obj, "__self__", None), str) and any(
                isinstance(a, int) and a > __self.MAX_SIZE for a in (*args, *kwargs.values())):
            raise SecurityError(f"a width over {__self.MAX_SIZE:,} is not allowed")
        return super().call(__context, __obj, *args, **kwargs)

    intercepted_binops = frozenset(["*", "**"])
    MAX_SIZE = 1_000_000  # characters or items a `*` may make; far beyond any prompt

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > self.MAX_SIZE:
                    raise SecurityError(f"a '*' that makes over {self.MAX_SIZE:,} items is not allowed")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 256:
            raise SecurityError("a '**' with an exponent over 256 is not allowed")
        return super().call_binop(context, operator, left, right)


_ENV = _Sandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


class Refused(FlantuneError):
    """A template, filter or references expression did something Jinja's sandbox refuses."""

    def __init__(self, exc: SecurityError):
        super().__init__(
            f"it is refused by flantune's template sandbox ({str(exc).rstrip('.')}). Templates, filter and "
            "references may read a row's values and use Jinja's filters, but not Python internals (names starting "
            "with '_') or methods that change data: no code runs from a task file (code you trust goes in a "
            "preprocess: hook)"
        )


@lru_cache(maxsize=1024)
def compile_template(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


@lru_cache(maxsize=256)
def compile_expression(text: str):
    return _ENV.compile_expression(text, undefined_to_none=False)


def variables(text: str, *, expression: bool = False) -> set[str]:
    """Top-level names a template (or expression) reads."""
    source = "{{ " + text + " }}" if expression else text
    return jinja2.meta.find_undeclared_variables(_ENV.parse(source))


def render(text: str, row: dict[str, Any]) -> str:
    try:
        return compile_template(text).render(**row).strip()
    except SecurityError as exc:
        raise Refused(exc) from exc


def evaluate(expression: str, row: dict[str, Any]) -> Any:
    try:
        value = compile_expression(expression)(**row)
        if isinstance(value, jinja2.Undefined):
            str(value)  # raises UndefinedError with jinja's own message (SecurityError for a refused name)
    except SecurityError as exc:
        raise Refused(exc) from exc
    return value
