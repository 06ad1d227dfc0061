"""The run configuration: OmegaConf YAML under configs/, groups chosen by name, and overrides.

All override rules live in `load_config`:
  1. configs/defaults.yaml, typed by the schema below (unknown keys and wrong types are errors);
  2. the method group (configs/method/<method>.yaml), then the model group (configs/model/<model>.yaml,
     or a local path / hub id), then the mixture (configs/mixture/<mixture>.yaml);
  3. the user's --config files, in order;
  4. key=value overrides from the command line.
A group file is a partial run config: model groups may also set train.batch_size, for instance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flantune import rundir
from flantune.config_files import METHODS_DIR, MIXTURES_DIR, MODELS_DIR, configs_root, group_options, read_yaml
from flantune.errors import FlantuneError, did_you_mean, first_line
from flantune.hub import is_local_path
from flantune.overrides import parse_overrides
from flantune.step import micro_batches

PRECISIONS = ("auto", "bf16", "bf16-mixed", "fp32", "fp16")
CLASSIFY = ("rank", "generate")
RANK_SCORES = ("sum", "per_token", "per_byte")  # eval.rank_score: flantune.scoring.rank_score
SAMPLING = ("length_grouped", "input_length_grouped", "random", "packed")
LOSS_NORMALIZATIONS = ("tokens", "batch")


@dataclass
class ModelCfg:
    name: str = MISSING
    path: Optional[str] = MISSING
    tokenizer: Optional[str] = MISSING
    random_init: bool = MISSING
    architecture: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainCfg:
    epochs: float = MISSING
    max_steps: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    warmup_ratio: float = MISSING
    weight_decay: float = MISSING
    lr_scheduler: str = MISSING
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    optim: str = MISSING
    max_grad_norm: float = MISSING
    logging_steps: int = MISSING
    eval_steps: Any = MISSING  # N steps, or a fraction of the run's steps
    save_steps: Optional[int] = MISSING
    save_total_limit: Optional[int] = MISSING
    sampling: str = MISSING
    packed_input_length: Optional[int] = MISSING
    packed_label_length: Optional[int] = MISSING
    packed_rows_per_batch: Optional[int] = MISSING
    loss_normalization: str = MISSING
    micro_batches: Any = MISSING  # auto | N
    num_workers: int = MISSING
    compile: bool = MISSING
    cuda_graphs: Any = MISSING  # auto | true | false
    early_stopping_patience: int = MISSING  # 0: off
    early_stopping_threshold: float = MISSING


@dataclass
class DataCfg:
    max_train_examples: Optional[int] = MISSING
    max_eval_examples: Optional[int] = MISSING
    eval_seed: int = MISSING
    template_seed: int = MISSING
    allow_overlap: bool = MISSING


@dataclass
class EvalCfg:
    split: str = MISSING
    classify: str = MISSING
    rank_score: str = MISSING
    batch_size: int = MISSING
    num_beams: int = MISSING
    templates: Any = MISSING  # null, all, a template's name or a list of names (checked against the tasks: prelude)
    fewshot: int = MISSING


@dataclass
class LoraCfg:
    r: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING
    target_modules: Any = MISSING  # a list of module names, or "all-linear"


@dataclass
class Ia3Cfg:
    target_modules: Any = MISSING  # null: peft's T5 defaults (k, v, wo), or a list of module names
    feedforward_modules: Any = MISSING  # which of target_modules scale a feed-forward layer's input


@dataclass
class PromptTuningCfg:
    num_virtual_tokens: int = MISSING
    init_text: Optional[str] = MISSING  # the virtual tokens start as this text's embeddings; null: random


@dataclass
class AdaloraCfg:
    init_r: int = MISSING
    target_r: int = MISSING
    tinit: int = MISSING
    tfinal: int = MISSING
    delta_t: int = MISSING
    orth_reg_weight: float = MISSING


@dataclass
class QloraCfg:
    bits: int = MISSING  # 4 (NF4) | 8


@dataclass
class MixingCfg:
    scheme: str = MISSING
    cap: Optional[int] = MISSING
    temperature: float = MISSING
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepCfg:  # `flantune sweep` (flantune/sweep.py); a run ignores them
    parallel: int = MISSING
    max_runs: int = MISSING


@dataclass
class RunCfg:
    task: Any = MISSING  # a name or a list of names
    mixture: Optional[str] = MISSING
    model: ModelCfg = field(default_factory=ModelCfg)
    method: str = MISSING
    data_dir: Optional[str] = MISSING
    tasks_dir: Optional[str] = MISSING
    tasks: dict[str, Any] = field(default_factory=dict)
    output_dir: Optional[str] = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    overwrite: bool = MISSING
    merge: bool = MISSING
    compare: bool = MISSING
    precision: str = MISSING
    force_fp16: bool = MISSING
    gradient_checkpointing: bool = MISSING
    report_to: Any = MISSING
    train: TrainCfg = field(default_factory=TrainCfg)
    data: DataCfg = field(default_factory=DataCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    ia3: Ia3Cfg = field(default_factory=Ia3Cfg)
    prompt_tuning: PromptTuningCfg = field(default_factory=PromptTuningCfg)
    adalora: AdaloraCfg = field(default_factory=AdaloraCfg)
    qlora: QloraCfg = field(default_factory=QloraCfg)
    mixing: MixingCfg = field(default_factory=MixingCfg)
    sweep: SweepCfg = field(default_factory=SweepCfg)


# Mappings whose keys are the user's (task names, T5Config fields, a scheduler's arguments): not checked against the schema.
FREE_KEYS = ("tasks", "model.architecture", "mixing.weights", "train.lr_scheduler_kwargs")


def _schema_keys(node: Any, prefix: str = "") -> set[str]:
    keys = set()
    for key in node:
        path = f"{prefix}{key}"
        keys.add(path)
        value = node._get_node(key)
        if isinstance(value, DictConfig) and path not in FREE_KEYS and OmegaConf.get_type(value) is not dict:
            keys |= _schema_keys(value, path + ".")
    return keys


_KNOWN = None


def known_keys() -> set[str]:
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = _schema_keys(OmegaConf.structured(RunCfg))
    return _KNOWN


def _check_section(key: str, value: Any, where: str) -> None:
    """A key that holds settings (train, model, tasks, ...) must be given a mapping, not a value."""
    sections = {k.rpartition(".")[0] for k in known_keys()} | set(FREE_KEYS)
    if key not in sections or isinstance(value, dict):
        return
    children = sorted(k.rpartition(".")[2] for k in known_keys() if k.rpartition(".")[0] == key)
    leaf = key.rpartition(".")[2]
    raise FlantuneError(
        f"Config key '{key}' ({where}) holds settings, not a value: got {value!r}. Set the keys under it (in YAML, "
        f"indented 'key: value' lines under '{leaf}:'; on the command line, {key}.KEY=VALUE)"
        + (f"; its keys: {', '.join(children)}." if children else ".")
    )


def check_key(key: str, where: str) -> None:
    if key in known_keys() or any(key.startswith(free + ".") for free in FREE_KEYS):
        return
    parent = key.rpartition(".")[0]
    siblings = sorted(k.rpartition(".")[2] for k in known_keys() if k.rpartition(".")[0] == parent)
    where_keys = f"Keys under '{parent}'" if parent else "Top-level keys"
    raise FlantuneError(
        f"Unknown config key '{key}' ({where}).{did_you_mean(key, known_keys())} "
        + (f"{where_keys}: {', '.join(siblings)}." if siblings else "Run `flantune config` to see every key.")
    )


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """[(dotted.key, value)] of a nested mapping, stopping at the free-form mappings."""
    out = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in FREE_KEYS:
            out.extend(_flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


def _model_patch(value: Any, where: str) -> dict:
    """`model=X`: a group name, a local folder, or a hub id ORG/NAME."""
    if isinstance(value, dict):
        return {"model": value}
    name = str(value)
    if not name.strip():
        raise FlantuneError(
            f"model= is empty ({where}). Give it one of {', '.join(group_options(MODELS_DIR))}, a local folder "
            "(model=./my-model), a flantune run directory, or a hub id like google/flan-t5-base."
        )
    if name in group_options(MODELS_DIR):
        return read_yaml(configs_root() / MODELS_DIR / f"{name}.yaml", "Model config")
    path = Path(name).expanduser()
    if is_local_path(name):
        if not path.is_dir():
            raise FlantuneError(
                f"Model path '{name}' ({where}) does not exist. Give model= a folder holding config.json and the "
                f"weights (save_pretrained output), a flantune run directory, a hub id like google/flan-t5-base, or "
                f"one of: {', '.join(group_options(MODELS_DIR))}."
            )
        label = path.resolve().name
        if rundir.is_run_dir(path) and (path / rundir.MODEL).is_dir():  # a flantune run directory
            path = path / rundir.MODEL
        return {"model": {"name": label, "path": str(path.resolve()), "tokenizer": None, "random_init": False,
                          "architecture": {}}}
    if "/" not in name:
        raise FlantuneError(
            f"Unknown model '{name}' ({where}).{did_you_mean(name, group_options(MODELS_DIR))} model= takes one of "
            f"{', '.join(group_options(MODELS_DIR))}, a local folder, or a hub id ORG/NAME (e.g. google/mt5-base)."
        )
    return {"model": {"name": name, "path": name, "tokenizer": None, "random_init": False, "architecture": {}}}


def set_model(cfg: DictConfig, value: str, where: str) -> None:
    """Replace cfg.model by what model=VALUE names (a group, a local folder or run directory, a hub id)."""
    replacement = _model_patch(value, where)["model"]
    full = {"path": None, "tokenizer": None, "random_init": False, "architecture": {}, **replacement}
    cfg.model = OmegaConf.merge(OmegaConf.structured(ModelCfg), full)


def _group_patch(group: str, value: Any, where: str) -> dict:
    options = group_options(group)
    if value not in options:
        raise FlantuneError(
            f"Unknown {group} '{value}' ({where}).{did_you_mean(str(value), options)} "
            f"Choose one of: {', '.join(options)} (configs/{group}/)."
        )
    return read_yaml(configs_root() / group / f"{value}.yaml", f"{group.capitalize()} config")


def _merge(cfg: DictConfig, patch: dict, where: str) -> DictConfig:
    for key, value in _flatten(patch):
        check_key(key, where)
        _check_section(key, value, where)
    try:
        return OmegaConf.merge(cfg, patch)
    except OmegaConfBaseException as exc:
        raise FlantuneError(_describe_omegaconf_error(exc, where)) from exc


def _describe_omegaconf_error(exc: OmegaConfBaseException, where: str) -> str:
    key = getattr(exc, "full_key", None)
    subject = f"config key '{key}' ({where})" if key else f"a config key ({where})"
    return (f"Bad value for {subject}: {first_line(exc)}. Check the value's type "
            f"(a number for rates and sizes, true/false for switches); `flantune config` prints every key.")


def _set(cfg: DictConfig, key: str, value: Any, where: str) -> None:
    check_key(key, where)
    _check_section(key, value, where)
    try:
        OmegaConf.update(cfg, key, value, merge=False, force_add=any(key.startswith(f + ".") for f in FREE_KEYS))
    except OmegaConfBaseException as exc:
        raise FlantuneError(_describe_omegaconf_error(exc, where)) from exc


def _chosen(key: str, default: Any, files: list[tuple[str, dict]], pairs: list[tuple[str, Any]],
            args: list[str]) -> tuple[Any, str]:
    """The value of a group key (method, model, mixture) and where it was set: the last --config file or
    key=value option that sets it."""
    value, where = default, "configs/defaults.yaml"
    for name, data in files:
        if key in data:
            value, where = data[key], f"--config {name}"
    for (k, v), arg in zip(pairs, args):
        if k == key:
            value, where = v, f"command line {arg}"
    return value, where


def input_files(overrides: list[str] | None = None, config_files: list[str] | None = None) -> list[str]:
    """The user's files a config is read from, which the config itself doesn't name: its --config files and its
    mixture file with the files that includes (a run's inputs, which overwrite=true must not delete)."""
    from flantune.mixture import mixture_files

    args = overrides or []
    files = [(str(f), read_yaml(Path(f), "Config file")) for f in (config_files or [])]
    mixture, _ = _chosen("mixture", None, files, parse_overrides(args), args)
    return [name for name, _ in files] + (mixture_files(str(mixture)) if mixture is not None else [])


def load_config(overrides: list[str] | None = None, config_files: list[str] | None = None) -> DictConfig:
    args = overrides or []
    pairs = parse_overrides(args)  # one per arg; messages quote the arg as typed (3e-4, not its value 0.0003)
    files = [(str(f), read_yaml(Path(f), "Config file")) for f in (config_files or [])]

    def chosen(key: str, default: Any) -> tuple[Any, str]:
        return _chosen(key, default, files, pairs, args)

    cfg = OmegaConf.structured(RunCfg)
    defaults = read_yaml(configs_root() / "defaults.yaml", "Default config")
    cfg = _merge(cfg, defaults, "configs/defaults.yaml")

    method, where = chosen("method", defaults["method"])
    cfg = _merge(cfg, _group_patch(METHODS_DIR, method, where), f"configs/method/{method}.yaml")
    model, where = chosen("model", defaults["model"]["name"])
    if not isinstance(model, dict):
        cfg = _merge(cfg, _model_patch(model, where), f"model={model}")
    mixture, where = chosen("mixture", None)
    mixture_tasks = None
    if mixture is not None:
        from flantune.mixture import mixture_patch

        mixture = str(mixture)
        source = f"configs/mixture/{mixture}.yaml" if mixture in group_options(MIXTURES_DIR) \
            else f"mixture file {Path(mixture).expanduser().resolve()}"
        patch = mixture_patch(mixture, where)
        cfg = _merge(cfg, patch, source)
        mixture_tasks = (patch["task"], where)

    for name, data in files:
        data = dict(data)
        if "model" in data and not isinstance(data["model"], dict):
            data.pop("model")  # applied above as a group
        cfg = _merge(cfg, data, f"--config {name}")
    for (key, value), arg in zip(pairs, args):
        if key == "model" and not isinstance(value, dict):
            # model=X on the command line replaces a model mapping from a --config file too
            # (its train.* defaults were applied with the groups above).
            set_model(cfg, value, f"command line {arg}")
            continue
        _set(cfg, key, value, f"command line {arg}")

    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise FlantuneError(f"The config leaves {', '.join(sorted(missing))} unset: give them a value.")
    if mixture_tasks is not None and cfg.mixture is not None:
        _check_task_with_mixture(cfg, *mixture_tasks, chosen("task", None)[1])
    validate(cfg)
    return cfg


def _check_task_with_mixture(cfg: DictConfig, tasks: list[str], mixture_where: str, task_where: str) -> None:
    """mixture= names the run's tasks: a task= that names others is a conflict, not an override (the run would
    train those tasks and be recorded as the mixture). A run's own config.yaml holds both, and they agree."""
    if task_names(cfg) == list(tasks):
        return
    raise FlantuneError(
        f"mixture={cfg.mixture} ({mixture_where}) and task={', '.join(task_names(cfg))} ({task_where}) both name the "
        f"run's tasks; the mixture's are {', '.join(tasks)}. Give one of them: drop task= to train the mixture, or "
        "set mixture=null to train the tasks of task=."
    )


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every number in the config, free-form mappings included, is finite: a NaN or infinite rate, clip or
    epsilon passes every comparison-based check (nan < 0 is False) and trains a NaN model or switches a
    feature off without a word."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        path = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix.rstrip('.')}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            raise FlantuneError(
                f"Config key '{path}' is {value}; it must be a finite number. Give a number such as 1e-4 "
                "(in YAML, .nan and .inf are not numbers a run can use)."
            )
        if isinstance(value, (dict, list)):
            _check_finite(value, path + ".")


