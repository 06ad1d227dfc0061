"""The config values flantune hands to transformers, checked against transformers' own lists before any heavy
work: the scheduler and its arguments, the optimizer, report_to and model.architecture. Apart from flantune/config.py because
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
    _check_scheduler_arguments(cfg)
    check_choice(cfg, "train.optim", tuple(o.value for o in OptimizerNames))
    _check_report_to(cfg.report_to)
    _check_architecture(cfg)


def _check_scheduler_arguments(cfg: DictConfig) -> None:
    """Some schedulers need arguments of their own (cosine_with_min_lr a floor, warmup_stable_decay its decay
    steps), and a misspelt or mistyped one is a TypeError: the scheduler is built on a one-weight optimizer and
    stepped past its warm-up to find out here rather than when training starts."""
    import torch
    from transformers.optimization import get_scheduler

    name = cfg.train.lr_scheduler
    kwargs = OmegaConf.to_container(cfg.train.lr_scheduler_kwargs, resolve=True)
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "none"
    if kwargs and name in ("constant", "constant_with_warmup"):  # transformers would drop them silently
        raise FlantuneError(f"train.lr_scheduler={name} takes no arguments, but train.lr_scheduler_kwargs gives "
                            f"{given}. Remove them, or choose a scheduler that takes them.")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    try:
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=100,
                                  scheduler_specific_kwargs=kwargs)
        if name not in ("reduce_lr_on_plateau", "greedy"):  # those two step on an evaluation metric
            for _ in range(3):  # past the warm-up, into the decay that reads most arguments
                optimizer.step()
                scheduler.step()
    except (TypeError, ValueError) as exc:
        raise FlantuneError(
            f"train.lr_scheduler={name} can't be built with train.lr_scheduler_kwargs ({given}): "
            f"{first_line(exc).rstrip('.')}. Set the scheduler's arguments as train.lr_scheduler_kwargs.NAME=VALUE "
            f"(for instance train.lr_scheduler_kwargs.min_lr_rate=0.1 for cosine_with_min_lr), or choose another train.lr_scheduler."
        ) from exc


def check_optimizer_installed(name: str) -> None:
    """train.optim names transformers knows may need a package of their own (bitsandbytes, torchao, galore_torch,
    schedulefree, ...): transformers' own lookup of the optimizer class says which, here rather than after the
    data and model are loaded. The lookup gets the arguments' defaults without TrainingArguments.__post_init__,
    which would set up devices (and under torchrun wait for the other processes)."""
    import dataclasses

    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.training_args import OptimizerNames

    args = object.__new__(TrainingArguments)
    for f in dataclasses.fields(TrainingArguments):
        if f.default is not dataclasses.MISSING:
            setattr(args, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            setattr(args, f.name, f.default_factory())
    args.optim = OptimizerNames(name)
    try:
        Trainer.get_optimizer_cls_and_kwargs(args, torch.nn.Linear(1, 1))
    except (ImportError, ValueError) as exc:
        raise FlantuneError(f"train.optim={name} can't run here: {first_line(exc).rstrip('.')}. Or choose another "
                            f"train.optim (adamw_torch_fused is the default).") from exc
    except Exception:  # noqa: BLE001 - a lookup that needs more than the defaults: the trainer will say
        return


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
        config = T5Config(**arch)
    except Exception as exc:  # huggingface_hub's StrictDataclassFieldValidationError, or a ValueError
        key = next((k for k in arch if f"'{k}'" in str(exc) or f"`{k}`" in str(exc)), None)
        what = f"Config key 'model.architecture.{key}' is {arch[key]!r}" if key else "model.architecture is refused"
        detail = str(exc).splitlines()[-1].strip().rstrip(".")
        hint = " Give the field a value of its type (a whole number for sizes and counts, a number for rates)."
        raise FlantuneError(f"{what}; T5Config says: {detail.removeprefix('TypeError: ')}."
                            + (hint if detail.startswith("TypeError") else "")) from exc
    # T5Config takes num_heads=0 (the model's weight initialisation then divides by zero): its sizes and counts,
    # the whole-number fields other than token ids, are at least 1.
    defaults = T5Config().to_dict()
    for key, value in arch.items():
        default = defaults.get(key)
        if type(default) is int and default >= 1 and not key.endswith("_token_id") and isinstance(value, int) \
                and value < 1:
            raise FlantuneError(f"Config key 'model.architecture.{key}' is {value}; a size or count of the model "
                                f"must be at least 1 (T5Config's default is {default}).")
    # T5Config takes any activation name in feed_forward_proj; the model's build would fail on an unknown one.
    from transformers.activations import ACT2FN

    if "feed_forward_proj" in arch and config.dense_act_fn not in ACT2FN:
        raise FlantuneError(
            f"Config key 'model.architecture.feed_forward_proj' is {arch['feed_forward_proj']!r}: "
            f"'{config.dense_act_fn}' is not an activation transformers knows.{did_you_mean(config.dense_act_fn, ACT2FN)} "
            f"Give ACTIVATION or gated-ACTIVATION, as FLAN-T5's gated-gelu, with one of: {', '.join(sorted(ACT2FN))}."
        )
