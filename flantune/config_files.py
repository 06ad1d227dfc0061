"""The YAML files a configuration is read from: the built-in groups under configs/ (defaults.yaml, model/,
method/, mixture/) and any settings file, each read with one clear error per problem."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from flantune.errors import FlantuneError, first_line
from flantune.overrides import load_yaml

METHODS_DIR, MODELS_DIR, MIXTURES_DIR = "method", "model", "mixture"


def configs_root() -> Path:
    return Path(str(resources.files("flantune._builtin_configs")))


def group_options(group: str) -> list[str]:
    folder = configs_root() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def read_yaml(path: Path, what: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FlantuneError(f"{what} '{path}' does not exist.") from exc
    except IsADirectoryError as exc:
        raise FlantuneError(f"{what} '{path}' is a directory: give the path of a YAML file.") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise FlantuneError(f"{what} '{path}' is not UTF-8 text (byte {exc.object[exc.start]:#04x} on line {line}): "
                            "save it as UTF-8 YAML.") from exc
    except OSError as exc:
        raise FlantuneError(f"{what} '{path}' could not be read: {exc.strerror or first_line(exc)}.") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise FlantuneError(f"{what} '{path}' is not valid YAML: {_yaml_problem(exc)}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FlantuneError(f"{what} '{path}' must be a mapping of settings, got {type(data).__name__}.")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What yaml found wrong and where: 'expected ..., but found ... at line 3, column 1 (while parsing ...
    that starts at line 2, column 7)'."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is None or not problem:
        return first_line(exc)
    text = f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and (start.line, start.column) != (mark.line, mark.column):
        text += f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
    return text