def check_choice(cfg: DictConfig, key: str, options: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in options:
        raise FlantuneError(
            f"Config key '{key}' is {value!r}; choose one of {', '.join(options)}.{did_you_mean(str(value), options)}"
        )


def _at_least(cfg: DictConfig, key: str, minimum: float, allow_none: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    if value is None or value < minimum:
        raise FlantuneError(f"Config key '{key}' is {value!r}; it must be at least {minimum}.")


def validate(cfg: DictConfig) -> None:
    from flantune.task import ROLES

    _check_finite(OmegaConf.to_container(cfg, resolve=True))
    check_choice(cfg, "precision", PRECISIONS)
    check_choice(cfg, "eval.classify", CLASSIFY)
    check_choice(cfg, "eval.rank_score", RANK_SCORES)
    check_choice(cfg, "eval.split", ROLES)
    check_choice(cfg, "train.sampling", SAMPLING)
    check_choice(cfg, "train.loss_normalization", LOSS_NORMALIZATIONS)
    check_choice(cfg, "method", tuple(group_options(METHODS_DIR)))
    for key, minimum in (("train.batch_size", 1), ("train.grad_accum", 1), ("eval.batch_size", 1),
                         ("eval.num_beams", 1), ("lora.r", 1), ("train.logging_steps", 1),
                         ("train.epochs", 0), ("train.weight_decay", 0), ("train.max_grad_norm", 0),
                         ("train.num_workers", 0), ("data.template_seed", 0), ("data.eval_seed", 0),
                         ("sweep.parallel", 1), ("sweep.max_runs", 1)):
        _at_least(cfg, key, minimum)
    for key in ("data.max_train_examples", "data.max_eval_examples", "train.save_steps", "train.save_total_limit",
                "train.packed_input_length", "train.packed_label_length", "train.packed_rows_per_batch"):
        _at_least(cfg, key, 1, allow_none=True)
    _check_eval_templates(cfg)
    if not 0 <= cfg.seed < 2**32:  # numpy's seed range (transformers' set_seed seeds numpy too)
        raise FlantuneError(f"Config key 'seed' is {cfg.seed}; it must be in [0, 2**32).")
    save, every = cfg.train.save_steps, cfg.train.eval_steps
    fraction = isinstance(every, float) and 0 < every < 1
    if isinstance(every, bool) or not (isinstance(every, int) and every >= 1 or fraction):
        raise FlantuneError(f"Config key 'train.eval_steps' is {every!r}; choose a number of steps (>= 1) or a "
                            "fraction of the run's steps between 0 and 1 (0.25: four evaluations).")
    if fraction and save is not None:
        raise FlantuneError(
            f"train.save_steps={save} with train.eval_steps={every}, a fraction of the run's steps: saves must fall on "
            "evaluations, which a number of steps can't be sure to. Leave train.save_steps null (a save at each "
            "evaluation), or give train.eval_steps as a number of steps."
        )
    if save is not None and save % every:
        raise FlantuneError(
            f"train.save_steps={save} is not a multiple of train.eval_steps={every}: the best checkpoint is chosen "
            f"by the evaluations, so every save must fall on one. Set train.save_steps to a multiple of {every}, or "
            f"null (the default: save at each evaluation)."
        )
    micro = cfg.train.micro_batches
    if micro != "auto" and (isinstance(micro, bool) or not isinstance(micro, int) or micro < 1):
        raise FlantuneError(f"Config key 'train.micro_batches' is {micro!r}; choose auto or a number >= 1.")
    if cfg.train.sampling != "packed":  # before any data is read; the rows of a packed batch are known later
        micro_batches(micro, cfg.train.batch_size, mixture=False, sampling=cfg.train.sampling)
    if cfg.train.cuda_graphs not in (True, False, "auto"):
        raise FlantuneError(f"Config key 'train.cuda_graphs' is {cfg.train.cuda_graphs!r}; choose auto, true or false.")
    if cfg.train.lr <= 0:
        raise FlantuneError(f"Config key 'train.lr' is {cfg.train.lr}; a learning rate must be positive.")
    if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
        raise FlantuneError("Set train.epochs > 0 or train.max_steps > 0: as configured, nothing would train.")
    for key in ("lora.dropout", "train.warmup_ratio"):
        value = OmegaConf.select(cfg, key)
        if not 0 <= value < 1:
            raise FlantuneError(f"Config key '{key}' is {value}; it must be in [0, 1).")
    if cfg.train.early_stopping_patience < 0 or cfg.train.early_stopping_threshold < 0:
        raise FlantuneError("train.early_stopping_patience and train.early_stopping_threshold must be >= 0 "
                            "(patience 0: no early stopping).")
    every, steps = cfg.train.eval_steps, cfg.train.max_steps
    if cfg.train.early_stopping_patience and isinstance(every, int) and 0 < steps <= every:
        raise FlantuneError(
            f"train.early_stopping_patience={cfg.train.early_stopping_patience} stops when the validation score has "
            f"not improved for that many evaluations, but train.eval_steps={every} with train.max_steps={steps} "
            "evaluates only at the end. Evaluate during training (a smaller train.eval_steps, or a fraction such as "
            "0.1), or set train.early_stopping_patience=0."
        )
    from flantune.methods import check_method

    check_method(cfg)
    report_to = cfg.report_to
    integrations = list(report_to) if OmegaConf.is_list(report_to) else [report_to]
    if not all(isinstance(name, str) for name in integrations):
        raise FlantuneError(f"Config key 'report_to' is {report_to!r}; give none, all, an integration name "
                            "(tensorboard, wandb, ...) or a list of names.")
    # The mixing settings, whatever the number of tasks: a typo there is a mistake even where one task makes
    # them moot (and a later task=[...] would bring them into play).
    from flantune.mixture import check_mixing, mixing_settings

    check_mixing(task_names(cfg), **mixing_settings(cfg))  # task_names: a task must be named


def _check_eval_templates(cfg: DictConfig) -> None:
    """eval.fewshot: a whole number >= 0; eval.templates: null, all, a name or a list of names (which names a task
    has is checked with the tasks: prelude.eval_templates)."""
    k = cfg.eval.fewshot
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise FlantuneError(f"Config key 'eval.fewshot' is {k!r}; give the number of train examples to put before "
                            "each evaluated input (0: zero-shot).")
    chosen = cfg.eval.templates
    names = list(chosen) if OmegaConf.is_list(chosen) else [chosen]
    if chosen is not None and (not names or not all(isinstance(n, str) and n.strip() for n in names)):
        raise FlantuneError(f"Config key 'eval.templates' is {chosen!r}; give all (every template of each task), a "
                            "template's name or a list of names, or null (the task's eval_template alone).")


def task_names(cfg: DictConfig) -> list[str]:
    """The tasks of a run, in order, without duplicates."""
    raw = cfg.task
    names = list(raw) if OmegaConf.is_list(raw) or isinstance(raw, (list, tuple)) else [raw]
    names = [str(n) for n in names if n is not None and str(n).strip()]
    if not names:
        raise FlantuneError("No task to run: set task=NAME, task=[a,b] or mixture=NAME.")
    return list(dict.fromkeys(names))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
