"""Jinja2 prompt templates with strict undefined: a name a template uses must exist."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
import jinja2.meta

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
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
    return compile_template(text).render(**row).strip()


def evaluate(expression: str, row: dict[str, Any]) -> Any:
    value = compile_expression(expression)(**row)
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises UndefinedError with jinja's own message
    return value
