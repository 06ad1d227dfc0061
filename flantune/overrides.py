"""Command-line `key=value` overrides: `train.lr=3e-4`, `task=[imdb,samsum]`, `splits.train='validation[:80%]'`.

Values are read as YAML, so numbers, booleans, null and lists get their types; anything YAML can't
read stays a string.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from flantune.errors import FlantuneError, did_you_mean


class YamlLoader(yaml.SafeLoader):
    """YAML read as OmegaConf reads it: 1e-6 and 3e4 are numbers, as in YAML 1.2. PyYAML's YAML 1.1 rules need a
    decimal point and a signed exponent (1.0e-6), and read the rest as text, which reaches transformers as text
    where a free-form mapping (a scheduler's arguments, model.architecture) has no schema to convert it."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader


def parse_value(text: str) -> Any:
    try:
        return load_yaml(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> list[tuple[str, Any]]:
    """[(dotted.key, value)] in the order given."""
    pairs = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise FlantuneError(
                f"'{arg}' is not an override: write key=value, e.g. task=imdb or train.lr=3e-4 "
                "(quote values with spaces or brackets for your shell)."
            )
        pairs.append((key, parse_value(value)))
    return pairs


def simple_options(args: list[str], allowed: dict[str, Any], command: str) -> dict[str, Any]:
    """Flat key=value options of a small command, checked against `allowed` (name -> default)."""
    options = dict(allowed)
    for key, value in parse_overrides(args):
        if key not in allowed:
            raise FlantuneError(
                f"`flantune {command}` has no option '{key}'.{did_you_mean(key, allowed)} "
                f"Its options: {', '.join(f'{k}=' for k in allowed)}."
            )
        options[key] = value
    return options
