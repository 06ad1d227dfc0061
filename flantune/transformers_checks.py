"""The config values flantune hands to transformers, checked against transformers' own lists before any heavy
work: the scheduler, the optimizer, report_to and model.architecture. Apart from flantune/config.py because
importing transformers' trainer imports torch, seconds that `flantune config` and `flantune tasks` don't spend."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from flantune.config import check_choice
from flantune.errors import FlantuneError, did_you_mean, first_line


def validate_with_transformers(cfg: DictConfig) -> None:
    """The values flantune hands to transformers, checked against transformers' own lists: train.lr_scheduler,
    train.optim, report_to (known and installed) and model.architecture (T5Config's fields and types).

    Importing transformers' trainer and model modules imports torch, seconds that `flantune config` doesn't
    otherwise spend, so `load_config` leaves this to the commands that load a model, before their heavy work."""
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    check_choice(cfg, "train.lr_scheduler", tuple(s.value for s in SchedulerType))
    check_choice(cfg, "train.optim", tuple(o.value for o in OptimizerNames))
    _check_report_to(cfg.report_to)
    _check_architecture(cfg)


def _check_report_to(report_to: Any) -> None:
    names = [str(n) for n in report_to] if OmegaConf.is_list(report_to) else [str(report_to)]
    if names in (["none"], ["all"], []):
        return
    # transformers' integration_utils imports its model classes: only where something is reported to.
    from transformers.integrations import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            raise FlantuneError(
                f"Config key 'report_to' names '{name}', which transformers doesn't report to."
                f"{did_you_mean(name, INTEGRATION_TO_CALLBACK)} Give none, all, or one or a list of: "
                f"{', '.join(INTEGRATION_TO_CALLBACK)}."
            )
    available = get_available_reporting_integrations()
    for name in names:
        if name in available:
            continue
        try:  # the callback's constructor is transformers' own check that its package is there
            INTEGRATION_TO_CALLBACK[name]()
        except (RuntimeError, ImportError, ValueError) as exc:
            why = ("the tensorboard package is not installed: pip install tensorboard (or pip install "
                   "'flantune[tensorboard]')." if name == "tensorboard" else first_line(exc))
            raise FlantuneError(f"report_to={name} can't report here: {why} Or set report_to=none.") from exc


def _check_architecture(cfg: DictConfig) -> None:
    """model.architecture: fields of T5's configs (T5Config, or MT5Config / UMT5Config for a loaded mT5 or umT5),
    with values of T5Config's types. T5Config itself accepts any extra keyword, so a typo would do nothing."""
    arch = OmegaConf.to_container(cfg.model.architecture, resolve=True) if cfg.model.architecture else {}
    if not arch:
        return
    from transformers import MT5Config, T5Config, UMT5Config

    fields = {k for c in (T5Config, MT5Config, UMT5Config) for k in (*c().to_dict(), *c.attribute_map)}
    for key in arch:
        if key not in fields:
            raise FlantuneError(
                f"Unknown config key 'model.architecture.{key}': T5Config has no field '{key}'."
                f"{did_you_mean(key, fields)} Its fields: {', '.join(T5Config.__annotations__)}."
            )
    try:
        T5Config(**arch)
    except Exception as exc:  # huggingface_hub's StrictDataclassFieldValidationError, or a ValueError
        key = next((k for k in arch if f"'{k}'" in str(exc) or f"`{k}`" in str(exc)), None)
        what = f"Config key 'model.architecture.{key}' is {arch[key]!r}" if key else "model.architecture is refused"
        detail = str(exc).splitlines()[-1].strip().rstrip(".")
        hint = " Give the field a value of its type (a whole number for sizes and counts, a number for rates)."
        raise FlantuneError(f"{what}; T5Config says: {detail.removeprefix('TypeError: ')}."
                            + (hint if detail.startswith("TypeError") else "")) from exc
